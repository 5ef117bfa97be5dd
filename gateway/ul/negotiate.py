"""Association negotiation, as pure functions (PS3.8 7.1, 9.3.2-9.3.3; PS3.7 Annex D.3.3).

Four functions cover both sides of A-ASSOCIATE:

* acceptor: :func:`check_acse` decides whether the request is rejected
  outright (A-ASSOCIATE-RJ), then :func:`negotiate_acceptor` answers each
  presentation context and builds the A-ASSOCIATE-AC;
* requestor: :func:`build_request` builds the A-ASSOCIATE-RQ and
  :func:`accepted_from_ac` reads the A-ASSOCIATE-AC back into usable
  contexts.

Decisions this module implements (HARDENING decision 2 and rows P08-P15):

* only bit 0 of the protocol version is tested (PS3.8 9.3.2), so 0xFFFF is
  accepted and 0x0002 rejected with RJ(1, 2, 2);
* an association in which no presentation context is acceptable is still
  accepted, each context's result saying why (3 abstract syntax, 4 transfer
  syntaxes); the peer decides whether to release;
* the transfer syntax chosen is the *first proposed* one we accept, which
  keeps the modality's own encoding (no transcoding by a router);
* a missing Maximum Length sub-item means we send at most 16 KiB to that
  peer; 0 means "no limit" (the sender then applies its own cap); a
  non-zero value below ``min_peer_max_pdu`` is rejected with RJ(1, 1, 1);
* unknown user information sub-items are ignored (PS3.8 D.2 note 2);
* the asynchronous operations window is answered 1/1 only when proposed
  (PS3.7 D.3.3.3; HARDENING P38): we perform one operation at a time;
* SCP/SCU role selection is answered per PS3.7 D.3.3.4 for SOP classes of
  accepted contexts only: we act as SCP, so a proposed requestor SCU role is
  echoed and a proposed requestor SCP role is declined;
* except for the SOP classes of ``AcceptorSettings.scp_role_abstract_syntaxes``,
  where a proposed requestor SCP role is accepted too (echoed 1), and a
  context whose requestor is SCP only (SCU-role 0, SCP-role 1) is accepted:
  that is how an archive that commits reports its Storage Commitment result
  to us, as association requestor and Storage Commitment SCP, on an
  association it opens (PS3.4 J.3.3.1.3);
* C-GET sub-operations (issue 16): with ``AcceptorSettings.get_sub_operations``
  and a request that proposes a C-GET SOP class we accept, a proposed
  requestor SCP role is accepted for every other accepted class but
  Verification, the Q/R classes and Storage Commitment, i.e. the storage
  classes the C-GET SCU wants its instances in (PS3.4 C.4.3.3, PS3.7
  D.3.3.4); a storage context proposed with SCU-role 0 / SCP-role 1 is then
  accepted for the sub-operations;
* the SOP Class Extended Negotiation sub-item (PS3.7 D.3.3.5) is answered
  for the C-FIND classes only (PS3.4 C.5.1.1): relational-queries (byte 1)
  is 1 only when ``AcceptorSettings.relational_queries`` is set and the
  requestor asked for it, every other byte 0 (not supported); no reply for
  other classes means "not supported" (PS3.7 D.3.3.5).

Everything here is sans-IO and deterministic: same request, same answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from gateway.ul.errors import (
    RejectReasonACSE,
    RejectReasonUser,
    RejectResult,
    RejectSource,
)
from gateway.ul.items import SCPSCURoleSelection, SOPClassExtendedNegotiation, UserIdentityAC, UserInformation
from gateway.ul.pdu import (
    DICOM_APPLICATION_CONTEXT,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    ContextResult,
    PresentationContextAC,
    PresentationContextRQ,
)

#: HARDENING decision 2: what we send to a peer that announced no Maximum
#: Length sub-item (PS3.8 D.1 makes the sub-item mandatory, some old
#: equipment omits it; 16 KiB is what DCMTK and pynetdicom default to).
DEFAULT_PEER_MAX_PDU: Final = 16384

#: PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255, so at most
#: 128 contexts fit in one association.
MAX_PRESENTATION_CONTEXTS: Final = 128

#: PS3.4 C.6: the Query/Retrieve FIND, MOVE and GET SOP classes (Patient Root, Study Root).
QR_FIND_SOP_CLASSES: Final = frozenset({"1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1"})
QR_MOVE_SOP_CLASSES: Final = frozenset({"1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.2.2"})
QR_GET_SOP_CLASSES: Final = frozenset({"1.2.840.10008.5.1.4.1.2.1.3", "1.2.840.10008.5.1.4.1.2.2.3"})

#: Classes that are never C-GET sub-operations (PS3.4 C.4.3.3: the sub-operations
#: are C-STOREs of Storage SOP classes): Verification, the Q/R classes,
#: Storage Commitment Push Model, Modality Worklist FIND.
NOT_SUB_OPERATION_CLASSES: Final = (
    frozenset({"1.2.840.10008.1.1", "1.2.840.10008.1.20.1", "1.2.840.10008.5.1.4.31"})
    | QR_FIND_SOP_CLASSES
    | QR_MOVE_SOP_CLASSES
    | QR_GET_SOP_CLASSES
)

#: PS3.4 C.5.1.1: the C-FIND Service Class Application Information bytes we
#: answer: 1 relational-queries, 2 combined date-time matching, 3 fuzzy
#: semantic matching of person names, 4 timezone query adjustment, 5
#: enhanced multi-frame image conversion.
_FIND_EXTENDED_BYTES: Final = 5

#: PS3.7 D.3.3.3: "1" operations invoked and performed means no asynchronous
#: operations; it is the only window we ever answer.
_SYNCHRONOUS_WINDOW: Final = (1, 1)


@dataclass(frozen=True)
class AcceptedContext:
    """A presentation context accepted on an association.

    The roles are those of the *association requestor* (PS3.7 D.3.3.4), so
    on our acceptor side ``scu_role=True`` means the peer may send us
    requests such as C-STORE-RQ.

    :ivar context_id: the odd presentation context ID.
    :ivar abstract_syntax: the SOP class UID.
    :ivar transfer_syntax: the one transfer syntax accepted for it.
    :ivar scu_role: whether the requestor acts as SCU on this context.
    :ivar scp_role: whether the requestor acts as SCP on this context.
    """

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    scu_role: bool
    scp_role: bool


@dataclass(frozen=True)
class AcceptorSettings:
    """What the acceptor offers (one per listener, built from the configuration).

    :ivar ae_title: our AE title (the access policy checks the called title).
    :ivar max_pdu_length: the Maximum Length we announce (PS3.8 D.1); it
        bounds the P-DATA-TF PDUs the peer sends us.
    :ivar implementation_class_uid: sent in sub-item 0x52 (PS3.7 D.3.3.2).
    :ivar implementation_version_name: sent in sub-item 0x55 (PS3.7 D.3.3.2).
    :ivar abstract_syntaxes: SOP classes we accept (verification and
        storage by default, see :mod:`gateway.sopclasses`).
    :ivar transfer_syntaxes: transfer syntaxes we accept.
    :ivar accept_unknown_abstract_syntaxes: accept any abstract syntax
        (e.g. private storage classes) instead of answering result 3.
    :ivar min_peer_max_pdu: the smallest non-zero Maximum Length we accept
        from a peer (HARDENING P15).
    :ivar scp_role_abstract_syntaxes: SOP classes for which a requestor may
        take the SCP role (PS3.7 D.3.3.4): a role selection item proposing
        SCP-role 1 is answered 1, and the context is accepted even with
        SCU-role 0. Storage Commitment Push Model when archives report to us
        (PS3.4 J.3.3.1.3); empty by default, which keeps the SCP role
        declined for every class.
    :ivar get_sub_operations: the listener serves C-GET: when the request
        proposes a C-GET class we accept, a proposed requestor SCP role is
        accepted for every other accepted class except
        :data:`NOT_SUB_OPERATION_CLASSES` (the C-GET SCU's storage contexts,
        PS3.4 C.4.3.3, PS3.7 D.3.3.4).
    :ivar relational_queries: answer relational-queries 1 in the C-FIND SOP
        Class Extended Negotiation reply when asked (PS3.4 C.5.1.1): the
        listener's ``query.relational``. The gateway passes queries on, so a
        relational query then goes only to the sources that granted
        relational-queries in their own negotiation (:mod:`gateway.qr.find`).
    """

    ae_title: str
    max_pdu_length: int
    implementation_class_uid: str
    implementation_version_name: str
    abstract_syntaxes: frozenset[str]
    transfer_syntaxes: tuple[str, ...]
    accept_unknown_abstract_syntaxes: bool = False
    min_peer_max_pdu: int = 1024
    scp_role_abstract_syntaxes: frozenset[str] = frozenset()
    get_sub_operations: bool = False
    relational_queries: bool = False


@dataclass(frozen=True)
class Negotiation:
    """The outcome of a successful negotiation.

    :ivar ac: the A-ASSOCIATE-AC (sent by the acceptor, received by the requestor).
    :ivar contexts: the *accepted* contexts by ID; rejected ones are absent.
    :ivar peer_max_pdu: the largest P-DATA-TF variable field we may send
        the peer; 0 means the peer set no limit (apply our own cap).
    """

    ac: AAssociateAC
    contexts: Mapping[int, AcceptedContext]
    peer_max_pdu: int


def _rj(result: int, source: int, reason: int) -> AAssociateRJ:
    """Build an A-ASSOCIATE-RJ from its three enum fields (PS3.8 9.3.4)."""
    return AAssociateRJ(result=int(result), source=int(source), reason=int(reason))


def _peer_max_length(user_information: UserInformation | None) -> int | None:
    """The peer's Maximum Length sub-item value, or ``None`` if absent (PS3.8 D.1)."""
    return None if user_information is None else user_information.max_length


