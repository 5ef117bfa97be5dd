"""The node's heartbeat: "I am alive" in the shared store, and whether the store answers (issue 14).

Every ``cluster.heartbeat`` seconds :class:`NodeHeartbeat` writes this node's
row in the store's node table (:meth:`~gateway.queue.interfaces.IQueueStore.heartbeat`:
when this process started, and what it says of itself: its addresses, its
version, whether it is draining), then asks for the housekeeping singleton
(:meth:`~gateway.queue.interfaces.IQueueStore.hold_singleton`), so the node
that holds it keeps it while it lives and another takes it within
``3 x heartbeat`` of its death (SQLite and memory; PostgreSQL's advisory lock
ends with the session).

The heartbeat is also the gateway's probe of its journal. A heartbeat that
fails, whatever the error (:class:`~gateway.queue.interfaces.StoreUnavailable`
from a PostgreSQL that is down or partitioned, a timeout, anything else),
marks the journal *unavailable* at once:

* ``/readyz`` answers 503 with ``queue store unreachable`` (the load
  balancer stops sending new connections here);
* new associations are rejected transient, service-provider (presentation),
  temporary congestion: A-ASSOCIATE-RJ (2,3,1) (PS3.8 Table 9-21), so the
  modality retries later or through another node;
* C-STOREs on associations already open are answered 0xA700 (out of
  resources, PS3.4 Table B.2-1) by the intake, whose journal transaction
  fails the same way: the instance is not acknowledged.

The next heartbeat that succeeds makes the journal available again: nothing
needs an operator. Heartbeats never overlap: one still waiting on a slow
store when the next is due is not doubled (the round is skipped).
"""

from __future__ import annotations

import json
from typing import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.blocking import IBlockingRunner
from gateway.queue.interfaces import IQueueStore, NodeStatus, StoreUnavailable

__all__ = ["NodeHeartbeat", "NodeNameInUse", "HOUSEKEEPING", "UNREACHABLE", "check_node_name_free", "node_detail"]

#: The singleton that elects the node running once-only housekeeping.
HOUSEKEEPING = "housekeeping"

#: The ``/readyz`` reason while the journal is unavailable.
UNREACHABLE = "queue store unreachable"


def node_detail(addresses: list[str], version: str, draining: bool, stopped: bool = False) -> str:
    """What a node says of itself in its heartbeat: compact JSON, for ``queue list`` and the API.

    :param addresses: its DICOM listeners (``host:port``).
    :param version: the gateway's version.
    :param draining: whether it is being drained.
    :param stopped: the last heartbeat of a clean stop (the name is free at once).
    :returns: the JSON text.
    """
    detail: dict[str, object] = {"address": addresses, "version": version, "draining": draining}
    if stopped:
        detail["stopped"] = True
    return json.dumps(detail, separators=(",", ":"))


def said_stopped(detail: str) -> bool:
    """Whether a heartbeat's detail is the last one of a clean stop.

    :param detail: the node's detail as stored.
    """
    try:
        parsed = json.loads(detail) if detail else {}
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("stopped") is True


class NodeNameInUse(Exception):
    """Another running process sends heartbeats under this node's name.

    Two processes with one name would take each other's leases for their
    own and, on a shared spool, delete each other's files at start-up (each
    removes "its own" unjournaled files). Each process needs its own ``node``.
    """


async def check_node_name_free(
    store: IQueueStore,
    store_runner: IBlockingRunner,
    clock: IReactorTime,
    wall: Callable[[], float],
    node: str,
    interval: float,
) -> None:
    """Refuse to start under a name another live process is using (before start-up recovery touches anything).

    The store's row for ``node`` tells: no row, a row older than two
    heartbeats, or the last row of a clean stop (:func:`node_detail` with
    ``stopped``) mean the name is free. A recent row may be this node's own
    previous process killed a moment ago (kill -9, then a restart by the
    service manager): wait one and a half heartbeats and look again; a row
    that moved meanwhile is another live process.

    :param store: the queue store (through ``store_runner``).
    :param store_runner: the store's threads.
    :param clock: for the wait.
    :param wall: wall-clock time.
    :param node: this node's name.
    :param interval: ``cluster.heartbeat`` seconds.
    :raises NodeNameInUse: another process beats under ``node``.
    """
    from twisted.internet.task import deferLater

    def row(now: float) -> NodeStatus | None:
        return next((status for status in store.nodes(now) if status.node == node), None)

    now = wall()
    first = await store_runner.run(row, now)
    if first is None or said_stopped(first.detail) or now - first.last_seen > 2 * interval:
        return
    await deferLater(clock, 1.5 * interval, lambda: None)
    second = await store_runner.run(row, wall())
    if second is not None and second.last_seen != first.last_seen and not said_stopped(second.detail):
        raise NodeNameInUse(
            f"another running process sends heartbeats as node {node!r} (started at {second.started_at:.0f}, "
            f"last heartbeat {max(0.0, wall() - second.last_seen):.1f} s ago); give each process its own 'node:'"
        )


