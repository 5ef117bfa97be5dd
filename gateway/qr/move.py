"""C-MOVE through the gateway (PS3.4 C.4.2; issue 16).

Theory of operation
-------------------
A C-MOVE-RQ names a Move Destination AE title (PS3.7 9.1.4.1). It must be the
``ae_title`` of an entry of the ``modalities`` table whose name matches
``retrieve.allowed_destinations`` (fnmatch; empty allows every entry), else
the final response is 0xA801, "Refused: Move Destination unknown" (PS3.4
C.4.2.1.5). The instances are then *located*: a C-FIND at IMAGE level, with
the request's keys and Patient ID, Study, Series and SOP Instance UID and
SOP Class UID as return keys, at every source of ``retrieve.sources`` in
parallel, each bounded by ``query.timeout`` (30 s without ``query``; a slower
source is cancelled and left out, as is one that cannot be reached or fails).

Each instance is then moved from the **first** source in the list that holds
it (:func:`assign_shares`, de-duplicated by SOP Instance UID): a later source
is asked only for what earlier ones lack. A source whose share is all it
located is sent the request's own identifier (one C-MOVE, as with a single
source); otherwise one IMAGE-level C-MOVE per series, the SOP Instance UIDs as
a list under the single Study and Series Instance UID (and Patient ID in the
Patient Root model): the hierarchical keys of PS3.4 C.4.2.2.1, C.6.1.2.1 and
C.6.2.1.2 (:func:`share_requests`). A source that answers such a list 0xA900
or 0xCxxx with nothing sent is asked again for the whole series at the SERIES
level (:func:`series_fallback`). The sources move at the same time, each on
its own association (a move takes as long as its slowest source, and a
C-CANCEL reaches them all at once); one source's requests go one after
another on its association.

``pass_through``
    Each source is asked to C-MOVE its share straight to the requester's Move
    Destination (it must know that AE). The requester's pending responses
    carry the sum of the sources' counts; the final one their sum, with the
    Failed SOP Instance UID List of every source. A source that breaks or
    refuses counts what it did not send failed, with those UIDs (when it sent
    nothing of a request; else by count).

``relay`` (the default)
    One retrieve is journaled (:meth:`~gateway.queue.retrieves.IRetrieveJournal.open_retrieve`:
    its ``sources`` every source used, its items EXPECTED every instance once,
    with one outgoing Message ID unique among the open retrieves of every node;
    none free: 0xA702). Every source used is asked to C-MOVE its share to the
    gateway's own AE title with that Message ID, so each of their
    sub-operation C-STORE-RQs carries it as Move Originator Message ID (PS3.7
    9.1.1.1). The intake (:mod:`gateway.intake`) matches each arriving
    instance to the retrieve through the journal (Message ID *and* a SOP
    Instance UID the locating C-FIND returned), journals it with one queue
    entry to ``move.<modality name>`` (route ``retrieve``, no other route: no
    loop back to the archive) and links the item to that entry. The
    ``move.<name>`` worker (``gateway/service.py``) sends it through the
    normal queue. Pending C-MOVE responses (0xFF00) carry the journal's counts
    (:meth:`~gateway.queue.retrieves.IRetrieveJournal.progress`) about every
    second while sub-operations remain; the final one comes when none remains
    (after :data:`RELEASE_GRACE`, so the move destination's association is
    released first), or at ``retrieve.timeout``, with the Failed SOP Instance
    UID List (0008,0058) of the items known failed. The *stall rule*: once
    every source's C-MOVE has ended and nothing changed for
    :data:`STALL_AFTER_SOURCE`, the items never received end failed (listed);
    items in custody (received, queued to ``move.<name>``, the destination
    down) do not: they count remaining until ``retrieve.timeout``, when what
    remains counts failed although the queue still delivers it later (the
    requester is told what happened within the move's deadline).
    C-CANCEL-RQ cancels every source's C-MOVE at once and ends with 0xFE00
    and the counts so far (what is in custody is still delivered).
    The statuses: success; 0xB000 when some failed; 0xA702 when all failed
    (PS3.4 C.4.2.1.5, C.4.2.3.1); 0xC000 when no source answered.

Because the correlation is in the journal, the node that receives the
sub-operations need not be the one that took the request, and a restart
between them loses nothing already in custody: the instances received are
delivered by the ``move.<name>`` queue, and the restarted node ends its
retrieves still open (:func:`close_orphan_retrieves`; the requester's
association died with the process, its C-MOVE fails on its side).

Limits: locating is an IMAGE-level C-FIND with the request's keys, which
some strict archives refuse without the Series Instance UID (relational
retrieve); a retrieve ended by its deadline lists in (0008,0058) only the
items known failed (the count says how many remained); the per-series
fallback moves the whole series, so instances of it that an earlier source
also sends can reach the move destination twice (the same instance: a
storage SCP keeps one); a source that fails its locating C-FIND is left out
(what only it holds is not moved; the QuerySourceAnswered event and the
source metrics say so).

The source side is reached through :class:`ISourceLink` (an association to
one source, opened by :func:`open_source_link` or, in tests, by
``ctx.extra["open_source"]``).
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import events
from gateway.config.schema import DicomDestination, GatewayConfig, ModalityConfig, RetrieveConfig
from gateway.dimse.identifier import IdentifierError, Model, check_query, decode_identifier, sop_class_model
from gateway.qr.context import IResponder, QRContext, SubOperations
from gateway.queue.commitments import Reference
from gateway.queue.retrieves import ItemState, NewRetrieve, RetrieveIdsExhausted, RetrieveState

log = Logger(namespace="gateway.qr.move")

#: C-MOVE statuses (PS3.4 C.4.2.1.5, PS3.7 9.1.4.1.6 and C.4.2.3.1).
SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
WARNING_SUB_OPERATIONS = 0xB000  # Warning: sub-operations complete, one or more failures
REFUSED_OUT_OF_RESOURCES_SUB_OPERATIONS = 0xA702  # Refused: out of resources, unable to perform sub-operations
MOVE_DESTINATION_UNKNOWN = 0xA801  # Refused: Move Destination unknown
UNABLE_TO_PROCESS = 0xC000  # Failed: unable to process (0xCxxx)

#: The MOVE SOP Class of each model and the FIND class that locates for it (PS3.4 C.6.1, C.6.2).
FIND_FOR_MOVE: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.2.1.2": "1.2.840.10008.5.1.4.1.2.1.1",  # Patient Root
    "1.2.840.10008.5.1.4.1.2.2.2": "1.2.840.10008.5.1.4.1.2.2.1",  # Study Root
}

#: The queue destinations of move destinations are named ``move.<modality name>``.
MOVE_DESTINATION_PREFIX = "move."

#: The route name of the relayed instances' queue entries.
RETRIEVE_ROUTE = "retrieve"

#: Seconds between pending C-MOVE responses while sub-operations remain.
PENDING_INTERVAL = 1.0

#: Seconds without any change of the counts, once every source's C-MOVE has
#: ended, after which the items never received count failed (instances a
#: source never sent, or an association to it that broke), rather than
#: waiting for ``retrieve.timeout``. Items in custody (queued to ``move.*``,
#: the destination down) are not failed by it: they wait for the deadline.
STALL_AFTER_SOURCE = 30.0

#: Seconds the source is given to end its C-MOVE after our C-CANCEL (or our
#: deadline) before its association is aborted rather than released.
SOURCE_END_WAIT = 10.0

#: Seconds between "nothing remains" and the final response: the ``move.NAME``
#: worker releases its association as soon as it is idle (``idle_release`` 0),
#: and a requester such as DCMTK ``movescu`` with its own storage SCP waits for
#: that release before it reads the final C-MOVE-RSP.
RELEASE_GRACE = 0.5

#: The most instances one source's locating C-FIND may name (HARDENING: a
#: bounded size). A source naming more is cancelled and the C-MOVE refused
#: 0xA702 with an Error Comment, rather than holding an unbounded list (and a
#: journal retrieve of that many items) for one request.
MAX_LOCATED = 200_000



@dataclass(frozen=True)
class SourceMoveResult:
    """The source's final C-MOVE-RSP: its status, counts and Failed SOP Instance UID List."""

    status: int
    counts: SubOperations
    failed_uids: tuple[str, ...] = ()
    error_comment: str = ""


