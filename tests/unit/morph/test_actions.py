"""Tests for the morph actions: compile-time validation and their effect on a data set."""

from __future__ import annotations

import os
import tempfile

from hypothesis import given, settings, strategies as st
from pydicom.dataset import Dataset
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gateway.interfaces import IMorphAction
from gateway.morph import Change, MorphError, SetAction, check_value
from gateway.tags import parse_path
from gateway.template import Template
from gateway.uidremap import MIN_BITS, is_valid_uid, keyed_digest, remap_uid, suffix_bits
from tests.unit.morph.helpers import CONTEXT, compile_text, plan_of


def sample() -> Dataset:
    """A small data set with a sequence, a private block and a multi-valued element."""
    ds = Dataset()
    ds.PatientName = "DOE^JOHN"
    ds.PatientID = "000123"
    ds.AccessionNumber = "000456"
    ds.StudyDate = "20240229"
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.5"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.9"
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.ReferencedImageSequence = [item]
    block = ds.private_block(0x0009, "ACME", create=True)
    block.add_new(0x01, "LO", "secret")
    return ds


class CompileErrorTests(SynchronousTestCase):
    """Configuration errors name the line and key path."""

    def test_unknown_keyword_suggests_the_right_one(self) -> None:
        """A misspelt keyword is an error with a did-you-mean hint on its line."""
        plan, sink = compile_text("- set: {PatiantName: x}\n")
        self.assertIsNone(plan)
        self.assertEqual(sink.errors[0][:2], (1, "routes[0].morph[0].set.PatiantName"))
        self.assertIn("did you mean PatientName", sink.errors[0][2])

    def test_all_errors_are_reported(self) -> None:
        """Every bad action is reported, not only the first."""
        _, sink = compile_text("- set: {Modality: ct}\n- replace: {tag: PatientID, pattern: '(', with: ''}\n- sett: 1\n")
        self.assertEqual([e[0] for e in sink.errors], [1, 2, 3])

    def test_literal_invalid_for_vr_is_a_config_error(self) -> None:
        """A literal too long for SH, or a bad DA, can never be valid."""
        _, sink = compile_text("- set: {AccessionNumber: '12345678901234567'}\n- set: {StudyDate: '2024-01-01'}\n")
        self.assertEqual(len(sink.errors), 2)
        self.assertIn("16", sink.errors[0][2])

    def test_private_tag_needs_a_vr(self) -> None:
        """Setting a private element without a VR is refused."""
        _, sink = compile_text("- set: {'(0029,\"ACME\",01)': x}\n")
        self.assertIn("give its VR", sink.errors[0][2])

    def test_replacement_group_must_exist(self) -> None:
        """A replacement naming a group the pattern lacks is refused."""
        _, sink = compile_text("- replace: {tag: PatientID, pattern: '^0+', with: '\\\\1'}\n")
        self.assertIn("group 1", sink.errors[0][2])

    def test_missing_lookup_table_names_the_line(self) -> None:
        """A lookup table that does not exist is a config error at its line."""
        _, sink = compile_text("- lookup:\n    tag: InstitutionName\n    table: nope.csv\n", base_dir=tempfile.mkdtemp())
        self.assertEqual(sink.errors[0][:2], (3, "routes[0].morph[0].lookup.table"))

    def test_uid_root_too_long_is_refused(self) -> None:
        """A root leaving fewer than 128 bits is a config error."""
        _, sink = compile_text("- uid_remap: {salt: s, root: '1.2.3.4.5.6.7.8.9.10.11.12.13'}\n")
        self.assertIn("too long", sink.errors[0][2])

    def test_unknown_template_field_is_refused(self) -> None:
        """A template field that is neither context nor element is a config error."""
        _, sink = compile_text("- set: {InstitutionName: '{PatientIDD}'}\n")
        self.assertIn("did you mean PatientID", sink.errors[0][2])

    def test_unsupported_deidentify_option_is_refused(self) -> None:
        """Options the gateway cannot honour are refused, not ignored."""
        _, sink = compile_text("- deidentify: {profile: basic, options: [clean_descriptors]}\n")
        self.assertIn("not supported", sink.errors[0][2])

    def test_plans_compare_equal(self) -> None:
        """Two compilations of the same text are equal (reload compares routes)."""
        text = "- set: {InstitutionName: x}\n- delete: ['(0009,xxxx)']\n- uid_remap: {salt: s}\n"
        self.assertEqual(plan_of(text), plan_of(text))
        self.assertEqual(hash(plan_of(text)), hash(plan_of(text)))


