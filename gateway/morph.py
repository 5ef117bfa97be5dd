"""Tag morphing: per-route changes to an instance's header, and the splice writer.

Theory of operation
-------------------
A route's ``morph:`` list compiles once, at configuration load
(:func:`compile_morph`), into a :class:`MorphPlan`: a tuple of small frozen
action objects. Compilation reports every problem to the loader's error sink
(unknown keywords with a "did you mean", bad regexes, literals that can never
be valid for their VR, a missing lookup table) and never raises.

At run time the forward worker calls :func:`write_morphed` once per (route,
instance): it reads the header only (:func:`gateway.parse.read_header`),
applies the plan to the pydicom ``Dataset`` in order (each action returns the
:class:`Change` records ``check`` prints), writes the file meta and the
morphed header in the original transfer syntax, then copies the pixel data
and everything after it **verbatim** from the original file, in bounded
memory. The original spool file is never modified; the output appears
atomically (``.tmp``, fsync, rename). Any failure for this instance raises
:class:`MorphError`, and the route's copy is dead-lettered ("morph: ...",
HARDENING D15), never forwarded half-made.

Elements after the pixel data (the "tail": digital signatures (FFFA,FFFA),
trailing padding (FFFC,FFFC), trailing private groups) are not in the header.
An action that must reach them says so (``touches_tail``) and answers
``drops_tail(tag)``; the writer then walks the tail's raw element headers
(:mod:`gateway.parse`) and leaves out what is dropped. Tail elements can be
removed, never altered.

Decisions
---------
* Deflated data sets (PS3.5 A.5) are refused with ``MorphError("deflated data
  sets are not morphed")``: their bytes cannot be spliced, and inflating a
  whole instance would break the bounded-memory promise.
* Values are validated against their VR (PS3.5 6.2, Table 6.2-1: length,
  character repertoire, format of UI, DA, TM, DT, AS, IS, DS, CS). A literal
  that can never be valid is a configuration error; a templated or computed
  value that turns out invalid is a :class:`MorphError`.
* Text must be encodable in the data set's Specific Character Set (0008,0005);
  with none, only the default repertoire (ASCII, PS3.5 6.1.2.1) is accepted.
* Elements at or after the pixel data cannot be set, copied to or deleted by
  tag (the header is written before the verbatim tail); they can be removed
  by wildcard, ``private: all``, ``group`` and ``deidentify``.
"""

from __future__ import annotations

import copy as copy_module
import csv
import datetime
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterator, Mapping, Protocol, Sequence

import yaml
from yaml.constructor import SafeConstructor
from pydicom.charset import python_encoding
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.multival import MultiValue

from gateway.parse import (
    RawParseError,
    encoding_of,
    is_deflated,
    iter_raw_elements,
    read_header,
)
from gateway.private import open_private
from gateway.tags import TagPath, containers, find, parse_path, parse_tag_ref
from gateway.template import Template, render_value
from gateway.uidremap import check_root, is_valid_uid, keyed_digest, remap_uid

__all__ = [
    "MorphError",
    "Change",
    "MorphAction",
    "MorphPlan",
    "ErrorSink",
    "check_value",
    "compile_morph",
    "compile_canonical",
    "canonical_json",
    "plan_hash",
    "PlanError",
    "PLAN_VERSION",
    "EMPTY_PLAN",
    "write_morphed",
    "walk",
]

# The lowest pixel data tag (7FE0,0008) Float Pixel Data: nothing at or after
# it may be created in the header.
_FIRST_PIXEL_TAG = 0x7FE00008


class MorphError(Exception):
    """A morph failed for one instance; that route's copy goes to the dead letters ("morph: ...")."""


@dataclass(frozen=True)
class Change:
    """One element a morph changed, for ``check`` output (``old -> new``).

    :ivar path: where (``PatientID``, ``ReferencedSeriesSequence[0]/SeriesInstanceUID``).
    :ivar old: the old value as text, None when the element was absent.
    :ivar new: the new value as text, None when the element was deleted.
    """

    path: str
    old: str | None
    new: str | None


class ErrorSink(Protocol):
    """Where compile errors go (the configuration loader's context)."""

    def error(self, node: yaml.Node | None, key_path: str, message: str) -> Any:
        """Record one configuration error at ``node``'s line."""


class MorphAction(Protocol):
    """What every compiled action provides (built-ins and plugins' actions)."""

    def apply(self, dataset: Dataset, context: Any) -> list[Change]:
        """Change ``dataset`` in place; return what changed; raise :class:`MorphError`."""


# ---------------------------------------------------------------------------
# VR validation (PS3.5 6.2, Table 6.2-1)
# ---------------------------------------------------------------------------

#: PS3.5 Table 6.2-1 maximum value lengths, in characters, of the string VRs
#: (PN is per component group; UC, UR and UT are unlimited).
MAX_LENGTH: dict[str, int] = {
    "AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64,
    "LT": 10240, "PN": 64, "SH": 16, "ST": 1024, "TM": 14, "UI": 64,
}  # fmt: skip
#: VRs whose value is text.
TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
#: VRs that may hold several values separated by ``\`` (PS3.5 6.4): all text VRs but these.
_SINGLE_VALUED = frozenset({"LT", "ST", "UT", "UR"})
#: Text VRs whose repertoire may extend beyond the default one (PS3.5 6.1.2.2).
_EXTENDED = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
#: Binary numbers: value ranges (PS3.5 Table 6.2-1).
_INT_RANGES: dict[str, tuple[int, int]] = {
    "US": (0, 2**16 - 1), "SS": (-(2**15), 2**15 - 1), "UL": (0, 2**32 - 1),
    "SL": (-(2**31), 2**31 - 1), "UV": (0, 2**64 - 1), "SV": (-(2**63), 2**63 - 1),
}  # fmt: skip
_FLOATS = frozenset({"FL", "FD"})

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
    if vr in _INT_RANGES:
        low, high = _INT_RANGES[vr]
        try:
            number = int(text, 0) if text.strip().lower().startswith("0x") else int(text)
        except ValueError:
            return f"{text!r} is not an integer ({vr})"
        return None if low <= number <= high else f"{text!r} is out of range for {vr} ({low}..{high})"
    if vr in _FLOATS:
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
    if vr not in _SINGLE_VALUED and "\\" in text:
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
    if vr not in _EXTENDED and not text.isascii():
        return f"{text!r}: {vr} allows only the default character repertoire"
    return None


