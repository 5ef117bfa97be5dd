"""Tests for :mod:`gateway.blocking`."""

from __future__ import annotations

from typing import Any, Callable

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gateway.blocking import IBlockingRunner, SynchronousRunner, ThreadPoolRunner


class _InlineThreadPool:
    """A thread pool double that runs work inline and records calls."""

    def __init__(self) -> None:
        self.calls: list[Callable[..., Any]] = []

    def callInThreadWithCallback(
        self,
        on_result: Callable[[bool, Any], None],
        f: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """Run ``f`` now and report as ThreadPool does (success flag, result)."""
        self.calls.append(f)
        try:
            result = f(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)


class _FakeReactor:
    """A reactor double for thread hand-off and start/stop triggers."""

    def __init__(self) -> None:
        self.when_running: list[Callable[[], Any]] = []
        self.triggers: list[tuple[str, str, Callable[[], Any]]] = []

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Deliver at once (the test has no real threads)."""
        f(*args, **kwargs)

    def callWhenRunning(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Record the start-up callable."""
        self.when_running.append(f)

    def addSystemEventTrigger(
        self, phase: str, event_type: str, f: Callable[..., Any], *args: Any
    ) -> None:
        """Record the trigger."""
        self.triggers.append((phase, event_type, f))


class SynchronousRunnerTests(SynchronousTestCase):
    """:class:`SynchronousRunner` runs the callable at once."""

    def test_provides_interface(self) -> None:
        """The runner provides IBlockingRunner."""
        self.assertTrue(verifyObject(IBlockingRunner, SynchronousRunner()))

    def test_result_is_already_available(self) -> None:
        """The Deferred has fired with the return value before run() returns."""
        d = SynchronousRunner().run(lambda a, b=0: a + b, 2, b=3)
        self.assertEqual(self.successResultOf(d), 5)

    def test_exception_becomes_failure(self) -> None:
        """An exception raised by the callable fails the Deferred instead of propagating."""

        def boom() -> None:
            raise OSError(5, "EIO")

        f = self.failureResultOf(SynchronousRunner().run(boom), OSError)
        self.assertEqual(f.value.errno, 5)


class ThreadPoolRunnerTests(SynchronousTestCase):
    """:class:`ThreadPoolRunner` hands work to its pool and results to the reactor."""

    def test_provides_interface(self) -> None:
        """The runner provides IBlockingRunner."""
        runner = ThreadPoolRunner(_FakeReactor(), _InlineThreadPool())  # type: ignore[arg-type]
        self.assertTrue(verifyObject(IBlockingRunner, runner))

    def test_runs_in_pool_and_delivers_result(self) -> None:
        """The callable goes through the pool and its result reaches the Deferred."""
        pool = _InlineThreadPool()
        runner = ThreadPoolRunner(_FakeReactor(), pool)  # type: ignore[arg-type]

        def work(x: int) -> int:
            return x * 2

        d = runner.run(work, 21)
        self.assertEqual(self.successResultOf(d), 42)
        self.assertEqual(pool.calls, [work])

    def test_failure_is_delivered(self) -> None:
        """An exception in the pool fails the Deferred."""
        runner = ThreadPoolRunner(_FakeReactor(), _InlineThreadPool())  # type: ignore[arg-type]

        def boom() -> None:
            raise ValueError("x")

        self.failureResultOf(runner.run(boom), ValueError)

    def test_dedicated_pool_is_tied_to_reactor_lifecycle(self) -> None:
        """The dedicated pool starts when the reactor runs and stops during shutdown."""
        reactor = _FakeReactor()
        runner = ThreadPoolRunner.dedicated(reactor, name="spool", minthreads=1, maxthreads=2)
        pool = runner.threadpool
        self.assertEqual((pool.min, pool.max, pool.name), (1, 2, "spool"))
        self.assertEqual(reactor.when_running, [pool.start])
        self.assertEqual(reactor.triggers, [("during", "shutdown", pool.stop)])
        self.assertFalse(pool.started)

    def test_dedicated_pool_really_runs_work(self) -> None:
        """A started dedicated pool runs a callable on another thread and stops cleanly."""
        import threading

        reactor = _FakeReactor()
        runner = ThreadPoolRunner.dedicated(reactor, name="t")
        for start in reactor.when_running:
            start()
        self.addCleanup(lambda: runner.threadpool.joined or runner.threadpool.stop())
        done = threading.Event()
        seen: list[str] = []

        def work() -> str:
            seen.append(threading.current_thread().name)
            done.set()
            return "ok"

        d = runner.run(work)
        self.assertTrue(done.wait(10))
        runner.threadpool.stop()
        self.assertEqual(self.successResultOf(d), "ok")
        self.assertNotEqual(seen, [threading.current_thread().name])


class ThreadLaneTests(SynchronousTestCase):
    """``ThreadLane``: work in order, one piece at a time, on a shared pool (issue 13)."""

    def test_work_waits_in_order_for_the_pool_and_runs_once(self) -> None:
        """Submitted work queues one drain on the pool; running it runs every piece in submission order."""
        from twisted.python.threadpool import ThreadPool

        from gateway.blocking import ThreadLane

        pool = ThreadPool()
        queued: list[Callable[[], None]] = []
        self.patch(pool, "callInThread", lambda f, *a: queued.append(lambda: f(*a)))
        lane = ThreadLane(pool)
        done: list[int] = []
        for n in range(3):
            lane.submit(done.append, n)
        self.assertEqual((done, len(queued)), ([], 1))
        queued.pop()()
        self.assertEqual(done, [0, 1, 2])
        lane.submit(done.append, 3)
        self.assertEqual(len(queued), 1, "an idle lane schedules a new drain")

    def test_a_stopping_pool_runs_the_work_on_the_caller(self) -> None:
        """Once the pool is stopped (reactor shutdown) work runs at once on the caller, so a seal waited for still happens."""
        from twisted.python.threadpool import ThreadPool

        from gateway.blocking import ThreadLane

        pool = ThreadPool(minthreads=0, maxthreads=1)
        pool.start()
        pool.stop()
        lane = ThreadLane(pool)
        done: list[int] = []
        lane.submit(done.append, 1)
        lane.submit(done.append, 2)
        self.assertEqual(done, [1, 2])
