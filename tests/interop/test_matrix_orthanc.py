"""Interoperability matrix: Orthanc as the gateway's destination and as its source, plain and TLS (issue 7).

One gateway process and two Orthanc processes serve the whole module (trial
has no ``setUpClass``: they are started lazily by the first test and stopped
at exit, as :mod:`tests.interop.test_hostile_pdu` does with its gateway):

- ``ORTHANC``, a plain archive, and ``ORTHANCTLS``, an archive whose DICOM port
  speaks TLS only and which requires a client certificate from the test CA
  (Orthanc's DICOM TLS, new in 1.9.0, present in Debian's 1.10.1);
- the gateway, with a plain listener and a mutual-TLS listener, forwarding by
  calling AE title: ``TO-ORTHANC`` to the plain archive, ``TO-ORTHANCTLS`` to
  the TLS one (each with a copy to the ``mirror`` folder: what the gateway
  received, to compare bytes with), and whatever Orthanc pushes into the
  ``inbox`` folder (``inbox-tls`` when it came over TLS with Orthanc's
  certificate subject, so arriving there proves the transport).

Every test sends instances with fresh UIDs (copies of pydicom's bundled files
in three transfer syntaxes: Explicit VR Little Endian, RLE Lossless, JPEG
Baseline), so the shared processes never see one instance twice.
"""

from __future__ import annotations

import atexit
import functools
import itertools
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid
from twisted.trial.unittest import TestCase

from tests.support import dcmtk, orthanc
from tests.support.certs import destination_tls, material, peer, tls_listener
from tests.support.datasets import bundled, dataset_bytes
from tests.support.gateway_process import GatewayProcess, dicom_destination, folder_destination, wait_until
from tests.support.interop import part10_files, shared_dir
from tests.support.orthanc import Orthanc, OrthancTLS
from tests.support.ports import free_port, port_is_open

#: The files sent in each direction: (bundled file, transfer syntax UID, storescu option proposing it).
SAMPLES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("CT_small.dcm", "1.2.840.10008.1.2.1", ()),            # Explicit VR Little Endian
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5", ("-xr",)),  # RLE Lossless
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", ("-xy",)),  # JPEG Baseline (Process 1)
)

_shared: dict[str, Any] = {}
_runs = itertools.count()
#: Processes of the current shared environment, stopped before a restart and at exit.
_started: list[Orthanc | GatewayProcess] = []


def _stop_started() -> None:
    """Stop what an earlier (failed, or since dead) start of the environment left running."""
    while _started:
        _started.pop().stop()


@functools.cache
def _stop_at_exit() -> None:
    """Register :func:`_stop_started` once, after :func:`shared_dir` (exit handlers run last first: stop, then remove)."""
    atexit.register(_stop_started)