def check_repertoire(dataset: Dataset, vr: str, text: str) -> str | None:
    """Why ``text`` cannot be encoded in ``dataset``'s Specific Character Set, or None.

    :param dataset: the data set (its (0008,0005)).
    :param vr: the VR (only :data:`_EXTENDED` VRs use the extended repertoire).
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


def _to_value(vr: str, texts: Sequence[str]) -> Any:
    """pydicom value for ``texts`` (already validated) in VR ``vr``."""
    texts = [t for t in texts]
    if not texts or texts == [""]:
        return [] if vr == "SQ" else (None if vr in _INT_RANGES or vr in _FLOATS or vr == "AT" else "")
    if vr in _INT_RANGES:
        values: list[Any] = [int(t, 0) if t.strip().lower().startswith("0x") else int(t) for t in texts]
    elif vr in _FLOATS:
        values = [float(t) for t in texts]
    elif vr == "AT":
        values = [parse_tag_ref(t).tag for t in texts]
    else:
        values = list(texts)
    return values[0] if len(values) == 1 else values


def _value_texts(element: DataElement) -> list[str]:
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


def _label(prefix: str, tag: int) -> str:
    keyword = keyword_for_tag(tag)
    name = keyword or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    return f"{prefix}/{name}" if prefix else name


def walk(dataset: Dataset, prefix: str = "") -> Iterator[tuple[str, Dataset, DataElement]]:
    """Every element of ``dataset`` and of its sequences' items, depth first.

    :param dataset: the data set.
    :param prefix: the label of the enclosing item.
    :returns: ``(label, container, element)``; a sequence is yielded before its items.
    """
    for tag in list(dataset.keys()):
        if tag not in dataset:
            continue
        element = dataset[tag]
        label = _label(prefix, int(tag))
        yield label, dataset, element
        if element.VR == "SQ" and element.value is not None:
            for index, item in enumerate(element.value):
                yield from walk(item, f"{label}[{index}]")


def _set_element(container: Dataset, tag: int, vr: str, value: Any) -> None:
    """Create or replace an element (keeping no stale raw bytes)."""
    if tag in container:
        del container[tag]
    container.add_new(tag, vr, value)


def _validated(dataset: Dataset, vr: str, texts: Sequence[str], where: str) -> list[str]:
    """``texts`` after validation for ``vr`` in ``dataset``; raises MorphError."""
    for text in texts:
        problem = check_value(vr, text) or (check_repertoire(dataset, vr, text) if vr in _EXTENDED else None)
        if problem:
            raise MorphError(f"{where}: {problem}")
    if vr in _SINGLE_VALUED and len(texts) > 1:
        raise MorphError(f"{where}: {vr} holds a single value")
    return list(texts)


def _resolve_tag(container: Dataset, path: TagPath, create: bool) -> int | None:
    """The last step's tag in ``container``; private blocks are created when asked."""
    ref = path.last
    if ref.creator is None:
        return ref.tag
    if create:
        return int(container.private_block(ref.group, ref.creator, create=True).get_tag(ref.tag & 0xFF))
    return ref.resolve(container)


def _container_label(path: TagPath, index: int, count: int) -> str:
    text = str(path)
    return text if count == 1 else f"{text}#{index}"


# ---------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SetAction:
    """``set``: give an element (created if absent) the rendered template values.

    :ivar path: the element.
    :ivar vr: its VR (dictionary VR, or the configured one for private tags).
    :ivar templates: one template per value (several for multi-valued elements).
    """

    path: TagPath
    vr: str
    templates: tuple[Template, ...]

    touches_tail = False

    def drops_tail(self, tag: int) -> bool:
        """Never: ``set`` works in the header only."""
        return False

    def apply(self, dataset: Dataset, context: Any) -> list[Change]:
        """Render, validate and store the values in every container of the path.

        :raises MorphError: when a rendered value is invalid for the VR.
        """
        changes: list[Change] = []
        holders = list(containers(dataset, self.path))
        for index, holder in enumerate(holders):
            texts = [t.render(dataset, context) for t in self.templates]
            where = _container_label(self.path, index, len(holders))
            texts = _validated(dataset, self.vr, texts, f"set {where}")
            tag = _resolve_tag(holder, self.path, create=True)
            assert tag is not None
            old = describe_value(holder.get(tag))
            _set_element(holder, tag, self.vr, _to_value(self.vr, texts))
            new = describe_value(holder[tag])
            if old != new:
                changes.append(Change(where, old, new))
        return changes


@dataclass(frozen=True)
class DeletePattern:
    """One ``delete`` item: an exact path, or a masked tag matched at every level.

    :ivar path: an exact path (keyword, tag, private by creator, sequence path), or None.
    :ivar value/mask: for wildcards, ``tag & mask == value`` (``(0009,xxxx)``,
        ``{group: "0009"}``); ``private`` matches every odd group.
    """

    path: TagPath | None = None
    value: int = 0
    mask: int = 0
    private: bool = False
    text: str = ""

    def matches(self, tag: int) -> bool:
        """Whether a wildcard pattern matches ``tag`` (exact paths never do)."""
        if self.private:
            return bool((tag >> 16) & 1)
        return self.path is None and tag & self.mask == self.value

    @property
    def touches_tail(self) -> bool:
        """Whether the pattern can match an element after (7FE0,0010)."""
        if self.private:
            return True
        if self.path is not None:
            return False
        highest = self.value | (~self.mask & 0xFFFFFFFF)
        return highest > 0x7FE00010


@dataclass(frozen=True)
class DeleteAction:
    """``delete``: remove elements by path, wildcard, group or ``private: all``.

    Exact paths remove the named element where the path points; wildcards,
    groups and ``private: all`` remove every matching element at every
    nesting level, and after the pixel data.
    """

    patterns: tuple[DeletePattern, ...]

    @property
    def touches_tail(self) -> bool:
        """Whether a pattern may match an element after the pixel data."""
        return any(p.touches_tail for p in self.patterns)

    def drops_tail(self, tag: int) -> bool:
        """Whether an element after the pixel data with ``tag`` is removed."""
        return any(p.matches(tag) for p in self.patterns)

    def apply(self, dataset: Dataset, context: Any) -> list[Change]:
        """Remove what the patterns name; absent elements are no change."""
        changes: list[Change] = []
        for pattern in self.patterns:
            if pattern.path is not None:
                holders = list(containers(dataset, pattern.path))
                for index, holder in enumerate(holders):
                    tag = _resolve_tag(holder, pattern.path, create=False)
                    if tag is not None and tag in holder:
                        old = describe_value(holder[tag])
                        del holder[tag]
                        changes.append(Change(_container_label(pattern.path, index, len(holders)), old, None))
                continue
            for label, holder, element in list(walk(dataset)):
                if pattern.matches(int(element.tag)) and element.tag in holder:
                    old = describe_value(element)
                    del holder[element.tag]
                    changes.append(Change(label, old, None))
        return changes


def _map_values(
    dataset: Dataset,
    path: TagPath,
    verb: str,
    function: Callable[[str], str],
    vr_override: str | None = None,
) -> list[Change]:
    """Apply ``function`` to each value of each element ``path`` names; validate; store."""
    changes: list[Change] = []
    elements = list(find(dataset, path))
    for index, element in enumerate(elements):
        texts = _value_texts(element)
        if not texts:
            continue
        new_texts = [function(t) for t in texts]
        if new_texts == texts:
            continue
        vr = vr_override or element.VR
        where = _container_label(path, index, len(elements))
        _validated(dataset, vr, new_texts, f"{verb} {where}")
        old = describe_value(element)
        element.value = _to_value(vr, new_texts)
        changes.append(Change(where, old, describe_value(element)))
    return changes


