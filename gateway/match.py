"""The match language of routing rules: conditions on the header and on the association.

A route's ``match`` is compiled once, at configuration load, from YAML
**nodes** (``yaml.compose``), so every error can name its line and key path,
into a tree of frozen dataclasses (:class:`Predicate`) that is evaluated per
instance against the header (a pydicom data set read with
``stop_before_pixels=True``) and the :class:`~gateway.route.RoutingContext`.
Compiled predicates are hashable and compare by value, so a config reload can
tell which routes changed.

Theory of operation
-------------------
*Compile* (:func:`compile_match`) walks the node tree and reports **every**
problem it finds to the :class:`ErrorSink` (it keeps going after the first),
returning ``None`` when it reported any. *Evaluate* (``Predicate.matches``)
never raises (HARDENING D17): anything that cannot be read or decoded simply
does not match, the same way every time.

Conditions
----------
A mapping of conditions means **all** of them::

    match:
      Modality: CT                      # exact string
      calling_ae_title: "CT*"           # glob

A key is one of

* an element, in any spelling :func:`gateway.tags.parse_path` accepts:
  ``Modality``, ``(0008,0060)``, ``0008,0060``, ``00080060``, a private
  element by creator ``(0029,"SIEMENS CSA HEADER",10)`` (whatever block the
  data set reserved for that creator, PS3.5 7.8.1), or a sequence path
  ``RequestAttributesSequence/ScheduledProcedureStepID`` (true if the element
  in **any** item matches, PS3.5 7.5);
* a context key, about the association the instance arrived on:

  - ``calling_ae_title``, ``called_ae_title``: string patterns (below);
  - ``tls_subject``: a certificate name pattern, matched attribute by
    attribute (:mod:`gateway.subject`: ``tls_subject: "CN=ct*,O=Example"``
    needs an O attribute equal to ``Example`` and a CN starting with
    ``ct``; other attributes are ignored), or a list of them; ``{equals:
    ...}`` compares the RFC 4514 string exactly and ``{regex: ...}`` matches
    it (every special character in a value escaped, as ``\,``);
  - ``source_ip``: a CIDR or a list of CIDRs, IPv4 or IPv6
    (``10.1.0.0/16``, ``[192.168.1.7, "fd00::/8"]``); an IPv4-mapped IPv6
    peer address (``::ffff:10.1.2.3``) matches IPv4 networks;
  - ``origin``: how the instance came in, ``dimse`` (C-STORE), ``dicomweb``
    (STOW-RS, issue 17) or ``retrieve``, or a list of those;
  - ``listener``: the listener's name (a string pattern) or its port (an
    integer), or a list of those: ``listener: [modalities, 11112]``;
  - ``time_of_day: {between: ["07:00", "19:00"]}``: the start is included,
    the end is not; a window may wrap midnight (``["22:00", "06:00"]``);
  - ``weekday: [Mon, Tue]`` or ``weekday: Mon-Fri`` (ranges may wrap:
    ``Fri-Mon``; full names and any case are accepted);

  time windows are evaluated on ``context.received_at`` in the gateway's
  local time; an empty AE title or TLS subject (no TLS) matches no string
  pattern;
* a combinator: ``all: [{...}, ...]``, ``any: [{...}, ...]``, ``not: {...}``,
  nesting freely (``any: []`` and ``all: []`` are errors: they are always
  a mistake);
* ``plugin: NAME``: the whole mapping is a plugin call, the other keys are its
  arguments (``{plugin: study_size, min_instances: 3}``); put it inside
  ``all:`` to combine it with other conditions.

A route without ``match`` (or ``match: {}``) matches everything
(:data:`MATCH_ALL`).

Value patterns (element and string context keys)
------------------------------------------------
* ``Modality: CT``: exact, case-sensitive, after stripping DICOM padding
  (spaces and NULs around the value, trailing only for ST/LT/UT, PS3.5 6.2).
* ``StationName: "CT*"``: a string holding any of ``*``, ``?`` or ``[`` is a
  **glob** (``*`` any run, ``?`` one character, ``[...]`` a set, ``[!...]``
  its complement), matched against the whole value, case-sensitive. To
  compare a string holding those characters literally write
  ``{equals: "lit*ral"}``; ``{glob: "..."}`` states a glob explicitly.
* ``{regex: "^1\\.2\\.840\\..*"}``: Python :mod:`re`, ``fullmatch`` on the
  value.
* ``SeriesNumber: 5``: an unquoted number equals a value whose numeric form
  is that number (``"005"``, ``5``) or whose text is the number as written.
* ``Modality: [CT, MR, {regex: "P."}]``: a list means any of its patterns.
* ``{present: true}`` / ``{present: false}``: whether the element exists
  (in any item, for a sequence path); a present element may be empty.
* ``{empty: true}``: present with an empty value (zero-length, or a sequence
  with no items); ``{empty: false}``: present and not empty.
* ``{gt: 100}``, ``{ge: ...}``, ``{lt: ...}``, ``{le: ...}``,
  ``{between: [a, b]}`` (inclusive): numeric, on the numeric VRs (IS, DS, US,
  SS, UL, SL, FL, FD, UV, SV) and on values that look like numbers in string
  VRs (SH, LO, CS, UN, private elements of unknown VR). Using them on other
  VRs (PN, UI, DA, SQ, OB...) is a configuration error.
* ``{after: "20240101"}``, ``{before: ...}``, ``{between: [a, b]}``,
  ``{within: 7d}``: dates and times, on DA, TM and DT (and private elements
  of unknown VR, read as the literal's kind). ``after``/``before`` are
  exclusive, ``between`` inclusive. Literals: DA ``20240101`` or
  ``2024-01-01``; TM ``0700``, ``07:00``, ``07:00:30.5``; DT
  ``20240101073000`` or ``2024-01-01T07:30:00``. A value or literal with
  components left out (TM ``07``) means its earliest instant; a DT
  UTC offset (``&+0100``) is ignored (wall-clock comparison).
  ``within`` (DA and DT) takes a duration (``7d``, ``12h``, or seconds):
  the value lies between ``received_at - duration`` and ``received_at``
  (for DA, by calendar day in local time).

Several operators in one mapping must **all** hold, and the value tests among
them (equals, glob, regex, numeric and date operators) must hold for the same
value: ``{ge: 1, le: 10}`` is a range.

Values, VRs and character sets
------------------------------
* Multi-valued elements (VM > 1): a pattern matches if **any** value does.
* PN is compared as its string form (``Doe^John``); when the name has more
  than one component group (``Yamada^Tarou=山田^太郎``), each group is also
  tried on its own.
* An absent element makes every pattern false, except ``{present: false}``.
  An empty element has no values: only ``present`` and ``empty`` see it.
* Sequences (SQ) and binary VRs (OB, OW, OF, OD, OL, OV) only take
  ``present`` and ``empty``; other patterns on them are configuration errors.
  A UN value (or any value left as bytes) is read as text only when it is
  plain ASCII; otherwise it has no values.
* Rule values are ``str``; pydicom decodes text with the data set's Specific
  Character Set (PS3.5 6.1). A value that cannot be decoded (pydicom's
  replacement character U+FFFD in it, or an exception while reading it) does
  not match any value pattern, deterministically.
"""

