"""Certificate subject and issuer patterns, matched attribute by attribute (issue 11; HARDENING T07).

``access.certificates`` and the ``tls_subject`` routing key used to be
globs over the RFC 4514 string of the subject, so a certificate whose CN was
``mr1,O=Radiology`` (a string ``CN=mr1\\,O=Radiology``, the comma escaped)
matched ``CN=mr*,O=Radiology``: the ``*`` swallowed the backslash and the
"O" came from inside the CN. Here both sides are parsed into attributes
first, and each attribute's value is matched on its own.

Pattern syntax
--------------
A pattern is a list of ``TYPE=GLOB`` attributes separated by ``,`` (or
``+``, which means the same: the grouping into RDNs is not significant),
written like an RFC 4514 string::

    CN=mr*,O=Radiology
    CN=ct1, O=Radiology, C=NL
    OU=Radiology,OU=*,O=Hospital

* ``TYPE`` is a short name (``CN``, ``O``, ``OU``, ``C``, ``L``, ``ST``,
  ``STREET``, ``DC``, ``UID``, ``serialNumber``, ``emailAddress``, ...; any
  case) or a dotted OID (``2.5.4.3``).
* ``GLOB`` is matched against the whole value of one attribute,
  case-sensitively: ``*`` any run of characters, ``?`` one character,
  ``[...]`` a set, ``[!...]`` its complement. A ``*`` never crosses into
  another attribute: values are compared one by one.
* Every attribute the pattern names must be present and match; attributes
  the pattern does not name are ignored (``CN=ct1`` accepts
  ``CN=ct1,O=Radiology``). A bare ``*`` component (``CN=ct1,*``, as older
  configurations wrote it) says so explicitly and changes nothing; the
  pattern ``*`` alone accepts any certificate.
* Multi-valued attributes: when a pattern names a type N times, the
  certificate must carry exactly N values of that type, matched one to one
  in any order. ``OU=Radiology`` refuses a certificate with two OUs (write
  ``OU=Radiology,OU=*``), so a second CN or OU cannot ride along unseen.
* Escaping, as in RFC 4514: ``\\`` followed by two hexadecimal digits is
  that byte (UTF-8 sequences are decoded, ``\\2C`` is a comma); ``\\``
  followed by any other character is that character, literally: ``\\,``,
  ``\\+``, ``\\=``, ``\\\\``, and ``\\*``, ``\\?``, ``\\[`` for a literal
  glob character. Unescaped spaces around ``,``, ``+`` and ``=`` are
  ignored; write ``\\ `` for a significant leading or trailing space.

A pattern that does not parse is a configuration error (with file, line
and key), never a pattern that silently matches nothing.

The subject strings compared are those :func:`gateway.tls.peer_identity`
makes (``cryptography``'s RFC 4514 form, every special character escaped),
parsed back with the same grammar by :func:`parse_dn`. This module does no
I/O and imports nothing but the standard library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import translate
from itertools import permutations
from typing import Callable

#: Attribute type names and their OIDs: RFC 4514 section 3, the names
#: ``cryptography`` prints, and a few common others (RFC 4519, PKCS #9).
ATTRIBUTE_TYPES: dict[str, str] = {
    "CN": "2.5.4.3",
    "L": "2.5.4.7",
    "ST": "2.5.4.8",
    "O": "2.5.4.10",
    "OU": "2.5.4.11",
    "C": "2.5.4.6",
    "STREET": "2.5.4.9",
    "DC": "0.9.2342.19200300.100.1.25",
    "UID": "0.9.2342.19200300.100.1.1",
    "SN": "2.5.4.4",
    "SURNAME": "2.5.4.4",
    "GN": "2.5.4.42",
    "GIVENNAME": "2.5.4.42",
    "SERIALNUMBER": "2.5.4.5",
    "TITLE": "2.5.4.12",
    "EMAILADDRESS": "1.2.840.113549.1.9.1",
    "E": "1.2.840.113549.1.9.1",
}

_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+\Z")
_HEX = "0123456789abcdefABCDEF"

#: More values of one type than this are never matched (the one-to-one search is factorial).
MAX_VALUES_PER_TYPE = 6


class PatternError(ValueError):
    """A subject pattern (or subject string) that does not parse."""


@dataclass(frozen=True)
class _Char:
    """One character of a DN string and whether it was escaped."""

    text: str
    escaped: bool


def _characters(text: str) -> list[_Char]:
    """Resolve RFC 4514 escapes: ``\\HH`` byte runs (UTF-8) and ``\\c``.

    :raises PatternError: for a trailing backslash or hex escapes that are not UTF-8.
    """
    out: list[_Char] = []
    pending = bytearray()

    def flush() -> None:
        if pending:
            try:
                decoded = pending.decode("utf-8")
            except UnicodeDecodeError:
                raise PatternError(f"the escaped bytes {pending.hex()} are not UTF-8") from None
            out.extend(_Char(c, True) for c in decoded)
            pending.clear()

    i = 0
    while i < len(text):
        c = text[i]
        if c != "\\":
            flush()
            out.append(_Char(c, False))
            i += 1
            continue
        if i + 1 >= len(text):
            raise PatternError("a backslash at the end escapes nothing")
        if i + 2 < len(text) and text[i + 1] in _HEX and text[i + 2] in _HEX:
            pending.append(int(text[i + 1 : i + 3], 16))
            i += 3
            continue
        flush()
        out.append(_Char(text[i + 1], True))
        i += 2
    flush()
    return out


def _split(chars: list[_Char], separators: str) -> list[list[_Char]]:
    """Split at unescaped ``separators``."""
    parts: list[list[_Char]] = [[]]
    for ch in chars:
        if not ch.escaped and ch.text in separators:
            parts.append([])
        else:
            parts[-1].append(ch)
    return parts


def _strip(chars: list[_Char]) -> list[_Char]:
    """Remove unescaped spaces at both ends."""
    start, end = 0, len(chars)
    while start < end and not chars[start].escaped and chars[start].text == " ":
        start += 1
    while end > start and not chars[end - 1].escaped and chars[end - 1].text == " ":
        end -= 1
    return chars[start:end]


def attribute_oid(name: str) -> str:
    """The OID of an attribute type written as a short name or a dotted OID.

    :param name: ``CN``, ``emailAddress``, ``2.5.4.3``, ...
    :returns: the dotted OID.
    :raises PatternError: for an unknown name.
    """
    if _OID.match(name):
        return name
    oid = ATTRIBUTE_TYPES.get(name.upper())
    if oid is None:
        known = ", ".join(sorted({k for k in ATTRIBUTE_TYPES if len(k) <= 6}))
        raise PatternError(f"unknown attribute type {name!r} (use one of {known}, or a dotted OID)")
    return oid


def _attributes(text: str, what: str) -> list[tuple[str, list[_Char]]]:
    """Parse ``TYPE=VALUE`` components; a bare unescaped ``*`` component yields ``("*", [])``."""
    if not text.strip():
        raise PatternError(f"an empty {what}")
    result: list[tuple[str, list[_Char]]] = []
    for component in _split(_characters(text), ",+"):
        component = _strip(component)
        if len(component) == 1 and component[0] == _Char("*", False):
            result.append(("*", []))
            continue
        if not component:
            raise PatternError(f"an empty attribute in {what} {text!r} (two separators in a row?)")
        try:
            at = next(i for i, ch in enumerate(component) if ch.text == "=" and not ch.escaped)
        except StopIteration:
            shown = "".join(ch.text for ch in component)
            raise PatternError(f"{shown!r} in {what} {text!r} is not TYPE=VALUE") from None
        name = "".join(ch.text for ch in _strip(component[:at]))
        value = _strip(component[at + 1 :])
        result.append((attribute_oid(name), value))
    return result


def parse_dn(text: str) -> tuple[tuple[str, str], ...]:
    """Parse an RFC 4514 string (as :func:`gateway.tls.peer_identity` makes) into attributes.

    :param text: e.g. ``CN=mr1\\,O=Radiology``.
    :returns: ``((oid, value), ...)`` in the string's order; ``#hex`` values are kept as written.
    :raises PatternError: when it does not parse.
    """
    parsed = []
    for oid, value in _attributes(text, "subject"):
        if oid == "*":
            raise PatternError(f"'*' is not an attribute of subject {text!r}")
        parsed.append((oid, "".join(ch.text for ch in value)))
    return tuple(parsed)


def _glob(value: list[_Char]) -> str:
    """An :func:`fnmatch.translate` pattern: unescaped ``*?[`` are glob syntax, escaped ones literal."""
    out = []
    for ch in value:
        if ch.escaped and ch.text in "*?[]":
            out.append(f"[{ch.text}]")
        else:
            out.append(ch.text)
    return "".join(out)


@dataclass(frozen=True)
class NamePattern:
    """A parsed subject (or issuer) pattern.

    :ivar text: the pattern as written.
    :ivar attributes: ``(oid, fnmatch glob)`` pairs, in the pattern's order.
    """

    text: str
    attributes: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, text: str) -> "NamePattern":
        """Parse a pattern (see the module documentation).

        :param text: e.g. ``CN=mr*,O=Radiology``.
        :returns: the pattern.
        :raises PatternError: saying what is wrong.
        """
        attributes = []
        counts: dict[str, int] = {}
        for oid, value in _attributes(text, "pattern"):
            if oid == "*":
                continue
            if not value:
                raise PatternError(f"an empty value in pattern {text!r} (write '*' for any value)")
            counts[oid] = counts.get(oid, 0) + 1
            if counts[oid] > MAX_VALUES_PER_TYPE:
                raise PatternError(f"more than {MAX_VALUES_PER_TYPE} values of one attribute type in {text!r}")
            attributes.append((oid, _glob(value)))
        return cls(text, tuple(attributes))

    def matches(self, attributes: tuple[tuple[str, str], ...]) -> bool:
        """Whether a parsed subject satisfies the pattern.

        :param attributes: :func:`parse_dn`'s result.
        :returns: ``True`` when every attribute type the pattern names is
            present as often as the pattern names it, and the values match
            the globs one to one.
        """
        for oid in dict.fromkeys(oid for oid, _ in self.attributes):
            globs = [_compiled(glob) for kind, glob in self.attributes if kind == oid]
            values = [value for kind, value in attributes if kind == oid]
            if len(values) != len(globs) or len(values) > MAX_VALUES_PER_TYPE:
                return False
            if not any(all(g(v) for g, v in zip(globs, order)) for order in permutations(values)):
                return False
        return True

    def matches_text(self, dn: str) -> bool:
        """:meth:`matches` on an RFC 4514 string; one that does not parse matches nothing.

        :param dn: the subject string; empty (no certificate) matches nothing.
        :returns: the verdict.
        """
        if not dn:
            return False
        try:
            return self.matches(parse_dn(dn))
        except PatternError:
            return False


_CACHE: dict[str, "re.Pattern[str]"] = {}


def _compiled(glob: str) -> Callable[[str], bool]:
    """A whole-value, case-sensitive, compiled glob."""
    regex = _CACHE.get(glob)
    if regex is None:
        regex = re.compile(translate(glob))
        if len(_CACHE) < 4096:
            _CACHE[glob] = regex
    return lambda value: regex.match(value) is not None


@dataclass(frozen=True)
class CertificatePattern:
    """A subject pattern, and optionally the pattern its issuer must match.

    :ivar subject: the subject pattern.
    :ivar issuer: the issuer pattern, ``None`` for any CA the listener trusts.
    """

    subject: NamePattern
    issuer: NamePattern | None = None

    def matches(self, subject: str, issuer: str | None) -> bool:
        """Whether a certificate's subject and issuer (RFC 4514 strings) satisfy the pattern.

        :param subject: the subject.
        :param issuer: the issuer; an unknown issuer never satisfies an issuer pattern.
        :returns: the verdict.
        """
        if not self.subject.matches_text(subject):
            return False
        if self.issuer is None:
            return True
        return issuer is not None and self.issuer.matches_text(issuer)
