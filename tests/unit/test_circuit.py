"""Tests for :mod:`gateway.circuit`: the circuit breaker's table and its timing, on a ``task.Clock``."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.circuit import TRANSITIONS, Circuit, CircuitAction, CircuitError, CircuitEvent, CircuitState
from gateway.queue.outcome import DestinationDown

DOWN = DestinationDown("ConnectionRefusedError: refused")
REJECTED = DestinationDown("rejected (1, 1, 7)", permanent=True)


class Listener:
    """Records what the circuit tells its owner; failed probes may be held with a Deferred."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.hold: Deferred[None] | None = None

    def circuit_opened(self, fault: DestinationDown) -> None:
        self.events.append(("opened", fault.reason))

    def circuit_closed(self) -> None:
        self.events.append(("closed", ""))

    def probe_failed(self, fault: DestinationDown) -> Deferred[None] | None:
        self.events.append(("probe_failed", fault.reason))
        return self.hold

    def circuit_adopted(self, circuit_open: bool, reason: str) -> None:
        self.events.append(("adopted open" if circuit_open else "adopted closed", reason))


class TableTests(SynchronousTestCase):
    """The literal table."""

    def test_every_state_takes_successes_and_faults(self) -> None:
        """A success, a fault or another node's record can arrive in any state: all are in the table."""
        for state in CircuitState:
            for event in (CircuitEvent.SUCCESS, CircuitEvent.FAULT, CircuitEvent.TRIP, CircuitEvent.ADOPT_OPEN, CircuitEvent.ADOPT_CLOSED):
                self.assertIn((state, event), TRANSITIONS)

    def test_only_a_trip_or_another_node_opens_and_only_a_probe_closes(self) -> None:
        """CLOSED -> OPEN only on TRIP or ADOPT_OPEN; -> CLOSED only on PROBE_OK (from HALF_OPEN) or ADOPT_CLOSED; probes only from OPEN."""
        opening = {k for k, (to, _) in TRANSITIONS.items() if k[0] is CircuitState.CLOSED and to is not CircuitState.CLOSED}
        self.assertEqual(opening, {(CircuitState.CLOSED, CircuitEvent.TRIP), (CircuitState.CLOSED, CircuitEvent.ADOPT_OPEN)})
        closing = {k for k, (to, _) in TRANSITIONS.items() if k[0] is not CircuitState.CLOSED and to is CircuitState.CLOSED}
        self.assertEqual(
            closing,
            {
                (CircuitState.HALF_OPEN, CircuitEvent.PROBE_OK),
                (CircuitState.OPEN, CircuitEvent.ADOPT_CLOSED),
                (CircuitState.HALF_OPEN, CircuitEvent.ADOPT_CLOSED),
            },
        )
        probing = {k for k, (_, action) in TRANSITIONS.items() if action is CircuitAction.PROBE}
        self.assertEqual(probing, {(CircuitState.OPEN, CircuitEvent.PROBE_DUE)})

    def test_an_event_outside_the_table_is_an_error(self) -> None:
        """A probe result while closed has no transition: CircuitError, the state unchanged."""
        circuit = Circuit(Clock(), 3, lambda: Deferred(), lambda n: 1.0, 60.0, Listener())
        self.assertRaises(CircuitError, circuit._handle, CircuitEvent.PROBE_OK, None)
        self.assertIs(circuit.state, CircuitState.CLOSED)