def fresh_copies(folder: Path) -> dict[str, tuple[Path, str]]:
    """Copy each of :data:`SAMPLES` with new Study, Series and SOP Instance UIDs.

    The pixel data (compressed or not) and transfer syntax are kept; only the
    UIDs change, so instances never collide with earlier tests' in the shared
    archive, spool or duplicate window.

    :param folder: where to write them (created).
    :returns: ``{SOP Instance UID: (path, transfer syntax UID)}``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    result: dict[str, tuple[Path, str]] = {}
    for name, syntax, _option in SAMPLES:
        ds = pydicom.dcmread(bundled(name))
        assert ds.file_meta.TransferSyntaxUID == syntax, (name, ds.file_meta.TransferSyntaxUID)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        # CT_small.dcm ends with Data Set Trailing Padding (FFFC,FFFC), an element without
        # meaning (PS3.6 Table 6-1) that DCMTK-based senders (storescu, Orthanc) drop on
        # the wire; leaving it out makes every hop's bytes comparable.
        if 0xFFFCFFFC in ds:
            del ds[0xFFFCFFFC]
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        result[str(ds.SOPInstanceUID)] = (path, syntax)
    return result


def environment() -> dict[str, Any]:
    """Start (once per process) the two archives and the gateway this module shares.

    :returns: ``{"plain": Orthanc, "tls": Orthanc, "gw": GatewayProcess, "tls_port": int, "dir": Path}``.
    """
    gw = _shared.get("gw")
    if gw is not None and gw.returncode is None:
        return _shared
    _stop_started()
    _shared.clear()
    root = shared_dir("matrix-orthanc") / f"run{next(_runs)}"  # a fresh folder if an earlier start failed
    _stop_at_exit()
    m = material()
    orthanc_cert, orthanc_key = peer("orthanc", "orthanc")
    plain = Orthanc(root / "orthanc", aet="ORTHANC")
    tls = Orthanc(root / "orthanc-tls", aet="ORTHANCTLS",
                  tls=OrthancTLS(certificate=orthanc_cert, private_key=orthanc_key, trusted=m.ca))
    for archive in (plain, tls):
        _started.append(archive)
        archive.start()
    gw = GatewayProcess(root / "gw", http={"enabled": False})
    tls_port = free_port()
    while tls_port in (gw.port, plain.dicom_port, tls.dicom_port):  # none bound by us yet
        tls_port = free_port()
    gw.config["listen"] = [
        {"host": "127.0.0.1", "port": gw.port, "name": "plain"},
        tls_listener(tls_port, m, handshake_timeout="5s"),
    ]
    gw.config["audit"] = {"file": str(gw.dir / "audit.jsonl")}
    gw.config["destinations"] = {
        "orthanc": dicom_destination(plain.dicom_port, "ORTHANC"),
        "orthanc-tls": dicom_destination(
            tls.dicom_port, "ORTHANCTLS",
            tls=destination_tls(m)),
        "mirror": folder_destination(gw.dir / "mirror"),
        "inbox": folder_destination(gw.dir / "inbox"),
        "inbox-tls": folder_destination(gw.dir / "inbox-tls"),
    }
    gw.config["routes"] = [
        {"name": "to-orthanc", "match": {"calling_ae_title": "TO-ORTHANC"},
         "forward": ["orthanc", "mirror"], "final": True},
        {"name": "to-orthanc-tls", "match": {"calling_ae_title": "TO-ORTHANCTLS"},
         "forward": ["orthanc-tls", "mirror"], "final": True},
        {"name": "from-orthanc-tls",
         "match": {"calling_ae_title": "ORTHANCTLS", "listener": "tls",
                   "tls_subject": m.subject("orthanc")},
         "forward": ["inbox-tls"], "final": True},
        {"name": "from-orthanc", "match": {"calling_ae_title": ["ORTHANC", "ORTHANCTLS"], "listener": "plain"},
         "forward": ["inbox"], "final": True},
    ]
    gw.rewrite_config()
    _started.append(gw)
    gw.start()
    wait_until(lambda: port_is_open("127.0.0.1", tls_port), 15, gw.log_text)
    # Orthanc's names for the gateway: GW on the plain listener, GWTLS on the TLS one.
    for archive in (plain, tls):
        archive.declare_modality("GW", "DICOMGW", gw.port)
    tls.declare_modality("GWTLS", "DICOMGW", tls_port, use_tls=True)
    _shared.update(plain=plain, tls=tls, gw=gw, tls_port=tls_port, dir=root)
    return _shared


class OrthancMatrixMixin:
    """Helpers shared by the destination and source tests."""

    timeout = 180

    def setUp(self) -> None:
        """Start (or reuse) the shared archives and gateway."""
        env = environment()
        self.gw: GatewayProcess = env["gw"]
        self.plain: Orthanc = env["plain"]
        self.tls: Orthanc = env["tls"]
        self.tls_port: int = env["tls_port"]

    def explain(self, *archives: Orthanc) -> str:
        """The gateway's queues and the logs' tails, for a failure message.

        :param archives: the Orthanc processes involved.
        :returns: a multi-line description.
        """
        queue = self.gw.cli("queue", "list")
        text = f"{queue.stdout}{queue.stderr}\n--- gateway log ---\n{self.gw.log_text()[-4000:]}"
        for archive in archives:
            text += f"\n--- {archive.aet} log ---\n{archive.log_text()[-3000:]}"
        return text

    def folder_files(self, name: str) -> dict[str, Path]:
        """Index a folder destination's files by SOP Instance UID.

        :param name: ``mirror``, ``inbox`` or ``inbox-tls``.
        :returns: ``{uid: path}``.
        """
        return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
                for p in part10_files(self.gw.dir / name)}


def orthanc_dataset_bytes(archive: Orthanc, instance_id: str, scratch: Path) -> bytes:
    """The data set bytes (after the file meta) of an instance as Orthanc stored it.

    :param archive: the Orthanc process.
    :param instance_id: its identifier of the instance.
    :param scratch: a file path to download into.
    :returns: the bytes after group 0002.
    """
    scratch.write_bytes(archive.instance_file(instance_id))
    return dataset_bytes(scratch)


class OrthancDestinationTests(OrthancMatrixMixin, TestCase):
    """storescu -> gateway -> Orthanc (the gateway as C-STORE SCU), plain and TLS; C-ECHO to Orthanc."""

    skip = orthanc.skip_reason() or dcmtk.skip_reason("storescu")

    def forward_and_compare(self, calling_ae: str, archive: Orthanc) -> None:
        """Send the three samples with ``calling_ae``, then check Orthanc holds the gateway's exact data sets.

        :param calling_ae: selects the route (``TO-ORTHANC`` or ``TO-ORTHANCTLS``).
        :param archive: the Orthanc the route forwards to.
        """
        samples = fresh_copies(Path(self.mktemp()))  # type: ignore[attr-defined]
        for uid, (path, syntax) in samples.items():
            option = next(opt for _name, ts, opt in SAMPLES if ts == syntax)
            result = dcmtk.storescu(self.gw.port, [path], calling_ae=calling_ae, extra=option)
            self.assertEqual(result.returncode, 0, result.describe())  # type: ignore[attr-defined]
        ids = wait_until(lambda: (lambda found: found if all(found.values()) else None)(
                             {uid: archive.find_instance(uid) for uid in samples}),
                         60, lambda: "all samples in Orthanc\n" + self.explain(archive))
        mirror = wait_until(lambda: (lambda files: files if set(samples) <= set(files) else None)(
                                self.folder_files("mirror")), 30, lambda: "the mirror copies")
        scratch = Path(self.mktemp())  # type: ignore[attr-defined]
        for uid, (path, syntax) in samples.items():
            meta = archive.metadata(ids[uid])
            self.assertEqual(meta["TransferSyntax"], syntax, meta)  # type: ignore[attr-defined]
            self.assertEqual(meta["RemoteAET"], "DICOMGW", meta)  # type: ignore[attr-defined]
            self.assertEqual(archive.simplified_tags(ids[uid])["SOPInstanceUID"], uid)  # type: ignore[attr-defined]
            # Byte for byte what the gateway received from storescu (its folder copy).
            self.assertEqual(orthanc_dataset_bytes(archive, ids[uid], scratch),  # type: ignore[attr-defined]
                             dataset_bytes(mirror[uid]), f"{path.name} differs in Orthanc")
            original = pydicom.dcmread(path)
            stored = pydicom.dcmread(scratch)
            self.assertEqual(stored.PixelData, original.PixelData)  # type: ignore[attr-defined]

    def test_forward_to_orthanc_plain_keeps_data_sets_and_syntaxes(self) -> None:
        """Explicit LE, RLE and JPEG instances forwarded over plain TCP arrive in Orthanc byte-identical, in their own syntax."""
        self.forward_and_compare("TO-ORTHANC", self.plain)

    def test_forward_to_orthanc_over_mutual_tls_keeps_data_sets_and_syntaxes(self) -> None:
        """The same over DICOM TLS, the gateway presenting its certificate to Orthanc's TLS-only port."""
        self.forward_and_compare("TO-ORTHANCTLS", self.tls)
        # The control: this archive's port refuses plain DICOM, so the instances came over TLS.
        plain = dcmtk.echoscu(self.tls.dicom_port, called_ae="ORTHANCTLS")
        self.assertNotEqual(plain.returncode, 0, plain.describe())

    def test_gateway_echo_to_orthanc_plain_and_tls(self) -> None:
        """``dicom-gateway echo DEST`` succeeds against both archives (plain and TLS)."""
        for destination in ("orthanc", "orthanc-tls"):
            result = self.gw.cli("echo", destination)
            self.assertEqual(result.returncode, 0, result.describe())
        # The control: the TLS archive refuses a plain association, so the echo above did use TLS.
        plain = dcmtk.echoscu(self.tls.dicom_port, called_ae="ORTHANCTLS")
        self.assertNotEqual(plain.returncode, 0, plain.describe())


