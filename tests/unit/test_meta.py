"""Tests for :mod:`gateway.meta` (PS3.10 7.1 File Meta Information)."""

from __future__ import annotations

import io
import struct
import warnings

import pydicom
from twisted.trial.unittest import SynchronousTestCase

from gateway.meta import encode_file_meta, file_meta_end, read_part10_header

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
IMPL_UID = "1.2.826.0.1.3680043.10.1234.1"

# A tiny Implicit VR Little Endian data set: (0008,0016) and (0008,0018).
_DATASET = (
    struct.pack("<HHI", 0x0008, 0x0016, 26) + CT_IMAGE_STORAGE.encode() + b"\x00"
    + struct.pack("<HHI", 0x0008, 0x0018, 8) + b"1.2.3.4\x00"
)


def _meta(**overrides: object) -> bytes:
    """Encode a meta header with sensible defaults, overridden by keyword."""
    kwargs: dict[str, object] = dict(
        sop_class_uid=CT_IMAGE_STORAGE,
        sop_instance_uid="1.2.3.4",
        transfer_syntax_uid=IMPLICIT_VR_LE,
        implementation_class_uid=IMPL_UID,
        implementation_version_name="DCMGW_01",
        source_ae_title="MODALITY1",
    )
    kwargs.update(overrides)
    return encode_file_meta(**kwargs)  # type: ignore[arg-type]