class SetTests(SynchronousTestCase):
    """``set`` creates or replaces elements, with templates."""

    def test_template_reads_elements_and_context(self) -> None:
        """A template renders another element and a context key."""
        ds = sample()
        changes = plan_of("- set: {InstitutionName: '{PatientID}-R {calling_ae_title}'}\n").apply(ds, CONTEXT)
        self.assertEqual(ds.InstitutionName, "000123-R CT01")
        self.assertEqual(changes, [Change("InstitutionName", None, "000123-R CT01")])

    def test_missing_element_renders_empty(self) -> None:
        """An absent element renders as the empty string."""
        ds = Dataset()
        plan_of("- set: {InstitutionName: 'X{PatientID}'}\n").apply(ds, CONTEXT)
        self.assertEqual(ds.InstitutionName, "X")

    def test_rendered_value_invalid_is_morph_error(self) -> None:
        """A template giving an invalid value at run time raises MorphError."""
        ds = sample()
        ds.PatientID = "X" * 60
        with self.assertRaises(MorphError):
            plan_of("- set: {AccessionNumber: '{PatientID}'}\n").apply(ds, CONTEXT)

    def test_private_element_is_created_in_its_block(self) -> None:
        """A private element by creator gets a block and the given VR."""
        ds = Dataset()
        plan_of("- set: {'(0029,\"ACME\",01)': {value: hello, vr: LO}}\n").apply(ds, CONTEXT)
        self.assertEqual(ds.private_block(0x0029, "ACME")[0x01].value, "hello")

    def test_multi_valued_and_numbers(self) -> None:
        """A list sets several values; US and DS elements take numbers."""
        ds = Dataset()
        plan_of("- set: {ImageType: [DERIVED, SECONDARY], Rows: 512, SliceThickness: '2.5'}\n").apply(ds, CONTEXT)
        self.assertEqual(list(ds.ImageType), ["DERIVED", "SECONDARY"])
        self.assertEqual(ds.Rows, 512)
        self.assertEqual(float(ds.SliceThickness), 2.5)

    def test_inside_sequence_items(self) -> None:
        """A sequence path sets the element in every item."""
        ds = sample()
        plan_of("- set: {'ReferencedImageSequence/ReferencedFrameNumber': '1'}\n").apply(ds, CONTEXT)
        self.assertEqual(ds.ReferencedImageSequence[0].ReferencedFrameNumber, 1)

    def test_empty_value_empties(self) -> None:
        """An empty value gives a zero-length element."""
        ds = sample()
        plan_of("- set: {PatientName: ''}\n").apply(ds, CONTEXT)
        self.assertEqual(str(ds.PatientName), "")

    def test_non_ascii_without_charset_is_refused(self) -> None:
        """Non-ASCII text in a data set with no Specific Character Set is a MorphError."""
        ds = sample()
        ds.PatientComments = "Zoë"
        with self.assertRaises(MorphError):
            plan_of("- set: {InstitutionName: '{PatientComments}'}\n").apply(ds, CONTEXT)

    @settings(max_examples=50, deadline=None)
    @given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="\\{}"), max_size=64))
    def test_set_then_read_returns_the_value(self, value: str) -> None:
        """Any valid LO value set is read back (trailing spaces are insignificant)."""
        ds = Dataset()
        # Built directly: YAML quoting of arbitrary text is not what is under test.
        SetAction(parse_path("InstitutionName"), "LO", (Template((("text", value),) if value else (), (), value),)).apply(ds, CONTEXT)
        self.assertEqual(str(ds.InstitutionName), value)


