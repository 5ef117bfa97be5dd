"""C-MOVE through the gateway (PS3.4 C.4.2; issue 16).

Theory of operation
-------------------
A C-MOVE-RQ names a Move Destination AE title (PS3.7 9.1.4.1). It must be the
``ae_title`` of an entry of the ``modalities`` table whose name matches
``retrieve.allowed_destinations`` (fnmatch; empty allows every entry), else
the final response is 0xA801, "Refused: Move Destination unknown" (PS3.4
C.4.2.1.5). The instances are then *located*: a C-FIND at IMAGE level, with
the request's keys and SOP Instance UID / SOP Class UID as return keys, at the
sources in order; the first source with matches is the one retrieved from
(the others are not asked to move the same instances again).

``pass_through``
    The source is asked to C-MOVE straight to the requester's Move Destination
    (it must know that AE); its pending and final responses are relayed.

``relay`` (the default)
    The retrieve is journaled (:meth:`~gateway.queue.retrieves.IRetrieveJournal.open_retrieve`,
    its items EXPECTED, with an outgoing Message ID unique among the open
    retrieves of every node; none free: 0xA702). The source is asked to
    C-MOVE to the gateway's own AE title with that Message ID, so each of its
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
    released first), or at ``retrieve.timeout``, or :data:`STALL_AFTER_SOURCE`
    after the source's C-MOVE ended with nothing changing (the remaining ones
    count as failed), with the Failed SOP Instance UID List (0008,0058) of the
    items known failed. C-CANCEL-RQ cancels the source's C-MOVE and ends with
    0xFE00 and the counts so far (what is in custody is still delivered).
    The statuses: success; 0xB000 when some failed; 0xA702 when all failed
    (PS3.4 C.4.2.1.5, C.4.2.3.1); 0xC000 when no source answered.

Because the correlation is in the journal, the node that receives the
sub-operations need not be the one that took the request, and a restart
between them loses nothing already in custody: the instances received are
delivered by the ``move.<name>`` queue, and the restarted node ends its
retrieves still open (:func:`close_orphan_retrieves`; the requester's
association died with the process, its C-MOVE fails on its side).

Limits: one source per retrieve (the first with matches; instances only a
later source holds are not fetched); locating is an IMAGE-level C-FIND with
the request's keys, which some strict archives refuse without the Series
Instance UID (relational retrieve); a retrieve ended by its deadline or the
stall lists in (0008,0058) only the items known failed (the count says how
many remained).

Because the correlation is in the journal, the node that receives the
sub-operations need not be the one that took the request, and a restart
between them loses nothing already in custody.

The source side is reached through :class:`ISourceLink` (an association to
one source, opened by :func:`open_source_link` or, in tests, by
``ctx.extra["open_source"]``).
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import events
from gateway.config.schema import DicomDestination, GatewayConfig, ModalityConfig, RetrieveConfig
from gateway.dimse.identifier import IdentifierError, check_query, decode_identifier, sop_class_model
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

#: Seconds without any change of the counts, once the source's C-MOVE has
#: ended, after which what remains counts as failed: instances the source never
#: sent (or an association to it that broke), rather than waiting for
#: ``retrieve.timeout``. Instances in custody move on within it (a ``move.*``
#: queue retrying longer than this makes the final response early, not wrong:
#: those still count failed there, and are delivered later).
STALL_AFTER_SOURCE = 30.0

#: Seconds the source is given to end its C-MOVE after our C-CANCEL (or our
#: deadline) before its association is aborted rather than released.
SOURCE_END_WAIT = 10.0

#: Seconds between "nothing remains" and the final response: the ``move.NAME``
#: worker releases its association as soon as it is idle (``idle_release`` 0),
#: and a requester such as DCMTK ``movescu`` with its own storage SCP waits for
#: that release before it reads the final C-MOVE-RSP.
RELEASE_GRACE = 0.5



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
    becomes IMAGE; Study, Series and SOP Instance UID and SOP Class UID are
    asked for as return keys where the request has none.
    """
    dataset = copy.deepcopy(request)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
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
        self.link: ISourceLink | None = None
        self.request: Any = None  # the decoded identifier
        self.started = ctx.wall()
        self.level = ""
        self.mode = "relay"
        self.destination = ""
        self.sources: tuple[str, ...] = ()
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
        """C-CANCEL-RQ (or the association ended): reach the source; the final answer is the caller's."""
        if self.finished:
            return
        self.cancelled = True
        if self.link is not None:
            try:
                self.link.cancel()
            except Exception:
                log.failure("could not cancel the source's C-MOVE")

    @inlineCallbacks
    def run(self) -> Any:
        """Check the destination, locate, then pass through or relay."""
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
        source, link, found = yield self._locate(retrieve, find_class, sop_class, locate_identifier(request))
        if self.cancelled:
            if link is not None:
                yield self._release(link)
            self.final(CANCEL, SubOperations(0, 0, 0, 0))
            return
        if source is None:
            # No source answered the locating C-FIND: "Failed: Unable to process" (PS3.4 C.4.2.1.5, Cxxx).
            self.final(UNABLE_TO_PROCESS, comment="No retrieve source answered")
            return
        if link is None or not found:
            if link is not None:
                yield self._release(link)
            self.final(SUCCESS, SubOperations(0, 0, 0, 0))
            return
        self.link = link
        self.sources = (source,) if source is not None else ()
        if retrieve.mode == "pass_through":
            yield self._pass_through(link, sop_class)
        else:
            yield self._relay(retrieve, modality, link, source, sop_class, level, found)

    @inlineCallbacks
    def _locate(self, retrieve: RetrieveConfig, find_class: str, move_class: str, locate: Any) -> Any:
        """Ask the sources in order; the first with matches is kept open (its link and references).

        :returns: ``(source, link, references)``: the source is the first that
            answered with matches, else the last that answered (``None``:
            none answered); the link is open only when there are references.
        """
        asked: str | None = None
        for name in retrieve.sources:
            try:
                destination = self.config.destination(name)
            except KeyError:
                log.error("retrieve source {name} is not a destination", name=name)
                continue
            started = self.ctx.wall()
            try:
                link = yield self.open_source(self.ctx, destination, (find_class, move_class))
            except Exception as e:
                log.warn("retrieve source {name} cannot be reached: {error}", name=name, error=e)
                self._source_answered(name, False, 0, started, f"{type(e).__name__}: {e}")
                continue
            found: list[Reference] = []
            seen: set[str] = set()

            def on_match(dataset: Any) -> None:
                reference = located_reference(dataset)
                if reference is not None and reference.sop_instance_uid not in seen:
                    seen.add(reference.sop_instance_uid)
                    found.append(reference)

            self.link = link
            try:
                status = yield link.find(find_class, locate, on_match)
            except Exception as e:
                log.warn("locating at {name} failed: {error}", name=name, error=e)
                status = UNABLE_TO_PROCESS
            self.link = None
            ok = status in (SUCCESS, CANCEL)
            if status == SUCCESS:
                asked = name
            self._source_answered(name, ok, len(found), started, "" if ok else f"status 0x{status:04X}")
            if found and status == SUCCESS and not self.cancelled:
                return name, link, tuple(found)
            yield self._release(link)
            if self.cancelled:
                return name, None, ()
        return asked, None, ()

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
    def _pass_through(self, link: ISourceLink, sop_class: str) -> Any:
        """The source moves straight to the requester's Move Destination; its responses are relayed."""

        def pending(counts: SubOperations) -> None:
            if not self.finished:
                self.responder.pending(PENDING, counts=counts)

        try:
            result = yield link.move(sop_class, self.rq.move_destination, self.request, None, pending)
        except Exception as e:
            yield self._release(link)
            self.final(UNABLE_TO_PROCESS, comment=f"Source C-MOVE failed: {e}"[:64])
            return
        yield self._release(link)
        self.final(result.status, result.counts, result.error_comment, result.failed_uids)

    @inlineCallbacks
    def _relay(
        self,
        retrieve: RetrieveConfig,
        modality: ModalityConfig,
        link: ISourceLink,
        source: str,
        sop_class: str,
        level: str,
        found: tuple[Reference, ...],
    ) -> Any:
        """The source moves to the gateway; the journal counts the sub-operations (see the module docstring)."""
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
            sources=(source,),
            expected=found,
            deadline=now + retrieve.timeout,
        )
        try:
            opened = yield self.ctx.run.run(journal.open_retrieve, new, now)
        except RetrieveIdsExhausted:
            yield self._release(link)
            self.final(REFUSED_OUT_OF_RESOURCES_SUB_OPERATIONS, comment="No C-MOVE message ID free")
            return
        except Exception as e:
            yield self._release(link)
            log.error("could not journal a retrieve: {error}", error=e)
            self.final(REFUSED_OUT_OF_RESOURCES_SUB_OPERATIONS, comment="Retrieve journal not writable")
            return
        retrieve_id = opened.retrieve_id
        uids = tuple(reference.sop_instance_uid for reference in found)
        relay = _Relay(self, retrieve_id, uids, new.deadline)
        source_done = link.move(sop_class, self.ctx.ae_title, self.request, opened.message_id, lambda counts: None)
        source_done.addBoth(relay.source_finished)
        yield relay.done
        if not source_done.called:
            # Cancelled, or ended by the deadline or the stall: the source's
            # C-MOVE is still running. Cancel it (PS3.7 9.3.2.3) and give it
            # SOURCE_END_WAIT to answer before releasing; else abort.
            if not self.cancelled:
                link.cancel()
            ended: Deferred[None] = Deferred()
            timer = self.ctx.reactor.callLater(SOURCE_END_WAIT, lambda: ended.called or ended.callback(None))

            def source_ended(_: object) -> None:
                if timer.active():
                    timer.cancel()
                if not ended.called:
                    ended.callback(None)

            source_done.addBoth(source_ended)
            yield ended
            if not source_done.called:
                link.abort()
                return
        yield self._release(link)