class CircuitTests(SynchronousTestCase):
    """A circuit with threshold 3, backoff 2 ** n seconds, max delay 60."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.listener = Listener()
        self.probes: list[Deferred[DestinationDown | None]] = []
        self.circuit = Circuit(self.clock, 3, self.probe, lambda n: float(2**n), 60.0, self.listener)

    def probe(self) -> Deferred[DestinationDown | None]:
        d: Deferred[DestinationDown | None] = Deferred()
        self.probes.append(d)
        return d

    def trip(self, fault: DestinationDown = DOWN) -> None:
        for _ in range(3):
            self.circuit.fault(fault)

    def test_faults_below_the_threshold_keep_it_closed(self) -> None:
        """Two faults: closed, counted, the caller told to back off; no probe."""
        self.assertFalse(self.circuit.fault(DOWN))
        self.assertFalse(self.circuit.fault(DOWN))
        self.assertIs(self.circuit.state, CircuitState.CLOSED)
        self.assertEqual((self.circuit.failures, self.circuit.last_error), (2, DOWN.reason))
        self.clock.advance(1000)
        self.assertEqual(self.probes, [])

    def test_a_success_resets_the_count(self) -> None:
        """fault, fault, success, fault, fault: never three in a row, still closed."""
        self.circuit.fault(DOWN)
        self.circuit.fault(DOWN)
        self.circuit.success()
        self.circuit.fault(DOWN)
        self.assertFalse(self.circuit.fault(DOWN))
        self.assertIs(self.circuit.state, CircuitState.CLOSED)

    def test_the_threshold_opens_once_and_probes_after_the_first_backoff(self) -> None:
        """The third fault opens (told once, later faults only counted); the probe runs 1 s later, half-open."""
        self.trip()
        self.assertTrue(self.circuit.fault(DOWN))
        self.assertIs(self.circuit.state, CircuitState.OPEN)
        self.assertEqual(self.listener.events, [("opened", DOWN.reason)])
        self.clock.advance(0.99)
        self.assertEqual(self.probes, [])
        self.clock.advance(0.01)
        self.assertEqual(len(self.probes), 1)
        self.assertIs(self.circuit.state, CircuitState.HALF_OPEN)

    def test_a_successful_probe_closes_and_wakes_the_waiting(self) -> None:
        """Probe OK: closed, the count forgotten, the listener told, when_closed fired."""
        self.trip()
        waiting = self.circuit.when_closed()
        self.assertNoResult(waiting)
        self.clock.advance(1)
        self.probes[0].callback(None)
        self.assertIs(self.circuit.state, CircuitState.CLOSED)
        self.assertEqual(self.circuit.failures, 0)
        self.assertEqual(self.listener.events[-1], ("closed", ""))
        self.successResultOf(waiting)

    def test_failed_probes_back_off(self) -> None:
        """Failed probes reopen and come again at 2 s, then 4 s; the listener hears each."""
        self.trip()
        self.clock.advance(1)
        self.probes[0].callback(DestinationDown("still refused"))
        self.assertIs(self.circuit.state, CircuitState.OPEN)
        self.assertEqual(self.circuit.last_error, "still refused")
        self.clock.advance(1.99)
        self.assertEqual(len(self.probes), 1)
        self.clock.advance(0.01)
        self.assertEqual(len(self.probes), 2)
        self.probes[1].callback(DestinationDown("still refused"))
        self.clock.advance(3.99)
        self.assertEqual(len(self.probes), 2)
        self.clock.advance(0.01)
        self.assertEqual(len(self.probes), 3)
        self.assertEqual([e for e in self.listener.events if e[0] == "probe_failed"], [("probe_failed", "still refused")] * 2)

    def test_a_permanent_rejection_probes_at_the_maximum_interval(self) -> None:
        """Opened by a permanent rejection: the first probe waits max_delay (60 s), not 1 s."""
        self.trip(REJECTED)
        self.clock.advance(59)
        self.assertEqual(self.probes, [])
        self.clock.advance(1)
        self.assertEqual(len(self.probes), 1)

    def test_the_next_probe_waits_for_the_listener(self) -> None:
        """A failed probe's follow-up work (expiry) finishes before the next probe is scheduled."""
        self.listener.hold = Deferred()
        self.trip()
        self.clock.advance(1)
        self.probes[0].callback(DOWN)
        self.clock.advance(100)
        self.assertEqual(len(self.probes), 1)
        self.listener.hold.callback(None)
        self.clock.advance(2)
        self.assertEqual(len(self.probes), 2)

    def test_a_probe_that_raises_is_a_failed_probe(self) -> None:
        """An exception from the probe reopens the circuit with its text, never leaves it half-open."""
        self.trip()
        self.clock.advance(1)
        self.probes[0].errback(RuntimeError("bug"))
        self.assertIs(self.circuit.state, CircuitState.OPEN)
        self.assertEqual(self.circuit.last_error, "RuntimeError: bug")

    def test_stop_cancels_the_probe_and_wakes_the_waiting(self) -> None:
        """Stopped while open: no probe ever runs, waiters fire, a probe in flight is not heard."""
        self.trip()
        waiting = self.circuit.when_closed()
        self.circuit.stop()
        self.successResultOf(waiting)
        self.clock.advance(1000)
        self.assertEqual(self.probes, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_probe_abandoned_by_a_stop_is_ignored(self) -> None:
        """A probe in flight at stop: its success, arriving after a restart, neither closes nor raises."""
        self.trip()
        self.clock.advance(1)
        self.circuit.stop()
        self.assertIs(self.circuit.state, CircuitState.OPEN)
        self.circuit.start()
        self.probes[0].callback(None)
        self.assertIs(self.circuit.state, CircuitState.OPEN)
        self.clock.advance(1)
        self.assertEqual(len(self.probes), 2)


class AdoptedCircuitTests(SynchronousTestCase):
    """Issue 14: the circuit follows what another node recorded in the queue store (same circuit as CircuitTests)."""

    setUp = CircuitTests.setUp
    probe = CircuitTests.probe
    trip = CircuitTests.trip

    def test_adopting_an_open_record_opens_without_faults_and_probes(self) -> None:
        """adopt_open on a closed circuit: open with the other node's reason, no fault counted, the probe 1 s later."""
        self.circuit.adopt_open("ConnectionRefusedError: seen by node b")
        self.assertIs(self.circuit.state, CircuitState.OPEN)
        self.assertEqual(self.circuit.failures, 0)
        self.assertEqual(self.circuit.last_error, "ConnectionRefusedError: seen by node b")
        self.assertEqual(self.listener.events, [("adopted open", "ConnectionRefusedError: seen by node b")])
        self.assertNoResult(self.circuit.when_closed())
        self.clock.advance(1)
        self.assertEqual(len(self.probes), 1)
        self.probes[0].callback(None)
        self.assertIs(self.circuit.state, CircuitState.CLOSED)
        self.assertEqual(self.listener.events[-1], ("closed", ""))

    def test_adopting_an_open_record_while_open_changes_nothing(self) -> None:
        """Already open (our own faults): adopt_open neither tells the listener nor schedules a second probe."""
        self.trip()
        self.circuit.adopt_open("other")
        self.assertEqual(self.listener.events, [("opened", DOWN.reason)])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_adopting_a_closed_record_closes_and_wakes(self) -> None:
        """Open and waiting for its probe: adopt_closed closes, cancels the probe's timer and wakes the slots."""
        self.trip()
        waiting = self.circuit.when_closed()
        self.circuit.adopt_closed()
        self.assertIs(self.circuit.state, CircuitState.CLOSED)
        self.successResultOf(waiting)
        self.assertEqual(self.listener.events[-1], ("adopted closed", ""))
        self.clock.advance(1000)
        self.assertEqual(self.probes, [])

    def test_a_probe_in_flight_when_another_node_closes_is_ignored(self) -> None:
        """Half-open when adopt_closed arrives: the probe's later failure neither reopens nor raises."""
        self.trip()
        self.clock.advance(1)
        self.assertIs(self.circuit.state, CircuitState.HALF_OPEN)
        self.circuit.adopt_closed()
        self.probes[0].callback(DestinationDown("late"))
        self.assertIs(self.circuit.state, CircuitState.CLOSED)
        self.assertNotIn(("probe_failed", "late"), self.listener.events)

    def test_a_failed_probes_follow_up_after_another_node_closed_schedules_nothing(self) -> None:
        """A failed probe's held follow-up (expiry) ends after adopt_closed: no probe is scheduled on a closed circuit."""
        self.listener.hold = Deferred()
        self.trip()
        self.clock.advance(1)
        self.probes[0].callback(DOWN)
        self.circuit.adopt_closed()
        self.listener.hold.callback(None)
        self.clock.advance(1000)
        self.assertEqual(len(self.probes), 1)
        self.assertIs(self.circuit.state, CircuitState.CLOSED)

    def test_adopting_a_closed_record_while_closed_changes_nothing(self) -> None:
        """Closed with faults counted: adopt_closed keeps the count and tells nobody."""
        self.circuit.fault(DOWN)
        self.circuit.adopt_closed()
        self.assertEqual(self.circuit.failures, 1)
        self.assertEqual(self.listener.events, [])