def _sending_limit(max_length: int | None) -> int:
    """What we may send a peer given its Maximum Length (PS3.8 D.1; HARDENING decision 2).

    Absent -> :data:`DEFAULT_PEER_MAX_PDU`; 0 (no limit) stays 0 and means
    "our own cap" to :func:`gateway.dimse.pdv.max_fragment_size`.
    """
    return DEFAULT_PEER_MAX_PDU if max_length is None else max_length


# ---------------------------------------------------------------------------
# Acceptor
# ---------------------------------------------------------------------------


def check_acse(rq: AAssociateRQ, settings: AcceptorSettings) -> AAssociateRJ | None:
    """The rejections that do not depend on who is calling (PS3.8 9.3.2, 7.1.1).

    Checked in this order:

    1. protocol version bit 0 clear -> RJ(1, 2, 2): PS3.8 9.3.2 says a
       receiver implementing only version 1 "shall only test that bit 0 is
       set", so 0xFFFF passes (HARDENING P08);
    2. application context name other than the DICOM one (PS3.7 A.2.1) ->
       RJ(1, 1, 2) (HARDENING P09);
    3. no presentation context item -> RJ(1, 1, 1) (PS3.8 9.3.2: at least one
       is required; HARDENING P11);
    4. a Maximum Length that is present, non-zero and below
       ``settings.min_peer_max_pdu`` -> RJ(1, 1, 1) (HARDENING P15): we could
       not send such a peer a useful P-DATA-TF.

    The called and calling AE titles are the access policy's job
    (:mod:`gateway.access`).

    :param rq: the A-ASSOCIATE-RQ received.
    :param settings: our acceptor settings.
    :returns: the rejection to send, or ``None`` to go on negotiating.
    """
    # 1. PS3.8 9.3.2, protocol-version field: only bit 0 is tested.
    if not rq.protocol_version & 0x0001:
        return _rj(
            RejectResult.PERMANENT,
            RejectSource.SERVICE_PROVIDER_ACSE,
            RejectReasonACSE.PROTOCOL_VERSION_NOT_SUPPORTED,
        )
    # 2. PS3.7 A.2.1: DICOM defines exactly one application context name.
    if rq.application_context.rstrip("\x00 ") != DICOM_APPLICATION_CONTEXT:
        return _rj(
            RejectResult.PERMANENT,
            RejectSource.SERVICE_USER,
            RejectReasonUser.APPLICATION_CONTEXT_NAME_NOT_SUPPORTED,
        )
    # 3. PS3.8 9.3.2: one or more presentation context items are required.
    if not rq.presentation_contexts:
        return _rj(RejectResult.PERMANENT, RejectSource.SERVICE_USER, RejectReasonUser.NO_REASON)
    # 4. PS3.8 D.1: 0 means "no limit"; a tiny non-zero limit is refused.
    max_length = _peer_max_length(rq.user_information)
    if max_length is not None and 0 < max_length < settings.min_peer_max_pdu:
        return _rj(RejectResult.PERMANENT, RejectSource.SERVICE_USER, RejectReasonUser.NO_REASON)
    return None


