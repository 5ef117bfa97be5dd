"""Storage faults injected into the running gateway process (HARDENING D11, D12).

Each case breaks the spool's file system under a real ``python -m gateway
run`` while a raw peer stores instances, and checks the rows' outcomes:

- the instance hit is answered **0xA700**, never 0x0000 (D12; Dicoogle #721);
- its partial file is gone from ``incoming/`` and nothing was committed;
- later stores are refused too while the fault lasts (D11);
- ``/readyz`` answers 503 while the fault lasts (D12);
- the shipped alert (``etc/prometheus/alerts.yml``) fires on the metrics
  scraped from the process, evaluated by ``promtool`` (:mod:`tests.support.alerts`);
- once the fault is gone, ``/readyz`` is 200 again and a store succeeds.

Two ways of breaking the disk:

- :class:`ShimFaultTests`: an ``LD_PRELOAD`` shim (:mod:`tests.support.faultshim`)
  makes ``write``, ``fsync`` or ``rename`` fail with EIO, or ``write`` fail
  with ENOSPC after some bytes of a file (a disk filling mid-write), for
  paths under the spool only, switched on and off while the gateway runs.
  The shim logs what it injected, so each test proves the fault was hit.
- :class:`FilesystemFaultTests`: the spool is a small tmpfs the test mounts
  (the interop tests run as root): remounted read-only (EROFS), filled to
  the last byte (a real ENOSPC), or filled below ``spool.min_free`` (the
  free-space floor).  The ENOSPC case runs with ``min_free: 0``, so the
  floor can never be what refuses; the floor case leaves a megabyte free,
  more than the instance needs, so ENOSPC can never be what refuses; each
  checks the Error Comment that names its path.

The queue journal is kept off the faulted folder (``queue.path``), so these
tests are about the spool; a full journal is F15's, in
``tests.interop.test_forward_durability``.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid
from twisted.trial.unittest import TestCase

from gateway.dimse.commands import CStoreRSP
from gateway.dimse.status import Status
from gateway.ul import pdu as _pdu
from tests.support.alerts import alert_fires
from tests.support.faultshim import FaultShim
from tests.support.gateway_process import GatewayProcess, wait_until
from tests.support.metrics import metrics_text, sample
from tests.support.ports import free_port
from tests.support.rawpeer import (
    CT_IMAGE_STORAGE,
    RawPeer,
    associate_rq,
    command_pdata,
    pdata,
    pdv,
    release_rq,
    response_commands,
    store_rq_command,
)

#: The CT context of :func:`associate_rq`'s default request.
CT_CONTEXT = 3
#: Size of the pixel data of the instances stored (several P-DATA fragments).
PIXELS = 128 * 1024
#: P-DATA fragment size the peer sends (each one is a separate write in the gateway).
FRAGMENT = 16 * 1024
#: Seconds allowed for /readyz to follow the fault (a cached readiness state
#: is refreshed periodically rather than per request).
READY_WAIT = 20.0
#: ARTIM (``acse_timeout``) of the gateways under test, in seconds.
ARTIM = 2.0
#: The alert D11 and D12 expect.
ALERT = "DicomGatewayStoresRefused"


def ct_bytes(uid: str, pixels: int = PIXELS) -> bytes:
    """Encode a CT data set with ``pixels`` bytes of pixel data (Explicit VR LE, no file meta).

    :param uid: its SOP Instance UID.
    :param pixels: the Pixel Data length (even).
    :returns: the data set bytes.
    """
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "FAULTS"
    ds.PatientName = "Disk^Fault"
    ds.Modality = "CT"
    ds.Rows = 256
    ds.Columns = pixels // 512
    ds.BitsAllocated = 16
    ds.PixelData = os.urandom(pixels)
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = False
    write_dataset(buf, ds)
    return buf.getvalue()


def store(gateway: GatewayProcess, uid: str, data: bytes | None = None) -> CStoreRSP:
    """Store one instance on its own association, in ``FRAGMENT``-sized P-DATA PDUs.

    :param gateway: the gateway.
    :param uid: the SOP Instance UID.
    :param data: the data set (default: :func:`ct_bytes`).
    :returns: the C-STORE-RSP.
    :raises AssertionError: if the association is refused or no response comes.
    """
    payload = ct_bytes(uid) if data is None else data
    with RawPeer(gateway.host, gateway.port) as peer:
        answer = peer.associate(associate_rq(calling="FAULTS"), timeout=10)
        if not isinstance(answer, _pdu.AAssociateAC):
            raise AssertionError(f"association not accepted: {answer}")
        return _store_on(peer, uid, payload)


def _store_on(peer: RawPeer, uid: str, payload: bytes, message_id: int = 1) -> CStoreRSP:
    """Send one C-STORE on an established association and read its response.

    :param peer: the peer, in Sta6.
    :param uid: the SOP Instance UID.
    :param payload: the data set bytes.
    :param message_id: the Message ID.
    :returns: the C-STORE-RSP.
    """
    before = len(response_commands(peer))
    peer.send(command_pdata(CT_CONTEXT, store_rq_command(uid, message_id)))
    for offset in range(0, len(payload), FRAGMENT):
        last = offset + FRAGMENT >= len(payload)
        peer.send(pdata(pdv(CT_CONTEXT, 0x02 if last else 0x00, payload[offset:offset + FRAGMENT])))
    wait_until(lambda: len(response_commands(peer)) > before, 30, f"the C-STORE-RSP for {uid}")
    rsp = response_commands(peer)[before]
    assert isinstance(rsp, CStoreRSP), rsp
    return rsp


def release(peer: RawPeer) -> None:
    """Release an association politely.

    :param peer: the peer, in Sta6.
    """
    peer.send(release_rq())
    peer.wait_pdu(_pdu.AReleaseRP, 10)


def readyz(http_port: int) -> int:
    """Ask ``/readyz``.

    :param http_port: the gateway's HTTP port.
    :returns: the status code.
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


