"""Log lines (text and JSON), the correlation id in them, and size rotation."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile

from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from gateway.config.schema import LogConfig, RotateConfig
from gateway.logs import RotatingFile, build_observer, format_json, format_text


def _event(**fields: object) -> dict[str, object]:
    event: dict[str, object] = {
        "log_format": "delivered {sop_instance_uid} to {destination}",
        "log_level": LogLevel.info,
        "log_namespace": "gateway.forward",
        "log_time": 1700000000.0,
        "sop_instance_uid": "1.2.3",
        "destination": "pacs",
    }
    event.update(fields)
    return event


class FormatTests(SynchronousTestCase):
    """Text and JSON lines."""

    def test_text_line_carries_the_correlation_id(self) -> None:
        """A text line shows the correlation id its message does not show."""
        line = format_text(_event(correlation_id="abc123"))
        assert line is not None
        self.assertIn("[gateway.forward#info] delivered 1.2.3 to pacs [cid abc123]", line)

    def test_text_line_does_not_repeat_a_shown_id(self) -> None:
        """A message that already contains the id is not suffixed again."""
        line = format_text(_event(log_format="{correlation_id} queued", correlation_id="abc123"))
        assert line is not None
        self.assertEqual(line.count("abc123"), 1)

    def test_json_line_has_message_and_fields(self) -> None:
        """A JSON line has time, level, namespace, message and the event's plain fields."""
        record = json.loads(format_json(_event(correlation_id="abc123", attempt=2)))
        self.assertEqual(record["message"], "delivered 1.2.3 to pacs")
        self.assertEqual(record["level"], "info")
        self.assertEqual(record["correlation_id"], "abc123")
        self.assertEqual(record["attempt"], 2)
        self.assertNotIn("log_format", record)

    def test_observer_filters_by_level(self) -> None:
        """Events below log.level are not written."""
        out = io.StringIO()
        observer = build_observer(LogConfig(format="json", level="warn"), out)
        observer(_event())
        observer(_event(log_level=LogLevel.error))
        self.assertEqual(len(out.getvalue().splitlines()), 1)

    def test_unknown_format_is_refused(self) -> None:
        """A format other than text or json raises."""
        self.assertRaises(ValueError, build_observer, LogConfig(format="xml"), io.StringIO())


class RotationTests(SynchronousTestCase):
    """RotatingFile rotates by size and keeps ``keep`` old files."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "logs", "gw.log")

    def test_rotates_before_crossing_the_size_and_keeps_n(self) -> None:
        """Lines never straddle files; only ``keep`` rotated files remain, newest as .1."""
        f = RotatingFile(self.path, max_bytes=25, keep=2)
        for n in range(5):
            f.write(f"line {n} 0123456789\n")  # 18 bytes: one per file
        f.close()
        with open(self.path) as current:
            self.assertEqual(current.read(), "line 4 0123456789\n")
        with open(self.path + ".1") as newest:
            self.assertEqual(newest.read(), "line 3 0123456789\n")
        self.assertTrue(os.path.exists(self.path + ".2"))
        self.assertFalse(os.path.exists(self.path + ".3"))

    def test_log_file_from_config(self) -> None:
        """log.file sends the lines to the rotating file."""
        observer = build_observer(LogConfig(format="text", file=self.path, rotate=RotateConfig(size=1000, keep=1)))
        observer(_event(correlation_id="zz9"))
        with open(self.path) as f:
            self.assertIn("[cid zz9]", f.read())