@dataclass(frozen=True)
class ReplaceAction:
    """``replace``: regex substitution (``\\1`` groups) on each value of each matching element."""

    path: TagPath
    pattern: re.Pattern[str]
    replacement: str

    touches_tail = False

    def drops_tail(self, tag: int) -> bool:
        """Never."""
        return False

    def apply(self, dataset: Dataset, context: Any) -> list[Change]:
        """Substitute in every value; an invalid result is a MorphError."""
        return _map_values(dataset, self.path, "replace", lambda t: self.pattern.sub(self.replacement, t))


@dataclass(frozen=True)
class CopyAction:
    """``copy``: give the target the source's value (the first element the source path finds).

    A missing source changes nothing. Same VR: the value is copied as is;
    otherwise its text is validated for the target's VR.
    """

    source: TagPath
    target: TagPath
    vr: str

    touches_tail = False

    def drops_tail(self, tag: int) -> bool:
        """Never."""
        return False

    def apply(self, dataset: Dataset, context: Any) -> list[Change]:
        """Copy into every container of the target path."""
        element = next(find(dataset, self.source), None)
        if element is None:
            return []
        changes: list[Change] = []
        holders = list(containers(dataset, self.target))
        for index, holder in enumerate(holders):
            where = _container_label(self.target, index, len(holders))
            if element.VR == self.vr:
                value = copy_module.deepcopy(element.value)
            else:
                texts = _validated(dataset, self.vr, _value_texts(element), f"copy to {where}")
                value = _to_value(self.vr, texts)
            tag = _resolve_tag(holder, self.target, create=True)
            assert tag is not None
            old = describe_value(holder.get(tag))
            _set_element(holder, tag, self.vr, value)
            new = describe_value(holder[tag])
            if old != new:
                changes.append(Change(where, old, new))
        return changes


# PS3.5 / PS3.6: UI elements naming a class, a syntax or a coding scheme, not
# an instance: uid_remap's default leaves them (and every 1.2.840.10008 UID).
_NOT_INSTANCE_UIDS = frozenset(
    {
        "TransferSyntaxUID", "SOPClassUID", "MediaStorageSOPClassUID", "ReferencedSOPClassUID",
        "AffectedSOPClassUID", "RequestedSOPClassUID", "ReferencedSOPClassUIDInFile",
        "ReferencedTransferSyntaxUIDInFile", "CodingSchemeUID", "ContextGroupExtensionCreatorUID",
        "RelatedGeneralSOPClassUID", "OriginalSpecializedSOPClassUID", "SOPClassesInStudy",
        "PrivateInformationCreatorUID", "ImplementationClassUID", "SpecificCharacterSet",
        "RequestedSubsequentWorkitemCodeSequence", "ReferencedColorPaletteInstanceUID",
    }
)  # fmt: skip
#: PS3.6 Annex A: the UIDs the standard itself defines start with this root.
DICOM_ROOT = "1.2.840.10008."


def remap_values(values: list[str], salt: str, root: str) -> list[str]:
    """Remap each UID, leaving empty values and the standard's own UIDs (PS3.6 A).

    :param values: the UIDs.
    :param salt: the key.
    :param root: the root.
    :returns: the new UIDs.
    """
    return [v if not v or v.startswith(DICOM_ROOT) else remap_uid(v, salt, root) for v in values]


@dataclass(frozen=True)
class UidRemapAction:
    """``uid_remap``: deterministic new UIDs (see :mod:`gateway.uidremap`), also inside sequences.

    :ivar tags: the tags to remap wherever they occur, or empty for every UI
        element except class/syntax UIDs (:data:`_NOT_INSTANCE_UIDS`).
    """

    root: str
    salt: str
    tags: frozenset[int] = frozenset()

    touches_tail = False

    def drops_tail(self, tag: int) -> bool:
        """Never."""
        return False

    def apply(self, dataset: Dataset, context: Any) -> list[Change]:
        """Remap every selected UI element at every level."""
        changes: list[Change] = []
        for label, _holder, element in list(walk(dataset)):
            if element.VR != "UI":
                continue
            if self.tags:
                if int(element.tag) not in self.tags:
                    continue
            elif keyword_for_tag(element.tag) in _NOT_INSTANCE_UIDS:
                continue
            texts = _value_texts(element)
            new = remap_values(texts, self.salt, self.root)
            if new != texts:
                old = describe_value(element)
                element.value = _to_value("UI", new)
                changes.append(Change(label, old, describe_value(element)))
        return changes


def hash_text(text: str, salt: str, length: int, encoding: str) -> str:
    """The keyed pseudonym of ``text``: HMAC-SHA256, hex (upper case) or base32, truncated.

    :param text: the value.
    :param salt: the key.
    :param length: characters to keep.
    :param encoding: ``hex`` or ``base32``.
    :returns: the pseudonym.
    """
    import base64

    digest = keyed_digest(salt, text)
    encoded = digest.hex().upper() if encoding == "hex" else base64.b32encode(digest).decode("ascii").rstrip("=")
    return encoded[:length]


@dataclass(frozen=True)
class HashAction:
    """``hash``: replace each non-empty value by its keyed pseudonym, fitted to the VR."""

    path: TagPath
    salt: str
    length: int
    encoding: str

    touches_tail = False

    def drops_tail(self, tag: int) -> bool:
        """Never."""
        return False

    def apply(self, dataset: Dataset, context: Any) -> list[Change]:
        """Hash every value of every element the path names."""

        def pseudonym(text: str, vr: str) -> str:
            return hash_text(text, self.salt, min(self.length, MAX_LENGTH.get(vr, 64)), self.encoding)

        elements = list(find(dataset, self.path))
        if not elements:
            return []
        vr = elements[0].VR
        return _map_values(dataset, self.path, "hash", lambda t: pseudonym(t, vr))


def shift_days(salt: str, patient_id: str, max_days: int) -> int:
    """The per-patient day offset: HMAC(salt, PatientID) mapped into ``[-max_days, max_days]``.

    :param salt: the key.
    :param patient_id: (0010,0020) as text (empty when absent).
    :param max_days: the largest shift.
    :returns: the offset in days.
    """
    number = int.from_bytes(keyed_digest(salt, patient_id)[:8], "big")
    return number % (2 * max_days + 1) - max_days


def _shift_text(text: str, vr: str, days: int) -> str:
    """Shift a DA or DT value by whole days; DT keeps its time and offset."""
    if vr == "DA" or (vr == "DT" and len(text) >= 8):
        try:
            day = datetime.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
            shifted = day + datetime.timedelta(days=days)
        except (ValueError, OverflowError):
            raise MorphError(f"date_shift: {text!r} is not a valid {vr} date") from None
        return f"{shifted.year:04d}{shifted.month:02d}{shifted.day:02d}" + text[8:]
    # DT of year or year-month precision only: left as is (documented).
    return text


