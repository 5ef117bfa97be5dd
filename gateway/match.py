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
import difflib
import fnmatch
import ipaddress
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Iterator, Mapping, Protocol, Sequence, TypeAlias

import yaml
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from gateway.config.durations import parse_duration
from gateway.interfaces import IMatchPredicate
from gateway.subject import NamePattern, PatternError
from gateway.route import RoutingContext
from gateway.tags import TagPath, find, parse_path

__all__ = [
    "MATCH_ALL",
    "All",
    "Any_",
    "ContextText",
    "ElementCondition",
    "ErrorSink",
    "ListenerCondition",
    "MatchAll",
    "Not",
    "PluginPredicate",
    "Predicate",
    "SourceIp",
    "TimeOfDay",
    "Weekday",
    "compile_match",
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


class ErrorSink(Protocol):
    """Where the compiler reports configuration errors (the loader's context)."""

    def error(self, node: yaml.Node | None, key_path: str, message: str) -> object:
        """Record one error.

        :param node: the node the error is about (its ``start_mark.line`` names the line).
        :param key_path: the dotted key path (``routes[2].match.Modality``).
        :param message: what is wrong.
        :returns: anything (ignored).
        """
        ...


# --------------------------------------------------------------------------
# VR classes (PS3.5 6.2, Table 6.2-1)
# --------------------------------------------------------------------------

#: VRs whose values are binary numbers or decimal/integer strings.
NUMERIC_VRS: frozenset[str] = frozenset(
    {"IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "US or SS"}  # PS3.6 ambiguous "US or SS" too
)
#: Date and time VRs (PS3.5 6.2: DA, TM, DT).
TEMPORAL_VRS: frozenset[str] = frozenset({"DA", "TM", "DT"})
#: Binary VRs: only ``present`` and ``empty`` apply.
BINARY_VRS: frozenset[str] = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "OB or OW", "US or OW", "US or SS or OW"})
#: String VRs where a numeric-looking value may be compared numerically.
_NUMERIC_TEXT_VRS: frozenset[str] = frozenset({"SH", "LO", "CS", "UN", "UC"})
#: VRs whose leading spaces are significant (PS3.5 6.2: ST, LT, UT keep them).
_KEEP_LEADING: frozenset[str] = frozenset({"ST", "LT", "UT"})

# A number as DICOM IS/DS write it (PS3.5 6.2), also accepted in other text.
_NUMBER_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
# Glob metacharacters (fnmatch): their presence makes a string a glob.
_GLOB_CHARS = frozenset("*?[")

# YAML 1.1 core tags as the SafeLoader resolves plain scalars.
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"


# --------------------------------------------------------------------------
# Reading values out of elements (never raising)
# --------------------------------------------------------------------------


def _strip(text: str, vr: str) -> str:
    """Remove DICOM padding: spaces (and NUL for UI) around a value (PS3.5 6.2).

    :param text: the value's text.
    :param vr: its VR; ST, LT and UT keep leading spaces.
    :returns: the stripped text.
    """
    if vr in _KEEP_LEADING:
        return text.rstrip(" \x00")
    return text.strip(" \x00")


def _values(element: DataElement) -> list[object]:
    """The element's values as a flat list (empty for empty or SQ elements).

    Text is stripped of padding; bytes are decoded only when plain ASCII
    (a UN element); a text value holding U+FFFD (what pydicom substitutes
    for bytes its character set could not decode) is left out.

    :param element: the element.
    :returns: the values (str, int, float, PersonName, date objects...).
    """
    vr = str(element.VR)
    if vr == "SQ" or vr in BINARY_VRS:
        return []
    raw = element.value
    if raw is None:
        return []
    if isinstance(raw, (bytes, bytearray)):
        try:
            text = bytes(raw).decode("ascii")
        except UnicodeDecodeError:
            return []
        if any(ord(char) < 0x20 and char not in "\x00\t\n\r\f" for char in text):
            return []  # binary, not text
        return [part for part in (_strip(p, vr) for p in text.split("\\")) if part]
    items: Iterable[object]
    if isinstance(raw, (str, PersonName)) or not isinstance(raw, Iterable):
        items = [raw]
    else:
        items = list(raw)
    result: list[object] = []
    for item in items:
        if isinstance(item, str):
            stripped = _strip(item, vr)
            if "\ufffd" in stripped:
                continue  # undecodable: never matches (HARDENING D17)
            if stripped:
                result.append(stripped)
        elif isinstance(item, (bytes, bytearray)):
            continue  # a text value pydicom could not convert
        elif isinstance(item, PersonName) and not str(item).strip(" \x00="):
            continue  # an empty name (PS3.5 6.2 PN: "" or only group delimiters)
        elif item is not None:
            result.append(item)
    return result