class ShimGateway(GatewayProcess):
    """A gateway started with the fault shim preloaded (faults under its spool only).

    :param tmpdir: its directory.
    :param overrides: config keys, as for :class:`GatewayProcess`.
    """

    def __init__(self, tmpdir: str | os.PathLike[str], **overrides: Any) -> None:
        super().__init__(tmpdir, **overrides)
        self.shim = FaultShim(self.spool, self.dir / "shim")

    def _env(self) -> dict[str, str]:
        """The gateway's environment plus the shim's.

        :returns: the environment.
        """
        return {**super()._env(), **self.shim.env()}


class StorageFaultMixin:
    """Start a gateway whose journal is outside the spool, and check the rows' outcomes."""

    http_port: int

    def gateway_config(self, gateway: GatewayProcess, **spool: Any) -> None:
        """Put the journal outside the spool and set the spool's keys.

        :param gateway: the (not yet started) gateway.
        :param spool: more ``spool`` keys (``min_free``...).
        """
        journal = gateway.dir / "journal"
        journal.mkdir(exist_ok=True)
        gateway.rewrite_config(queue={"path": str(journal / "queue.sqlite")},
                               spool={"path": str(gateway.spool), **spool})

    def new_gateway(self, cls: type[GatewayProcess] = GatewayProcess) -> GatewayProcess:
        """Create (not start) a gateway with its HTTP endpoint on a known port.

        :param cls: the gateway class.
        :returns: the gateway.
        """
        self.http_port = free_port()
        # ARTIM 2 s: after an A-ASSOCIATE-RJ the gateway closes at ARTIM (AE-8, Sta13).
        gateway = cls(self.mktemp(), http={"host": "127.0.0.1", "port": self.http_port},  # type: ignore[attr-defined]
                      limits={"acse_timeout": f"{ARTIM:g}s"})
        self.addCleanup(gateway.stop, 15)  # type: ignore[attr-defined]
        return gateway

    def assert_refused(self, gateway: GatewayProcess, rsp: CStoreRSP, committed: int, comment: str) -> None:
        """The instance hit was refused 0xA700 and left nothing behind.

        :param gateway: the gateway.
        :param rsp: its C-STORE-RSP.
        :param committed: the committed instances before it.
        :param comment: a fragment the Error Comment must contain (names the path taken).
        """
        self.assertEqual(rsp.status, Status.OUT_OF_RESOURCES,  # type: ignore[attr-defined]
                         f"status 0x{rsp.status:04X} ({rsp.error_comment})")
        self.assertIn(comment, rsp.error_comment or "")  # type: ignore[attr-defined]
        wait_until(lambda: not gateway.incoming(), 5,
                   lambda: f"incoming/ to be empty: {gateway.incoming()}")
        self.assertEqual(len(gateway.instances()), committed)  # type: ignore[attr-defined]

    def assert_alert(self, scrapes: list[str], labels: dict[str, str] | None = None, name: str = ALERT) -> None:
        """The shipped alert fires on the scrapes, and does not on the first one alone (the control).

        :param scrapes: ``/metrics`` texts, before and during the fault.
        :param labels: the alert's expected labels besides ``instance`` and the rule's.
        :param name: the alert.
        """
        fired, output = alert_fires(name, scrapes, labels or {})
        self.assertTrue(fired, output)  # type: ignore[attr-defined]
        quiet, output = alert_fires(name, [scrapes[0]] * len(scrapes), labels or {})
        self.assertFalse(quiet, f"{name} fires before the fault:\n{output}")  # type: ignore[attr-defined]

    def scrape_low(self, before: str) -> str:
        """Scrape until the free-space gauge (a snapshot renewed in the background) shows under 10% free.

        :param before: a scrape taken before the disk filled (for the capacity).
        :returns: the scrape.
        """
        capacity = sample(before, "dicom_gateway_spool_capacity_bytes")

        def low() -> str | None:
            text = metrics_text(self.http_port)
            return text if sample(text, "dicom_gateway_spool_free_bytes") < capacity / 10 else None

        found: str = wait_until(low, 20, "the scraped free space to show the low disk")
        return found

    def assert_recovered(self, gateway: GatewayProcess) -> None:
        """After the fault: /readyz 200 and a store acknowledged and committed.

        :param gateway: the gateway.
        """
        wait_until(lambda: readyz(self.http_port) == 200, READY_WAIT, "/readyz 200 after the fault")
        committed = len(gateway.instances())
        uid = generate_uid()
        rsp = store(gateway, uid)
        self.assertEqual(rsp.status, Status.SUCCESS, rsp.error_comment)  # type: ignore[attr-defined]
        self.assertEqual(len(gateway.instances()), committed + 1)  # type: ignore[attr-defined]
        self.assertIsNone(gateway.returncode)  # type: ignore[attr-defined]
        self.assertNotIn("Traceback", gateway.log_text())  # type: ignore[attr-defined]


