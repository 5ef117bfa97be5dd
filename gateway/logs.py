"""Log observers for ``log: {format, file, level, rotate}``, and the size-rotating writer.

The gateway logs with :class:`twisted.logger.Logger` and keyword fields
(``assoc_id``, ``correlation_id``, ``destination``, ``attempt``; DESIGN 7).
This module turns those events into lines:

* ``text``: one line per event, ``<time> [<namespace>#<level>] <message>``,
  with ``[cid <correlation_id>]`` appended when the event carries a
  correlation id its message does not show, so a grep for the id finds the
  receipt and every forward attempt of an instance;
* ``json``: one JSON object per line with the formatted ``message`` and the
  event's own fields (``time``, ``level``, ``namespace`` and every
  JSON-able key that does not start with ``log_``).

Output goes to standard output, or to ``log.file`` through
:class:`RotatingFile`, which rotates at ``rotate.size`` bytes and keeps
``rotate.keep`` old files (``file.1`` newest). Log files and the folder
created for them are owner-only (0600, 0700) whatever the umask: they name
AE titles, addresses and spool paths.

Text lines escape every control character of the rendered message
(:func:`escape_controls`): the values in it come from peers, and a line
feed or an ECMA-48 escape sequence in a UID must neither forge a log line
nor reach the terminal that shows the log (HARDENING H09). JSON lines are
escaped by the JSON encoding itself.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import threading
from datetime import datetime, timezone
from typing import IO, Any, Callable

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
)
from zope.interface import implementer

from gateway.private import make_private_dirs, open_private

__all__ = [
    "RotatingFile",
    "shift_rotated",
    "text_observer",
    "json_observer",
    "build_observer",
    "escape_controls",
    "format_text",
    "format_json",
]


def shift_rotated(path: str, keep: int) -> None:
    """Rotate the names of a file: ``path.<n>`` to ``path.<n+1>`` (from ``keep - 1`` down), ``path`` to ``path.1``.

    Shared by the log files (:class:`RotatingFile`) and the audit file
    (:class:`gateway.sinks.JsonLinesFile`). A ``path.<keep>`` is replaced
    when ``path.<keep-1>`` exists; ``path`` no longer exists afterwards.

    :param path: the live file.
    :param keep: how many rotated files are kept (at least 1).
    :raises OSError: from a rename.
    """
    for n in range(keep - 1, 0, -1):
        older = f"{path}.{n}"
        if os.path.exists(older):
            os.replace(older, f"{path}.{n + 1}")
    os.replace(path, f"{path}.1")


class RotatingFile:
    """An append-only text file rotated by size: ``path`` -> ``path.1`` -> ... -> ``path.<keep>``.

    Writes are serialised by a lock (the audit trail may write from a
    thread). A line is never split across two files: rotation happens before
    a write that would cross ``max_bytes``.

    :param path: the file (its directory is created if needed).
    :param max_bytes: rotate once the file would grow beyond this; 0 never rotates.
    :param keep: how many rotated files to keep; 0 keeps none (the file is truncated).
    """

    def __init__(self, path: str, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()
        folder = os.path.dirname(path)
        if folder:
            # A folder the gateway creates is its own: 0700 (HARDENING H08).
            make_private_dirs(folder, tighten_existing=False)
        self._file: IO[str] = self._open(os.O_APPEND)
        self._size = self._file.tell()

    def _open(self, flags: int) -> IO[str]:
        """Open the file for writing, created 0600 whatever the umask (logs name AE titles and paths)."""
        return os.fdopen(open_private(self.path, os.O_WRONLY | flags), "a", encoding="utf-8")

    def write(self, text: str) -> None:
        """Append ``text`` (normally whole lines), rotating first when it would cross the limit."""
        data_size = len(text.encode("utf-8"))
        with self._lock:
            if self.max_bytes and self._size and self._size + data_size > self.max_bytes:
                self._rotate()
            self._file.write(text)
            self._file.flush()
            self._size += data_size

    def _rotate(self) -> None:
        self._file.close()
        if self.keep > 0:
            oldest = f"{self.path}.{self.keep}"
            if os.path.exists(oldest):
                os.remove(oldest)
            shift_rotated(self.path, self.keep)
        self._file = self._open(os.O_TRUNC)
        self._size = 0

    def rotated_files(self) -> list[str]:
        """The rotated files that exist, newest first."""
        return [f"{self.path}.{n}" for n in range(1, self.keep + 1) if os.path.exists(f"{self.path}.{n}")]

    def flush(self) -> None:
        """Flush buffered text."""
        with self._lock:
            self._file.flush()

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._file.close()


def _timestamp(event: dict[str, Any]) -> str:
    when = event.get("log_time")
    if when is None:
        return "-"
    return datetime.fromtimestamp(when, timezone.utc).astimezone().isoformat(timespec="milliseconds")


def _level_name(event: dict[str, Any]) -> str:
    level = event.get("log_level")
    return level.name if isinstance(level, type(LogLevel.info)) else "-"


#: Characters a text log never shows raw: C0 (CR, LF, ESC...), DEL and C1
#: (NEL U+0085, CSI U+009B...), which could end a line early (a forged log
#: line) or drive the terminal that displays the log (ECMA-48 escape and
#: control sequences), plus the Unicode line and paragraph separators that
#: some viewers break lines on.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_control(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """Replace every control character of ``text`` by a visible escape (HARDENING H09, P10).

    Line feed, carriage return and tab become a backslash and ``n``, ``r``
    or ``t``; the other C0 characters, DEL and C1 become ``\\xNN`` (ESC is
    ``\\x1b``, NEL ``\\x85``); U+2028/U+2029 become ``\\uNNNN``. Printable
    text, non-ASCII letters included, is kept.

    :param text: any text, e.g. a rendered log message holding peer values.
    :returns: the text on one line with no control characters.
    """
    return _CONTROLS.sub(_escape_control, text)


def format_text(event: dict[str, Any]) -> str | None:
    """One text line for an event, with its correlation id when the message does not show it.

    The rendered message is escaped as a whole (:func:`escape_controls`):
    its fields carry values a peer chose (AE titles, UIDs, tag values, TLS
    subjects, HTTP paths), and escaping after rendering also covers values
    reached through attributes and format specs. A traceback keeps its lines,
    each escaped and indented by a tab, so no peer value can start a line.

    :param event: a twisted.logger event.
    :returns: the line (with a newline), or ``None`` for an event with nothing to say.
    """
    message = escape_controls(formatEvent(event))
    if not message and "log_failure" not in event:
        return None
    if "log_failure" in event:
        try:
            traceback = event["log_failure"].getTraceback()
        except Exception:  # a broken Failure must never break logging
            traceback = ""
        lines = traceback.rstrip("\n").split("\n") if traceback else []
        message = "\n\t".join([message, *(escape_controls(line) for line in lines)])
    correlation = event.get("correlation_id")
    if correlation and str(correlation) not in message:
        message += f" [cid {escape_controls(str(correlation))}]"
    namespace = escape_controls(str(event.get("log_namespace", "-")))
    return f"{_timestamp(event)} [{namespace}#{_level_name(event)}] {message}\n"


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def format_json(event: dict[str, Any]) -> str:
    """One JSON line for an event: time, level, namespace, message and every plain field.

    :param event: a twisted.logger event.
    :returns: the line, with a newline.
    """
    record: dict[str, Any] = {
        "time": _timestamp(event),
        "level": _level_name(event),
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in record or key in ("format", "message"):
            continue
        if _jsonable(value):
            record[key] = value
    if "log_failure" in event:
        try:
            record["traceback"] = event["log_failure"].getTraceback()
        except Exception:
            record["traceback"] = "(unavailable)"
    return json.dumps(record, sort_keys=False, default=str) + "\n"


@implementer(ILogObserver)
class _LineObserver:
    """Writes each event as a line produced by ``formatter`` to ``out``."""

    def __init__(self, out: Any, formatter: Callable[[dict[str, Any]], str | None]) -> None:
        self._out = out
        self._formatter = formatter

    def __call__(self, event: dict[str, Any]) -> None:
        line = self._formatter(event)
        if line:
            self._out.write(line)
            flush = getattr(self._out, "flush", None)
            if flush is not None:
                flush()


def text_observer(out: Any) -> ILogObserver:
    """An observer writing :func:`format_text` lines to ``out`` (a text stream or :class:`RotatingFile`)."""
    return _LineObserver(out, format_text)


def json_observer(out: Any) -> ILogObserver:
    """An observer writing :func:`format_json` lines to ``out``."""
    return _LineObserver(out, format_json)


def build_observer(log_config: Any, stdout: IO[str] | io.TextIOBase | None = None, level: str | None = None) -> ILogObserver:
    """The observer for a ``log`` configuration, filtered by level.

    :param log_config: a :class:`~gateway.config.schema.LogConfig`.
    :param stdout: where to write when ``log.file`` is empty; ``sys.stdout`` by default.
    :param level: overrides ``log.level`` (the ``--log-level`` option).
    :returns: an observer to begin logging to.
    :raises ValueError: an unknown format.
    """
    if log_config.file:
        out: Any = RotatingFile(log_config.file, log_config.rotate.size, log_config.rotate.keep)
    else:
        out = stdout if stdout is not None else sys.stdout
    if log_config.format == "json":
        observer = json_observer(out)
    elif log_config.format == "text":
        observer = text_observer(out)
    else:
        raise ValueError(f"unknown log format {log_config.format!r}")
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level or log_config.level))
    return FilteringLogObserver(observer, [predicate])