@dataclass(frozen=True)
class DateShiftAction:
    """``date_shift``: shift DA and DT values by a per-patient number of days.

    The offset is whole days, so times of day (TM) are never changed and a
    shift never crosses midnight. DT values of year or month precision are
    left as they are. The offset reads PatientID as it is when this action
    runs (put ``date_shift`` before a ``hash`` of PatientID to key on the
    original ID).
    """

    salt: str
    max_days: int
    tags: frozenset[int] = frozenset()

    touches_tail = False

    def drops_tail(self, tag: int) -> bool:
        """Never."""
        return False

    def apply(self, dataset: Dataset, context: Any) -> list[Change]:
        """Shift every selected DA/DT value at every level."""
        days = shift_days(self.salt, render_value(dataset.get("PatientID", "")), self.max_days)
        changes: list[Change] = []
        for label, _holder, element in list(walk(dataset)):
            if element.VR not in ("DA", "DT"):
                continue
            if self.tags and int(element.tag) not in self.tags:
                continue
            texts = [t.strip() for t in _value_texts(element)]
            new = [_shift_text(t, element.VR, days) if t else t for t in texts]
            if new != texts:
                old = describe_value(element)
                element.value = _to_value(element.VR, new)
                changes.append(Change(label, old, describe_value(element)))
        return changes


@dataclass(frozen=True)
class LookupAction:
    """``lookup``: replace each value through a table loaded at configuration load.

    :ivar table: ``(from, to)`` pairs.
    :ivar default: the value for misses, or None to leave misses unchanged.
    """

    path: TagPath
    table: tuple[tuple[str, str], ...]
    default: str | None
    source: str = ""
    _map: dict[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)

    touches_tail = False

    def drops_tail(self, tag: int) -> bool:
        """Never."""
        return False

    def apply(self, dataset: Dataset, context: Any) -> list[Change]:
        """Translate every value of every element the path names."""
        if not self._map and self.table:
            self._map.update(self.table)

        def translate(text: str) -> str:
            found = self._map.get(text.strip())
            if found is not None:
                return found
            return text if self.default is None else self.default

        return _map_values(dataset, self.path, "lookup", translate)


@dataclass(frozen=True)
class PluginAction:
    """A plugin's action, named for messages."""

    name: str
    action: Any

    @property
    def touches_tail(self) -> bool:
        """Whether the plugin's action says it must see the tail."""
        return bool(getattr(self.action, "touches_tail", False))

    def drops_tail(self, tag: int) -> bool:
        """Ask the plugin's action, if it can answer."""
        drops = getattr(self.action, "drops_tail", None)
        return bool(drops(tag)) if drops is not None else False

    def apply(self, dataset: Dataset, context: Any) -> list[Change]:
        """Run the plugin; any exception becomes a MorphError naming it."""
        try:
            return list(self.action.apply(dataset, context))
        except MorphError:
            raise
        except Exception as e:
            raise MorphError(f"plugin {self.name}: {e}") from e


@dataclass(frozen=True)
class MorphPlan:
    """A route's compiled morph: actions applied in order.

    Frozen and comparable, so a configuration reload can tell whether a
    route's morph changed.

    :ivar actions: the compiled actions.
    :ivar canonical: the plan's journaled form (:func:`canonical_json`): what
        the queue stores with every entry the route queues, so the entry is
        sent with this plan whatever the configuration says later.
    """

    actions: tuple[Any, ...]
    canonical: str = field(default="", compare=False, repr=False)

    @property
    def touches_tail(self) -> bool:
        """Whether any action must look after the pixel data."""
        return any(getattr(a, "touches_tail", False) for a in self.actions)

    def drops_tail(self, tag: int) -> bool:
        """Whether an element after the pixel data is removed by some action.

        :param tag: the element's tag.
        :returns: True to leave it out of the output.
        """
        return any(getattr(a, "touches_tail", False) and a.drops_tail(tag) for a in self.actions)

    def apply(self, dataset: Dataset, context: Any) -> list[Change]:
        """Apply every action in order to ``dataset`` (in place).

        :param dataset: the header.
        :param context: the :class:`~gateway.route.RoutingContext`.
        :returns: every change, in order.
        :raises MorphError: on the first failure (the data set is then half
            changed and must be discarded).
        """
        changes: list[Change] = []
        for action in self.actions:
            try:
                changes += action.apply(dataset, context)
            except MorphError:
                raise
            except Exception as e:  # a bug or odd data must not escape as anything else
                raise MorphError(f"{type(action).__name__}: {e}") from e
        return changes


# ---------------------------------------------------------------------------
# The splice writer
# ---------------------------------------------------------------------------

_COPY_CHUNK = 1 << 20


def _copy_range(src: BinaryIO, dst: BinaryIO, start: int, end: int | None) -> None:
    """Copy ``src[start:end]`` (to EOF when ``end`` is None) in 1 MiB chunks."""
    src.seek(start)
    if end is None:
        shutil.copyfileobj(src, dst, _COPY_CHUNK)
        return
    remaining = end - start
    while remaining > 0:
        chunk = src.read(min(_COPY_CHUNK, remaining))
        if not chunk:
            raise MorphError("the source file is shorter than its elements say")
        dst.write(chunk)
        remaining -= len(chunk)


def write_morphed(src_path: str, dst_path: str, plan: MorphPlan, context: Any) -> list[Change]:
    """Write ``plan`` applied to ``src_path`` as a new Part 10 file at ``dst_path``.

    File meta (same transfer syntax; (0002,0003) follows a changed SOP
    Instance UID, PS3.10 7.1) and the morphed header are written by pydicom in
    the original encoding; the bytes from the pixel data element to the end
    are copied verbatim, except tail elements the plan drops. The source is
    never modified; the output appears atomically.

    :param src_path: the spooled instance.
    :param dst_path: where the morphed copy goes.
    :param plan: the route's plan.
    :param context: the association context.
    :returns: the changes made.
    :raises MorphError: when the file cannot be read or morphed.
    :raises OSError: when the output cannot be written (disk full, ...).
    """
    try:
        header = read_header(src_path)
    except ValueError as e:
        raise MorphError(str(e)) from e
    syntax = header.transfer_syntax_uid
    if is_deflated(syntax):
        raise MorphError("deflated data sets are not morphed")
    dataset = header.dataset
    meta = copy_module.deepcopy(dataset.file_meta)
    changes = plan.apply(dataset, context)
    # PS3.10 7.1: the meta's SOP class/instance equal the data set's.
    for meta_keyword, keyword in (("MediaStorageSOPInstanceUID", "SOPInstanceUID"), ("MediaStorageSOPClassUID", "SOPClassUID")):
        value = dataset.get(keyword)
        if value and str(value) != str(meta.get(meta_keyword, "")):
            setattr(meta, meta_keyword, str(value))
    implicit, little = encoding_of(syntax)
    tmp_path = dst_path + ".tmp"
    try:
        # HARDENING H08: the copy carries patient data; 0600 whatever the umask.
        with os.fdopen(open_private(tmp_path, os.O_WRONLY | os.O_TRUNC), "wb") as out:
            # PS3.10 7.1: a zero preamble (HARDENING D16) and the prefix.
            out.write(b"\x00" * 128 + b"DICM")
            fp = DicomFileLike(out)
            fp.is_little_endian, fp.is_implicit_VR = True, False
            write_file_meta_info(fp, meta, enforce_standard=True)
            fp.is_little_endian, fp.is_implicit_VR = little, implicit
            try:
                write_dataset(fp, dataset)
            except Exception as e:
                raise MorphError(f"cannot encode the morphed header: {e}") from e
            if header.pixel_offset is not None:
                with open(src_path, "rb") as src:
                    _copy_tail(src, out, header.pixel_offset, plan, implicit, little)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_path, dst_path)
        _fsync_directory(os.path.dirname(os.path.abspath(dst_path)))
    except BaseException:
        try:
            os.unlink(tmp_path)
        except FileNotFoundError:
            pass
        raise
    return changes


