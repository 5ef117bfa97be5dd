"""Value templates for morph actions: ``"{PatientID}-R"``, ``"{calling_ae_title}"``.

A template is literal text with fields in braces; ``{{`` and ``}}`` stand for
literal braces. A field is either an association context key (see
:data:`CONTEXT_KEYS`) or an element path as :mod:`gateway.tags` parses it
(a keyword, a tag, a private element by creator, a sequence path). Fields are
checked once, at configuration load (:meth:`Template.parse` raises
``ValueError`` with a "did you mean" hint).

Rendering decisions (documented for administrators):

* an element that is absent, or present with no value, renders as the empty
  string (a missing element is not an error; VR validation of the result, in
  :mod:`gateway.morph`, catches a result that is invalid, e.g. an empty
  required date);
* a multi-valued element renders its values joined by ``\\`` (the DICOM value
  separator, PS3.5 6.4);
* a path through a sequence renders the first match (first item holding it);
* text values are rendered as pydicom decoded them (using the data set's
  Specific Character Set), numbers in their DICOM string form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from gateway.tags import TagPath, find, parse_path

__all__ = ["CONTEXT_KEYS", "Template", "render_value"]


class _Context(Protocol):
    calling_ae_title: str
    called_ae_title: str
    source_address: str
    listener: str
    listener_port: int
    tls_subject: str


#: Context keys a field may name, and the attribute of
#: :class:`gateway.route.RoutingContext` each reads.
CONTEXT_KEYS: dict[str, str] = {
    "calling_ae_title": "calling_ae_title",
    "called_ae_title": "called_ae_title",
    "source_ip": "source_address",
    "source_address": "source_address",
    "listener": "listener",
    "listener_port": "listener_port",
    "tls_subject": "tls_subject",
}


def render_value(value: object) -> str:
    """A data element value as template text.

    :param value: a pydicom value (str, number, PersonName, MultiValue, bytes, None).
    :returns: its text; multiple values joined with ``\\``; bytes and
        sequences render empty.
    """
    if value is None or isinstance(value, (bytes, bytearray)):
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(render_value(v) for v in value)
    if isinstance(value, Dataset):
        return ""
    return str(value)


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text and fields, in order.

    :ivar parts: each part is ``("text", literal)``, ``("context", key)`` or
        ``("element", path text)``.
    :ivar paths: the parsed element paths, aligned with the element parts.
    :ivar source: the template as written.
    """

    parts: tuple[tuple[str, str], ...]
    paths: tuple[TagPath, ...]
    source: str

    @property
    def is_literal(self) -> bool:
        """Whether the template has no fields (its value is known at load)."""
        return all(kind == "text" for kind, _ in self.parts)

    @classmethod
    def parse(cls, text: str) -> "Template":
        """Parse ``text``.

        :param text: the template.
        :returns: the template.
        :raises ValueError: on an unbalanced brace, an empty field or an
            unknown field name (with a "did you mean" hint for keywords).
        """
        parts: list[tuple[str, str]] = []
        paths: list[TagPath] = []
        literal: list[str] = []
        i = 0
        while i < len(text):
            char = text[i]
            if char in "{}" and text[i + 1 : i + 2] == char:
                literal.append(char)
                i += 2
                continue
            if char == "}":
                raise ValueError(f"template {text!r}: unmatched '}}' (write '}}}}' for a literal brace)")
            if char == "{":
                close = text.find("}", i)
                if close < 0:
                    raise ValueError(f"template {text!r}: unmatched '{{' (write '{{{{' for a literal brace)")
                name = text[i + 1 : close].strip()
                if not name:
                    raise ValueError(f"template {text!r}: empty field '{{}}'")
                if literal:
                    parts.append(("text", "".join(literal)))
                    literal = []
                if name in CONTEXT_KEYS:
                    parts.append(("context", name))
                else:
                    try:
                        paths.append(parse_path(name))
                    except ValueError as e:
                        raise ValueError(f"template {text!r}: field {{{name}}}: {e}") from None
                    parts.append(("element", name))
                i = close + 1
                continue
            literal.append(char)
            i += 1
        if literal:
            parts.append(("text", "".join(literal)))
        return cls(tuple(parts), tuple(paths), text)

    def render(self, dataset: Dataset, context: _Context | None) -> str:
        """Render against an instance and its association.

        :param dataset: the data set the element fields read.
        :param context: the association context (a
            :class:`~gateway.route.RoutingContext`); None renders context
            fields empty.
        :returns: the text.
        """
        out: list[str] = []
        paths = iter(self.paths)
        for kind, value in self.parts:
            if kind == "text":
                out.append(value)
            elif kind == "context":
                out.append("" if context is None else str(getattr(context, CONTEXT_KEYS[value], "")))
            else:
                path = next(paths)
                element = next(find(dataset, path), None)
                out.append("" if element is None else render_value(element.value))
        return "".join(out)
