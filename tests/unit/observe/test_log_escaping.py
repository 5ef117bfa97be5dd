"""Peer-chosen values cannot forge a log line or drive a terminal (HARDENING H09, P10)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.logs import escape_controls, format_json, format_text

#: A calling AE title / UID a hostile peer might send: a line break and a
#: forged line, an ANSI colour (ESC [ 31 m), a C1 NEL and CSI, DEL, NUL, CR.
HOSTILE = "CT\n2026-01-01T00:00:00 [gateway.listen#info] forged\x1b[31m\x85\x9b2J\x7f\x00\r\u2028end"


def event(**fields: object) -> dict[str, object]:
    """A listener event carrying ``fields``."""
    base: dict[str, object] = {
        "log_format": "association from {peer} {calling} -> {called} rejected: {why}",
        "log_level": LogLevel.info,
        "log_namespace": "gateway.listen",
        "log_time": 1700000000.0,
        "peer": "10.0.0.1:4000",
        "calling": HOSTILE,
        "called": "GW",
        "why": "not allowed",
    }
    base.update(fields)
    return base


def controls(text: str) -> list[str]:
    """The control characters (C0 but the final newline, DEL, C1, U+2028/9) left in ``text``."""
    return [c for c in text[:-1] if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029"]


class TextEscapingTests(SynchronousTestCase):
    """The text format escapes every control character in the rendered message."""

    def test_hostile_value_stays_on_one_line_without_controls(self) -> None:
        """A field with LF, ESC sequences, C1, DEL, NUL and CR renders as one line with visible escapes."""
        line = format_text(event())
        assert line is not None
        self.assertEqual(line.count("\n"), 1)
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(controls(line), [])
        self.assertIn(
            "CT\\n2026-01-01T00:00:00 [gateway.listen#info] forged\\x1b[31m\\x85\\x9b2J\\x7f\\x00\\r\\u2028end -> GW",
            line,
        )

    def test_values_reached_through_attributes_and_format_specs_are_escaped(self) -> None:
        """{info.calling_ae_title} and {uid!r} are escaped as well: the whole rendered message is."""

        @dataclass(frozen=True)
        class Info:
            calling_ae_title: str

        line = format_text(event(log_format="{info.calling_ae_title} sent {uid!r}", info=Info(HOSTILE), uid="1.2\x1b]0;x\x07"))
        assert line is not None
        self.assertEqual(controls(line), [])
        self.assertEqual(line.count("\n"), 1)

    def test_correlation_id_and_namespace_are_escaped(self) -> None:
        """A control character in the appended correlation id is escaped too."""
        line = format_text(event(correlation_id="c\x1b[0m\n1"))
        assert line is not None
        self.assertIn("[cid c\\x1b[0m\\n1]", line)
        self.assertEqual(controls(line), [])

    def test_traceback_lines_are_indented_and_escaped(self) -> None:
        """A failure keeps its traceback on tab-indented lines; a control character in its message is escaped."""
        try:
            raise ValueError(f"bad UID {HOSTILE}")
        except ValueError:
            failure = Failure()
        line = format_text(event(log_failure=failure))
        assert line is not None
        for continuation in line.rstrip("\n").split("\n")[1:]:
            self.assertTrue(continuation.startswith("\t"), continuation)
        self.assertNotIn("\x1b", line)
        self.assertIn("forged\\x1b[31m", line)

    def test_printable_text_is_kept(self) -> None:
        """Non-ASCII letters, backslashes and spaces are not escaped."""
        self.assertEqual(escape_controls("Müller\\Ωx y"), "Müller\\Ωx y")


class JsonEscapingTests(SynchronousTestCase):
    """The JSON format keeps one valid object per line whatever the values."""

    def test_hostile_value_is_one_json_line_and_round_trips(self) -> None:
        """The line is valid JSON holding the exact value, and has no raw control character."""
        line = format_json(event())
        self.assertEqual(line.count("\n"), 1)
        self.assertEqual(controls(line), [])
        record = json.loads(line)
        self.assertEqual(record["calling"], HOSTILE)
        self.assertIn(HOSTILE, record["message"])
