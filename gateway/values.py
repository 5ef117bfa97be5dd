"""Reading element values for the match language: text, numbers, dates and times, never raising.

What :mod:`gateway.match` compares: an element's values as pydicom decoded
them (PS3.5 6.2), their text forms, their exact numbers, and DA/TM/DT
instants (PS3.5 6.2: also the ACR-NEMA ``YYYY.MM.DD`` form). The rule
compiler (:mod:`gateway.config.match`) reads rule literals with the same
parsers, so a literal and a value are read alike.
"""

from __future__ import annotations

import datetime
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Iterable, TypeAlias

from pydicom.dataelem import DataElement
from pydicom.valuerep import PersonName

from gateway.vrfacts import OTHER_VRS

__all__ = [
    "BINARY_VRS",
    "GLOB_CHARS",
    "NUMERIC_TEXT_VRS",
    "NUMERIC_VRS",
    "TEMPORAL_VRS",
    "When",
    "as_number",
    "element_values",
    "literal_kind",
    "parse_when",
    "show_when",
    "text_forms",
    "value_when",
]


#: VRs whose values are binary numbers or decimal/integer strings.
NUMERIC_VRS: frozenset[str] = frozenset(
    {"IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "US or SS"}  # PS3.6 ambiguous "US or SS" too
)
#: Date and time VRs (PS3.5 6.2: DA, TM, DT).
TEMPORAL_VRS: frozenset[str] = frozenset({"DA", "TM", "DT"})
#: Binary VRs: only ``present`` and ``empty`` apply.
BINARY_VRS: frozenset[str] = OTHER_VRS | {"OB or OW", "US or OW", "US or SS or OW"}  # and pydicom's ambiguous forms
#: String VRs where a numeric-looking value may be compared numerically.
NUMERIC_TEXT_VRS: frozenset[str] = frozenset({"SH", "LO", "CS", "UN", "UC"})
#: VRs whose leading spaces are significant (PS3.5 6.2: ST, LT, UT keep them).
_KEEP_LEADING: frozenset[str] = frozenset({"ST", "LT", "UT"})

# A number as DICOM IS/DS write it (PS3.5 6.2), also accepted in other text.
_NUMBER_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
# Glob metacharacters (fnmatch): their presence makes a string a glob.
GLOB_CHARS = frozenset("*?[")


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


def element_values(element: DataElement) -> list[object]:
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


def text_forms(value: object) -> list[str]:
    """The text forms a string pattern is tried on (several for a multi-group PN).

    :param value: one value from :func:`element_values`.
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


def as_number(value: object) -> Decimal | None:
    """The numeric form of a value, or None (NaN and non-numbers have none).

    :param value: one value from :func:`element_values`.
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


def parse_when(text: str, kind: str, literal: bool) -> When:
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


def literal_kind(text: str) -> str:
    """Guess DA, TM or DT from a rule literal (for elements of unknown VR)."""
    if _DA_LITERAL.fullmatch(text):
        return "DA"
    if ":" in text or len(text.split(".")[0]) <= 6:
        return "TM"
    return "DT"


def value_when(value: object, kind: str) -> When | None:
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
        return parse_when(text.strip(), kind, literal=False)
    except (ValueError, OverflowError, TypeError):
        return None


def show_when(when: When) -> str:
    """Render an instant for ``describe``."""
    if isinstance(when, int):
        total, micro = divmod(when, 1_000_000)
        text = f"{total // 3600:02d}:{total // 60 % 60:02d}:{total % 60:02d}"
        return text + (f".{micro:06d}" if micro else "")
    return when.isoformat()
