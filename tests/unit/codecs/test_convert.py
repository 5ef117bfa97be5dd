"""Tests for :mod:`gateway.codecs.convert`: the transfer-syntax conversions of issue 17.

The central invariant: a lossless conversion never changes a pixel value.
For every (source syntax, lossless target) pair a generated set of images
(8 and 16 bits, signed and unsigned, 1 and 3 samples, multi-frame) is
converted, and the source and the copy are both decoded (pydicom, raw: no
colour conversion) and compared array for array. Compressed sources are
made by this package's encoders (RLE, JPEG-LS, JPEG 2000), by GDCM (JPEG
lossless, process 14 and its selection value 1) and taken from pydicom's
test files (JPEG baseline, lossy JPEG 2000 and JPEG-LS).

Then: the lossy targets' PS3.3 C.7.6.1.1.5 attributes, the
:class:`ConversionError` cases (a codec missing, a corrupt fragment, data an
encoder refuses), and the memory bound of the frame-by-frame path
(tracemalloc, as a bound, not a timing).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import tracemalloc
from typing import Any, Callable

import numpy as np
import pydicom
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pixel_array
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)
from twisted.trial.unittest import SynchronousTestCase

from gateway.codecs import TARGETS, LOSSLESS_TARGETS, ConversionError, TransferSyntaxPolicy
from gateway.codecs import encode as encode_module
from gateway.codecs import frames as frames_module
from gateway.codecs.convert import convert, convert_for
from gateway.codecs.lossy import derived_uid

#: The lossless targets, by name.
TARGETS = dict(LOSSLESS_TARGETS)

#: JPEG Lossless, Non-Hierarchical (Process 14), 1.2.840.10008.1.2.4.57.
JPEG_LOSSLESS_P14 = "1.2.840.10008.1.2.4.57"

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_GRAYSCALE_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"


class Kind:
    """An image kind the matrix generates."""

    def __init__(self, name: str, bits: int, stored: int, signed: bool, samples: int, frames: int) -> None:
        self.name, self.bits, self.stored, self.signed, self.samples, self.frames = name, bits, stored, signed, samples, frames

    def array(self, rows: int = 40, columns: int = 36) -> np.ndarray:
        """Seeded random pixels covering the stored range (edges included)."""
        rng = np.random.default_rng(abs(hash(self.name)) % 2**32)
        low, high = (-(1 << (self.stored - 1)), (1 << (self.stored - 1)) - 1) if self.signed else (0, (1 << self.stored) - 1)
        shape: tuple[int, ...] = (self.frames, rows, columns) + ((self.samples,) if self.samples > 1 else ())
        dtype = f"{'i' if self.signed else 'u'}{self.bits // 8}"
        arr = rng.integers(low, high + 1, size=shape, dtype=np.int64)
        arr.flat[0], arr.flat[1] = low, high
        return arr.astype(dtype)


KINDS = [
    Kind("u8", 8, 8, False, 1, 1),
    Kind("u16-12", 16, 12, False, 1, 1),
    Kind("s16", 16, 16, True, 1, 1),
    Kind("s16-12", 16, 12, True, 1, 1),
    Kind("rgb8", 8, 8, False, 3, 1),
    Kind("u16-multiframe", 16, 16, False, 1, 3),
    Kind("rgb8-multiframe", 8, 8, False, 3, 2),
]


def write_native(path: str, kind: Kind, syntax: str = ExplicitVRLittleEndian) -> np.ndarray:
    """A Part 10 file of ``kind`` in a native ``syntax``; returns its pixels."""
    arr = kind.array()
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE if kind.frames == 1 else MULTIFRAME_GRAYSCALE_WORD_SC
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "P1"
    ds.Modality = "OT"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = arr.shape[1], arr.shape[2]
    ds.SamplesPerPixel = kind.samples
    ds.PhotometricInterpretation = "RGB" if kind.samples == 3 else "MONOCHROME2"
    if kind.samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = kind.bits, kind.stored, kind.stored - 1
    ds.PixelRepresentation = int(kind.signed)
    if kind.frames > 1:
        ds.NumberOfFrames = kind.frames
    little = syntax != ExplicitVRBigEndian
    data = arr.astype(arr.dtype.newbyteorder("<" if little else ">")).tobytes()
    ds.PixelData = data + b"\0" * (len(data) % 2)
    ds["PixelData"].VR = "OB" if kind.bits == 8 else "OW"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    ds.file_meta = meta
    if not little:
        # pydicom writes OB/OW values as given: the words were swapped above.
        ds.save_as(path, enforce_file_format=True, little_endian=False, implicit_vr=False)
    else:
        ds.save_as(path, enforce_file_format=True, little_endian=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return arr if kind.frames > 1 else arr[0]


def gdcm_convert(src: str, dst: str, syntax: str) -> None:
    """``src`` re-encoded by GDCM (an independent encoder) in ``syntax``."""
    import gdcm

    gdcm_syntax = {
        JPEG_LOSSLESS_P14: gdcm.TransferSyntax.JPEGLosslessProcess14,
        JPEGLosslessSV1: gdcm.TransferSyntax.JPEGLosslessProcess14_1,
        JPEGBaseline8Bit: gdcm.TransferSyntax.JPEGBaselineProcess1,
    }[syntax]
    reader = gdcm.ImageReader()
    reader.SetFileName(src)
    assert reader.Read(), src
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm_syntax))
    change.SetInput(reader.GetImage())
    assert change.Change(), (src, syntax)
    writer = gdcm.ImageWriter()
    writer.SetFileName(dst)
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write(), dst


def decoded(path: str) -> np.ndarray:
    """All frames of ``path``, decoded raw (stored values, no colour conversion)."""
    return pixel_array(path, raw=True)


class _Scratch(SynchronousTestCase):
    """A temporary folder per test."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.count = 0

    def path(self, name: str = "f") -> str:
        self.count += 1
        return os.path.join(self.tmp, f"{self.count}-{name}.dcm")


