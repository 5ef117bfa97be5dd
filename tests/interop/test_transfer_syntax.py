"""Transfer syntax per destination against real peers (issue 17).

The real gateway (``python -m gateway run``) receives instances from DCMTK
``storescu`` (native and compressed) and forwards them to bit-preserving
DCMTK ``storescp +B +xa`` peers, one per policy: ``uncompressed``,
``jpeg2000-lossless``, ``jpeg-ls-lossless``, ``rle``. What each peer wrote is
in the policy's syntax (its file meta is the accepted presentation
context's syntax), and decodes to the source's pixels: RLE with DCMTK's
``dcmdrle`` and JPEG-LS with ``dcmdjpls`` (decoders independent of the
gateway's), JPEG 2000 with pydicom through GDCM (DCMTK has no free JPEG 2000
codec), and the uncompressed copy as it is. An instance the codecs cannot
convert is a dead letter with reason ``conversion`` while the others are
delivered.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.pixels import pixel_array
from twisted.trial.unittest import TestCase

from gateway.queue.outcome import DeadLetterKind
from tests.support import dcmtk
from tests.support.gateway_process import dicom_destination
from tests.support.interop import ForwardTestMixin
from tests.unit.codecs.test_convert import Kind, write_native

#: Policy -> the transfer syntax UID its peer must receive.
POLICIES = {
    "uncompressed": "1.2.840.10008.1.2.1",
    "jpeg2000-lossless": "1.2.840.10008.1.2.4.90",
    "jpeg-ls-lossless": "1.2.840.10008.1.2.4.80",
    "rle": "1.2.840.10008.1.2.5",
}

#: Compressed sources from pydicom's test files, with the storescu option proposing their syntax:
#: JPEG baseline (YBR_FULL_422, 30 frames), RLE, JPEG 2000 lossless.
COMPRESSED_SOURCES = {"examples_ybr_color.dcm": "-xy", "SC_rgb_rle_2frame.dcm": "-xr", "MR_small_jp2klossless.dcm": "-xv"}


def decoded_by_dcmtk(path: Path, tool: str, folder: Path) -> np.ndarray:
    """``path`` decompressed by a DCMTK tool into Explicit VR LE, then read as it is (native)."""
    out = folder / f"{path.name}.{tool}.dcm"
    result = subprocess.run([tool, "+te", str(path), str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, (tool, result.stdout, result.stderr)
    assert str(pydicom.dcmread(out, stop_before_pixels=True).file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.1"
    return pixel_array(str(out), raw=True)


class TransferSyntaxPolicyTests(ForwardTestMixin, TestCase):
    """One route to four storescp peers, each with its own ``transfer_syntax``."""

    skip = dcmtk.skip_reason("storescu", "storescp", "dcmdrle", "dcmdjpls")
    timeout = 300

    def sources(self) -> tuple[Path, dict[str, np.ndarray]]:
        """A folder of generated native instances, the compressed test files, and every one's decoded pixels by UID."""
        base = Path(self.mktemp()).resolve()
        folder = base / "native"
        folder.mkdir(parents=True)
        pixels: dict[str, np.ndarray] = {}
        kinds = [
            Kind("ct16", 16, 12, False, 1, 1),
            Kind("signed16", 16, 16, True, 1, 1),
            Kind("rgb8", 8, 8, False, 3, 1),
            Kind("multiframe16", 16, 16, False, 1, 5),
        ]
        for kind in kinds:
            path = folder / f"{kind.name}.dcm"
            write_native(str(path), kind)
        for name in COMPRESSED_SOURCES:
            src = get_testdata_file(name, download=False)
            assert src is not None
            shutil.copy(src, base / name)
        for path in [*folder.iterdir(), *(base / name for name in COMPRESSED_SOURCES)]:
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            pixels[uid] = pixel_array(str(path), raw=True)
        return folder, pixels

    def test_each_peer_gets_its_syntax_with_the_same_pixels(self) -> None:
        """Every instance reaches every peer in the peer's syntax and decodes (DCMTK where it can) to the source's pixels."""
        folder, expected = self.sources()
        base = folder.parent
        peers = {policy: self.storescp(policy.replace("-", "_")) for policy in POLICIES}
        gateway = self.start_gateway(
            destinations={
                policy.replace("-", "_"): dicom_destination(peer.port, transfer_syntax=policy)
                for policy, peer in peers.items()
            },
            routes=[{"name": "all", "forward": [p.replace("-", "_") for p in POLICIES]}],
        )
        result = dcmtk.storescu(gateway.port, [folder], extra=["+sd"])
        self.assertEqual(result.returncode, 0, result.describe())
        # Each compressed file with the option proposing its own syntax: the gateway receives it as it is.
        for name, option in COMPRESSED_SOURCES.items():
            result = dcmtk.storescu(gateway.port, [base / name], extra=[option])
            self.assertEqual(result.returncode, 0, result.describe())
        count = len(expected)
        self.wait_for(gateway, lambda: all(len(peer.files()) == count for peer in peers.values()),
                      180, f"{count} files at each of the four peers")
        scratch = Path(self.mktemp()).resolve()
        scratch.mkdir(parents=True)
        for policy, peer in peers.items():
            for path in peer.files():
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                self.assertEqual(str(ds.file_meta.TransferSyntaxUID), POLICIES[policy], f"{policy}: {path.name}")
                if policy == "rle":
                    arr = decoded_by_dcmtk(path, "dcmdrle", scratch)
                elif policy == "jpeg-ls-lossless":
                    arr = decoded_by_dcmtk(path, "dcmdjpls", scratch)
                elif policy == "jpeg2000-lossless":
                    arr = pixel_array(str(path), raw=True, decoding_plugin="gdcm")
                else:
                    arr = pixel_array(str(path), raw=True)
                np.testing.assert_array_equal(arr, expected[str(ds.SOPInstanceUID)], err_msg=f"{policy}: {path.name}")
        rows = self.wait_for(gateway, lambda: (r := gateway.queue_rows()) and all(
            row["delivered"] == count for row in r.values()) and r, 20, "everything delivered")
        self.assertEqual({name: row["dead"] for name, row in rows.items()}, {p.replace("-", "_"): 0 for p in POLICIES})
        # No converted copy is left behind in the spool's scratch folder.
        self.assertEqual(sorted(Path(gateway.spool).rglob("convert-*")), [])

    def test_unconvertible_instance_is_a_conversion_dead_letter(self) -> None:
        """32-bit RT Dose has no RLE encoding here: dead letter ``conversion``; the CT beside it is delivered as RLE."""
        folder = Path(self.mktemp()).resolve()
        folder.mkdir(parents=True)
        dose = get_testdata_file("rtdose.dcm", download=False)
        assert dose is not None
        shutil.copy(dose, folder / "rtdose.dcm")
        write_native(str(folder / "ct.dcm"), Kind("ct", 16, 12, False, 1, 1))
        peer = self.storescp("rle")
        gateway = self.start_gateway(
            destinations={"rle": dicom_destination(peer.port, transfer_syntax="rle")},
            routes=[{"name": "all", "forward": ["rle"]}],
        )
        result = dcmtk.storescu(gateway.port, [folder], extra=["+sd"])
        self.assertEqual(result.returncode, 0, result.describe())
        dead = self.wait_for(gateway, lambda: gateway.dead_letters(), 60, "a dead letter")
        self.wait_for(gateway, lambda: len(peer.files()) == 1, 60, "the CT at the peer")
        (letter,) = dead
        self.assertTrue(letter["dead_reason"].startswith("cannot convert to rle"), letter["dead_reason"])
        self.assertIs(DeadLetterKind.of_reason(letter["dead_reason"]), DeadLetterKind.CONVERSION)
        self.assertEqual(letter["instance"]["modality"], "RTDOSE")
        (received,) = peer.files()
        self.assertEqual(str(pydicom.dcmread(received, stop_before_pixels=True).file_meta.TransferSyntaxUID), POLICIES["rle"])
        self.assertIsNone(gateway._proc.poll())  # the gateway lives on
