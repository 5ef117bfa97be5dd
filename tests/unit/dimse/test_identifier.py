"""Tests for :mod:`gateway.dimse.identifier` (PS3.4 C.2-C.6, PS3.5 7; HARDENING D01-D03, D18).

Identifiers are made with pydicom (an encoder we did not write) and by hand
for the malformed cases.
"""

from __future__ import annotations

import struct

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from twisted.trial.unittest import SynchronousTestCase

from gateway.dimse.identifier import (
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    IdentifierError,
    Model,
    Verb,
    check_query,
    decode_identifier,
    relational_keys,
    encode_identifier,
    is_valid_uid,
    sop_class_model,
    uid_values,
    unique_key,
)
from gateway.dimse.status import Status

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.2"
SOP = "1.2.826.0.1.3680043.8.498.3"


def pydicom_bytes(ds: Dataset, implicit: bool = True, little: bool = True) -> bytes:
    """Encode ``ds`` with pydicom's own writer."""
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit
    fp.is_little_endian = little
    write_dataset(fp, ds)
    return bytes(fp.getvalue())


def identifier(level: str, **keys: object) -> Dataset:
    """A pydicom identifier at ``level`` with ``keys``."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for name, value in keys.items():
        setattr(ds, name, value)
    return ds


def implicit(tag: int, value: bytes, length: int | None = None) -> bytes:
    """One Implicit VR LE element written by hand (``length`` overrides the real one)."""
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value) if length is None else length) + value


class DecodeTests(SynchronousTestCase):
    """decode_identifier and encode_identifier: pydicom-made identifiers, bounds and malformed input."""

    def test_pydicom_identifier_decodes_in_each_syntax(self) -> None:
        """A pydicom-made STUDY query decodes in Implicit LE, Explicit LE and Explicit BE with its keys."""
        ds = identifier("STUDY", PatientName="DOE^J*", StudyInstanceUID="", StudyDate="20200101-")
        for ts, implicit_vr, little in (
            (IMPLICIT_VR_LE, True, True),
            (EXPLICIT_VR_LE, False, True),
            (EXPLICIT_VR_BE, False, False),
        ):
            got = decode_identifier(pydicom_bytes(ds, implicit_vr, little), ts)
            self.assertEqual((got.QueryRetrieveLevel, str(got.PatientName), got.StudyDate), ("STUDY", "DOE^J*", "20200101-"))
            self.assertEqual(uid_values(got, 0x0020000D), ())

    def test_round_trip_across_syntaxes(self) -> None:
        """An identifier decoded from Implicit LE re-encodes in Explicit LE to what pydicom writes."""
        ds = identifier("SERIES", StudyInstanceUID=STUDY, SeriesInstanceUID=[SERIES, SOP], Modality="CT")
        got = decode_identifier(pydicom_bytes(ds), IMPLICIT_VR_LE)
        self.assertEqual(encode_identifier(got, EXPLICIT_VR_LE), pydicom_bytes(ds, False, True))
        self.assertEqual(uid_values(got, 0x0020000E), (SERIES, SOP))

    def test_sequence_key_decodes(self) -> None:
        """A sequence key (Issuer of Patient ID Qualifiers) within the depth bound decodes."""
        inner = Dataset()
        inner.UniversalEntityID = "1.2.3"
        ds = identifier("PATIENT", PatientID="P1", IssuerOfPatientIDQualifiersSequence=[inner])
        got = decode_identifier(pydicom_bytes(ds), IMPLICIT_VR_LE)
        self.assertEqual(got.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID, "1.2.3")

    def test_truncated_value_is_refused(self) -> None:
        """A value that runs past the end is 0xC000, where pydicom alone would truncate silently."""
        data = pydicom_bytes(identifier("STUDY", StudyInstanceUID=STUDY))
        with self.assertRaises(IdentifierError) as caught:
            decode_identifier(data[:-4], IMPLICIT_VR_LE)
        self.assertEqual(caught.exception.status, Status.CANNOT_UNDERSTAND)
        self.assertIn("malformed", caught.exception.comment)

    def test_deep_nesting_is_refused(self) -> None:
        """Twenty nested undefined-length sequences exceed the depth bound instead of recursing."""
        item_start = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        seq_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        seq = struct.pack("<HHI", 0x0040, 0xA730, 0xFFFFFFFF)  # Content Sequence (SQ)
        body = b""
        for _ in range(20):
            body = seq + item_start + body + item_end + seq_end
        data = implicit(0x00080052, b"STUDY ") + body
        with self.assertRaises(IdentifierError):
            decode_identifier(data, IMPLICIT_VR_LE)

    def test_size_bound(self) -> None:
        """An identifier larger than max_bytes is refused before any parsing."""
        data = pydicom_bytes(identifier("STUDY", StudyDescription="x" * 60))
        self.assertRaises(IdentifierError, decode_identifier, data, IMPLICIT_VR_LE, max_bytes=len(data) - 1)
        decode_identifier(data, IMPLICIT_VR_LE, max_bytes=len(data))

    def test_empty_and_unsupported_syntax(self) -> None:
        """An empty identifier and one in a compressed or deflated syntax are refused."""
        self.assertRaises(IdentifierError, decode_identifier, b"", IMPLICIT_VR_LE)
        data = pydicom_bytes(identifier("STUDY"))
        self.assertRaises(IdentifierError, decode_identifier, data, "1.2.840.10008.1.2.1.99")
        self.assertRaises(IdentifierError, decode_identifier, data, "1.2.840.10008.1.2.4.50")
        self.assertRaises(IdentifierError, encode_identifier, identifier("STUDY"), "1.2.840.10008.1.2.4.50")

    def test_descending_tags_are_refused(self) -> None:
        """Elements out of ascending order (PS3.5 7.1) are refused."""
        data = implicit(0x0020000D, STUDY.encode() + b"\x00") + implicit(0x00080052, b"STUDY ")
        self.assertRaises(IdentifierError, decode_identifier, data, IMPLICIT_VR_LE)


    def test_command_and_meta_groups_are_refused(self) -> None:
        """A group 0000 or 0002 element in an identifier is 0xC000 naming it (PS3.7 6.3.1, PS3.10 7.1)."""
        for tag in (0x00000000, 0x00020010):
            data = implicit(tag, struct.pack("<I", 4)) + implicit(0x00080052, b"STUDY ")
            with self.assertRaises(IdentifierError) as caught:
                decode_identifier(data, IMPLICIT_VR_LE)
            self.assertEqual(caught.exception.offending, (tag,))

    def test_value_pydicom_cannot_convert_is_identifier_error(self) -> None:
        """A UL value of 6 bytes (pydicom's BytesLengthException, found by the fuzzer) is 0xC000, not an escape."""
        data = implicit(0x00080052, b"STUDY ") + implicit(0x00081161, b"\x01\x02\x03\x04\x05\x06")  # Simple Frame List, UL
        with self.assertRaises(IdentifierError) as caught:
            decode_identifier(data, IMPLICIT_VR_LE)
        self.assertEqual(caught.exception.status, Status.CANNOT_UNDERSTAND)


    def test_convert_false_defers_value_errors(self) -> None:
        """With convert=False the structure is still checked, but a bad value surfaces only when read."""
        data = implicit(0x00080052, b"STUDY ") + implicit(0x00081161, b"\x01\x02\x03\x04\x05\x06")
        ds = decode_identifier(data, IMPLICIT_VR_LE, convert=False)
        self.assertEqual(ds.QueryRetrieveLevel, "STUDY")
        self.assertRaises(Exception, lambda: ds.SimpleFrameList)
        truncated = pydicom_bytes(identifier("STUDY", StudyInstanceUID=STUDY))[:-4]
        self.assertRaises(IdentifierError, decode_identifier, truncated, IMPLICIT_VR_LE, convert=False)


class CheckQueryTests(SynchronousTestCase):
    """check_query: levels by model, UID syntax, hierarchical retrieve keys (PS3.4 C.4, C.6)."""

    def assert_refused(self, ds: Dataset, model: Model, status: int = Status.CANNOT_UNDERSTAND, *, retrieve: bool = False) -> IdentifierError:
        """Assert check_query refuses ``ds`` with ``status`` and a non-empty comment."""
        with self.assertRaises(IdentifierError) as caught:
            check_query(ds, model, retrieve=retrieve)
        self.assertEqual(caught.exception.status, status)
        self.assertTrue(caught.exception.comment)
        return caught.exception

    def test_levels_per_model(self) -> None:
        """Patient Root has PATIENT..IMAGE; Study Root has no PATIENT level (0xA900)."""
        for level in ("PATIENT", "STUDY", "SERIES", "IMAGE"):
            self.assertEqual(check_query(identifier(level), Model.PATIENT_ROOT), level)
        for level in ("STUDY", "SERIES", "IMAGE"):
            self.assertEqual(check_query(identifier(level), Model.STUDY_ROOT), level)
        error = self.assert_refused(identifier("PATIENT"), Model.STUDY_ROOT, Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS)
        self.assertEqual(error.offending, (0x00080052,))

    def test_missing_or_bad_level(self) -> None:
        """A missing, empty, multi-valued or unknown level is 0xC000 naming (0008,0052)."""
        self.assertEqual(self.assert_refused(Dataset(), Model.STUDY_ROOT).offending, (0x00080052,))
        self.assert_refused(identifier(""), Model.STUDY_ROOT)
        self.assert_refused(identifier(["STUDY", "SERIES"]), Model.STUDY_ROOT)
        self.assert_refused(identifier("WORKLIST"), Model.STUDY_ROOT)

    def test_bad_uid_in_query(self) -> None:
        """A wildcard, a leading-zero component or a letter in a UID key is refused; a UID list is fine."""
        for bad in ("1.2.*", "1.02.3", "1.2.a", "1." + "2" * 70):
            error = self.assert_refused(identifier("STUDY", StudyInstanceUID=bad), Model.STUDY_ROOT)
            self.assertEqual(error.offending, (0x0020000D,))
        self.assert_refused(identifier("SERIES", SeriesInstanceUID=[SERIES, "x"]), Model.STUDY_ROOT)
        self.assertEqual(check_query(identifier("STUDY", StudyInstanceUID=[STUDY, SERIES]), Model.STUDY_ROOT), "STUDY")

    def test_query_does_not_require_keys_above(self) -> None:
        """A C-FIND at IMAGE level without study and series UIDs passes (sources decide relational matching)."""
        self.assertEqual(check_query(identifier("IMAGE", SOPInstanceUID=""), Model.STUDY_ROOT), "IMAGE")

    def test_hierarchical_query_requires_single_unique_keys_above(self) -> None:
        """``hierarchical``: each unique key above the level present, one value, no wildcard (PS3.4 C.4.1.2.1); errors name them."""
        image = identifier("IMAGE", StudyInstanceUID=STUDY, SeriesInstanceUID=SERIES, SOPInstanceUID="")
        self.assertEqual(check_query(image, Model.STUDY_ROOT, hierarchical=True), "IMAGE")
        self.assertEqual(relational_keys(image, Model.STUDY_ROOT, "IMAGE"), ())
        bare = identifier("IMAGE", SOPInstanceUID="")
        error = self.assert_refused_hierarchical(bare, Model.STUDY_ROOT)
        self.assertEqual(error.offending, (0x0020000D, 0x0020000E))
        self.assertLessEqual(len(error.comment), 64)
        # A list of Study UIDs above the level, and a Patient ID wildcard, are relational too.
        listed = identifier("SERIES", StudyInstanceUID=[STUDY, SOP], SeriesInstanceUID="")
        self.assertEqual(self.assert_refused_hierarchical(listed, Model.STUDY_ROOT).offending, (0x0020000D,))
        wildcard = identifier("STUDY", PatientID="P*", StudyInstanceUID="")
        self.assertEqual(self.assert_refused_hierarchical(wildcard, Model.PATIENT_ROOT).offending, (0x00100020,))
        wildcard.PatientID = "P1"
        self.assertEqual(check_query(wildcard, Model.PATIENT_ROOT, hierarchical=True), "STUDY")
        # The top level of each model has nothing above it; without ``hierarchical`` the bare query passes.
        self.assertEqual(check_query(identifier("STUDY"), Model.STUDY_ROOT, hierarchical=True), "STUDY")
        self.assertEqual(check_query(identifier("PATIENT"), Model.PATIENT_ROOT, hierarchical=True), "PATIENT")
        self.assertEqual(check_query(bare, Model.STUDY_ROOT), "IMAGE")

    def assert_refused_hierarchical(self, ds: Dataset, model: Model) -> IdentifierError:
        """Assert check_query with ``hierarchical`` refuses ``ds`` 0xC000 with a comment."""
        with self.assertRaises(IdentifierError) as caught:
            check_query(ds, model, hierarchical=True)
        self.assertEqual(caught.exception.status, Status.CANNOT_UNDERSTAND)
        self.assertIn("relational", caught.exception.comment)
        return caught.exception

    def test_retrieve_requires_unique_keys_above(self) -> None:
        """A retrieve names every level above with one unique key and its own level's key(s)."""
        ok = identifier("SERIES", StudyInstanceUID=STUDY, SeriesInstanceUID=[SERIES, SOP])
        self.assertEqual(check_query(ok, Model.STUDY_ROOT, retrieve=True), "SERIES")
        # Patient Root starts at Patient ID.
        error = self.assert_refused(ok, Model.PATIENT_ROOT, retrieve=True)
        self.assertEqual(error.offending, (0x00100020,))
        ok.PatientID = "P1"
        self.assertEqual(check_query(ok, Model.PATIENT_ROOT, retrieve=True), "SERIES")
        # A list above the level, or a missing own key, is refused.
        two_studies = identifier("SERIES", StudyInstanceUID=[STUDY, SOP], SeriesInstanceUID=SERIES)
        self.assert_refused(two_studies, Model.STUDY_ROOT, retrieve=True)
        self.assert_refused(identifier("STUDY", StudyInstanceUID=""), Model.STUDY_ROOT, retrieve=True)
        self.assert_refused(identifier("IMAGE", StudyInstanceUID=STUDY, SeriesInstanceUID=SERIES), Model.STUDY_ROOT, retrieve=True)

    def test_sop_class_model(self) -> None:
        """The six Q/R SOP classes map to their model and verb; worklist does not."""
        self.assertEqual(sop_class_model("1.2.840.10008.5.1.4.1.2.1.1"), (Model.PATIENT_ROOT, Verb.FIND))
        self.assertEqual(sop_class_model("1.2.840.10008.5.1.4.1.2.2.2"), (Model.STUDY_ROOT, Verb.MOVE))
        self.assertEqual(sop_class_model("1.2.840.10008.5.1.4.1.2.2.3"), (Model.STUDY_ROOT, Verb.GET))
        self.assertIsNone(sop_class_model("1.2.840.10008.5.1.4.31"))

    def test_is_valid_uid(self) -> None:
        """PS3.5 9.1: digits and dots, no leading zeros except a lone 0, 64 bytes at most."""
        self.assertTrue(is_valid_uid("1.2.0.3"))
        self.assertTrue(is_valid_uid("1." + "2" * 62))
        for bad in ("", "1..2", ".1", "1.", "01.2", "1." + "2" * 63):
            self.assertFalse(is_valid_uid(bad), bad)


class UniqueKeyTests(SynchronousTestCase):
    """unique_key: the de-duplication key of a response at its level."""

    def test_patient_key_includes_issuer(self) -> None:
        """The same Patient ID from two issuers gives two keys; no issuer is ''."""
        a = identifier("PATIENT", PatientID="P1", IssuerOfPatientID="HOSP_A")
        b = identifier("PATIENT", PatientID="P1", IssuerOfPatientID="HOSP_B")
        self.assertNotEqual(unique_key(a, "PATIENT"), unique_key(b, "PATIENT"))
        self.assertEqual(unique_key(identifier("PATIENT", PatientID="P1"), "PATIENT"), ("PATIENT", "P1", ""))

    def test_uid_levels(self) -> None:
        """STUDY, SERIES and IMAGE use their instance UIDs, read from decoded bytes."""
        ds = decode_identifier(
            pydicom_bytes(identifier("IMAGE", StudyInstanceUID=STUDY, SeriesInstanceUID=SERIES, SOPInstanceUID=SOP)),
            IMPLICIT_VR_LE,
        )
        self.assertEqual(unique_key(ds, "STUDY"), ("STUDY", STUDY))
        self.assertEqual(unique_key(ds, "SERIES"), ("SERIES", SERIES))
        self.assertEqual(unique_key(ds, "IMAGE"), ("IMAGE", SOP))

    def test_missing_or_multiple_key_is_none(self) -> None:
        """A response without a single key value cannot be de-duplicated: None."""
        self.assertIsNone(unique_key(identifier("STUDY"), "STUDY"))
        self.assertIsNone(unique_key(identifier("STUDY", StudyInstanceUID=""), "STUDY"))
        self.assertIsNone(unique_key(identifier("STUDY", StudyInstanceUID=[STUDY, SERIES]), "STUDY"))
        self.assertRaises(ValueError, unique_key, identifier("STUDY"), "WORKLIST")