class ShimFaultTests(StorageFaultMixin, TestCase):
    """D11/D12 with the LD_PRELOAD shim: EIO on write, fsync and rename; ENOSPC mid-write."""

    timeout = 180

    def start(self) -> ShimGateway:
        """Start a gateway with the shim preloaded, and prove the shim is in it.

        :returns: the running gateway.
        """
        gateway = self.new_gateway(ShimGateway)
        assert isinstance(gateway, ShimGateway)
        self.gateway_config(gateway)
        gateway.start()
        maps = Path(f"/proc/{gateway.pid}/maps").read_text()
        self.assertIn(str(gateway.shim.library), maps, "the fault shim is not loaded in the gateway")
        wait_until(lambda: readyz(self.http_port) == 200, READY_WAIT, "/readyz 200 at start")
        # Control: with the shim loaded and no fault armed, stores succeed.
        self.assertEqual(store(gateway, generate_uid()).status, Status.SUCCESS)
        return gateway

    def fault_case(self, op: str, error: int, *, after_bytes: int | None = None, probe_fails: bool = True) -> None:
        """Arm one fault, store, check every outcome, disarm, check recovery.

        :param op: the shim operation (``write``, ``fsync``, ``rename``).
        :param error: the errno injected.
        :param after_bytes: for ``write``: bytes each file may take first.
        :param probe_fails: whether the fault also hits the /readyz probe (a
            small commit in the spool: a fault armed only after 40 KB of a
            file never reaches the probe's 6 bytes).
        """
        gateway = self.start()
        committed = len(gateway.instances())
        before = metrics_text(self.http_port)
        gateway.shim.arm(op, error, after_bytes)
        rsp = store(gateway, generate_uid())
        self.assert_refused(gateway, rsp, committed, os.strerror(error))
        hits = gateway.shim.hits(op, error)
        self.assertTrue(hits, f"the shim injected no {op} failure")
        if after_bytes is not None:
            # The disk filled in the middle of the file: bytes had landed in
            # its slot file in instances/ (the partial file the row wants removed).
            self.assertTrue(any("/instances/" in path and path.endswith(".dcm") for path in hits), hits)
        # D11: later stores are refused too while the fault lasts.
        self.assert_refused(gateway, store(gateway, generate_uid()), committed, os.strerror(error))
        if probe_fails:
            wait_until(lambda: readyz(self.http_port) == 503, READY_WAIT, f"/readyz 503 during {op} {error}")
        after = metrics_text(self.http_port)
        self.assertEqual(sample(after, "dicom_gateway_store_failures_total", status="0xA700"), 2)
        self.assert_alert([before, after])
        gateway.shim.disarm()
        self.assert_recovered(gateway)

    def test_d12_eio_on_write_answers_a700_removes_partial_fails_readyz_alerts_recovers(self) -> None:
        """D12: write() failing with EIO: 0xA700 (never 0x0000), no partial file, /readyz 503, alert, then recovery."""
        self.fault_case("write", errno.EIO)

    def test_d12_eio_on_fsync_answers_a700_removes_partial_fails_readyz_alerts_recovers(self) -> None:
        """D12: fsync() failing with EIO (the write-back error surfacing): 0xA700, no partial file, /readyz 503, alert, recovery."""
        self.fault_case("fsync", errno.EIO)

    def test_d12_eio_on_rename_answers_a700_removes_partial_fails_readyz_alerts_recovers(self) -> None:
        """D12: rename() failing with EIO (the unrouted instance's move: no other custody step renames since issue 13): 0xA700, nothing left, /readyz 503, alert, recovery.

        The readiness probe is the spool's own commit (create, write, fsync,
        rename, folder fsyncs), so a failing rename fails it too.
        """
        self.fault_case("rename", errno.EIO)

    def test_d11_enospc_mid_write_answers_a700_removes_partial_alerts_recovers(self) -> None:
        """D11: ENOSPC after 40 KB of the file: 0xA700, the partial file removed, later stores 0xA700, alert, recovery."""
        self.fault_case("write", errno.ENOSPC, after_bytes=40 * 1024, probe_fails=False)