def _choose_transfer_syntax(context: PresentationContextRQ, accepted: frozenset[str]) -> str | None:
    """The first proposed transfer syntax we accept, or ``None`` (PS3.8 9.3.2.2).

    The requestor lists its syntaxes in its own order of preference, and a
    router should keep the sender's encoding, so the first match wins.
    """
    for syntax in context.transfer_syntaxes:
        if syntax in accepted:
            return syntax
    return None


def _first_role_items(user_information: UserInformation | None) -> dict[str, SCPSCURoleSelection]:
    """The requestor's role selection items by SOP class, first one winning (PS3.7 D.3.3.4).

    PS3.7 D.3.3.4 allows one item per SOP class; if a peer sends several we
    keep the first, deterministically.
    """
    items: dict[str, SCPSCURoleSelection] = {}
    if user_information is not None:
        for item in user_information.role_selections:
            items.setdefault(item.sop_class_uid, item)
    return items


def negotiate_acceptor(
    rq: AAssociateRQ, settings: AcceptorSettings, user_identity: UserIdentityAC | None = None
) -> Negotiation:
    """Answer every presentation context and build the A-ASSOCIATE-AC (PS3.8 9.3.3).

    Call :func:`check_acse` (and the access policy) first; this function
    never rejects the association as a whole.

    Per context (PS3.8 Table 9-18):

    * abstract syntax not in ``settings.abstract_syntaxes`` (and unknown
      ones not allowed) -> result 3;
    * no proposed transfer syntax acceptable -> result 4;
    * the requestor proposed, through role selection, only the SCP role for
      that SOP class -> result 1 (user rejection): we only act as SCP, so no
      role would remain (PS3.7 D.3.3.4, Table D.3-12); unless the class is
      in ``settings.scp_role_abstract_syntaxes``, where the requestor's SCP
      role is granted (PS3.4 J.3.3.1.3);
    * otherwise accepted with the first acceptable proposed transfer syntax.

    A context ID that appears twice is answered once (the PDU decoder
    normally refuses such a request first, HARDENING P12).

    :param rq: the A-ASSOCIATE-RQ that passed :func:`check_acse`.
    :param settings: our acceptor settings.
    :param user_identity: the User Identity sub-item 0x59 to return, decided
        by the caller's user identity policy (PS3.7 D.3.3.7.2: only when the
        requestor asked for a positive response and its identity was
        accepted); ``None`` leaves it out.
    :returns: the AC, the accepted contexts and the peer's sending limit.
    """
    transfer_syntaxes = frozenset(settings.transfer_syntaxes)
    role_items = _first_role_items(rq.user_information)
    answers: list[PresentationContextAC] = []
    accepted: dict[int, AcceptedContext] = {}
    # SOP classes for which a role selection reply is due (PS3.7 D.3.3.4:
    # only for accepted contexts, and only if the requestor sent an item).
    role_replies: dict[str, SCPSCURoleSelection] = {}
    seen: set[int] = set()
    # PS3.4 C.4.3.3: a C-GET SCU proposes the SCP role for the storage
    # classes it wants its instances in; grant it only if C-GET is on offer.
    get_proposed = settings.get_sub_operations and any(
        context.abstract_syntax in QR_GET_SOP_CLASSES
        and context.abstract_syntax in settings.abstract_syntaxes
        and _choose_transfer_syntax(context, transfer_syntaxes) is not None
        for context in rq.presentation_contexts
    )

    for context in rq.presentation_contexts:
        if context.context_id in seen:
            continue
        seen.add(context.context_id)
        abstract = context.abstract_syntax
        # PS3.8 Table 9-18 reason 3: abstract syntax not supported.
        if abstract not in settings.abstract_syntaxes and not settings.accept_unknown_abstract_syntaxes:
            answers.append(
                PresentationContextAC(context.context_id, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, None)
            )
            continue
        # PS3.8 Table 9-18 reason 4: none of the transfer syntaxes supported.
        syntax = _choose_transfer_syntax(context, transfer_syntaxes)
        if syntax is None:
            answers.append(
                PresentationContextAC(context.context_id, ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED, None)
            )
            continue
        # PS3.7 D.3.3.4: without an item the requestor is SCU, we are SCP.
        scu_role, scp_role = True, False
        item = role_items.get(abstract)
        if item is not None:
            # We accept the requestor's SCU role when proposed (echo 1); its
            # SCP role only for the classes where we may act as SCU (PS3.4
            # J.3.3.1.3: an archive reporting Storage Commitment results to
            # us), else we decline it (0). Never answer 1 to a role proposed 0.
            scu_role = item.scu_role
            scp_role = item.scp_role and (
                abstract in settings.scp_role_abstract_syntaxes
                or (get_proposed and abstract not in NOT_SUB_OPERATION_CLASSES)
            )
            role_replies[abstract] = SCPSCURoleSelection(abstract, scu_role=scu_role, scp_role=scp_role)
        if not (scu_role or scp_role):
            # No role left for the requestor on this context (Table D.3-12).
            answers.append(PresentationContextAC(context.context_id, ContextResult.USER_REJECTION, None))
            continue
        answers.append(PresentationContextAC(context.context_id, ContextResult.ACCEPTANCE, syntax))
        accepted[context.context_id] = AcceptedContext(context.context_id, abstract, syntax, scu_role, scp_role)

    # PS3.7 D.3.3.3: reply to the asynchronous operations window only when
    # one was proposed, and then with 1/1 (HARDENING P38).
    proposed_window = rq.user_information.async_ops if rq.user_information is not None else None
    user_information = UserInformation(
        # PS3.8 D.1: the Maximum Length we are prepared to receive.
        max_length=settings.max_pdu_length,
        # PS3.7 D.3.3.2: implementation identification, always sent.
        implementation_class_uid=settings.implementation_class_uid,
        implementation_version_name=settings.implementation_version_name,
        async_ops=_SYNCHRONOUS_WINDOW if proposed_window is not None else None,
        # PS3.7 D.3.3.4: omitted when the requestor sent none.
        role_selections=tuple(role_replies.values()),
        # PS3.7 D.3.3.5 / PS3.4 C.5.1.1: only in reply to a received item.
        extended_negotiations=_extended_replies(rq.user_information, accepted, settings),
        # PS3.7 D.3.3.7.2: present only for an accepted identity whose
        # positive response was requested (the caller decides).
        user_identity_ac=user_identity,
    )
    ac = AAssociateAC(
        # PS3.8 9.3.3: the AE titles are echoed from the RQ.
        called_ae_title=rq.called_ae_title,
        calling_ae_title=rq.calling_ae_title,
        presentation_contexts=tuple(answers),
        user_information=user_information,
        application_context=DICOM_APPLICATION_CONTEXT,
        protocol_version=1,
    )
    return Negotiation(ac, accepted, _sending_limit(_peer_max_length(rq.user_information)))


