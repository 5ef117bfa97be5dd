"""Interoperability matrix: PixelMed's Java tools as SCU and SCP around the gateway (issue 7).

One gateway process and two PixelMed Storage SCPs (plain, and ``SECURE``) serve
the module; like :mod:`tests.interop.test_matrix_orthanc` they are started by
the first test and stopped at exit (trial has no ``setUpClass``).  The gateway
routes by calling AE title: ``PIXELMED`` (PixelMed's SCU) to the ``inbox``
folder, ``TO-PIXELMED`` to the PixelMed SCP (with a copy in the ``mirror``
folder, what the gateway received), ``TO-PIXELMEDTLS`` to the SECURE SCP.

Each test sends fresh copies of three bundled files (Explicit VR Little
Endian, RLE Lossless, JPEG Baseline; see
:func:`tests.interop.test_matrix_orthanc.fresh_copies`).

TLS: PixelMed 20220618 enables only ``TLS_RSA_WITH_AES_128_CBC_SHA`` (the
retired PS3.15 B.3 AES profile; see :mod:`tests.support.pixelmed`), which BCP
195 and so the gateway refuse (HARDENING T09).  The TLS tests pin that
refusal in both directions, with PixelMed-to-PixelMed TLS as the control.
"""

from __future__ import annotations

import atexit
import functools
import itertools
from pathlib import Path
from typing import Any

import pydicom
from twisted.trial.unittest import TestCase

from gateway.audit import read_records
from tests.interop.test_matrix_orthanc import SAMPLES, fresh_copies
from tests.support import dcmtk, pixelmed
from tests.support.certs import destination_tls, material, tls_listener
from tests.support.datasets import dataset_bytes
from tests.support.gateway_process import GatewayProcess, dicom_destination, folder_destination, wait_until
from tests.support.interop import part10_files, shared_dir
from tests.support.pixelmed import StorageScp
from tests.support.ports import free_port, port_is_open

_shared: dict[str, Any] = {}
_runs = itertools.count()
#: Processes of the current shared environment, stopped before a restart and at exit.
_started: list[StorageScp | GatewayProcess] = []


def _stop_started() -> None:
    """Stop what an earlier (failed, or since dead) start of the environment left running."""
    while _started:
        _started.pop().stop()


@functools.cache
def _stop_at_exit() -> None:
    """Register :func:`_stop_started` once, after :func:`shared_dir` (exit handlers run last first: stop, then remove)."""
    atexit.register(_stop_started)


def environment() -> dict[str, Any]:
    """Start (once per process) the gateway and the two PixelMed SCPs of this module.

    :returns: ``{"gw", "tls_port", "scp", "secure_scp", "client_tls", "dir"}``.
    """
    gw = _shared.get("gw")
    if gw is not None and gw.returncode is None:
        return _shared
    _stop_started()
    _shared.clear()
    root = shared_dir("matrix-pixelmed") / f"run{next(_runs)}"  # a fresh folder if an earlier start failed
    _stop_at_exit()
    m = material()
    # PixelMed's SECURE SCP presents the gateway test CA's server certificate (localhost).
    server_tls = pixelmed.tls_properties(root / "scp-stores", m.server, m.server_key, m.ca)
    client_tls = pixelmed.tls_properties(root / "scu-stores", m.client, m.client_key, m.ca)
    scp = StorageScp(root / "pixelmed-in")
    secure_scp = StorageScp(root / "pixelmed-tls-in", ae_title="PIXELMEDTLS", secure=True, properties=server_tls)
    for peer in (scp, secure_scp):
        _started.append(peer)
        peer.start()
    gw = GatewayProcess(root / "gw", http={"enabled": False})
    tls_port = free_port()
    while tls_port in (gw.port, scp.port, secure_scp.port):
        tls_port = free_port()
    gw.config["listen"] = [
        {"host": "127.0.0.1", "port": gw.port, "name": "plain"},
        tls_listener(tls_port, m, handshake_timeout="5s"),
    ]
    gw.config["audit"] = {"file": str(gw.dir / "audit.jsonl")}
    gw.config["destinations"] = {
        "pixelmed": dicom_destination(scp.port, "PIXELMED"),
        "pixelmed-tls": dicom_destination(
            secure_scp.port, "PIXELMEDTLS",
            tls=destination_tls(m)),
        "mirror": folder_destination(gw.dir / "mirror"),
        "inbox": folder_destination(gw.dir / "inbox"),
    }
    gw.config["routes"] = [
        {"name": "to-pixelmed", "match": {"calling_ae_title": "TO-PIXELMED"},
         "forward": ["pixelmed", "mirror"], "final": True},
        {"name": "to-pixelmed-tls", "match": {"calling_ae_title": "TO-PIXELMEDTLS"},
         "forward": ["pixelmed-tls"], "final": True},
        {"name": "from-pixelmed", "match": {"calling_ae_title": "PIXELMED"}, "forward": ["inbox"], "final": True},
    ]
    gw.rewrite_config()
    _started.append(gw)
    gw.start()
    wait_until(lambda: port_is_open("127.0.0.1", tls_port), 15, gw.log_text)
    _shared.update(gw=gw, tls_port=tls_port, scp=scp, secure_scp=secure_scp, client_tls=client_tls, dir=root)
    return _shared


