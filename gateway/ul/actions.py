"""The actions of PS3.8 Tables 9-6 to 9-9, one small function each.

Every action has the signature ``(ctx, payload) -> (next_state, outputs)``:
``ctx`` is the association's :class:`Context` (role, settings, whether ARTIM
runs, what was negotiated), ``payload`` is whatever the event carried (a
decoded PDU, a :class:`~gateway.ul.errors.PDUDecodeError`, or the argument of
a local primitive). Actions do no I/O: they return outputs for the adapter.

The only state an action changes in ``ctx`` is bookkeeping that the standard
itself implies: whether the ARTIM timer is running (AA-1 "(re-)start ARTIM
if not already started") and, after AE-3/AE-7, which presentation contexts
were accepted, so P-DATA on any other context can be refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Mapping, Optional

from gateway.ul import pdu as _pdu
from gateway.ul.errors import AbortReason, AbortSource, PDUDecodeError
from gateway.ul.machine import Action, State
from gateway.ul.outputs import (
    AbortIndication,
    AssociateAccepted,
    AssociateIndication,
    AssociateRejected,
    CloseTransport,
    ConnectTransport,
    Output,
    PDataIndication,
    ReleaseConfirm,
    ReleaseIndication,
    Send,
    StartArtim,
    StopArtim,
)


class Role(Enum):
    """Which end of the association we are (PS3.8 7.1.1)."""

    REQUESTOR = "requestor"
    ACCEPTOR = "acceptor"


#: Decides whether the service-provider accepts an A-ASSOCIATE-RQ (AE-6):
#: ``None`` to pass it to the service user, or the A-ASSOCIATE-RJ to send.
ProviderCheck = Callable[[_pdu.AAssociateRQ], Optional[_pdu.AAssociateRJ]]


def _accept_all(request: _pdu.AAssociateRQ) -> _pdu.AAssociateRJ | None:
    """The default provider check: every well-formed request reaches the user."""
    return None


@dataclass(frozen=True)
class ULSettings:
    """Settings of one association's upper layer.

    :ivar artim_timeout: seconds for the ARTIM timer (PS3.8 9.1.5), the
        ACSE timeout of the configuration.
    :ivar max_pdu_length: the largest P-DATA-TF PDU length we accept; what we
        advertise in the Maximum Length sub-item (PS3.8 D.1). A larger one is
        an invalid PDU.
    :ivar max_other_pdu_length: the largest length of any other PDU; real
        A-ASSOCIATE-RQs are a few KB, so a cap well above that keeps a hostile
        length from making us buffer gigabytes (HARDENING R4, P05).
    :ivar provider_check: the service-provider's acceptance test of AE-6.
    """

    artim_timeout: float = 30.0
    max_pdu_length: int = 262144
    max_other_pdu_length: int = 1024 * 1024
    provider_check: ProviderCheck = _accept_all


@dataclass
class Context:
    """The mutable part of one association that actions read and update."""

    role: Role
    settings: ULSettings
    artim_running: bool = False
    request: _pdu.AAssociateRQ | None = None
    accepted_context_ids: frozenset[int] = field(default_factory=frozenset)


@dataclass(frozen=True)
class AbortRequest:
    """Payload of Evt15 (A-ABORT request primitive), and of our own aborts."""

    source: int = AbortSource.SERVICE_USER
    reason: int = AbortReason.NOT_SPECIFIED
    detail: str = ""


Result = tuple[State, list[Output]]
ActionFunction = Callable[[Context, object], Result]


def _start_artim(ctx: Context) -> StartArtim:
    ctx.artim_running = True
    return StartArtim(ctx.settings.artim_timeout)


def _stop_artim(ctx: Context) -> list[Output]:
    if ctx.artim_running:
        ctx.artim_running = False
        return [StopArtim()]
    return []


def _provider_abort_for(payload: object) -> AbortRequest:
    """The A-ABORT to send for an input the state does not allow.

    A PDU that could not be decoded carries its own reason (HARDENING decision
    1: unrecognised PDU, or invalid parameter value); a well-formed PDU that
    arrives in the wrong state is an unexpected PDU (PS3.8 Table 9-26 reason 2).
    """
    if isinstance(payload, PDUDecodeError):
        return AbortRequest(AbortSource.SERVICE_PROVIDER, payload.reason, payload.message)
    if isinstance(payload, AbortRequest):
        return payload
    name = type(payload).__name__
    return AbortRequest(AbortSource.SERVICE_PROVIDER, AbortReason.UNEXPECTED_PDU, f"unexpected {name}")


def _abort_pdu(request: AbortRequest) -> Send:
    return Send(_pdu.encode(_pdu.AAbort(source=int(request.source), reason=int(request.reason))))


# --- Association establishment, PS3.8 Table 9-6 -------------------------------------------


def ae_1(ctx: Context, payload: object) -> Result:
    """AE-1: issue a TRANSPORT CONNECT request to the local transport service; next Sta4."""
    assert isinstance(payload, _pdu.AAssociateRQ)
    ctx.request = payload
    return State.STA4, [ConnectTransport()]


def ae_2(ctx: Context, payload: object) -> Result:
    """AE-2: send the A-ASSOCIATE-RQ PDU; next Sta5."""
    assert ctx.request is not None
    return State.STA5, [Send(_pdu.encode(ctx.request))]


def ae_3(ctx: Context, payload: object) -> Result:
    """AE-3: issue the A-ASSOCIATE confirmation (accept) primitive; next Sta6.

    Only contexts that we proposed and the acceptor accepted may carry P-DATA
    from now on (PS3.8 9.3.3.2).
    """
    assert isinstance(payload, _pdu.AAssociateAC)
    proposed = {pc.context_id for pc in ctx.request.presentation_contexts} if ctx.request else set()
    ctx.accepted_context_ids = frozenset(
        pc.context_id for pc in payload.presentation_contexts if pc.accepted and pc.context_id in proposed
    )
    return State.STA6, [AssociateAccepted(payload)]


def ae_4(ctx: Context, payload: object) -> Result:
    """AE-4: issue the A-ASSOCIATE confirmation (reject) primitive and close the transport; next Sta1."""
    assert isinstance(payload, _pdu.AAssociateRJ)
    return State.STA1, [AssociateRejected(payload), CloseTransport()]


def ae_5(ctx: Context, payload: object) -> Result:
    """AE-5: issue the transport connection response, start ARTIM; next Sta2."""
    return State.STA2, [_start_artim(ctx)]


def ae_6(ctx: Context, payload: object) -> Result:
    """AE-6: stop ARTIM; indicate an acceptable A-ASSOCIATE-RQ (Sta3), else send an RJ and start ARTIM (Sta13).

    "Acceptable by the service-provider" is the injected ``provider_check``:
    protocol version, application context, association limits and congestion
    are decided there, before the service user ever sees the request.
    """
    assert isinstance(payload, _pdu.AAssociateRQ)
    outputs = _stop_artim(ctx)
    ctx.request = payload
    rejection = ctx.settings.provider_check(payload)
    if rejection is None:
        return State.STA3, outputs + [AssociateIndication(payload)]
    return State.STA13, outputs + [Send(_pdu.encode(rejection)), _start_artim(ctx)]


def ae_7(ctx: Context, payload: object) -> Result:
    """AE-7: send the A-ASSOCIATE-AC PDU; next Sta6."""
    assert isinstance(payload, _pdu.AAssociateAC)
    proposed = {pc.context_id for pc in ctx.request.presentation_contexts} if ctx.request else set()
    ctx.accepted_context_ids = frozenset(
        pc.context_id for pc in payload.presentation_contexts if pc.accepted and pc.context_id in proposed
    )
    return State.STA6, [Send(_pdu.encode(payload))]


def ae_8(ctx: Context, payload: object) -> Result:
    """AE-8: send the A-ASSOCIATE-RJ PDU and start ARTIM; next Sta13."""
    assert isinstance(payload, _pdu.AAssociateRJ)
    return State.STA13, [Send(_pdu.encode(payload)), _start_artim(ctx)]


# --- Data transfer, PS3.8 Table 9-7 -------------------------------------------------------


def dt_1(ctx: Context, payload: object) -> Result:
    """DT-1: send the P-DATA-TF PDU; stay in Sta6."""
    assert isinstance(payload, Send)
    return State.STA6, [payload]


def dt_2(ctx: Context, payload: object) -> Result:
    """DT-2: send a P-DATA indication primitive; stay in Sta6."""
    assert isinstance(payload, _pdu.PDataTF)
    return State.STA6, [PDataIndication(payload.pdvs)]


# --- Association release, PS3.8 Table 9-8 -------------------------------------------------


def ar_1(ctx: Context, payload: object) -> Result:
    """AR-1: send the A-RELEASE-RQ PDU; next Sta7."""
    return State.STA7, [Send(_pdu.encode(_pdu.AReleaseRQ()))]


def ar_2(ctx: Context, payload: object) -> Result:
    """AR-2: issue an A-RELEASE indication primitive; next Sta8."""
    return State.STA8, [ReleaseIndication()]


def ar_3(ctx: Context, payload: object) -> Result:
    """AR-3: issue the A-RELEASE confirmation primitive and close the transport; next Sta1."""
    return State.STA1, [ReleaseConfirm(), CloseTransport()]


def ar_4(ctx: Context, payload: object) -> Result:
    """AR-4: issue the A-RELEASE-RP PDU and start ARTIM; next Sta13."""
    return State.STA13, [Send(_pdu.encode(_pdu.AReleaseRP())), _start_artim(ctx)]


def ar_5(ctx: Context, payload: object) -> Result:
    """AR-5: stop ARTIM; next Sta1."""
    return State.STA1, _stop_artim(ctx)


def ar_6(ctx: Context, payload: object) -> Result:
    """AR-6: issue a P-DATA indication; stay in Sta7."""
    assert isinstance(payload, _pdu.PDataTF)
    return State.STA7, [PDataIndication(payload.pdvs)]


def ar_7(ctx: Context, payload: object) -> Result:
    """AR-7: issue the P-DATA-TF PDU; stay in Sta8."""
    assert isinstance(payload, Send)
    return State.STA8, [payload]


def ar_8(ctx: Context, payload: object) -> Result:
    """AR-8: issue an A-RELEASE indication (release collision); next Sta9 (requestor) or Sta10 (acceptor)."""
    next_state = State.STA9 if ctx.role is Role.REQUESTOR else State.STA10
    return next_state, [ReleaseIndication(collision=True)]


def ar_9(ctx: Context, payload: object) -> Result:
    """AR-9: send the A-RELEASE-RP PDU; next Sta11."""
    return State.STA11, [Send(_pdu.encode(_pdu.AReleaseRP()))]


def ar_10(ctx: Context, payload: object) -> Result:
    """AR-10: issue the A-RELEASE confirmation primitive; next Sta12."""
    return State.STA12, [ReleaseConfirm()]


# --- Association abort, PS3.8 Table 9-9 ---------------------------------------------------


def aa_1(ctx: Context, payload: object) -> Result:
    """AA-1: send an A-ABORT PDU and (re-)start ARTIM if not already started; next Sta13.

    Table 9-9 calls this the service-user source. For the local A-ABORT
    primitive (Evt15) we send the source and reason the user gave. For a
    remote PDU that arrives in Sta2 before any A-ASSOCIATE-RQ, HARDENING R3
    pins source 2 (service-provider) with the reason that fits, which tells
    the peer far more than (0, 0) would.
    """
    request = payload if isinstance(payload, AbortRequest) else _provider_abort_for(payload)
    outputs: list[Output] = [_abort_pdu(request)]
    if not ctx.artim_running:
        outputs.append(_start_artim(ctx))
    if not isinstance(payload, AbortRequest):
        # A remote fault in Sta2: nothing was indicated to the user yet, but
        # the adapter's observers want to know why the connection is ending.
        outputs.append(AbortIndication(request.source, request.reason, local=True, detail=request.detail))
    return State.STA13, outputs


def aa_2(ctx: Context, payload: object) -> Result:
    """AA-2: stop ARTIM if running, close the transport; next Sta1."""
    return State.STA1, _stop_artim(ctx) + [CloseTransport()]


def aa_3(ctx: Context, payload: object) -> Result:
    """AA-3: issue an A-ABORT (user source) or A-P-ABORT (provider source) indication, close; next Sta1."""
    assert isinstance(payload, _pdu.AAbort)
    return State.STA1, [AbortIndication(payload.source, payload.reason, detail="A-ABORT received"), CloseTransport()]


def aa_4(ctx: Context, payload: object) -> Result:
    """AA-4: issue an A-P-ABORT indication primitive; next Sta1."""
    return State.STA1, _stop_artim(ctx) + [AbortIndication(None, 0, detail="transport connection closed")]


def aa_5(ctx: Context, payload: object) -> Result:
    """AA-5: stop ARTIM; next Sta1."""
    return State.STA1, _stop_artim(ctx)


def aa_6(ctx: Context, payload: object) -> Result:
    """AA-6: ignore the PDU; stay in Sta13."""
    return State.STA13, []


def aa_7(ctx: Context, payload: object) -> Result:
    """AA-7: send an A-ABORT PDU; stay in Sta13."""
    return State.STA13, [_abort_pdu(_provider_abort_for(payload))]


def aa_8(ctx: Context, payload: object) -> Result:
    """AA-8: send an A-ABORT PDU (service-provider source), issue an A-P-ABORT indication, start ARTIM; next Sta13."""
    request = _provider_abort_for(payload)
    return State.STA13, [
        _abort_pdu(request),
        AbortIndication(request.source, request.reason, local=True, detail=request.detail),
        _start_artim(ctx),
    ]


#: Each action of :class:`~gateway.ul.machine.Action` and the function that performs it.
ACTIONS: Mapping[Action, ActionFunction] = {
    Action.AE_1: ae_1,
    Action.AE_2: ae_2,
    Action.AE_3: ae_3,
    Action.AE_4: ae_4,
    Action.AE_5: ae_5,
    Action.AE_6: ae_6,
    Action.AE_7: ae_7,
    Action.AE_8: ae_8,
    Action.DT_1: dt_1,
    Action.DT_2: dt_2,
    Action.AR_1: ar_1,
    Action.AR_2: ar_2,
    Action.AR_3: ar_3,
    Action.AR_4: ar_4,
    Action.AR_5: ar_5,
    Action.AR_6: ar_6,
    Action.AR_7: ar_7,
    Action.AR_8: ar_8,
    Action.AR_9: ar_9,
    Action.AR_10: ar_10,
    Action.AA_1: aa_1,
    Action.AA_2: aa_2,
    Action.AA_3: aa_3,
    Action.AA_4: aa_4,
    Action.AA_5: aa_5,
    Action.AA_6: aa_6,
    Action.AA_7: aa_7,
    Action.AA_8: aa_8,
}