from __future__ import annotations

import datetime
import fnmatch
import ipaddress
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Iterable, Iterator, Protocol, Sequence, TypeAlias

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from gateway.interfaces import IMatchPredicate
from gateway.subject import NamePattern
from gateway.route import RoutingContext
from gateway.tags import TagPath, find
from gateway.values import When, as_number, element_values, show_when, text_forms, value_when

__all__ = [
    "MATCH_ALL",
    "All",
    "Any_",
    "ContextText",
    "ElementCondition",
    "ListenerCondition",
    "MatchAll",
    "Not",
    "PluginPredicate",
    "Predicate",
    "SourceIp",
    "TimeOfDay",
    "Weekday",
    "plugins_by_name",
]


# --------------------------------------------------------------------------
# Public protocols
# --------------------------------------------------------------------------

class Predicate(Protocol):
    """A compiled condition: a frozen dataclass, hashable and comparable."""

    def matches(self, dataset: Dataset, context: RoutingContext) -> bool:
        """Whether the instance satisfies the condition; never raises.

        :param dataset: the header (read with ``stop_before_pixels=True``).
        :param context: the association the instance arrived on.
        :returns: the verdict.
        """
        ...

    def describe(self) -> str:
        """A human-readable form for ``check`` output (``Modality is 'CT'``).

        :returns: the description.
        """
        ...