class ISourceLink(Protocol):
    """An association to one source (an archive), for locating and moving."""

    def find(self, sop_class_uid: str, identifier: Any, on_match: Callable[[Any], None]) -> "Deferred[int]":
        """C-FIND of a pydicom Dataset: ``on_match`` gets each pending identifier (a Dataset) as it comes; fires with the final status."""

    def move(
        self,
        sop_class_uid: str,
        move_destination: str,
        identifier: Any,
        message_id: int | None,
        on_pending: Callable[[SubOperations], None],
    ) -> "Deferred[SourceMoveResult]":
        """C-MOVE of a Dataset with our Message ID (``None``: the association's next); fires with the final response."""

    def cancel(self) -> None:
        """C-CANCEL-RQ for the request in progress (PS3.7 9.3.2.3)."""

    def release(self) -> "Deferred[None]":
        """A-RELEASE the association."""

    def abort(self) -> None:
        """A-ABORT the association (a source that did not end its C-MOVE in time)."""


OpenSource = Callable[[QRContext, Any, Sequence[str]], "Deferred[ISourceLink]"]


#: The transfer syntaxes proposed for the Q/R classes to a source: Explicit, then Implicit VR Little Endian.
SOURCE_TRANSFER_SYNTAXES: tuple[str, ...] = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


def open_source_link(ctx: QRContext, destination: Any, sop_classes: Sequence[str]) -> "Deferred[ISourceLink]":
    """Open an association to ``destination`` proposing ``sop_classes`` (through ``ctx.connect``)."""
    if ctx.connect is None:
        raise RuntimeError("no way to reach the sources (QRContext.connect)")
    proposals = [(sop_class, list(SOURCE_TRANSFER_SYNTAXES)) for sop_class in sop_classes]
    d: Deferred[Any] = ctx.connect(destination, proposals)
    d.addCallback(AssociationLink)
    return d


def counts_of(command: Any) -> SubOperations:
    """The sub-operation counts of a C-MOVE/C-GET-RSP (absent ones are 0, Remaining stays ``None``)."""
    return SubOperations(
        command.remaining, command.completed or 0, command.failed or 0, command.warning or 0
    )


def failed_uid_list(response: Any) -> tuple[str, ...]:
    """The Failed SOP Instance UID List (0008,0058) of a final C-MOVE-RSP's identifier, when it has one."""
    if response.identifier is None:
        return ()
    try:
        value = response.dataset().get("FailedSOPInstanceUIDList", None)
    except Exception:
        return ()
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(v for v in value.split("\\") if v)
    return tuple(str(v) for v in value)


class AssociationLink:
    """:class:`ISourceLink` over a :class:`~gateway.associate.ClientAssociation` (its ``find``/``move`` streams)."""

    def __init__(self, association: Any) -> None:
        self.association = association
        self.stream: Any = None

    @inlineCallbacks
    def find(self, sop_class_uid: str, identifier: Any, on_match: Callable[[Any], None]) -> Any:
        """Relay each match as it arrives; return the final status."""
        self.stream = self.association.find(sop_class_uid, identifier)
        while True:
            response = yield self.stream.next()
            if response is None:
                raise RuntimeError("C-FIND stream ended without a final response")
            if not response.pending:
                return response.status
            if response.identifier is not None:
                on_match(response.dataset())

    @inlineCallbacks
    def move(
        self,
        sop_class_uid: str,
        move_destination: str,
        identifier: Any,
        message_id: int | None,
        on_pending: Callable[[SubOperations], None],
    ) -> Any:
        """Relay each pending response's counts; return the final response."""
        self.stream = self.association.move(sop_class_uid, move_destination, identifier, message_id=message_id)
        while True:
            response = yield self.stream.next()
            if response is None:
                raise RuntimeError("C-MOVE stream ended without a final response")
            if response.pending:
                on_pending(counts_of(response.command))
                continue
            return SourceMoveResult(
                response.status, counts_of(response.command), failed_uid_list(response), response.command.error_comment or ""
            )

    def cancel(self) -> None:
        """C-CANCEL-RQ for the request in progress."""
        if self.stream is not None:
            self.stream.cancel()

    def abort(self) -> None:
        """A-ABORT (an association already closed is left alone)."""
        if self.association.is_open:
            self.association.abort()

    def release(self) -> "Deferred[None]":
        """A-RELEASE (an association already closed is left alone)."""
        if not self.association.is_open:
            return succeed(None)
        d: Deferred[None] = self.association.release()
        return d