def _read(meta: bytes) -> pydicom.FileDataset:
    """Read meta + the tiny data set with pydicom (its VR warnings are expected here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = pydicom.dcmread(io.BytesIO(meta + _DATASET))
        ds.file_meta.MediaStorageSOPInstanceUID  # decode while warnings are off
        return ds


class EncodeFileMetaTests(SynchronousTestCase):
    """The encoded header is a valid PS3.10 7.1 meta group."""

    def test_preamble_is_zeros_and_prefix_is_dicm(self) -> None:
        """The 128-byte preamble is all zeros (D16) and followed by DICM."""
        meta = _meta()
        self.assertEqual(meta[:128], b"\x00" * 128)
        self.assertEqual(meta[128:132], b"DICM")

    def test_pydicom_reads_every_field(self) -> None:
        """pydicom reads back the values we wrote, and the data set after them."""
        ds = _read(_meta())
        fm = ds.file_meta
        self.assertEqual(fm.FileMetaInformationVersion, b"\x00\x01")
        self.assertEqual(fm.MediaStorageSOPClassUID, CT_IMAGE_STORAGE)
        self.assertEqual(fm.MediaStorageSOPInstanceUID, "1.2.3.4")
        self.assertEqual(fm.TransferSyntaxUID, IMPLICIT_VR_LE)
        self.assertEqual(fm.ImplementationClassUID, IMPL_UID)
        self.assertEqual(fm.ImplementationVersionName, "DCMGW_01")
        self.assertEqual(fm.SourceApplicationEntityTitle, "MODALITY1")
        self.assertEqual(ds.SOPInstanceUID, "1.2.3.4")

    def test_group_length_counts_the_rest_of_group_two(self) -> None:
        """(0002,0000) equals the number of bytes after it up to the data set."""
        meta = _meta()
        tag, vr, length, value = struct.unpack_from("<I2sHI", meta, 132)
        self.assertEqual((tag, vr, length), (0x00000002, b"UL", 4))
        self.assertEqual(value, len(meta) - 132 - 12)

    def test_elements_are_in_ascending_order(self) -> None:
        """Group-2 tags are written in ascending order, group length first."""
        meta = _meta()
        offset, tags = 132, []
        while offset < len(meta):
            _, element, vr = struct.unpack_from("<HH2s", meta, offset)
            tags.append(element)
            if vr == b"OB":
                (length,) = struct.unpack_from("<I", meta, offset + 8)
                offset += 12 + length
            else:
                (length,) = struct.unpack_from("<H", meta, offset + 6)
                offset += 8 + length
        self.assertEqual(tags, [0x0000, 0x0001, 0x0002, 0x0003, 0x0010, 0x0012, 0x0013, 0x0016])
        self.assertEqual(offset, len(meta))

    def test_odd_uid_padded_with_nul_and_text_with_space(self) -> None:
        """An odd-length UID ends in NUL and an odd-length AE title in a space."""
        meta = _meta(sop_instance_uid="1.2.345", source_ae_title="ABC")
        self.assertIn(b"1.2.345\x00", meta)
        self.assertTrue(meta.endswith(b"ABC "))
        self.assertEqual(len(meta) % 2, 0)

    def test_optional_fields_are_omitted(self) -> None:
        """No source AE title and no version name mean no (0002,0016) and (0002,0013)."""
        fm = _read(_meta(source_ae_title=None, implementation_version_name="")).file_meta
        self.assertNotIn("SourceApplicationEntityTitle", fm)
        self.assertNotIn("ImplementationVersionName", fm)

    def test_hostile_uid_values_are_stored_verbatim(self) -> None:
        """Path characters, NUL, long and non-ASCII UIDs never fail and stay readable."""
        for hostile in ["../../x", "/etc/cron.d/x", "C:\\x", "1.2\x003", "9" * 200, "1.2.\xe9"]:
            meta = _meta(sop_instance_uid=hostile)
            ds = _read(meta)
            self.assertIn(hostile.encode("latin-1"), meta)
            self.assertIn("MediaStorageSOPInstanceUID", ds.file_meta)

    def test_unencodable_values_are_escaped_not_refused(self) -> None:
        """Characters beyond Latin-1 or lone surrogates are escaped and the file still reads."""
        for odd in ["1.2.\u4e2d", "1.2.\udc80", "\ud800x"]:
            ds = _read(_meta(sop_instance_uid=odd))
            self.assertIsNotNone(ds.file_meta.MediaStorageSOPInstanceUID)

    def test_value_too_long_for_short_length_is_cut(self) -> None:
        """A 70,000-byte UID is cut to fit a 2-byte length and the meta still reads."""
        ds = _read(_meta(sop_instance_uid="1" * 70_000))
        self.assertEqual(len(ds.file_meta.MediaStorageSOPInstanceUID), 0xFFFE)


class ReadPart10HeaderTests(SynchronousTestCase):
    """The one meta reader, :func:`gateway.meta.read_part10_header`, and :func:`file_meta_end`."""

    def setUp(self) -> None:
        """A fresh folder."""
        import shutil
        import tempfile

        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder, True)

    def _file(self, extra: bytes) -> tuple[str, int]:
        """A Part 10 file: our meta, ``extra`` group 2 elements, then a 10-byte data set; and the data set's offset."""
        import os

        meta = encode_file_meta(
            sop_class_uid=CT_IMAGE_STORAGE,
            sop_instance_uid="1.2.3.4",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            implementation_class_uid="1.2.3",
            implementation_version_name="GW",
        )
        dataset = struct.pack("<HH2sH", 0x0008, 0x0060, b"CS", 2) + b"CT"
        path = os.path.join(self.folder, "f.dcm")
        with open(path, "wb") as f:
            f.write(meta + extra + dataset)
        return path, len(meta) + len(extra)

    def test_reads_the_uids_and_where_the_data_set_starts(self) -> None:
        """SOP class, instance, transfer syntax, the data set's offset and size."""
        path, offset = self._file(b"")
        header = read_part10_header(path)
        self.assertEqual(
            (header.sop_class_uid, header.sop_instance_uid, header.transfer_syntax_uid, header.dataset_offset, header.size),
            (CT_IMAGE_STORAGE, "1.2.3.4", "1.2.840.10008.1.2.1", offset, 10),
        )

    def test_a_ur_element_has_the_long_header_form(self) -> None:
        """(0002,0026) Source Presentation Address is UR (PS3.10 Table 7.1-1): 4-byte length (PS3.5 7.1.2).

        The associate.py reader knew OB, OW, OF, SQ, UT, UN only, and read
        the UR element's reserved bytes as its length: the data set offset
        came out wrong.
        """
        address = b"dicom://host:104/"  # odd: padded with a space
        address += b" "
        extra = struct.pack("<HH2sHI", 0x0002, 0x0026, b"UR", 0, len(address)) + address
        path, offset = self._file(extra)
        self.assertEqual(read_part10_header(path).dataset_offset, offset)
        with open(path, "rb") as f:
            self.assertEqual(file_meta_end(f), offset)

    def test_no_prefix_is_a_value_error(self) -> None:
        """A file without ``DICM`` is refused."""
        import os

        path = os.path.join(self.folder, "x.dcm")
        with open(path, "wb") as f:
            f.write(b"\x00" * 200)
        self.assertRaises(ValueError, read_part10_header, path)
