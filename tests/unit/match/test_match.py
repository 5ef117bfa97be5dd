"""Unit tests for the match language: every pattern kind, combinator, context key and config error."""

from __future__ import annotations

import datetime
import warnings
from typing import Any, Mapping

import yaml
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.data import get_charset_files
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway.interfaces import IMatchPredicate
from gateway.config.match import compile_match
from gateway.match import MATCH_ALL, Predicate, plugins_by_name
from gateway.route import RoutingContext


class RecordingSink:
    """An ErrorSink that keeps ``(line, key_path, message)`` (1-based lines)."""

    def __init__(self) -> None:
        self.errors: list[tuple[int | None, str, str]] = []

    def error(self, node: yaml.Node | None, key_path: str, message: str) -> object:
        """Record one error."""
        self.errors.append((None if node is None else node.start_mark.line + 1, key_path, message))
        return None


def compile_text(text: str, plugins: Mapping[str, IMatchPredicate] | None = None) -> Predicate:
    """Compile a match written in YAML; fail the test on any error."""
    sink = RecordingSink()
    predicate = compile_match(yaml.compose(text), "routes[0].match", sink, plugins)
    assert not sink.errors, sink.errors
    assert predicate is not None
    return predicate


def errors_of(text: str, plugins: Mapping[str, IMatchPredicate] | None = None) -> list[tuple[int | None, str, str]]:
    """Compile a match expected to be invalid; return its errors (and check it returned None)."""
    sink = RecordingSink()
    predicate = compile_match(yaml.compose(text), "routes[0].match", sink, plugins)
    assert predicate is None, predicate
    return sink.errors


def local_time(*args: int) -> float:
    """The epoch time of a local wall-clock time."""
    return datetime.datetime(*args).timestamp()  # type: ignore[arg-type]


def context(**overrides: Any) -> RoutingContext:
    """A routing context with sensible defaults (a Monday 10:00 local)."""
    values: dict[str, Any] = dict(
        calling_ae_title="CT1",
        called_ae_title="DICOMGW",
        source_address="10.1.2.3",
        listener="modalities",
        listener_port=11112,
        tls_subject="CN=ct1.example.org,O=Example",
        received_at=local_time(2024, 5, 6, 10, 0),
    )
    values.update(overrides)
    return RoutingContext(**values)


def dataset(**elements: Any) -> Dataset:
    """A data set with the given keyword elements."""
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def raw(ds: Dataset, tag: int, vr: str, value: bytes) -> None:
    """Put an undecoded element in ``ds`` (decoded by pydicom on access, as when read from a file)."""
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)  # type: ignore[assignment]


def check(text: str, ds: Dataset, ctx: RoutingContext | None = None) -> bool:
    """Compile ``text`` and evaluate it."""
    return compile_text(text).matches(ds, ctx or context())


class StringPatternTests(SynchronousTestCase):
    """Exact strings, globs, regexes, equals and lists."""

    def test_exact_string_matches_after_padding_is_stripped(self) -> None:
        """An exact value matches the element's value with its DICOM padding removed."""
        ds = Dataset()
        raw(ds, 0x00080060, "CS", b"CT")
        raw(ds, 0x00080080, "LO", b"Example Hospital ")
        self.assertTrue(check("{Modality: CT, InstitutionName: Example Hospital}", ds))

    def test_exact_string_is_case_sensitive(self) -> None:
        """``ct`` does not match ``CT``."""
        self.assertFalse(check("Modality: ct", dataset(Modality="CT")))

    def test_exact_string_is_not_a_substring_match(self) -> None:
        """``CT`` does not match ``CTA``."""
        self.assertFalse(check("Modality: CT", dataset(Modality="CTA")))

    def test_glob_star_question_and_set(self) -> None:
        """Strings with ``*``, ``?`` or ``[`` are globs on the whole value."""
        ds = dataset(StationName="CT_SCANNER_2")
        self.assertTrue(check('StationName: "CT*"', ds))
        self.assertTrue(check('StationName: "CT_SCANNER_?"', ds))
        self.assertTrue(check('StationName: "CT_SCANNER_[0-9]"', ds))
        self.assertFalse(check('StationName: "CT_SCANNER_[!0-9]"', ds))
        self.assertFalse(check('StationName: "SCANNER*"', ds))

    def test_equals_compares_glob_characters_literally(self) -> None:
        """``{equals: "A*"}`` matches only the literal text ``A*``."""
        self.assertTrue(check('StudyDescription: {equals: "A*"}', dataset(StudyDescription="A*")))
        self.assertFalse(check('StudyDescription: {equals: "A*"}', dataset(StudyDescription="AB")))
        self.assertTrue(check('StudyDescription: "A*"', dataset(StudyDescription="AB")))

    def test_explicit_glob_operator(self) -> None:
        """``{glob: ...}`` is a glob."""
        self.assertTrue(check('StudyDescription: {glob: "*HEAD*"}', dataset(StudyDescription="CT HEAD W/O")))

    def test_regex_must_match_the_whole_value(self) -> None:
        """``regex`` uses ``fullmatch``."""
        ds = dataset(SOPClassUID="1.2.840.10008.5.1.4.1.1.2")
        self.assertTrue(check(r'SOPClassUID: {regex: "1\\.2\\.840\\..*"}', ds))
        self.assertFalse(check(r'SOPClassUID: {regex: "1\\.2\\.840"}', ds))

    def test_list_is_any_of_and_may_mix_pattern_kinds(self) -> None:
        """A list matches when any of its patterns does."""
        text = 'Modality: [MR, {regex: "P."}, "C*"]'
        self.assertTrue(check(text, dataset(Modality="CT")))
        self.assertTrue(check(text, dataset(Modality="PT")))
        self.assertTrue(check(text, dataset(Modality="MR")))
        self.assertFalse(check(text, dataset(Modality="US")))

    def test_yaml_boolean_looking_value_is_compared_as_written(self) -> None:
        """An unquoted ``NO`` (a YAML 1.1 boolean) means the text ``NO``."""
        self.assertTrue(check("BurnedInAnnotation: NO", dataset(BurnedInAnnotation="NO")))

    def test_several_operators_must_hold_for_the_same_value(self) -> None:
        """``{glob, regex}`` in one mapping are both required of one value."""
        self.assertTrue(check('Modality: {glob: "C*", regex: ".T"}', dataset(Modality="CT")))
        self.assertFalse(check('Modality: {glob: "C*", regex: ".T"}', dataset(Modality="CR")))


