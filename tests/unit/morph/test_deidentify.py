"""Tests for PS3.15 Annex E Basic Profile de-identification."""

from __future__ import annotations

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from twisted.trial.unittest import SynchronousTestCase

from gateway.deidentify import BASIC_PROFILE, basic_code, dummy_value, effective_code
from gateway.morph import check_value
from gateway.uidremap import remap_uid
from tests.unit.morph.helpers import CONTEXT, plan_of

# Hand-checked against PS3.15 Table E.1-1 ("Basic Prof." column), independently
# of the dicom-anonymizer data the gateway loads: each code below was compared,
# row by row, with the table as extracted from the standard's published HTML
# (the innolitics/dicom-standard project's confidentiality_profile_attributes
# extraction, read 2026-11-25). All 50 agree with it, except Instance Creation
# Date (0008,0012), which that extraction's edition does not list.
HAND_CHECKED: dict[int, str] = {
    0x00080050: "Z",      # Accession Number
    0x00100010: "Z",      # Patient's Name
    0x00100020: "Z",      # Patient ID (Z in older editions; Z/D tolerated below)
    0x00100030: "Z",      # Patient's Birth Date
    0x00100040: "Z",      # Patient's Sex
    0x00101010: "X",      # Patient's Age
    0x00101020: "X",      # Patient's Size
    0x00101030: "X",      # Patient's Weight
    0x00101000: "X",      # Other Patient IDs
    0x00101001: "X",      # Other Patient Names
    0x00102160: "X",      # Ethnic Group
    0x00104000: "X",      # Patient Comments
    0x00100032: "X",      # Patient's Birth Time
    0x00080080: "X/Z/D",  # Institution Name
    0x00080081: "X",      # Institution Address
    0x00080090: "Z",      # Referring Physician's Name
    0x00080092: "X",      # Referring Physician's Address
    0x00080094: "X",      # Referring Physician's Telephone Numbers
    0x00081010: "X/Z/D",  # Station Name
    0x00081030: "X",      # Study Description
    0x0008103E: "X",      # Series Description
    0x00081040: "X",      # Institutional Department Name
    0x00081048: "X",      # Physician(s) of Record
    0x00081050: "X",      # Performing Physician's Name
    0x00081060: "X",      # Name of Physician(s) Reading Study
    0x00081070: "X/Z/D",  # Operators' Name
    0x00081080: "X",      # Admitting Diagnoses Description
    0x00080018: "U",      # SOP Instance UID
    0x0020000D: "U",      # Study Instance UID
    0x0020000E: "U",      # Series Instance UID
    0x00200052: "U",      # Frame of Reference UID
    0x00200010: "Z",      # Study ID
    0x00080020: "Z",      # Study Date
    0x00080030: "Z",      # Study Time
    0x00080021: "X/D",    # Series Date
    0x00080023: "Z/D",    # Content Date
    0x00181000: "X/Z/D",  # Device Serial Number
    0x00181030: "X/D",    # Protocol Name
    0x00081140: "X/Z/U*", # Referenced Image Sequence
    0x00081110: "X/Z",    # Referenced Study Sequence
    0x00204000: "X",      # Image Comments
    0xFFFAFFFA: "X",      # Digital Signatures Sequence
    0x04000561: "X",      # Original Attributes Sequence
    0x00321032: "X",      # Requesting Physician
    0x00400275: "X",      # Request Attributes Sequence
    0x00181002: "U",      # Device UID
    0x00080014: "U",      # Instance Creator UID
    0x001021B0: "X",      # Additional Patient History
    0x00080012: "X/D",    # Instance Creation Date
    0x00200200: "U",      # Synchronization Frame of Reference UID
}  # fmt: skip
# Editions revise a few codes; these are the ones where the current edition differs
# from the reading above and both are accepted.
_ALSO = {0x00100020: {"Z/D"}}


def _value_for(vr: str) -> object:
    """A valid non-empty dummy for building the full-table data set."""
    if vr == "SQ":
        item = Dataset()
        item.CodeValue = "1"
        return [item]
    if vr == "UI":
        return "1.2.3.4"
    return dummy_value(vr)