def move_destinations(config: GatewayConfig) -> tuple[DicomDestination, ...]:
    """The queue destinations ``move.<name>`` of the ``modalities`` table, when retrieve is configured anywhere.

    Each is a DICOM destination built from its :class:`ModalityConfig`
    (address, TLS, timeouts), called with the gateway's AE title, one
    association released as soon as it is idle (see :data:`RELEASE_GRACE`).
    """
    if config.retrieve is None and all(listener.retrieve is None for listener in config.listen):
        return ()
    return tuple(
        DicomDestination(
            name=MOVE_DESTINATION_PREFIX + modality.name,
            ae_title=modality.ae_title,
            host=modality.host,
            port=modality.port,
            calling_ae_title=config.ae_title,
            max_associations=1,
            idle_release=0.0,
            max_pdu_length=modality.max_pdu_length,
            connect_timeout=modality.connect_timeout,
            acse_timeout=modality.acse_timeout,
            dimse_timeout=modality.dimse_timeout,
            tls=modality.tls,
        )
        for modality in config.modalities
    )


def close_orphan_retrieves(journal: Any, node: str, now: float) -> int:
    """At start: end this node's OPEN retrieves FAILED (blocking; on the store's thread).

    The requester's association ended with the process that took the request,
    so nobody can answer it; ending the retrieve frees its outgoing Message ID.
    What the source had already sent stays in custody and is delivered to the
    move destination by its ``move.<name>`` queue (issue 16: a ``kill -9``
    during a relayed C-MOVE).

    :returns: how many were ended.
    """
    ended = 0
    for retrieve in journal.retrieves(RetrieveState.OPEN, limit=100000):
        if retrieve.node != node:
            continue
        journal.finish_retrieve(retrieve.retrieve_id, RetrieveState.FAILED, "the gateway restarted: the requester's association ended", now)
        ended += 1
    return ended


def find_modality(config: GatewayConfig, retrieve: RetrieveConfig, ae_title: str) -> ModalityConfig | None:
    """The ``modalities`` entry a requester may name as Move Destination, or ``None`` (0xA801).

    :param ae_title: the C-MOVE-RQ's Move Destination (trailing spaces are not
        significant, PS3.5 Table 6.2-1).
    """
    wanted = ae_title.strip()
    for modality in config.modalities:
        if modality.ae_title.strip() != wanted:
            continue
        patterns = retrieve.allowed_destinations
        if not patterns or any(fnmatch.fnmatchcase(modality.name, p) for p in patterns):
            return modality
        return None
    return None


def retrieve_config(config: GatewayConfig, listener_name: str) -> RetrieveConfig | None:
    """The ``retrieve`` settings in force on the listener named ``listener_name``."""
    for listener in config.listen:
        if listener.name == listener_name:
            return config.retrieve_for(listener)
    return config.retrieve


def final_status(completed: int, failed: int, warning: int) -> int:
    """The final C-MOVE/C-GET status for these counts (PS3.4 C.4.2.1.5, C.4.2.3.1).

    Success when nothing failed or warned; 0xA702 when sub-operations were
    attempted and all failed; else 0xB000 (one or more failures or warnings).
    """
    if failed == 0 and warning == 0:
        return SUCCESS
    if completed == 0 and warning == 0:
        return REFUSED_OUT_OF_RESOURCES_SUB_OPERATIONS
    return WARNING_SUB_OPERATIONS


def locate_identifier(request: Any) -> Any:
    """The IMAGE-level C-FIND identifier locating a C-MOVE's instances, and the request's level.

    The request's keys are kept (a copy); Query/Retrieve Level (0008,0052)
    becomes IMAGE; Patient ID, Study, Series and SOP Instance UID and SOP
    Class UID are asked for as return keys where the request has none (the
    keys above the IMAGE level of a move by UID list, PS3.4 C.4.2.2.1).
    """
    dataset = copy.deepcopy(request)
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if keyword not in dataset:
            setattr(dataset, keyword, "")
    dataset.QueryRetrieveLevel = "IMAGE"
    return dataset


def located_reference(dataset: Any) -> Reference | None:
    """The instance a locating C-FIND response (a Dataset) names, or ``None`` when it names none."""
    uid = str(dataset.get("SOPInstanceUID", "") or "").strip()
    if not uid:
        return None
    return Reference(str(dataset.get("SOPClassUID", "") or "").strip(), uid)


@dataclass(frozen=True)
class Located:
    """One instance a source's locating C-FIND named, with the unique keys above it.

    :ivar reference: its SOP Class and SOP Instance UID.
    :ivar patient_id: Patient ID (the PATIENT level's unique key in the Patient Root model).
    :ivar study_uid: Study Instance UID.
    :ivar series_uid: Series Instance UID.
    """

    reference: Reference
    patient_id: str = ""
    study_uid: str = ""
    series_uid: str = ""

    @property
    def uid(self) -> str:
        """The SOP Instance UID."""
        return self.reference.sop_instance_uid


def located_instance(dataset: Any) -> Located | None:
    """The :class:`Located` of a locating C-FIND response, or ``None`` when it names no instance."""
    reference = located_reference(dataset)
    if reference is None:
        return None

    def text(keyword: str) -> str:
        value = dataset.get(keyword, "")
        return str(value or "").strip()

    return Located(reference, text("PatientID"), text("StudyInstanceUID"), text("SeriesInstanceUID"))


@dataclass(frozen=True)
class Share:
    """What one source is asked to move: the instances it holds that no earlier source holds.

    :ivar source: the source's name.
    :ivar instances: its instances, in the order it named them.
    :ivar whole: it located nothing more (no earlier source holds any of
        them): the request's own identifier asks for exactly these.
    """

    source: str
    instances: tuple[Located, ...]
    whole: bool


def assign_shares(located: Sequence[tuple[str, Sequence[Located]]]) -> tuple[Share, ...]:
    """Each instance goes to the first source in ``located`` (configuration order) that holds it.

    De-duplicated by SOP Instance UID (also within one source's answer);
    sources left with nothing are left out.
    """
    taken: set[str] = set()
    shares: list[Share] = []
    for source, instances in located:
        mine: list[Located] = []
        held = 0
        seen: set[str] = set()
        for instance in instances:
            if instance.uid in seen:
                continue
            seen.add(instance.uid)
            held += 1
            if instance.uid not in taken:
                mine.append(instance)
        taken.update(instance.uid for instance in mine)
        if mine:
            shares.append(Share(source, tuple(mine), len(mine) == held))
    return tuple(shares)


