"""Property tests (hypothesis) for the match language.

For arbitrary data sets (odd character sets, undecodable bytes, junk in typed
elements, sequences) and arbitrary rules of the language:

- compiling a rule the generator knows to be valid reports no error, and
  compiling it twice gives equal predicates (config reload compares them);
- evaluation never raises (HARDENING D17) and is deterministic;
- ``not`` of a rule is its complement, and ``any: [rule]`` equals the rule.
"""

from __future__ import annotations

import warnings
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from twisted.trial.unittest import SynchronousTestCase

from gateway.config.match import compile_match
from gateway.match import Predicate
from gateway.route import RoutingContext

# (keyword, tag, VR) of the elements the generated data sets and rules use.
ELEMENTS: list[tuple[str, int, str]] = [
    ("Modality", 0x00080060, "CS"),
    ("PatientName", 0x00100010, "PN"),
    ("PatientID", 0x00100020, "LO"),
    ("StudyDate", 0x00080020, "DA"),
    ("StudyTime", 0x00080030, "TM"),
    ("AcquisitionDateTime", 0x0008002A, "DT"),
    ("SeriesNumber", 0x00200011, "IS"),
    ("SliceThickness", 0x00180050, "DS"),
    ("ImageType", 0x00080008, "CS"),
    ("StudyDescription", 0x00081030, "LO"),
]
TEXT_VRS = {"CS", "PN", "LO", "DA", "TM", "DT", "IS", "DS"}
CHARSETS = ["", "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 87", "GB18030", "ISO_IR 999", "\\ISO 2022 IR 87", "ISO 2022 IR 6\\ISO 2022 IR 100"]

value_bytes = st.one_of(
    st.binary(max_size=24),
    st.sampled_from([b"CT", b"MR ", b"20240105", b"070000", b"20240105103000+0100", b"5", b"0.1", b"A\\B", b"Doe^John",
                     b"\x1b$B;3ED\x1b(B", b"\xff\xfe", b"", b"  "]),
)


@st.composite
def datasets(draw: st.DrawFn, depth: int = 0) -> Dataset:
    """A data set of raw (undecoded) elements, maybe a character set and a sequence."""
    ds = Dataset()
    charset = draw(st.sampled_from(CHARSETS))
    if charset:
        ds[0x00080005] = RawDataElement(0x00080005, "CS", len(charset), charset.encode(), 0, False, True)  # type: ignore[assignment]
    for keyword, tag, vr in draw(st.lists(st.sampled_from(ELEMENTS), unique=True, max_size=len(ELEMENTS))):
        value = draw(value_bytes)
        ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)  # type: ignore[assignment]
    if depth == 0 and draw(st.booleans()):
        ds.RequestAttributesSequence = draw(st.lists(datasets(depth=1), max_size=3))
    if draw(st.booleans()):
        block = ds.private_block(0x0029, "ACME 1.0", create=True)
        block.add_new(0x10, "UN", draw(value_bytes))
    return ds


def contexts() -> st.SearchStrategy[RoutingContext]:
    """Association contexts, some with junk addresses and out-of-range times."""
    return st.builds(
        RoutingContext,
        calling_ae_title=st.sampled_from(["CT1", "MR_2", "", "  ", "ü"]),
        called_ae_title=st.sampled_from(["DICOMGW", "X"]),
        source_address=st.sampled_from(["10.1.2.3", "192.168.1.1", "fd00::1", "::ffff:10.0.0.1", "junk", ""]),
        listener=st.sampled_from(["modalities", "tls"]),
        listener_port=st.sampled_from([104, 11112]),
        tls_subject=st.sampled_from(["", "CN=a,O=Example"]),
        received_at=st.one_of(st.floats(min_value=0, max_value=4e9), st.sampled_from([-1e20, 1e20, float("nan")])),
    )


texts = st.sampled_from(["CT", "MR", "Doe^John", "20240105", "5", "A", "", "王^小東"])
globs = st.sampled_from(["C*", "*", "?R", "[CM]T", "*^*"])
regexes = st.sampled_from([".*", "C.", "\\d+", "Doe\\^.*"])
dates = st.sampled_from(["20240101", "2024-01-05", "20241231"])
times = st.sampled_from(["07:00", "0700", "12:30:15.5", "23"])


def string_patterns() -> st.SearchStrategy[Any]:
    """A pattern valid on any text element."""
    return st.one_of(
        texts,
        globs,
        st.builds(lambda r: {"regex": r}, regexes),
        st.builds(lambda t: {"equals": t}, texts),
        st.builds(lambda b: {"present": b}, st.booleans()),
        st.builds(lambda b: {"empty": b}, st.booleans()),
    )


