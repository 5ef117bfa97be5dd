"""Tag morphing: per-route changes to an instance's header (the actions and the plan), and its journaled form.

Theory of operation
-------------------
A route's ``morph:`` list compiles once, at configuration load
(:func:`gateway.config.morph.compile_morph`), into a :class:`MorphPlan`: a tuple of small frozen
action objects. Compilation reports every problem to the loader's error sink
(unknown keywords with a "did you mean", bad regexes, literals that can never
be valid for their VR, a missing lookup table) and never raises.

At run time the forward worker calls :func:`gateway.splice.write_morphed` once per (route,
instance): it reads the header only (:func:`gateway.parse.read_header`),
applies the plan to the pydicom ``Dataset`` in order (each action returns the
:class:`Change` records ``check`` prints), writes the file meta and the
morphed header in the original transfer syntax, then copies the pixel data
and everything after it **verbatim** from the original file, in bounded
memory. The original spool file is never modified; the output appears
atomically and durably (:mod:`gateway.durable`). Any failure for this instance raises
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
import datetime
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from gateway.tags import TagPath, containers, find
from gateway.template import Template, render_value
from gateway.uidremap import keyed_digest, remap_values
from gateway.vr import (
    EXTENDED_VRS,
    MAX_LENGTH,
    SINGLE_VALUED,
    check_repertoire,
    check_value,
    describe_value,
    element_texts,
    to_value,
)

__all__ = [
    "MorphError",
    "Change",
    "MorphAction",
    "MorphPlan",
    "check_value",
    "describe_value",
    "canonical_json",
    "plan_hash",
    "PlanError",
    "PLAN_VERSION",
    "EMPTY_PLAN",
    "walk",
]

# The lowest pixel data tag (7FE0,0008) Float Pixel Data: nothing at or after
# it may be created in the header.
FIRST_PIXEL_TAG = 0x7FE00008


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


class MorphAction(Protocol):
    """What every compiled action provides (built-ins and plugins' actions)."""

    def apply(self, dataset: Dataset, context: Any) -> list[Change]:
        """Change ``dataset`` in place; return what changed; raise :class:`MorphError`."""


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
        problem = check_value(vr, text) or (check_repertoire(dataset, vr, text) if vr in EXTENDED_VRS else None)
        if problem:
            raise MorphError(f"{where}: {problem}")
    if vr in SINGLE_VALUED and len(texts) > 1:
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
            _set_element(holder, tag, self.vr, to_value(self.vr, texts))
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
        texts = element_texts(element)
        if not texts:
            continue
        new_texts = [function(t) for t in texts]
        if new_texts == texts:
            continue
        vr = vr_override or element.VR
        where = _container_label(path, index, len(elements))
        _validated(dataset, vr, new_texts, f"{verb} {where}")
        old = describe_value(element)
        element.value = to_value(vr, new_texts)
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
                texts = _validated(dataset, self.vr, element_texts(element), f"copy to {where}")
                value = to_value(self.vr, texts)
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
            texts = element_texts(element)
            new = remap_values(texts, self.salt, self.root)
            if new != texts:
                old = describe_value(element)
                element.value = to_value("UI", new)
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
            texts = [t.strip() for t in element_texts(element)]
            new = [_shift_text(t, element.VR, days) if t else t for t in texts]
            if new != texts:
                old = describe_value(element)
                element.value = to_value(element.VR, new)
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
    """The canonical text of a plan made of ``actions``.

    The definitions are what :func:`gateway.config.morph.compile_morph` makes.

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
