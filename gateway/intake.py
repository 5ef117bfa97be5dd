"""Custody: what happens between "the spool has the file" and "the modality is told success".

:class:`Intake` takes each instance the spool committed, routes it
(:func:`gateway.route.evaluate`), and journals its queue entries in one store
transaction. Only when that transaction has committed does the storage SCP
answer C-STORE-RSP 0x0000 (HARDENING decision 10, issue 13: the file written
into a slot made ahead of time, fdatasync(file), **journal commit**, respond). If the journal cannot be written,
the spooled file is removed and the modality gets 0xA700, so it keeps its
copy and retries: nothing is acknowledged that the gateway does not hold.

An instance that no route takes is moved to the spool's ``unrouted/`` folder
(fsynced) and acknowledged: kept, logged and counted, never dropped silently.
Recovery's rule "a file in ``instances/`` with no journal row was never
acknowledged" does not reach ``unrouted/``: such a file is acknowledged only
once its move there is durable.

One hand-off (issue 13)
-----------------------
:meth:`Intake.take` is what the storage SCP calls when an instance's last
fragment has arrived. On the reactor it finishes the structure walk
(:meth:`~gateway.spool.SpoolWriter.end`), routes with the header the walk
kept (no file read), and queues the journal write. The store's thread then,
for a whole group of instances from any association: waits for each one's
lane to have written and ``fdatasync``\ ed it
(:meth:`~gateway.spool.SpoolWriter.wait_durable`; the lanes flush in
parallel, ahead of the group), writes the group in one transaction, and
calls the reactor back **once** for the group. Before issue 13 it was three
hand-offs per instance (reactor -> spool thread -> reactor -> store thread
-> reactor). Rejected, dropped and unrouted instances, and a header too
large for the walk to keep, take the file runner as before: they are rare.

Storage Commitment (issue 15)
-----------------------------
When a ``commitment`` section is configured, an instance a rule dropped or
that went to ``unrouted/`` is acknowledged and sent nowhere; the journal has
no record of it, so a later Storage Commitment request about it would be
answered 0x0112 (no such object instance), as if it had never come. The
intake therefore notes it (:meth:`~gateway.queue.commitments.ICommitmentJournal.note_unforwarded`)
before the acknowledgement, so the report says 0x0110 (or success, with
``unrouted: success``). A note that fails is logged and does not fail the
C-STORE: the instance is then reported as never received, which keeps the
modality's copy (the safe side).

C-MOVE sub-operations (issue 16)
--------------------------------
When the gateway relays a C-MOVE (:mod:`gateway.qr.move`), the source's
sub-operation C-STORE-RQs carry the Move Originator AE Title and the Message ID
of the gateway's C-MOVE-RQ (PS3.7 9.1.1.1). Such an instance is matched in the journal
(:meth:`~gateway.queue.retrieves.IRetrieveJournal.match_sub_operation`: the
message ID of an OPEN retrieve that expects this SOP Instance UID). A match is
journaled with exactly one queue entry, to ``move.<modality name>`` (route
``retrieve``; no other route, so nothing loops back to the archive), without
duplicate control (the requester asked for it again), and linked to its
retrieve item in the same store turn, before the C-STORE-RSP: by the time the
source's final C-MOVE-RSP arrives, every instance it sent is counted. No match
(another SCU's move naming the gateway, a retrieve already finished) is an
ordinary C-STORE, routed as any other.

The rest of custody lives beside this module: the spool's free-space floor in
:mod:`gateway.space` and start-up recovery and clean-up in :mod:`gateway.recovery`.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Collection, Final, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.blocking import IBlockingRunner
from gateway.config.schema import RouteConfig
from gateway.dimse.status import Status
from gateway.durable import rename_durably, unlink_if_present
from gateway.private import make_private_dirs
from gateway.queue.commitments import ICommitmentJournal, Unforwarded
from gateway.queue.interfaces import AddResult, InstanceRecord, IQueueStore, NewEntry, StoreUnavailable
from gateway.queue.studies import StudyNote
from gateway.receive import AssociationInfo
from gateway.headerbytes import parse_header
from gateway.parse import read_header
from gateway.prepare import NO_MORPH, route_plan
from gateway.route import RoutingContext, RoutingDecision, evaluate, needs_header
from gateway.spool import SpooledInstance, SpoolError, SpoolFailure, SpoolWriter
from gateway.validate import DatasetSummary


@dataclass(frozen=True)
class Admission:
    """The intake's answer for one instance: the status to send, and what was recorded."""

    status: int
    comment: str = ""
    entries: int = 0
    duplicates: tuple[str, ...] = ()
    unrouted: bool = False
    dropped: bool = False
    matched: tuple[str, ...] = ()
    #: The instance's correlation id (logged with the receipt and every forward attempt).
    correlation_id: str = ""
    #: The durable instance (:class:`~gateway.spool.SpooledInstance`), when it was sealed.
    spooled: Any = None


#: This process's correlation ids: a random prefix, then a counter. Unique
#: within a run and, with 32 random bits per run, across restarts in
#: practice; cheaper than uuid4 (os.urandom is a system call per id).
_CORRELATION_PREFIX: Final = os.urandom(4).hex()
_correlation_counter = itertools.count(1)


