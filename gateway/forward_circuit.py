"""One destination's circuit as this node runs it and shares it with the other nodes (issue 14).

The worker (:class:`gateway.forward.DestinationWorker`) holds one
:class:`SharedCircuit`: it owns the destination's
:class:`~gateway.circuit.Circuit` (the state machine) and is its listener,
so what the circuit's transitions mean lives here: a log line and an event
for each, the record in the store where ``queue list`` and the other nodes
read it, and ``max_age`` applied while the destination is down. The
worker's slot loop feeds the circuit its faults and successes; the
membership's heartbeat (:mod:`gateway.membership`) calls
:meth:`SharedCircuit.follow_record`.

Theory of operation
-------------------
The circuit a node opens or closes is written to the store
(``set_circuit``); every heartbeat reads it back. Recorded open since later
than this node's last success while closed here: the circuit opens here
too (no local faults needed) and probes as usual. Recorded closed since
later than it opened here: it closes here and the slots wake. So one
node's probe result is every node's. A new worker starts from the
recorded state (a reload no longer writes "closed" over another node's
open circuit); its first probe comes after ``retry.initial_delay``.

While the circuit is open its entries make no attempts (HARDENING
decision 9); each failed probe dead-letters those older than ``max_age``
(F17), so a destination that never comes back does not keep their spool
files forever.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway import events
from gateway.blocking import IBlockingRunner
from gateway.circuit import Circuit
from gateway.config.schema import Destination
from gateway.forward_types import JournalRefused, run_journal, run_store
from gateway.queue.interfaces import IQueueStore
from gateway.queue.outcome import DeadLetterKind, DestinationDown

__all__ = ["SharedCircuit"]


class SharedCircuit:
    """One destination's circuit, its listener and its record in the store (see the module docstring).

    :param config: the destination (its name, ``circuit.failures``, ``retry.max_delay``, ``retry.max_age``).
    :param clock: schedules the probes.
    :param probe: one probe of the destination (the sender's).
    :param backoff: the delay before probe number ``attempt`` (the worker's).
    :param observer: receives the circuit's :mod:`gateway.events`.
    :param store: the queue journal.
    :param store_runner: runs every store call.
    :param wall: wall-clock time for the record.
    :param schedule_now: the time due times are written and compared in (the worker's).
    """

    log = Logger(namespace="gateway.forward")

    def __init__(
        self,
        config: Destination,
        clock: IReactorTime,
        probe: Callable[[], Awaitable[DestinationDown | None]],
        backoff: Callable[[int], float],
        observer: events.IGatewayObserver,
        store: IQueueStore,
        store_runner: IBlockingRunner,
        wall: Callable[[], float],
        schedule_now: Callable[[], float],
    ) -> None:
        self.circuit = Circuit(clock, config.circuit.failures, probe, backoff, config.retry.max_delay, self)
        self.name = config.name
        #: While the destination is down, entries queued longer than this are dead-lettered.
        self.max_age = config.retry.max_age
        self.observer = observer
        self.store = store
        self.store_runner = store_runner
        self.wall = wall
        self.schedule_now = schedule_now
        #: Wall-clock time of the last sign of life of the destination (a
        #: delivery, an association opened), and of the circuit's last opening
        #: here: compared with the ``since`` of the store's record.
        self._last_success: float | None = None
        self._opened_at: float | None = None

    def success(self) -> None:
        """The destination answered (a delivery, an association opened): tell the circuit, note when."""
        self._last_success = self.wall()
        self.circuit.success()

    def circuit_opened(self, fault: DestinationDown) -> None:
        """The circuit opened: log, tell the observer and the journal (where the other nodes read it)."""
        self.log.error(
            "destination {destination} is down, circuit open: {reason}", destination=self.name, reason=fault.reason
        )
        self.observer.observe(events.CircuitOpened(self.name, fault.reason, fault.permanent))
        self._opened_at = self.wall()
        self._note_circuit(True, fault.reason, self._opened_at)

    def circuit_adopted(self, circuit_open: bool, reason: str) -> None:
        """The circuit followed another node's record (issue 14): log and tell the observer.

        Nothing is written: the record is the other node's.
        """
        if circuit_open:
            self.log.warn(
                "destination {destination} is down as another node recorded, circuit open here too: {reason}",
                destination=self.name,
                reason=reason,
            )
        else:
            self.log.info("destination {destination} is up as another node's probe found, circuit closed here too", destination=self.name)
        self.observer.observe(events.CircuitAdopted(self.name, circuit_open, reason))

    def probe_failed(self, fault: DestinationDown) -> "Deferred[None]":
        """A probe failed: log, and apply ``max_age`` before the next one."""
        self.log.info("probe of {destination} failed: {reason}", destination=self.name, reason=fault.reason)
        return Deferred.fromCoroutine(self._expire_while_down())

    async def _expire_while_down(self) -> None:
        """Apply ``max_age`` to the entries of a destination that is down as a whole.

        Its entries make no attempts while the circuit is open (HARDENING
        decision 9), so :func:`~gateway.queue.policy.give_up` never sees them: without this, a
        destination that never comes back would keep their spool files forever
        (F17: "kept until all are done or dead-lettered").
        """
        max_age = self.max_age
        now = self.schedule_now()
        reason = f"gave up after {max_age:.0f}s in the queue (max_age) while the destination was down: {self.circuit.last_error}"
        try:
            expired = await run_journal(self.store_runner, self.store.expire, self.name, now - max_age, reason, now)
        except JournalRefused:
            return
        for entry in expired:
            self.observer.observe(events.DeadLettered(entry, DeadLetterKind.GAVE_UP, reason))
        if expired:
            self.log.warn(
                "dead-lettered {count} entries for {destination} older than max_age {max_age:.0f}s (destination down)",
                count=len(expired),
                destination=self.name,
                max_age=max_age,
            )

    def circuit_closed(self) -> None:
        """A probe succeeded: log, tell the observer and the journal (the circuit wakes the slots)."""
        self.log.info("destination {destination} is up, circuit closed", destination=self.name)
        self.observer.observe(events.CircuitClosed(self.name))
        self._note_circuit(False, "")

    def _note_circuit(self, circuit_open: bool, reason: str, at: float | None = None) -> None:
        """Write the circuit state to the journal, where ``queue list`` (another process) and the other nodes read it."""
        d = self.store_runner.run(self.store.set_circuit, self.name, circuit_open, reason, self.wall() if at is None else at)
        d.addErrback(lambda f: self.log.failure("recording the circuit of {destination} failed", f, destination=self.name))

    async def follow_record(self) -> None:
        """Adopt the circuit state another node recorded, when it is newer than what this node knows.

        Recorded open since after this node's last success, while closed
        here: open here too (and probe). Recorded closed since after this
        node's circuit opened, while open here: close here (the slots wake).
        """
        circuit_open, reason, since = await run_store(self.store_runner, self.store.circuit, self.name)
        if since is None:
            return
        if circuit_open and self.circuit.is_closed and (self._last_success is None or since > self._last_success):
            self._opened_at = since
            self.circuit.adopt_open(reason)
        elif not circuit_open and not self.circuit.is_closed and (self._opened_at is None or since > self._opened_at):
            self.circuit.adopt_closed()
