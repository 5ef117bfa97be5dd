"""Shared helpers of the interop tier (``tests/interop/``).

- :class:`GatewayTestMixin`: start a :class:`GatewayProcess` per test and stop
  it (or kill it) in a cleanup, whatever happens.
- :func:`index_by_sop_instance`: map received files to their SOP Instance UID,
  since the spool names files by internal id and ``storescp`` by UID.
- :func:`shared_dir`: a per-process temporary directory for data generated
  once and reused by several tests (trial has no ``setUpClass``).
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydicom

from tests.support.gateway_process import GatewayProcess

__all__ = ["GatewayTestMixin", "index_by_sop_instance", "shared_dir", "sop_instance_uid"]


@functools.cache
def shared_dir(name: str) -> Path:
    """Create (once per process) a temporary directory removed at exit.

    :param name: a label; the same label returns the same directory.
    :returns: the directory.
    """
    path = Path(tempfile.mkdtemp(prefix=f"gw-interop-{name}-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def sop_instance_uid(path: str | os.PathLike[str]) -> str:
    """Read a Part 10 file's SOP Instance UID from its data set.

    :param path: the file.
    :returns: the UID.
    """
    ds = pydicom.dcmread(os.fspath(path), stop_before_pixels=True)
    return str(ds.SOPInstanceUID)


def index_by_sop_instance(paths: Iterable[Path]) -> dict[str, Path]:
    """Map files to their SOP Instance UIDs.

    :param paths: Part 10 files.
    :returns: ``{uid: path}``.
    :raises AssertionError: if two files carry the same UID.
    """
    index: dict[str, Path] = {}
    for path in paths:
        uid = sop_instance_uid(path)
        if uid in index:
            raise AssertionError(f"{uid} received twice: {index[uid]} and {path}")
        index[uid] = path
    return index


class GatewayTestMixin:
    """Start a real gateway process for a test, stopped in a cleanup.

    Mix into a trial ``TestCase``; call :meth:`start_gateway` in the test or
    in ``setUp``.
    """

    def start_gateway(self, **overrides: Any) -> GatewayProcess:
        """Start a gateway with its config, spool and log in a fresh temp dir.

        :param overrides: config keys, as for :class:`GatewayProcess`.
        :returns: the running gateway.
        """
        gateway = GatewayProcess(self.mktemp(), **overrides)  # type: ignore[attr-defined]
        self.addCleanup(self._stop_gateway, gateway)  # type: ignore[attr-defined]
        return gateway.start()

    @staticmethod
    def _stop_gateway(gateway: GatewayProcess) -> None:
        """Stop the gateway, killing it if SIGTERM is not enough.

        :param gateway: the process.
        """
        gateway.stop(timeout=15)