def new_correlation_id() -> str:
    """A 16-hex-digit id tying an instance's receipt to its forward attempts in the logs."""
    return f"{_CORRELATION_PREFIX}{next(_correlation_counter) & 0xFFFFFFFF:08x}"


def instance_record(
    spooled: SpooledInstance, info: AssociationInfo, received_at: float, correlation_id: str = "", node: str = ""
) -> InstanceRecord:
    """The queue's record of a spooled instance.

    :param spooled: what the spool committed.
    :param info: the association it came on.
    :param received_at: wall-clock time of the commit.
    :param correlation_id: the instance's correlation id; a new one by default.
    :param node: the node that received it (issue 14: with node-local spools only it can send it).
    """
    summary = spooled.summary
    return InstanceRecord(
        instance_id=spooled.instance_id,
        path=spooled.path,
        sop_class_uid=spooled.meta.sop_class_uid,
        sop_instance_uid=spooled.meta.sop_instance_uid,
        transfer_syntax_uid=spooled.meta.transfer_syntax_uid,
        size=spooled.size,
        sha256=spooled.sha256,
        received_at=received_at,
        correlation_id=correlation_id or new_correlation_id(),
        study_instance_uid=summary.study_instance_uid or "",
        series_instance_uid=summary.series_instance_uid or "",
        patient_id=summary.patient_id or "",
        accession_number=summary.accession_number or "",
        modality=summary.modality or "",
        calling_ae_title=info.calling_ae_title,
        called_ae_title=info.called_ae_title,
        source_address=info.peer_address,
        dataset_offset=spooled.dataset_offset,
        node=node,
    )


def walked_header(summary: DatasetSummary) -> Any:
    """The header the structure walk kept, as a pydicom Dataset for routing, or ``None`` when it kept none."""
    if summary.header is None:
        return None
    return parse_header(summary)


#: The largest number a study note keeps (PostgreSQL's ``integer``: ``studies.expected_instances`` and the
#: ``::int`` cast of :data:`gateway.queue.study_sql.PG_NOTE`). An IS value may have 12 characters
#: (PS3.5 6.2, "-99999999999" to "999999999999"), more than that column holds: a larger one is unknown
#: rather than an "integer out of range" that would fail the instance's own transaction (its C-STORE).
_NOTE_INT_MAX = 2**31 - 1


def _int_value(text: str | None, least: int = -_NOTE_INT_MAX) -> int | None:
    """An IS value (text, as the walk read it) as an int, or ``None`` when absent, empty, not a number or out of range.

    :param least: the smallest value that means something (a count below 1 is no count).
    """
    try:
        number = int(text) if text else None
    except ValueError:
        return None
    if number is None:
        return None
    return number if least <= number <= _NOTE_INT_MAX else None


def study_notes(decision: RoutingDecision, routes: Sequence[RouteConfig], summary: DatasetSummary) -> list[StudyNote]:
    """The study notes of an instance (issue 18): one per route with ``notify`` that gave it entries.

    Every value comes from what the structure walk read (Series Number
    (0020,0011) and Number of Study Related Instances (0020,1208) among its
    top-level values): nothing is parsed or read again per instance. An
    instance without a Study Instance UID gets no note (there is no study to
    complete).

    :param decision: the routing decision.
    :param routes: the routes it was made with.
    :param summary: what the structure walk learned.
    """
    if not summary.study_instance_uid:
        return []
    routed = {route for route, _ in decision.entries}
    notifying = [route.name for route in routes if route.name in routed and getattr(route, "notify", None) is not None]
    if not notifying:
        return []
    series_number = _int_value(summary.series_number)
    expected = _int_value(summary.study_related_instances, least=1)
    return [
        StudyNote(
            route=name,
            study_instance_uid=summary.study_instance_uid,
            series_instance_uid=summary.series_instance_uid or "",
            series_number=series_number,
            modality=summary.modality or "",
            expected_instances=expected,
        )
        for name in notifying
    ]


def _durable_header(writer: SpoolWriter) -> tuple[SpooledInstance, Any]:
    """Wait for the instance to be durable, then read its header from the file (blocking).

    :returns: the instance and its header dataset, or ``None`` for a header
        pydicom cannot read (the instance is then kept as unrouted).
    """
    spooled = writer.wait_durable()
    try:
        return spooled, read_header(spooled.path).dataset
    except Exception:
        return spooled, None


class _JournalFailure(Exception):
    """The journal refused an instance's record (the store's error is the cause)."""


@dataclass
class _Pending:
    """One instance waiting for the next journal transaction.

    ``record`` is known at once for an instance already durable
    (:meth:`Intake.admit`); for one still on its lane (:meth:`Intake.take`)
    the store's thread builds it from ``writer`` once the lane has sealed it.
    """

    entries: list[NewEntry]
    result: "Deferred[Any]"
    record: InstanceRecord | None = None
    writer: SpoolWriter | None = None
    info: AssociationInfo | None = None
    received_at: float = 0.0
    correlation_id: str = ""
    spooled: SpooledInstance | None = None
    #: The retrieve a C-MOVE sub-operation belongs to (issue 16): linked after the journal write.
    retrieve_id: int | None = None
    #: A C-GET relay's hand-over path (issue 16): the durable file is linked
    #: there before the journal write (:func:`gateway.qr.get.make_handover`).
    handover: str | None = None
    #: Study notes for the routes that notify (issue 18), written with the instance.
    notes: Sequence[StudyNote] = ()


