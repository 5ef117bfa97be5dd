"""A destination's circuit breaker as an explicit state machine (HARDENING decision 9).

A destination-wide fault (connection refused, association rejected, the
folder missing: :class:`~gateway.queue.outcome.DestinationDown`) is counted;
after ``threshold`` of them in a row the circuit *opens*: no slot leases,
and a single probe (C-ECHO for a DICOM AE, a write test for a folder) runs at
backoff intervals, at the maximum interval straight away after a permanent
rejection. While the probe is in flight the circuit is *half-open*. The
first successful probe *closes* it and the slots resume; a failed one opens
it again and schedules the next. Probes are not attempts, and nothing is
dead-lettered for a destination-wide fault.

Several nodes share one circuit per destination (issue 14): the worker
writes each opening and closing to the queue store, and reads the store's
record at every heartbeat. What another node recorded is *adopted*
(:meth:`Circuit.adopt_open`, :meth:`Circuit.adopt_closed`): an open record
opens a closed circuit without local faults (and it probes as usual, so any
node's successful probe closes it), a closed record closes an open or
half-open one (a probe in flight is then ignored) and wakes the slots. An
adopted change is told to the listener's ``circuit_adopted``, not as an
opening or a closing of its own: the node that saw the faults (or the
probe) records and announces those.

The transitions are the literal table :data:`TRANSITIONS` (in the manner of
:data:`gateway.ul.machine.TRANSITIONS`): ``(state, event) -> (next state,
action)``. :class:`Circuit` classifies each input into an event (a fault is
:attr:`~CircuitEvent.TRIP` when it reaches the threshold, else
:attr:`~CircuitEvent.FAULT`), looks the pair up and runs the action. A pair
missing from the table is a bug (:class:`CircuitError`).

Delays are scheduled on an injected ``IReactorTime`` (``task.Clock`` in tests).
"""

from __future__ import annotations

from enum import Enum
from typing import Awaitable, Callable, Final, Mapping, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from gateway.queue.outcome import DestinationDown

__all__ = ["CircuitState", "CircuitEvent", "CircuitAction", "TRANSITIONS", "CircuitError", "CircuitListener", "Circuit"]


class CircuitState(Enum):
    """Where a destination's circuit stands."""

    CLOSED = "closed"  # the slots send; faults are counted
    OPEN = "open"  # nothing is sent; a timer brings the next probe
    HALF_OPEN = "half-open"  # one probe is in flight


class CircuitEvent(Enum):
    """What happens to a circuit."""

    SUCCESS = "success"  # an entry delivered, or an association opened
    FAULT = "fault"  # a destination-wide fault below the threshold
    TRIP = "trip"  # a destination-wide fault at or past the threshold
    PROBE_DUE = "probe_due"  # the probe's timer fired
    PROBE_OK = "probe_ok"  # the probe succeeded
    PROBE_FAILED = "probe_failed"  # the probe failed
    ADOPT_OPEN = "adopt_open"  # another node recorded the circuit open (issue 14)
    ADOPT_CLOSED = "adopt_closed"  # another node recorded the circuit closed (its probe succeeded)


class CircuitAction(Enum):
    """What a transition does (see :meth:`Circuit._run`)."""

    RESET = "reset"  # forget the faults counted so far
    COUNT = "count"  # nothing beyond the count kept by :meth:`Circuit.fault`
    OPEN = "open"  # tell the listener, schedule the first probe
    PROBE = "probe"  # run one probe
    CLOSE = "close"  # forget the faults, tell the listener, wake the waiting slots
    REOPEN = "reopen"  # keep the probe's error, tell the listener, schedule the next probe
    ADOPT = "adopt"  # open as another node did: keep its reason, tell the listener, schedule the first probe
    FOLLOW = "follow"  # close as another node did: forget faults and probe, tell the listener, wake the slots
    IGNORE = "ignore"  # nothing to do (the circuit already is what the other node says)


_S, _E, _A = CircuitState, CircuitEvent, CircuitAction