class _Relay:
    """The pending/final responses of a relayed C-MOVE, from the journal's counts."""

    def __init__(self, move: _Move, retrieve_id: int, uids: tuple[str, ...], deadline: float) -> None:
        self.move = move
        self.retrieve_id = retrieve_id
        self.uids = uids
        self.deadline = deadline
        self.done: Deferred[None] = Deferred()
        self.source_result: SourceMoveResult | None = None
        self.source_failed = ""
        self.ticking: Any = None
        self.settled = False
        self.source_ended_at: float | None = None
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

    def source_finished(self, result: Any) -> None:
        """The source's final C-MOVE-RSP (or its failure): record the items it says it could not give."""
        ctx = self.move.ctx
        self.source_ended_at = ctx.wall()
        if isinstance(result, Failure):
            # The association to the source ended (abort, DIMSE timeout): what
            # it sent is in custody and counted; nothing is marked here (an
            # item's state is not known one by one): the stall rule ends it.
            self.source_failed = result.getErrorMessage()
            failed: tuple[str, ...] = ()
        else:
            self.source_result = result
            failed = result.failed_uids
            nothing_sent = result.counts.completed == 0 and result.counts.warning == 0 and result.status not in (SUCCESS, PENDING)
            if nothing_sent:
                failed = self.uids
        if failed and not self.move.cancelled:
            reason = f"source: {self.source_failed or 'status 0x%04X' % (result.status,)}"
            now = ctx.wall()

            def record() -> None:
                for uid in failed:
                    ctx.journal.item_outcome(self.retrieve_id, uid, ItemState.FAILED, reason, now)

            d = ctx.run.run(record)
            d.addErrback(lambda f: log.error("could not record the source's failures: {error}", error=f.getErrorMessage()))
            d.addCallback(lambda _: self._tick())
        else:
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
        """Decide from the counts: final (cancel, none remaining, deadline, stall) or pending."""
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
            self._end(RetrieveState.DONE, status, counts, progress.failed_uids, "")
            return
        self.settled = False
        now = ctx.wall()
        if counts != self.last_counts:
            self.last_counts, self.last_change_at = counts, now
        stalled = self.source_ended_at is not None and now - max(self.source_ended_at, self.last_change_at) >= STALL_AFTER_SOURCE
        if now >= self.deadline or stalled:
            # retrieve.timeout, or the source is done and nothing moved for
            # STALL_AFTER_SOURCE: what remains counts as failed (its UIDs are
            # not known one by one here: the count, not the list, says so).
            failed = progress.failed + progress.remaining
            counts = SubOperations(0, progress.completed, failed, progress.warning)
            status = final_status(progress.completed, failed, progress.warning)
            comment = "Retrieve timeout" if now >= self.deadline else "Source finished; sub-operations missing"
            self._end(RetrieveState.DONE, status, counts, progress.failed_uids, comment + ": remaining failed")
            return
        self.move.responder.pending(PENDING, counts=counts)
        self._schedule()

    def _end(self, state: RetrieveState, status: int, counts: SubOperations, failed_uids: Sequence[str], comment: str) -> None:
        """Send the final response, then finish the retrieve in the journal (its message ID is free again)."""
        ctx = self.move.ctx
        self._unschedule()
        self.move.final(status, counts, comment, failed_uids if status != SUCCESS else ())
        d = ctx.run.run(ctx.journal.finish_retrieve, self.retrieve_id, state, comment, ctx.wall())
        d.addErrback(lambda f: log.error("could not finish retrieve {id}: {error}", id=self.retrieve_id, error=f.getErrorMessage()))
        d.addBoth(lambda _: self.done.callback(None) if not self.done.called else None)
