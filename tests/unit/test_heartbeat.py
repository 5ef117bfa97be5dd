"""Tests for :mod:`gateway.heartbeat`: the node's heartbeat, the journal's availability and the housekeeping singleton.

Driven by :class:`~twisted.internet.task.Clock` and a synchronous store
runner over :class:`~gateway.queue.memory.MemoryQueueStore` (two store
objects on one set of tables are two nodes); :class:`FlakyStore` raises
:class:`~gateway.queue.interfaces.StoreUnavailable` while ``down`` is set, as
the PostgreSQL store does when the database is away.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.blocking import SynchronousRunner
from gateway.heartbeat import HOUSEKEEPING, NodeHeartbeat, node_detail
from gateway.queue.interfaces import StoreUnavailable
from gateway.queue.memory import MemoryQueueStore


class FlakyStore(MemoryQueueStore):
    """A memory store whose journal methods raise :class:`StoreUnavailable` while :attr:`down` is set."""

    def __init__(self, node: str = "gw-a", local_only: bool = False) -> None:
        super().__init__(node, local_only)
        #: While true, heartbeats, singletons and intake commits fail as against an unreachable database.
        self.down = False
        #: Raised instead of StoreUnavailable when set (any other error).
        self.error: Exception | None = None

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        if self.down:
            raise StoreUnavailable("connection to server at 10.0.0.5, port 5432 failed: timeout expired")

    def heartbeat(self, now: float, started_at: float, detail: str = "") -> None:
        """Fail while down; else record the heartbeat."""
        self._check()
        super().heartbeat(now, started_at, detail)

    def hold_singleton(self, name: str, now: float, seconds: float) -> bool:
        """Fail while down; else claim the singleton."""
        self._check()
        return super().hold_singleton(name, now, seconds)

    def add_instance(self, *args: Any, **kwargs: Any) -> Any:
        """Fail while down; else journal."""
        self._check()
        return super().add_instance(*args, **kwargs)

    def add_instances(self, *args: Any, **kwargs: Any) -> Any:
        """Fail while down; else journal the batch."""
        self._check()
        return super().add_instances(*args, **kwargs)

    def peer(self, node: str, local_only: bool = False) -> FlakyStore:  # type: ignore[override]
        """Another node's flaky store object on the same tables."""
        other = FlakyStore(node, local_only)
        other._t = self._t
        return other


