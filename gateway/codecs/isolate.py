"""Run a conversion whose decoder may kill the process in a child process (issue 17, HARDENING: hostile input).

GDCM, the only non-GPL decoder of the JPEG family among the codecs, calls
``std::terminate`` on some corrupt streams: in the gateway's own process
that would end every association and drain. A conversion that must decode
with it runs in a single long-lived worker process (``spawn``: no copy of
the reactor's threads); when the worker dies the conversion is a
:class:`~gateway.codecs.ConversionError` and the next one starts a new worker.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

from gateway.codecs import ConversionError

__all__ = ["run_isolated", "shutdown"]

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def _executor() -> ProcessPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return _pool


def _discard(pool: ProcessPoolExecutor) -> None:
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


def run_isolated(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)`` in the worker process (blocking; module-level functions only).

    :raises ConversionError: the worker died (a codec aborted), or what ``function`` raised.
    """
    pool = _executor()
    try:
        return pool.submit(function, *args, **kwargs).result()
    except BrokenProcessPool as e:
        _discard(pool)
        raise ConversionError("the decoder ended its process on this instance (corrupt compressed data)") from e


def shutdown() -> None:
    """Stop the worker process (tests; the gateway's exit)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True)
