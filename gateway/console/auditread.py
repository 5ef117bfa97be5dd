"""The console's audit page: this node's recent audit records, read from the end of the trail (issue 18).

The trail (:mod:`gateway.audit`) is a JSON-lines file rotated by size
(:func:`gateway.logs.shift_rotated`: ``audit.jsonl`` is the live file,
``audit.jsonl.1`` the newest rotated one, ``.2`` older). :func:`read_audit`
reads the live file then the rotated ones, each backwards from its end in
chunks of :data:`CHUNK` bytes, and stops at the page's ``limit`` of
matching records or after :data:`SCAN_LIMIT` bytes, whichever comes first:
memory and time per page are bounded whatever the trail's size and however
rare the filter's matches. A page that stopped for the scan limit still
carries a cursor, so the reader goes on further back on the next page.

The cursor is ``"<inode>:<offset>"``: the file by its inode (a rotation
renames files, it keeps their inodes, so a cursor stays right across one)
and the byte offset where the next, older, read ends. A cursor whose file
has been rotated away gives an empty last page.

Lines are skipped, never fatal: a last line without its newline (a writer
in the middle of an append, or a crash) is not read until complete; a line
that is not a JSON object, or longer than :data:`MAX_LINE`, is passed over.

Blocking file I/O: run it on the service's file runner.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterator, Mapping

from gateway.console.data import AuditPage, AuditRecordView

__all__ = ["read_audit", "audit_files", "record_view", "matches", "CHUNK", "SCAN_LIMIT", "MAX_LINE"]

#: Bytes read per system call.
CHUNK = 64 * 1024
#: Bytes one page reads at most before it answers with what it found (and a cursor).
SCAN_LIMIT = 8 * 1024 * 1024
#: A line longer than this is passed over (a record is a few KiB at most).
MAX_LINE = 1024 * 1024

#: EventOutcomeIndicator (PS3.15 A.5.1; RFC 3881 5.1.4) in words.
OUTCOMES: Mapping[int, str] = {0: "success", 4: "minor failure", 8: "serious failure", 12: "major failure"}


def audit_files(path: str) -> list[str]:
    """The trail's files, newest first: ``path`` then ``path.1``, ``path.2``, ... (those that exist).

    :param path: the live file (config ``audit.file``).
    """
    folder, name = os.path.split(path)
    rotated: list[tuple[int, str]] = []
    try:
        names = os.listdir(folder or ".")
    except OSError:
        names = []
    pattern = re.compile(re.escape(name) + r"\.(\d+)")
    for candidate in names:
        match = pattern.fullmatch(candidate)
        if match:
            rotated.append((int(match.group(1)), os.path.join(folder, candidate)))
    files = [path] if os.path.exists(path) else []
    return files + [p for _, p in sorted(rotated)]


class _Walk:
    """Complete lines of an open file ending at or before ``end``, last first, each with its start offset.

    Reads backwards in chunks, spending the page's byte budget (``budget``,
    shared across files); stops when it runs out. ``exhausted`` is set once
    the file's first line has been yielded. A line longer than
    :data:`MAX_LINE` is skipped without ever being kept whole in memory.
    """

    def __init__(self, fd: int, end: int, chunk: int, budget: list[Any]) -> None:
        self._fd, self._end, self._chunk, self._budget = fd, end, chunk, budget
        self.exhausted = end == 0

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        position = self._end
        tail = b""  # the end part of a line whose beginning is in an earlier (lower) chunk
        oversized = False  # the line ending with ``tail`` was too long: drop it when its start is found
        # budget[1]: a line was handled on this page. Until one is, the walk reads on past the
        # budget (at most a line, itself bounded by MAX_LINE), so every page makes progress.
        while position > 0 and (self._budget[0] > 0 or not self._budget[1]):
            size = min(self._chunk, position, self._budget[0]) if self._budget[0] > 0 else min(self._chunk, position)
            position -= size
            self._budget[0] -= size
            data = os.pread(self._fd, size, position) + tail
            pieces = data.split(b"\n")
            if position + size == self._end and len(pieces) > 1:
                # ``end`` is just after a newline (or a cursor at a line's start): the piece after
                # the chunk's last newline is the empty text beyond ``end``, not a line.
                pieces.pop()
            tail = pieces[0]
            offset = position + len(tail) + 1
            whole: list[tuple[int, bytes]] = []
            for piece in pieces[1:]:
                whole.append((offset, piece))
                offset += len(piece) + 1
            for index, (start, line) in enumerate(reversed(whole)):
                if oversized and index == 0:
                    oversized = False
                    self._budget[1] = True
                    yield start, b""  # the end of a line too long to keep: passed over
                    continue
                self._budget[1] = True
                yield start, line
            if len(tail) > MAX_LINE:
                tail, oversized = b"", True
        if position == 0:
            if tail and not oversized:
                self._budget[1] = True
                yield 0, tail
            self.exhausted = True


def record_view(record: Mapping[str, Any]) -> AuditRecordView:
    """One record flattened for the page.

    :param record: the JSON object as written (:meth:`gateway.audit.AuditRecord.to_json`).
    """
    participants = record.get("participants") or []
    ae_titles = tuple(str(p.get("user_id", "")) for p in participants if isinstance(p, Mapping) and p.get("user_id"))
    outcome = record.get("outcome", 0)
    words = OUTCOMES.get(outcome, str(outcome)) if isinstance(outcome, int) else str(outcome)
    extra = record.get("extra") or {}
    parts = [str(record.get("disposition", ""))] if record.get("disposition") else []
    if record.get("description"):
        parts.append(str(record["description"]))
    if isinstance(extra, Mapping):
        parts.extend(f"{key}={value}" for key, value in sorted(extra.items()) if key in ("listener", "destination", "reason", "via"))
    return AuditRecordView(
        at=str(record.get("time", "")),
        event=str(record.get("event", "")),
        outcome=words,
        ae_titles=ae_titles,
        summary="; ".join(parts),
        record=record,
    )


def matches(record: Mapping[str, Any], event: str | None, ae: str | None) -> bool:
    """Whether ``record`` is of ``event`` (its name, any case, or its id) and names ``ae`` among its participants."""
    if event:
        wanted = event.strip().lower()
        if wanted not in (str(record.get("event", "")).lower(), str(record.get("event_id", "")).lower()):
            return False
    if ae:
        wanted_ae = ae.strip()
        if not any(
            isinstance(p, Mapping) and str(p.get("user_id", "")).strip() == wanted_ae for p in record.get("participants") or []
        ):
            return False
    return True


def _parse_cursor(before: str) -> tuple[int, int]:
    """``"<inode>:<offset>"`` -> the two numbers. :raises ValueError: not a cursor."""
    inode, _, offset = before.partition(":")
    value = (int(inode), int(offset))
    if value[1] < 0:
        raise ValueError(before)
    return value


def read_audit(
    path: str,
    node: str,
    event: str | None = None,
    ae: str | None = None,
    before: str | None = None,
    limit: int = 100,
    chunk: int = CHUNK,
    scan_limit: int = SCAN_LIMIT,
) -> AuditPage:
    """This node's recent audit records matching ``event`` and ``ae``, newest first (blocking).

    :param path: the live audit file (config ``audit.file``); empty: no file, an empty page.
    :param node: the node the page shows.
    :param event: an event name (``Security Alert``) or id (``110113``), or ``None``.
    :param ae: an AE title a participant must have, or ``None``.
    :param before: the cursor of the previous page's ``next_before``.
    :param limit: the most records on the page.
    :param chunk: bytes per read.
    :param scan_limit: bytes read at most for the page.
    :returns: the page; ``next_before`` is set when older records may remain.
    :raises ValueError: ``before`` is not a cursor.
    """
    if not path or limit <= 0:
        return AuditPage(node=node, records=())
    files = audit_files(path)
    wanted = _parse_cursor(before) if before else None
    records: list[AuditRecordView] = []
    budget: list[Any] = [scan_limit, False]
    needles = _needles(event, ae)
    for name in files:
        try:
            fd = os.open(name, os.O_RDONLY)
        except OSError:
            continue  # rotated away meanwhile
        try:
            stat = os.fstat(fd)
            end = stat.st_size
            if wanted is not None:
                if stat.st_ino != wanted[0]:
                    continue
                end = min(wanted[1], end)
                wanted = None
            if end == stat.st_size and end > 0 and os.pread(fd, 1, end - 1) != b"\n":
                # The last line is still being written (or was cut by a crash): only whole lines count.
                end = _last_newline(fd, end, chunk)
            walk = _Walk(fd, end, chunk, budget)
            last = end
            for start, line in walk:
                last = start
                if not line or len(line) > MAX_LINE or not all(n in (line.lower() if low else line) for n, low in needles):
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and matches(record, event, ae):
                    records.append(record_view(record))
                    if len(records) >= limit:
                        break
            if len(records) >= limit or not walk.exhausted:
                # Full, or out of scan budget: the next page goes on below the last line handled.
                cursor = f"{stat.st_ino}:{last}" if last > 0 else _next_file_cursor(files, name)
                return AuditPage(node=node, records=tuple(records), next_before=cursor)
        finally:
            os.close(fd)
    return AuditPage(node=node, records=tuple(records))


def _needles(event: str | None, ae: str | None) -> list[tuple[bytes, bool]]:
    """Byte strings a matching line must contain (and whether to look in its lower-cased bytes).

    A cheap test before the JSON parse, so a rare filter scans a large trail
    quickly: the AE title as the trail writes it (a JSON string, ASCII-escaped),
    an event id as a JSON string, an event name lower-cased (names match in any
    case). Only lines that pass are parsed and judged by :func:`matches`.
    """
    needles: list[tuple[bytes, bool]] = []
    if ae and ae.strip():
        needles.append((json.dumps(ae.strip(), ensure_ascii=True).encode(), False))
    if event and event.strip():
        wanted = event.strip()
        if wanted.isdigit():
            needles.append((json.dumps(wanted).encode(), False))
        else:
            needles.append((json.dumps(wanted.lower(), ensure_ascii=True).encode(), True))
    return needles


def _last_newline(fd: int, end: int, chunk: int) -> int:
    """The offset just after the last newline before ``end`` (0: none), reading backwards in chunks."""
    position = end
    while position > 0:
        size = min(chunk, position)
        position -= size
        found = os.pread(fd, size, position).rfind(b"\n")
        if found >= 0:
            return position + found + 1
    return 0


def _next_file_cursor(files: list[str], name: str) -> str | None:
    """The cursor at the end of the file older than ``name``, or ``None`` when it is the oldest."""
    for older in files[files.index(name) + 1 :]:
        try:
            stat = os.stat(older)
        except OSError:
            continue
        return f"{stat.st_ino}:{stat.st_size}"
    return None