class OrthancSourceTests(OrthancMatrixMixin, TestCase):
    """Orthanc -> gateway: REST pushes (``/modalities/GW/store``) and C-ECHO, plain and TLS."""

    skip = orthanc.skip_reason()

    def push_and_compare(self, archive: Orthanc, modality: str, folder: str) -> None:
        """Upload the samples to ``archive``, push them to the gateway, check the job and the files.

        :param archive: the Orthanc that pushes.
        :param modality: Orthanc's name for the gateway (``GW`` or ``GWTLS``).
        :param folder: the folder destination the gateway's route writes to.
        """
        samples = fresh_copies(Path(self.mktemp()))  # type: ignore[attr-defined]
        ids = {uid: archive.upload(path.read_bytes()) for uid, (path, _syntax) in samples.items()}
        job = archive.store(modality, list(ids.values()))
        self.assertEqual(job["State"], "Success")  # type: ignore[attr-defined]
        self.assertEqual(job["Content"]["FailedInstancesCount"], 0, job)  # type: ignore[attr-defined]
        self.assertEqual(job["Content"]["InstancesCount"], len(samples), job)  # type: ignore[attr-defined]
        self.assertEqual(job["Content"]["RemoteAet"], "DICOMGW", job)  # type: ignore[attr-defined]
        landed = wait_until(lambda: (lambda files: files if set(samples) <= set(files) else None)(
                                self.folder_files(folder)),
                            30, lambda: f"the pushed instances in {folder}\n" + self.explain(archive))
        scratch = Path(self.mktemp())  # type: ignore[attr-defined]
        for uid, (path, syntax) in samples.items():
            received = pydicom.dcmread(landed[uid])
            self.assertEqual(received.file_meta.TransferSyntaxUID, syntax)  # type: ignore[attr-defined]
            # What Orthanc sent is what it stored; the gateway keeps it byte for byte.
            self.assertEqual(dataset_bytes(landed[uid]),  # type: ignore[attr-defined]
                             orthanc_dataset_bytes(archive, ids[uid], scratch), f"{path.name} differs")
            self.assertEqual(received.PixelData, pydicom.dcmread(path).PixelData)  # type: ignore[attr-defined]

    def test_orthanc_pushes_to_gateway_plain(self) -> None:
        """Orthanc's store job to the plain listener succeeds and the three syntaxes land unchanged."""
        self.push_and_compare(self.plain, "GW", "inbox")

    def test_orthanc_pushes_to_gateway_over_mutual_tls(self) -> None:
        """Over DICOM TLS with Orthanc's client certificate: the route keyed on its certificate subject delivers."""
        self.push_and_compare(self.tls, "GWTLS", "inbox-tls")

    def test_orthanc_echoes_gateway_plain_and_tls(self) -> None:
        """``POST /modalities/{GW,GWTLS}/echo`` succeeds; a TLS echo to the plain port fails (the control)."""
        self.plain.echo("GW")
        self.tls.echo("GW")
        self.tls.echo("GWTLS")
        self.tls.declare_modality("GWTLS-WRONG", "DICOMGW", self.gw.port, use_tls=True)
        with self.assertRaises(orthanc.OrthancError):
            self.tls.echo("GWTLS-WRONG", timeout=5)
