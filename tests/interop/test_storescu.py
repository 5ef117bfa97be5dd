"""``storescu`` (DCMTK) sending to the gateway running as a real process.

Every instance the gateway acknowledges must be spooled with exactly the
data-set bytes the sender put on the wire.  ``storescu`` may re-encode a file
while sending it, so the reference is what ``storescp +B`` (bit-preserving)
writes from an identical send: same file, same ``storescu`` options.  Each
spooled file must also be readable by pydicom, with the negotiated transfer
syntax in its file meta.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)
from twisted.trial.unittest import TestCase

from tests.support import dcmtk
from tests.support.datasets import (
    BUNDLED,
    bundled,
    dataset_bytes,
    dataset_digest,
    dataset_offset,
    write_instance,
    write_multiframe,
)
from tests.support.gateway_process import GatewayProcess
from tests.support.interop import GatewayTestMixin, index_by_sop_instance, shared_dir


def _series(count: int, size: int) -> Path:
    """Write (once per process) ``count`` CT instances of one series into a directory.

    :param count: number of instances.
    :param size: approximate size of each, in bytes.
    :returns: the directory.
    """
    folder = shared_dir(f"series-{count}-{size}")
    if not any(folder.iterdir()):
        study, series = generate_uid(), generate_uid()
        for i in range(count):
            write_instance(folder / f"ct{i:04d}.dcm", ExplicitVRLittleEndian, size, seed=i,
                           study_instance_uid=study, series_instance_uid=series)
    return folder


def _multiframe(total_bytes: int) -> Path:
    """Write (once per process) one large multi-frame instance.

    :param total_bytes: approximate size in bytes.
    :returns: its path.
    """
    path = shared_dir(f"multiframe-{total_bytes}") / "mf.dcm"
    if not path.exists():
        write_multiframe(path, total_bytes)
    return path


class StorescuTests(GatewayTestMixin, TestCase):
    """C-STORE from DCMTK storescu: transfer syntaxes, many instances, a large one."""

    skip = dcmtk.skip_reason("storescu", "storescp")
    timeout = 600

    def _reference(self, files: list[Path], options: list[str]) -> dict[str, Path]:
        """Send the same files with the same options to ``storescp +B``.

        :param files: what to send.
        :param options: extra storescu options.
        :returns: storescp's received files by SOP Instance UID.
        """
        with dcmtk.Storescp(self.mktemp()) as scp:
            result = dcmtk.storescu(scp.port, files, called_ae=scp.ae_title, extra=options)
            self.assertEqual(result.returncode, 0, result.describe() + scp.log_text())
            scp.stop()
            return index_by_sop_instance(scp.files())

    def _send_and_compare(
        self, files: list[Path], options: list[str], gateway: GatewayProcess | None = None
    ) -> dict[str, Path]:
        """Send files to the gateway and to storescp; compare spooled data sets byte for byte.

        :param files: what to send (one association).
        :param options: extra storescu options (same for both sends).
        :param gateway: a running gateway, or ``None`` to start one.
        :returns: the gateway's spooled files by SOP Instance UID.
        """
        gateway = gateway or self.start_gateway()
        result = dcmtk.storescu(gateway.port, files, extra=options)
        self.assertEqual(result.returncode, 0, result.describe() + gateway.log_text())
        self.assertEqual(gateway.incoming(), [], "temporary files left in incoming/")
        spooled = index_by_sop_instance(gateway.instances())
        reference = self._reference(files, options)
        self.assertEqual(sorted(spooled), sorted(reference))
        for uid, path in spooled.items():
            self.assertEqual(
                dataset_digest(path), dataset_digest(reference[uid]),
                f"{uid}: spooled data set differs from what storescp +B received",
            )
        return spooled

    def _check_one(self, source: Path, options: list[str], transfer_syntax: str) -> None:
        """Send one file, check byte identity, the file meta's syntax and pydicom readability.

        :param source: the file to send.
        :param options: storescu options selecting the transfer syntax.
        :param transfer_syntax: the syntax the instance must be stored in.
        """
        spooled = self._send_and_compare([source], options)
        self.assertEqual(len(spooled), 1)
        (uid, path), = spooled.items()
        original = pydicom.dcmread(source)
        stored = pydicom.dcmread(path)
        self.assertEqual(stored.file_meta.TransferSyntaxUID, transfer_syntax)
        self.assertEqual(uid, original.SOPInstanceUID)
        self.assertEqual(stored.SOPClassUID, original.SOPClassUID)
        self.assertEqual(stored.PixelData, original.PixelData)

    def test_one_file(self) -> None:
        """One CT instance sent with storescu's defaults is spooled byte-identical and readable."""
        source = write_instance(Path(self.mktemp()), ExplicitVRLittleEndian, 64 * 1024)
        self._check_one(source, [], ExplicitVRLittleEndian)

    def test_implicit_vr_little_endian(self) -> None:
        """An instance sent in Implicit VR Little Endian (storescu -xi) is spooled as such."""
        source = write_instance(Path(self.mktemp()), ImplicitVRLittleEndian, 64 * 1024)
        self._check_one(source, ["-xi"], ImplicitVRLittleEndian)

    def test_explicit_vr_little_endian(self) -> None:
        """An instance sent in Explicit VR Little Endian (storescu -xe) is spooled as such."""
        source = write_instance(Path(self.mktemp()), ExplicitVRLittleEndian, 64 * 1024)
        self._check_one(source, ["-xe"], ExplicitVRLittleEndian)

    def test_explicit_vr_big_endian(self) -> None:
        """An instance sent in Explicit VR Big Endian (storescu -xb) is spooled as such."""
        source = write_instance(Path(self.mktemp()), ExplicitVRBigEndian, 64 * 1024)
        self._check_one(source, ["-xb"], ExplicitVRBigEndian)

    def test_bundled_big_endian_file(self) -> None:
        """pydicom's real big-endian MR file (storescu -xb) is spooled byte-identical."""
        self._check_one(bundled(BUNDLED[ExplicitVRBigEndian]), ["-xb"], ExplicitVRBigEndian)

    def test_rle_lossless(self) -> None:
        """An RLE Lossless instance (storescu -xr) is spooled compressed, byte-identical."""
        self._check_one(bundled(BUNDLED[RLELossless]), ["-xr"], RLELossless)

    def test_jpeg_baseline(self) -> None:
        """A JPEG Baseline instance (storescu -xy) is spooled compressed, byte-identical."""
        self._check_one(bundled(BUNDLED[JPEGBaseline8Bit]), ["-xy"], JPEGBaseline8Bit)

    def test_two_hundred_files_in_one_association(self) -> None:
        """200 instances sent in one association are all spooled byte-identical."""
        folder = _series(200, 8 * 1024)
        files = sorted(folder.iterdir())
        gateway = self.start_gateway()
        result = dcmtk.storescu(gateway.port, files, extra=["-v"])
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertEqual(result.output.count("Association Accepted"), 1, result.describe())
        self.assertEqual(result.output.count("Received Store Response (Success)"), 200)
        spooled = index_by_sop_instance(gateway.instances())
        self.assertEqual(len(spooled), 200)
        reference = self._reference(files, [])
        self.assertEqual(sorted(spooled), sorted(reference))
        for uid, path in spooled.items():
            self.assertEqual(dataset_bytes(path), dataset_bytes(reference[uid]), uid)

    def test_two_hundred_megabyte_multiframe_instance(self) -> None:
        """A 200 MB multi-frame instance is spooled byte-identical and its header reads back."""
        source = _multiframe(200 * 1024 * 1024)
        spooled = self._send_and_compare([source], [])
        (path,) = spooled.values()
        stored = pydicom.dcmread(path, defer_size=1024)
        self.assertEqual(int(stored.NumberOfFrames), 400)  # 512 x 512 x 16 bit frames
        # storescu sends this explicit-LE, unpadded file unchanged: nothing lost on the way.
        self.assertEqual(path.stat().st_size - dataset_offset(path),
                         source.stat().st_size - dataset_offset(source))