def _extended_replies(
    user_information: UserInformation | None,
    accepted: Mapping[int, AcceptedContext],
    settings: AcceptorSettings,
) -> tuple[SOPClassExtendedNegotiation, ...]:
    """The SOP Class Extended Negotiation replies: C-FIND classes of accepted contexts only (PS3.4 C.5.1.1).

    The reply has as many bytes as the request's (at most the five PS3.4
    C.5.1.1 defines): relational-queries 1 only with
    ``settings.relational_queries`` and when the requestor proposed 1;
    combined date-time matching, fuzzy semantic matching, timezone query
    adjustment and enhanced multi-frame conversion 0 (not supported: the
    gateway does not promise what its sources may not do). One reply per
    class, the first item winning.
    """
    if user_information is None:
        return ()
    accepted_classes = {context.abstract_syntax for context in accepted.values()}
    replies: dict[str, SOPClassExtendedNegotiation] = {}
    for item in user_information.extended_negotiations:
        sop = item.sop_class_uid
        if sop not in QR_FIND_SOP_CLASSES or sop not in accepted_classes or sop in replies:
            continue
        proposed = item.application_information[:_FIND_EXTENDED_BYTES]
        if not proposed:
            continue
        reply = bytearray(len(proposed))
        reply[0] = 1 if settings.relational_queries and proposed[0] == 1 else 0
        replies[sop] = SOPClassExtendedNegotiation(sop, bytes(reply))
    return tuple(replies.values())