class PresenceTests(SynchronousTestCase):
    """``present``, ``empty`` and absent elements."""

    def test_present_true_and_false(self) -> None:
        """``present`` tells whether the element exists, whatever its value."""
        ds = dataset(AccessionNumber="")
        self.assertTrue(check("AccessionNumber: {present: true}", ds))
        self.assertFalse(check("AccessionNumber: {present: false}", ds))
        self.assertTrue(check("PatientID: {present: false}", ds))
        self.assertFalse(check("PatientID: {present: true}", ds))

    def test_absent_element_fails_every_value_pattern(self) -> None:
        """A pattern on an absent element is false."""
        ds = dataset(Modality="CT")
        for text in ('PatientID: "*"', "PatientID: {regex: '.*'}", "SeriesNumber: {ge: 0}", "PatientID: {empty: true}"):
            self.assertFalse(check(text, ds), text)

    def test_empty_matches_a_present_but_empty_value(self) -> None:
        """``{empty: true}`` is true for a zero-length value, false for a value or an absent element."""
        self.assertTrue(check("AccessionNumber: {empty: true}", dataset(AccessionNumber="")))
        self.assertFalse(check("AccessionNumber: {empty: true}", dataset(AccessionNumber="A1")))
        self.assertTrue(check("AccessionNumber: {empty: false}", dataset(AccessionNumber="A1")))
        self.assertFalse(check("AccessionNumber: {empty: false}", dataset()))

    def test_empty_value_is_not_matched_by_value_patterns(self) -> None:
        """An empty element has no values: even a ``*`` glob is false."""
        self.assertFalse(check('AccessionNumber: "*"', dataset(AccessionNumber="")))

    def test_empty_person_name_has_no_values(self) -> None:
        """An empty PN is empty and matches no glob."""
        ds = dataset(PatientName="")
        self.assertFalse(check('PatientName: "*"', ds))
        self.assertTrue(check("PatientName: {empty: true}", ds))

    def test_empty_sequence_is_empty_and_present(self) -> None:
        """A sequence with no items is present and empty."""
        ds = dataset(ReferencedSeriesSequence=[])
        self.assertTrue(check("ReferencedSeriesSequence: {present: true, empty: true}", ds))