def _copy_tail(src: BinaryIO, out: BinaryIO, pixel_offset: int, plan: MorphPlan, implicit: bool, little: bool) -> None:
    """Copy from the pixel data element to EOF, leaving out tail elements the plan drops."""
    if not plan.touches_tail:
        _copy_range(src, out, pixel_offset, None)
        return
    try:
        for element in iter_raw_elements(src, pixel_offset, None, implicit=implicit, little=little):
            if element.offset != pixel_offset and plan.drops_tail(element.tag):
                continue
            _copy_range(src, out, element.offset, element.end)
    except RawParseError as e:
        raise MorphError(f"cannot walk the elements after the pixel data: {e}") from e


def _fsync_directory(path: str) -> None:
    """Make a rename durable (POSIX: fsync the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# Compilation from YAML
# ---------------------------------------------------------------------------

_constructor = SafeConstructor()


def plain(node: yaml.Node) -> Any:
    """A YAML node's plain Python value (str, int, float, bool, None, list, dict).

    Each call builds new objects: the constructor's per-node cache is
    emptied afterwards, so it does not keep every node of every
    configuration (and every journaled plan rebuilt at send time) alive, and
    two callers never share (and mutate) one value.

    :param node: a node from ``yaml.compose`` (SafeLoader).
    :returns: the value.
    """
    try:
        return _constructor.construct_object(node, deep=True)
    finally:
        _constructor.constructed_objects.clear()
        _constructor.recursive_objects.clear()


def _items(node: yaml.MappingNode) -> list[tuple[str, yaml.Node, yaml.Node]]:
    """``(key text, key node, value node)`` of a mapping."""
    return [(str(plain(k)), k, v) for k, v in node.value]


_MASK = re.compile(r"^\(?\s*([0-9A-Fa-fxX]{4})\s*,\s*([0-9A-Fa-fxX]{4})\s*\)?$")


def _mask_pattern(text: str) -> tuple[int, int] | None:
    """``(value, mask)`` of a wildcard tag such as ``(0009,xxxx)``, ``(0019,10xx)``, ``(50xx,xxxx)``."""
    m = _MASK.match(text.strip())
    if not m or "x" not in (m.group(1) + m.group(2)).lower():
        return None
    value = mask = 0
    for char in (m.group(1) + m.group(2)).lower():
        value <<= 4
        mask <<= 4
        if char != "x":
            value |= int(char, 16)
            mask |= 0xF
    return value, mask


class _Compiler:
    """Compiles one route's ``morph:`` list, reporting to the error sink."""

    def __init__(self, errors: ErrorSink, plugins: Mapping[str, Any], base_dir: str, journaled: bool = False) -> None:
        self.errors = errors
        self.plugins = plugins
        self.base_dir = base_dir
        #: Compiling a journaled plan (:func:`compile_canonical`), not a configuration file.
        self.journaled = journaled
        self.ok = True

    def fail(self, node: yaml.Node | None, key: str, message: str) -> None:
        self.ok = False
        self.errors.error(node, key, message)

    # -- helpers -----------------------------------------------------------
    def path(self, node: yaml.Node, key: str, *, writable: bool = False) -> TagPath | None:
        text = plain(node) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(text, str):
            self.fail(node, key, "expected an element name (keyword, tag or path)")
            return None
        try:
            path = parse_path(text)
        except ValueError as e:
            self.fail(node, key, str(e))
            return None
        if writable and path.last.creator is None and path.last.tag >= _FIRST_PIXEL_TAG:
            self.fail(node, key, f"'{text}': elements at or after the pixel data cannot be set")
            return None
        return path

    def mapping(self, node: yaml.Node, key: str, required: Sequence[str], optional: Sequence[str]) -> dict[str, yaml.Node] | None:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, key, f"expected a mapping with {', '.join(required)}")
            return None
        found: dict[str, yaml.Node] = {}
        good = True
        for name, key_node, value in _items(node):
            if name not in required and name not in optional:
                self.fail(key_node, f"{key}.{name}", f"unknown key (expected {', '.join([*required, *optional])})")
                good = False
            found[name] = value
        for name in required:
            if name not in found:
                self.fail(node, key, f"missing '{name}'")
                good = False
        return found if good else None

    def string(self, node: yaml.Node, key: str, allow_empty: bool = False) -> str | None:
        value = plain(node)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.fail(node, key, "expected a string")
            return None
        text = str(value)
        if not text and not allow_empty:
            self.fail(node, key, "must not be empty")
            return None
        return text

    def salt(self, node: yaml.Node | None, key: str) -> str | None:
        if node is None:
            return None
        return self.string(node, key)

    def tag_set(self, node: yaml.Node | None, key: str, vrs: Sequence[str]) -> frozenset[int] | None:
        if node is None:
            return frozenset()
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, key, "expected a list of elements")
            return None
        tags: set[int] = set()
        for index, item in enumerate(node.value):
            path = self.path(item, f"{key}[{index}]")
            if path is None:
                continue
            vr = path.vr
            if vr is not None and vr not in vrs:
                self.fail(item, f"{key}[{index}]", f"'{path}' is {vr}, not {'/'.join(vrs)}")
                continue
            tags.add(path.last.tag)
        return frozenset(tags)

    def vr_for(self, path: TagPath, vr_node: yaml.Node | None, node: yaml.Node, key: str) -> str | None:
        explicit = None if vr_node is None else self.string(vr_node, f"{key}.vr")
        dictionary = path.vr
        if explicit is not None:
            explicit = explicit.upper()
            if explicit not in TEXT_VRS and explicit not in _INT_RANGES and explicit not in _FLOATS and explicit != "AT":
                self.fail(vr_node, f"{key}.vr", f"VR {explicit} cannot be set from configuration")
                return None
            if dictionary is not None and explicit not in dictionary.split(" or "):
                self.fail(vr_node, f"{key}.vr", f"'{path}' is {dictionary} in PS3.6, not {explicit}")
                return None
            return explicit
        if dictionary is None:
            self.fail(node, key, f"'{path}' is not in the data dictionary: give its VR ({{value: ..., vr: LO}})")
            return None
        vr = dictionary.split(" or ")[0]
        if vr == "SQ" or vr not in TEXT_VRS | set(_INT_RANGES) | _FLOATS | {"AT"}:
            self.fail(node, key, f"'{path}' is {dictionary}; only text and number elements can be set")
            return None
        return vr

    def literal_check(self, template: Template, vr: str, node: yaml.Node, key: str) -> bool:
        if template.is_literal:
            problem = check_value(vr, template.source.replace("{{", "{").replace("}}", "}"))
            if problem:
                self.fail(node, key, problem)
                return False
        return True

    # -- actions -----------------------------------------------------------
    def compile_set(self, node: yaml.Node, key: str) -> list[Any]:
        if not isinstance(node, yaml.MappingNode) or not node.value:
            self.fail(node, key, "expected a mapping of element: value")
            return []
        actions: list[Any] = []
        for name, key_node, value_node in _items(node):
            where = f"{key}.{name}"
            path = self.path(key_node, where, writable=True)
            if path is None:
                continue
            vr_node = None
            if isinstance(value_node, yaml.MappingNode):
                parts = self.mapping(value_node, where, ["value"], ["vr"])
                if parts is None:
                    continue
                value_node, vr_node = parts["value"], parts.get("vr")
            vr = self.vr_for(path, vr_node, key_node, where)
            if vr is None:
                continue
            value_nodes = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            templates: list[Template] = []
            for value_item in value_nodes:
                raw = plain(value_item)
                if raw is None:
                    raw = ""
                if isinstance(raw, (dict, list)) or isinstance(raw, bool):
                    self.fail(value_item, where, "expected a text or number value")
                    break
                try:
                    template = Template.parse(str(raw))
                except ValueError as e:
                    self.fail(value_item, where, str(e))
                    break
                if not self.literal_check(template, vr, value_item, where):
                    break
                templates.append(template)
            else:
                if len(templates) > 1 and vr in _SINGLE_VALUED:
                    self.fail(value_node, where, f"{vr} holds a single value")
                    continue
                actions.append(SetAction(path, vr, tuple(templates)))
        return actions

    def compile_delete(self, node: yaml.Node, key: str) -> list[Any]:
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        patterns: list[DeletePattern] = []
        for index, item in enumerate(items):
            where = f"{key}[{index}]" if isinstance(node, yaml.SequenceNode) else key
            if isinstance(item, yaml.MappingNode):
                spec = plain(item)
                if spec == {"private": "all"}:
                    patterns.append(DeletePattern(private=True, text="private: all"))
                elif set(spec) == {"group"} and re.match(r"^[0-9A-Fa-f]{4}$", str(spec["group"])):
                    group = int(str(spec["group"]), 16)
                    if group in (0x0000, 0x0002, 0xFFFE):
                        self.fail(item, where, f"group {group:04X} is not part of a data set")
                        continue
                    patterns.append(DeletePattern(value=group << 16, mask=0xFFFF0000, text=f"group {group:04X}"))
                else:
                    self.fail(item, where, 'expected an element, a wildcard tag, {private: all} or {group: "gggg"}')
                continue
            text = plain(item)
            if not isinstance(text, str):
                self.fail(item, where, "expected an element name")
                continue
            masked = _mask_pattern(text)
            if masked is not None:
                patterns.append(DeletePattern(value=masked[0], mask=masked[1], text=text))
                continue
            path = self.path(item, where)
            if path is None:
                continue
            if path.last.creator is None and path.last.tag >= _FIRST_PIXEL_TAG:
                if path.last.tag in (0x7FE00008, 0x7FE00009, 0x7FE00010):
                    self.fail(item, where, "pixel data cannot be deleted by a morph")
                    continue
                # An exact tag after the pixel data: a one-tag wildcard reaches the tail.
                patterns.append(DeletePattern(value=path.last.tag, mask=0xFFFFFFFF, text=text))
                continue
            patterns.append(DeletePattern(path=path, text=text))
        return [DeleteAction(tuple(patterns))] if patterns else []

    def compile_replace(self, node: yaml.Node, key: str) -> list[Any]:
        parts = self.mapping(node, key, ["tag", "pattern", "with"], [])
        if parts is None:
            return []
        path = self.path(parts["tag"], f"{key}.tag")
        pattern_text = self.string(parts["pattern"], f"{key}.pattern")
        replacement = self.string(parts["with"], f"{key}.with", allow_empty=True)
        if path is None or pattern_text is None or replacement is None:
            return []
        try:
            pattern = re.compile(pattern_text)
        except re.error as e:
            self.fail(parts["pattern"], f"{key}.pattern", f"bad regular expression: {e}")
            return []
        for ref in re.findall(r"\\(\d+)|\\g<([^>]*)>", replacement):
            number, name = ref
            group = number or name
            if (group.isdigit() and int(group) > pattern.groups) or (not group.isdigit() and group not in pattern.groupindex):
                self.fail(parts["with"], f"{key}.with", f"refers to group {group}, which the pattern does not have")
                return []
        return [ReplaceAction(path, pattern, replacement)]

    def compile_copy(self, node: yaml.Node, key: str) -> list[Any]:
        parts = self.mapping(node, key, ["from", "to"], ["vr"])
        if parts is None:
            return []
        source = self.path(parts["from"], f"{key}.from")
        target = self.path(parts["to"], f"{key}.to", writable=True)
        if source is None or target is None:
            return []
        vr = self.vr_for(target, parts.get("vr"), parts["to"], f"{key}.to")
        return [] if vr is None else [CopyAction(source, target, vr)]

    def compile_uid_remap(self, node: yaml.Node, key: str) -> list[Any]:
        parts = self.mapping(node, key, ["salt"], ["root", "tags"])
        if parts is None:
            return []
        root = "2.25" if "root" not in parts else self.string(parts["root"], f"{key}.root")
        salt = self.salt(parts["salt"], f"{key}.salt")
        tags = self.tag_set(parts.get("tags"), f"{key}.tags", ["UI"])
        if root is None or salt is None or tags is None:
            return []
        problem = check_root(root)
        if problem:
            self.fail(parts.get("root"), f"{key}.root", problem)
            return []
        return [UidRemapAction(root, salt, tags)]

    def compile_hash(self, node: yaml.Node, key: str) -> list[Any]:
        parts = self.mapping(node, key, ["tag", "salt"], ["length", "encoding"])
        if parts is None:
            return []
        path = self.path(parts["tag"], f"{key}.tag", writable=True)
        salt = self.salt(parts["salt"], f"{key}.salt")
        length = 16 if "length" not in parts else plain(parts["length"])
        encoding = "hex" if "encoding" not in parts else plain(parts["encoding"])
        if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= 64:
            self.fail(parts.get("length"), f"{key}.length", "expected a whole number from 1 to 64")
            return []
        if encoding not in ("hex", "base32"):
            self.fail(parts.get("encoding"), f"{key}.encoding", "expected hex or base32")
            return []
        if path is None or salt is None:
            return []
        if path.vr is not None and path.vr not in ("AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"):
            self.fail(parts["tag"], f"{key}.tag", f"'{path}' is {path.vr}: a pseudonym is only valid in a text VR")
            return []
        return [HashAction(path, salt, length, encoding)]

    def compile_date_shift(self, node: yaml.Node, key: str) -> list[Any]:
        parts = self.mapping(node, key, ["salt"], ["max_days", "tags"])
        if parts is None:
            return []
        salt = self.salt(parts["salt"], f"{key}.salt")
        max_days = 365 if "max_days" not in parts else plain(parts["max_days"])
        if not isinstance(max_days, int) or isinstance(max_days, bool) or not 1 <= max_days <= 36500:
            self.fail(parts.get("max_days"), f"{key}.max_days", "expected a whole number of days from 1 to 36500")
            return []
        tags = self.tag_set(parts.get("tags"), f"{key}.tags", ["DA", "DT"])
        if salt is None or tags is None:
            return []
        return [DateShiftAction(salt, max_days, tags)]

    def compile_lookup(self, node: yaml.Node, key: str) -> list[Any]:
        # A route names a CSV file; the journaled form carries the rows the
        # file had at load (``rows``), so a later edit of the file cannot
        # change the copies already queued.
        if self.journaled:
            parts = self.mapping(node, key, ["tag", "rows"], ["default", "table"])
        else:
            parts = self.mapping(node, key, ["tag", "table"], ["default"])
        if parts is None:
            return []
        path = self.path(parts["tag"], f"{key}.tag", writable=True)
        default = None if "default" not in parts else self.string(parts["default"], f"{key}.default", allow_empty=True)
        rows: list[list[str]]
        if self.journaled:
            table_node = parts["rows"]
            table_name: str | None = "" if "table" not in parts else self.string(parts["table"], f"{key}.table", allow_empty=True)
            given = plain(table_node)
            if not isinstance(given, list) or not all(
                isinstance(row, list) and all(isinstance(cell, str) for cell in row) for row in given
            ):
                self.fail(table_node, f"{key}.rows", "expected a list of [from, to] rows")
                return []
            rows = given
        else:
            table_node = parts["table"]
            table_name = self.string(table_node, f"{key}.table")
            if path is None or table_name is None:
                return []
            full = os.path.join(self.base_dir, table_name)
            try:
                with open(full, newline="", encoding="utf-8") as f:
                    rows = [row for row in csv.reader(f) if row and not row[0].startswith("#")]
            except (OSError, UnicodeDecodeError, csv.Error) as e:
                self.fail(table_node, f"{key}.table", f"cannot read lookup table {full}: {getattr(e, 'strerror', None) or e}")
                return []
            if rows and [c.strip().lower() for c in rows[0]] == ["from", "to"]:
                rows = rows[1:]
        if path is None or table_name is None:
            return []
        vr = path.vr
        pairs: list[tuple[str, str]] = []
        for number, row in enumerate(rows, 1):
            if len(row) != 2:
                self.fail(table_node, f"{key}.table", f"{table_name} row {number}: expected two columns (from,to)")
                return []
            target = row[1].strip()
            problem = check_value(vr, target) if vr else None
            if problem:
                self.fail(table_node, f"{key}.table", f"{table_name} row {number}: {problem}")
                return []
            pairs.append((row[0].strip(), target))
        if default is not None and vr and check_value(vr, default):
            self.fail(parts["default"], f"{key}.default", str(check_value(vr, default)))
            return []
        return [LookupAction(path, tuple(pairs), default, table_name)]

    def compile_deidentify(self, node: yaml.Node, key: str) -> list[Any]:
        from gateway import deidentify

        spec = plain(node)
        action = None
        try:
            action = deidentify.compile_profile(spec)
        except ValueError as e:
            self.fail(node, key, str(e))
        return [] if action is None else [action]

    def compile_plugin(self, item: yaml.MappingNode, key: str) -> list[Any]:
        # A copy: plain() caches what it builds per node, and the journaled
        # definition of this action is that same mapping, "plugin" included.
        spec = dict(plain(item))
        name = spec.pop("plugin")
        plugin = self.plugins.get(name) if isinstance(name, str) else None
        if plugin is None:
            known = ", ".join(sorted(self.plugins)) or "none installed"
            self.fail(item, f"{key}.plugin", f"unknown morph plugin {name!r} (known: {known})")
            return []
        try:
            action = plugin.compile(spec)
        except ValueError as e:
            self.fail(item, f"{key}.plugin", f"{name}: {e}")
            return []
        return [PluginAction(name, action)]