#: The route name of relayed C-MOVE sub-operations' queue entries (issue 16).
RETRIEVE_ROUTE: Final = "retrieve"

#: The queue destination of a move destination: ``move.`` + its ``modalities`` name.
MOVE_DESTINATION_PREFIX: Final = "move."


class Intake:
    """Routes committed instances and journals their queue entries before the ack.

    :param store: the queue store (called only through ``store_runner``).
    :param store_runner: the single thread the store lives on.
    :param file_runner: runs file moves (unrouted instances, cleanup).
    :param routes: returns the routes in force (they change on reload).
    :param wall: wall-clock time for the records.
    :param duplicate_window: seconds within which an identical re-send is not forwarded again.
    :param unrouted_dir: where instances that match no route are kept.
    :param on_enqueued: called with the destinations that got new entries (to wake their workers).
    :param destinations: returns the configured destination names (templated forwards are checked against them).
    :param node: this node's name, recorded on every instance (``InstanceRecord.node``, issue 14).
    :param commitment: returns true while Storage Commitment is configured
        (issue 15): dropped and unrouted instances are then noted in the
        commitment journal (the store, through ``store_runner``).
    :param retrieve_ae_title: returns the gateway's AE title while retrieve
        is configured (issue 16), else ``None``: C-MOVE sub-operations are
        then matched to the journal's retrieves (by Message ID and SOP
        Instance UID; the Move Originator AE Title is not compared).
    :param retrieve_route: returns the name of the route (``retrieve.route``)
        in force on a listener (by listener name), ``""`` for none: its morph
        plan goes with a relayed C-MOVE instance's ``move.<name>`` entry.
    :param scratch_dir: where a relayed C-GET instance's hand-over link is
        made (:func:`gateway.qr.get.handover_path`); the spool's ``scratch``
        folder, beside ``unrouted_dir``, by default.
    """

    log = Logger(namespace="gateway.intake")

    def __init__(
        self,
        *,
        store: IQueueStore,
        store_runner: IBlockingRunner,
        file_runner: IBlockingRunner,
        routes: Callable[[], Sequence[RouteConfig]],
        wall: Callable[[], float],
        duplicate_window: float,
        unrouted_dir: str,
        on_enqueued: Callable[[Sequence[str]], None] = lambda destinations: None,
        destinations: Callable[[], Collection[str]] = lambda: (),
        node: str = "",
        commitment: Callable[[], bool] = lambda: False,
        retrieve_ae_title: Callable[[], str | None] = lambda: None,
        retrieve_route: Callable[[str], str] = lambda listener: "",
        scratch_dir: str | None = None,
    ) -> None:
        self.node = node
        self._retrieve_route = retrieve_route
        self._scratch_dir = scratch_dir if scratch_dir is not None else os.path.join(os.path.dirname(unrouted_dir), "scratch")
        self._retrieve_ae_title = retrieve_ae_title
        self.relayed_total = 0
        self._commitment = commitment
        self._destinations = destinations
        self._store = store
        self._store_runner = store_runner
        self._file_runner = file_runner
        self._routes = routes
        self._wall = wall
        self.duplicate_window = duplicate_window
        self._unrouted_dir = unrouted_dir
        self._on_enqueued = on_enqueued
        self.unrouted_total = 0
        self.duplicates_total = 0
        self.dropped_total = 0
        self.rejected_total = 0
        self.routing_errors_total = 0
        self.route_matches: dict[str, int] = {}
        # Group commit: journal requests that arrive while a transaction is
        # running wait here and go together in the next one (one fsync for
        # many associations' instances).
        self._pending: list[_Pending] = []
        self._journaling = False

    def admit(
        self, spooled: SpooledInstance, info: AssociationInfo, *, keep_file_on_failure: bool = False
    ) -> Deferred[Admission]:
        """Route and journal one committed instance.

        :param spooled: what the spool committed.
        :param info: the association it came on.
        :param keep_file_on_failure: leave the spooled file in place when the
            journal cannot be written.
        :returns: a Deferred that fires with the :class:`Admission`; it never fails.
        """
        received_at = self._wall()
        context = self._context(info, received_at)
        routes = tuple(self._routes())
        record = instance_record(spooled, info, received_at, node=self.node)
        if not needs_header(routes):
            return self._route(spooled, record, None, context, routes, keep_file_on_failure)
        # Conditions and templated forwards need the header: read it (no pixel
        # data) off the reactor thread. One that pydicom cannot read is kept
        # as unrouted with the reason: never lost, never guessed.
        d = self._file_runner.run(read_header, spooled.path)

        def unreadable(failure: Failure) -> Any:
            self.routing_errors_total += 1
            self.log.error(
                "{correlation_id} header of {sop_instance_uid} cannot be read for routing: {error}",
                correlation_id=record.correlation_id,
                sop_instance_uid=record.sop_instance_uid,
                error=failure.getErrorMessage(),
            )
            return None

        d.addCallbacks(lambda header: header.dataset, unreadable)
        d.addCallback(
            lambda dataset: self._route(spooled, record, dataset, context, routes, keep_file_on_failure)
            if dataset is not None
            else self._keep_unrouted(spooled, record)
        )
        return d

    def take(
        self,
        writer: SpoolWriter,
        info: AssociationInfo,
        sub_operation: tuple[str, int] | None = None,
        refuse: Callable[[DatasetSummary], Admission | None] | None = None,
    ) -> "Deferred[Admission]":
        """Seal, route and journal an instance whose last fragment has arrived (the one hand-off).

        :param writer: the spool's writer of the instance; :meth:`~gateway.spool.SpoolWriter.end`
            is called here.
        :param info: the association it came on.
        :param sub_operation: the C-STORE-RQ's Move Originator AE Title and
            Message ID when it has them (a C-MOVE sub-operation, PS3.7 9.1.1.1).
        :param refuse: the STOW-RS hook (issue 17): called with the walk's
            summary before routing; an :class:`Admission` it returns is the
            answer, and the sealed file is removed (never journaled), e.g. an
            instance of another study than the request's URL names.
        :returns: a Deferred firing with the :class:`Admission` (``spooled``
            set once the instance is durable); it never fails.
        """
        summary = writer.end()
        if summary is None:
            # Refused by the seal (malformed, too large, a write failed...): learn the status.
            return self._sealed_only(writer)
        refusal = refuse(summary) if refuse is not None else None
        if refusal is not None:
            d = self._file_runner.run(writer.wait_durable)
            d.addCallbacks(lambda spooled: self._discard(spooled, refusal), self._seal_refused)
            return d
        if sub_operation is not None and summary.sop_instance_uid and self._retrieve_ae_title() is not None:
            # The Move Originator AE Title is not compared: archives fill it
            # differently (pynetdicom 3.0 puts its own AE title there, not
            # the C-MOVE's requester's); the Message ID and an expected SOP
            # Instance UID of an OPEN retrieve are the match.
            return self._take_sub_operation(writer, info, summary, sub_operation[1])
        return self._take_routed(writer, info, summary)

    def _take_sub_operation(
        self, writer: SpoolWriter, info: AssociationInfo, summary: DatasetSummary, message_id: int
    ) -> "Deferred[Admission]":
        """A C-MOVE sub-operation: journal it to its retrieve's move destination, or route it as any C-STORE."""
        uid = summary.sop_instance_uid or ""
        store: Any = self._store  # also an IRetrieveJournal (issue 16)
        d = self._store_runner.run(store.match_sub_operation, message_id, uid)

        def matched(retrieve: Any) -> "Deferred[Admission]":
            if retrieve is None:
                return self._take_routed(writer, info, summary)
            return self._take_relayed(writer, info, retrieve)

        def unmatched(failure: Failure) -> "Deferred[Admission]":
            self.log.error(
                "could not match C-MOVE sub-operation {sop_instance_uid} (message ID {message_id}): {error}; routed as any C-STORE",
                sop_instance_uid=uid,
                message_id=message_id,
                error=failure.getErrorMessage(),
            )
            return self._take_routed(writer, info, summary)

        d.addCallbacks(matched, unmatched)
        return d

    def _relay_plan(self, listener: str) -> Any:
        """The morph plan of the route ``retrieve.route`` names on ``listener`` (:data:`NO_MORPH` without one)."""
        name = self._retrieve_route(listener)
        if not name:
            return NO_MORPH
        route = next((r for r in self._routes() if r.name == name), None)
        if route is None:
            # Checked at load; a reload that removed it also changed retrieve.route.
            self.log.warn("retrieve.route {route!r} is not a route in force; relayed as received", route=name)
            return NO_MORPH
        return route_plan(route)

    def _take_relayed(self, writer: SpoolWriter, info: AssociationInfo, retrieve: Any) -> "Deferred[Admission]":
        """Journal a matched sub-operation with one entry to ``move.<destination>`` and link its item.

        The entry carries the morph plan of ``retrieve.route`` (issue 16: "an
        optional route can morph them"), read for the listener that took the
        C-MOVE; without one the instance goes as received.

        A C-GET's instance (``kind`` ``get``, relayed through a C-MOVE to the
        gateway) is journaled with no entry and linked with none: the C-GET
        handler sends it back on the requester's association. Before the
        journal write, on the store's thread, the durable file is linked to a
        hand-over path in the spool's ``scratch`` folder
        (:func:`gateway.qr.get.make_handover`): an instance without entries is
        "finished" for the spool's clean-up, and the link keeps its bytes
        until the C-GET handler has sent them (it then removes the link). Once
        journaled, the C-GET handler of this process is told at once
        (:data:`gateway.qr.get.RELAYS`); a handler on another node finds the
        link by polling (nobody waiting in this process: the link stays for
        that poller; the leg's end, or the start-up sweep, removes leftovers).
        """
        from gateway.qr.get import RELAYS, handover_path

        is_move = retrieve.request.kind == "move"
        destination = MOVE_DESTINATION_PREFIX + retrieve.request.destination
        entries = (
            [NewEntry(route=RETRIEVE_ROUTE, destination=destination, plan=self._relay_plan(retrieve.request.listener))]
            if is_move
            else []
        )
        handover = None if is_move else handover_path(self._scratch_dir, retrieve.retrieve_id, writer.meta.sop_instance_uid)
        item = _Pending(
            entries, Deferred(),
            writer=writer, info=info, received_at=self._wall(), correlation_id=new_correlation_id(),
            retrieve_id=retrieve.retrieve_id, handover=handover,
        )
        d = self._journal(item)

        def journaled(outcome: Any) -> Any:
            if isinstance(outcome, SpoolError):
                return Admission(outcome.status, outcome.comment)
            assert item.spooled is not None and item.record is not None
            if not isinstance(outcome, AddResult):
                if handover is not None:
                    try:
                        unlink_if_present(handover)
                    except OSError:
                        pass  # never made (its folder is unusable): nothing to remove
                return self._journal_failed(item.spooled, item.record, Failure(outcome))
            if handover is not None:
                try:
                    told = RELAYS.notify(retrieve.retrieve_id, handover, item.record)
                except Exception:
                    # In custody and journaled: the C-GET's poll still finds it; the ack stands.
                    self.log.failure("could not hand {path} over to its C-GET", path=handover)
                    told = True
                if not told:
                    # No C-GET of this process waits for it: another node's polls
                    # the scratch folder (shared spool), else the start-up sweep removes it.
                    self.log.debug("no local C-GET waits for retrieve {retrieve_id}", retrieve_id=retrieve.retrieve_id)
            self.relayed_total += 1
            self.log.debug(
                "{correlation_id} {sop_instance_uid} received for retrieve {retrieve_id}; queued for {destination}",
                correlation_id=item.record.correlation_id,
                sop_instance_uid=item.record.sop_instance_uid,
                retrieve_id=retrieve.retrieve_id,
                destination=destination if is_move else "its C-GET (hand-over)",
            )
            try:
                if is_move:
                    self._on_enqueued([destination])
            except Exception:
                self.log.failure("could not wake the worker of {destination}", destination=destination)
            return Admission(
                Status.SUCCESS, entries=len(outcome.entry_ids), matched=(RETRIEVE_ROUTE,),
                correlation_id=item.record.correlation_id, spooled=item.spooled,
            )

        d.addCallback(journaled)
        return d

    def _take_routed(self, writer: SpoolWriter, info: AssociationInfo, summary: DatasetSummary) -> "Deferred[Admission]":
        """Route and journal a sealed instance (the ordinary C-STORE)."""
        received_at = self._wall()
        context = self._context(info, received_at)
        routes = tuple(self._routes())
        correlation_id = new_correlation_id()
        dataset = None
        if needs_header(routes):
            dataset = walked_header(summary)
            if dataset is None:
                # The walk kept no header (larger than its cap): read it from the file once durable.
                d = self._file_runner.run(_durable_header, writer)

                def read(result: tuple[SpooledInstance, Any]) -> "Deferred[Admission]":
                    spooled, header = result
                    record = instance_record(spooled, info, received_at, correlation_id, self.node)
                    if header is None:
                        self.routing_errors_total += 1
                        return self._keep_unrouted(spooled, record)
                    return self._route(spooled, record, header, context, routes, False)

                d.addCallbacks(read, self._seal_refused)
                return d
        decision = self._decide(summary, correlation_id, context, routes, dataset)
        if decision.reject is not None or decision.dropped or decision.unrouted:
            d = self._file_runner.run(writer.wait_durable)

            def sealed(spooled: SpooledInstance) -> "Deferred[Admission]":
                record = instance_record(spooled, info, received_at, correlation_id, self.node)
                return self._apply(spooled, record, decision, routes, False)

            d.addCallbacks(sealed, self._seal_refused)
            return d
        item = _Pending(
            self._entries(decision, routes), Deferred(), writer=writer, info=info,
            received_at=received_at, correlation_id=correlation_id,
            notes=study_notes(decision, routes, summary),
        )
        d = self._journal(item)

        def journaled(outcome: Any) -> Any:
            if isinstance(outcome, SpoolError):
                return Admission(outcome.status, outcome.comment)
            assert item.spooled is not None and item.record is not None
            if isinstance(outcome, AddResult):
                return replace(self._journaled(item.record, decision, outcome), spooled=item.spooled)
            return self._journal_failed(item.spooled, item.record, Failure(outcome))

        d.addCallback(journaled)
        return d

    def _sealed_only(self, writer: SpoolWriter) -> "Deferred[Admission]":
        """The status of an instance the seal refuses (nothing to route or journal)."""
        d = self._file_runner.run(writer.wait_durable)

        def unexpected(spooled: SpooledInstance) -> "Deferred[Admission]":
            # end() said it would be refused: never acknowledge it after all.
            return self._discard(spooled, Admission(Status.OUT_OF_RESOURCES, "internal error while storing"))

        d.addCallbacks(unexpected, self._seal_refused)
        return d

    def _seal_refused(self, failure: Failure) -> Admission:
        """The Admission for a seal that failed: its status, or 0xA700 for anything unexpected."""
        if failure.check(SpoolError):
            error: SpoolError = failure.value  # type: ignore[assignment]
            return Admission(error.status, error.comment)
        self.log.failure("storing an instance failed unexpectedly", failure)
        return Admission(Status.OUT_OF_RESOURCES, "internal error while storing")

    def _context(self, info: AssociationInfo, received_at: float) -> RoutingContext:
        """The routing context of an instance from ``info``."""
        return RoutingContext(
            calling_ae_title=info.calling_ae_title,
            called_ae_title=info.called_ae_title,
            source_address=info.peer_address.rsplit(":", 1)[0],
            listener=info.listener,
            listener_port=info.listener_port,
            tls_subject=info.tls_subject,
            received_at=received_at,
            origin=info.origin,
        )

    def _route(
        self,
        spooled: SpooledInstance,
        record: InstanceRecord,
        dataset: Any,
        context: RoutingContext,
        routes: Sequence[RouteConfig],
        keep_file_on_failure: bool,
    ) -> Deferred[Admission]:
        """Route an instance already durable and apply the decision."""
        decision = self._decide(spooled.summary, record.correlation_id, context, routes, dataset)
        return self._apply(spooled, record, decision, routes, keep_file_on_failure, dataset)

    def _decide(
        self,
        summary: DatasetSummary,
        correlation_id: str,
        context: RoutingContext,
        routes: Sequence[RouteConfig],
        dataset: Any,
    ) -> RoutingDecision:
        """Evaluate the routes for one instance; count and log what matched and what failed."""
        decision = evaluate(dataset, context, routes, self._destinations())
        for name in decision.matched:
            self.route_matches[name] = self.route_matches.get(name, 0) + 1
        for error in decision.errors:
            self.routing_errors_total += 1
            self.log.error(
                "{correlation_id} routing error for {sop_instance_uid}: {error}",
                correlation_id=correlation_id,
                sop_instance_uid=summary.sop_instance_uid,
                error=error,
            )
        return decision

    def _entries(self, decision: RoutingDecision, routes: Sequence[RouteConfig]) -> list[NewEntry]:
        """The queue entries of a decision, each with its route's morph plan as it is now.

        The route's morph is decided now and journaled with each entry (issue
        11): a later reload, restart or upgrade cannot change it.
        """
        plans = {route.name: route_plan(route) for route in routes if route.forward}
        return [
            NewEntry(route=route, destination=destination, plan=plans[route])
            for route, destination in decision.entries
        ]

    def _apply(
        self,
        spooled: SpooledInstance,
        record: InstanceRecord,
        decision: RoutingDecision,
        routes: Sequence[RouteConfig],
        keep_file_on_failure: bool,
        dataset: Any = None,
    ) -> Deferred[Admission]:
        """Apply a routing decision to a durable instance: reject, drop, keep as unrouted, or journal its entries.

        ``dataset`` is the header routing parsed, if any (the study notes' series number and expected count).
        """
        if decision.reject is not None:
            self.rejected_total += 1
            self.log.info(
                "{correlation_id} {sop_instance_uid} rejected by route {route} with status 0x{status:04X}",
                correlation_id=record.correlation_id,
                sop_instance_uid=record.sop_instance_uid,
                route=decision.reject_route,
                status=decision.reject,
            )
            return self._discard(spooled, Admission(decision.reject, f"Rejected by route {decision.reject_route}", matched=decision.matched))
        if decision.dropped:
            self.dropped_total += 1
            self.log.info(
                "{correlation_id} {sop_instance_uid} dropped by a drop route ({routes})",
                correlation_id=record.correlation_id,
                sop_instance_uid=record.sop_instance_uid,
                routes=", ".join(decision.matched),
            )
            d = self._discard(spooled, Admission(Status.SUCCESS, dropped=True, matched=decision.matched, spooled=spooled))
            d.addCallback(self._note_unforwarded, record, "dropped", "dropped by " + ", ".join(decision.matched))
            return d
        if decision.unrouted:
            return self._keep_unrouted(spooled, record)
        d = self._journal(_Pending(
            self._entries(decision, routes), Deferred(), record=record,
            notes=study_notes(decision, routes, spooled.summary),
        ))
        d.addCallback(
            lambda result: replace(self._journaled(record, decision, result), spooled=spooled)
            if isinstance(result, AddResult)
            else self._journal_failed(spooled, record, Failure(result), keep_file_on_failure)
        )
        return d

    def _journal(self, item: _Pending) -> "Deferred[Any]":
        """Queue one journal write; it joins the next transaction (group commit).

        :returns: a Deferred firing with the :class:`AddResult`, or with the
            exception that kept the instance out of the journal
            (:class:`SpoolError` from its seal, the store's error); it never fails.
        """
        self._pending.append(item)
        if not self._journaling:
            self._commit_pending()
        return item.result

    def _commit_pending(self) -> None:
        """Seal-wait and write every pending instance in one transaction on the store's thread (one hand-off)."""
        batch, self._pending = self._pending, []
        self._journaling = True
        run = self._store_runner.run(self._custody_turn, batch, self._wall(), self.duplicate_window)

        def delivered(outcomes: list[Any]) -> None:
            for item, outcome in zip(batch, outcomes):
                item.result.callback(outcome)

        def broken(failure: Failure) -> None:
            # A bug in the turn itself: nobody is acknowledged.
            self.log.failure("journal turn failed", failure)
            for item in batch:
                if not item.result.called:
                    item.result.callback(_JournalFailure(failure.getErrorMessage()))

        def next_batch(_: object) -> None:
            self._journaling = False
            if self._pending:
                self._commit_pending()

        run.addCallbacks(delivered, broken).addBoth(next_batch)

    def _custody_turn(self, batch: list[_Pending], now: float, window: float) -> list[Any]:
        """On the store's thread: wait for each instance to be durable, then journal the group in one transaction.

        If the group's transaction fails (one bad record spoils it), each is
        written alone, so one instance's failure never fails another's ack.

        :returns: per item, its :class:`AddResult`, the :class:`SpoolError`
            of its seal, or the store's exception.
        """
        outcomes: list[Any] = [None] * len(batch)
        ready: list[int] = []
        for index, item in enumerate(batch):
            if item.writer is not None:
                try:
                    spooled = item.writer.wait_durable()
                except SpoolError as e:
                    outcomes[index] = e
                    continue
                assert item.info is not None
                item.spooled = spooled
                item.record = instance_record(spooled, item.info, item.received_at, item.correlation_id, self.node)
            if item.handover is not None and item.record is not None:
                # A C-GET relay's instance: its hand-over link before the journal
                # write (see _take_relayed); one that cannot be made fails the
                # instance (0xA700 to the source, the spool file removed).
                from gateway.qr.get import make_handover

                try:
                    make_handover(item.record.path, item.handover)
                except OSError as e:
                    outcomes[index] = e
                    continue
            ready.append(index)
        if not ready:
            return outcomes
        relayed = [i for i in ready if batch[i].retrieve_id is not None]
        if relayed:
            # C-MOVE sub-operations (issue 16): no duplicate control (the
            # requester asked for them again), and linked to their retrieve
            # before the C-STORE-RSP.
            ready = [i for i in ready if batch[i].retrieve_id is None]
            self._add_group(batch, relayed, outcomes, now, 0.0)
            self._link_relayed(batch, relayed, outcomes, now)
        if ready:
            self._add_group(batch, ready, outcomes, now, window)
        return outcomes

    def _link_relayed(self, batch: list[_Pending], indexes: list[int], outcomes: list[Any], now: float) -> None:
        """On the store's thread: link each journaled sub-operation to its retrieve item.

        A link that fails leaves the instance in custody and on its way to the
        move destination (acknowledged); the retrieve then counts it at its
        deadline, as failed: logged here.
        """
        store: Any = self._store
        for index in indexes:
            item, outcome = batch[index], outcomes[index]
            if not isinstance(outcome, AddResult) or item.record is None:
                continue
            entry_id = outcome.entry_ids[0] if outcome.entry_ids else None
            try:
                store.link_item(item.retrieve_id, item.record.sop_instance_uid, entry_id, now)
            except Exception as e:
                self.log.error(
                    "{correlation_id} could not link {sop_instance_uid} to retrieve {retrieve_id}: {error}",
                    correlation_id=item.record.correlation_id,
                    sop_instance_uid=item.record.sop_instance_uid,
                    retrieve_id=item.retrieve_id,
                    error=e,
                )

    def _add_group(self, batch: list[_Pending], ready: list[int], outcomes: list[Any], now: float, window: float) -> None:
        """On the store's thread: journal the ``ready`` items of ``batch`` in one transaction (one by one if it fails)."""
        # Study notes (issue 18) only when some instance has one: a store is
        # called as before by the routes that do not notify.
        notes = [batch[i].notes for i in ready]
        extra: dict[str, Any] = {"notes": notes} if any(notes) else {}
        try:
            results = self._store.add_instances(
                [(batch[i].record, batch[i].entries) for i in ready], now, window, **extra
            )
        except StoreUnavailable as e:
            # The journal is away (issue 14): one by one would wait out the
            # store's timeout once per instance. Every instance gets 0xA700.
            for index in ready:
                outcomes[index] = e
        except Exception:
            for index in ready:
                item = batch[index]
                try:
                    outcomes[index] = self._store.add_instance(
                        item.record, item.entries, now, window, **({"notes": item.notes} if item.notes else {})
                    )
                except Exception as e:
                    outcomes[index] = e
        else:
            for index, result in zip(ready, results):
                outcomes[index] = result

    def _journaled(self, record: InstanceRecord, decision: RoutingDecision, result: AddResult) -> Admission:
        if result.duplicates:
            self.duplicates_total += len(result.duplicates)
            self.log.info(
                "{correlation_id} {sop_instance_uid} is an identical re-send; not forwarded again to {destinations}",
                correlation_id=record.correlation_id,
                sop_instance_uid=record.sop_instance_uid,
                destinations=", ".join(result.duplicates),
            )
        fresh = sorted({dest for _, dest in decision.entries} - set(result.duplicates))
        self.log.debug(
            "{correlation_id} {sop_instance_uid} queued for {destinations}",
            correlation_id=record.correlation_id,
            sop_instance_uid=record.sop_instance_uid,
            destinations=", ".join(fresh) or "(none: duplicates)",
        )
        if fresh:
            try:
                self._on_enqueued(fresh)
            except Exception:
                # The journal has committed: the instance is in custody and
                # must be acknowledged 0x0000. A worker that failed to wake
                # finds the entries at its next poll.
                self.log.failure("could not wake the workers of {destinations}", destinations=", ".join(fresh))
        return Admission(
            Status.SUCCESS,
            entries=len(result.entry_ids),
            duplicates=result.duplicates,
            matched=decision.matched,
            correlation_id=record.correlation_id,
        )

    def _journal_failed(
        self, spooled: SpooledInstance, record: InstanceRecord, failure: Failure, keep_file: bool = False
    ) -> Deferred[Admission]:
        """The journal could not be written: un-spool the file and answer 0xA700 (never 0x0000).

        With ``keep_file`` (recovery) the file stays where it is. An
        unreachable store (:class:`StoreUnavailable`, issue 14) is one line
        per instance, without a traceback: it is an outage, not a bug. Its
        file is kept too: a COMMIT whose answer was lost may have landed, and
        a journaled entry must not name a removed file (the modality's
        re-send would be a DUPLICATE of it, acknowledged and never
        forwarded). A file the journal lacks is removed by the next start's
        recovery (or the housekeeping node's sweep of a dead node's files).
        """
        if failure.check(StoreUnavailable):
            keep_file = True
            self.log.error(
                "{correlation_id} could not journal {sop_instance_uid}: queue store unreachable ({error}); answering 0xA700",
                correlation_id=record.correlation_id,
                sop_instance_uid=record.sop_instance_uid,
                error=failure.getErrorMessage(),
            )
        else:
            self.log.failure(
                "{correlation_id} could not journal {sop_instance_uid}; answering 0xA700",
                failure,
                correlation_id=record.correlation_id,
                sop_instance_uid=record.sop_instance_uid,
            )

        def remove() -> None:
            if keep_file:
                return
            try:
                os.unlink(spooled.path)
            except OSError:
                pass

        d = self._file_runner.run(remove)
        d.addBoth(lambda _: Admission(Status.OUT_OF_RESOURCES, "Out of resources: queue journal not writable"))
        return d

    def _discard(self, spooled: SpooledInstance, admission: Admission) -> Deferred[Admission]:
        """Remove a rejected or dropped instance's spooled file, then answer ``admission``."""
        d = self._file_runner.run(unlink_if_present, spooled.path)

        def failed(failure: Failure) -> Admission:
            self.log.failure("could not remove a discarded spool file", failure)
            return admission

        d.addCallbacks(lambda _: admission, failed)
        return d

    def _keep_unrouted(self, spooled: SpooledInstance, record: InstanceRecord) -> Deferred[Admission]:
        """Move an instance that no route takes to ``unrouted/`` (durably) and acknowledge it."""

        def move() -> str:
            target = os.path.join(self._unrouted_dir, os.path.basename(spooled.path))
            try:
                make_private_dirs(self._unrouted_dir)  # HARDENING H08
                rename_durably(spooled.path, target)
            except OSError:
                # Never acknowledged: remove it wherever it is (a file left in
                # instances/ would be removed at the next start anyway).
                for path in (spooled.path, target):
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
                raise
            return target

        def moved(target: str) -> Admission:
            self.unrouted_total += 1
            self.log.warn(
                "{correlation_id} {sop_instance_uid} from {calling_ae_title} matched no route; kept as {path}",
                correlation_id=record.correlation_id,
                sop_instance_uid=record.sop_instance_uid,
                calling_ae_title=record.calling_ae_title,
                path=target,
            )
            return Admission(Status.SUCCESS, unrouted=True, correlation_id=record.correlation_id, spooled=spooled)

        def failed(failure: Failure) -> Admission:
            if failure.check(OSError):
                # A storage fault (D11, D12), not a bug: no traceback; the modality keeps its copy.
                self.log.error("could not keep an unrouted instance: {error}", error=failure.getErrorMessage())
                return Admission(Status.OUT_OF_RESOURCES, SpoolError.out_of_resources(failure.value, SpoolFailure.NOT_DURABLE).comment)  # type: ignore[arg-type]
            self.log.failure("could not keep an unrouted instance", failure)
            return Admission(Status.OUT_OF_RESOURCES, "Out of resources: cannot keep unrouted instance")

        d = self._file_runner.run(move)
        d.addCallbacks(moved, failed)
        d.addCallback(self._note_unforwarded, record, "unrouted", "kept as unrouted")
        return d

    def _note_unforwarded(self, admission: Admission, record: InstanceRecord, outcome: str, reason: str) -> Deferred[Admission]:
        """Note an acknowledged instance sent nowhere in the commitment journal, then answer ``admission``.

        Only when Storage Commitment is configured and the answer is a
        success. A failed note is logged and the answer stays: the instance
        is then reported 0x0112 (never received), which keeps the modality's
        copy, the safe side (issue 15).
        """
        if admission.status != Status.SUCCESS or not self._commitment():
            return succeed(admission)
        note = Unforwarded(
            sop_class_uid=record.sop_class_uid,
            sop_instance_uid=record.sop_instance_uid,
            outcome=outcome,
            received_at=record.received_at,
            calling_ae_title=record.calling_ae_title,
            reason=reason,
        )
        store = self._store

        def write(now: float) -> None:
            # The store object implements both interfaces (queue and commitments).
            ICommitmentJournal(store).note_unforwarded([note], now)

        d = self._store_runner.run(write, self._wall())

        def failed(failure: Failure) -> None:
            self.log.error(
                "{correlation_id} could not note {sop_instance_uid} ({outcome}) for Storage Commitment: {error}; "
                "a commitment request will report it as never received",
                correlation_id=record.correlation_id,
                sop_instance_uid=record.sop_instance_uid,
                outcome=outcome,
                error=failure.getErrorMessage(),
            )

        d.addErrback(failed)
        d.addCallback(lambda _: admission)
        return d
