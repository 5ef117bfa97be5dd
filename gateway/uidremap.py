"""Deterministic UID replacement under a configured root, keyed by a salt.

``uid_remap`` and the de-identification profile's ``U`` action (PS3.15 E.3.9,
"replace with a non-zero length UID that is internally consistent") replace a
UID by one computed from it, so the same input UID gives the same output UID
in every instance, after restarts, and in every route sharing the salt: a
study stays a study after remapping.

The scheme: ``HMAC-SHA256(salt, uid)``, read as a 256-bit big-endian integer;
its top ``bits`` bits are kept, where ``bits`` is the most that fit as decimal
digits in the room left after ``root + "."`` within the 64 characters a UID
may have (PS3.5 9.1, Table 6.2-1 "UI ... 64 bytes maximum"). A root leaving
room for fewer than 128 bits is refused: a 128-bit keyed hash makes
collisions negligible (as for the ``2.25`` UUID-derived UIDs of PS3.5 B.2).
The suffix is a decimal integer, so it has no leading zero (PS3.5 9.1: "the
first digit of each component shall not be zero unless the component is a
single digit").
"""

from __future__ import annotations

import hashlib
import hmac
import re

__all__ = [
    "MIN_BITS",
    "MAX_UID_LENGTH",
    "DICOM_ROOT",
    "check_root",
    "suffix_bits",
    "remap_uid",
    "remap_values",
    "is_valid_uid",
    "keyed_digest",
]

#: The fewest bits of the keyed hash every new UID keeps.
MIN_BITS = 128
#: PS3.5 Table 6.2-1: a UI value is at most 64 bytes.
MAX_UID_LENGTH = 64

# PS3.5 9.1: components of digits separated by dots; a component is "0" or
# starts with a non-zero digit.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(uid: str) -> bool:
    """Whether ``uid`` is a valid UID (PS3.5 9.1): digits and dots, no leading zeros, at most 64 chars.

    :param uid: the candidate, without padding.
    :returns: True when valid.
    """
    return len(uid) <= MAX_UID_LENGTH and bool(_UID.match(uid))


def suffix_bits(root: str) -> int:
    """How many bits of the keyed hash fit after ``root + "."`` in 64 characters.

    :param root: the UID root.
    :returns: the largest ``b <= 256`` with ``2**b - 1`` at most as many
        decimal digits as the room left.
    """
    room = MAX_UID_LENGTH - len(root) - 1
    bits = 0
    while bits < 256 and len(str(2 ** (bits + 1) - 1)) <= room:
        bits += 1
    return bits


def check_root(root: str) -> str | None:
    """Why ``root`` cannot be a UID root, or None when it can.

    :param root: the configured root (``2.25`` or an organisation's root).
    :returns: a message fit for a configuration error, or None.
    """
    if not isinstance(root, str) or not _UID.match(root):
        return f"root {root!r} is not a valid UID prefix (digits and dots, no leading zeros, PS3.5 9.1)"
    bits = suffix_bits(root)
    if bits < MIN_BITS:
        return (
            f"root {root!r} is too long: it leaves room for {bits} bits of the keyed hash, "
            f"at least {MIN_BITS} are needed (at most {MAX_UID_LENGTH - 40} characters)"
        )
    return None


def keyed_digest(salt: str, value: str) -> bytes:
    """``HMAC-SHA256(salt, value)``, both encoded as UTF-8.

    :param salt: the secret key.
    :param value: the message.
    :returns: the 32-byte digest.
    """
    return hmac.new(salt.encode("utf-8"), value.encode("utf-8"), hashlib.sha256).digest()


def remap_uid(uid: str, salt: str, root: str) -> str:
    """The replacement for ``uid``: ``root + "." + top bits of HMAC-SHA256(salt, uid)``.

    :param uid: the original UID (trailing NUL/space padding is ignored, so
        the same UID read with or without padding maps the same way).
    :param salt: the key; routes sharing it map UIDs identically.
    :param root: a root accepted by :func:`check_root`.
    :returns: a valid UID of at most 64 characters.
    """
    digest = int.from_bytes(keyed_digest(salt, uid.rstrip("\x00 ")), "big")
    bits = suffix_bits(root)
    return f"{root}.{digest >> (256 - bits)}"


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
