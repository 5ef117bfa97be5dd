"""The upper-layer association: one sans-IO object per transport connection.

:class:`Association` is the facade the Twisted adapters drive. Its methods
are the inputs of PS3.8 Table 9-10, grouped as DESIGN.md section 3 lists them:

* transport and timer events: :meth:`transport_connected` (Evt2 or Evt5),
  :meth:`transport_closed` (Evt17), :meth:`artim_expired` (Evt18);
* bytes from the peer: :meth:`receive_data`, which frames and decodes PDUs and
  turns each into Evt3, 4, 6, 10, 12, 13, 16 or, when it cannot be decoded or
  breaks a rule, Evt19;
* primitives of the local service user: :meth:`request` (Evt1),
  :meth:`accept` (Evt7), :meth:`reject` (Evt8), :meth:`send_pdata` (Evt9),
  :meth:`release` (Evt11), :meth:`release_response` (Evt14) and
  :meth:`abort` (Evt15).

Every method returns the list of :mod:`~gateway.ul.outputs` to carry out, in
order. A local primitive in a state whose cell is empty raises
:class:`~gateway.ul.errors.LocalProtocolError` and changes nothing. Remote
input never raises: whatever the peer sends ends in an outcome the table
defines (h2's rule: the machine is never left half-transitioned).
"""

from __future__ import annotations

from typing import Sequence

from gateway.ul import pdu as _pdu
from gateway.ul.actions import ACTIONS, AbortRequest, Context, Role, ULSettings
from gateway.ul.errors import AbortReason, AbortSource, LocalProtocolError, PDUDecodeError
from gateway.ul.framing import PDUBuffer
from gateway.ul.machine import LOCAL_EVENTS, TRANSITIONS, Event, State
from gateway.ul.outputs import Output, Send

#: Which event each decoded PDU is (PS3.8 Table 9-10 rows).
_PDU_EVENTS: dict[type, Event] = {
    _pdu.AAssociateAC: Event.EVT3,
    _pdu.AAssociateRJ: Event.EVT4,
    _pdu.AAssociateRQ: Event.EVT6,
    _pdu.PDataTF: Event.EVT10,
    _pdu.AReleaseRQ: Event.EVT12,
    _pdu.AReleaseRP: Event.EVT13,
    _pdu.AAbort: Event.EVT16,
}


