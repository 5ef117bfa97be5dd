"""The console's audit reader (issue 18): newest first across rotated files, filters, cursors, bounded reads."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway.audit import AuditRecord, JsonLinesFile, Participant
from gateway.console import auditread
from gateway.console.auditread import audit_files, read_audit
from gateway.logs import shift_rotated


def record(n: int, event: str = "Security Alert", event_id: str = "110113", ae: str = "MOD1", outcome: int = 4) -> dict[str, Any]:
    """A record shaped as the trail writes them, numbered ``n`` in its description."""
    return {
        "time": f"2026-12-02T10:00:{n % 60:02d}.000Z",
        "event": event,
        "event_id": event_id,
        "action": "E",
        "outcome": outcome,
        "description": f"record {n}",
        "participants": [{"user_id": ae, "role": "source"}, {"user_id": "GATEWAY", "role": "destination"}],
        "extra": {"listener": "main"},
    }


def numbers(page: Any) -> list[int]:
    """The record numbers of a page, in page order."""
    return [int(view.record["description"].split()[1]) for view in page.records]


class AuditReadTests(SynchronousTestCase):
    """read_audit over files written in the tests (and by the real JsonLinesFile)."""

    def setUp(self) -> None:
        self.folder = self.mktemp()
        os.makedirs(self.folder)
        self.path = os.path.join(self.folder, "audit.jsonl")

    def write(self, path: str, records: list[dict[str, Any]], tail: bytes = b"") -> None:
        """Write ``records`` as JSON lines, then ``tail`` as is."""
        with open(path, "wb") as f:
            for r in records:
                f.write(json.dumps(r).encode() + b"\n")
            f.write(tail)

    def all_pages(self, **kw: Any) -> list[int]:
        """Every record number reached by following the cursors."""
        seen: list[int] = []
        before = None
        for _ in range(10000):
            page = read_audit(self.path, "n1", before=before, **kw)
            seen.extend(numbers(page))
            before = page.next_before
            if before is None:
                return seen
        raise AssertionError("the cursor never ended")

    def test_newest_first_across_rotated_files(self) -> None:
        """The live file, then .1, then .2 (a .10 sorts after .2), each from its end."""
        self.write(self.path + ".2", [record(n) for n in range(0, 3)])
        self.write(self.path + ".1", [record(n) for n in range(3, 6)])
        self.write(self.path, [record(n) for n in range(6, 8)])
        self.assertEqual(audit_files(self.path), [self.path, self.path + ".1", self.path + ".2"])
        page = read_audit(self.path, "n1", limit=100)
        self.assertEqual(numbers(page), [7, 6, 5, 4, 3, 2, 1, 0])
        self.assertIsNone(page.next_before)
        self.assertEqual(page.node, "n1")
        view = page.records[0]
        self.assertEqual((view.event, view.outcome, view.ae_titles), ("Security Alert", "minor failure", ("MOD1", "GATEWAY")))
        self.assertIn("record 7", view.summary)
        self.assertIn("listener=main", view.summary)

    def test_cursor_pages_cover_everything_once_in_every_chunking(self) -> None:
        """Following next_before visits every record once, newest first, whatever the chunk and scan sizes."""
        self.write(self.path + ".1", [record(n) for n in range(0, 20)])
        self.write(self.path, [record(n) for n in range(20, 45)])
        expected = list(range(44, -1, -1))
        for chunk, scan_limit, limit in [(64, 10_000, 3), (100, 300, 4), (4096, 1_000_000, 7), (17, 200, 1), (1 << 16, 1 << 23, 100)]:
            self.assertEqual((chunk, scan_limit, limit, self.all_pages(chunk=chunk, scan_limit=scan_limit, limit=limit)),
                             (chunk, scan_limit, limit, expected))

    def test_filters_by_event_name_id_and_ae(self) -> None:
        """event matches the name (any case) or the id; ae matches a participant's AE title."""
        records = [
            record(0, ae="CT1"),
            record(1, event="User Authentication", event_id="110114", ae="CT1", outcome=0),
            record(2, ae="MR1"),
            record(3, event="User Authentication", event_id="110114", ae="MR1", outcome=0),
        ]
        self.write(self.path, records)
        self.assertEqual(numbers(read_audit(self.path, "n", event="security alert")), [2, 0])
        self.assertEqual(numbers(read_audit(self.path, "n", event="110114")), [3, 1])
        self.assertEqual(numbers(read_audit(self.path, "n", ae="MR1")), [3, 2])
        self.assertEqual(numbers(read_audit(self.path, "n", event="110114", ae="CT1")), [1])
        self.assertEqual(numbers(read_audit(self.path, "n", ae="NOBODY")), [])
        self.assertEqual(read_audit(self.path, "n", event="110114").records[0].outcome, "success")

    def test_the_quick_byte_test_never_decides_alone(self) -> None:
        """An AE or event named only in a description passes the byte test but not the filter; a name in other case still matches."""
        # The decoy's line holds "MR1", "110114" and "user authentication" as JSON strings, outside the fields judged.
        decoy = dict(record(0, ae="CT1"), extra={"peer": "MR1", "note": "110114", "what": "User Authentication"})
        self.assertIn(b'"MR1"', json.dumps(decoy).encode())
        self.write(self.path, [decoy, record(1, ae="MR1"), record(2, event="User Authentication", event_id="110114")])
        self.assertEqual(numbers(read_audit(self.path, "n", ae="MR1")), [1])
        self.assertEqual(numbers(read_audit(self.path, "n", event="110114")), [2])
        self.assertEqual(numbers(read_audit(self.path, "n", event="USER authentication")), [2])

    def test_a_cursor_whose_file_is_gone_ends_the_list(self) -> None:
        """A cursor naming a file rotated away answers an empty last page."""
        self.write(self.path, [record(0)])
        page = read_audit(self.path, "n", before="999999999:10")
        self.assertEqual((page.records, page.next_before), ((), None))

    def test_a_truncated_last_line_and_bad_lines_are_passed_over(self) -> None:
        """A last line without its newline is not read; a line that is not JSON, or not an object, is skipped."""
        with open(self.path, "wb") as f:
            f.write(json.dumps(record(0)).encode() + b"\n")
            f.write(b"not json at all\n")
            f.write(b"[1, 2]\n")
            f.write(b"\n")
            f.write(json.dumps(record(1)).encode() + b"\n")
            f.write(json.dumps(record(2)).encode()[:40])  # the writer is in the middle of this one
        self.assertEqual(numbers(read_audit(self.path, "n")), [1, 0])
        self.assertEqual(self.all_pages(limit=1, chunk=16), [1, 0])

    def test_a_line_too_long_is_passed_over(self) -> None:
        """A line longer than MAX_LINE is skipped without being kept whole; its neighbours are read."""
        self.patch(auditread, "MAX_LINE", 300)
        big = dict(record(1), description="record 1 " + "x" * 2000)
        self.write(self.path, [record(0), big, record(2)])
        self.assertEqual(self.all_pages(chunk=64), [2, 0])
        self.assertEqual(self.all_pages(chunk=1000), [2, 0])

    def test_a_huge_file_is_read_in_bounded_chunks(self) -> None:
        """A filter matching nothing in a large file reads at most scan_limit bytes per page, in chunks, and says where to go on."""
        line = json.dumps(record(0)).encode() + b"\n"
        with open(self.path, "wb") as f:
            f.write(json.dumps(record(1, ae="RARE")).encode() + b"\n")
            f.write(line * 40_000)  # ~10 MB
        size = os.path.getsize(self.path)
        reads: list[int] = []
        real = os.pread

        def counting(fd: int, n: int, offset: int) -> bytes:
            reads.append(n)
            return real(fd, n, offset)

        self.patch(os, "pread", counting)
        page = read_audit(self.path, "n", ae="RARE", chunk=64 * 1024, scan_limit=1024 * 1024)
        self.assertEqual(page.records, ())
        self.assertIsNotNone(page.next_before)
        self.assertLessEqual(sum(reads), 1024 * 1024 + 1)  # + the one byte that checks the last newline
        self.assertLessEqual(max(reads), 64 * 1024)
        # Following the cursor reaches the one match at the start, in about size / scan_limit pages.
        pages, before, found = 0, page.next_before, []
        while before is not None:
            page = read_audit(self.path, "n", ae="RARE", before=before, chunk=64 * 1024, scan_limit=1024 * 1024)
            found.extend(numbers(page))
            before, pages = page.next_before, pages + 1
        self.assertEqual(found, [1])
        self.assertLessEqual(pages, size // (1024 * 1024) + 2)

    def test_the_cursor_survives_a_rotation(self) -> None:
        """A cursor names the file by inode: after the live file is rotated to .1, the next page is the same."""
        self.write(self.path, [record(n) for n in range(6)])
        first = read_audit(self.path, "n", limit=2)
        self.assertEqual(numbers(first), [5, 4])
        expected = numbers(read_audit(self.path, "n", before=first.next_before, limit=2))
        shift_rotated(self.path, 3)
        self.write(self.path, [record(n) for n in range(6, 8)])
        self.assertEqual(numbers(read_audit(self.path, "n", before=first.next_before, limit=2)), expected)
        self.assertEqual(expected, [3, 2])

    def test_the_real_trail_rotated_by_size(self) -> None:
        """Records written by JsonLinesFile with rotation come back newest first, chain field and all."""
        trail = JsonLinesFile(self.path, max_bytes=2000, keep=5)
        self.addCleanup(trail.close)
        for n in range(12):
            trail.write(AuditRecord(time=f"t{n}", event="Application Activity", event_id="110100", action="E", outcome=0,
                                    description=f"record {n}", participants=(Participant(user_id="GATEWAY"),)))
        self.assertGreater(len(audit_files(self.path)), 1)
        page = read_audit(self.path, "n", event="Application Activity", limit=100)
        kept = numbers(page)
        self.assertEqual(kept, sorted(kept, reverse=True))
        self.assertEqual(kept[0], 11)
        self.assertIn("prev_sha256", page.records[0].record)

    def test_no_file_no_records(self) -> None:
        """No audit file configured, or none written yet: an empty last page; a bad cursor is a ValueError."""
        self.assertEqual(read_audit("", "n").records, ())
        self.assertEqual(read_audit(self.path, "n").records, ())
        self.assertRaises(ValueError, read_audit, self.path, "n", before="junk")