def _mount_tmpfs(target: Path, megabytes: int) -> None:
    """Mount a tmpfs of ``megabytes`` at ``target`` (the interop tests run as root).

    :param target: an existing empty directory.
    :param megabytes: its size.
    :raises AssertionError: if the mount fails.
    """
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0700", "tmpfs", str(target)],
                           capture_output=True, text=True, check=False)
    if mount.returncode != 0:
        raise AssertionError(f"cannot mount a tmpfs at {target} (run as root): {mount.stderr.strip()}")


def _fill(folder: Path, leave: int = 0) -> Path:
    """Fill a filesystem with one file, leaving about ``leave`` bytes free.

    :param folder: a directory on it.
    :param leave: bytes to leave free (0: fill to the last byte).
    :returns: the filler file (delete it to free the space).
    """
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as f:
        if leave:
            f.write(b"\0" * max(0, shutil.disk_usage(folder).free - leave))
        else:
            for block in (65536, 512, 1):
                try:
                    while True:
                        f.write(b"\0" * block)
                except OSError:
                    pass
        os.fsync(f.fileno())
    return filler


class FilesystemFaultTests(StorageFaultMixin, TestCase):
    """D11/D12 on a real small filesystem: read-only remount, full disk, free-space floor."""

    timeout = 180

    def start(self, **spool: Any) -> GatewayProcess:
        """Start a gateway whose spool is a fresh 16 MiB tmpfs.

        :param spool: more ``spool`` keys.
        :returns: the running gateway.
        """
        gateway = self.new_gateway()
        gateway.spool.mkdir(parents=True)
        _mount_tmpfs(gateway.spool, 16)
        # Cleanups run last-in first-out: this one runs before the gateway's
        # stop, so the unmount is lazy (it completes once the gateway has
        # closed its last file there).
        self.addCleanup(subprocess.run, ["umount", "-l", str(gateway.spool)], check=False)
        self.gateway_config(gateway, **spool)
        gateway.start()
        wait_until(lambda: readyz(self.http_port) == 200, READY_WAIT, "/readyz 200 at start")
        self.assertEqual(store(gateway, generate_uid()).status, Status.SUCCESS)
        return gateway

    def test_d12_read_only_remount_answers_a700_fails_readyz_alerts_and_recovers_on_rw(self) -> None:
        """D12: the spool's filesystem remounted read-only: 0xA700 (EROFS), /readyz 503, alert; rw again: recovery."""
        gateway = self.start(min_free=0)
        committed = len(gateway.instances())
        before = metrics_text(self.http_port)
        remount = subprocess.run(["mount", "-o", "remount,ro", str(gateway.spool)], capture_output=True,
                                 text=True, check=False)
        self.assertEqual(remount.returncode, 0, remount.stderr)
        self.addCleanup(subprocess.run, ["mount", "-o", "remount,rw", str(gateway.spool)], check=False)
        self.assert_refused(gateway, store(gateway, generate_uid()), committed, os.strerror(errno.EROFS))
        self.assert_refused(gateway, store(gateway, generate_uid()), committed, os.strerror(errno.EROFS))
        wait_until(lambda: readyz(self.http_port) == 503, READY_WAIT, "/readyz 503 while read-only")
        self.assert_alert([before, metrics_text(self.http_port)])
        remount = subprocess.run(["mount", "-o", "remount,rw", str(gateway.spool)], capture_output=True,
                                 text=True, check=False)
        self.assertEqual(remount.returncode, 0, remount.stderr)
        self.assert_recovered(gateway)

    def test_d11_full_disk_enospc_answers_a700_until_space_is_back_fails_readyz_alerts(self) -> None:
        """D11, the ENOSPC path (min_free 0, so the floor never refuses): 0xA700 until space is back, /readyz 503, both alerts."""
        gateway = self.start(min_free=0, resume_margin=0)
        committed = len(gateway.instances())
        before = metrics_text(self.http_port)
        filler = _fill(gateway.spool)
        self.assert_refused(gateway, store(gateway, generate_uid()), committed, os.strerror(errno.ENOSPC))
        self.assert_refused(gateway, store(gateway, generate_uid()), committed, os.strerror(errno.ENOSPC))
        wait_until(lambda: readyz(self.http_port) == 503, READY_WAIT, "/readyz 503 while the disk is full")
        after = self.scrape_low(before)
        self.assert_alert([before, after])
        self.assert_alert([before, after], name="DicomGatewaySpoolLow")
        filler.unlink()
        self.assert_recovered(gateway)

    def test_d11_free_space_floor_rejects_2_3_1_and_answers_a700_without_enospc_then_recovers(self) -> None:
        """D11, the floor path: 1 MB left under a 4 MiB floor: new associations RJ(2,3,1), stores on an open one 0xA700, alerts; freed: accepted."""
        gateway = self.start(min_free="4MiB", resume_margin="1MiB")
        committed = len(gateway.instances())
        before = metrics_text(self.http_port)
        held = RawPeer(gateway.host, gateway.port)
        self.addCleanup(held.close)
        self.assertIsInstance(held.associate(associate_rq(calling="HELD")), _pdu.AAssociateAC)
        filler = _fill(gateway.spool, leave=1024 * 1024)

        def rejected() -> tuple[int, int, int] | None:
            with RawPeer(gateway.host, gateway.port) as peer:
                answer = peer.associate(associate_rq(calling="LATE"), timeout=10)
                if isinstance(answer, _pdu.AAssociateRJ):
                    closed = peer.wait_closed(ARTIM + 5)
                    self.assertFalse(closed.reset, "RJ followed by a reset")
                    return (answer.result, answer.source, answer.reason)
                return None

        # The free space is read at most once a second: the floor shows within a few.
        self.assertEqual(wait_until(rejected, 10, "an RJ once below the floor"), (2, 3, 1))
        self.assertGreater(shutil.disk_usage(gateway.spool).free, 512 * 1024, "not the floor path: the disk is full")
        uid = generate_uid()
        rsp = _store_on(held, uid, ct_bytes(uid, 1024))
        # The floor's comment, not the disk's "No space left on device".
        self.assert_refused(gateway, rsp, committed, "below its free-space floor")
        after = self.scrape_low(before)
        self.assert_alert([before, after])
        self.assert_alert([before, after], name="DicomGatewaySpoolLow")
        # Below the floor the gateway refuses work, so it is not ready either.
        self.assertEqual(readyz(self.http_port), 503)
        release(held)
        filler.unlink()
        wait_until(lambda: rejected() is None, 10, "associations accepted once space is back")
        self.assert_recovered(gateway)