#: How each source syntax of the matrix is made from a native Explicit VR LE file:
#: ``(name, syntax, maker(src, dst, kind) -> bool)``; ``False``: the kind has no such encoding.
def _by_pydicom(syntax: str) -> Callable[[Any, str, str, Kind], bool]:
    def make(case: Any, src: str, dst: str, kind: Kind) -> bool:
        copy = convert(src, case.tmp, syntax)
        os.replace(copy.path, dst)
        return True

    return make


def _native(syntax: str) -> Callable[[Any, str, str, Kind], bool]:
    def make(case: Any, src: str, dst: str, kind: Kind) -> bool:
        write_native(dst, kind, syntax)
        return True

    return make


def _by_gdcm(syntax: str) -> Callable[[Any, str, str, Kind], bool]:
    def make(case: Any, src: str, dst: str, kind: Kind) -> bool:
        gdcm_convert(src, dst, syntax)
        return True

    return make


SOURCES: list[tuple[str, str, Callable[[Any, str, str, Kind], bool]]] = [
    ("explicit_le", ExplicitVRLittleEndian, _native(ExplicitVRLittleEndian)),
    ("implicit_le", ImplicitVRLittleEndian, _native(ImplicitVRLittleEndian)),
    ("explicit_be", ExplicitVRBigEndian, _native(ExplicitVRBigEndian)),
    ("rle", RLELossless, _by_pydicom(RLELossless)),
    ("jpeg_ls_lossless", JPEGLSLossless, _by_pydicom(JPEGLSLossless)),
    ("jpeg2000_lossless", JPEG2000Lossless, _by_pydicom(JPEG2000Lossless)),
    ("jpeg_lossless_sv1", JPEGLosslessSV1, _by_gdcm(JPEGLosslessSV1)),
    ("jpeg_lossless_p14", JPEG_LOSSLESS_P14, _by_gdcm(JPEG_LOSSLESS_P14)),
]