@dataclass(frozen=True)
class SourceRequest:
    """One C-MOVE-RQ to a source: its identifier and the SOP Instance UIDs it asks for.

    :ivar series: ``(patient_id, study_uid, series_uid)`` of a move by UID
        list (the per-series fallback's keys); ``None`` for the request's own
        identifier.
    """

    identifier: Any
    uids: tuple[str, ...]
    series: tuple[str, str, str] | None = None


def _hierarchical(request: Any, level: str, keys: tuple[str, str, str], patient_root: bool) -> Any:
    """A C-MOVE identifier at ``level`` with the unique keys above it (PS3.4 C.4.2.2.1, C.6.1.2.1, C.6.2.1.2)."""
    from pydicom.dataset import Dataset

    patient_id, study_uid, series_uid = keys
    dataset = Dataset()
    charset = request.get("SpecificCharacterSet", None) if request is not None else None
    if charset:
        dataset.SpecificCharacterSet = charset
    dataset.QueryRetrieveLevel = level
    if patient_root:
        dataset.PatientID = patient_id
    dataset.StudyInstanceUID = study_uid
    dataset.SeriesInstanceUID = series_uid
    return dataset


def share_requests(request: Any, share: Share, patient_root: bool) -> tuple[SourceRequest, ...]:
    """The C-MOVE-RQs that ask ``share``'s source for its share and nothing else.

    A source whose share is all it located gets the request's own identifier
    (one C-MOVE, as with a single source). Otherwise one IMAGE-level C-MOVE
    per series, its SOP Instance UIDs as a list (a List of UID matching, PS3.4
    C.2.2.2.2), with the single Study and Series Instance UID above them (and
    Patient ID in the Patient Root model): in the baseline hierarchical
    retrieve every level above the retrieve level carries one unique key
    (PS3.4 C.4.2.2.1, C.6.1.2.1 and C.6.2.1.2).
    """
    uids = tuple(instance.uid for instance in share.instances)
    if share.whole:
        return (SourceRequest(request, uids, None),)
    groups: dict[tuple[str, str, str], list[str]] = {}
    for instance in share.instances:
        groups.setdefault((instance.patient_id, instance.study_uid, instance.series_uid), []).append(instance.uid)
    requests: list[SourceRequest] = []
    for keys, members in groups.items():
        dataset = _hierarchical(request, "IMAGE", keys, patient_root)
        dataset.SOPInstanceUID = members if len(members) > 1 else members[0]
        requests.append(SourceRequest(dataset, tuple(members), keys))
    return tuple(requests)


def series_fallback(request: Any, source_request: SourceRequest, patient_root: bool) -> Any:
    """The SERIES-level C-MOVE identifier of a UID-list request a source refused."""
    assert source_request.series is not None
    return _hierarchical(request, "SERIES", source_request.series, patient_root)


def refuses_uid_list(result: SourceMoveResult) -> bool:
    """A source's answer to a C-MOVE by UID list that calls for the per-series fallback.

    0xA900 (Identifier does not match SOP Class) or a 0xCxxx failure (Unable
    to process) with no sub-operation done (PS3.4 C.4.2.1.5): archives that do
    not take a List of UID at the IMAGE level answer so.
    """
    nothing = result.counts.completed == 0 and result.counts.warning == 0
    return nothing and (result.status == 0xA900 or result.status & 0xF000 == 0xC000)


def nothing_sent(result: SourceMoveResult) -> bool:
    """The source's final response says it sent nothing and is not a success (every UID asked for failed)."""
    return result.counts.completed == 0 and result.counts.warning == 0 and result.status not in (SUCCESS, PENDING)


def locate_timeout(config: GatewayConfig, listener_name: str) -> float:
    """Seconds a source may take to answer the locating C-FIND: ``query.timeout`` in force on the listener (30 s without ``query``)."""
    query = config.query
    for listener in config.listen:
        if listener.name == listener_name:
            query = config.query_for(listener)
            break
    return query.timeout if query is not None else 30.0


def move(info: Any, rq: Any, identifier: bytes, responder: IResponder, ctx: QRContext) -> "Deferred[None]":
    """Handle one C-MOVE-RQ (see the module docstring); ends with exactly one :meth:`IResponder.final`.

    :param info: the association (:class:`~gateway.receive.AssociationInfo`).
    :param rq: the C-MOVE-RQ (``message_id``, ``affected_sop_class_uid``, ``move_destination``).
    :param identifier: its identifier, encoded in ``responder.transfer_syntax``.
    """
    d = _Move(info, rq, identifier, responder, ctx).run()

    def unexpected(failure: Failure) -> None:
        log.failure("C-MOVE failed unexpectedly", failure)

    d.addErrback(unexpected)
    return d