def element_condition(keyword: str, vr: str) -> st.SearchStrategy[dict[str, Any]]:
    """A condition on one element, with patterns fitting its VR."""
    options = [string_patterns()]
    if vr in ("IS", "DS", "CS", "LO"):
        numbers = st.integers(-5, 200) | st.sampled_from([0.1, 1.5])
        options.append(st.builds(lambda op, n: {op: n}, st.sampled_from(["gt", "ge", "lt", "le"]), numbers))
        options.append(st.builds(lambda a, b: {"between": sorted([a, b])}, numbers, numbers))
    if vr == "DA":
        options.append(st.builds(lambda op, d: {op: d}, st.sampled_from(["after", "before"]), dates))
        options.append(st.just({"within": "7d"}))
    if vr == "TM":
        options.append(st.builds(lambda op, t: {op: t}, st.sampled_from(["after", "before"]), times))
    pattern = st.one_of(*options)
    return st.builds(lambda p: {keyword: p}, st.one_of(pattern, st.lists(pattern, min_size=1, max_size=3)))


leaf_conditions = st.one_of(
    st.sampled_from(ELEMENTS).flatmap(lambda e: element_condition(e[0], e[2])),
    st.builds(lambda p: {"RequestAttributesSequence/Modality": p}, string_patterns()),
    st.builds(lambda p: {'(0029,"ACME 1.0",10)': p}, string_patterns()),
    st.builds(lambda g: {"calling_ae_title": g}, globs | texts),
    st.builds(lambda c: {"source_ip": c}, st.sampled_from(["10.0.0.0/8", ["fd00::/8", "192.168.0.0/16"]])),
    st.builds(lambda l: {"listener": l}, st.sampled_from(["modalities", 104, ["tls", 11112]])),
    st.builds(lambda w: {"weekday": w}, st.sampled_from(["Mon-Fri", ["Sat", "Sun"], "Fri-Mon"])),
    st.builds(lambda a, b: {"time_of_day": {"between": [a, b]}}, st.sampled_from(["07:00", "22:00"]), st.sampled_from(["19:00", "06:00"])),
)

rules = st.recursive(
    leaf_conditions,
    lambda inner: st.one_of(
        st.builds(lambda items: {"all": items}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda items: {"any": items}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda item: {"not": item}, inner),
    ),
    max_leaves=6,
)


class _Sink:
    """Collects errors."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, node: yaml.Node | None, key_path: str, message: str) -> object:
        """Record an error."""
        self.errors.append(f"{key_path}: {message}")
        return None


def compile_rule(rule: Any) -> Predicate:
    """Dump a generated rule as YAML, compose it and compile it; it must be valid."""
    sink = _Sink()
    predicate = compile_match(yaml.compose(yaml.safe_dump(rule, allow_unicode=True)), "match", sink)
    assert not sink.errors, (rule, sink.errors)
    assert predicate is not None
    return predicate


def evaluate(predicate: Predicate, ds: Dataset, ctx: RoutingContext) -> bool:
    """Evaluate with pydicom's decoding warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return predicate.matches(ds, ctx)


PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class MatchPropertyTests(SynchronousTestCase):
    """Properties over generated data sets and rules."""

    @PROPERTY_SETTINGS
    @given(rules, datasets(), contexts())
    def test_evaluation_never_raises_and_is_deterministic(self, rule: Any, ds: Dataset, ctx: RoutingContext) -> None:
        """Any rule of the language on any data set returns the same bool twice, without raising."""
        predicate = compile_rule(rule)
        first = evaluate(predicate, ds, ctx)
        self.assertIsInstance(first, bool)
        self.assertEqual(evaluate(predicate, ds, ctx), first)
        self.assertIsInstance(predicate.describe(), str)

    @PROPERTY_SETTINGS
    @given(rules, datasets(), contexts())
    def test_not_is_the_complement(self, rule: Any, ds: Dataset, ctx: RoutingContext) -> None:
        """``not: rule`` holds exactly when the rule does not."""
        self.assertEqual(evaluate(compile_rule({"not": rule}), ds, ctx), not evaluate(compile_rule(rule), ds, ctx))

    @PROPERTY_SETTINGS
    @given(rules, datasets(), contexts())
    def test_any_of_one_and_all_of_one_equal_the_rule(self, rule: Any, ds: Dataset, ctx: RoutingContext) -> None:
        """``any: [rule]`` and ``all: [rule]`` decide as the rule does."""
        expected = evaluate(compile_rule(rule), ds, ctx)
        self.assertEqual(evaluate(compile_rule({"any": [rule]}), ds, ctx), expected)
        self.assertEqual(evaluate(compile_rule({"all": [rule]}), ds, ctx), expected)

    @settings(max_examples=200, deadline=None)
    @given(rules)
    def test_compiling_twice_gives_equal_hashable_predicates(self, rule: Any) -> None:
        """Config reload can compare routes: equal rules compile to equal predicates with equal hashes."""
        first, second = compile_rule(rule), compile_rule(rule)
        self.assertEqual(first, second)
        self.assertEqual(hash(first), hash(second))

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=30), st.text(max_size=30))
    def test_arbitrary_keys_and_values_never_raise_at_compile(self, key: str, value: str) -> None:
        """Any string key and value either compiles or reports errors; compile never raises."""
        sink = _Sink()
        node = yaml.compose(yaml.safe_dump({key: value}, allow_unicode=True))
        predicate = compile_match(node, "match", sink)
        self.assertEqual(predicate is None, bool(sink.errors))

