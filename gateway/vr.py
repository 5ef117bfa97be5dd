"""Value representations: validating and converting element values (PS3.5 6.2, Table 6.2-1).

What a morph writes must be valid for the element's VR: length, character
repertoire (PS3.5 6.1, the data set's Specific Character Set (0008,0005)) and
the format of UI, DA, TM, DT, AS, IS, DS and CS. :func:`check_value` is also
what plugins call (through :mod:`gateway.morph`, which re-exports it), and
what the configuration's morph compiler uses to refuse a literal that can
never be valid.
"""

from __future__ import annotations

import datetime
import re
from typing import Any, Sequence

from pydicom.charset import python_encoding
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from gateway.tags import parse_tag_ref
from gateway.template import render_value
from gateway.uidremap import is_valid_uid

__all__ = [
    "EXTENDED_VRS",
    "FLOAT_VRS",
    "INT_RANGES",
    "MAX_LENGTH",
    "SINGLE_VALUED",
    "TEXT_VRS",
    "check_repertoire",
    "check_value",
    "describe_value",
    "element_texts",
    "to_value",
]

#: PS3.5 Table 6.2-1 maximum value lengths, in characters, of the string VRs
#: (PN is per component group; UC, UR and UT are unlimited).
MAX_LENGTH: dict[str, int] = {
    "AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64,
    "LT": 10240, "PN": 64, "SH": 16, "ST": 1024, "TM": 14, "UI": 64,
}  # fmt: skip
#: VRs whose value is text.
TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
#: VRs that may hold several values separated by ``\`` (PS3.5 6.4): all text VRs but these.
SINGLE_VALUED = frozenset({"LT", "ST", "UT", "UR"})
#: Text VRs whose repertoire may extend beyond the default one (PS3.5 6.1.2.2).
EXTENDED_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
#: Binary numbers: value ranges (PS3.5 Table 6.2-1).
INT_RANGES: dict[str, tuple[int, int]] = {
    "US": (0, 2**16 - 1), "SS": (-(2**15), 2**15 - 1), "UL": (0, 2**32 - 1),
    "SL": (-(2**31), 2**31 - 1), "UV": (0, 2**64 - 1), "SV": (-(2**63), 2**63 - 1),
}  # fmt: skip
FLOAT_VRS = frozenset({"FL", "FD"})

_FORMATS: dict[str, re.Pattern[str]] = {
    # PS3.5 Table 6.2-1: CS is uppercase, digits, space and underscore.
    "CS": re.compile(r"^[A-Z0-9 _]*$"),
    # AS: nnnD, nnnW, nnnM or nnnY.
    "AS": re.compile(r"^[0-9]{3}[DWMY]$"),
    # DA: YYYYMMDD.
    "DA": re.compile(r"^[0-9]{8}$"),
    # TM: HH[MM[SS[.F{1,6}]]].
    "TM": re.compile(r"^([01][0-9]|2[0-3])([0-5][0-9]([0-5][0-9]|60)?(\.[0-9]{1,6})?)?$"),
    # DT: YYYY[MM[DD[HH[MM[SS[.F{1,6}]]]]]][&ZZXX].
    "DT": re.compile(r"^[0-9]{4}([0-9]{2}([0-9]{2}([0-9]{2}([0-9]{2}([0-9]{2}(\.[0-9]{1,6})?)?)?)?)?)?([+-][0-9]{4})?$"),
    # IS: an optionally signed integer (leading/trailing spaces allowed).
    "IS": re.compile(r"^ *[+-]?[0-9]+ *$"),
    # DS: a fixed or floating point number.
    "DS": re.compile(r"^ *[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)? *$"),
}