# --------------------------------------------------------------------------
# Value tests: one value in, a verdict out
# --------------------------------------------------------------------------

class ValueTest(Protocol):
    """A test on one value of an element (or of a context string)."""

    def test(self, value: object, context: RoutingContext) -> bool:
        """Whether ``value`` passes."""
        ...

    def describe(self) -> str:
        """Words for ``check`` output."""
        ...


@dataclass(frozen=True)
class Exact:
    """Exact, case-sensitive string comparison after padding is stripped (PS3.5 6.2)."""

    text: str

    def test(self, value: object, context: RoutingContext) -> bool:
        """:returns: whether one of the value's text forms equals :attr:`text`."""
        return self.text in text_forms(value)

    def describe(self) -> str:
        """:returns: ``is 'CT'``."""
        return f"is {self.text!r}"


@dataclass(frozen=True)
class Glob:
    """An fnmatch-style glob on the whole value, case-sensitive."""

    pattern: str
    _compiled: re.Pattern[str] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", re.compile(fnmatch.translate(self.pattern), re.DOTALL))

    def test(self, value: object, context: RoutingContext) -> bool:
        """:returns: whether a text form of the value matches the glob."""
        return any(self._compiled.match(text) is not None for text in text_forms(value))

    def describe(self) -> str:
        """:returns: ``matches 'CT*'``."""
        return f"matches {self.pattern!r}"


@dataclass(frozen=True)
class SubjectPattern:
    """A certificate name pattern on ``tls_subject``, matched attribute by attribute (:mod:`gateway.subject`).

    Not a glob over the RFC 4514 string: ``CN=mr*,O=Radiology`` needs an O
    attribute of its own, so a CN of ``mr1,O=Radiology`` does not match.
    """

    text: str
    _parsed: NamePattern = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_parsed", NamePattern.parse(self.text))

    def test(self, value: object, context: RoutingContext) -> bool:
        """:returns: whether the subject string parses and satisfies the pattern."""
        return isinstance(value, str) and self._parsed.matches_text(value)

    def describe(self) -> str:
        """:returns: ``matches subject 'CN=mr*,O=Radiology'``."""
        return f"matches subject {self.text!r}"


@dataclass(frozen=True)
class Regex:
    """A Python regular expression that must match the whole value (``re.fullmatch``)."""

    source: str
    _compiled: re.Pattern[str] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", re.compile(self.source))

    def test(self, value: object, context: RoutingContext) -> bool:
        """:returns: whether a text form of the value matches in full."""
        return any(self._compiled.fullmatch(text) is not None for text in text_forms(value))

    def describe(self) -> str:
        """:returns: ``matches regex '...'``."""
        return f"matches regex {self.source!r}"


@dataclass(frozen=True)
class NumberEquals:
    """An unquoted YAML number: equal in numeric form, or equal to the number's text."""

    number: Decimal
    text: str

    def test(self, value: object, context: RoutingContext) -> bool:
        """:returns: whether the value equals the number."""
        number = as_number(value)
        if number is not None and number == self.number:
            return True
        return self.text in text_forms(value)

    def describe(self) -> str:
        """:returns: ``= 5``."""
        return f"= {self.text}"


