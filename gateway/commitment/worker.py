"""The reports the gateway owes: lease, decide, send, retry, dead-letter (PS3.4 J.3.3; issue 15).

Theory of operation
-------------------
Every accepted N-ACTION is a journaled :class:`~gateway.queue.commitments.Transaction`
(OPEN) before its N-ACTION-RSP goes out. One :class:`CommitmentWorker` per
node loops:

1. lease up to ``batch`` OPEN transactions that are due
   (:meth:`~gateway.queue.commitments.ICommitmentJournal.lease_transactions`;
   an expired lease of a dead node is taken over there); none -> sleep until
   :meth:`CommitmentWorker.poke` (an N-ACTION was journaled) or ``poll``
   seconds (another node's transactions, the CLI's retries), whichever
   comes first;
2. for each, concurrently:

   * a report already decided (``Transaction.report``): send it unchanged;
   * else read what the journal knows of the requested UIDs since the
     request's lookback (one :meth:`received` call) and judge it
     (:func:`gateway.commitment.verdict.judge`). Not decided: defer it to
     ``min(deadline, now + recheck)`` (a delivery does not hasten that look:
     ``lease_transactions`` takes only transactions that are due, so a poke
     at each delivery would cost a query and find nothing; ``recheck``
     bounds the delay instead). Decided: record the report
     (:meth:`decide_transaction`: the one on record wins, so a node that
     decided before it died and the one that takes over send the same
     report), then send it;

3. a send that the requester answered with success is
   :meth:`transaction_reported`; one that failed is deferred, counted, by an
   exponential backoff (``retry_initial`` doubling to ``retry_max``, never
   past ``report_deadline``), or, once ``report_deadline`` has passed,
   :meth:`transaction_dead` (a dead letter of its own kind that ``queue
   retry`` replays).

What survives a crash is only what the journal holds: nothing a restart
needs is kept in memory. A crash between decide and send resends the
recorded report; a crash between the requester's success and
:meth:`transaction_reported` sends it once more (at-least-once, the window
of one journal write, as for a C-STORE in flight, HARDENING F06).

Leases: a transaction's lease is renewed every third of ``lease_seconds``
while its send runs (an association to a slow requester may take longer
than a lease), so no other node takes it over meanwhile. A renewal that
finds the lease lost, or a write refused with
:class:`~gateway.queue.interfaces.LeaseLost`, means another node has it:
this node's outcome is dropped (logged), the other node's stands.

The store's faults (:class:`~gateway.queue.interfaces.StoreUnavailable`):
the loop backs off (``recheck`` seconds) and leases again; a transaction
whose write failed keeps its lease until it expires, then is taken again.

Every store call goes through ``run`` (the store's blocking runner); times
written to the journal come from ``wall``; sleeps are scheduled on ``clock``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway import events
from gateway.blocking import IBlockingRunner
from gateway.commitment.model import CommitmentReport
from gateway.commitment.verdict import judge
from gateway.config.schema import CommitmentConfig, DicomDestination, GatewayConfig
from gateway.forward_waits import Waits
from gateway.queue.commitments import ICommitmentJournal, Transaction
from gateway.queue.interfaces import LeaseLost, StoreUnavailable

__all__ = ["ReportSending", "CommitmentWorker", "committing_destinations", "retry_delay"]


class ReportSending(Protocol):
    """What sends one report (:class:`gateway.commitment.report.ReportSender`)."""

    def send(self, transaction: Transaction, report: CommitmentReport) -> "Deferred[Any]":
        """Deliver ``report`` to the transaction's requester; fails when it was not acknowledged."""


def committing_destinations(config: GatewayConfig) -> frozenset[str]:
    """The names of DICOM destinations with ``storage_commitment: true``.

    :param config: the current configuration.
    :returns: the names.
    """
    return frozenset(d.name for d in config.destinations if isinstance(d, DicomDestination) and d.storage_commitment)