class NodeHeartbeat:
    """Beats every ``interval`` seconds; tells whether the store answers and whether this node housekeeps.

    :param store: the queue store (through ``store_runner``).
    :param store_runner: the store's thread.
    :param clock: schedules the beats (the reactor; ``task.Clock`` in tests).
    :param wall: wall-clock time for the store.
    :param interval: ``cluster.heartbeat`` seconds.
    :param started_at: when this process started (wall clock).
    :param detail: what the node says of itself now (see :func:`node_detail`).
    :param on_change: told ``True``/``False`` when the journal becomes available/unavailable.
    """

    log = Logger(namespace="gateway.cluster")

    def __init__(
        self,
        *,
        store: IQueueStore,
        store_runner: IBlockingRunner,
        clock: IReactorTime,
        wall: Callable[[], float],
        interval: float,
        started_at: float,
        detail: Callable[[], str] = lambda: "",
        on_change: Callable[[bool], None] = lambda available: None,
    ) -> None:
        self._store = store
        self._runner = store_runner
        self._wall = wall
        self.interval = interval
        self.started_at = started_at
        self._detail = detail
        self._on_change = on_change
        self._loop = LoopingCall(self.beat)
        self._loop.clock = clock
        self._beating = False
        #: False from a failed heartbeat until the next one that succeeds.
        self.available = True
        #: Why the last heartbeat failed ("" while available); never shown with secrets (store errors carry none).
        self.error = ""
        #: Whether this node held the housekeeping singleton at its last heartbeat.
        self.housekeeper = False
        #: Wall-clock time of the last heartbeat the store recorded, or ``None``.
        self.last_beat: float | None = None
        #: Heartbeats that failed since the process started.
        self.failures = 0

    @property
    def singleton_seconds(self) -> float:
        """How long a SQLite/memory singleton hold lasts: three heartbeats (one late beat does not lose it)."""
        return 3 * self.interval

    def start(self) -> Deferred[None]:
        """Beat now, then every ``interval`` seconds.

        :returns: a Deferred firing after the first beat (whatever its outcome).
        """
        first = self.beat()
        if not self._loop.running:
            self._loop.start(self.interval, now=False)
        return first

    def stop(self) -> None:
        """Stop beating (the node row stays: its age tells the others this node is gone)."""
        if self._loop.running:
            self._loop.stop()

    def last_words(self, detail: str) -> Deferred[None]:
        """A last heartbeat at a clean stop, saying so (``detail`` from :func:`node_detail` with ``stopped``).

        A process that starts next under this name then need not wait to
        tell it from a live one (:func:`check_node_name_free`). Never fails.

        :param detail: the node's last detail.
        :returns: a Deferred firing once written (or not, the store being away).
        """
        self.stop()
        d = self._runner.run(self._store.heartbeat, self._wall(), self.started_at, detail)
        d.addErrback(lambda f: self.log.debug("last heartbeat not written: {error}", error=f.getErrorMessage()))
        return d

    def beat(self) -> Deferred[None]:
        """One heartbeat and singleton claim, on the store's thread; never fails.

        :returns: a Deferred firing when the outcome is recorded.
        """
        if self._beating:
            return succeed(None)
        self._beating = True
        now = self._wall()
        d = self._runner.run(self._beat_blocking, now, self._detail())
        d.addCallbacks(self._succeeded, self._failed, callbackArgs=(now,))
        d.addBoth(self._done)
        return d

    def _beat_blocking(self, now: float, detail: str) -> bool:
        """The store's half: the heartbeat, then the singleton (blocking, on the store's thread)."""
        self._store.heartbeat(now, self.started_at, detail)
        return bool(self._store.hold_singleton(HOUSEKEEPING, now, self.singleton_seconds))

    def _succeeded(self, housekeeper: bool, now: float) -> None:
        self.last_beat = now
        if housekeeper != self.housekeeper:
            self.log.info(
                "this node {what} the housekeeping (spool clean-up, retention, expiry)",
                what="now runs" if housekeeper else "no longer runs",
            )
        self.housekeeper = housekeeper
        if not self.available:
            self.available = True
            self.error = ""
            self.log.warn("queue store reachable again: accepting associations and instances")
            self._on_change(True)

    def _failed(self, failure: Failure) -> None:
        self.failures += 1
        self.housekeeper = False
        error = failure.value
        kind = "unreachable" if isinstance(error, StoreUnavailable) else "failing"
        self.error = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        if self.available:
            self.available = False
            self.log.error(
                "queue store {kind} ({error}): /readyz fails, new associations are rejected (2,3,1), "
                "new C-STOREs get 0xA700 until a heartbeat succeeds",
                kind=kind,
                error=self.error,
            )
            self._on_change(False)

    def _done(self, _: object) -> None:
        self._beating = False
