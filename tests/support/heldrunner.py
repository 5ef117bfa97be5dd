"""A controllable :class:`~gateway.blocking.IBlockingRunner` for tests: work starts only when the test says so.

Each :meth:`HeldRunner.run` is recorded and answered with a Deferred that
stays pending until :meth:`HeldRunner.finish` runs the function (on the
test's thread) and fires it, so a test sees exactly how many jobs a caller
has in flight at once, with no thread and no sleep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.defer import Deferred
from zope.interface import implementer

from gateway.blocking import IBlockingRunner


@dataclass
class HeldJob:
    """One job handed to the runner.

    :ivar function: what to run.
    :ivar args: its arguments.
    :ivar result: the Deferred the caller holds.
    """

    function: Callable[..., Any]
    args: tuple[Any, ...]
    result: "Deferred[Any]" = field(default_factory=Deferred)


@implementer(IBlockingRunner)
class HeldRunner:
    """Records jobs; runs one when :meth:`finish` is called."""

    def __init__(self) -> None:
        #: Jobs started and not finished, in order.
        self.pending: list[HeldJob] = []
        #: Every job ever handed over, in order.
        self.started: list[HeldJob] = []

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> "Deferred[Any]":
        """Hold ``f(*args)`` until :meth:`finish`.

        :param f: the callable.
        :param args: its arguments.
        :param kwargs: not supported (the pool passes none).
        :returns: a pending Deferred.
        """
        assert not kwargs
        job = HeldJob(f, args)
        self.pending.append(job)
        self.started.append(job)
        return job.result

    def finish(self, index: int = 0) -> Any:
        """Run the ``index``-th pending job now and fire its Deferred with the result.

        :param index: which pending job.
        :returns: what the function returned.
        """
        job = self.pending.pop(index)
        value = job.function(*job.args)
        job.result.callback(value)
        return value