class Association:
    """One DICOM association's upper layer, driven by events and returning outputs.

    :param role: whether we requested (SCU side) or accepted the association.
    :param settings: timers, PDU limits and the provider's acceptance check.
    """

    def __init__(self, role: Role, settings: ULSettings | None = None) -> None:
        self._ctx = Context(role=role, settings=settings or ULSettings())
        self._state = State.STA1
        self._buffer = PDUBuffer(
            max_pdata_length=self._ctx.settings.max_pdu_length,
            max_other_length=self._ctx.settings.max_other_pdu_length,
        )

    # -- introspection ---------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state (PS3.8 Table 9-10 column)."""
        return self._state

    @property
    def role(self) -> Role:
        """Whether this side is the association-requestor or -acceptor."""
        return self._ctx.role

    @property
    def request_pdu(self) -> _pdu.AAssociateRQ | None:
        """The A-ASSOCIATE-RQ of this association (sent or received), once known."""
        return self._ctx.request

    @property
    def accepted_context_ids(self) -> frozenset[int]:
        """Presentation context IDs on which P-DATA may flow (after AE-3 or AE-7)."""
        return self._ctx.accepted_context_ids

    @property
    def is_established(self) -> bool:
        """Whether P-DATA may be sent now (Sta6, or Sta8 before our release response)."""
        return self._state in (State.STA6, State.STA8)

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a whole PDU."""
        return self._buffer.buffered

    # -- the dispatcher --------------------------------------------------------------------

    def _handle(self, event: Event, payload: object = None) -> list[Output]:
        """Look ``(state, event)`` up in Table 9-10 and run its action."""
        action = TRANSITIONS.get((self._state, event))
        if action is None:
            if event in LOCAL_EVENTS:
                raise LocalProtocolError(f"{event.value} is not allowed in {self._state.value}")
            # A remote input in a cell the standard leaves empty (no
            # transport yet, or it is already gone): nothing to do.
            return []
        next_state, outputs = ACTIONS[action](self._ctx, payload)
        self._state = next_state
        return outputs

    # -- transport and timer events --------------------------------------------------------

    def transport_connected(self) -> list[Output]:
        """The transport is up: Evt5 (indication) for an acceptor, Evt2 (confirmation) for a requestor."""
        event = Event.EVT5 if self._ctx.role is Role.ACCEPTOR else Event.EVT2
        return self._handle(event)

    def transport_closed(self) -> list[Output]:
        """Evt17: the transport connection closed (by the peer, or after our close)."""
        return self._handle(Event.EVT17)

    def artim_expired(self) -> list[Output]:
        """Evt18: the ARTIM timer fired (PS3.8 9.1.5).

        A timer that fires after the state moved on (a race the adapter should
        prevent by cancelling on :class:`~gateway.ul.outputs.StopArtim`) is
        ignored: Table 9-10 defines Evt18 only in Sta2 and Sta13.
        """
        self._ctx.artim_running = False
        return self._handle(Event.EVT18)

    # -- bytes from the peer ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Output]:
        """Feed bytes from the transport; decode whole PDUs and run their events.

        Never raises. A PDU that cannot be decoded, or that exceeds our limits,
        is Evt19 (HARDENING R1); so is a P-DATA-TF that uses a presentation
        context that was not accepted (HARDENING P23; PS3.8 9.3.5.1 requires
        an accepted context).
        """
        if self._state in (State.STA1, State.STA4):
            return []
        outputs: list[Output] = []
        for item in self._buffer.feed(data):
            if self._state is State.STA1:
                break
            if isinstance(item, PDUDecodeError):
                outputs.extend(self._handle(Event.EVT19, item))
                continue
            if isinstance(item, _pdu.PDataTF) and self._state in (State.STA6, State.STA7):
                bad = [p.context_id for p in item.pdvs if p.context_id not in self._ctx.accepted_context_ids]
                if bad:
                    error = PDUDecodeError(
                        AbortReason.INVALID_PDU_PARAMETER_VALUE,
                        f"P-DATA-TF on presentation context {bad[0]}, which was not accepted",
                    )
                    outputs.extend(self._handle(Event.EVT19, error))
                    continue
            outputs.extend(self._handle(_PDU_EVENTS[type(item)], item))
        return outputs

    # -- primitives of the local service user ----------------------------------------------

    def request(self, request: _pdu.AAssociateRQ) -> list[Output]:
        """Evt1: A-ASSOCIATE request primitive (requestor)."""
        self._require_role(Role.REQUESTOR, "request")
        return self._handle(Event.EVT1, request)

    def accept(self, response: _pdu.AAssociateAC) -> list[Output]:
        """Evt7: A-ASSOCIATE response primitive (accept)."""
        return self._handle(Event.EVT7, response)

    def reject(self, response: _pdu.AAssociateRJ) -> list[Output]:
        """Evt8: A-ASSOCIATE response primitive (reject)."""
        return self._handle(Event.EVT8, response)

    def send_pdata(self, pdvs: Sequence[_pdu.PDV]) -> list[Output]:
        """Evt9: P-DATA request primitive with the given PDVs in one P-DATA-TF PDU."""
        return self._handle(Event.EVT9, Send(_pdu.encode(_pdu.PDataTF(tuple(pdvs)))))

    def send_pdata_encoded(self, data: bytes) -> list[Output]:
        """Evt9 with an already encoded P-DATA-TF PDU (the fast path for streaming data sets).

        The caller guarantees ``data`` is one or more whole P-DATA-TF PDUs, e.g.
        built by :func:`gateway.ul.pdu.pdata_pdu`.
        """
        return self._handle(Event.EVT9, Send(data))

    def release(self) -> list[Output]:
        """Evt11: A-RELEASE request primitive."""
        return self._handle(Event.EVT11)

    def release_response(self) -> list[Output]:
        """Evt14: A-RELEASE response primitive (we agree to release)."""
        return self._handle(Event.EVT14)

    def abort(
        self,
        source: int = AbortSource.SERVICE_USER,
        reason: int = AbortReason.NOT_SPECIFIED,
        detail: str = "",
    ) -> list[Output]:
        """Evt15: A-ABORT request primitive.

        The DIMSE layer uses source 0, reason 0 for a violation of message
        encapsulation (HARDENING R2). In Sta1 and Sta13 there is nothing left
        to abort and this returns no outputs instead of raising, because the
        adapter may race with the peer's close.
        """
        if self._state in (State.STA1, State.STA2, State.STA13):
            return []
        return self._handle(Event.EVT15, AbortRequest(source, reason, detail))

    def _require_role(self, role: Role, what: str) -> None:
        if self._ctx.role is not role:
            raise LocalProtocolError(f"{what} is only for the association-{role.value}")
