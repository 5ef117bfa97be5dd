"""The one "did you mean" of the gateway: the nearest known names to a misspelt one.

Configuration errors (unknown keys, destinations, morph actions, pattern
fields) and PS3.6 keywords (:mod:`gateway.tags`) suggest with it. A leaf
module: the rule modules use it as well as the configuration loader.
"""

from __future__ import annotations

import difflib
from typing import Callable, Iterable

__all__ = ["close_matches", "did_you_mean"]


def close_matches(word: str, choices: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> list[str]:
    """The known names closest to ``word``, best first (:func:`difflib.get_close_matches`).

    :param word: the misspelt name.
    :param choices: the known names.
    :param n: at most this many.
    :param cutoff: the least similarity (0 to 1) worth suggesting.
    :returns: the suggestions, possibly none.
    """
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=cutoff)


def did_you_mean(
    word: str,
    choices: Iterable[str],
    *,
    n: int = 1,
    cutoff: float = 0.6,
    show: Callable[[str], str] = str,
) -> str:
    """``did you mean X?`` (or ``X or Y``) for the close names, empty when none is close.

    :param word: the misspelt name.
    :param choices: the known names.
    :param n: at most this many suggestions.
    :param cutoff: the least similarity worth suggesting.
    :param show: how a name is written in the message (``repr``, ``{field}``, ...).
    :returns: the hint, or ``""``.
    """
    close = close_matches(word, choices, n=n, cutoff=cutoff)
    if not close:
        return ""
    return "did you mean " + " or ".join(show(name) for name in close) + "?"