class DeleteReplaceCopyTests(SynchronousTestCase):
    """``delete``, ``replace`` and ``copy``."""

    def test_delete_keyword_wildcard_and_private(self) -> None:
        """Keywords, wildcards and private: all remove what they name."""
        ds = sample()
        plan_of("- delete: [PatientName, '(0008,00xx)', {private: all}]\n").apply(ds, CONTEXT)
        self.assertNotIn("PatientName", ds)
        self.assertNotIn("AccessionNumber", ds)
        self.assertNotIn(0x00090010, ds)
        self.assertNotIn(0x00091001, ds)
        self.assertIn("PatientID", ds)

    def test_delete_group(self) -> None:
        """A group delete removes the whole group."""
        ds = sample()
        plan_of("- delete: [{group: '0010'}]\n").apply(ds, CONTEXT)
        self.assertFalse([t for t in ds.keys() if t >> 16 == 0x0010])

    def test_delete_absent_is_no_change(self) -> None:
        """Deleting an absent element changes nothing."""
        self.assertEqual(plan_of("- delete: [PatientBirthDate]\n").apply(sample(), CONTEXT), [])

    def test_replace_with_groups_on_each_value(self) -> None:
        """The regex applies to each value, with group references."""
        ds = sample()
        plan_of("- replace: {tag: AccessionNumber, pattern: '^0+', with: ''}\n- replace: {tag: ImageType, pattern: '^(.)(.*)$', with: '\\2\\1'}\n").apply(ds, CONTEXT)
        self.assertEqual(ds.AccessionNumber, "456")
        self.assertEqual(list(ds.ImageType), ["RIGINALO", "RIMARYP", "XIALA"])

    def test_copy_between_vrs_is_validated(self) -> None:
        """Copy converts through text and validates the target VR."""
        ds = sample()
        plan_of("- copy: {from: PatientID, to: OtherPatientIDs}\n").apply(ds, CONTEXT)
        self.assertEqual(ds.OtherPatientIDs, "000123")
        ds.PatientID = "X" * 40
        with self.assertRaises(MorphError):
            plan_of("- copy: {from: PatientID, to: AccessionNumber}\n").apply(ds, CONTEXT)


class PseudonymTests(SynchronousTestCase):
    """``uid_remap``, ``hash``, ``date_shift`` and ``lookup``."""

    def test_uid_remap_default_skips_class_uids_and_reaches_sequences(self) -> None:
        """Instance UIDs change everywhere; SOP class UIDs do not."""
        ds = sample()
        plan_of("- uid_remap: {salt: s}\n").apply(ds, CONTEXT)
        self.assertEqual(ds.StudyInstanceUID, remap_uid("1.2.3.4", "s", "2.25"))
        self.assertEqual(ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID, remap_uid("1.2.3.9", "s", "2.25"))
        self.assertEqual(ds.SOPClassUID, "1.2.840.10008.5.1.4.1.1.2")

    @given(st.from_regex(r"\A[1-9][0-9]{0,5}(\.[1-9][0-9]{0,5}){0,8}\Z"), st.text(min_size=1, max_size=20),
           st.sampled_from(["2.25", "1.2.826.0.1.3680043.10"]))
    def test_uid_remap_is_deterministic_valid_and_keeps_128_bits(self, uid: str, salt: str, root: str) -> None:
        """Same input same output; valid UID; its suffix is the top bits of the HMAC."""
        new = remap_uid(uid, salt, root)
        self.assertEqual(new, remap_uid(uid, salt, root))
        self.assertTrue(is_valid_uid(new) and len(new) <= 64)
        bits = suffix_bits(root)
        self.assertGreaterEqual(bits, MIN_BITS)
        digest = int.from_bytes(keyed_digest(salt, uid), "big")
        self.assertEqual(int(new[len(root) + 1 :]), digest >> (256 - bits))

    def test_hash_fits_the_vr(self) -> None:
        """The pseudonym is keyed, upper-case hex, truncated to the VR's length."""
        ds = sample()
        plan_of("- hash: {tag: PatientID, salt: k, length: 64}\n").apply(ds, CONTEXT)
        self.assertEqual(len(ds.PatientID), 64)
        ds2 = sample()
        plan_of("- hash: {tag: AccessionNumber, salt: k, length: 64}\n").apply(ds2, CONTEXT)
        self.assertEqual(len(ds2.AccessionNumber), 16)
        self.assertEqual(ds2.AccessionNumber, keyed_digest("k", "000456").hex().upper()[:16])

    def test_date_shift_is_constant_per_patient(self) -> None:
        """Two instances of the same patient shift by the same number of days."""
        a, b = sample(), sample()
        b.StudyDate = "20240301"
        plan = plan_of("- date_shift: {salt: k, max_days: 30}\n")
        plan.apply(a, CONTEXT)
        plan.apply(b, CONTEXT)
        import datetime

        def day(text: str) -> datetime.date:
            return datetime.datetime.strptime(text, "%Y%m%d").date()

        self.assertEqual((day(b.StudyDate) - day(a.StudyDate)).days, 1)
        self.assertLessEqual(abs((day(a.StudyDate) - datetime.date(2024, 2, 29)).days), 30)

    def test_lookup_with_default(self) -> None:
        """Hits are translated, misses take the default."""
        folder = tempfile.mkdtemp()
        with open(os.path.join(folder, "inst.csv"), "w") as f:
            f.write("from,to\nCT,COMPUTED\n")
        plan, sink = compile_text("- lookup: {tag: Modality, table: inst.csv, default: OT}\n- lookup: {tag: ImageType, table: inst.csv, default: OTHER}\n", base_dir=folder)
        self.assertEqual(sink.errors, [])
        ds = sample()
        assert plan is not None
        plan.apply(ds, CONTEXT)
        self.assertEqual(ds.Modality, "COMPUTED")
        self.assertEqual(list(ds.ImageType), ["OTHER", "OTHER", "OTHER"])