_ACTIONS = ("set", "delete", "replace", "copy", "uid_remap", "hash", "date_shift", "lookup", "deidentify")


def compile_morph(
    node: yaml.Node,
    path: str,
    errors: ErrorSink,
    plugins: Mapping[str, Any] | None = None,
    *,
    base_dir: str = "",
    journaled: bool = False,
) -> MorphPlan | None:
    """Compile a route's ``morph:`` list.

    The plan also gets its journaled form (:attr:`MorphPlan.canonical`), and
    that form is compiled back and compared with the plan: a morph whose
    journaled form would not give the same plan is a configuration error
    here, never a surprise when a queued copy is made.

    :param node: the list's node (from ``yaml.compose``).
    :param path: its key path (``routes[2].morph``) for messages.
    :param errors: the sink every problem goes to.
    :param plugins: morph plugins by name (:class:`gateway.interfaces.IMorphAction` providers).
    :param base_dir: the directory lookup table paths are relative to (the config file's).
    :param journaled: the list is a journaled plan's (:func:`compile_canonical`):
        lookup tables are inline rows, and no journaled form is made.
    :returns: the plan, or None when anything was wrong (all problems reported).
    """
    compiler = _Compiler(errors, plugins or {}, base_dir, journaled)
    if not isinstance(node, yaml.SequenceNode):
        compiler.fail(node, path, "expected a list of actions")
        return None
    actions: list[Any] = []
    items: list[Any] = []
    for index, item in enumerate(node.value):
        key = f"{path}[{index}]"
        if isinstance(item, yaml.MappingNode) and any(str(plain(k)) == "plugin" for k, _ in item.value):
            compiled = compiler.compile_plugin(item, key)
            actions += compiled
            items.append(plain(item))
            continue
        if not isinstance(item, yaml.MappingNode) or len(item.value) != 1:
            compiler.fail(item, key, f"each action is a mapping with one key ({', '.join(_ACTIONS)}, or plugin)")
            continue
        name, key_node, value = _items(item)[0]
        if name not in _ACTIONS:
            import difflib

            close = difflib.get_close_matches(name, _ACTIONS, n=1)
            hint = f"; did you mean {close[0]}?" if close else f" (expected {', '.join(_ACTIONS)} or plugin)"
            compiler.fail(key_node, f"{key}.{name}", f"unknown morph action{hint}")
            continue
        compiled = getattr(compiler, f"compile_{name}")(value, f"{key}.{name}")
        actions += compiled
        if compiled and not journaled:
            items.append(_definition(name, value, compiled[-1]))
    if not compiler.ok:
        return None
    if journaled:
        return MorphPlan(tuple(actions))
    try:
        canonical = canonical_json(items)
        rebuilt = compile_canonical(canonical, plugins or {})
    except (TypeError, ValueError) as e:
        compiler.fail(node, path, f"this morph cannot be journaled with the entries it queues: {e}")
        return None
    if not _same_actions(rebuilt.actions, tuple(actions)):
        compiler.fail(node, path, "this morph does not compile to the same plan from its journaled form (please report)")
        return None
    return MorphPlan(tuple(actions), canonical)