#: ``(state, event) -> (next state, action)``: every transition of the circuit.
TRANSITIONS: Final[Mapping[tuple[CircuitState, CircuitEvent], tuple[CircuitState, CircuitAction]]] = {
    # Closed: the slots send.
    (_S.CLOSED, _E.SUCCESS): (_S.CLOSED, _A.RESET),
    (_S.CLOSED, _E.FAULT): (_S.CLOSED, _A.COUNT),
    (_S.CLOSED, _E.TRIP): (_S.OPEN, _A.OPEN),
    # Open: nothing new is sent (a send in flight when it opened may still end either way).
    (_S.OPEN, _E.SUCCESS): (_S.OPEN, _A.RESET),
    (_S.OPEN, _E.FAULT): (_S.OPEN, _A.COUNT),
    (_S.OPEN, _E.TRIP): (_S.OPEN, _A.COUNT),
    (_S.OPEN, _E.PROBE_DUE): (_S.HALF_OPEN, _A.PROBE),
    # Half-open: the probe decides.
    (_S.HALF_OPEN, _E.SUCCESS): (_S.HALF_OPEN, _A.RESET),
    (_S.HALF_OPEN, _E.FAULT): (_S.HALF_OPEN, _A.COUNT),
    (_S.HALF_OPEN, _E.TRIP): (_S.HALF_OPEN, _A.COUNT),
    (_S.HALF_OPEN, _E.PROBE_OK): (_S.CLOSED, _A.CLOSE),
    (_S.HALF_OPEN, _E.PROBE_FAILED): (_S.OPEN, _A.REOPEN),
    # Another node's record (read from the queue store at each heartbeat).
    (_S.CLOSED, _E.ADOPT_OPEN): (_S.OPEN, _A.ADOPT),
    (_S.OPEN, _E.ADOPT_OPEN): (_S.OPEN, _A.IGNORE),
    (_S.HALF_OPEN, _E.ADOPT_OPEN): (_S.HALF_OPEN, _A.IGNORE),
    (_S.CLOSED, _E.ADOPT_CLOSED): (_S.CLOSED, _A.IGNORE),
    (_S.OPEN, _E.ADOPT_CLOSED): (_S.CLOSED, _A.FOLLOW),
    (_S.HALF_OPEN, _E.ADOPT_CLOSED): (_S.CLOSED, _A.FOLLOW),
}


class CircuitError(Exception):
    """An event the table has no transition for in the current state (a bug)."""


class CircuitListener(Protocol):
    """What the circuit tells its owner (the worker: logs, observer, journal)."""

    def circuit_opened(self, fault: DestinationDown) -> None:
        """The circuit opened on ``fault``."""

    def circuit_closed(self) -> None:
        """A probe succeeded: the circuit closed."""

    def probe_failed(self, fault: DestinationDown) -> "Deferred[None] | None":
        """A probe failed; the next one is scheduled when the returned Deferred (if any) fires."""

    def circuit_adopted(self, circuit_open: bool, reason: str) -> None:
        """The circuit followed another node's record: opened (with that node's ``reason``) or closed."""