@dataclass(frozen=True)
class NumberRange:
    """Numeric bounds (``gt``/``ge``/``lt``/``le``/``between``); None means unbounded."""

    lower: Decimal | None = None
    lower_inclusive: bool = True
    upper: Decimal | None = None
    upper_inclusive: bool = True

    def test(self, value: object, context: RoutingContext) -> bool:
        """:returns: whether the value's numeric form lies within the bounds."""
        number = as_number(value)
        if number is None:
            return False
        if self.lower is not None and (number < self.lower or not self.lower_inclusive and number == self.lower):
            return False
        if self.upper is not None and (number > self.upper or not self.upper_inclusive and number == self.upper):
            return False
        return True

    def describe(self) -> str:
        """:returns: ``> 100``, ``between 1 and 5``..."""
        return _describe_range(self.lower, self.lower_inclusive, self.upper, self.upper_inclusive, str)


@dataclass(frozen=True)
class TimeRange:
    """Bounds on a DA, TM or DT value (``after``/``before`` exclusive, ``between`` inclusive)."""

    kind: str
    lower: When | None = None
    lower_inclusive: bool = True
    upper: When | None = None
    upper_inclusive: bool = True

    def test(self, value: object, context: RoutingContext) -> bool:
        """:returns: whether the value, read as :attr:`kind`, lies within the bounds."""
        when = value_when(value, self.kind)
        if when is None:
            return False
        return _within_bounds(when, self.lower, self.lower_inclusive, self.upper, self.upper_inclusive)

    def describe(self) -> str:
        """:returns: ``after 2024-01-01``..."""
        return _describe_range(
            self.lower, self.lower_inclusive, self.upper, self.upper_inclusive, show_when, words=True
        )


@dataclass(frozen=True)
class Within:
    """A DA or DT value no older than ``seconds`` before ``received_at`` (and not after it)."""

    kind: str
    seconds: float

    def test(self, value: object, context: RoutingContext) -> bool:
        """:returns: whether the value is in the window ending at ``received_at`` (local time)."""
        when = value_when(value, self.kind)
        if when is None:
            return False
        try:
            now = datetime.datetime.fromtimestamp(context.received_at)
            start = now - datetime.timedelta(seconds=self.seconds)
        except (OverflowError, OSError, ValueError):
            return False
        if self.kind == "DA":
            return start.date() <= when <= now.date()  # type: ignore[operator]
        return start <= when <= now  # type: ignore[operator]

    def describe(self) -> str:
        """:returns: ``within the last 604800s``."""
        return f"within the last {self.seconds:g}s"


def _within_bounds(when: Any, lower: Any, lower_inc: bool, upper: Any, upper_inc: bool) -> bool:
    """Compare an instant against optional bounds of the same kind."""
    try:
        if lower is not None and (when < lower or not lower_inc and when == lower):
            return False
        if upper is not None and (when > upper or not upper_inc and when == upper):
            return False
    except TypeError:
        return False
    return True


def _describe_range(lower: Any, lower_inc: bool, upper: Any, upper_inc: bool, show: Any, words: bool = False) -> str:
    """Words for a range: ``between a and b``, ``> a``, ``after a``..."""
    if lower is not None and upper is not None and lower_inc and upper_inc:
        return f"between {show(lower)} and {show(upper)}"
    parts = []
    if lower is not None:
        parts.append(("at or after " if lower_inc else "after ") if words else (">= " if lower_inc else "> "))
        parts[-1] += show(lower)
    if upper is not None:
        parts.append(("at or before " if upper_inc else "before ") if words else ("<= " if upper_inc else "< "))
        parts[-1] += show(upper)
    return " and ".join(parts)


# --------------------------------------------------------------------------
# Patterns: a list of found elements in, a verdict out
# --------------------------------------------------------------------------

class ElementPattern(Protocol):
    """A pattern on the elements a path found (zero or more, one per sequence item)."""

    def on_elements(self, elements: Sequence[DataElement], context: RoutingContext) -> bool:
        """Whether the found elements satisfy the pattern."""
        ...

    def describe(self) -> str:
        """Words for ``check`` output."""
        ...


@dataclass(frozen=True)
class Present:
    """``{present: true|false}``: whether the path names any element."""

    expected: bool

    def on_elements(self, elements: Sequence[DataElement], context: RoutingContext) -> bool:
        """:returns: whether presence is as expected."""
        return bool(elements) == self.expected

    def describe(self) -> str:
        """:returns: ``is present`` or ``is absent``."""
        return "is present" if self.expected else "is absent"


