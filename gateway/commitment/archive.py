"""The gateway as Storage Commitment SCU towards archives that commit (PS3.4 J.3; issue 15).

Under the ``committed`` policy an instance is committed to the modality only
once every destination flagged ``storage_commitment: true`` has itself
committed the copy it received. This module asks those archives and records
their answers; :mod:`gateway.commitment.verdict` reads the answers from the
journal (``ICommitmentJournal.received``'s ``copies``).

Theory of operation
-------------------
1. The forwarder notes each copy it delivers to such a destination
   (``note_copies``: entry, destination, the SOP Class and Instance UIDs *as
   sent*, PENDING), before it writes the delivery (:mod:`gateway.forward`).
2. An :class:`ArchiveCommitter` per destination (one node of a cluster at a
   time: the store singleton ``commitment:<name>``) looks every few seconds,
   and when poked: ``pending_copies`` (PENDING, or REQUESTED and unanswered
   for ``commitment_timeout``), at most :data:`REQUEST_LIMIT` at a time; a new
   Transaction UID; ``copies_requested`` *first*, so the archive's report,
   which may come before the N-ACTION-RSP, always finds its UID; then an
   association to the archive proposing only the Storage Commitment Push
   Model SOP Class, and N-ACTION-RQ, action type 1, on its well-known
   instance (PS3.4 J.3.2, J.3.2.1.2).
3. The archive reports in an N-EVENT-REPORT-RQ on an association it opens to
   the gateway (PS3.4 J.3.3; the listener accepts its SCP role, PS3.7
   D.3.3.4), or on ours while it is open. The listener hands it to
   :meth:`ArchiveReports.record`: ``copies_answered`` (committed and failed
   UIDs, a later success winning over an earlier failure), an
   N-EVENT-REPORT-RSP status, and a poke of the commitment worker, whose
   transactions may now be decided.

Why asking again is safe
------------------------
A failed N-ACTION (the archive down, a refusal, a timeout) and a report that
never comes leave the copies REQUESTED; ``pending_copies`` returns them once
``commitment_timeout`` has passed, under a new Transaction UID. That costs
the archive one more look at instances it holds (a commitment request
changes nothing there, PS3.4 J.3.2: the SCP only checks and reports), and an
answer to the earlier request still counts when it comes late (the journal
remembers every UID it sent, with its destination). Nothing is lost by a
crash between ``copies_requested`` and the N-ACTION either: the copies wait
out the timeout and are asked again. So no step needs to be undone and the
committer keeps nothing in memory a restart would need.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway import events
from gateway.blocking import IBlockingRunner
from gateway.commitment.model import CommitmentReport, Reference
from gateway.config.schema import Destination, DicomDestination
from gateway.dimse.status import Status, StatusCategory, category
from gateway.queue.commitments import CopyCommitment, ICommitmentJournal
from gateway.queue.interfaces import IQueueStore, StoreUnavailable

__all__ = [
    "REQUEST_LIMIT",
    "INTERVAL",
    "STATUS_SUCCESS",
    "STATUS_PROCESSING_FAILURE",
    "STATUS_INVALID_ARGUMENT_VALUE",
    "Ask",
    "ArchiveCommitter",
    "ArchiveReports",
    "ask_archive",
    "new_transaction_uid",
    "singleton_name",
]

#: Copies named in one N-ACTION: a large study's worth. Its data set stays a
#: few tens of KB (about 130 bytes per Referenced SOP Sequence item), far below
#: any archive's limits, and a backlog is asked in a few requests, not thousands.
REQUEST_LIMIT = 500

#: Seconds between two looks at the journal for copies to ask about (a poke after deliveries comes sooner).
INTERVAL = 5.0

#: N-EVENT-REPORT-RSP statuses (PS3.7 10.1.1.1.8, the codes of Annex C).
#: Success (PS3.7 C.1.1).
STATUS_SUCCESS = int(Status.SUCCESS)
#: Processing failure (PS3.7 C.5): the report could not be recorded (the journal away).
STATUS_PROCESSING_FAILURE = int(Status.PROCESSING_FAILURE)
#: Invalid argument value (PS3.7 10.1.1.1.8, C.5: an event information value
#: out of range or otherwise inappropriate): a Transaction UID (0008,1195) the
#: gateway never sent. (0x0112 No such SOP Instance would be
#: wrong: the affected instance is the well-known one, which exists.)
STATUS_INVALID_ARGUMENT_VALUE = int(Status.INVALID_ARGUMENT_VALUE)

#: Sends one N-ACTION: ``ask(destination, transaction_uid, references)``
#: fires with the N-ACTION-RSP's ``(status, error comment)``, or fails
#: (association refused or aborted, timeout). :func:`ask_archive` in production.
Ask = Callable[[DicomDestination, str, Sequence[Reference]], "Deferred[tuple[int, str]]"]


def new_transaction_uid() -> str:
    """A new Transaction UID (0008,1195): ``2.25.`` and a random UUID as an integer (PS3.5 B.2).

    The gateway has no registered root of its own (its Implementation Class
    UID is UUID-derived too, :mod:`gateway.identity`); a random UUID is
    unique without one, and unguessable, which matters here: a report is
    matched to our request by this UID alone.

    :returns: at most 44 characters, well within a UI's 64 (PS3.5 9.1).
    """
    return f"2.25.{uuid.uuid4().int}"


def singleton_name(destination: str) -> str:
    """The store singleton that makes one node of a cluster ask ``destination``."""
    return f"commitment:{destination}"


def _references(copies: Sequence[CopyCommitment]) -> list[Reference]:
    """The Referenced SOP Sequence of a request: each (class, instance) once, oldest copy first.

    Two copies may carry one UID (two routes sending the same copy, a
    redelivery after a re-send); the archive's answer is recorded per UID,
    for every copy of it, so it is asked once.
    """
    seen: dict[Reference, None] = {}
    for copy in copies:
        seen.setdefault(Reference(copy.sop_class_uid, copy.sop_instance_uid), None)
    return list(seen)


def ask_archive(reactor: Any, reports: "ArchiveReports | None" = None) -> Ask:
    """The production :data:`Ask`: an association to the archive and one N-ACTION-RQ on it.

    The association proposes only the Storage Commitment Push Model SOP
    Class, with Explicit and Implicit VR Little Endian (every archive accepts
    Implicit, PS3.5 10.1), with the destination's own timeouts and TLS
    (:func:`gateway.send.dicom.connect_dicom`), and is released after the
    response (aborted if it fails). An archive may report on this
    association while it is open (PS3.4 J.3.3: "the same or a new
    association"); such a report goes to ``reports`` like one on an
    association the archive opens (:meth:`ArchiveReports.on_our_association`).

    :param reactor: provides ``IReactorTCP`` and ``IReactorTime``.
    :param reports: where a report on our association goes (``None``: answered 0x0110).
    :returns: the ask function.
    """
    from gateway.commitment.model import (
        ACTION_REQUEST_COMMITMENT,
        STORAGE_COMMITMENT_INSTANCE,
        STORAGE_COMMITMENT_PUSH,
        ActionRequest,
    )
    from gateway.dimse.commitment import encode_action_request
    from gateway.send.dicom import connect_dicom
    from gateway.sopclasses import EXPLICIT_VR_LE, IMPLICIT_VR_LE

    async def ask(destination: DicomDestination, transaction_uid: str, references: Sequence[Reference]) -> tuple[int, str]:
        association = await connect_dicom(
            reactor, destination, [(STORAGE_COMMITMENT_PUSH, [EXPLICIT_VR_LE, IMPLICIT_VR_LE])], verification=False
        )
        if reports is not None:
            association.on_event_report(reports.on_our_association(destination.ae_title))
        try:
            context = association.context_for_class(STORAGE_COMMITMENT_PUSH)
            if context is None:
                raise ConnectionError(f"{destination.name} did not accept Storage Commitment Push Model ({STORAGE_COMMITMENT_PUSH})")
            dataset = encode_action_request(ActionRequest(transaction_uid, tuple(references)), context.transfer_syntax)
            response = await association.n_action(
                STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, ACTION_REQUEST_COMMITMENT, dataset
            )
        except BaseException:
            if association.is_open:
                association.abort()
            raise
        if association.is_open:
            released = association.release()
            timer = reactor.callLater(destination.acse_timeout, association.abort)
            try:
                await released
            except Exception:
                pass  # the answer is in; how the association ends changes nothing
            finally:
                if timer.active():
                    timer.cancel()
        return int(response.status), str(getattr(response, "error_comment", None) or "")

    def run(destination: DicomDestination, transaction_uid: str, references: Sequence[Reference]) -> "Deferred[tuple[int, str]]":
        return Deferred.fromCoroutine(ask(destination, transaction_uid, references))

    return run


class ArchiveCommitter(Service):
    """Asks one ``storage_commitment`` destination to commit the copies delivered to it (see the module docstring).

    :param name: the destination's name (the service's name is ``commitment:<name>``).
    :param destination: returns the destination's current configuration
        (after a reload), or ``None`` when it is gone: nothing is asked then.
    :param journal: the commitment journal.
    :param store: the queue store, for the singleton (one node asks).
    :param run: runs every store call (the store's thread).
    :param clock: schedules the looks.
    :param wall: wall-clock time for the journal.
    :param ask: sends one N-ACTION (:func:`ask_archive`).
    :param observer: receives :class:`~gateway.events.ArchiveCommitmentRequested`.
    :param interval: seconds between two looks.
    :param limit: copies per N-ACTION.
    :param singleton_seconds: how long a SQLite or memory singleton hold lasts
        (renewed at each look; longer than ``interval``).
    :param poke_delay: seconds from a poke to its look (pokes meanwhile join it).
    """

    log = Logger(namespace="gateway.commitment.archive")

    def __init__(
        self,
        name: str,
        destination: Callable[[], DicomDestination | None],
        journal: ICommitmentJournal,
        store: IQueueStore,
        run: IBlockingRunner,
        clock: IReactorTime,
        wall: Callable[[], float],
        ask: Ask,
        observer: events.IGatewayObserver = events.NULL_OBSERVER,
        interval: float = INTERVAL,
        limit: int = REQUEST_LIMIT,
        singleton_seconds: float | None = None,
        poke_delay: float = 1.0,
    ) -> None:
        self.destination_name = name
        self.poke_delay = poke_delay
        self.setName(singleton_name(name))
        self._destination = destination
        self._journal = journal
        self._store = store
        self._run = run
        self._clock = clock
        self._wall = wall
        self._ask = ask
        self._observer = observer
        self.interval = interval
        self.limit = max(1, limit)
        self.singleton_seconds = 3 * interval if singleton_seconds is None else singleton_seconds
        self._loop = LoopingCall(self.look)
        self._loop.clock = clock
        #: The look in progress, if any.
        self._looking: Deferred[None] | None = None
        #: The look a poke scheduled, if any.
        self._poked: IDelayedCall | None = None
        #: A look is in progress (set before it starts: a synchronous store runs it at once).
        self._busy = False
        #: A poke came during a look: look again when it ends.
        self._again = False
        self._stopping = False
        #: Whether this node held the singleton at its last look (for the log).
        self.holder = False
        #: Why the last request failed ("" after one the archive accepted).
        self.last_error = ""

    # -- service ---------------------------------------------------------------------------

    def startService(self) -> None:
        """Look now, then every ``interval`` seconds."""
        Service.startService(self)
        self._stopping = False
        if not self._loop.running:
            self._loop.start(self.interval, now=True)

    def stopService(self) -> "Deferred[None]":
        """Stop looking; the Deferred fires once a request in flight has ended (its own timeouts bound it)."""
        Service.stopService(self)
        self._stopping = True
        if self._loop.running:
            self._loop.stop()
        if self._poked is not None and self._poked.active():
            self._poked.cancel()
        looking = self._looking
        if looking is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        looking.addBoth(lambda _: done.callback(None))
        return done

    def poke(self) -> None:
        """Copies were delivered: look in ``poke_delay`` seconds rather than at the next interval.

        Pokes within the delay (a batch of deliveries after another) make one
        look, not one store query each; one during a look makes another look
        right after it.
        """
        if not self.running or self._stopping:
            return
        if self._busy:
            self._again = True
            return
        if self._poked is None or not self._poked.active():
            self._poked = self._clock.callLater(self.poke_delay, self.look)

    # -- one look --------------------------------------------------------------------------

    def look(self) -> "Deferred[None]":
        """One look (several requests while a backlog lasts); never fails, never overlaps another.

        :returns: a Deferred firing when the look has ended.
        """
        if self._busy:
            self._again = True
            return succeed(None)
        self._busy = True
        self._again = False
        d = Deferred.fromCoroutine(self._look())
        d.addErrback(self._failed)
        d.addBoth(self._looked)
        if self._busy and self._looking is None:
            # (Not already ended; one started by its end has set its own.)
            self._looking = d
        return d

    def _failed(self, failure: Any) -> None:
        if failure.check(StoreUnavailable):
            # The heartbeat reports the outage; the next look tries again.
            self.log.warn(
                "storage commitment towards {destination}: journal unavailable ({error}); asking later",
                destination=self.destination_name,
                error=failure.getErrorMessage(),
            )
        else:
            self.log.failure("storage commitment towards {destination} failed", failure, destination=self.destination_name)

    def _looked(self, _: object) -> None:
        self._busy = False
        self._looking = None
        if self._again and self.running and not self._stopping:
            self.look()

    async def _look(self) -> None:
        """Ask the archive about pending copies, ``limit`` at a time, while it accepts and more are pending."""
        while not self._stopping:
            destination = self._destination()
            if destination is None or not destination.storage_commitment:
                return
            now = self._wall()
            held = bool(
                await self._run.run(
                    self._store.hold_singleton, singleton_name(self.destination_name), now, self.singleton_seconds
                )
            )
            if held != self.holder:
                self.log.info(
                    "this node {what} Storage Commitment requests to {destination}",
                    what="now sends" if held else "no longer sends",
                    destination=self.destination_name,
                )
                self.holder = held
            if not held:
                return
            copies: list[CopyCommitment] = await self._run.run(
                self._journal.pending_copies, self.destination_name, now, destination.commitment_timeout, self.limit
            )
            if not copies:
                return
            accepted = await self._request(destination, copies, now)
            if not accepted or len(copies) < self.limit:
                return

    async def _request(self, destination: DicomDestination, copies: Sequence[CopyCommitment], now: float) -> bool:
        """One N-ACTION about ``copies``; whether the archive accepted it (success or warning status)."""
        transaction_uid = new_transaction_uid()
        references = _references(copies)
        # Journaled before the N-ACTION goes out: the archive may report (on a
        # new association) before its N-ACTION-RSP reaches us, and its report
        # must find the UID. A crash after this write leaves the copies
        # REQUESTED: asked again after commitment_timeout (module docstring).
        await self._run.run(
            self._journal.copies_requested, self.destination_name, [c.entry_id for c in copies], transaction_uid, now
        )
        try:
            status, comment = await self._ask(destination, transaction_uid, references)
        except Exception as e:
            self.last_error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            self.log.warn(
                "storage commitment request {transaction_uid} to {destination} ({count} instance(s)) failed: {error}; "
                "asked again in {timeout:.0f}s",
                transaction_uid=transaction_uid,
                destination=self.destination_name,
                count=len(references),
                error=self.last_error,
                timeout=destination.commitment_timeout,
            )
            return False
        self._observer.observe(
            events.ArchiveCommitmentRequested(self.destination_name, transaction_uid, len(references), status)
        )
        if category(status) in (StatusCategory.SUCCESS, StatusCategory.WARNING):
            self.last_error = ""
            self.log.info(
                "asked {destination} to commit {count} instance(s): transaction {transaction_uid}, status 0x{status:04X}",
                destination=self.destination_name,
                count=len(references),
                transaction_uid=transaction_uid,
                status=status,
            )
            return True
        # Refused: the copies stay REQUESTED and are asked again after the timeout
        # (an archive that never commits leaves them undecided until the
        # transactions' deadline: never "committed" by mistake).
        self.last_error = f"N-ACTION status 0x{status:04X}" + (f": {comment}" if comment else "")
        self.log.warn(
            "{destination} refused storage commitment request {transaction_uid}: {error}; asked again in {timeout:.0f}s",
            destination=self.destination_name,
            transaction_uid=transaction_uid,
            error=self.last_error,
            timeout=destination.commitment_timeout,
        )
        return False


class ArchiveReports:
    """Records the reports archives send on our N-ACTIONs (inbound N-EVENT-REPORT-RQ, PS3.4 J.3.3).

    The listener's Storage Commitment handler (:mod:`gateway.commitment.scp`)
    decodes the data set and calls :meth:`record`; its answer is the
    N-EVENT-REPORT-RSP status.

    :param run: runs every store call (the store's thread).
    :param journal: the commitment journal.
    :param destinations: returns the destinations in force (to name the reporting one in events).
    :param observer: receives :class:`~gateway.events.ArchiveCommitmentReported`.
    :param wall: wall-clock time for the journal.
    :param on_answered: called after a report changed copies (the commitment worker's poke).
    """

    log = Logger(namespace="gateway.commitment.archive")

    def __init__(
        self,
        run: IBlockingRunner,
        journal: ICommitmentJournal,
        destinations: Callable[[], Sequence[Destination]],
        observer: events.IGatewayObserver = events.NULL_OBSERVER,
        wall: Callable[[], float] | None = None,
        on_answered: Callable[[], None] = lambda: None,
    ) -> None:
        self._run = run
        self._journal = journal
        self._destinations = destinations
        self._observer = observer
        self._wall = wall or time.time
        self._on_answered = on_answered

    def _destination_of(self, calling_ae_title: str) -> str:
        """The ``storage_commitment`` destination that reports as ``calling_ae_title``, ``""`` if none does.

        Used only to name it in events and logs: the report is matched to our
        request by its Transaction UID alone (random and unguessable,
        :func:`new_transaction_uid`), since an archive may report with
        another AE title than the one we call it by.
        """
        title = calling_ae_title.strip()
        for destination in self._destinations():
            if isinstance(destination, DicomDestination) and destination.storage_commitment and destination.ae_title == title:
                return destination.name
        return ""

    def on_our_association(self, ae_title: str) -> "Callable[[Any, Any, bytes], Deferred[int]]":
        """A handler for reports an archive sends on the association of our N-ACTION.

        The checks are those of a report on an association the archive opens
        (:meth:`gateway.commitment.scp.CommitmentSCP.event_report`; PS3.7
        10.1.1.1.8): Affected SOP Class not the Push Model class -> 0x0118
        No such SOP Class; Affected SOP Instance not the well-known one
        (PS3.4 J.3.2.1.2) -> 0x0112 No such SOP Instance; Event Type ID not 1
        or 2 (PS3.4 Table J.3-2) -> 0x0113 No such event type; a data set
        that cannot be decoded -> 0x0110 Processing failure; then
        :meth:`record`.

        :param ae_title: the archive's AE title (the association's called AE title).
        :returns: the handler for :meth:`gateway.associate.ClientAssociation.on_event_report`.
        """
        from gateway.commitment.model import (
            EVENT_ALL_COMMITTED,
            EVENT_SOME_FAILED,
            STORAGE_COMMITMENT_INSTANCE,
            STORAGE_COMMITMENT_PUSH,
        )
        from gateway.dimse.commitment import CommitmentDataSetError, decode_event_report

        def handle(rq: Any, context: Any, dataset: bytes) -> "Deferred[int]":
            refusal: Status | None = None
            if rq.affected_sop_class_uid != STORAGE_COMMITMENT_PUSH:
                refusal = Status.NO_SUCH_SOP_CLASS
            elif rq.affected_sop_instance_uid != STORAGE_COMMITMENT_INSTANCE:
                refusal = Status.NO_SUCH_OBJECT_INSTANCE
            elif rq.event_type_id not in (EVENT_ALL_COMMITTED, EVENT_SOME_FAILED):
                refusal = Status.NO_SUCH_EVENT_TYPE
            else:
                try:
                    report = decode_event_report(dataset, context.transfer_syntax)
                except CommitmentDataSetError as e:
                    self.log.warn("undecodable storage commitment report from {ae_title}: {error}", ae_title=ae_title, error=e)
                    refusal = Status.PROCESSING_FAILURE
            if refusal is not None:
                return succeed(int(refusal))
            return self.record(ae_title, report).addCallback(lambda answer: int(answer[0]))

        return handle

    def record(self, calling_ae_title: str, report: CommitmentReport) -> "Deferred[tuple[int, str]]":
        """Record ``report``; fires with the N-EVENT-REPORT-RSP ``(status, error comment)``, never fails.

        :param calling_ae_title: the reporting archive's AE title.
        :param report: the decoded N-EVENT-REPORT data set.
        :returns: ``(0x0000, "")`` once journaled; :data:`STATUS_INVALID_ARGUMENT_VALUE`
            for a Transaction UID we never sent; :data:`STATUS_PROCESSING_FAILURE`
            when the journal could not take it (the copies stay REQUESTED and
            are asked again after ``commitment_timeout``).
        """
        return Deferred.fromCoroutine(self._record(calling_ae_title, report))

    async def _record(self, calling_ae_title: str, report: CommitmentReport) -> tuple[int, str]:
        committed = [r.sop_instance_uid for r in report.committed]
        failed = [(f.reference.sop_instance_uid, f.reason) for f in report.failed]
        destination = self._destination_of(calling_ae_title)
        status, comment = STATUS_SUCCESS, ""
        changed = 0
        try:
            changed = int(
                await self._run.run(self._journal.copies_answered, report.transaction_uid, committed, failed, self._wall())
            )
        except KeyError:
            status = STATUS_INVALID_ARGUMENT_VALUE
            comment = f"no storage commitment request with Transaction UID {report.transaction_uid} was sent"
            destination = ""
            self.log.warn(
                "storage commitment report from {calling_ae_title}: {comment}",
                calling_ae_title=calling_ae_title,
                comment=comment,
            )
        except StoreUnavailable as e:
            status, comment = STATUS_PROCESSING_FAILURE, "the journal is unavailable"
            self.log.warn(
                "storage commitment report {transaction_uid} from {calling_ae_title} not recorded: {error}",
                transaction_uid=report.transaction_uid,
                calling_ae_title=calling_ae_title,
                error=e,
            )
        except Exception:
            status, comment = STATUS_PROCESSING_FAILURE, "the report could not be recorded"
            self.log.failure(
                "storage commitment report {transaction_uid} from {calling_ae_title} not recorded",
                transaction_uid=report.transaction_uid,
                calling_ae_title=calling_ae_title,
            )
        else:
            self.log.info(
                "{destination} reported on storage commitment request {transaction_uid}: "
                "{committed} committed, {failed} failed ({changed} cop(y/ies) changed)",
                destination=destination or calling_ae_title,
                transaction_uid=report.transaction_uid,
                committed=len(committed),
                failed=len(failed),
                changed=changed,
            )
        self._observer.observe(
            events.ArchiveCommitmentReported(
                destination, calling_ae_title, report.transaction_uid, len(committed), len(failed), status
            )
        )
        if changed:
            self._on_answered()
        return status, comment