def relational_granted(ac: AAssociateAC) -> frozenset[str]:
    """The FIND SOP classes an A-ASSOCIATE-AC grants relational queries for (PS3.4 C.5.1.1, byte 1 = 1).

    Read on either side: the acceptor's own answer (what the requester may
    send), or a source's answer to the gateway (what it may be sent).

    :param ac: the A-ASSOCIATE-AC.
    :returns: the SOP class UIDs whose first extended negotiation reply has byte 1 set to 1.
    """
    if ac.user_information is None:
        return frozenset()
    granted: dict[str, bool] = {}
    for item in ac.user_information.extended_negotiations:
        granted.setdefault(item.sop_class_uid, item.application_information[:1] == b"\x01")
    return frozenset(sop for sop, yes in granted.items() if yes)


# ---------------------------------------------------------------------------
# Requestor
# ---------------------------------------------------------------------------


def build_request(
    calling_ae: str,
    called_ae: str,
    proposals: Sequence[tuple[str, Sequence[str]]],
    *,
    max_pdu_length: int,
    implementation_class_uid: str,
    implementation_version_name: str,
    role_selections: Sequence[SCPSCURoleSelection] = (),
    extended_negotiations: Sequence[SOPClassExtendedNegotiation] = (),
) -> AAssociateRQ:
    """Build an A-ASSOCIATE-RQ proposing one context per (abstract syntax, transfer syntaxes) pair.

    Context IDs are 1, 3, 5, ... in the order given (PS3.8 9.3.2.2: odd,
    1-255).

    :param calling_ae: our AE title.
    :param called_ae: the peer's AE title.
    :param proposals: (abstract syntax, transfer syntaxes in order of preference).
    :param max_pdu_length: the Maximum Length we announce (PS3.8 D.1).
    :param implementation_class_uid: sub-item 0x52 (PS3.7 D.3.3.2).
    :param implementation_version_name: sub-item 0x55 (PS3.7 D.3.3.2).
    :param role_selections: SCP/SCU role selection items (PS3.7 D.3.3.4).
    :param extended_negotiations: SOP Class Extended Negotiation items
        (PS3.7 D.3.3.5), e.g. relational-queries for a C-FIND class (PS3.4 C.5.1.1).
    :returns: the request.
    :raises ValueError: with no proposal, more than 128, or a proposal
        without transfer syntaxes.
    """
    if not proposals:
        raise ValueError("an A-ASSOCIATE-RQ needs at least one presentation context (PS3.8 9.3.2)")
    if len(proposals) > MAX_PRESENTATION_CONTEXTS:
        raise ValueError(f"{len(proposals)} presentation contexts; at most {MAX_PRESENTATION_CONTEXTS} fit")
    contexts = []
    for index, (abstract, syntaxes) in enumerate(proposals):
        if not syntaxes:
            raise ValueError(f"no transfer syntax proposed for {abstract}")
        contexts.append(PresentationContextRQ(2 * index + 1, abstract, tuple(syntaxes)))
    return AAssociateRQ(
        called_ae_title=called_ae,
        calling_ae_title=calling_ae,
        presentation_contexts=tuple(contexts),
        user_information=UserInformation(
            max_length=max_pdu_length,
            implementation_class_uid=implementation_class_uid,
            implementation_version_name=implementation_version_name,
            role_selections=tuple(role_selections),
            extended_negotiations=tuple(extended_negotiations),
        ),
        application_context=DICOM_APPLICATION_CONTEXT,
        protocol_version=1,
    )