class LosslessMatrixTests(_Scratch):
    """Every (source syntax, lossless target) pair keeps every pixel value, for every generated kind."""

    def check_pair(self, source_syntax: str, make: Callable[[Any, str, str, Kind], bool], target: str) -> None:
        checked = []
        for kind in KINDS:
            base = self.path(f"{kind.name}-native")
            expected = write_native(base, kind)
            src = self.path(f"{kind.name}-source")
            make(self, base, src, kind)
            self.assertEqual(str(dcmread(src, stop_before_pixels=True).file_meta.TransferSyntaxUID), source_syntax)
            np.testing.assert_array_equal(decoded(src), expected, err_msg=f"source {kind.name}")
            result = convert_for(TransferSyntaxPolicy(target), src, self.tmp)
            self.assertEqual(result.transfer_syntax_uid, TARGETS[target])
            out = dcmread(result.path, stop_before_pixels=True)
            self.assertEqual(str(out.file_meta.TransferSyntaxUID), TARGETS[target], kind.name)
            self.assertEqual(out.SOPInstanceUID, dcmread(src, stop_before_pixels=True).SOPInstanceUID)
            self.assertNotIn("LossyImageCompression", out, kind.name)
            np.testing.assert_array_equal(decoded(result.path), decoded(src), err_msg=f"{kind.name} -> {target}")
            checked.append(kind.name)
        self.assertEqual(len(checked), len(KINDS))


def _add_matrix() -> None:
    for source_name, source_syntax, make in SOURCES:
        for target in TARGETS:

            def test(self: LosslessMatrixTests, s: str = source_syntax, m: Any = make, t: str = target) -> None:
                self.check_pair(s, m, t)

            test.__doc__ = f"{source_name} -> {target}: every kind decodes to the same pixels."
            name = f"test_{source_name}_to_{target.replace('-', '_')}"
            test.__name__ = name
            setattr(LosslessMatrixTests, name, test)


_add_matrix()