def _texts(value: object) -> list[str]:
    """The text forms a string pattern is tried on (several for a multi-group PN).

    :param value: one value from :func:`_values`.
    :returns: its text forms, empty when undecodable.
    """
    if isinstance(value, PersonName):
        text = str(value)
        if "\ufffd" in text:
            return []
        groups = [g for g in text.split("=") if g]
        return [text] + (groups if len(groups) > 1 else [])
    if isinstance(value, str):
        return [value]
    # IS and DS keep the text they were read from; binary numbers render as str().
    return [str(value)]


def _number(value: object) -> Decimal | None:
    """The numeric form of a value, or None (NaN and non-numbers have none).

    :param value: one value from :func:`_values`.
    :returns: the number as an exact Decimal.
    """
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int):
            return Decimal(int(value))
        if isinstance(value, float):
            if math.isnan(value):
                return None
            return Decimal(repr(float(value)))
        if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value):
            return Decimal(value)
    except (InvalidOperation, ValueError, OverflowError):
        return None
    return None


# --------------------------------------------------------------------------
# Dates and times (PS3.5 6.2: DA YYYYMMDD, TM HHMMSS.FFFFFF, DT YYYYMMDDHHMMSS.FFFFFF&ZZXX)
# --------------------------------------------------------------------------

_DA_VALUE = re.compile(r"(\d{4})\.?(\d{2})\.?(\d{2})")  # also ACR-NEMA "YYYY.MM.DD"
_DA_LITERAL = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")
_TM_VALUE = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?")
_DT_VALUE = re.compile(
    r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?)?)?)?(?:[+-]\d{4})?"
)
_DT_LITERAL = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?)?"
)
#: A compiled instant: a date, a time of day in microseconds, or a naive datetime.
When: TypeAlias = "datetime.date | int | datetime.datetime"


def _micros(fraction: str | None) -> int:
    """Microseconds from a fraction's digits ("5" -> 500000)."""
    return int((fraction or "0").ljust(6, "0"))


def _time_of_day(hours: str, minutes: str | None, seconds: str | None, fraction: str | None) -> int:
    """Microseconds since midnight; raises ValueError out of range (PS3.5 6.2 TM)."""
    h, m, s = int(hours), int(minutes or 0), int(seconds or 0)
    # TM allows a leap second (60) in seconds; hours 0-23, minutes 0-59.
    if h > 23 or m > 59 or s > 60:
        raise ValueError("time out of range")
    return ((h * 60 + m) * 60 + min(s, 59)) * 1_000_000 + _micros(fraction)


def _parse_when(text: str, kind: str, literal: bool) -> When:
    """Parse a DA, TM or DT value (or a rule literal, which also takes ISO forms).

    :param text: the text, stripped.
    :param kind: ``"DA"``, ``"TM"`` or ``"DT"``.
    :param literal: accept the ISO 8601 spellings written in rules.
    :returns: a date (DA), microseconds since midnight (TM), or a naive datetime (DT).
    :raises ValueError: when the text is not of that kind.
    """
    if kind == "DA":
        m = (_DA_LITERAL if literal else _DA_VALUE).fullmatch(text)
        if not m:
            raise ValueError(f"not a date: {text!r}")
        return datetime.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    if kind == "TM":
        m = _TM_VALUE.fullmatch(text)
        if not m:
            raise ValueError(f"not a time: {text!r}")
        return _time_of_day(*m.groups())
    m = _DT_VALUE.fullmatch(text) or (_DT_LITERAL.fullmatch(text) if literal else None)
    if not m:
        raise ValueError(f"not a date-time: {text!r}")
    year, month, day, hour, minute, second, fraction = m.groups()
    seconds = min(int(second or 0), 59)  # a leap second compares as :59
    return datetime.datetime(
        int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), seconds, _micros(fraction)
    )


def _literal_kind(text: str) -> str:
    """Guess DA, TM or DT from a rule literal (for elements of unknown VR)."""
    if _DA_LITERAL.fullmatch(text):
        return "DA"
    if ":" in text or len(text.split(".")[0]) <= 6:
        return "TM"
    return "DT"


def _value_when(value: object, kind: str) -> When | None:
    """The instant of an element value, or None when it is not of ``kind``."""
    try:
        if kind == "DA" and isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
            return datetime.date(value.year, value.month, value.day)
        if kind == "DT" and isinstance(value, datetime.datetime):
            return value.replace(tzinfo=None)
        if kind == "TM" and isinstance(value, datetime.time):
            return _time_of_day(str(value.hour), str(value.minute), str(value.second), f"{value.microsecond:06d}")
        text = getattr(value, "original_string", None) or value
        if not isinstance(text, str):
            return None
        return _parse_when(text.strip(), kind, literal=False)
    except (ValueError, OverflowError, TypeError):
        return None