def _is_empty(element: DataElement) -> bool:
    """Whether a present element has an empty value (zero length; no items for SQ)."""
    value = element.value
    if value is None:
        return True
    if isinstance(value, PersonName):
        return not str(value).strip(" \x00=")
    if isinstance(value, (str, bytes, bytearray)):
        return not value.strip(b" \x00" if isinstance(value, (bytes, bytearray)) else " \x00")
    try:
        return len(value) == 0
    except TypeError:
        return False


@dataclass(frozen=True)
class Empty:
    """``{empty: true}``: present and empty; ``{empty: false}``: present and not empty."""

    expected: bool

    def on_elements(self, elements: Sequence[DataElement], context: RoutingContext) -> bool:
        """:returns: whether any found element's emptiness is as expected."""
        return any(_is_empty(element) == self.expected for element in elements)

    def describe(self) -> str:
        """:returns: ``is empty`` or ``is not empty``."""
        return "is empty" if self.expected else "is present and not empty"


@dataclass(frozen=True)
class Values:
    """Value tests that must all hold for one same value of one found element (any of them)."""

    tests: tuple[ValueTest, ...]

    def on_elements(self, elements: Sequence[DataElement], context: RoutingContext) -> bool:
        """:returns: whether some value of some element passes every test."""
        for element in elements:
            for value in element_values(element):
                if all(test.test(value, context) for test in self.tests):
                    return True
        return False

    def describe(self) -> str:
        """:returns: the tests' words joined by ``and``."""
        return " and ".join(test.describe() for test in self.tests)


@dataclass(frozen=True)
class AllOf:
    """Several patterns from one mapping: all must hold."""

    patterns: tuple[ElementPattern, ...]

    def on_elements(self, elements: Sequence[DataElement], context: RoutingContext) -> bool:
        """:returns: whether every pattern holds."""
        return all(pattern.on_elements(elements, context) for pattern in self.patterns)

    def describe(self) -> str:
        """:returns: the patterns' words joined by ``and``."""
        return " and ".join(pattern.describe() for pattern in self.patterns)


@dataclass(frozen=True)
class AnyOf:
    """A YAML list of patterns: any may hold."""

    patterns: tuple[ElementPattern, ...]

    def on_elements(self, elements: Sequence[DataElement], context: RoutingContext) -> bool:
        """:returns: whether some pattern holds."""
        return any(pattern.on_elements(elements, context) for pattern in self.patterns)

    def describe(self) -> str:
        """:returns: ``is one of ['CT', 'MR']`` or the alternatives joined by ``or``."""
        if all(isinstance(p, Values) and len(p.tests) == 1 and isinstance(p.tests[0], Exact) for p in self.patterns):
            texts = [p.tests[0].text for p in self.patterns]  # type: ignore[attr-defined]
            return f"is one of {texts!r}"
        return "(" + " or ".join(pattern.describe() for pattern in self.patterns) + ")"


# --------------------------------------------------------------------------
# Predicates
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class MatchAll:
    """The predicate of a route without ``match``: true for every instance."""

    def matches(self, dataset: Dataset, context: RoutingContext) -> bool:
        """:returns: True."""
        return True

    def describe(self) -> str:
        """:returns: ``everything``."""
        return "everything"

#: The predicate of a route without ``match``.
MATCH_ALL: Predicate = MatchAll()


@dataclass(frozen=True)
class All:
    """A mapping of conditions, or ``all: [...]``: every item must hold."""

    items: tuple[Predicate, ...]

    def matches(self, dataset: Dataset, context: RoutingContext) -> bool:
        """:returns: whether every item holds (true for none)."""
        return all(item.matches(dataset, context) for item in self.items)

    def describe(self) -> str:
        """:returns: the items joined by ``and``."""
        if len(self.items) == 1:
            return self.items[0].describe()
        return "(" + " and ".join(item.describe() for item in self.items) + ")"