# ---------------------------------------------------------------------------
# The journaled form of a plan
# ---------------------------------------------------------------------------
#
# A route's morph is decided when an instance is journaled, not when its copy
# is sent (HARDENING decision 4, issue 11): the queue stores, with each entry,
# the plan's *definition* as canonical JSON, and the copy is made from that.
# The definition is the configuration's own vocabulary (action names, element
# keywords, profile and option names, plugin names and arguments), never the
# Python classes that implement it, so renaming or moving those classes in a
# later version does not strand a backlog. Its form:
#
#   {"actions":[...],"v":1}    keys sorted, no whitespace, ASCII only
#
# Each action is the YAML action as written, with two exceptions that keep the
# plan self-contained and its meaning exact: ``set`` is a list of
# ``[element, value]`` pairs (a mapping's order matters there: a template may
# read an element an earlier pair set, and the canonical form sorts mapping
# keys), and ``lookup`` carries the table's ``rows`` as read at load instead
# of the file name. A plan is identified by the SHA-256 of its canonical
# bytes (:func:`plan_hash`). A reader of version ``v`` must stay able to read
# every earlier version: a journal may hold entries queued by any of them.

#: The version of the journaled form this code writes.
PLAN_VERSION = 1


class PlanError(ValueError):
    """A journaled plan cannot be rebuilt (unknown version, plugin gone, compile error)."""