class HeartbeatTests(SynchronousTestCase):
    """One node's heartbeat against a store that comes and goes."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.store = FlakyStore("gw-a")
        self.changes: list[bool] = []
        self.heartbeat = self.make(self.store)

    def make(self, store: FlakyStore, detail: str = "") -> NodeHeartbeat:
        """A heartbeat every 5 s of the test clock over ``store``."""
        heartbeat = NodeHeartbeat(
            store=store,
            store_runner=SynchronousRunner(),
            clock=self.clock,
            wall=self.clock.seconds,
            interval=5.0,
            started_at=self.clock.seconds() - 60,
            detail=lambda: detail,
            on_change=self.changes.append,
        )
        self.addCleanup(heartbeat.stop)
        return heartbeat

    def test_first_beat_at_start_then_every_interval(self) -> None:
        """Start records a heartbeat at once; the next one comes after one interval, with the node's detail."""
        heartbeat = self.make(self.store, detail=node_detail(["10.0.0.1:104"], "1.2", False))
        self.successResultOf(heartbeat.start())
        [status] = self.store.nodes(self.clock.seconds())
        self.assertEqual((status.node, status.last_seen, status.started_at), ("gw-a", 1_000_000, 1_000_000 - 60))
        self.assertEqual(json.loads(status.detail), {"address": ["10.0.0.1:104"], "version": "1.2", "draining": False})
        self.clock.advance(5)
        self.assertEqual(self.store.nodes(self.clock.seconds())[0].last_seen, 1_000_005)
        self.assertEqual(heartbeat.last_beat, 1_000_005)

    def test_failure_makes_the_journal_unavailable_and_success_recovers(self) -> None:
        """A beat raising StoreUnavailable marks the journal unavailable at once; the next good beat restores it by itself."""
        self.successResultOf(self.heartbeat.start())
        self.assertTrue(self.heartbeat.available)
        self.store.down = True
        self.clock.advance(5)
        self.assertFalse(self.heartbeat.available)
        self.assertIn("StoreUnavailable", self.heartbeat.error)
        self.assertFalse(self.heartbeat.housekeeper)
        self.clock.advance(5)
        self.assertEqual((self.heartbeat.available, self.heartbeat.failures), (False, 2))
        self.store.down = False
        self.clock.advance(5)
        self.assertTrue(self.heartbeat.available)
        self.assertEqual(self.heartbeat.error, "")
        self.assertEqual(self.changes, [False, True])

    def test_any_error_counts_as_unavailable(self) -> None:
        """Not only StoreUnavailable: any error of the store's heartbeat (a bug, a driver error) makes it unavailable."""
        self.store.error = RuntimeError("server closed the connection unexpectedly")
        self.successResultOf(self.heartbeat.start())
        self.assertFalse(self.heartbeat.available)
        self.assertIn("RuntimeError", self.heartbeat.error)

    def test_beats_do_not_overlap(self) -> None:
        """A beat still waiting for the store when the next is due is not doubled."""
        from twisted.internet.defer import Deferred

        pending: list[Deferred[Any]] = []

        class HeldRunner:
            def run(self, f: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
                d: Deferred[Any] = Deferred()
                pending.append(d)
                return d

        heartbeat = NodeHeartbeat(
            store=self.store, store_runner=HeldRunner(), clock=self.clock, wall=self.clock.seconds,  # type: ignore[arg-type]
            interval=5.0, started_at=0.0,
        )
        heartbeat.start()
        self.addCleanup(heartbeat.stop)
        self.clock.advance(5)
        self.clock.advance(5)
        self.assertEqual(len(pending), 1)
        pending[0].callback(True)
        self.clock.advance(5)
        self.assertEqual(len(pending), 2)


class HousekeepingSingletonTests(SynchronousTestCase):
    """Two nodes: one housekeeps at a time, and the other takes over within three heartbeats of its death."""

    def test_one_holder_and_failover(self) -> None:
        """Node a holds the singleton while it beats; b takes it once a has been silent for 3 x heartbeat."""
        clock = Clock()
        clock.advance(1000)
        a_store = FlakyStore("gw-a")
        b_store = a_store.peer("gw-b")

        def make(store: FlakyStore) -> NodeHeartbeat:
            heartbeat = NodeHeartbeat(
                store=store, store_runner=SynchronousRunner(), clock=clock, wall=clock.seconds, interval=5.0, started_at=1000.0
            )
            self.addCleanup(heartbeat.stop)
            return heartbeat

        a, b = make(a_store), make(b_store)
        a.start()
        b.start()
        for _ in range(4):
            self.assertEqual((a.housekeeper, b.housekeeper), (True, False))
            clock.advance(5)
        a.stop()  # node a dies at 1020 (kill -9: no release); its hold lasts until 1035
        clock.advance(10)
        self.assertFalse(b.housekeeper)  # a's hold is still live
        clock.advance(10)
        self.assertTrue(b.housekeeper)  # b's next beat after 1035 (3 heartbeats + 1)
        self.assertFalse(a_store.hold_singleton(HOUSEKEEPING, clock.seconds(), 15))

    def test_unavailable_node_gives_up_housekeeping(self) -> None:
        """A node whose store fails stops counting itself the housekeeper at once."""
        clock = Clock()
        store = FlakyStore("gw-a")
        heartbeat = NodeHeartbeat(store=store, store_runner=SynchronousRunner(), clock=clock, wall=clock.seconds, interval=1.0, started_at=0.0)
        self.addCleanup(heartbeat.stop)
        heartbeat.start()
        self.assertTrue(heartbeat.housekeeper)
        store.down = True
        clock.advance(1)
        self.assertFalse(heartbeat.housekeeper)


class NodeNameTests(SynchronousTestCase):
    """``check_node_name_free``: one live process per node name."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.store = FlakyStore("gw-a")

    def check(self) -> Any:
        """Start the check on the test clock; returns its Deferred."""
        from twisted.internet.defer import Deferred

        from gateway.heartbeat import check_node_name_free

        return Deferred.fromCoroutine(
            check_node_name_free(self.store, SynchronousRunner(), self.clock, self.clock.seconds, "gw-a", 5.0)
        )

    def test_free_without_a_row_an_old_row_or_a_clean_stop(self) -> None:
        """No row, a row older than two heartbeats, or a recent clean stop's row: free at once."""
        self.successResultOf(self.check())
        self.store.heartbeat(self.clock.seconds() - 11, 0.0, node_detail([], "1", False))
        self.successResultOf(self.check())
        self.store.heartbeat(self.clock.seconds() - 1, 0.0, node_detail([], "1", False, stopped=True))
        self.successResultOf(self.check())

    def test_recent_row_that_stays_still_was_a_killed_process(self) -> None:
        """A recent row (kill -9, then a restart) is waited on for 1.5 heartbeats; unchanged, the name is free."""
        self.store.heartbeat(self.clock.seconds() - 1, 0.0, node_detail([], "1", False))
        d = self.check()
        self.assertNoResult(d)
        self.clock.advance(7.5)
        self.successResultOf(d)

    def test_recent_row_that_moves_is_another_live_process(self) -> None:
        """Another process beating under the name during the wait: NodeNameInUse, naming the name."""
        from gateway.heartbeat import NodeNameInUse

        self.store.heartbeat(self.clock.seconds() - 1, 123.0, node_detail([], "1", False))
        d = self.check()
        self.clock.advance(5)
        self.store.heartbeat(self.clock.seconds(), 123.0, node_detail([], "1", False))
        self.clock.advance(2.5)
        failure = self.failureResultOf(d, NodeNameInUse)
        self.assertIn("'gw-a'", failure.getErrorMessage())

    def test_last_words_say_stopped(self) -> None:
        """A clean stop's last heartbeat says so, and stops the beats."""
        from gateway.heartbeat import said_stopped

        heartbeat = NodeHeartbeat(
            store=self.store, store_runner=SynchronousRunner(), clock=self.clock, wall=self.clock.seconds,
            interval=5.0, started_at=1.0,
        )
        heartbeat.start()
        self.successResultOf(heartbeat.last_words(node_detail([], "1", False, stopped=True)))
        [status] = self.store.nodes(self.clock.seconds())
        self.assertTrue(said_stopped(status.detail))
        self.clock.advance(10)
        self.assertEqual(self.store.nodes(self.clock.seconds())[0].last_seen, 1_000_000)
        self.assertFalse(said_stopped("not json"))

    def test_last_words_never_fail(self) -> None:
        """The store being away at stop is not an error."""
        heartbeat = NodeHeartbeat(
            store=self.store, store_runner=SynchronousRunner(), clock=self.clock, wall=self.clock.seconds,
            interval=5.0, started_at=1.0,
        )
        self.store.down = True
        self.successResultOf(heartbeat.last_words("{}"))