class NumericTests(SynchronousTestCase):
    """Numeric comparisons on each numeric VR class."""

    def test_comparisons_on_integer_string(self) -> None:
        """gt/ge/lt/le/between on an IS value."""
        ds = dataset(SeriesNumber="100")
        self.assertFalse(check("SeriesNumber: {gt: 100}", ds))
        self.assertTrue(check("SeriesNumber: {ge: 100}", ds))
        self.assertFalse(check("SeriesNumber: {lt: 100}", ds))
        self.assertTrue(check("SeriesNumber: {le: 100}", ds))
        self.assertTrue(check("SeriesNumber: {between: [100, 200]}", ds))
        self.assertFalse(check("SeriesNumber: {between: [101, 200]}", ds))

    def test_decimal_string_compares_exactly(self) -> None:
        """DS ``0.1`` equals the rule's 0.1 (no binary rounding)."""
        ds = dataset(SliceThickness="0.1")
        self.assertTrue(check("SliceThickness: {between: [0.1, 0.1]}", ds))
        self.assertTrue(check("SliceThickness: {gt: 0.05, lt: 0.2}", ds))

    def test_binary_integer_and_float_vrs(self) -> None:
        """US, SS, UL, FL and FD values compare numerically."""
        ds = dataset(Rows=512, PixelPaddingValue=-2000, SimpleFrameList=[70000], RecommendedDisplayFrameRateInFloat=29.97)
        ds.add_new(0x00189087, "FD", 1000.5)  # DiffusionBValue
        self.assertTrue(check("Rows: {ge: 512}", ds))
        self.assertTrue(check("PixelPaddingValue: {lt: 0}", ds))
        self.assertTrue(check("SimpleFrameList: {gt: 65535}", ds))
        self.assertTrue(check("RecommendedDisplayFrameRateInFloat: {between: [29, 30]}", ds))
        self.assertTrue(check("DiffusionBValue: {gt: 1000}", ds))

    def test_unquoted_number_equals_numerically_or_textually(self) -> None:
        """``SeriesNumber: 5`` matches ``005`` and ``5``; ``Rows: 512`` matches US 512."""
        self.assertTrue(check("SeriesNumber: 5", dataset(SeriesNumber="005")))
        self.assertTrue(check("Rows: 512", dataset(Rows=512)))
        self.assertFalse(check("Rows: 511", dataset(Rows=512)))

    def test_numeric_looking_string_in_a_text_vr(self) -> None:
        """A numeric operator on a LO element compares values that look like numbers."""
        self.assertTrue(check("StudyID: {gt: 41}", dataset(StudyID="42")))
        self.assertFalse(check("StudyID: {gt: 41}", dataset(StudyID="A42")))

    def test_invalid_number_in_integer_string_does_not_match(self) -> None:
        """An IS holding junk matches no numeric pattern and does not raise."""
        ds = Dataset()
        raw(ds, 0x00200011, "IS", b"5x")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.assertFalse(check("SeriesNumber: {ge: 0}", ds))
            self.assertTrue(check("SeriesNumber: {present: true}", ds))


class TemporalTests(SynchronousTestCase):
    """DA, TM and DT ranges, and ``within``."""

    def test_date_between_after_before(self) -> None:
        """DA ranges: between inclusive, after/before exclusive, ISO literals accepted."""
        ds = dataset(StudyDate="20240105")
        self.assertTrue(check('StudyDate: {between: ["20240101", "20241231"]}', ds))
        self.assertTrue(check('StudyDate: {between: ["20240105", "20240105"]}', ds))
        self.assertTrue(check("StudyDate: {after: 2024-01-04}", ds))
        self.assertFalse(check('StudyDate: {after: "20240105"}', ds))
        self.assertFalse(check('StudyDate: {before: "20240105"}', ds))

    def test_time_range_accepts_partial_values(self) -> None:
        """TM ``07`` is 07:00:00; ``0730.5`` style and colon literals compare."""
        self.assertTrue(check('StudyTime: {between: ["07:00", "08:00"]}', dataset(StudyTime="07")))
        self.assertTrue(check('StudyTime: {after: "0659"}', dataset(StudyTime="070000.123")))
        self.assertFalse(check('StudyTime: {after: "07:00:01"}', dataset(StudyTime="070000")))

    def test_datetime_range_ignores_utc_offset(self) -> None:
        """DT values compare on their wall-clock part."""
        ds = dataset(AcquisitionDateTime="20240105103000.5+0100")
        self.assertTrue(check('AcquisitionDateTime: {between: ["2024-01-05T10:00:00", "20240105110000"]}', ds))
        self.assertFalse(check('AcquisitionDateTime: {before: "20240105103000"}', ds))

    def test_within_days_of_receipt(self) -> None:
        """``within: 7d`` on DA: from seven days before received_at up to that day."""
        ctx = context(received_at=local_time(2024, 5, 10, 12, 0))
        self.assertTrue(check("StudyDate: {within: 7d}", dataset(StudyDate="20240503"), ctx))
        self.assertTrue(check("StudyDate: {within: 7d}", dataset(StudyDate="20240510"), ctx))
        self.assertFalse(check("StudyDate: {within: 7d}", dataset(StudyDate="20240502"), ctx))
        self.assertFalse(check("StudyDate: {within: 7d}", dataset(StudyDate="20240511"), ctx))

    def test_malformed_date_value_does_not_match(self) -> None:
        """A DA value that is not a date matches no range, and the element is still present."""
        ds = Dataset()
        raw(ds, 0x00080020, "DA", b"2024")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.assertFalse(check('StudyDate: {after: "19000101"}', ds))