@dataclass(frozen=True)
class Any_:
    """``any: [...]``: some item must hold."""

    items: tuple[Predicate, ...]

    def matches(self, dataset: Dataset, context: RoutingContext) -> bool:
        """:returns: whether some item holds."""
        return any(item.matches(dataset, context) for item in self.items)

    def describe(self) -> str:
        """:returns: the items joined by ``or``."""
        if len(self.items) == 1:
            return self.items[0].describe()
        return "(" + " or ".join(item.describe() for item in self.items) + ")"


@dataclass(frozen=True)
class Not:
    """``not: {...}``: the complement of its item."""

    item: Predicate

    def matches(self, dataset: Dataset, context: RoutingContext) -> bool:
        """:returns: whether the item does not hold."""
        return not self.item.matches(dataset, context)

    def describe(self) -> str:
        """:returns: ``not (...)``."""
        return f"not ({self.item.describe()})"


@dataclass(frozen=True)
class ElementCondition:
    """A pattern on the element(s) a path names in the header."""

    path: TagPath
    pattern: ElementPattern

    def matches(self, dataset: Dataset, context: RoutingContext) -> bool:
        """Find the elements (through every sequence item) and apply the pattern.

        Reading an element can fail inside pydicom (a value it cannot
        convert, an odd character set under strict settings); the condition
        is then false, the same way every time (HARDENING D17).

        :returns: the verdict.
        """
        try:
            elements = list(find(dataset, self.path))
            return bool(self.pattern.on_elements(elements, context))
        except Exception:  # noqa: BLE001 - evaluation never raises (HARDENING D17)
            return False

    def describe(self) -> str:
        """:returns: ``Modality is 'CT'``."""
        return f"{self.path} {self.pattern.describe()}"


def _context_texts(key: str, context: RoutingContext) -> list[object]:
    """The values a string context key is compared with."""
    if key == "calling_ae_title":
        return [context.calling_ae_title.strip(" ")]
    if key == "called_ae_title":
        return [context.called_ae_title.strip(" ")]
    if key == "origin":
        return [getattr(context, "origin", "dimse")]
    return [context.tls_subject]


@dataclass(frozen=True)
class ContextText:
    """A string pattern on ``calling_ae_title``, ``called_ae_title`` or ``tls_subject``."""

    key: str
    alternatives: tuple[tuple[ValueTest, ...], ...]

    def matches(self, dataset: Dataset, context: RoutingContext) -> bool:
        """:returns: whether some alternative's tests all hold for the context value."""
        try:
            values = [v for v in _context_texts(self.key, context) if v != ""]
            return any(all(t.test(v, context) for t in alt) for alt in self.alternatives for v in values)
        except Exception:  # noqa: BLE001 - evaluation never raises
            return False

    def describe(self) -> str:
        """:returns: ``calling_ae_title matches 'CT*'``."""
        return f"{self.key} {_describe_alternatives(self.alternatives)}"


def _describe_alternatives(alternatives: tuple[tuple[ValueTest, ...], ...]) -> str:
    """Words for alternatives of value tests."""
    words = [" and ".join(t.describe() for t in alt) for alt in alternatives]
    return words[0] if len(words) == 1 else "(" + " or ".join(words) + ")"


@dataclass(frozen=True)
class ListenerCondition:
    """``listener``: the listener's name (string patterns) or port (integers)."""

    names: tuple[tuple[ValueTest, ...], ...]
    ports: frozenset[int]

    def matches(self, dataset: Dataset, context: RoutingContext) -> bool:
        """:returns: whether the port is listed or the name matches."""
        try:
            if context.listener_port in self.ports:
                return True
            return any(all(t.test(context.listener, context) for t in alt) for alt in self.names)
        except Exception:  # noqa: BLE001 - evaluation never raises
            return False

    def describe(self) -> str:
        """:returns: ``listener is 'ct' or port 11112``."""
        parts = [_describe_alternatives(self.names)] if self.names else []
        parts += [f"port {port}" for port in sorted(self.ports)]
        return "listener " + " or ".join(parts)

IpNetwork: TypeAlias = "ipaddress.IPv4Network | ipaddress.IPv6Network"