class _Move:
    """One C-MOVE-RQ being served."""

    def __init__(self, info: Any, rq: Any, identifier: bytes, responder: IResponder, ctx: QRContext) -> None:
        self.info = info
        self.rq = rq
        self.identifier = identifier
        self.responder = responder
        self.ctx = ctx
        self.config: GatewayConfig = ctx.config()
        self.open_source: OpenSource = ctx.extra.get("open_source", open_source_link)
        self.finished = False
        self.cancelled = False
        #: The source associations a C-CANCEL must reach (locating or moving).
        self.links: list[ISourceLink] = []
        self.request: Any = None  # the decoded identifier
        self.started = ctx.wall()
        self.level = ""
        self.mode = "relay"
        self.destination = ""
        self.sources: tuple[str, ...] = ()
        #: The source that named more than MAX_LOCATED instances ("": none).
        self.too_many = ""
        responder.cancelled.addCallback(self._cancel)

    def final(
        self, status: int, counts: SubOperations | None = None, comment: str = "", failed_uids: Sequence[str] = (),
        offending: tuple[int, ...] = (),
    ) -> None:
        """Send the final response once (later calls are ignored), and tell the observer (audit, metrics).

        ``offending``: the Offending Element (0000,0901) of a refused identifier (PS3.7 9.1.4.1).
        """
        if self.finished:
            return
        self.finished = True
        if offending:
            self.responder.final(status, counts, comment, failed_uids, offending=offending)
        else:
            self.responder.final(status, counts, comment, failed_uids)
        try:
            self.ctx.observer.observe(self._answered(status, counts or SubOperations(), comment, tuple(failed_uids)))
        except Exception:
            log.failure("could not report a C-MOVE's end")

    def _answered(self, status: int, counts: SubOperations, comment: str, failed_uids: tuple[str, ...]) -> events.RetrieveAnswered:
        """The :class:`~gateway.events.RetrieveAnswered` of this C-MOVE's final response."""
        if status == SUCCESS:
            outcome = "success"
        elif status == WARNING_SUB_OPERATIONS:
            outcome = "warning"
        elif status == CANCEL:
            outcome = "cancelled"
        elif status == MOVE_DESTINATION_UNKNOWN:
            outcome = "refused"
        elif self.request is None and (status & 0xF000 == 0xC000 or status == 0xA900):
            outcome = "invalid"
        else:
            outcome = "failed"
        studies: tuple[str, ...] = ()
        if self.request is not None:
            value = self.request.get("StudyInstanceUID", None)
            if isinstance(value, str):
                studies = (value,) if value else ()
            elif value:
                studies = tuple(str(v) for v in value)  # a List of UID (PS3.4 C.2.2.2.2)
        return events.RetrieveAnswered(
            listener=self.info.listener,
            calling_ae_title=self.info.calling_ae_title,
            peer=str(getattr(self.info, "peer_address", "")),
            verb="move",
            sop_class_uid=str(self.rq.affected_sop_class_uid),
            level=self.level,
            outcome=outcome,
            status=status,
            completed=counts.completed,
            failed=counts.failed,
            warning=counts.warning,
            destination=self.destination,
            move_destination=str(self.rq.move_destination or ""),
            mode=self.mode,
            sources=self.sources,
            study_uids=studies,
            failed_uids=failed_uids,
            duration_seconds=max(0.0, self.ctx.wall() - self.started),
            reason=comment,
        )

    def _cancel(self, _: object) -> None:
        """C-CANCEL-RQ (or the association ended): reach every source at once; the final answer is the caller's.

        Each source's C-FIND or C-MOVE in progress gets its C-CANCEL-RQ now
        (PS3.7 9.3.2.3, PS3.4 C.4.2.3.1), without waiting for anything.
        """
        if self.finished:
            return
        self.cancelled = True
        for link in list(self.links):
            try:
                link.cancel()
            except Exception:
                log.failure("could not cancel a source's request")

    @inlineCallbacks
    def run(self) -> Any:
        """Check the destination, locate at every source, then pass through or relay each source's share."""
        retrieve = retrieve_config(self.config, self.info.listener)
        if retrieve is None or not retrieve.sources:
            self.final(UNABLE_TO_PROCESS, comment="Retrieve is not configured on this listener")
            return
        modality = find_modality(self.config, retrieve, self.rq.move_destination or "")
        if modality is None:
            log.info(
                "C-MOVE from {calling} refused: Move Destination {destination!r} unknown or not allowed",
                calling=self.info.calling_ae_title,
                destination=self.rq.move_destination,
            )
            self.final(MOVE_DESTINATION_UNKNOWN, comment="Move Destination unknown")
            return
        self.destination = modality.name
        self.mode = retrieve.mode
        sop_class = self.rq.affected_sop_class_uid
        find_class = FIND_FOR_MOVE.get(sop_class)
        if find_class is None:
            self.final(UNABLE_TO_PROCESS, comment=f"Not a C-MOVE SOP Class: {sop_class}")
            return
        model = sop_class_model(sop_class)
        try:
            request = decode_identifier(self.identifier, self.responder.transfer_syntax)
            level = check_query(request, model[0], retrieve=True) if model is not None else ""
        except IdentifierError as e:
            self.final(e.status, comment=e.comment[:64], offending=e.offending)
            return
        except Exception as e:
            self.final(UNABLE_TO_PROCESS, comment=f"Identifier cannot be read: {e}"[:64])
            return
        self.request = request
        self.level = level
        located = yield self._locate(retrieve, find_class, sop_class, locate_identifier(request))
        answered = [(name, link, instances) for name, link, instances in located if link is not None]
        shares = assign_shares([(name, instances) for name, _, instances in answered])
        used = {share.source for share in shares}
        links = {name: link for name, link, _ in answered}
        for name, link, _ in answered:
            if name not in used or self.cancelled:
                yield self._release(link)
        if self.cancelled:
            self.final(CANCEL, SubOperations(0, 0, 0, 0))
            return
        if self.too_many:
            for name, link, _ in answered:
                if name in used:
                    yield self._release(link)
            self.final(REFUSED_OUT_OF_RESOURCES_SUB_OPERATIONS, comment=f"More than {MAX_LOCATED} instances at {self.too_many}"[:64])
            return
        if not answered:
            # No source answered the locating C-FIND: "Failed: Unable to process" (PS3.4 C.4.2.1.5, Cxxx).
            self.final(UNABLE_TO_PROCESS, comment="No retrieve source answered")
            return
        if not shares:
            self.final(SUCCESS, SubOperations(0, 0, 0, 0))
            return
        patient_root = model is not None and model[0] is Model.PATIENT_ROOT
        runs = [
            _SourceRun(share.source, links[share.source], share_requests(request, share, patient_root))
            for share in shares
        ]
        self.sources = tuple(share.source for share in shares)
        if retrieve.mode == "pass_through":
            yield self._pass_through(runs, sop_class, patient_root)
        else:
            yield self._relay(retrieve, modality, runs, sop_class, level, shares, patient_root)

    @inlineCallbacks
    def _locate(self, retrieve: RetrieveConfig, find_class: str, move_class: str, locate: Any) -> Any:
        """Locate at every source in parallel, each bounded by ``query.timeout``.

        :returns: ``[(source, link, instances)]`` in configuration order; the
            link is ``None`` for a source that could not be reached or did not
            answer with success (its matches are not used), else still open.
        """
        timeout = locate_timeout(self.config, self.info.listener)
        names = [name for name in retrieve.sources]
        results = yield DeferredList(
            [self._locate_at(name, find_class, move_class, locate, timeout) for name in names], consumeErrors=True
        )
        located: list[tuple[str, ISourceLink | None, tuple[Located, ...]]] = []
        for name, (ok, value) in zip(names, results):
            located.append(value if ok else (name, None, ()))
        return located

    @inlineCallbacks
    def _locate_at(self, name: str, find_class: str, move_class: str, locate: Any, timeout: float) -> Any:
        """One source's locating C-FIND: ``(name, link or None, instances)``; a source slower than ``timeout`` is cancelled and left out."""
        try:
            destination = self.config.destination(name)
        except KeyError:
            log.error("retrieve source {name} is not a destination", name=name)
            return name, None, ()
        started = self.ctx.wall()
        expired: list[bool] = []
        link: ISourceLink | None = None

        def too_slow() -> None:
            expired.append(True)
            if link is not None:
                link.cancel()

        def unresponsive() -> None:
            # Not even the C-CANCEL answered within SOURCE_END_WAIT: abort, which ends the C-FIND.
            if link is not None:
                link.abort()

        timer = self.ctx.reactor.callLater(timeout, too_slow)
        last_resort = self.ctx.reactor.callLater(timeout + SOURCE_END_WAIT, unresponsive)
        try:
            try:
                link = yield self.open_source(self.ctx, destination, (find_class, move_class))
            except Exception as e:
                log.warn("retrieve source {name} cannot be reached: {error}", name=name, error=e)
                self._source_answered(name, False, 0, started, f"{type(e).__name__}: {e}")
                return name, None, ()
            if expired or self.cancelled:
                yield self._release(link)
                if expired:
                    self._source_answered(name, False, 0, started, "timeout")
                return name, None, ()
            found: list[Located] = []
            seen: set[str] = set()
            too_many: list[bool] = []

            def on_match(dataset: Any) -> None:
                if too_many:
                    return
                instance = located_instance(dataset)
                if instance is not None and instance.uid not in seen:
                    seen.add(instance.uid)
                    found.append(instance)
                    if len(found) > MAX_LOCATED:
                        too_many.append(True)
                        self.too_many = name
                        found.clear()
                        seen.clear()
                        link.cancel()

            self.links.append(link)
            try:
                status = yield link.find(find_class, locate, on_match)
            except Exception as e:
                log.warn("locating at {name} failed: {error}", name=name, error=e)
                status = UNABLE_TO_PROCESS
            finally:
                self.links.remove(link)
        finally:
            for call in (timer, last_resort):
                if call.active():
                    call.cancel()
        ok = status in (SUCCESS, CANCEL) and not expired
        reason = "timeout" if expired else ("" if ok else f"status 0x{status:04X}")
        self._source_answered(name, ok, len(found), started, reason)
        if status != SUCCESS or expired or self.cancelled or too_many:
            yield self._release(link)
            return name, None, ()
        return name, link, tuple(found)

    def _source_answered(self, name: str, ok: bool, results: int, started: float, reason: str) -> None:
        """Tell the observer how a source's locating C-FIND went (metrics by source)."""
        try:
            self.ctx.observer.observe(
                events.QuerySourceAnswered(name, ok, results, max(0.0, self.ctx.wall() - started), reason)
            )
        except Exception:
            log.failure("could not report a source's locating C-FIND")

    @inlineCallbacks
    def _release(self, link: ISourceLink) -> Any:
        """Release a source's association; a failure is logged, never raised."""
        try:
            yield link.release()
        except Exception as e:
            log.warn("releasing a source association failed: {error}", error=e)

    @inlineCallbacks
    def _run_source(
        self,
        run: "_SourceRun",
        sop_class: str,
        move_destination: str,
        message_id: int | None,
        patient_root: bool,
        ended: Callable[["_SourceRun", SourceRequest, Any], None],
    ) -> Any:
        """One source's C-MOVEs, one after another on its association; ``ended`` gets each request's result (or Failure).

        A UID-list request refused (:func:`refuses_uid_list`) is asked again
        at the SERIES level. A request that breaks (association lost) ends the
        source: its later requests are not tried (``run.untried``).
        """
        self.links.append(run.link)
        try:
            for index, request in enumerate(run.requests):
                if self.cancelled or self.finished:
                    run.untried = run.requests[index:]
                    break
                run.current = None
                try:
                    result = yield run.link.move(sop_class, move_destination, request.identifier, message_id, run.pending)
                    if request.series is not None and refuses_uid_list(result) and not self.cancelled:
                        log.info(
                            "source {name} refused a C-MOVE by UID list (0x{status:04X}): moving the series",
                            name=run.name, status=result.status,
                        )
                        run.current = None
                        fallback = series_fallback(self.request, request, patient_root)
                        result = yield run.link.move(sop_class, move_destination, fallback, message_id, run.pending)
                except Exception as e:
                    log.warn("C-MOVE at source {name} failed: {error}", name=run.name, error=e)
                    run.broken = True
                    run.untried = run.requests[index + 1:]
                    ended(run, request, Failure(e))
                    break
                ended(run, request, result)
        finally:
            run.finished = True
            self.links.remove(run.link)

    @inlineCallbacks
    def _end_sources(self, runs: Sequence["_SourceRun"], moving: Sequence["Deferred[Any]"]) -> Any:
        """Release every source once its C-MOVEs ended; one still moving is cancelled, given SOURCE_END_WAIT, then aborted."""
        still = [run for run in runs if not run.finished]
        if still:
            # Cancelled, or ended by the deadline: cancel what still runs (PS3.7
            # 9.3.2.3; a cancelled move's links were cancelled already).
            if not self.cancelled:
                for run in still:
                    try:
                        run.link.cancel()
                    except Exception:
                        log.failure("could not cancel a source's C-MOVE")
            waited: Deferred[None] = Deferred()
            timer = self.ctx.reactor.callLater(SOURCE_END_WAIT, lambda: waited.called or waited.callback(None))
            every = DeferredList(list(moving), consumeErrors=True)

            def all_ended(_: object) -> None:
                if timer.active():
                    timer.cancel()
                if not waited.called:
                    waited.callback(None)

            every.addBoth(all_ended)
            yield waited
        for run in runs:
            if run.finished:
                yield self._release(run.link)
            else:
                run.link.abort()

    @inlineCallbacks
    def _pass_through(self, runs: Sequence["_SourceRun"], sop_class: str, patient_root: bool) -> Any:
        """Each source moves its share straight to the requester's Move Destination; their counts are summed.

        Pending responses carry the sum over the sources (PS3.4 C.4.2.1.3);
        a source that breaks or refuses counts its unsent share failed with
        its UIDs (0008,0058).
        """
        tally = _PassThroughTally(runs)

        def pending(_: SubOperations) -> None:
            if not self.finished and not self.cancelled:
                self.responder.pending(PENDING, counts=tally.counts())

        for run in runs:
            run.on_pending = pending
        moving = [
            self._run_source(run, sop_class, self.rq.move_destination, None, patient_root, tally.ended) for run in runs
        ]
        cancelled: Deferred[None] = Deferred()
        self.responder.cancelled.addCallback(lambda _: cancelled.called or cancelled.callback(None))
        every = DeferredList(list(moving), consumeErrors=True)
        first = DeferredList([every, cancelled], fireOnOneCallback=True, consumeErrors=True)
        yield first
        counts = tally.counts()
        if self.cancelled:
            self.final(CANCEL, counts, "", tally.failed_uids)
        else:
            final_counts = SubOperations(0, counts.completed, counts.failed, counts.warning)
            status = final_status(counts.completed, counts.failed, counts.warning)
            if tally.only_status is not None and status != SUCCESS:
                status = tally.only_status  # one source, one request: its own status (and comment) as it said
            self.final(status, final_counts, tally.comment, tally.failed_uids)
        yield self._end_sources(runs, moving)

    @inlineCallbacks
    def _relay(
        self,
        retrieve: RetrieveConfig,
        modality: ModalityConfig,
        runs: Sequence["_SourceRun"],
        sop_class: str,
        level: str,
        shares: Sequence[Share],
        patient_root: bool,
    ) -> Any:
        """The sources move to the gateway, in parallel, under one journaled retrieve (see the module docstring)."""
        journal = self.ctx.journal
        now = self.ctx.wall()
        new = NewRetrieve(
            kind="move",
            requester_ae_title=self.info.calling_ae_title,
            listener=self.info.listener,
            requester_message_id=self.rq.message_id,
            destination=modality.name,
            mode="relay",
            level=level,
            sources=tuple(share.source for share in shares),
            expected=tuple(instance.reference for share in shares for instance in share.instances),
            deadline=now + retrieve.timeout,
        )
        try:
            opened = yield self.ctx.run.run(journal.open_retrieve, new, now)
        except RetrieveIdsExhausted:
            for run in runs:
                yield self._release(run.link)
            self.final(REFUSED_OUT_OF_RESOURCES_SUB_OPERATIONS, comment="No C-MOVE message ID free")
            return
        except Exception as e:
            for run in runs:
                yield self._release(run.link)
            log.error("could not journal a retrieve: {error}", error=e)
            self.final(REFUSED_OUT_OF_RESOURCES_SUB_OPERATIONS, comment="Retrieve journal not writable")
            return
        relay = _Relay(self, opened.retrieve_id, new.deadline)
        # Every source at once, on its own association, under the one Message ID:
        # the sources' shares are disjoint, so the intake's match (Message ID and
        # SOP Instance UID) finds each instance's item whichever source sends it;
        # the move takes as long as the slowest source, not their sum, and a
        # C-CANCEL reaches every one of them at once.
        moving = [
            self._run_source(run, sop_class, self.ctx.ae_title, opened.message_id, patient_root, relay.request_ended)
            for run in runs
        ]
        DeferredList(list(moving), consumeErrors=True).addCallback(lambda _: relay.sources_finished())
        yield relay.done
        yield self._end_sources(runs, moving)