class MultiValueAndPersonNameTests(SynchronousTestCase):
    """VM > 1 and PN."""

    def test_any_value_of_a_multi_valued_element_matches(self) -> None:
        """``ImageType: LOCALIZER`` matches ``ORIGINAL\\PRIMARY\\LOCALIZER``."""
        ds = dataset(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
        self.assertTrue(check("ImageType: LOCALIZER", ds))
        self.assertFalse(check("ImageType: DERIVED", ds))
        self.assertFalse(check('ImageType: "ORIGINAL\\\\PRIMARY*"', ds))

    def test_multi_valued_numbers(self) -> None:
        """A numeric pattern matches if any value does, and all operators hold for the same value."""
        ds = dataset(WindowCenter=["40", "400"])
        self.assertTrue(check("WindowCenter: {gt: 300}", ds))
        self.assertFalse(check("WindowCenter: {gt: 50, lt: 300}", ds))

    def test_person_name_compared_as_its_string_form(self) -> None:
        """PN ``Doe^John`` matches exactly, by glob and by regex."""
        ds = dataset(PatientName="Doe^John")
        self.assertTrue(check("PatientName: Doe^John", ds))
        self.assertTrue(check('PatientName: "Doe^*"', ds))
        self.assertTrue(check('PatientName: {regex: "Doe\\\\^J.*"}', ds))


class CharacterSetTests(SynchronousTestCase):
    """Values decoded with the data set's Specific Character Set, and undecodable ones (HARDENING D17)."""

    def read_charset_file(self, name: str) -> Dataset:
        """Read one of pydicom's character set test files (header only)."""
        [path] = [p for p in get_charset_files(name)]
        return dcmread(path, stop_before_pixels=True)

    def test_utf8_person_name_groups(self) -> None:
        """ISO_IR 192: the full name and each component group match."""
        ds = self.read_charset_file("chrX1.dcm")
        self.assertTrue(check("PatientName: Wang^XiaoDong=王^小東", ds))
        self.assertTrue(check("PatientName: 王^小東", ds))
        self.assertTrue(check("PatientName: Wang^XiaoDong", ds))

    def test_iso_2022_ir_87_name(self) -> None:
        """ISO 2022 IR 87 (Japanese, with escape sequences) decodes before matching."""
        ds = self.read_charset_file("chrH31.dcm")
        self.assertTrue(check("PatientName: 山田^太郎", ds))
        self.assertTrue(check('PatientName: "Yamada^*"', ds))

    def test_latin1_value(self) -> None:
        """ISO_IR 100: a Latin-1 encoded value matches the rule's str."""
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        raw(ds, 0x00080080, "LO", "Hôpital Général".encode("latin-1"))
        self.assertTrue(check("InstitutionName: Hôpital Général", ds))

    def test_invalid_utf8_bytes_never_match_and_never_raise(self) -> None:
        """A PN with bytes invalid in its character set matches no value pattern, every time."""
        results = []
        for _ in range(2):
            ds = Dataset()
            ds.SpecificCharacterSet = "GB18030"
            raw(ds, 0x00100010, "PN", b"Doe\xff^J\xfe")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results.append((check('PatientName: "*"', ds), check("PatientName: {present: true}", ds)))
        self.assertEqual(results, [(False, True), (False, True)])

    def test_strict_decoding_errors_make_the_condition_false(self) -> None:
        """When pydicom is set to raise on bad values, the condition is false instead of raising."""
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        raw(ds, 0x00100010, "PN", b"Doe\xff^J")
        old = pydicom_config.settings.reading_validation_mode
        pydicom_config.settings.reading_validation_mode = pydicom_config.RAISE
        self.addCleanup(setattr, pydicom_config.settings, "reading_validation_mode", old)
        self.assertFalse(check('PatientName: "*"', ds))
        self.assertTrue(check('not: {PatientName: "*"}', ds))

    def test_unknown_character_set_does_not_raise(self) -> None:
        """An odd Specific Character Set value still gives a deterministic answer."""
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 999"
        raw(ds, 0x00080060, "CS", b"CT")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.assertTrue(check("Modality: CT", ds))


class BinaryAndSequenceTests(SynchronousTestCase):
    """Sequences, sequence paths, binary and UN values."""

    def sequence_dataset(self) -> Dataset:
        """A data set with two request attribute items."""
        first = dataset(ScheduledProcedureStepID="SPS1", RequestedProcedureID="RP1")
        second = dataset(ScheduledProcedureStepID="SPS2")
        return dataset(RequestAttributesSequence=[first, second])

    def test_sequence_path_matches_if_any_item_matches(self) -> None:
        """A path into a sequence is true when the element in any item matches."""
        ds = self.sequence_dataset()
        self.assertTrue(check("RequestAttributesSequence/ScheduledProcedureStepID: SPS2", ds))
        self.assertFalse(check("RequestAttributesSequence/ScheduledProcedureStepID: SPS3", ds))
        self.assertTrue(check("RequestAttributesSequence/RequestedProcedureID: {present: true}", ds))
        self.assertFalse(check("RequestAttributesSequence/StudyInstanceUID: {present: true}", ds))

    def test_sequence_path_by_tag(self) -> None:
        """Tags spell sequence paths too."""
        self.assertTrue(check('"(0040,0275)/00400009": SPS1', self.sequence_dataset()))

    def test_binary_element_presence_and_emptiness(self) -> None:
        """OB elements take ``present`` and ``empty``."""
        ds = Dataset()
        ds.add_new(0x00420011, "OB", b"")  # EncapsulatedDocument
        self.assertTrue(check("EncapsulatedDocument: {present: true, empty: true}", ds))

    def test_un_ascii_value_is_read_as_text(self) -> None:
        """A UN element holding ASCII is compared as text; binary UN matches nothing."""
        ds = Dataset()
        ds.add_new(0x00091010, "UN", b"HELLO\\WORLD ")
        ds.add_new(0x00091011, "UN", b"\x01\x02\xff")
        self.assertTrue(check('"(0009,1010)": WORLD', ds))
        self.assertFalse(check('"(0009,1011)": "*"', ds))
        self.assertTrue(check('"(0009,1011)": {present: true}', ds))

    def test_private_element_by_creator_in_any_block(self) -> None:
        """A private element named by creator is found whichever block the creator reserved."""
        for other_creators in ([], ["OTHER"], ["OTHER", "THIRD"]):
            ds = Dataset()
            for creator in other_creators:
                ds.private_block(0x0029, creator, create=True).add_new(0x10, "LO", "decoy")
            ds.private_block(0x0029, "ACME 1.0", create=True).add_new(0x10, "LO", "wanted")
            self.assertTrue(check('"(0029,\\"ACME 1.0\\",10)": wanted', ds), other_creators)
            self.assertFalse(check('"(0029,\\"ACME 1.0\\",10)": decoy', ds), other_creators)

    def test_private_element_absent_creator(self) -> None:
        """Without its creator the private element is absent."""
        ds = Dataset()
        ds.add_new(0x00291010, "LO", "orphan")
        self.assertTrue(check('"(0029,\\"ACME 1.0\\",10)": {present: false}', ds))


class CombinatorTests(SynchronousTestCase):
    """all, any, not, mappings and MATCH_ALL."""

    def test_mapping_means_all(self) -> None:
        """Every condition of a mapping must hold."""
        ds = dataset(Modality="CT")
        self.assertTrue(check('{Modality: CT, calling_ae_title: "CT*"}', ds))
        self.assertFalse(check('{Modality: CT, calling_ae_title: "MR*"}', ds))

    def test_nested_all_any_not(self) -> None:
        """Combinators nest freely."""
        text = """
        any:
          - all: [{Modality: CT}, {not: {StudyDescription: "*SCOUT*"}}]
          - not: {any: [{Modality: CT}, {Modality: MR}]}
        """
        self.assertTrue(check(text, dataset(Modality="CT", StudyDescription="HEAD")))
        self.assertFalse(check(text, dataset(Modality="CT", StudyDescription="CT SCOUT")))
        self.assertFalse(check(text, dataset(Modality="MR")))
        self.assertTrue(check(text, dataset(Modality="US")))

    def test_empty_mapping_is_match_all(self) -> None:
        """``match: {}`` matches everything."""
        self.assertEqual(compile_text("{}"), MATCH_ALL)
        self.assertTrue(MATCH_ALL.matches(Dataset(), context()))

    def test_compiled_predicates_are_hashable_and_equal_by_value(self) -> None:
        """Compiling the same text twice gives equal predicates with equal hashes."""
        text = '{Modality: [CT, "M*"], StudyDate: {after: "20240101"}, source_ip: 10.0.0.0/8, any: [{regex: {regex: "a"}}]}'
        text = text.replace('{regex: {regex: "a"}}', '{PatientID: {regex: "a"}}')
        first, second = compile_text(text), compile_text(text)
        self.assertEqual(first, second)
        self.assertEqual(hash(first), hash(second))
        self.assertNotEqual(first, compile_text(text.replace("CT", "MR")))

    def test_describe_reads_like_the_rule(self) -> None:
        """``describe`` renders conditions for the check command."""
        self.assertEqual(compile_text("Modality: CT").describe(), "Modality is 'CT'")
        self.assertEqual(compile_text("Modality: [CT, MR]").describe(), "Modality is one of ['CT', 'MR']")
        self.assertEqual(compile_text("not: {SeriesNumber: {gt: 5}}").describe(), "not (SeriesNumber > 5)")


class ContextTests(SynchronousTestCase):
    """Association context keys and time windows."""

    def test_ae_titles(self) -> None:
        """calling/called AE titles take string patterns, padding stripped."""
        ctx = context(calling_ae_title="CT1  ", called_ae_title="DICOMGW")
        self.assertTrue(check("calling_ae_title: CT1", Dataset(), ctx))
        self.assertTrue(check('called_ae_title: ["X", "DICOM*"]', Dataset(), ctx))
        self.assertFalse(check("called_ae_title: {regex: 'X.*'}", Dataset(), ctx))

    def test_source_ip_ipv4_ipv6_lists_and_mapped(self) -> None:
        """CIDRs of either family, lists, and IPv4-mapped IPv6 peers."""
        self.assertTrue(check("source_ip: 10.0.0.0/8", Dataset(), context()))
        self.assertFalse(check("source_ip: 192.168.0.0/16", Dataset(), context()))
        self.assertTrue(check('source_ip: ["192.168.0.0/16", "fd00::/8"]', Dataset(), context(source_address="fd00::5")))
        self.assertTrue(check("source_ip: 10.1.2.3", Dataset(), context(source_address="::ffff:10.1.2.3")))
        self.assertFalse(check("source_ip: 10.0.0.0/8", Dataset(), context(source_address="not an ip")))

    def test_listener_by_name_or_port(self) -> None:
        """``listener`` matches the name (a pattern) or the port (an integer)."""
        self.assertTrue(check("listener: modalities", Dataset(), context()))
        self.assertTrue(check("listener: 11112", Dataset(), context()))
        self.assertTrue(check('listener: [other, "mod*"]', Dataset(), context()))
        self.assertFalse(check("listener: [other, 104]", Dataset(), context()))

    def test_tls_subject_glob(self) -> None:
        """``tls_subject`` is a glob on the peer certificate subject; no subject matches nothing."""
        self.assertTrue(check('tls_subject: "CN=*.example.org,*"', Dataset(), context()))
        self.assertFalse(check('tls_subject: "*"', Dataset(), context(tls_subject="")))

    def test_tls_subject_matches_attributes_not_the_string(self) -> None:
        """Issue 11: a CN ``mr1,O=Radiology`` (escaped comma) does not satisfy ``CN=mr*,O=Radiology``; CN mr1, O Radiology does."""
        crafted = context(tls_subject="CN=mr1\\,O=Radiology")
        self.assertFalse(check('tls_subject: "CN=mr*,O=Radiology"', Dataset(), crafted))
        self.assertFalse(check('tls_subject: {glob: "CN=mr*,O=Radiology"}', Dataset(), crafted))
        self.assertTrue(check('tls_subject: "CN=mr*,O=Radiology"', Dataset(), context(tls_subject="O=Radiology,CN=mr1")))
        self.assertTrue(check('tls_subject: {equals: "CN=mr1\\\\,O=Radiology"}', Dataset(), crafted))

    def test_tls_subject_pattern_errors_name_the_line(self) -> None:
        """A ``tls_subject`` that is not TYPE=VALUE attributes is a configuration error, not a rule matching nothing."""
        errors = errors_of('all:\n  - tls_subject: "*example*"\n')
        self.assertEqual(len(errors), 1, errors)
        self.assertEqual(errors[0][0], 2)
        self.assertIn("not a certificate subject pattern", errors[0][2])

    def test_time_of_day_window_and_wrap(self) -> None:
        """Start included, end excluded; windows may wrap midnight."""
        day = '{time_of_day: {between: ["07:00", "19:00"]}}'
        night = '{time_of_day: {between: ["22:00", "06:00"]}}'
        at = lambda h, m: context(received_at=local_time(2024, 5, 6, h, m))  # noqa: E731
        self.assertTrue(check(day, Dataset(), at(7, 0)))
        self.assertFalse(check(day, Dataset(), at(19, 0)))
        self.assertFalse(check(day, Dataset(), at(6, 59)))
        self.assertTrue(check(night, Dataset(), at(23, 30)))
        self.assertTrue(check(night, Dataset(), at(0, 0)))
        self.assertFalse(check(night, Dataset(), at(12, 0)))

    def test_weekday_lists_and_ranges(self) -> None:
        """Lists, ranges (wrapping too) and full names, in local time."""
        monday = context(received_at=local_time(2024, 5, 6, 10, 0))
        saturday = context(received_at=local_time(2024, 5, 11, 10, 0))
        self.assertTrue(check("weekday: Mon-Fri", Dataset(), monday))
        self.assertFalse(check("weekday: Mon-Fri", Dataset(), saturday))
        self.assertTrue(check("weekday: [sat, Sunday]", Dataset(), saturday))
        self.assertTrue(check("weekday: Fri-Mon", Dataset(), monday))
        self.assertFalse(check("weekday: Tue", Dataset(), monday))


@implementer(IMatchPredicate)
class MinSeries:
    """A test plugin: SeriesNumber at least ``minimum``."""

    name = "min_series"

    def compile(self, arguments: Mapping[str, Any]) -> Predicate:
        """Build the predicate; refuse missing or non-integer arguments."""
        minimum = arguments.get("minimum")
        if not isinstance(minimum, int):
            raise ValueError("minimum must be an integer")
        return compile_text(f"SeriesNumber: {{ge: {minimum}}}")


class PluginTests(SynchronousTestCase):
    """``plugin: NAME`` with arguments."""

    plugins = plugins_by_name([MinSeries()])

    def test_plugin_provides_the_interface(self) -> None:
        """The test plugin satisfies IMatchPredicate."""
        self.assertTrue(verifyObject(IMatchPredicate, MinSeries()))

    def test_plugin_compiles_with_arguments(self) -> None:
        """A plugin call builds the plugin's predicate, combinable under all."""
        predicate = compile_text("all: [{plugin: min_series, minimum: 3}, {Modality: CT}]", self.plugins)
        self.assertTrue(predicate.matches(dataset(SeriesNumber="4", Modality="CT"), context()))
        self.assertFalse(predicate.matches(dataset(SeriesNumber="2", Modality="CT"), context()))

    def test_plugin_value_error_is_a_config_error(self) -> None:
        """A ValueError from compile names the plugin key's line."""
        [(line, path, message)] = errors_of("\nplugin: min_series\nminimum: x\n", self.plugins)
        self.assertEqual((line, path), (2, "routes[0].match.plugin"))
        self.assertIn("minimum must be an integer", message)

    def test_unknown_plugin_lists_the_plugins_found(self) -> None:
        """An unknown name is an error listing what was found."""
        [(line, path, message)] = errors_of("plugin: min_serie", self.plugins)
        self.assertIn("did you mean min_series?", message)
        self.assertIn("plugins found: min_series", message)

    def test_raising_plugin_predicate_is_false(self) -> None:
        """A plugin predicate that raises at evaluation answers False."""

        @implementer(IMatchPredicate)
        class Broken:
            name = "broken"

            def compile(self, arguments: Mapping[str, Any]) -> Any:
                return BrokenPredicate()

        class BrokenPredicate:
            def matches(self, dataset: Dataset, context: RoutingContext) -> bool:
                raise RuntimeError("boom")

            def describe(self) -> str:
                return "broken"

        predicate = compile_text("plugin: broken", {"broken": Broken()})
        self.assertFalse(predicate.matches(Dataset(), context()))


class ConfigErrorTests(SynchronousTestCase):
    """Every class of configuration error names its line and key path."""

    def one_error(self, text: str) -> tuple[int | None, str, str]:
        """Compile text expected to hold exactly one error."""
        errors = errors_of(text)
        self.assertEqual(len(errors), 1, errors)
        return errors[0]

    def test_unknown_keyword_with_suggestion(self) -> None:
        """A misspelt keyword suggests the right one."""
        self.assertEqual(
            self.one_error("Modality: CT\nModalty: CT\n"),
            (2, "routes[0].match.Modalty", "unknown keyword 'Modalty'; did you mean Modality?"),
        )

    def test_misspelt_context_key_suggestion(self) -> None:
        """A misspelt context key suggests it."""
        line, path, message = self.one_error("calling_ae_titel: CT1")
        self.assertIn("did you mean calling_ae_title?", message)

    def test_impossible_tag(self) -> None:
        """A tag of the command group is refused."""
        line, path, message = self.one_error('"(0000,0100)": 1')
        self.assertIn("not part of a data set", message)

    def test_bad_regex(self) -> None:
        """An invalid regex names its line."""
        self.assertEqual(self.one_error("\n\nPatientID: {regex: '('}")[:2], (3, "routes[0].match.PatientID.regex"))

    def test_bad_cidr(self) -> None:
        """An invalid network in a list names the item."""
        self.assertEqual(self.one_error("source_ip:\n  - 10.0.0.0/8\n  - 10.0.0.300/8\n")[:2], (3, "routes[0].match.source_ip[1]"))

    def test_bad_time_and_date_literals(self) -> None:
        """Bad TM/DA literals in time_of_day and date operators are errors."""
        errors = errors_of('time_of_day: {between: ["7h", "19:00"]}\nStudyDate: {after: "2024-13-01"}\nweekday: Funday')
        self.assertEqual([(line, path) for line, path, _ in errors], [
            (1, "routes[0].match.time_of_day.between[0]"),
            (2, "routes[0].match.StudyDate.after"),
            (3, "routes[0].match.weekday"),
        ])

    def test_unknown_operator_with_suggestion(self) -> None:
        """An unknown pattern operator suggests the closest one."""
        line, path, message = self.one_error("PatientID: {regx: 'a'}")
        self.assertEqual(path, "routes[0].match.PatientID.regx")
        self.assertIn("did you mean regex?", message)

    def test_wrong_types(self) -> None:
        """A non-number for gt, a non-boolean for present, a scalar for any are errors."""
        errors = errors_of('SeriesNumber: {gt: "abc"}\nPatientID: {present: maybe}\nany: CT\nModality:\n')
        self.assertEqual([line for line, _, _ in errors], [1, 2, 3, 4])

    def test_empty_any_and_all(self) -> None:
        """``any: []`` and ``all: []`` are errors."""
        self.assertEqual(len(errors_of("any: []\nnot: {all: []}")), 2)

    def test_numeric_operator_on_non_numeric_vr(self) -> None:
        """``gt`` on PN or DA is an error."""
        errors = errors_of("PatientName: {gt: 1}\nStudyDate: {lt: 5}")
        self.assertEqual([path for _, path, _ in errors], ["routes[0].match.PatientName.gt", "routes[0].match.StudyDate.lt"])

    def test_date_operator_on_non_date_vr(self) -> None:
        """``after`` on a CS element is an error."""
        line, path, message = self.one_error('Modality: {after: "20240101"}')
        self.assertIn("only DA, TM, DT", message)

    def test_value_pattern_on_sequence_or_binary(self) -> None:
        """Value patterns on SQ and OB elements are errors."""
        self.assertEqual(len(errors_of("RequestAttributesSequence: X\nEncapsulatedDocument: {regex: a}")), 2)

    def test_within_needs_a_date_element_and_a_duration(self) -> None:
        """``within`` on TM, or with a bad duration, is an error."""
        errors = errors_of("StudyTime: {within: 7d}\nStudyDate: {within: soon}")
        self.assertEqual([path for _, path, _ in errors], ["routes[0].match.StudyTime.within", "routes[0].match.StudyDate.within"])

    def test_reversed_between_and_duplicate_keys(self) -> None:
        """Reversed bounds and a key given twice are errors."""
        errors = errors_of("SeriesNumber: {between: [5, 1]}\nModality: CT\nModality: MR")
        self.assertEqual([line for line, _, _ in errors], [1, 3])

    def test_all_errors_are_reported_in_one_run(self) -> None:
        """Errors in nested combinators are all found, each with its own path."""
        errors = errors_of("any:\n  - Modalty: CT\n  - not: {StudyDate: {gt: x}}\n  - source_ip: nope\n")
        self.assertEqual([path for _, path, _ in errors], [
            "routes[0].match.any[0].Modalty",
            "routes[0].match.any[1].not.StudyDate.gt",
            "routes[0].match.any[2].source_ip",
        ])

    def test_null_match_and_non_mapping(self) -> None:
        """A null match and a list at the top are errors."""
        self.assertEqual(len(errors_of("~")), 1)
        self.assertEqual(len(errors_of("[Modality]")), 1)


class OriginTests(SynchronousTestCase):
    """``origin`` (issue 17): how the instance came in."""

    def test_origin_matches_the_context(self) -> None:
        """``origin: dicomweb`` holds for STOW-RS instances only; C-STORE is ``dimse`` by default."""
        self.assertTrue(check("origin: dicomweb", Dataset(), context(origin="dicomweb")))
        self.assertFalse(check("origin: dicomweb", Dataset(), context()))
        self.assertTrue(check("origin: [dimse, retrieve]", Dataset(), context()))

    def test_unknown_origin_is_an_error(self) -> None:
        """A misspelt origin is an error (it would be a rule that never matches)."""
        [(line, path, message)] = errors_of("origin: dicomwb")
        self.assertIn("unknown origin", message)