def _json_value(value: Any) -> Any:
    """Plain YAML values that JSON has no type for: dates and times as the text compilers see."""
    if isinstance(value, (datetime.date, datetime.datetime)):
        return str(value)
    raise TypeError(f"a {type(value).__name__} value cannot be journaled")


def canonical_json(actions: Sequence[Any]) -> str:
    """The canonical text of a plan made of ``actions`` (definitions, as :func:`compile_morph` makes them).

    :param actions: the action definitions (plain JSON-able values).
    :returns: ``{"actions":[...],"v":1}`` with sorted keys and no whitespace.
    :raises TypeError: when a value has no JSON form.
    :raises ValueError: for NaN or infinite numbers.
    """
    return json.dumps(
        {"v": PLAN_VERSION, "actions": list(actions)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
        default=_json_value,
    )


def plan_hash(canonical: str) -> str:
    """The identity of a journaled plan: SHA-256 of its canonical bytes, hex.

    :param canonical: the text of :func:`canonical_json`.
    :returns: 64 hex digits.
    """
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


#: The plan of a route without ``morph``: the instance is sent as received.
EMPTY_PLAN = canonical_json([])


def _definition(name: str, value: yaml.Node, action: Any) -> dict[str, Any]:
    """One built-in action's journaled definition (see the block comment above)."""
    if name == "set":
        assert isinstance(value, yaml.MappingNode)
        return {"set": [[plain(k), plain(v)] for k, v in value.value]}
    if name == "lookup":
        spec = plain(value)
        definition = {"tag": spec["tag"], "rows": [list(pair) for pair in action.table], "table": action.source}
        if "default" in spec:
            definition["default"] = spec["default"]
        return {"lookup": definition}
    return {name: plain(value)}


def _same_actions(left: Sequence[Any], right: Sequence[Any]) -> bool:
    """Whether two compiled action lists are the same plan (a plugin's action: the same plugin).

    A plugin's action need not be comparable; its definition (name and
    arguments) is journaled as written, so the same plugin is enough.
    """
    if len(left) != len(right):
        return False
    for a, b in zip(left, right):
        if isinstance(a, PluginAction) and isinstance(b, PluginAction):
            if a.name != b.name:
                return False
        elif a != b:
            return False
    return True


_NODE_TAGS: dict[type, str] = {
    bool: "tag:yaml.org,2002:bool",
    int: "tag:yaml.org,2002:int",
    float: "tag:yaml.org,2002:float",
    str: "tag:yaml.org,2002:str",
}


def _node(value: Any) -> yaml.Node:
    """A YAML node holding ``value`` (JSON types), for the compiler that reads nodes."""
    if value is None:
        return yaml.ScalarNode("tag:yaml.org,2002:null", "null")
    if isinstance(value, bool):
        return yaml.ScalarNode(_NODE_TAGS[bool], "true" if value else "false")
    if isinstance(value, (int, float, str)):
        return yaml.ScalarNode(_NODE_TAGS[type(value)], repr(value) if isinstance(value, float) else str(value))
    if isinstance(value, list):
        return yaml.SequenceNode("tag:yaml.org,2002:seq", [_node(v) for v in value])
    if isinstance(value, dict):
        return yaml.MappingNode("tag:yaml.org,2002:map", [(_node(k), _node(v)) for k, v in value.items()])
    raise PlanError(f"unexpected {type(value).__name__} in a journaled plan")


def _action_node(item: Any) -> yaml.Node:
    """One journaled action as the node its YAML form would give (``set`` pairs become a mapping again)."""
    if isinstance(item, dict) and set(item) == {"set"} and isinstance(item["set"], list):
        pairs = item["set"]
        if not all(isinstance(pair, list) and len(pair) == 2 for pair in pairs):
            raise PlanError("set: expected [element, value] pairs")
        return yaml.MappingNode(
            "tag:yaml.org,2002:map",
            [(_node("set"), yaml.MappingNode("tag:yaml.org,2002:map", [(_node(k), _node(v)) for k, v in pairs]))],
        )
    return _node(item)


class _Messages:
    """An :class:`ErrorSink` that keeps the messages (no file, no line: a journaled plan has neither)."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def error(self, node: yaml.Node | None, key_path: str, message: str) -> None:
        """Keep one message."""
        self.messages.append(f"{key_path}: {message}")


def compile_canonical(canonical: str, plugins: Mapping[str, Any]) -> MorphPlan:
    """Rebuild a plan from its journaled form, with the compiler the configuration uses.

    :param canonical: the text :func:`canonical_json` made (read from the journal).
    :param plugins: the morph plugins installed now (a plugin the plan names
        may be gone).
    :returns: the plan (:attr:`MorphPlan.canonical` is ``canonical``).
    :raises PlanError: when the text is not a plan this version reads, or
        the plan does not compile (a plugin is gone, an argument is refused).
    """
    try:
        document = json.loads(canonical)
    except ValueError as e:
        raise PlanError(f"the journaled plan is not JSON: {e}") from None
    if not isinstance(document, dict) or set(document) != {"v", "actions"} or not isinstance(document["actions"], list):
        raise PlanError('the journaled plan is not {"v": ..., "actions": [...]}')
    if document["v"] != PLAN_VERSION:
        raise PlanError(f"journaled plan version {document['v']!r} is unknown (this gateway reads version {PLAN_VERSION})")
    node = yaml.SequenceNode("tag:yaml.org,2002:seq", [_action_node(item) for item in document["actions"]])
    sink = _Messages()
    plan = compile_morph(node, "plan", sink, plugins, journaled=True)
    if plan is None:
        raise PlanError("; ".join(sink.messages) or "the journaled plan does not compile")
    return MorphPlan(plan.actions, canonical)
