"""Run blocking work (fsync, file walks, SQLite commits) off the reactor thread.

Everything in the gateway that may block on a disk goes through an
:class:`IBlockingRunner` handed to it in its constructor (DESIGN.md 1.2, 4).
In production that is a :class:`ThreadPoolRunner` on a small dedicated
:class:`~twisted.python.threadpool.ThreadPool`; in tests it is a
:class:`SynchronousRunner`, which runs the function at once so the same code
path is deterministic (Buildbot's ``NonThreadPool`` idea).

No reactor is imported here: the reactor is always passed in.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, Protocol, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import Interface, implementer

__all__ = ["IBlockingRunner", "ThreadPoolRunner", "SynchronousRunner", "Lane", "ThreadLane", "SynchronousLane"]

_T = TypeVar("_T")


class IBlockingRunner(Interface):
    """Something that runs a blocking callable and reports its result as a Deferred."""

    def run(f: Callable[..., Any], *args: Any, **kwargs: Any) -> "Deferred[Any]":
        """
        Run ``f(*args, **kwargs)`` where blocking is harmless.

        :param f: the callable to run.
        :param args: positional arguments for ``f``.
        :param kwargs: keyword arguments for ``f``.
        :returns: a Deferred that fires, on the reactor thread, with the
            return value of ``f`` or fails with its exception.
        """


@implementer(IBlockingRunner)
class ThreadPoolRunner:
    """Run callables in a thread pool with :func:`~twisted.internet.threads.deferToThreadPool`.

    :param reactor: the reactor the results are delivered on.
    :param threadpool: a started (or to-be-started) thread pool.
    """

    def __init__(self, reactor: IReactorFromThreads, threadpool: ThreadPool) -> None:
        self._reactor = reactor
        self.threadpool = threadpool

    @classmethod
    def dedicated(
        cls,
        reactor: Any,
        *,
        name: str,
        minthreads: int = 1,
        maxthreads: int = 1,
    ) -> "ThreadPoolRunner":
        """
        Create a runner over its own thread pool, started and stopped with the reactor.

        The pool is started through ``callWhenRunning`` and stopped by a
        ``("during", "shutdown")`` trigger, the way the reactor's own pool
        is managed, so no thread outlives the reactor.

        :param reactor: a reactor providing :class:`IReactorCore` and
            :class:`IReactorFromThreads`.
        :param name: the pool's name (it appears in thread names).
        :param minthreads: the minimum number of threads.
        :param maxthreads: the maximum number of threads (1 serialises the work).
        :returns: a new :class:`ThreadPoolRunner`.
        """
        pool = ThreadPool(minthreads=minthreads, maxthreads=maxthreads, name=name)
        core: IReactorCore = reactor
        core.callWhenRunning(pool.start)
        core.addSystemEventTrigger("during", "shutdown", pool.stop)
        return cls(reactor, pool)

    def run(self, f: Callable[..., _T], *args: Any, **kwargs: Any) -> "Deferred[_T]":
        """
        Run ``f`` in the pool.

        :param f: the callable.
        :param args: its positional arguments.
        :param kwargs: its keyword arguments.
        :returns: a Deferred with the result of ``f``.
        """
        return deferToThreadPool(self._reactor, self.threadpool, f, *args, **kwargs)


@implementer(IBlockingRunner)
class SynchronousRunner:
    """Run callables at once, on the caller's thread (for tests).

    The returned Deferred has already fired, so tests can use
    ``successResultOf`` / ``failureResultOf`` without a reactor.
    """

    def run(self, f: Callable[..., _T], *args: Any, **kwargs: Any) -> "Deferred[_T]":
        """
        Call ``f`` now.

        :param f: the callable.
        :param args: its positional arguments.
        :param kwargs: its keyword arguments.
        :returns: a fired Deferred: ``succeed(result)`` or ``fail()`` with
            the exception ``f`` raised.
        """
        try:
            result = f(*args, **kwargs)
        except BaseException:
            return fail()
        return succeed(result)


class Lane(Protocol):
    """Work run in order, one piece at a time, without the caller waiting (a serial queue).

    The spool gives each instance being received its own lane: its fragments
    are written, hashed and handed to the disk in arrival order, off the
    reactor thread, and the reactor never waits for them (issue 13). The
    caller learns the outcome through state the work itself leaves (an
    event, a recorded error), not through a Deferred per piece: calling the
    reactor back for each fragment would cost the hand-offs the lane saves.
    """

    def submit(self, f: Callable[..., Any], *args: Any) -> None:
        """
        Run ``f(*args)`` after everything submitted before it.

        :param f: the work; it handles its own errors (one that escapes is
            logged and the lane goes on).
        :param args: its arguments.
        """


class ThreadLane:
    """A :class:`Lane` on a shared thread pool: at most one of its pieces runs at a time.

    :param threadpool: the pool (several lanes share it; each lane occupies
        at most one thread while it has work).
    """

    def __init__(self, threadpool: ThreadPool) -> None:
        self._pool = threadpool
        self._lock = threading.Lock()
        self._work: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._scheduled = False

    def submit(self, f: Callable[..., Any], *args: Any) -> None:
        """Queue ``f(*args)``; start draining on a pool thread if no thread is on it."""
        with self._lock:
            self._work.append((f, args))
            if self._scheduled:
                return
            self._scheduled = True
        if getattr(self._pool, "joined", False):
            # The pool is stopping (the reactor shuts down) and would drop new
            # work: run it here, in order, so a seal the journal's thread waits
            # for still happens and shutdown cannot hang on it.
            self._drain()
            return
        self._pool.callInThread(self._drain)

    def _drain(self) -> None:
        """Run the queued work in order until none is left (on a pool thread)."""
        while True:
            with self._lock:
                if not self._work:
                    self._scheduled = False
                    return
                f, args = self._work.popleft()
            try:
                f(*args)
            except BaseException:
                from twisted.logger import Logger

                Logger(namespace="gateway.blocking").failure("lane work failed")


class SynchronousLane:
    """A :class:`Lane` that runs each piece at once on the caller's thread (tests, and no pool)."""

    def submit(self, f: Callable[..., Any], *args: Any) -> None:
        """Run ``f(*args)`` now."""
        f(*args)
