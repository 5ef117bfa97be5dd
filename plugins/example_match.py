"""Example match predicate plugin: ``body_part``, for routes by anatomy.

Modalities fill Body Part Examined (0018,0015) unevenly: one writes
``HEAD``, another ``head``, a third leaves it empty and only says "CT BRAIN
W/O CONTRAST" in Study Description (0008,1030). This predicate matches an
instance when either holds:

* Body Part Examined equals one of ``parts``, ignoring case and surrounding
  spaces (it is a CS element, PS3.5 6.2, but senders are not always strict);
* with ``description: true`` (the default), one of ``parts`` appears as a
  whole word in Study Description, ignoring case ("Brain" in
  "MR BRAIN+C", not in "BRAINSTEM").

A route uses it like a built-in condition::

    match:
      all:
        - Modality: [CT, MR]
        - {plugin: body_part, parts: [HEAD, BRAIN]}

Arguments are checked when the configuration loads: ``parts`` must be a
non-empty list of non-empty strings; any other key is an error, so a typo
never becomes a rule that silently matches nothing.

How it is found: ``gateway.plugins.discover`` imports every module of the
plugin folders (``plugins/`` beside ``etc/`` by default) as part of the
:mod:`gateway.dropins` package, and picks up the module-level object :data:`body_part`, which provides
:class:`~twisted.plugin.IPlugin` and
:class:`~gateway.interfaces.IMatchPredicate`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from pydicom.dataset import Dataset
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.interfaces import IMatchPredicate

__all__ = ["BodyPart", "BodyPartPlugin", "body_part"]

_ARGUMENTS = ("parts", "description")


@dataclass(frozen=True)
class BodyPart:
    """The compiled predicate: frozen, so a reload can compare routes.

    :ivar parts: the body parts, upper-cased.
    :ivar description: also look for them as words in Study Description.
    """

    parts: tuple[str, ...]
    description: bool = True

    def matches(self, dataset: Dataset, context: Any) -> bool:
        """Whether the instance shows one of :attr:`parts`; never raises.

        :param dataset: the header.
        :param context: the association (unused).
        :returns: the verdict.
        """
        try:
            examined = str(dataset.get("BodyPartExamined", "") or "").strip().upper()
            if examined and examined in self.parts:
                return True
            if not self.description:
                return False
            words = set(re.findall(r"[A-Z0-9]+", str(dataset.get("StudyDescription", "") or "").upper()))
            return any(part in words for part in self.parts)
        except Exception:  # noqa: BLE001 - a predicate never raises (HARDENING D17)
            return False

    def describe(self) -> str:
        """:returns: ``body part is HEAD or BRAIN (or named in StudyDescription)``."""
        where = " (or named in StudyDescription)" if self.description else ""
        return f"body part is {' or '.join(self.parts)}{where}"


@implementer(IPlugin, IMatchPredicate)
class BodyPartPlugin:
    """The plugin object: validates a route's arguments and builds :class:`BodyPart`."""

    name = "body_part"

    def compile(self, arguments: Mapping[str, Any]) -> BodyPart:
        """Build the predicate from ``{parts: [...], description: bool}``.

        :param arguments: the keys written next to ``plugin: body_part``.
        :returns: the predicate.
        :raises ValueError: on a missing, empty or misspelt argument.
        """
        unknown = sorted(set(arguments) - set(_ARGUMENTS))
        if unknown:
            raise ValueError(f"unknown argument {unknown[0]!r} (expected: {', '.join(_ARGUMENTS)})")
        parts = arguments.get("parts")
        if isinstance(parts, str):
            parts = [parts]
        if not isinstance(parts, list) or not parts:
            raise ValueError("'parts' must be a non-empty list of body parts, e.g. [HEAD, BRAIN]")
        cleaned = []
        for part in parts:
            if not isinstance(part, str) or not part.strip():
                raise ValueError(f"each of 'parts' must be a non-empty string, got {part!r}")
            cleaned.append(part.strip().upper())
        description = arguments.get("description", True)
        if not isinstance(description, bool):
            raise ValueError(f"'description' must be true or false, got {description!r}")
        return BodyPart(tuple(cleaned), description)


#: Found by :func:`gateway.plugins.discover`: a module-level IPlugin provider.
body_part = BodyPartPlugin()