class PydicomTestFileTests(_Scratch):
    """Compressed inputs from pydicom's test files (other encoders than ours), to every lossless target."""

    FILES = [
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL (DCMTK)
        "examples_ybr_color.dcm",  # JPEG baseline, YBR_FULL_422, 30 frames
        "SC_rgb_jpeg_gdcm.dcm",  # JPEG baseline, RGB
        "JPEG2000.dcm",  # JPEG 2000 (lossy)
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "JPEGLSNearLossless_16.dcm",
        "MR_small_RLE.dcm",
        "SC_rgb_rle_2frame.dcm",
        "SC_rgb_rle_16bit_2frame.dcm",
        "SC_ybr_full_422_uncompressed.dcm",
        "MR_small_bigendian.dcm",
    ]

    #: Pairs an encoder refuses (a ConversionError, checked below): OpenJPEG does not take this 16-bit JPEG-LS data.
    REFUSED = {("JPEGLSNearLossless_16.dcm", "jpeg2000-lossless")}

    def test_every_file_to_every_lossless_target(self) -> None:
        """Decoded source and copy are equal; a source that was lossy keeps Lossy Image Compression 01."""
        done = 0
        for name in self.FILES:
            src = get_testdata_file(name, download=False)
            assert src is not None, name
            source_syntax = str(dcmread(src, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            for target, uid in TARGETS.items():
                if (name, target) in self.REFUSED:
                    self.assertRaises(ConversionError, convert_for, TransferSyntaxPolicy(target), src, self.tmp)
                    continue
                result = convert_for(TransferSyntaxPolicy(target), src, self.tmp)
                np.testing.assert_array_equal(decoded(result.path), decoded(src), err_msg=f"{name} -> {target}")
                out = dcmread(result.path, stop_before_pixels=True)
                self.assertEqual(str(out.file_meta.TransferSyntaxUID), uid)
                if source_syntax in (JPEGBaseline8Bit, JPEG2000, JPEGLSNearLossless):
                    self.assertEqual(out.LossyImageCompression, "01", name)
                done += 1
        self.assertEqual(done, len(self.FILES) * len(TARGETS) - len(self.REFUSED))

    def test_same_syntax_is_the_spool_file(self) -> None:
        """An instance already in the target syntax is sent as it is, no copy."""
        src = get_testdata_file("MR_small_RLE.dcm", download=False)
        result = convert_for(TransferSyntaxPolicy("rle"), src, self.tmp)
        self.assertEqual((result.path, result.temporary), (src, False))
        self.assertEqual(os.listdir(self.tmp), [])

    def test_preserve_is_the_spool_file(self) -> None:
        """``preserve`` never converts."""
        src = get_testdata_file("JPEG2000.dcm", download=False)
        result = convert_for(TransferSyntaxPolicy(), src, self.tmp)
        self.assertEqual((result.path, result.temporary, result.transfer_syntax_uid), (src, False, JPEG2000))

    def test_non_pixel_elements_are_kept(self) -> None:
        """Every element but the pixel data survives, values equal (sequences included)."""
        src = get_testdata_file("MR_small_bigendian.dcm", download=False)
        result = convert_for(TransferSyntaxPolicy("jpeg2000-lossless"), src, self.tmp)
        before, after = dcmread(src), dcmread(result.path)
        for element in before:
            if element.tag in (0x7FE00010,):
                continue
            self.assertEqual(after[element.tag].value, element.value, str(element.tag))


class EncapsulationTests(_Scratch):
    """The encapsulated pixel data written (PS3.5 A.4): one fragment per frame, a filled Basic Offset Table."""

    def test_offsets_point_at_each_frame_item(self) -> None:
        """The table has one offset per frame; each, from the first item after it, lands on an item tag; fragments are even."""
        import struct

        src = self.path()
        write_native(src, KINDS[5])  # 3 frames
        result = convert_for(TransferSyntaxPolicy("rle"), src, self.tmp)
        data = open(result.path, "rb").read()
        start = data.index(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff") + 12
        tag, length = struct.unpack_from("<4sL", data, start)
        self.assertEqual((tag, length), (b"\xfe\xff\x00\xe0", 4 * 3))
        offsets = struct.unpack_from("<3L", data, start + 8)
        first = start + 8 + length
        self.assertEqual(offsets[0], 0)
        position = first
        for offset in offsets:
            self.assertEqual(first + offset, position)
            tag, size = struct.unpack_from("<4sL", data, position)
            self.assertEqual(tag, b"\xfe\xff\x00\xe0")
            self.assertEqual(size % 2, 0)
            position += 8 + size
        self.assertEqual(data[position : position + 8], b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")


class NoPixelDataTests(_Scratch):
    """An instance without Pixel Data has nothing to compress."""

    def test_native_report_is_sent_as_is(self) -> None:
        """A structured report in a native syntax goes as it is when the peer takes that syntax."""
        src = get_testdata_file("test-SR.dcm", download=False)
        syntax = str(dcmread(src, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        result = convert_for(TransferSyntaxPolicy("jpeg2000-lossless"), src, self.tmp, accepted=[syntax])
        self.assertEqual((result.path, result.temporary), (src, False))

    def test_report_in_a_refused_syntax_becomes_explicit_le(self) -> None:
        """When the peer does not take its syntax the report is re-encoded in Explicit VR LE, values kept."""
        src = get_testdata_file("test-SR.dcm", download=False)
        result = convert_for(TransferSyntaxPolicy("rle"), src, self.tmp, accepted=[ExplicitVRLittleEndian])
        if str(dcmread(src).file_meta.TransferSyntaxUID) == ExplicitVRLittleEndian:
            self.assertFalse(result.temporary)
        else:
            self.assertTrue(result.temporary)
        out = dcmread(result.path)
        self.assertEqual(str(out.file_meta.TransferSyntaxUID), ExplicitVRLittleEndian)
        self.assertEqual(out.ContentSequence, dcmread(src).ContentSequence)


class LossyTests(_Scratch):
    """Lossy targets: PS3.3 C.7.6.1.1.5 attributes and a new, stable SOP Instance UID."""

    def test_lossy_target_needs_lossy_true(self) -> None:
        """A lossy target without ``lossy`` is refused even if the config check was bypassed."""
        src = self.path()
        write_native(src, KINDS[1])
        self.assertRaises(ConversionError, convert_for, TransferSyntaxPolicy("jpeg2000"), src, self.tmp)

    def check_lossy(self, target: str, method: str) -> None:
        src = self.path()
        expected = write_native(src, Kind("ct", 16, 12, False, 1, 2))
        source = dcmread(src)
        result = convert_for(TransferSyntaxPolicy(target, lossy=True), src, self.tmp)
        out = dcmread(result.path)
        self.assertEqual(str(out.file_meta.TransferSyntaxUID), TransferSyntaxPolicy(target, True).transfer_syntax_uid)
        self.assertEqual(out.LossyImageCompression, "01")
        self.assertEqual(out.LossyImageCompressionMethod, method)
        ratio = float(out.LossyImageCompressionRatio)
        fragments = os.path.getsize(result.path)
        self.assertGreater(ratio, 1.0)
        self.assertLess(ratio, expected.nbytes)  # a real ratio, not a placeholder
        self.assertEqual(out.ImageType[0], "DERIVED")
        self.assertNotEqual(out.SOPInstanceUID, source.SOPInstanceUID)
        self.assertEqual(out.SOPInstanceUID, result.sop_instance_uid)
        self.assertEqual(out.file_meta.MediaStorageSOPInstanceUID, out.SOPInstanceUID)
        self.assertEqual(out.SOPInstanceUID, derived_uid(source.SOPInstanceUID, out.file_meta.TransferSyntaxUID))
        self.assertTrue(out.SOPInstanceUID.startswith("2.25.") and len(out.SOPInstanceUID) <= 64)
        (reference,) = out.SourceImageSequence
        self.assertEqual(
            (reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID),
            (source.SOPClassUID, source.SOPInstanceUID),
        )
        self.assertEqual(reference.PurposeOfReferenceCodeSequence[0].CodeValue, "121320")
        self.assertEqual(out.DerivationCodeSequence[0].CodeValue, "113040")
        self.assertEqual(decoded(result.path).shape, expected.shape)
        self.assertGreater(fragments, 0)
        # The same entry converted again gets the same UID (a retried send is the same copy).
        again = convert_for(TransferSyntaxPolicy(target, lossy=True), src, self.tmp)
        self.assertEqual(again.sop_instance_uid, result.sop_instance_uid)
        # The source is untouched.
        self.assertEqual(dcmread(src).SOPInstanceUID, source.SOPInstanceUID)

    def test_jpeg2000(self) -> None:
        """Lossy JPEG 2000: ISO_15444_1, the ratio, DERIVED, new UID, the source referenced."""
        self.check_lossy("jpeg2000", "ISO_15444_1")

    def test_jpeg_ls_near_lossless(self) -> None:
        """JPEG-LS near-lossless: ISO_14495_1, and every sample within NEAR of the source."""
        self.check_lossy("jpeg-ls-near-lossless", "ISO_14495_1")
        src = self.path()
        expected = write_native(src, KINDS[1])
        result = convert_for(TransferSyntaxPolicy("jpeg-ls-near-lossless", True), src, self.tmp)
        self.assertLessEqual(int(np.abs(decoded(result.path).astype(np.int64) - expected).max()), encode_module.JLS_NEAR)

    def test_second_lossy_step_appends(self) -> None:
        """A lossy source compressed again keeps its first ratio and method and adds the new ones."""
        src = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm", download=False)
        result = convert_for(TransferSyntaxPolicy("jpeg2000", True), src, self.tmp)
        out = dcmread(result.path)
        self.assertEqual(list(out.LossyImageCompressionMethod)[-1], "ISO_15444_1")
        self.assertEqual(len(out.LossyImageCompressionRatio), len(out.LossyImageCompressionMethod))
        self.assertGreaterEqual(len(out.LossyImageCompressionMethod), 2)

    def test_jpeg_baseline_is_no_target(self) -> None:
        """JPEG baseline has no encoder among the codecs, so it is not a target the loader accepts."""
        self.assertNotIn("jpeg-baseline", TARGETS)
        self.assertNotIn("1.2.840.10008.1.2.4.50", {TransferSyntaxPolicy(t, True).transfer_syntax_uid for t in TARGETS})


class ConversionErrorTests(_Scratch):
    """What the codecs cannot do is a ConversionError (a dead letter), never another exception; no copy is left."""

    def left(self) -> list[str]:
        return [n for n in os.listdir(self.tmp) if n.startswith("convert-")]

    def test_decoder_missing(self) -> None:
        """A source syntax whose decoder has no plugin installed."""

        class Unavailable:
            is_available = False
            is_native = False
            is_encapsulated = True
            available_plugins: list[str] = []
            missing_dependencies = ["a codec"]

        self.patch(frames_module, "get_decoder", lambda uid: Unavailable())
        src = get_testdata_file("MR_small_RLE.dcm", download=False)
        with self.assertRaises(ConversionError) as raised:
            convert_for(TransferSyntaxPolicy("uncompressed"), src, self.tmp)
        self.assertIn("no decoder available", str(raised.exception))
        self.assertEqual(self.left(), [])

    def test_encoder_missing(self) -> None:
        """A target whose encoder has no plugin installed."""

        class Unavailable:
            is_available = False

        self.patch(encode_module, "get_encoder", lambda uid: Unavailable())
        src = get_testdata_file("MR_small.dcm", download=False)
        with self.assertRaises(ConversionError) as raised:
            convert_for(TransferSyntaxPolicy("jpeg-ls-lossless"), src, self.tmp)
        self.assertIn("no encoder available", str(raised.exception))
        self.assertEqual(self.left(), [])

    def test_jpeg_12_bit_without_the_gpl_codec(self) -> None:
        """12-bit JPEG extended needs pylibjpeg-libjpeg (GPL, optional): without it a ConversionError."""
        src = get_testdata_file("JPGExtended.dcm", download=False)
        try:
            import libjpeg  # noqa: F401
        except ImportError:
            self.assertRaises(ConversionError, convert_for, TransferSyntaxPolicy("uncompressed"), src, self.tmp)
            self.assertEqual(self.left(), [])
        else:
            result = convert_for(TransferSyntaxPolicy("uncompressed"), src, self.tmp)
            np.testing.assert_array_equal(decoded(result.path), decoded(src))

    def corrupt(self, syntax: str) -> str:
        """A multi-frame file in ``syntax`` whose second fragment's bytes are garbage."""
        base = self.path()
        write_native(base, KINDS[5])
        good = convert(base, self.tmp, syntax).path
        data = bytearray(open(good, "rb").read())
        os.unlink(good)
        # The second fragment item: (FFFE,E000) after the offset table and the first fragment.
        first = data.index(b"\xfe\xff\x00\xe0", data.index(b"\xe0\x7f\x10\x00"))
        second = data.index(b"\xfe\xff\x00\xe0", first + 8)
        third = data.index(b"\xfe\xff\x00\xe0", second + 8)
        for i in range(third + 8, third + 8 + 40):
            data[i] = 0xFF if syntax != RLELossless else 0x7F
        bad = self.path("corrupt")
        with open(bad, "wb") as f:
            f.write(bytes(data))
        return bad

    def test_corrupt_fragment(self) -> None:
        """Corrupt compressed data, in each compressed syntax, is a ConversionError."""
        for syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
            bad = self.corrupt(syntax)
            with self.assertRaises(ConversionError, msg=syntax):
                convert_for(TransferSyntaxPolicy("uncompressed"), bad, self.tmp)
            self.assertEqual(self.left(), [], syntax)

    def test_encoder_refuses_32_bit(self) -> None:
        """32-bit data that the encoders do not take (RT Dose) is a ConversionError; uncompressed works."""
        src = get_testdata_file("rtdose.dcm", download=False)
        for target in ("rle", "jpeg-ls-lossless", "jpeg2000-lossless"):
            self.assertRaises(ConversionError, convert_for, TransferSyntaxPolicy(target), src, self.tmp)
        result = convert_for(TransferSyntaxPolicy("uncompressed"), src, self.tmp)
        np.testing.assert_array_equal(decoded(result.path), decoded(src))

    def test_decoder_that_ends_its_process(self) -> None:
        """GDCM calls std::terminate on this corrupt JPEG: decoded in a child process, it is a ConversionError
        and this process lives on; the next conversion gets a new worker."""
        from gateway.codecs import isolate

        self.addCleanup(isolate.shutdown)
        src = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm", download=False)
        data = bytearray(open(src, "rb").read())
        start = data.index(b"\xff\xd8")
        data[start + 200 : start + 260] = b"\xff" * 60
        bad = self.path("corrupt-jpeg")
        with open(bad, "wb") as f:
            f.write(bytes(data))
        with self.assertRaises(ConversionError) as raised:
            convert_for(TransferSyntaxPolicy("rle"), bad, self.tmp)
        self.assertIn("ended its process", str(raised.exception))
        self.assertEqual(self.left(), [])
        good = convert_for(TransferSyntaxPolicy("rle"), src, self.tmp)
        np.testing.assert_array_equal(decoded(good.path), decoded(src))

    def test_jpeg2000_needs_32_pixels(self) -> None:
        """OpenJPEG's fixed 6 resolution levels need 32 rows and columns: a smaller image is a ConversionError."""
        src = self.path("tiny")
        kind = Kind("tiny", 8, 8, False, 1, 1)
        tiny = kind.array(16, 16)
        kind.array = lambda rows=0, columns=0: tiny  # type: ignore[method-assign]
        write_native(src, kind)
        self.assertRaises(ConversionError, convert_for, TransferSyntaxPolicy("jpeg2000-lossless"), src, self.tmp)
        self.assertEqual(self.left(), [])

    def test_frame_over_the_limit(self) -> None:
        """A header announcing frames over MAX_FRAME_BYTES is refused before anything is decoded."""
        from gateway.codecs import convert as convert_module

        src = get_testdata_file("MR_small_RLE.dcm", download=False)  # 64 x 64 x 16 bit: 8 KiB a frame
        self.patch(convert_module, "MAX_FRAME_BYTES", 8 * 1024 - 1)
        self.patch(frames_module, "get_decoder", lambda uid: self.fail("decoded despite the limit"))
        with self.assertRaises(ConversionError) as raised:
            convert_module.convert(src, self.tmp, ExplicitVRLittleEndian)
        self.assertIn("over the", str(raised.exception))
        self.assertEqual(self.left(), [])

    def test_deflated_source(self) -> None:
        """A Deflated Explicit VR LE source (offsets are in the inflated stream) is not converted: ConversionError."""
        src = get_testdata_file("image_dfl.dcm", download=False)
        self.assertRaises(ConversionError, convert_for, TransferSyntaxPolicy("rle"), src, self.tmp)
        self.assertEqual(self.left(), [])

    def test_not_dicom(self) -> None:
        """A file that is not DICOM is a ConversionError."""
        bad = self.path("text")
        with open(bad, "wb") as f:
            f.write(b"not dicom at all" * 20)
        self.assertRaises(ConversionError, convert_for, TransferSyntaxPolicy("rle"), bad, self.tmp)

    def test_missing_file_is_not_a_conversion_error(self) -> None:
        """A missing spool file is the sender's retry: FileNotFoundError, not ConversionError."""
        self.assertRaises(FileNotFoundError, convert_for, TransferSyntaxPolicy("rle"), self.path("gone"), self.tmp)


class MemoryBoundTests(_Scratch):
    """Frame by frame: the memory a conversion needs does not grow with the number of frames (tracemalloc, as a bound)."""

    ROWS = COLUMNS = 256  # 128 KiB a frame

    def instance(self, frames: int) -> str:
        """A native multi-frame instance of smooth 12-bit data (the encoders work as on images)."""
        rng = np.random.default_rng(7)
        arr = (np.cumsum(rng.integers(-3, 4, size=(frames, self.ROWS, self.COLUMNS)), axis=2) % 4096).astype("u2")
        kind = Kind(f"big{frames}", 16, 16, False, 1, frames)
        kind.array = lambda rows=0, columns=0: arr  # type: ignore[method-assign]
        src = self.path(f"big{frames}")
        write_native(src, kind)
        return src

    def peaks(self, src: str, target: str) -> tuple[int, int]:
        """Traced peaks of native -> ``target`` and back."""
        tracemalloc.start()
        try:
            encoded = convert_for(TransferSyntaxPolicy(target), src, self.tmp)
            _, peak_encode = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            back = convert_for(TransferSyntaxPolicy("uncompressed"), encoded.path, self.tmp)
            _, peak_decode = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        np.testing.assert_array_equal(decoded(back.path), decoded(src))
        os.unlink(encoded.path)
        os.unlink(back.path)
        return peak_encode, peak_decode

    def test_peak_does_not_grow_with_frames(self) -> None:
        """For each compressed target, 96 frames (12 MiB) need no more than 24 frames (+ 2 frames' slack),
        and both stay under 16 frames' worth: one frame in flight, with the codec's working copies."""
        frame = self.ROWS * self.COLUMNS * 2
        small, large = self.instance(24), self.instance(96)
        for target in ("rle", "jpeg2000-lossless", "jpeg-ls-lossless"):
            small_peaks = self.peaks(small, target)
            large_peaks = self.peaks(large, target)
            for label, few, many in zip(("encode", "decode"), small_peaks, large_peaks):
                self.assertLess(many, few + 2 * frame, f"{target} {label}: {few} bytes for 24 frames, {many} for 96")
                self.assertLess(many, 16 * frame, f"{target} {label}: {many} bytes")