class _SourceRun:
    """One source's part of a C-MOVE: its association and its requests."""

    def __init__(self, name: str, link: ISourceLink, requests: Sequence[SourceRequest]) -> None:
        self.name = name
        self.link = link
        self.requests = tuple(requests)
        #: The latest pending counts of the request in progress (``None``: none yet).
        self.current: SubOperations | None = None
        self.untried: tuple[SourceRequest, ...] = ()
        self.broken = False
        self.finished = False
        self.on_pending: Callable[[SubOperations], None] | None = None

    def pending(self, counts: SubOperations) -> None:
        """A pending C-MOVE-RSP of the request in progress."""
        self.current = counts
        if self.on_pending is not None:
            self.on_pending(counts)


class _PassThroughTally:
    """The sum of the sources' sub-operation counts (pass-through)."""

    def __init__(self, runs: Sequence[_SourceRun]) -> None:
        self.runs = runs
        self.done = {run.name: SubOperations(0, 0, 0, 0) for run in runs}
        self.left = {run.name: sum(len(r.uids) for r in run.requests) for run in runs}
        self.failed: list[str] = []
        self.comment = ""
        #: With one source asked once: its final status, relayed as it is.
        self.only_status: int | None = None
        self.single = len(runs) == 1 and len(runs[0].requests) == 1

    @property
    def failed_uids(self) -> tuple[str, ...]:
        """The Failed SOP Instance UID List so far."""
        return tuple(self.failed)

    def counts(self) -> SubOperations:
        """The summed counts: finished requests, the one in progress per source, the rest remaining."""
        remaining = completed = failed = warning = 0
        for run in self.runs:
            done = self.done[run.name]
            completed += done.completed
            failed += done.failed
            warning += done.warning
            left = self.left[run.name]
            current = None if run.finished else run.current
            if current is not None:
                completed += current.completed
                failed += current.failed
                warning += current.warning
                left -= current.completed + current.failed + current.warning
            remaining += max(0, left)
        return SubOperations(remaining, completed, failed, warning)

    def ended(self, run: _SourceRun, request: SourceRequest, result: Any) -> None:
        """A request's end: add its counts; a break or a refusal counts what it did not send failed."""
        done = self.done[run.name]
        asked = len(request.uids)
        untried = [uid for r in run.untried for uid in r.uids]
        if isinstance(result, Failure):
            current = run.current or SubOperations(None, 0, 0, 0)
            unsent = max(0, asked - current.completed - current.warning - current.failed)
            added = SubOperations(0, current.completed, current.failed + unsent + len(untried), current.warning)
            # Which of the request's instances were sent is not known one by one: listed only when none was.
            self.failed.extend(request.uids if current.completed + current.warning == 0 else ())
            self.failed.extend(untried)
            self.comment = self.comment or f"Source {run.name} failed"[:64]
        elif nothing_sent(result):
            added = SubOperations(0, 0, asked + len(untried), 0)
            self.failed.extend(result.failed_uids or request.uids)
            self.failed.extend(untried)
            self.comment = self.comment or (result.error_comment or f"Source {run.name}: 0x{result.status:04X}")[:64]
        else:
            added = SubOperations(0, result.counts.completed, result.counts.failed + len(untried), result.counts.warning)
            self.failed.extend(result.failed_uids)
            self.failed.extend(untried)
        if self.single and not isinstance(result, Failure):
            self.only_status = result.status
            self.comment = result.error_comment
        self.done[run.name] = SubOperations(0, done.completed + added.completed, done.failed + added.failed, done.warning + added.warning)
        self.left[run.name] -= asked + len(untried)
        run.current = None