@dataclass(frozen=True)
class SourceIp:
    """``source_ip``: the peer address lies in one of the networks."""

    networks: tuple[IpNetwork, ...]

    def matches(self, dataset: Dataset, context: RoutingContext) -> bool:
        """:returns: whether the peer address is in a network (IPv4-mapped IPv6 counts as IPv4)."""
        try:
            address = ipaddress.ip_address(context.source_address.strip())
        except ValueError:
            return False
        candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        return any(candidate in network for candidate in candidates for network in self.networks
                   if candidate.version == network.version)

    def describe(self) -> str:
        """:returns: ``source_ip in 10.0.0.0/8``."""
        return "source_ip in " + ", ".join(str(network) for network in self.networks)


def _local(received_at: float) -> datetime.datetime | None:
    """``received_at`` as a local wall-clock time, or None when out of range."""
    try:
        return datetime.datetime.fromtimestamp(received_at)
    except (OverflowError, OSError, ValueError):
        return None


@dataclass(frozen=True)
class TimeOfDay:
    """``time_of_day: {between: [start, end]}``: start included, end excluded; may wrap midnight."""

    start: int
    end: int

    def matches(self, dataset: Dataset, context: RoutingContext) -> bool:
        """:returns: whether the local time of ``received_at`` is in the window."""
        now = _local(context.received_at)
        if now is None:
            return False
        t = ((now.hour * 60 + now.minute) * 60 + now.second) * 1_000_000 + now.microsecond
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end  # the window wraps midnight

    def describe(self) -> str:
        """:returns: ``time of day in [07:00:00, 19:00:00)``."""
        return f"time of day in [{show_when(self.start)}, {show_when(self.end)})"

_WEEKDAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
DAY_NUMBERS: dict[str, int] = {
    name: number
    for number, full in enumerate(("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))
    for name in (full, full[:3])
}


@dataclass(frozen=True)
class Weekday:
    """``weekday``: the local weekday of ``received_at`` (0 = Monday) is one of :attr:`days`."""

    days: frozenset[int]

    def matches(self, dataset: Dataset, context: RoutingContext) -> bool:
        """:returns: whether the local weekday is listed."""
        now = _local(context.received_at)
        return now is not None and now.weekday() in self.days

    def describe(self) -> str:
        """:returns: ``weekday in Mon, Tue``."""
        return "weekday in " + ", ".join(_WEEKDAY_NAMES[day] for day in sorted(self.days))


@dataclass(frozen=True)
class PluginPredicate:
    """A predicate built by an :class:`~gateway.interfaces.IMatchPredicate` plugin."""

    name: str
    inner: Predicate

    def matches(self, dataset: Dataset, context: RoutingContext) -> bool:
        """:returns: the plugin's verdict; False if it raises (evaluation never raises)."""
        try:
            return bool(self.inner.matches(dataset, context))
        except Exception:  # noqa: BLE001 - a plugin's failure must not fail routing
            return False

    def describe(self) -> str:
        """:returns: ``plugin NAME: ...``."""
        try:
            return f"plugin {self.name}: {self.inner.describe()}"
        except Exception:  # noqa: BLE001
            return f"plugin {self.name}"


def plugins_by_name(providers: Iterable[IMatchPredicate]) -> dict[str, IMatchPredicate]:
    """Index discovered plugins by their ``name`` (the first of a name wins).

    :param providers: e.g. ``twisted.plugin.getPlugins(IMatchPredicate, plugins_package)``.
    :returns: ``{name: plugin}``.
    """
    found: dict[str, IMatchPredicate] = {}
    for provider in providers:
        found.setdefault(str(provider.name), provider)
    return found


def _iter_predicates(predicate: Predicate) -> Iterator[Predicate]:
    """Walk a predicate tree (for tests and ``check``)."""
    yield predicate
    if isinstance(predicate, (All, Any_)):
        for item in predicate.items:
            yield from _iter_predicates(item)
    elif isinstance(predicate, Not):
        yield from _iter_predicates(predicate.item)
