"""Naming data elements in rules: keywords, tags, private elements and sequence paths.

Routing conditions and morph actions name the elements they read or change.
This module turns the names an administrator writes into :class:`TagPath`
values, once, at configuration load, and finds the named elements in a
pydicom :class:`~pydicom.dataset.Dataset` at run time.

Accepted spellings of one step (PS3.5 7.1 names elements by tag; PS3.6 gives
the keywords):

* a keyword from the PS3.6 data dictionary: ``PatientName``;
* a tag: ``(0010,0010)``, ``0010,0010`` or ``00100010`` (hex);
* a private element by its creator (PS3.5 7.8.1), so the rule keeps working
  whichever block the modality put the creator in:
  ``(0029,"SIEMENS CSA HEADER",10)`` means element offset 0x10 of the block
  reserved by creator ``SIEMENS CSA HEADER`` in group 0029.

A path joins steps with ``/``: ``RequestAttributesSequence/ScheduledProcedureStepID``
names that element inside every item of the sequence (a condition holds if
any item matches, PS3.5 7.5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

from pydicom.dataelem import DataElement
from pydicom.datadict import dictionary_VR, keyword_dict, keyword_for_tag
from pydicom.dataset import Dataset

from gateway.suggest import close_matches

_TAG_FORMS = (
    re.compile(r"^\(\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)$"),
    re.compile(r"^([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})$"),
    re.compile(r"^([0-9A-Fa-f]{4})([0-9A-Fa-f]{4})$"),
)
_PRIVATE = re.compile(r'^\(\s*([0-9A-Fa-f]{4})\s*,\s*"([^"]{1,64})"\s*,\s*([0-9A-Fa-f]{2})\s*\)$')


@dataclass(frozen=True)
class TagRef:
    """One step of a path: a standard tag, or a private element named by its creator.

    :ivar tag: the 32-bit tag; for a private reference, ``(group << 16) | offset``
        with the offset (0x00-0xFF) in the low byte, resolved per data set.
    :ivar creator: the private creator (PS3.5 7.8.1), or ``None``.
    :ivar text: how the administrator wrote it (for messages).
    """

    tag: int
    creator: str | None = None
    text: str = ""

    @property
    def group(self) -> int:
        """The group number."""
        return self.tag >> 16

    @property
    def is_private(self) -> bool:
        """Whether the group is odd (PS3.5 7.8)."""
        return bool(self.group & 1)

    def resolve(self, dataset: Dataset) -> int | None:
        """The tag this step names in ``dataset`` (private blocks are looked up), or None."""
        if self.creator is None:
            return self.tag
        try:
            block = dataset.private_block(self.group, self.creator)
        except KeyError:
            return None
        return int(block.get_tag(self.tag & 0xFF))

    def __str__(self) -> str:
        return self.text or f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X})"


@dataclass(frozen=True)
class TagPath:
    """A path of steps; every step but the last names a sequence (SQ)."""

    steps: tuple[TagRef, ...]

    @property
    def last(self) -> TagRef:
        """The element the path ends at."""
        return self.steps[-1]

    @property
    def vr(self) -> str | None:
        """The dictionary VR of the last step, or None for private or unknown tags."""
        ref = self.last
        if ref.creator is not None:
            return None
        try:
            return str(dictionary_VR(ref.tag))
        except KeyError:
            return None

    def __str__(self) -> str:
        return "/".join(str(step) for step in self.steps)


def suggest_keyword(text: str) -> str | None:
    """The closest PS3.6 keyword to a misspelt one, if any is close enough."""
    matches = close_matches(text, keyword_dict.keys(), cutoff=0.8)
    return matches[0] if matches else None


def parse_tag_ref(text: str) -> TagRef:
    """Parse one step.

    :raises ValueError: with a message fit for a configuration error
        ("unknown keyword 'PatiantName'; did you mean PatientName?").
    """
    text = text.strip()
    private = _PRIVATE.match(text)
    if private:
        group = int(private.group(1), 16)
        if not group & 1:
            raise ValueError(f"'{text}': a private element needs an odd group")
        if group in (0x0001, 0x0003, 0x0005, 0x0007, 0xFFFF):
            raise ValueError(f"'{text}': group {group:04X} cannot hold private elements (PS3.5 7.8)")
        return TagRef((group << 16) | int(private.group(3), 16), private.group(2), text)
    for form in _TAG_FORMS:
        m = form.match(text)
        if m:
            group, element = int(m.group(1), 16), int(m.group(2), 16)
            if group in (0x0000, 0x0002) or group == 0xFFFE:
                raise ValueError(
                    f"'{text}': group {group:04X} is not part of a data set (command, file meta or delimiters)"
                )
            return TagRef((group << 16) | element, None, text)
    if text in keyword_dict:
        return TagRef(int(keyword_dict[text]), None, text)
    if not text:
        raise ValueError("empty element name")
    hint = suggest_keyword(text)
    if hint:
        raise ValueError(f"unknown keyword '{text}'; did you mean {hint}?")
    raise ValueError(f"unknown keyword or tag '{text}' (write a PS3.6 keyword, (gggg,eeee), or (gggg,\"CREATOR\",ee))")


def parse_path(text: str) -> TagPath:
    """Parse a ``/``-separated path; every step but the last must be a sequence.

    :raises ValueError: on a bad step, or an inner step that is not a sequence.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty element name")
    steps = tuple(parse_tag_ref(part) for part in _split_path(text))
    for step in steps[:-1]:
        if step.creator is None:
            try:
                vr = dictionary_VR(step.tag)
            except KeyError:
                vr = None
            if vr is not None and vr != "SQ":
                raise ValueError(f"'{step}' is not a sequence, so '{text}' cannot go inside it")
    return TagPath(steps)


def _split_path(text: str) -> list[str]:
    # '/' never occurs in a keyword or tag, but may in a quoted private creator.
    parts, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "/" and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def find(dataset: Dataset, path: TagPath) -> Iterator[DataElement]:
    """Every element ``path`` names in ``dataset``: through every item of each sequence step."""
    yield from _find(dataset, path.steps)


def _find(dataset: Dataset, steps: tuple[TagRef, ...]) -> Iterator[DataElement]:
    tag = steps[0].resolve(dataset)
    if tag is None or tag not in dataset:
        return
    element = dataset[tag]
    if len(steps) == 1:
        yield element
        return
    if element.VR != "SQ" or element.value is None:
        return
    for item in element.value:
        yield from _find(item, steps[1:])


def containers(dataset: Dataset, path: TagPath) -> Iterator[Dataset]:
    """The data sets (the top level, or sequence items) that would hold ``path``'s last step."""
    if len(path.steps) == 1:
        yield dataset
        return
    for element in _find(dataset, path.steps[:-1]):
        if element.VR == "SQ" and element.value is not None:
            yield from element.value


def describe(tag: int) -> str:
    """``(gggg,eeee) Keyword`` for messages."""
    keyword = keyword_for_tag(tag)
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})" + (f" {keyword}" if keyword else "")