class _Relay:
    """The pending/final responses of a relayed C-MOVE, from the journal's counts.

    The stall rule (issue 16): once every source's C-MOVE has ended and the
    counts have not changed for :data:`STALL_AFTER_SOURCE`, the items never
    received end FAILED (:meth:`~gateway.queue.retrieves.IRetrieveJournal.fail_expected`,
    listed in (0008,0058)); the items in custody (received, queued to
    ``move.<name>``) are not: the move waits for them until its deadline,
    ``retrieve.timeout``, and only then counts them failed (the queue still
    delivers them afterwards).
    """

    def __init__(self, move: _Move, retrieve_id: int, deadline: float) -> None:
        self.move = move
        self.retrieve_id = retrieve_id
        self.deadline = deadline
        self.done: Deferred[None] = Deferred()
        self.ticking: Any = None
        self.settled = False
        self.sources_ended_at: float | None = None
        self.never_received_failed = False
        self.comment = ""
        self.last_counts: SubOperations | None = None
        self.last_change_at = move.ctx.wall()
        move.responder.cancelled.addCallback(lambda _: self._tick())
        self._schedule()

    def _schedule(self) -> None:
        """The next look at the counts in :data:`PENDING_INTERVAL`."""
        if not self.move.finished:
            self.ticking = self.move.ctx.reactor.callLater(PENDING_INTERVAL, self._tick)

    def _unschedule(self) -> None:
        """Cancel the next look, if one is scheduled."""
        if self.ticking is not None and self.ticking.active():
            self.ticking.cancel()
        self.ticking = None

    def request_ended(self, run: _SourceRun, request: SourceRequest, result: Any) -> None:
        """One C-MOVE-RQ to a source ended: record the items it says it could not give.

        An association that broke marks nothing one by one (what it sent is in
        custody and counted; the rest is ended by the stall rule).
        """
        if isinstance(result, Failure) or self.move.cancelled:
            self._tick()
            return
        failed = request.uids if nothing_sent(result) else result.failed_uids
        if not failed:
            self._tick()
            return
        ctx = self.move.ctx
        reason = f"source {run.name}: status 0x{result.status:04X}"
        now = ctx.wall()

        def record() -> None:
            for uid in failed:
                try:
                    # Only a never-received item: one the source counts failed after the
                    # gateway acknowledged it is in custody and still delivered.
                    ctx.journal.item_outcome(self.retrieve_id, uid, ItemState.FAILED, reason, now, expected_only=True)
                except KeyError:
                    pass  # a UID the source lists that this retrieve never expected

        d = ctx.run.run(record)
        d.addErrback(lambda f: log.error("could not record the source's failures: {error}", error=f.getErrorMessage()))
        d.addCallback(lambda _: self._tick())

    def sources_finished(self) -> None:
        """Every source's C-MOVEs have ended: the stall clock starts."""
        self.sources_ended_at = self.move.ctx.wall()
        self._tick()

    def _tick(self) -> None:
        """Read the counts; send a pending response, or the final one when nothing remains (or deadline, cancel)."""
        if self.move.finished:
            return
        self._unschedule()
        ctx = self.move.ctx
        d = ctx.run.run(ctx.journal.progress, self.retrieve_id)
        d.addCallbacks(self._progressed, self._unreadable)

    def _unreadable(self, failure: Failure) -> None:
        """The journal did not answer: try again at the next interval (the deadline still applies)."""
        log.error("could not read a retrieve's progress: {error}", error=failure.getErrorMessage())
        self._schedule()

    def _progressed(self, progress: Any) -> None:
        """Decide from the counts: final (cancel, none remaining, deadline), the stall, or pending."""
        if self.move.finished:
            return
        ctx = self.move.ctx
        counts = SubOperations(progress.remaining, progress.completed, progress.failed, progress.warning)
        if self.move.cancelled:
            self._end(RetrieveState.CANCELLED, CANCEL, counts, progress.failed_uids, "")
            return
        if progress.remaining == 0:
            if not self.settled:
                # Read again after RELEASE_GRACE: the move destination's association is released by then.
                self.settled = True
                self.ticking = ctx.reactor.callLater(RELEASE_GRACE, self._tick)
                return
            status = final_status(progress.completed, progress.failed, progress.warning)
            self._end(RetrieveState.DONE, status, counts, progress.failed_uids, self.comment if status != SUCCESS else "")
            return
        self.settled = False
        now = ctx.wall()
        if counts != self.last_counts:
            self.last_counts, self.last_change_at = counts, now
        if now >= self.deadline:
            # retrieve.timeout (issue 16: "a move has its own deadline"): what
            # remains counts failed, also the instances in custody that the
            # move.<name> queue has not delivered yet (it still will: the
            # requester is told what happened within its deadline). Their
            # UIDs are not known one by one here: the count says so.
            failed = progress.failed + progress.remaining
            counts = SubOperations(0, progress.completed, failed, progress.warning)
            status = final_status(progress.completed, failed, progress.warning)
            comment = f"Retrieve timeout: {progress.remaining} not delivered"
            self._end(RetrieveState.DONE, status, counts, progress.failed_uids, comment[:64])
            return
        stalled = (
            not self.never_received_failed
            and self.sources_ended_at is not None
            and now - max(self.sources_ended_at, self.last_change_at) >= STALL_AFTER_SOURCE
        )
        if stalled:
            self._stall()
            return
        self.move.responder.pending(PENDING, counts=counts)
        self._schedule()

    def _stall(self) -> None:
        """The sources are done and nothing moved for STALL_AFTER_SOURCE: the items never received end FAILED."""
        self.never_received_failed = True
        self.comment = "Source finished; sub-operations missing"
        ctx = self.move.ctx
        d = ctx.run.run(ctx.journal.fail_expected, self.retrieve_id, "never received from the source", ctx.wall())

        def ended(uids: tuple[str, ...]) -> None:
            if uids:
                log.info("retrieve {id}: {n} instances never received from the sources count failed", id=self.retrieve_id, n=len(uids))

        d.addCallbacks(ended, lambda f: log.error("could not end the never received: {error}", error=f.getErrorMessage()))
        d.addBoth(lambda _: self._tick())

    def _end(self, state: RetrieveState, status: int, counts: SubOperations, failed_uids: Sequence[str], comment: str) -> None:
        """Send the final response, then finish the retrieve in the journal (its message ID is free again)."""
        ctx = self.move.ctx
        self._unschedule()
        self.move.final(status, counts, comment, failed_uids if status != SUCCESS else ())
        d = ctx.run.run(ctx.journal.finish_retrieve, self.retrieve_id, state, comment, ctx.wall())
        d.addErrback(lambda f: log.error("could not finish retrieve {id}: {error}", id=self.retrieve_id, error=f.getErrorMessage()))
        d.addBoth(lambda _: self.done.callback(None) if not self.done.called else None)
