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

from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import Interface, implementer

__all__ = ["IBlockingRunner", "ThreadPoolRunner", "SynchronousRunner"]

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
