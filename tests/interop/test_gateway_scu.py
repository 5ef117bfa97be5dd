"""The gateway's own C-STORE SCU (``gateway.associate``) against peers we did not write.

Files sent with :func:`gateway.associate.connect_tcp` and
``ClientAssociation.store`` must arrive intact: the receiver's data-set
bytes equal the source file's bytes after its file meta, since the SCU
streams them from disk unchanged.  Receivers: DCMTK ``storescp +B`` (bit
preserving, all syntaxes) and a pynetdicom SCP that keeps the raw bytes it
received.  The ``dicom-gateway store`` command is exercised as a process too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.support import dcmtk
from tests.support.datasets import BUNDLED, bundled, dataset_bytes, write_instance
from tests.support.gateway_process import REPO_ROOT
from tests.support.interop import index_by_sop_instance, sop_instance_uid
from tests.support.ports import free_port


def _sample_files(folder: Path) -> list[Path]:
    """Write instances in five transfer syntaxes (pydicom's files for the compressed ones).

    :param folder: where to write the generated ones.
    :returns: the files to send.
    """
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_instance(folder / "implicit.dcm", ImplicitVRLittleEndian, 200 * 1024, seed=11),
        write_instance(folder / "explicit.dcm", ExplicitVRLittleEndian, 600 * 1024, seed=12),
        write_instance(folder / "big.dcm", ExplicitVRBigEndian, 50 * 1024, seed=13),
        bundled(BUNDLED[RLELossless]),
        bundled(BUNDLED[JPEGBaseline8Bit]),
    ]


class GatewaySCUTests(TestCase):
    """Files sent by our SCU arrive byte-identical at storescp and at a pynetdicom SCP."""

    timeout = 240

    async def _send(self, port: int, called_ae: str, files: list[Path],
                    max_pdu: int = 262144) -> list[Any]:
        """Send files over one association with the gateway's client API.

        :param port: the peer's port on 127.0.0.1.
        :param called_ae: the peer's AE title.
        :param files: Part 10 files.
        :param max_pdu: our maximum PDU length.
        :returns: one ``StoreResult`` per file.
        """
        from twisted.internet import reactor

        from gateway.associate import connect_tcp, proposals_for_files

        paths = [os.fspath(f) for f in files]
        assoc = await connect_tcp(
            reactor, "127.0.0.1", port, calling_ae_title="DICOMGW", called_ae_title=called_ae,
            proposals=proposals_for_files(paths), max_pdu_length=max_pdu, timeout=30.0,
        )
        results = []
        try:
            self.assertEqual(await assoc.echo(), 0x0000)
            for path in paths:
                results.append(await assoc.store(path))
        finally:
            if assoc.is_open:
                await assoc.release()
        return results

    def _check_received(self, files: list[Path], received: dict[str, bytes]) -> None:
        """Assert every file's data set arrived byte for byte.

        :param files: what was sent.
        :param received: data-set bytes by SOP Instance UID.
        """
        self.assertEqual(len(received), len(files))
        for f in files:
            uid = sop_instance_uid(f)
            self.assertIn(uid, received, f.name)
            self.assertEqual(received[uid], dataset_bytes(f), f"{f.name} changed in transit")

    def test_store_to_storescp_arrives_intact(self) -> defer.Deferred[None]:
        """Five syntaxes sent to storescp +B arrive with unchanged data-set bytes and success status."""
        reason = dcmtk.skip_reason("storescp")
        if reason:
            self.skipTest(reason)
        files = _sample_files(Path(self.mktemp()))
        scp = dcmtk.Storescp(self.mktemp())
        scp.start()
        self.addCleanup(scp.stop)

        async def run() -> None:
            results = await self._send(scp.port, scp.ae_title, files)
            self.assertEqual([r.status for r in results], [0x0000] * len(files), scp.log_text())
            scp.stop()
            received = index_by_sop_instance(scp.files())
            self._check_received(files, {uid: dataset_bytes(p) for uid, p in received.items()})

        return defer.Deferred.fromCoroutine(run())

    def test_store_to_storescp_with_small_pdu(self) -> defer.Deferred[None]:
        """With storescp limited to 4096-byte PDUs, a 600 KiB instance still arrives intact."""
        reason = dcmtk.skip_reason("storescp")
        if reason:
            self.skipTest(reason)
        folder = Path(self.mktemp())
        folder.mkdir()
        files = [write_instance(folder / "a.dcm", ExplicitVRLittleEndian, 600 * 1024, seed=21)]
        scp = dcmtk.Storescp(self.mktemp(), extra=["-pdu", "4096"])
        scp.start()
        self.addCleanup(scp.stop)

        async def run() -> None:
            results = await self._send(scp.port, scp.ae_title, files)
            self.assertEqual(results[0].status, 0x0000, scp.log_text())
            scp.stop()
            received = index_by_sop_instance(scp.files())
            self._check_received(files, {uid: dataset_bytes(p) for uid, p in received.items()})

        return defer.Deferred.fromCoroutine(run())

    def test_store_to_pynetdicom_scp_arrives_intact(self) -> defer.Deferred[None]:
        """Five syntaxes sent to a pynetdicom SCP arrive with unchanged data-set bytes."""
        files = _sample_files(Path(self.mktemp()))
        received: dict[str, bytes] = {}
        syntaxes: dict[str, str] = {}
        lock = threading.Lock()

        def on_store(event: Any) -> int:
            raw = event.request.DataSet.getvalue()
            uid = str(event.request.AffectedSOPInstanceUID)
            with lock:
                received[uid] = raw
                syntaxes[uid] = str(event.context.transfer_syntax)
            return 0x0000

        ae = AE(ae_title="PYNETSCP")
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        port = free_port()
        server = ae.start_server(("127.0.0.1", port), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, on_store)])
        self.addCleanup(server.shutdown)

        async def run() -> None:
            results = await self._send(port, "PYNETSCP", files)
            self.assertEqual([r.status for r in results], [0x0000] * len(files))
            with lock:
                self._check_received(files, dict(received))
                self.assertIn(RLELossless, syntaxes.values())
                self.assertIn(JPEGBaseline8Bit, syntaxes.values())
                self.assertIn(ExplicitVRBigEndian, syntaxes.values())

        return defer.Deferred.fromCoroutine(run())

    def test_store_command_line_to_storescp(self) -> None:
        """``python -m gateway store`` sends files to storescp, exits 0, and they arrive intact."""
        reason = dcmtk.skip_reason("storescp")
        if reason:
            self.skipTest(reason)
        files = _sample_files(Path(self.mktemp()))
        with dcmtk.Storescp(self.mktemp()) as scp:
            env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
            proc = subprocess.run(
                [sys.executable, "-m", "gateway", "store", "--aec", scp.ae_title,
                 "127.0.0.1", str(scp.port), *map(str, files)],
                cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, timeout=120, check=False,
            )
            self.assertEqual(proc.returncode, 0, proc.stdout + scp.log_text())
            scp.stop()
            received = index_by_sop_instance(scp.files())
        self._check_received(files, {uid: dataset_bytes(p) for uid, p in received.items()})
