"""Durations and sizes written the way people write them.

``parse_duration`` turns ``"250ms"``, ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"``
(and combinations such as ``"1h30m"``) into float seconds; a bare number, or a
string holding only a number, means seconds. ``parse_size`` turns ``"500MB"``
or ``"4GiB"`` into a whole number of bytes; a bare integer means bytes.

Both raise :class:`ValueError` with a message fit to show an operator: the
configuration loader wraps that message into a :class:`ConfigError` that names
the file, line and key.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Final

#: Seconds per duration unit.
DURATION_UNITS: Final[dict[str, Decimal]] = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}

#: Bytes per size unit. Decimal units are powers of 1000 and binary units are
#: powers of 1024 (IEC 80000-13), so ``500MB`` and ``500MiB`` differ, as on
#: disk labels. Units are matched without regard to case, except that a bare
#: ``b`` is never read as bits.
SIZE_UNITS: Final[dict[str, int]] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}

# A number: digits with an optional fraction. No sign (negatives are refused
# with their own message), no exponent, no thousands separators.
_NUMBER: Final = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART: Final = re.compile(rf"({_NUMBER})\s*(ms|s|m|h|d)")
_DURATION: Final = re.compile(rf"(?:{_NUMBER}\s*(?:ms|s|m|h|d)\s*)+")
_PLAIN_NUMBER: Final = re.compile(_NUMBER)
_SIZE: Final = re.compile(rf"({_NUMBER})\s*([A-Za-z]*)")


# How each kind of value is shown in "expected ..." messages.
_EXAMPLES: Final[dict[str, str]] = {
    "duration": "'250ms', '30s', '5m', '2h', '1d' or a number of seconds",
    "size": "'500MB', '4GiB' or a number of bytes",
}


def _reject_non_number(value: object, what: str) -> None:
    """Refuse booleans and values of unrelated types.

    :param value: The candidate.
    :param what: ``"duration"`` or ``"size"``, for the message.
    :raises ValueError: If ``value`` is a ``bool`` or not an int, float or str.
    """
    # bool is an int subclass; "true" as a timeout is a mistake, not 1 second.
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(
            f"expected a {what} such as {_EXAMPLES[what]}, got {type(value).__name__}"
        )


def parse_duration(value: object) -> float:
    """Parse a duration into seconds.

    :param value: An int or float (seconds), or a string: a number (seconds)
        or one or more ``<number><unit>`` parts with units ``ms``, ``s``,
        ``m``, ``h`` and ``d``, e.g. ``"1h30m"``. Surrounding whitespace is
        ignored.
    :returns: The duration in seconds, finite and not negative.
    :raises ValueError: For negatives, NaN or infinities, empty strings,
        unknown units, other junk, and non-numeric types (booleans included).
    """
    _reject_non_number(value, "duration")
    if isinstance(value, (int, float)):
        return _check_seconds(float(value), repr(value))
    assert isinstance(value, str)
    text = value.strip()
    if not text:
        raise ValueError(
            f"empty duration; expected a duration such as {_EXAMPLES['duration']}"
        )
    if text.startswith("-"):
        raise ValueError(f"duration must not be negative, got {value!r}")
    if _PLAIN_NUMBER.fullmatch(text):
        return _check_seconds(float(text), repr(value))
    if not _DURATION.fullmatch(text):
        raise ValueError(
            f"invalid duration {value!r}; expected a duration such as "
            f"{_EXAMPLES['duration']}"
        )
    # Decimal arithmetic, so "100ms" is exactly 0.1 before the final float().
    total = sum(
        (Decimal(number) * DURATION_UNITS[unit]
         for number, unit in _DURATION_PART.findall(text)),
        Decimal(0),
    )
    return _check_seconds(float(total), repr(value))


def _check_seconds(seconds: float, shown: str) -> float:
    """Refuse negative and non-finite durations.

    :param seconds: The parsed value.
    :param shown: How to show the original value in a message.
    :returns: ``seconds`` unchanged.
    :raises ValueError: If ``seconds`` is negative, NaN or infinite.
    """
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"duration must be a finite number, got {shown}")
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {shown}")
    return seconds


def parse_size(value: object) -> int:
    """Parse a size into a whole number of bytes.

    :param value: An int (bytes), or a string: an integer (bytes), or a
        number with one of the units in :data:`SIZE_UNITS` (``"500MB"``,
        ``"4GiB"``, ``"1.5GB"``). A float is accepted only if it is whole.
    :returns: The size in bytes, not negative.
    :raises ValueError: For negatives, fractions of a byte, empty strings,
        unknown units, other junk, and non-numeric types (booleans included).
    """
    _reject_non_number(value, "size")
    if isinstance(value, int):
        amount, unit_bytes, shown = Decimal(value), 1, repr(value)
    elif isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ValueError(f"size must be a finite number, got {value!r}")
        amount, unit_bytes, shown = Decimal(value), 1, repr(value)
    else:
        assert isinstance(value, str)
        shown = repr(value)
        text = value.strip()
        if not text:
            raise ValueError(f"empty size; expected a size such as {_EXAMPLES['size']}")
        if text.startswith("-"):
            raise ValueError(f"size must not be negative, got {shown}")
        match = _SIZE.fullmatch(text)
        if match is None:
            raise ValueError(
                f"invalid size {shown}; expected a size such as {_EXAMPLES['size']}"
            )
        number, unit = match.groups()
        if unit and unit.lower() not in SIZE_UNITS:
            raise ValueError(
                f"unknown size unit {unit!r} in {shown}; use one of "
                "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"
            )
        try:
            amount = Decimal(number)
        except InvalidOperation:  # pragma: no cover - the regex admits only numbers
            raise ValueError(f"invalid size {shown}") from None
        unit_bytes = SIZE_UNITS[unit.lower()] if unit else 1
    if amount < 0:
        raise ValueError(f"size must not be negative, got {shown}")
    total = amount * unit_bytes
    if total != total.to_integral_value():
        raise ValueError(f"size {shown} is not a whole number of bytes")
    return int(total)
