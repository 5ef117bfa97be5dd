"""Shared helpers of the interop tier (``tests/interop/``).

- :class:`GatewayTestMixin`: start a :class:`GatewayProcess` per test and stop
  it (or kill it) in a cleanup, whatever happens.
- :func:`index_by_sop_instance`: map received files to their SOP Instance UID,
  since the spool names files by internal id and ``storescp`` by UID.
- :func:`shared_dir`: a per-process temporary directory for data generated
  once and reused by several tests (trial has no ``setUpClass``).
- :func:`make_series` / :func:`shared_series`: a directory of CT instances of
  one study and series, for ``storescu +sd``.
- :func:`digests_by_sop_instance`: SOP Instance UID -> SHA-256 of the data set
  bytes (after the file meta), to compare what each destination received.
- :func:`pynetdicom_store`: send data sets with pynetdicom as a test-only SCU
  and read back each C-STORE status (``storescu`` only prints them).
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
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.support.datasets import dataset_digest, write_instance
from tests.support import dcmtk
from tests.support.gateway_process import GatewayProcess, wait_until
from tests.support.scp import RecordingScp

__all__ = [
    "ForwardTestMixin",
    "GatewayTestMixin",
    "digests_by_sop_instance",
    "index_by_sop_instance",
    "make_series",
    "part10_files",
    "pynetdicom_store",
    "shared_dir",
    "shared_series",
    "sop_instance_uid",
]


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


def make_series(folder: Path, count: int, size: int, *, prefix: str = "ct",
                study_instance_uid: str | None = None) -> tuple[str, str]:
    """Write ``count`` CT instances of one new study and series into ``folder``.

    :param folder: the directory (created if needed).
    :param count: number of instances.
    :param size: approximate size of each, in bytes.
    :param prefix: file name prefix.
    :param study_instance_uid: the study's UID (a new one by default).
    :returns: (Study Instance UID, Series Instance UID).
    """
    folder.mkdir(parents=True, exist_ok=True)
    study, series = study_instance_uid or generate_uid(), generate_uid()
    for i in range(count):
        write_instance(folder / f"{prefix}{i:05d}.dcm", ExplicitVRLittleEndian, size, seed=i,
                       study_instance_uid=study, series_instance_uid=series)
    return study, series


@functools.cache
def shared_series(count: int, size: int) -> tuple[Path, str]:
    """Write (once per process) ``count`` CT instances of one study, for reuse.

    :param count: number of instances.
    :param size: approximate size of each, in bytes.
    :returns: (the directory, its Study Instance UID).
    """
    folder = shared_dir(f"forward-series-{count}-{size}")
    study, _series = make_series(folder, count, size)
    return folder, study


def part10_files(folder: Path) -> list[Path]:
    """List every regular file below ``folder`` (recursively), sorted.

    :param folder: a directory (missing means empty).
    :returns: the files.
    """
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def digests_by_sop_instance(paths: Iterable[Path]) -> dict[str, str]:
    """Map Part 10 files to the SHA-256 of their data set bytes, by SOP Instance UID.

    :param paths: Part 10 files (each UID at most once).
    :returns: ``{uid: hex digest of the bytes after the file meta}``.
    :raises AssertionError: if two files carry the same UID.
    """
    return {uid: dataset_digest(path) for uid, path in index_by_sop_instance(paths).items()}


def pynetdicom_store(
    port: int,
    datasets: Iterable[Dataset],
    *,
    called_ae: str = "DICOMGW",
    calling_ae: str = "PYNETDICOM",
    host: str = "127.0.0.1",
) -> list[int | None]:
    """Send data sets in one association with pynetdicom (a test-only SCU).

    Each data set is sent in Explicit VR Little Endian with its own SOP
    Class and Instance UIDs in the command (PS3.7 9.1.1.1), whatever they
    are, so crafted UIDs reach the gateway unchanged.

    :param port: the gateway's port.
    :param datasets: data sets with ``SOPClassUID`` and ``SOPInstanceUID``.
    :param called_ae: the called AE title.
    :param calling_ae: our AE title.
    :param host: the gateway's address.
    :returns: each C-STORE-RSP status, ``None`` when no response came.
    :raises AssertionError: if the association is not established.
    """
    from pynetdicom import AE

    items = list(datasets)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class in sorted({str(ds.SOPClassUID) for ds in items}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian])
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise AssertionError(f"association to {host}:{port} not established")
    statuses: list[int | None] = []
    try:
        for ds in items:
            ds.file_meta = pydicom.dataset.FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            rsp = assoc.send_c_store(ds)
            statuses.append(int(rsp.Status) if "Status" in rsp else None)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


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


class ForwardTestMixin(GatewayTestMixin):
    """Start gateways and destination peers for store-and-forward tests, all cleaned up.

    Peers are stopped in cleanups registered after the gateway's, so they
    stop first (trial runs cleanups last-in first-out): that is harmless.
    """

    def storescp(self, name: str, *, start: bool = True, **kwargs: Any) -> dcmtk.Storescp:
        """Create (and start) a bit-preserving ``storescp`` writing to a fresh folder.

        :param name: a label for its output folder.
        :param start: start it now (else the test starts it later).
        :param kwargs: more :class:`~tests.support.dcmtk.Storescp` arguments.
        :returns: the peer.
        """
        scp = dcmtk.Storescp(Path(self.mktemp()).resolve() / name, **kwargs)  # type: ignore[attr-defined]
        self.addCleanup(scp.stop)  # type: ignore[attr-defined]
        if start:
            scp.start()
        return scp

    def recorder(self, **kwargs: Any) -> RecordingScp:
        """Start a :class:`~tests.support.scp.RecordingScp`, stopped in a cleanup.

        :param kwargs: its constructor arguments.
        :returns: the running SCP.
        """
        scp = RecordingScp(**kwargs)
        self.addCleanup(scp.stop)  # type: ignore[attr-defined]
        return scp.start()

    @staticmethod
    def wait_for(gateway: GatewayProcess, predicate: Any, timeout: float, what: str) -> Any:
        """Poll ``predicate`` until true; on timeout fail with the queue and log tail.

        :param gateway: the gateway whose state explains a failure.
        :param predicate: a callable polled every 0.1 s.
        :param timeout: seconds.
        :param what: what is awaited, for the message.
        :returns: the predicate's first true result.
        :raises AssertionError: on timeout.
        """
        def explain() -> str:
            queue = gateway.cli("queue", "list")
            return f"{what}\n{queue.stdout}{queue.stderr}\n--- gateway log tail ---\n" + \
                gateway.log_text()[-4000:]
        return wait_until(predicate, timeout, explain)

    @staticmethod
    def idle(gateway: GatewayProcess) -> bool:
        """Tell whether no destination has anything queued or in flight.

        :param gateway: the gateway.
        :returns: ``True`` when every queue is empty.
        """
        return all(row["queued"] == 0 and row["in_flight"] == 0
                   for row in gateway.queue_rows().values())