def by_sop_instance(paths: list[Path]) -> dict[str, Path]:
    """Index readable Part 10 files by SOP Instance UID (a file still being written is skipped).

    :param paths: candidate files.
    :returns: ``{uid: path}``.
    """
    index: dict[str, Path] = {}
    for path in paths:
        try:
            index[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
        except Exception:  # noqa: BLE001 - a partial file is simply not there yet
            continue
    return index


class PixelMedMixin:
    """The shared environment and failure explanations of both test classes."""

    skip = pixelmed.skip_reason() or dcmtk.skip_reason("storescu")
    timeout = 180

    def setUp(self) -> None:
        """Start (or reuse) the shared gateway and SCPs."""
        env = environment()
        self.gw: GatewayProcess = env["gw"]
        self.tls_port: int = env["tls_port"]
        self.scp: StorageScp = env["scp"]
        self.secure_scp: StorageScp = env["secure_scp"]
        self.client_tls: list[str] = env["client_tls"]

    def explain(self, scp: StorageScp | None = None) -> str:
        """The gateway's queues and log tail (and an SCP's log), for a failure message."""
        queue = self.gw.cli("queue", "list")
        text = f"{queue.stdout}{queue.stderr}\n--- gateway log ---\n{self.gw.log_text()[-4000:]}"
        if scp is not None:
            text += f"\n--- PixelMed SCP log ---\n{scp.log_text()[-3000:]}"
        return text

    def audit(self) -> list[dict[str, Any]]:
        """The gateway's audit records so far."""
        path = self.gw.dir / "audit.jsonl"
        return read_records(str(path)) if path.exists() else []


class PixelMedMatrixTests(PixelMedMixin, TestCase):
    """PixelMed SCU -> gateway (C-ECHO, C-STORE) and gateway -> PixelMed SCP (C-STORE), plain TCP."""

    def test_pixelmed_echo_to_gateway(self) -> None:
        """VerificationSOPClassSCU gets a successful C-ECHO; with a wrong called AE title it reports failure (control)."""
        result = pixelmed.verification_scu(self.gw.port)
        self.assertIn("VerificationSOPClass: was successful", result.output, result.describe())
        wrong = pixelmed.verification_scu(self.gw.port, called_ae="NOTTHEGW")
        self.assertIn("was not successful", wrong.output, wrong.describe())
        self.assertIn("called AE Title not recognized", wrong.output)

    def test_pixelmed_stores_three_syntaxes_to_gateway_byte_identical(self) -> None:
        """StorageSOPClassSCU sends Explicit LE, RLE and JPEG files in one association; the gateway keeps each data set byte for byte."""
        samples = fresh_copies(Path(self.mktemp()))
        result = pixelmed.storage_scu(self.gw.port, [path for path, _ in samples.values()])
        self.assertNotIn("Exception", result.output, result.describe())
        landed = wait_until(
            lambda: (lambda found: found if set(samples) <= set(found) else None)(
                by_sop_instance(part10_files(self.gw.dir / "inbox"))),
            30, lambda: "PixelMed's instances in the inbox\n" + result.describe() + self.explain())
        for uid, (path, syntax) in samples.items():
            self.assertEqual(str(pydicom.dcmread(landed[uid], stop_before_pixels=True).file_meta.TransferSyntaxUID),
                             syntax)
            self.assertEqual(dataset_bytes(landed[uid]), dataset_bytes(path), f"{path.name} changed on its way")
        received = [r for r in self.audit() if r.get("disposition") == "received"
                    and r["participants"][0].get("user_id") == "PIXELMED"]
        self.assertGreaterEqual(len(received), len(samples))

    def test_gateway_forwards_three_syntaxes_to_pixelmed_scp(self) -> None:
        """storescu -> gateway -> PixelMed's StorageSOPClassSCPDispatcher: each syntax lands with the gateway's exact data set."""
        samples = fresh_copies(Path(self.mktemp()))
        for uid, (path, syntax) in samples.items():
            option = next(opt for _name, ts, opt in SAMPLES if ts == syntax)
            sent = dcmtk.storescu(self.gw.port, [path], calling_ae="TO-PIXELMED", extra=option)
            self.assertEqual(sent.returncode, 0, sent.describe())
        arrived = wait_until(
            lambda: (lambda found: found if set(samples) <= set(found) else None)(by_sop_instance(self.scp.files())),
            60, lambda: "the instances at PixelMed\n" + self.explain(self.scp))
        mirror = wait_until(
            lambda: (lambda found: found if set(samples) <= set(found) else None)(
                by_sop_instance(part10_files(self.gw.dir / "mirror"))), 30, "the mirror copies")
        for uid, (path, syntax) in samples.items():
            stored = pydicom.dcmread(arrived[uid])
            self.assertEqual(str(stored.file_meta.TransferSyntaxUID), syntax)
            self.assertEqual(dataset_bytes(arrived[uid]), dataset_bytes(mirror[uid]), f"{path.name} differs at PixelMed")
            self.assertEqual(stored.PixelData, pydicom.dcmread(path).PixelData)


class PixelMedTLSTests(PixelMedMixin, TestCase):
    """PixelMed's TLS (``SECURE``) and the gateway: refused both ways for want of a BCP 195 cipher suite."""

    def test_pixelmed_secure_echo_to_gateway_is_refused_with_no_shared_cipher(self) -> None:
        """PixelMed SECURE -> the gateway's TLS listener fails (no_shared_cipher, audited); PixelMed SECURE -> PixelMed SECURE works (control)."""
        control = pixelmed.verification_scu(self.secure_scp.port, called_ae="PIXELMEDTLS", secure=True,
                                            properties=self.client_tls)
        self.assertIn("VerificationSOPClass: was successful", control.output, control.describe())
        result = pixelmed.verification_scu(self.tls_port, secure=True, properties=self.client_tls)
        self.assertIn("was not successful", result.output, result.describe())
        self.assertIn("handshake_failure", result.output)
        reasons = wait_until(lambda: [r["extra"]["reason"] for r in self.audit()
                                      if r.get("disposition") == "tls_failure"],
                             10, lambda: str(self.audit()[-3:]))
        self.assertIn("no_shared_cipher", reasons)

    def test_gateway_tls_to_pixelmed_secure_scp_is_refused_and_kept_queued(self) -> None:
        """The gateway's TLS destination cannot handshake with PixelMed's SECURE SCP: nothing sent in clear, the entry stays queued."""
        samples = fresh_copies(Path(self.mktemp()))
        path = next(p for p, syntax in samples.values() if syntax == SAMPLES[0][1])
        sent = dcmtk.storescu(self.gw.port, [path], calling_ae="TO-PIXELMEDTLS")
        self.assertEqual(sent.returncode, 0, sent.describe())

        def refused() -> dict[str, Any] | None:
            row = self.gw.queue_rows()["pixelmed-tls"]
            return row if row["queued"] + row["in_flight"] >= 1 and "TLS" in (row.get("last_error") or "") else None

        row = wait_until(refused, 60, lambda: "a TLS failure with the entry queued\n" + self.explain(self.secure_scp))
        self.assertEqual(row["dead"], 0)
        self.assertEqual(self.secure_scp.files(), [])