@implementer(IMorphAction)
class _Stamp:
    name = "stamp"

    def compile(self, arguments: dict[str, object]) -> object:
        if "text" not in arguments:
            raise ValueError("needs text")
        text = str(arguments["text"])

        class Action:
            def apply(self, dataset: Dataset, context: object) -> list[Change]:
                dataset.ImageComments = text
                return [Change("ImageComments", None, text)]

        return Action()


class PluginAndVrTests(SynchronousTestCase):
    """Plugins and the VR validator."""

    def test_plugin_action_runs(self) -> None:
        """A plugin named in the list is compiled with its arguments and applied."""
        plan, sink = compile_text("- {plugin: stamp, text: hi}\n", plugins={"stamp": _Stamp()})
        assert plan is not None
        ds = Dataset()
        plan.apply(ds, CONTEXT)
        self.assertEqual(ds.ImageComments, "hi")

    def test_plugin_argument_error_is_config_error(self) -> None:
        """A plugin's ValueError becomes a config error naming it."""
        _, sink = compile_text("- {plugin: stamp}\n", plugins={"stamp": _Stamp()})
        self.assertIn("stamp: needs text", sink.errors[0][2])

    def test_each_vr_class(self) -> None:
        """Representative valid and invalid values per VR class (PS3.5 Table 6.2-1)."""
        good = {"AE": "STORESCP", "AS": "045Y", "CS": "ORIGINAL", "DA": "20240229", "DS": "-1.5e3", "DT": "20240229123000.5+0100",
                "IS": "-12", "LO": "x" * 64, "PN": "DOE^JOHN", "SH": "x" * 16, "TM": "235959.123", "UI": "1.2.3",
                "US": "65535", "SS": "-5", "FL": "1.5", "AT": "(0010,0010)", "UT": "a\nb"}
        bad = {"AE": "A\\B", "AS": "45Y", "CS": "lower", "DA": "20230229", "DS": "1,5", "DT": "2024-01", "IS": "1.5",
               "LO": "x" * 65, "PN": "a=b=c=d", "SH": "x" * 17, "TM": "246000", "UI": "1.02.3", "US": "65536",
               "SS": "x", "FL": "nope", "AT": "Foo", "LT": "\x01"}
        for vr, value in good.items():
            self.assertIsNone(check_value(vr, value), (vr, value))
        for vr, value in bad.items():
            self.assertIsNotNone(check_value(vr, value), (vr, value))