class TableTests(SynchronousTestCase):
    """The table and its resolution."""

    def test_hand_checked_sample(self) -> None:
        """At least 30 codes read from PS3.15 Table E.1-1 match the loaded table."""
        self.assertGreaterEqual(len(HAND_CHECKED), 30)
        for tag, code in HAND_CHECKED.items():
            self.assertIn(basic_code(tag), {code} | _ALSO.get(tag, set()), f"{tag:08X} {keyword_for_tag(tag)}")

    def test_table_is_large(self) -> None:
        """The loaded table covers the standard's several hundred attributes."""
        self.assertGreater(len(BASIC_PROFILE), 500)

    def test_combined_codes_take_the_stricter_reading(self) -> None:
        """X/Z, X/D, X/Z/D and X/Z/U* remove; Z/D empties; private tags go."""
        self.assertEqual(effective_code(0x00080080), "X")
        self.assertEqual(effective_code(0x00081140), "X")
        self.assertEqual(effective_code(0x00080023), "Z")
        self.assertEqual(effective_code(0x00091001), "X")
        self.assertEqual(effective_code(0x00080060), "K")

    def test_options_keep(self) -> None:
        """Options turn codes into K."""
        self.assertEqual(effective_code(0x0020000D, frozenset({"retain_uids"})), "K")
        self.assertEqual(effective_code(0x00101010, frozenset({"retain_patient_characteristics"})), "K")
        self.assertEqual(effective_code(0x00080021, frozenset({"retain_longitudinal_temporal"})), "K")


class ProfileTests(SynchronousTestCase):
    """Applying the profile to a data set holding every attribute of the table."""

    def test_every_attribute_in_the_table(self) -> None:
        """Each attribute ends removed, emptied, dummied, kept or remapped as its code says."""
        ds = Dataset()
        vrs: dict[int, str] = {}
        for tag in BASIC_PROFILE:
            if tag >> 16 in (0x0002, 0x7FE0) or tag >= 0x7FE00008:
                continue
            try:
                vr = dictionary_VR(tag).split(" or ")[0]
            except KeyError:
                continue
            vrs[tag] = vr
            ds.add_new(tag, vr, _value_for(vr))
        ds.add_new(0x00091001, "LO", "private")
        plan_of("- deidentify: {profile: basic, salt: k}\n").apply(ds, CONTEXT)
        self.assertGreater(len(vrs), 500)
        for tag, vr in vrs.items():
            code = effective_code(tag)
            where = f"{tag:08X} {keyword_for_tag(tag)} {code}"
            if tag in (0x00120062, 0x00120063, 0x00120064):
                continue
            if code == "X":
                self.assertNotIn(tag, ds, where)
                continue
            self.assertIn(tag, ds, where)
            value = ds[tag].value
            if code == "Z":
                self.assertFalse(value, where)
            elif code == "D" and vr not in ("SQ", "UI"):
                self.assertEqual(value, dummy_value(vr), where)
                if isinstance(value, str):
                    self.assertIsNone(check_value(vr, value), where)
            elif code in ("U", "D") and vr == "UI":
                self.assertEqual(value, remap_uid("1.2.3.4", "k", "2.25"), where)
        self.assertNotIn(0x00091001, ds)
        self.assertEqual(ds.PatientIdentityRemoved, "YES")
        self.assertEqual(ds.DeidentificationMethodCodeSequence[0].CodeValue, "113100")

    def test_nested_attributes_are_cleaned(self) -> None:
        """Attributes inside kept sequences are de-identified too."""
        ds = Dataset()
        item = Dataset()
        item.PatientName = "DOE"
        item.CodeValue = "X1"
        ds.ProcedureCodeSequence = [item]
        plan_of("- deidentify: basic\n").apply(ds, CONTEXT)
        inner = ds.ProcedureCodeSequence[0]
        self.assertEqual(str(inner.PatientName), "")
        self.assertEqual(inner.CodeValue, "X1")

    def test_uids_consistent_with_uid_remap(self) -> None:
        """U replacement equals uid_remap with the same salt and root."""
        a, b = Dataset(), Dataset()
        a.StudyInstanceUID = b.StudyInstanceUID = "1.2.3.4.5"
        plan_of("- deidentify: {profile: basic, salt: k}\n").apply(a, CONTEXT)
        plan_of("- uid_remap: {salt: k}\n").apply(b, CONTEXT)
        self.assertEqual(a.StudyInstanceUID, b.StudyInstanceUID)