def retry_delay(attempt: int, settings: CommitmentConfig) -> float:
    """Seconds before the next report delivery attempt, after failed attempt number ``attempt`` (from 1).

    ``retry_initial`` after the first failure, doubling each time, at most
    ``retry_max`` (Twisted's ``backoffPolicy`` without the jitter: the
    requester is one AE, not a crowd).

    :param attempt: the attempts failed so far (at least 1).
    :param settings: the listener's commitment settings.
    :returns: the delay.
    """
    exponent = min(max(attempt - 1, 0), 64)
    return float(min(settings.retry_max, settings.retry_initial * (2.0**exponent)))


class CommitmentWorker(Service):
    """Sends the reports this node can lease (see the module docstring).

    :param journal: the commitment journal (the queue store).
    :param run: the store's blocking runner.
    :param clock: schedules sleeps and lease renewals.
    :param wall: wall-clock time for the journal.
    :param config: the current configuration (modalities, destinations and
        listeners after reloads).
    :param sender: sends one report.
    :param observer: gets :class:`~gateway.events.CommitmentReportSent` and
        :class:`~gateway.events.CommitmentReportFailed`.
    :param lease_seconds: how long a lease holds (renewed while a send runs).
    :param recheck: seconds between two looks at an undecided transaction
        (and the back-off after a store fault).
    :param poll: the longest idle sleep (other nodes' work, the CLI's retries).
    :param batch: transactions leased (and handled concurrently) at once.
    :param grace: the longest a stop waits for the sends in flight.
    """

    log = Logger(namespace="gateway.commitment.worker")
    name = "commitment"

    def __init__(
        self,
        journal: ICommitmentJournal,
        run: IBlockingRunner,
        clock: IReactorTime,
        wall: Callable[[], float] = time.time,
        config: Callable[[], GatewayConfig] | None = None,
        sender: ReportSending | None = None,
        observer: events.IGatewayObserver = events.NULL_OBSERVER,
        lease_seconds: float = 60.0,
        recheck: float = 10.0,
        poll: float = 5.0,
        batch: int = 8,
        grace: float = 10.0,
    ) -> None:
        if config is None or sender is None:
            raise TypeError("CommitmentWorker needs a config getter and a sender")
        self.journal = journal
        self.run = run
        self.clock = clock
        self.wall = wall
        self.config = config
        self.sender = sender
        self.observer = observer
        self.lease_seconds = lease_seconds
        self.recheck = recheck
        self.poll = poll
        self.batch = batch
        self.grace = grace
        self._stopping = False
        self.waits = Waits(clock, lambda: self._stopping)
        #: Transactions held now: UID -> the generation leased (renewed while held).
        self.held: dict[str, int] = {}
        #: UIDs whose lease a renewal found lost while they were handled.
        self.lost: set[str] = set()
        self._loop: Deferred[None] | None = None
        self._renewer = LoopingCall(self._renew)
        self._renewer.clock = clock

    # -- life cycle ------------------------------------------------------------------------

    def startService(self) -> None:
        """Start the loop and the lease renewals."""
        super().startService()
        self._stopping = False
        self._renewer.start(max(self.lease_seconds / 3.0, 0.001), now=False)
        self._loop = Deferred.fromCoroutine(self._run_loop())
        self._loop.addErrback(lambda f: self.log.failure("the commitment worker stopped", f))

    def stopService(self) -> "Deferred[None]":
        """Wake the loop and wait for the sends in flight, at most ``grace`` seconds.

        A send still running then is left to finish or fail on its own; its
        transaction stays leased until the lease expires, and is taken again
        (by this node after a restart, or by another): the report is owed
        until the journal says it was delivered.
        """
        super().stopService()
        self._stopping = True
        self.waits.wake(all_sleepers=True)
        if self._renewer.running:
            self._renewer.stop()
        loop, self._loop = self._loop, None
        done: Deferred[None] = Deferred()
        if loop is None:
            done.callback(None)
            return done

        def finish(_: object = None) -> None:
            if timer.active():
                timer.cancel()
            if not done.called:
                done.callback(None)

        timer = self.clock.callLater(self.grace, finish)
        loop.addBoth(finish)
        return done

    def poke(self) -> None:
        """An N-ACTION was journaled (or a retry queued): lease what is due now rather than at the next poll."""
        self.waits.poke()

    # -- the loop --------------------------------------------------------------------------

    async def _run_loop(self) -> None:
        while not self._stopping:
            try:
                worked = await self.turn()
            except StoreUnavailable as e:
                self.log.warn("commitment journal unavailable, trying again in {delay}s: {error}", delay=self.recheck, error=str(e))
                await self.waits.sleep(self.recheck, pokeable=False)
                continue
            except Exception:
                # A bug, not an outage: logged, and the loop goes on (a report owed is never given up here).
                self.log.failure("commitment worker turn failed; trying again in {delay}s", delay=self.recheck)
                await self.waits.sleep(self.recheck, pokeable=False)
                continue
            if not worked and not self._stopping:
                await self.waits.sleep(self.poll, pokeable=True)

    async def turn(self) -> int:
        """Lease a batch of due transactions and handle them; returns how many were leased.

        :raises StoreUnavailable: the lease could not be taken.
        """
        now = self.wall()
        leased: list[Transaction] = await self.run.run(
            self.journal.lease_transactions, now, self.batch, self.lease_seconds
        )
        if not leased:
            return 0
        for transaction in leased:
            self.held[transaction.transaction_uid] = transaction.lease_generation
            self.lost.discard(transaction.transaction_uid)
        await gatherResults([Deferred.fromCoroutine(self._handle_safely(t)) for t in leased], consumeErrors=True)
        return len(leased)

    async def _handle_safely(self, transaction: Transaction) -> None:
        """Handle one transaction; its faults are logged, never the loop's."""
        uid = transaction.transaction_uid
        try:
            await self.handle(transaction)
        except LeaseLost:
            # Another node took it over (our lease expired): its outcome stands.
            self.log.warn("commitment transaction {uid}: lease lost to another node; its outcome stands", uid=uid)
        except StoreUnavailable as e:
            # The lease expires and the transaction is taken again; nothing is kept here.
            self.log.warn("commitment transaction {uid}: journal unavailable: {error}", uid=uid, error=str(e))
        except Exception:
            self.log.failure("commitment transaction {uid} failed", uid=uid)
        finally:
            self.held.pop(uid, None)
            self.lost.discard(uid)

    async def handle(self, transaction: Transaction) -> None:
        """Decide (unless decided) and send one leased transaction's report, or defer it.

        :raises LeaseLost: a write found the lease taken over.
        :raises StoreUnavailable: a store call failed.
        """
        uid = transaction.transaction_uid
        generation = transaction.lease_generation
        request = transaction.request
        if transaction.report:
            # Decided before (this node or another, before a crash): the same report, unchanged.
            text = transaction.report
        else:
            received = await self.run.run(
                self.journal.received, [r.sop_instance_uid for r in request.references], request.lookback_from
            )
            now = self.wall()
            try:
                verdict = judge(request, received, committing_destinations(self.config()), now)
            except ValueError as e:
                # A policy this version does not know: look again later (an upgrade may know it).
                await self.run.run(
                    self.journal.defer_transaction, uid, now + self._settings(transaction).retry_max, now, generation, str(e)
                )
                return
            if not verdict.decided:
                due = min(request.deadline, now + self.recheck)
                await self.run.run(
                    self.journal.defer_transaction,
                    uid,
                    due,
                    now,
                    generation,
                    f"{verdict.undecided()} of {len(verdict.instances)} instance(s) undecided",
                )
                return
            report = verdict.report(uid)
            # The one on record wins: a report decided earlier is never changed.
            text = await self.run.run(self.journal.decide_transaction, uid, report.to_json(), now, generation)
        await self._send(transaction, CommitmentReport.from_json(text))

    async def _send(self, transaction: Transaction, report: CommitmentReport) -> None:
        """Send the report; record the outcome (reported, deferred with backoff, or dead)."""
        uid = transaction.transaction_uid
        generation = transaction.lease_generation
        request = transaction.request
        attempt = transaction.attempts + 1
        try:
            await self.sender.send(transaction, report)
        except Exception as e:
            error = str(e) or type(e).__name__
        else:
            error = ""
        now = self.wall()
        if uid in self.lost:
            # A renewal found the lease gone: the node that has it now records (and, if
            # it must, sends again); writing here would only be refused.
            raise LeaseLost(uid)
        if not error:
            await self.run.run(self.journal.transaction_reported, uid, now, generation)
            self.observer.observe(
                events.CommitmentReportSent(
                    transaction_uid=uid,
                    modality=request.modality,
                    calling_ae_title=request.calling_ae_title,
                    policy=request.policy,
                    event_type=report.event_type,
                    committed=len(report.committed),
                    failed=len(report.failed),
                    latency_seconds=max(0.0, now - transaction.requested_at),
                    attempts=attempt,
                )
            )
            self.log.info(
                "commitment report {uid} delivered to {modality} (event type {event_type}, {committed} committed, {failed} failed)",
                uid=uid,
                modality=request.modality,
                event_type=report.event_type,
                committed=len(report.committed),
                failed=len(report.failed),
            )
            return
        if now >= request.report_deadline:
            reason = f"report not delivered by its report deadline after {attempt} attempt(s): {error}"
            await self.run.run(self.journal.transaction_dead, uid, reason, now, generation)
            self.observer.observe(events.CommitmentReportFailed(uid, request.modality, error, attempt, 0.0, dead=True))
            self.log.error(
                "commitment report {uid} to {modality} is a dead letter: {reason}", uid=uid, modality=request.modality, reason=reason
            )
            return
        # The last attempt is at the report deadline, never after it.
        due = min(now + retry_delay(attempt, self._settings(transaction)), request.report_deadline)
        await self.run.run(self.journal.defer_transaction, uid, due, now, generation, error, True)
        self.observer.observe(events.CommitmentReportFailed(uid, request.modality, error, attempt, due - now))
        self.log.warn(
            "commitment report {uid} to {modality} failed (attempt {attempt}), again in {delay:.0f}s: {error}",
            uid=uid,
            modality=request.modality,
            attempt=attempt,
            delay=due - now,
            error=error,
        )

    def _settings(self, transaction: Transaction) -> CommitmentConfig:
        """The retry timings: the commitment settings of the transaction's listener now (else the top level, else the defaults)."""
        config = self.config()
        for listener in config.listen:
            if listener.name == transaction.request.listener:
                found = config.commitment_for(listener)
                if found is not None:
                    return found
        return config.commitment or CommitmentConfig()

    # -- leases ----------------------------------------------------------------------------

    def _renew(self) -> "Deferred[None] | None":
        """Extend the leases of the transactions being handled; note those lost."""
        if not self.held:
            return None
        generations = dict(self.held)
        d: Deferred[set[str]] = self.run.run(
            self.journal.renew_transactions, generations, self.wall(), self.lease_seconds
        )

        def renewed(lost: set[str]) -> None:
            for uid in lost:
                if uid in self.held:
                    self.lost.add(uid)
                    self.log.warn("commitment transaction {uid}: lease lost while its report was being sent", uid=uid)

        def failed(failure: Any) -> None:
            # Tried again at the next renewal; a lease that expires meanwhile may be taken over (fenced).
            self.log.warn("commitment lease renewal failed: {error}", error=failure.getErrorMessage())

        d.addCallbacks(renewed, failed)
        return d