def _show_when(when: When) -> str:
    """Render an instant for ``describe``."""
    if isinstance(when, int):
        total, micro = divmod(when, 1_000_000)
        text = f"{total // 3600:02d}:{total // 60 % 60:02d}:{total % 60:02d}"
        return text + (f".{micro:06d}" if micro else "")
    return when.isoformat()


# --------------------------------------------------------------------------
# Value tests: one value in, a verdict out
# --------------------------------------------------------------------------


class _ValueTest(Protocol):
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
        return self.text in _texts(value)

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
        return any(self._compiled.match(text) is not None for text in _texts(value))

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
        return any(self._compiled.fullmatch(text) is not None for text in _texts(value))

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
        number = _number(value)
        if number is not None and number == self.number:
            return True
        return self.text in _texts(value)

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
        number = _number(value)
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
        when = _value_when(value, self.kind)
        if when is None:
            return False
        return _within_bounds(when, self.lower, self.lower_inclusive, self.upper, self.upper_inclusive)

    def describe(self) -> str:
        """:returns: ``after 2024-01-01``..."""
        return _describe_range(
            self.lower, self.lower_inclusive, self.upper, self.upper_inclusive, _show_when, words=True
        )


@dataclass(frozen=True)
class Within:
    """A DA or DT value no older than ``seconds`` before ``received_at`` (and not after it)."""

    kind: str
    seconds: float

    def test(self, value: object, context: RoutingContext) -> bool:
        """:returns: whether the value is in the window ending at ``received_at`` (local time)."""
        when = _value_when(value, self.kind)
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


class _Pattern(Protocol):
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

    tests: tuple[_ValueTest, ...]

    def on_elements(self, elements: Sequence[DataElement], context: RoutingContext) -> bool:
        """:returns: whether some value of some element passes every test."""
        for element in elements:
            for value in _values(element):
                if all(test.test(value, context) for test in self.tests):
                    return True
        return False

    def describe(self) -> str:
        """:returns: the tests' words joined by ``and``."""
        return " and ".join(test.describe() for test in self.tests)


@dataclass(frozen=True)
class AllOf:
    """Several patterns from one mapping: all must hold."""

    patterns: tuple[_Pattern, ...]

    def on_elements(self, elements: Sequence[DataElement], context: RoutingContext) -> bool:
        """:returns: whether every pattern holds."""
        return all(pattern.on_elements(elements, context) for pattern in self.patterns)

    def describe(self) -> str:
        """:returns: the patterns' words joined by ``and``."""
        return " and ".join(pattern.describe() for pattern in self.patterns)


@dataclass(frozen=True)
class AnyOf:
    """A YAML list of patterns: any may hold."""

    patterns: tuple[_Pattern, ...]

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
    pattern: _Pattern

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
    return [context.tls_subject]


@dataclass(frozen=True)
class ContextText:
    """A string pattern on ``calling_ae_title``, ``called_ae_title`` or ``tls_subject``."""

    key: str
    alternatives: tuple[tuple[_ValueTest, ...], ...]

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


def _describe_alternatives(alternatives: tuple[tuple[_ValueTest, ...], ...]) -> str:
    """Words for alternatives of value tests."""
    words = [" and ".join(t.describe() for t in alt) for alt in alternatives]
    return words[0] if len(words) == 1 else "(" + " or ".join(words) + ")"


@dataclass(frozen=True)
class ListenerCondition:
    """``listener``: the listener's name (string patterns) or port (integers)."""

    names: tuple[tuple[_ValueTest, ...], ...]
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
        return f"time of day in [{_show_when(self.start)}, {_show_when(self.end)})"


_WEEKDAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAY_NUMBERS: dict[str, int] = {
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


# --------------------------------------------------------------------------
# The compiler
# --------------------------------------------------------------------------

_COMBINATORS = ("all", "any", "not")
_CONTEXT_KEYS = (
    "calling_ae_title",
    "called_ae_title",
    "source_ip",
    "listener",
    "tls_subject",
    "time_of_day",
    "weekday",
)
_STRING_OPERATORS = ("equals", "glob", "regex")
_NUMERIC_OPERATORS = ("gt", "ge", "lt", "le")
_TEMPORAL_OPERATORS = ("after", "before", "within")
_OPERATORS = ("present", "empty", *_STRING_OPERATORS, *_NUMERIC_OPERATORS, "between", *_TEMPORAL_OPERATORS)


def _child(path: str, key: str) -> str:
    """``path.key`` (just ``key`` at the top)."""
    return f"{path}.{key}" if path else key


def _suggest(word: str, choices: Iterable[str]) -> str:
    """``; did you mean X?`` for a close choice, else empty."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _shown(node: yaml.Node) -> str:
    """Name a node's content for messages."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "nothing (null)"
    return repr(node.value)


def _yaml_number(node: yaml.ScalarNode) -> object:
    """A scalar's number as YAML 1.1 reads it (``0x1F``, ``1_000``, ``.inf``), or its text.

    :param node: an int, float or string scalar.
    :returns: an int or float for numeric tags (None if unreadable), else the text.
    """
    if node.tag in (_INT, _FLOAT):
        try:
            constructor = yaml.constructor.SafeConstructor()
            return constructor.construct_yaml_int(node) if node.tag == _INT else constructor.construct_yaml_float(node)
        except (ValueError, yaml.YAMLError):
            return None
    if node.tag == _STR:
        return node.value.strip()
    return None


class _Compiler:
    """One compilation: the sink, the plugins and the error count."""

    def __init__(self, errors: ErrorSink, plugins: Mapping[str, IMatchPredicate] | None) -> None:
        self.sink = errors
        self.plugins = dict(plugins or {})
        self.count = 0

    def error(self, node: yaml.Node | None, path: str, message: str) -> None:
        """Report one error and count it."""
        self.count += 1
        self.sink.error(node, path, message)

    # -- conditions --------------------------------------------------------

    def conditions(self, node: yaml.Node, path: str) -> Predicate | None:
        """A mapping of conditions (all must hold), or a plugin call."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, path, f"expected a mapping of conditions, got {_shown(node)}")
            return None
        keys = [key.value if isinstance(key, yaml.ScalarNode) else None for key, _ in node.value]
        if "plugin" in keys:
            return self.plugin(node, path)
        items: list[Predicate] = []
        seen: set[str] = set()
        ok = True
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _NULL:
                self.error(key_node, path, f"a condition's key must be a name, got {_shown(key_node)}")
                ok = False
                continue
            key = str(key_node.value)
            key_path = _child(path, key)
            if key in seen:
                self.error(key_node, key_path, f"duplicate key '{key}' (put both conditions under all: [...])")
                ok = False
                continue
            seen.add(key)
            predicate = self.condition(key, key_node, value_node, key_path)
            if predicate is None:
                ok = False
            else:
                items.append(predicate)
        if not ok:
            return None
        if not items:
            return MATCH_ALL
        return items[0] if len(items) == 1 else All(tuple(items))

    def condition(self, key: str, key_node: yaml.Node, node: yaml.Node, path: str) -> Predicate | None:
        """One ``key: value`` condition."""
        if key in ("all", "any"):
            return self.combinator(key, node, path)
        if key == "not":
            inner = self.conditions(node, path)
            return None if inner is None else Not(inner)
        if key in ("calling_ae_title", "called_ae_title", "tls_subject"):
            alternatives = self.string_alternatives(node, path, subject=key == "tls_subject")
            return None if alternatives is None else ContextText(key, alternatives)
        if key == "source_ip":
            return self.source_ip(node, path)
        if key == "listener":
            return self.listener(node, path)
        if key == "time_of_day":
            return self.time_of_day(node, path)
        if key == "weekday":
            return self.weekday(node, path)
        try:
            tag_path = parse_path(key)
        except ValueError as exc:
            message = str(exc)
            if "did you mean" not in message:
                hint = _suggest(key, (*_CONTEXT_KEYS, *_COMBINATORS, "plugin"))
                if hint:
                    message = f"unknown key '{key}'{hint}"
            self.error(key_node, path, message)
            return None
        pattern = self.pattern(node, path, tag_path.vr)
        return None if pattern is None else ElementCondition(tag_path, pattern)

    def combinator(self, key: str, node: yaml.Node, path: str) -> Predicate | None:
        """``all: [...]`` or ``any: [...]`` (a non-empty list of condition mappings)."""
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, path, f"'{key}' takes a list of conditions, got {_shown(node)}")
            return None
        if not node.value:
            outcome = "nothing" if key == "any" else "everything"
            self.error(node, path, f"'{key}: []' is empty (it would match {outcome})")
            return None
        items = [self.conditions(item, f"{path}[{index}]") for index, item in enumerate(node.value)]
        if any(item is None for item in items):
            return None
        found = tuple(item for item in items if item is not None)
        return All(found) if key == "all" else Any_(found)

    def plugin(self, node: yaml.MappingNode, path: str) -> Predicate | None:
        """``{plugin: NAME, arg: value...}``: build the predicate through the named plugin."""
        name_node: yaml.Node | None = None
        arguments: dict[str, Any] = {}
        constructor = yaml.constructor.SafeConstructor()
        ok = True
        for key_node, value_node in node.value:
            if key_node.value == "plugin":
                name_node = value_node
                continue
            try:
                arguments[str(key_node.value)] = constructor.construct_object(value_node, deep=True)
            except yaml.YAMLError as exc:
                self.error(value_node, _child(path, str(key_node.value)), f"cannot read argument: {exc}")
                ok = False
        assert name_node is not None
        plugin_path = _child(path, "plugin")
        if not isinstance(name_node, yaml.ScalarNode) or name_node.tag != _STR:
            self.error(name_node, plugin_path, f"expected a plugin name, got {_shown(name_node)}")
            return None
        name = name_node.value
        plugin = self.plugins.get(name)
        if plugin is None:
            found = ", ".join(sorted(self.plugins)) or "none"
            hint = _suggest(name, self.plugins)
            self.error(name_node, plugin_path, f"unknown match plugin '{name}'{hint} (plugins found: {found})")
            return None
        if not ok:
            return None
        try:
            inner = plugin.compile(arguments)
        except ValueError as exc:
            self.error(name_node, plugin_path, f"plugin {name}: {exc}")
            return None
        except Exception as exc:  # noqa: BLE001 - a plugin's bug becomes a config error, not a traceback
            self.error(name_node, plugin_path, f"plugin {name} failed: {type(exc).__name__}: {exc}")
            return None
        return PluginPredicate(name, inner)

    # -- context keys ------------------------------------------------------

    def source_ip(self, node: yaml.Node, path: str) -> Predicate | None:
        """``source_ip``: a CIDR or a list of CIDRs."""
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        if not items:
            self.error(node, path, "empty list of networks")
            return None
        networks: list[IpNetwork] = []
        ok = True
        for index, item in enumerate(items):
            item_path = f"{path}[{index}]" if isinstance(node, yaml.SequenceNode) else path
            if not isinstance(item, yaml.ScalarNode) or item.tag == _NULL:
                self.error(item, item_path, f"expected a CIDR such as 10.0.0.0/8, got {_shown(item)}")
                ok = False
                continue
            try:
                networks.append(ipaddress.ip_network(item.value.strip(), strict=False))
            except ValueError:
                self.error(
                    item, item_path, f"invalid network {item.value!r}; expected a CIDR such as 10.0.0.0/8 or fd00::/8"
                )
                ok = False
        return SourceIp(tuple(networks)) if ok else None

    def listener(self, node: yaml.Node, path: str) -> Predicate | None:
        """``listener``: names (string patterns) and ports (integers)."""
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        if not items:
            self.error(node, path, "empty list of listeners")
            return None
        names: list[tuple[_ValueTest, ...]] = []
        ports: set[int] = set()
        ok = True
        for index, item in enumerate(items):
            item_path = f"{path}[{index}]" if isinstance(node, yaml.SequenceNode) else path
            if isinstance(item, yaml.ScalarNode) and item.tag == _INT:
                port = _yaml_number(item)
                if not isinstance(port, int) or not 0 < port < 65536:
                    self.error(item, item_path, f"port {item.value} is out of range 1-65535")
                    ok = False
                else:
                    ports.add(port)
                continue
            tests = self.string_tests(item, item_path)
            if tests is None:
                ok = False
            else:
                names.append(tests)
        return ListenerCondition(tuple(names), frozenset(ports)) if ok else None

    def time_of_day(self, node: yaml.Node, path: str) -> Predicate | None:
        """``time_of_day: {between: ["07:00", "19:00"]}``."""
        pair = self.single_operator(node, path, "between", "time_of_day takes {between: [\"07:00\", \"19:00\"]}")
        if pair is None:
            return None
        bounds = self.pair(pair, _child(path, "between"))
        if bounds is None:
            return None
        times: list[int] = []
        for index, bound in enumerate(bounds):
            try:
                when = _parse_when(bound.value.strip(), "TM", literal=True)
            except ValueError:
                when = None
            if not isinstance(when, int):
                message = f"invalid time {_shown(bound)}; expected HH:MM such as \"07:00\""
                self.error(bound, f"{path}.between[{index}]", message)
            else:
                times.append(when)
        if len(times) != 2:
            return None
        if times[0] == times[1]:
            self.error(pair, _child(path, "between"), "the window is empty (start equals end)")
            return None
        return TimeOfDay(times[0], times[1])

    def weekday(self, node: yaml.Node, path: str) -> Predicate | None:
        """``weekday: [Mon, Tue]`` or ``weekday: Mon-Fri``."""
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        if not items:
            self.error(node, path, "empty list of weekdays")
            return None
        days: set[int] = set()
        ok = True
        for index, item in enumerate(items):
            item_path = f"{path}[{index}]" if isinstance(node, yaml.SequenceNode) else path
            text = item.value if isinstance(item, yaml.ScalarNode) and item.tag in (_STR, _BOOL) else None
            parts = text.split("-") if isinstance(text, str) else []
            numbers = [self.day_number(part) for part in parts]
            if not parts or len(parts) > 2 or None in numbers:
                message = f"invalid weekday {_shown(item)}; expected Mon..Sun or a range such as Mon-Fri"
                self.error(item, item_path, message)
                ok = False
                continue
            first, last = numbers[0], numbers[-1]
            assert first is not None and last is not None
            day = first
            while True:  # a range may wrap the week (Fri-Mon)
                days.add(day)
                if day == last:
                    break
                day = (day + 1) % 7
        return Weekday(frozenset(days)) if ok else None

    @staticmethod
    def day_number(text: str) -> int | None:
        """0 for Monday...; accepts Mon or Monday in any case."""
        return _DAY_NUMBERS.get(text.strip().lower())

    # -- patterns ----------------------------------------------------------

    def string_alternatives(
        self, node: yaml.Node, path: str, subject: bool = False
    ) -> tuple[tuple[_ValueTest, ...], ...] | None:
        """String patterns for a context key: one, or a list of them (any of).

        :param subject: ``tls_subject``: scalars and ``glob`` are certificate
            name patterns (:class:`SubjectPattern`), not string globs.
        """
        if isinstance(node, yaml.SequenceNode):
            if not node.value:
                self.error(node, path, "empty list (it would match nothing)")
                return None
            alternatives = [self.string_tests(item, f"{path}[{i}]", subject) for i, item in enumerate(node.value)]
            if any(alt is None for alt in alternatives):
                return None
            return tuple(alt for alt in alternatives if alt is not None)
        tests = self.string_tests(node, path, subject)
        return None if tests is None else (tests,)

    def subject_pattern(self, node: yaml.Node, path: str) -> _ValueTest | None:
        """A ``tls_subject`` name pattern, validated now (a typo is an error, not a rule that never matches)."""
        try:
            return SubjectPattern(str(node.value).strip(" "))
        except PatternError as exc:
            self.error(node, path, f"not a certificate subject pattern: {exc}")
            return None

    def string_tests(self, node: yaml.Node, path: str, subject: bool = False) -> tuple[_ValueTest, ...] | None:
        """One string pattern: a scalar (exact or glob) or ``{equals|glob|regex: ...}``."""
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _NULL:
                self.error(node, path, "expected a string pattern, got nothing (null)")
                return None
            if subject:
                test = self.subject_pattern(node, path)
                return None if test is None else (test,)
            return (self.scalar_test(node, path, numeric_ok=False),)
        if isinstance(node, yaml.MappingNode):
            tests: list[_ValueTest] = []
            ok = True
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key not in _STRING_OPERATORS:
                    hint = _suggest(key, _STRING_OPERATORS)
                    message = f"unknown string operator '{key}'{hint} (use equals, glob or regex)"
                    self.error(key_node, _child(path, key), message)
                    ok = False
                    continue
                if subject and key == "glob" and isinstance(value_node, yaml.ScalarNode) and value_node.tag != _NULL:
                    test = self.subject_pattern(value_node, _child(path, key))
                else:
                    test = self.string_operator(key, value_node, _child(path, key))
                if test is None:
                    ok = False
                else:
                    tests.append(test)
            if ok and not tests:
                self.error(node, path, "empty pattern")
                return None
            return tuple(tests) if ok else None
        self.error(node, path, f"expected a string pattern, got {_shown(node)}")
        return None

    def scalar_test(self, node: yaml.ScalarNode, path: str, numeric_ok: bool) -> _ValueTest:
        """A bare scalar: glob when it holds a metacharacter, a number when unquoted numeric, else exact."""
        text = node.value
        if numeric_ok and node.tag in (_INT, _FLOAT):
            number = _number(_yaml_number(node))
            if number is not None:
                return NumberEquals(number, text)
        if node.tag == _STR and _GLOB_CHARS & set(text):
            return Glob(text)
        # Booleans, timestamps and numbers where a string is wanted: the text as written
        # (YAML 1.1 reads NO as false; the value in the file is what the rule means).
        return Exact(text.strip(" "))

    def string_operator(self, key: str, node: yaml.Node, path: str) -> _ValueTest | None:
        """``equals``, ``glob`` or ``regex`` with its string."""
        if not isinstance(node, yaml.ScalarNode) or node.tag == _NULL:
            self.error(node, path, f"'{key}' takes a string, got {_shown(node)}")
            return None
        text = node.value
        if key == "equals":
            return Exact(text)
        if key == "glob":
            return Glob(text)
        try:
            return Regex(text)
        except re.error as exc:
            self.error(node, path, f"invalid regular expression {text!r}: {exc}")
            return None

    def pattern(self, node: yaml.Node, path: str, vr: str | None) -> _Pattern | None:
        """A value pattern on an element of dictionary VR ``vr`` (None: unknown/private)."""
        if isinstance(node, yaml.SequenceNode):
            if not node.value:
                self.error(node, path, "empty list (it would match nothing)")
                return None
            items = [self.pattern(item, f"{path}[{i}]", vr) for i, item in enumerate(node.value)]
            if any(item is None for item in items):
                return None
            return AnyOf(tuple(item for item in items if item is not None))
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _NULL:
                message = "expected a value pattern, got nothing (null); write {present: true} or {empty: true}"
                self.error(node, path, message)
                return None
            if not self.values_allowed(node, path, vr, "a value"):
                return None
            return Values((self.scalar_test(node, path, numeric_ok=True),))
        assert isinstance(node, yaml.MappingNode)
        return self.operators(node, path, vr)

    def values_allowed(self, node: yaml.Node, path: str, vr: str | None, what: str) -> bool:
        """Refuse value tests on sequences and binary VRs (only present/empty apply)."""
        if vr == "SQ" or vr in BINARY_VRS:
            message = f"{what} cannot be compared with a {vr} element; use {{present: ...}} or {{empty: ...}}"
            self.error(node, path, message)
            return False
        return True

    def operators(self, node: yaml.MappingNode, path: str, vr: str | None) -> _Pattern | None:
        """A mapping of operators: all must hold; value tests hold for one same value."""
        patterns: list[_Pattern] = []
        tests: list[_ValueTest] = []
        ok = True
        for key_node, value_node in node.value:
            key = str(key_node.value)
            op_path = _child(path, key)
            if key not in _OPERATORS:
                hint = _suggest(key, _OPERATORS)
                listing = "" if hint else f" (operators: {', '.join(_OPERATORS)})"
                self.error(key_node, op_path, f"unknown pattern operator '{key}'{hint}{listing}")
                ok = False
                continue
            if key in ("present", "empty"):
                if not isinstance(value_node, yaml.ScalarNode) or value_node.tag != _BOOL:
                    self.error(value_node, op_path, f"'{key}' takes true or false, got {_shown(value_node)}")
                    ok = False
                    continue
                flag = value_node.value.lower() in ("yes", "true", "on", "y")
                patterns.append(Present(flag) if key == "present" else Empty(flag))
                continue
            if not self.values_allowed(key_node, op_path, vr, f"'{key}'"):
                ok = False
                continue
            if key in _STRING_OPERATORS:
                test = self.string_operator(key, value_node, op_path)
            elif key in _NUMERIC_OPERATORS or (key == "between" and self.numeric_between(value_node, vr)):
                test = self.numeric(key, key_node, value_node, op_path, vr)
            else:
                test = self.temporal(key, key_node, value_node, op_path, vr)
            if test is None:
                ok = False
            else:
                tests.append(test)
        if not ok:
            return None
        if not patterns and not tests:
            self.error(node, path, "empty pattern (write {present: true} to test presence)")
            return None
        if tests:
            patterns.append(Values(tuple(tests)))
        return patterns[0] if len(patterns) == 1 else AllOf(tuple(patterns))

    @staticmethod
    def numeric_between(node: yaml.Node, vr: str | None) -> bool:
        """Whether ``between`` is numeric here (numeric VR, or numbers given for an unknown VR)."""
        if vr in TEMPORAL_VRS:
            return False
        if vr is not None:
            return True
        return isinstance(node, yaml.SequenceNode) and all(
            isinstance(item, yaml.ScalarNode) and item.tag in (_INT, _FLOAT) for item in node.value
        )

    def pair(self, node: yaml.Node, path: str) -> list[yaml.ScalarNode] | None:
        """The two scalar bounds of ``between``."""
        if (not isinstance(node, yaml.SequenceNode) or len(node.value) != 2
                or not all(isinstance(item, yaml.ScalarNode) and item.tag != _NULL for item in node.value)):
            self.error(node, path, f"'between' takes a list of two bounds [low, high], got {_shown(node)}")
            return None
        return list(node.value)

    def single_operator(self, node: yaml.Node, path: str, key: str, usage: str) -> yaml.Node | None:
        """The value of a one-key mapping ``{key: value}``."""
        if not isinstance(node, yaml.MappingNode) or len(node.value) != 1 or node.value[0][0].value != key:
            where = node.value[0][0] if isinstance(node, yaml.MappingNode) and node.value else node
            self.error(where, path, usage)
            return None
        value: yaml.Node = node.value[0][1]
        return value

    def numeric(self, key: str, key_node: yaml.Node, node: yaml.Node, path: str, vr: str | None) -> _ValueTest | None:
        """``gt``/``ge``/``lt``/``le``/``between`` on a numeric (or numeric-looking text) element."""
        if vr is not None and vr not in NUMERIC_VRS and vr not in _NUMERIC_TEXT_VRS:
            extra = " (use after/before/between with dates)" if vr in TEMPORAL_VRS else ""
            self.error(key_node, path, f"numeric operator '{key}' cannot be used on a {vr} element{extra}")
            return None
        bounds = self.pair(node, path) if key == "between" else [node]
        if bounds is None:
            return None
        numbers: list[Decimal] = []
        for bound in bounds:
            number = _number(_yaml_number(bound)) if isinstance(bound, yaml.ScalarNode) else None
            if number is None:
                self.error(bound, path, f"'{key}' takes a number, got {_shown(bound)}")
                return None
            numbers.append(number)
        if key == "between":
            if numbers[0] > numbers[1]:
                self.error(node, path, f"'between' bounds are reversed ({numbers[0]} > {numbers[1]})")
                return None
            return NumberRange(numbers[0], True, numbers[1], True)
        if key in ("gt", "ge"):
            return NumberRange(lower=numbers[0], lower_inclusive=key == "ge")
        return NumberRange(upper=numbers[0], upper_inclusive=key == "le")

    def temporal(self, key: str, key_node: yaml.Node, node: yaml.Node, path: str, vr: str | None) -> _ValueTest | None:
        """``after``/``before``/``between``/``within`` on a DA, TM or DT element."""
        if vr is not None and vr not in TEMPORAL_VRS:
            self.error(key_node, path, f"date/time operator '{key}' cannot be used on a {vr} element (only DA, TM, DT)")
            return None
        if key == "within":
            return self.within(node, path, vr)
        bounds = self.pair(node, path) if key == "between" else [node]
        if bounds is None:
            return None
        if any(not isinstance(b, yaml.ScalarNode) or b.tag == _NULL for b in bounds):
            self.error(node, path, f"'{key}' takes a date or time, got {_shown(node)}")
            return None
        kind = vr or _literal_kind(bounds[0].value.strip())
        instants: list[When] = []
        for bound in bounds:
            try:
                instants.append(_parse_when(bound.value.strip(), kind, literal=True))
            except ValueError:
                example = {"DA": '"20240131"', "TM": '"07:00"', "DT": '"20240131073000"'}[kind]
                self.error(bound, path, f"invalid {kind} literal {bound.value!r}; expected e.g. {example}")
                return None
        if key == "between":
            if instants[0] > instants[1]:  # type: ignore[operator]
                self.error(node, path, "'between' bounds are reversed")
                return None
            return TimeRange(kind, instants[0], True, instants[1], True)
        if key == "after":
            return TimeRange(kind, lower=instants[0], lower_inclusive=False)
        return TimeRange(kind, upper=instants[0], upper_inclusive=False)

    def within(self, node: yaml.Node, path: str, vr: str | None) -> _ValueTest | None:
        """``within: 7d``: a DA/DT value in the window ending at ``received_at``."""
        if vr == "TM":
            self.error(node, path, "'within' applies to DA and DT elements, not TM (use time_of_day for windows)")
            return None
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (_STR, _INT, _FLOAT):
            self.error(node, path, f"'within' takes a duration such as 7d, got {_shown(node)}")
            return None
        try:
            seconds = parse_duration(node.value if node.tag == _STR else float(node.value))
        except ValueError as exc:
            self.error(node, path, str(exc))
            return None
        return Within(vr or "DA", seconds)


def compile_match(
    node: yaml.Node,
    path: str,
    errors: ErrorSink,
    plugins: Mapping[str, IMatchPredicate] | None = None,
) -> Predicate | None:
    """Compile a route's ``match`` node into a predicate.

    :param node: the ``match`` value node (from ``yaml.compose``, SafeLoader).
    :param path: its key path, such as ``routes[2].match``.
    :param errors: where every error found is reported (compilation goes on
        after the first).
    :param plugins: match predicate plugins by name.
    :returns: the predicate (:data:`MATCH_ALL` for an empty mapping), or
        ``None`` when errors were reported.
    """
    compiler = _Compiler(errors, plugins)
    if isinstance(node, yaml.ScalarNode) and node.tag == _NULL:
        compiler.error(node, path, "match is empty; leave it out (or write {}) to match everything")
        return None
    result = compiler.conditions(node, path)
    return None if compiler.count else result


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