def accepted_from_ac(rq: AAssociateRQ, ac: AAssociateAC) -> Negotiation:
    """Read the contexts we may use from the A-ASSOCIATE-AC answering ``rq``.

    A context is usable when its result is acceptance, its ID is one we
    proposed, and its transfer syntax is one we proposed for it (anything
    else is a peer bug; the context is simply left out). Roles follow PS3.7
    D.3.3.4: a role we did not propose is ignored in the reply; a role we
    proposed holds only if the acceptor answered 1; no reply item means the
    defaults (we are SCU, the acceptor is SCP).

    :param rq: the request we sent.
    :param ac: the acceptor's answer.
    :returns: the usable contexts and what we may send (16 KiB when the
        acceptor sent no Maximum Length, 0 for no limit).
    """
    proposed = {context.context_id: context for context in rq.presentation_contexts}
    ours = _first_role_items(rq.user_information)
    theirs = _first_role_items(ac.user_information)
    contexts: dict[int, AcceptedContext] = {}
    for answer in ac.presentation_contexts:
        context = proposed.get(answer.context_id)
        syntax = answer.transfer_syntax
        if not answer.accepted or context is None or syntax is None or syntax not in context.transfer_syntaxes:
            continue
        abstract = context.abstract_syntax
        scu_role, scp_role = True, False
        mine, reply = ours.get(abstract), theirs.get(abstract)
        if mine is not None and reply is not None:
            # PS3.7 D.3.3.4: a role holds if we proposed it and they accepted it.
            scu_role = mine.scu_role and reply.scu_role
            scp_role = mine.scp_role and reply.scp_role
        if not (scu_role or scp_role):
            # Table D.3-12: no role left, the context is unusable.
            continue
        contexts[answer.context_id] = AcceptedContext(answer.context_id, abstract, syntax, scu_role, scp_role)
    return Negotiation(ac, contexts, _sending_limit(_peer_max_length(ac.user_information)))
