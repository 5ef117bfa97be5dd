"""Configuration errors, collected rather than raised one at a time.

The loader validates the whole file once and reports every problem it finds,
as Buildbot's ``ConfigErrors`` does: an operator fixing a file should see all
of its mistakes in one run, each one pointing at a file, a line and a key path
(``limits.max_pdu_length``, ``listen[1].port``), and never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigError:
    """One problem found in a configuration file.

    :param file: The configuration file's name, as the operator gave it.
    :param line: The 1-based line the problem is on, or ``None`` when there is
        no line to point at (a missing or unreadable file, an empty file).
    :param key_path: Where in the tree the problem is, in dotted form with
        list indices (``listen[0].port``); empty for the document as a whole.
    :param message: What is wrong, in words meant for the operator.
    """

    file: str
    line: int | None
    key_path: str
    message: str

    def __str__(self) -> str:
        """Render as ``file:line: key.path: message``, the compiler convention.

        :returns: The one-line rendering; the line and key path are left out
            when they are unknown or empty.
        """
        location = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.key_path:
            return f"{location}: {self.key_path}: {self.message}"
        return f"{location}: {self.message}"


class ConfigErrors(Exception):
    """Every problem found while loading one configuration file.

    :param errors: The problems, in the order they should be shown (the
        loader sorts them by line).
    """

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        self.errors: list[ConfigError] = list(errors)
        super().__init__(self.errors)

    def __str__(self) -> str:
        """Render one error per line.

        :returns: The errors' renderings joined by newlines.
        """
        return "\n".join(str(error) for error in self.errors)

    def __iter__(self) -> Iterator[ConfigError]:
        """Iterate over the collected errors.

        :returns: An iterator over :attr:`errors`.
        """
        return iter(self.errors)

    def __len__(self) -> int:
        """Count the collected errors.

        :returns: The number of errors.
        """
        return len(self.errors)
