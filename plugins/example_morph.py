"""Example morph action plugin: ``prefix_accession``, to mark outside studies.

When studies from another hospital are imported, their accession numbers can
collide with local ones. This action puts a fixed prefix in front of
Accession Number (0008,0050)::

    morph:
      - {plugin: prefix_accession, prefix: "EXT-"}

* It is idempotent: a value that already starts with the prefix is left
  alone, so an instance sent twice (or routed through two gateways) is not
  prefixed twice.
* An absent or empty Accession Number is left alone (``empty: skip``, the
  default) or set to the bare prefix (``empty: prefix``).
* The result must still fit the element's VR, SH: at most 16 characters of
  the default repertoire, no backslash (PS3.5 6.2, Table 6.2-1). A prefix
  that can never fit is a configuration error; a value that becomes too
  long for one instance raises :class:`~gateway.morph.MorphError`, and that
  route's copy is dead-lettered with reason ``morph: ...``, never forwarded
  half-made.

How it is found: like ``example_match``, the module-level object
:data:`prefix_accession` provides :class:`~twisted.plugin.IPlugin` and
:class:`~gateway.interfaces.IMorphAction`; :func:`gateway.plugins.discover`
finds it among the module's objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from pydicom.dataset import Dataset
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.interfaces import IMorphAction
from gateway.morph import Change, MorphError, check_value

__all__ = ["PrefixAccession", "PrefixAccessionPlugin", "prefix_accession"]

_ARGUMENTS = ("prefix", "empty")
_EMPTY_CHOICES = ("skip", "prefix")


@dataclass(frozen=True)
class PrefixAccession:
    """The compiled action: frozen, so a reload can compare routes.

    :ivar prefix: the text put in front.
    :ivar prefix_empty: set an absent or empty value to the bare prefix.
    """

    prefix: str
    prefix_empty: bool = False

    def apply(self, dataset: Dataset, context: Any) -> list[Change]:
        """Prefix AccessionNumber in place (header only).

        :param dataset: the header being morphed (a copy; the original is never touched).
        :param context: the association (unused).
        :returns: the change made, if any, for ``check`` output.
        :raises MorphError: when the result is not a valid SH value.
        """
        old = str(dataset.AccessionNumber) if "AccessionNumber" in dataset else None
        if old is not None and old.startswith(self.prefix):
            return []
        if not old and not self.prefix_empty:
            return []
        new = self.prefix + (old or "")
        problem = check_value("SH", new)
        if problem is not None:
            raise MorphError(f"AccessionNumber {new!r}: {problem}")
        dataset.AccessionNumber = new
        return [Change("AccessionNumber", old, new)]


@implementer(IPlugin, IMorphAction)
class PrefixAccessionPlugin:
    """The plugin object: validates a route's arguments and builds :class:`PrefixAccession`."""

    name = "prefix_accession"

    def compile(self, arguments: Mapping[str, Any]) -> PrefixAccession:
        """Build the action from ``{prefix: TEXT, empty: skip|prefix}``.

        :param arguments: the keys written next to ``plugin: prefix_accession``.
        :returns: the action.
        :raises ValueError: on a missing, invalid or misspelt argument.
        """
        unknown = sorted(set(arguments) - set(_ARGUMENTS))
        if unknown:
            raise ValueError(f"unknown argument {unknown[0]!r} (expected: {', '.join(_ARGUMENTS)})")
        prefix = arguments.get("prefix")
        if not isinstance(prefix, str) or not prefix:
            raise ValueError("'prefix' must be a non-empty string, e.g. \"EXT-\"")
        problem = check_value("SH", prefix)
        if problem is not None:
            raise ValueError(f"'prefix' can never be part of an AccessionNumber (SH): {problem}")
        empty = arguments.get("empty", "skip")
        if empty not in _EMPTY_CHOICES:
            raise ValueError(f"'empty' must be one of {', '.join(_EMPTY_CHOICES)}, got {empty!r}")
        return PrefixAccession(prefix, empty == "prefix")


#: Found by :func:`gateway.plugins.discover`: a module-level IPlugin provider.
prefix_accession = PrefixAccessionPlugin()