class Circuit:
    """One destination's circuit breaker.

    :param clock: schedules the probes.
    :param threshold: destination-wide faults in a row that open the circuit.
    :param probe: one probe: ``None`` on success, the fault otherwise.
    :param backoff: the delay before probe number ``attempt`` (0 first).
    :param max_delay: the delay before every probe after a permanent rejection.
    :param listener: told of openings, closings and failed probes.
    """

    log = Logger(namespace="gateway.circuit")

    def __init__(
        self,
        clock: IReactorTime,
        threshold: int,
        probe: Callable[[], Awaitable[DestinationDown | None]],
        backoff: Callable[[int], float],
        max_delay: float,
        listener: CircuitListener,
    ) -> None:
        self.clock = clock
        self.threshold = threshold
        self._probe = probe
        self._backoff = backoff
        self.max_delay = max_delay
        self.listener = listener
        self.state = CircuitState.CLOSED
        #: Destination-wide faults since the last success.
        self.failures = 0
        #: The latest fault's text, empty if none.
        self.last_error = ""
        #: The latest fault was a permanent rejection.
        self.permanent = False
        #: Failed probes since the circuit opened.
        self.probes_failed = 0
        self._timer: IDelayedCall | None = None
        self._waiting: list[Deferred[None]] = []
        self._stopped = False
        #: Moves on at each :meth:`stop`, so a probe abandoned by a stop is never heard.
        self._generation = 0

    @property
    def is_closed(self) -> bool:
        """Whether the slots may send."""
        return self.state is CircuitState.CLOSED

    # -- inputs --------------------------------------------------------------------------

    def success(self) -> None:
        """An entry was delivered or an association opened: the destination answers."""
        self._handle(CircuitEvent.SUCCESS, None)

    def fault(self, fault: DestinationDown) -> bool:
        """Count a destination-wide fault.

        :param fault: the fault.
        :returns: whether the count reached the threshold (the circuit is
            then open); below it the caller backs off before trying again.
        """
        self.failures += 1
        self.last_error = fault.reason
        self.permanent = fault.permanent
        tripped = self.failures >= self.threshold
        self._handle(CircuitEvent.TRIP if tripped else CircuitEvent.FAULT, fault)
        return tripped

    def adopt_open(self, reason: str) -> None:
        """Another node recorded the circuit open: a closed circuit opens and probes as usual.

        No local fault is needed, and none is counted: the faults were the
        other node's. An open or half-open circuit is left as it is.

        :param reason: the other node's fault, kept as :attr:`last_error`.
        """
        self._handle(CircuitEvent.ADOPT_OPEN, DestinationDown(reason))

    def adopt_closed(self) -> None:
        """Another node recorded the circuit closed (its probe succeeded): close and wake the slots.

        A probe of ours in flight is abandoned (its result is not heard). A
        closed circuit is left as it is.
        """
        self._handle(CircuitEvent.ADOPT_CLOSED, None)

    def when_closed(self) -> "Deferred[None]":
        """A Deferred that fires when the circuit closes (or at once if it is, or on :meth:`stop`)."""
        d: Deferred[None] = Deferred()
        if self.is_closed or self._stopped:
            d.callback(None)
        else:
            self._waiting.append(d)
        return d

    def stop(self) -> None:
        """No more probes; wake whoever waits for the circuit.

        A probe in flight is abandoned (its result is ignored): a half-open
        circuit is open again, and probes from :meth:`start` on.
        """
        self._stopped = True
        self._generation += 1
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.state is CircuitState.HALF_OPEN:
            self.state = CircuitState.OPEN
        self._wake()

    def start(self) -> None:
        """Allow probes again after :meth:`stop` (a restarted service); an open circuit gets its next probe."""
        self._stopped = False
        if self.state is CircuitState.OPEN and self._timer is None:
            self._schedule()

    # -- the machine ---------------------------------------------------------------------

    def _handle(self, event: CircuitEvent, fault: DestinationDown | None) -> None:
        try:
            next_state, action = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise CircuitError(f"no transition for {event.name} in {self.state.name}") from None
        self.state = next_state
        self._run(action, fault)

    def _run(self, action: CircuitAction, fault: DestinationDown | None) -> None:
        if action is CircuitAction.RESET:
            self.failures = 0
            self.permanent = False
        elif action is CircuitAction.COUNT:
            pass
        elif action is CircuitAction.OPEN:
            assert fault is not None
            self.probes_failed = 0
            self.listener.circuit_opened(fault)
            self._schedule()
        elif action is CircuitAction.PROBE:
            Deferred.fromCoroutine(self._run_probe()).addErrback(lambda f: self.log.failure("circuit probe", f))
        elif action is CircuitAction.CLOSE:
            self.failures = 0
            self.permanent = False
            self.listener.circuit_closed()
            self._wake()
        elif action is CircuitAction.ADOPT:
            assert fault is not None
            self.probes_failed = 0
            self.last_error = fault.reason
            self.permanent = False
            self.listener.circuit_adopted(True, fault.reason)
            if self._timer is None:
                self._schedule()
        elif action is CircuitAction.FOLLOW:
            # A probe in flight belongs to the open circuit we leave: never heard.
            self._generation += 1
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            self.failures = 0
            self.permanent = False
            self.listener.circuit_adopted(False, "")
            self._wake()
        elif action is CircuitAction.IGNORE:
            pass
        else:  # REOPEN
            assert fault is not None
            self.last_error = fault.reason
            self.permanent = fault.permanent
            self.probes_failed += 1
            after = self.listener.probe_failed(fault)
            if after is None:
                self._schedule()
            else:
                after.addErrback(lambda f: self.log.failure("after a failed probe", f))
                after.addCallback(lambda _: self._schedule())

    def _schedule(self) -> None:
        """Schedule the next probe: the maximum interval after a permanent rejection, else backoff."""
        if self._stopped or self.state is not CircuitState.OPEN or (self._timer is not None and self._timer.active()):
            # (A failed probe's follow-up may come after another node's record closed the circuit.)
            return
        delay = self.max_delay if self.permanent else self._backoff(self.probes_failed)
        self._timer = self.clock.callLater(max(0.0, delay), self._probe_due)

    def _probe_due(self) -> None:
        self._timer = None
        if not self._stopped:
            self._handle(CircuitEvent.PROBE_DUE, None)

    async def _run_probe(self) -> None:
        generation = self._generation
        try:
            result = await self._probe()
        except Exception as e:  # a probe that fails in an unexpected way is a failed probe, never a stuck circuit
            result = DestinationDown(f"{type(e).__name__}: {e}")
        if self._stopped or generation != self._generation:
            return
        if result is None:
            self._handle(CircuitEvent.PROBE_OK, None)
        else:
            self._handle(CircuitEvent.PROBE_FAILED, result)

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)