def check_value(vr: str, text: str) -> str | None:
    """Why ``text`` cannot be one value of VR ``vr``, or None when it can (PS3.5 6.2).

    The empty string is always valid (an empty value, PS3.5 7.1.1).

    :param vr: the VR.
    :param text: one value (not ``\\``-joined) as text.
    :returns: a message, or None.
    """
    if text == "":
        return None
    if vr in INT_RANGES:
        low, high = INT_RANGES[vr]
        try:
            number = int(text, 0) if text.strip().lower().startswith("0x") else int(text)
        except ValueError:
            return f"{text!r} is not an integer ({vr})"
        return None if low <= number <= high else f"{text!r} is out of range for {vr} ({low}..{high})"
    if vr in FLOAT_VRS:
        try:
            float(text)
        except ValueError:
            return f"{text!r} is not a number ({vr})"
        return None
    if vr == "AT":
        try:
            ref = parse_tag_ref(text)
        except ValueError as e:
            return str(e)
        return None if ref.creator is None else "an AT value must be a plain tag"
    if vr not in TEXT_VRS:
        return f"a {vr} value cannot be given as text"
    if vr not in SINGLE_VALUED and "\\" in text:
        return f"{text!r}: '\\' separates values; give several values as a list"
    limit = MAX_LENGTH.get(vr)
    if vr == "PN":
        # PS3.5 6.2: up to three component groups of up to 64 characters,
        # each of up to five '^'-separated components.
        groups = text.split("=")
        if len(groups) > 3:
            return f"{text!r}: a PN value has at most 3 component groups"
        for group in groups:
            if len(group) > 64:
                return f"{text!r}: a PN component group is at most 64 characters"
            if group.count("^") > 4:
                return f"{text!r}: a PN component group has at most 5 components"
    elif limit is not None and len(text) > limit:
        return f"{text!r} is longer than {limit} characters, the most {vr} allows (PS3.5 Table 6.2-1)"
    allowed_controls = {"\x1b"} if vr in ("LO", "SH", "PN", "UC") else set()
    if vr in ("LT", "ST", "UT"):
        allowed_controls = {"\x1b", "\r", "\n", "\f", "\t"}
    for char in text:
        if (ord(char) < 0x20 or ord(char) == 0x7F) and char not in allowed_controls:
            return f"{text!r} holds a control character not allowed in {vr}"
    if vr == "UI":
        return None if is_valid_uid(text) else f"{text!r} is not a valid UID (digits and dots, no leading zeros, PS3.5 9.1)"
    pattern = _FORMATS.get(vr)
    if pattern is not None and not pattern.match(text):
        return f"{text!r} is not a valid {vr} value"
    if vr == "DA":
        try:
            datetime.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        except ValueError:
            return f"{text!r} is not a calendar date (DA)"
    if vr == "IS" and not -(2**31) <= int(text) <= 2**31 - 1:
        return f"{text!r} is out of range for IS"
    if vr not in EXTENDED_VRS and not text.isascii():
        return f"{text!r}: {vr} allows only the default character repertoire"
    return None


def check_repertoire(dataset: Dataset, vr: str, text: str) -> str | None:
    """Why ``text`` cannot be encoded in ``dataset``'s Specific Character Set, or None.

    :param dataset: the data set (its (0008,0005)).
    :param vr: the VR (only :data:`EXTENDED_VRS` VRs use the extended repertoire).
    :param text: the value.
    :returns: a message, or None.
    """
    if text.isascii():
        return None
    charsets = dataset.get("SpecificCharacterSet")
    terms = [] if charsets is None else [str(t) for t in (charsets if isinstance(charsets, (list, MultiValue)) else [charsets])]
    if not terms or all(t.strip() in ("", "ISO_IR 6", "ISO 2022 IR 6") for t in terms):
        return f"{text!r} is not ASCII and the data set has no Specific Character Set (PS3.5 6.1.2.1)"
    for term in terms:
        codec = python_encoding.get(term.strip())
        if codec is None:
            continue
        try:
            text.encode(codec)
            return None
        except (UnicodeEncodeError, LookupError):
            continue
    return f"{text!r} cannot be encoded in the Specific Character Set {terms}"


def to_value(vr: str, texts: Sequence[str]) -> Any:
    """pydicom value for ``texts`` (already validated) in VR ``vr``."""
    texts = [t for t in texts]
    if not texts or texts == [""]:
        return [] if vr == "SQ" else (None if vr in INT_RANGES or vr in FLOAT_VRS or vr == "AT" else "")
    if vr in INT_RANGES:
        values: list[Any] = [int(t, 0) if t.strip().lower().startswith("0x") else int(t) for t in texts]
    elif vr in FLOAT_VRS:
        values = [float(t) for t in texts]
    elif vr == "AT":
        values = [parse_tag_ref(t).tag for t in texts]
    else:
        values = list(texts)
    return values[0] if len(values) == 1 else values


def element_texts(element: DataElement) -> list[str]:
    """An element's values as text, one string per value."""
    value = element.value
    if value is None or element.VR == "SQ" or isinstance(value, (bytes, bytearray)):
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return [render_value(v) for v in value]
    text = render_value(value)
    return [text] if text != "" else []


def describe_value(element: DataElement | None) -> str | None:
    """An element's value as ``check`` prints it, or None when absent.

    :param element: the element, or None.
    :returns: text; sequences as ``<n items>``, bytes as ``<n bytes>``.
    """
    if element is None:
        return None
    value = element.value
    if element.VR == "SQ":
        return f"<{len(value or [])} items>"
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return render_value(value)
