"""``dicom-gateway drain`` and ``undrain`` (issue 14): the POST they make and what they print.

The admin API call itself (:func:`gateway.cli._api_call`, shared with
``reload``) is replaced by a recording fake; the real exchange with a running
gateway is in :mod:`tests.interop.test_front_door`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway import cli

CONFIG = """\
ae_title: GW
listen: [{host: 127.0.0.1, port: 0}]
spool: spool
"""


class DrainCommandTests(SynchronousTestCase):
    """The subcommands over a fake admin API."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.config_path = os.path.join(self.tmp, "gateway.yaml")
        with open(self.config_path, "w") as f:
            f.write(CONFIG)
        self.calls: list[tuple[str, str]] = []
        self.answer: tuple[int, bytes] = (200, b"{}")
        self.patch(cli, "_api_call", self.fake_call)

    def fake_call(self, config: Any, method: str, path: str, body: bytes | None, token_name: str = "",
                  ca: str = "") -> tuple[int, bytes]:
        """Record the call and give the canned answer."""
        self.calls.append((method, path))
        return self.answer

    def command(self, *argv: str) -> tuple[int, str, str]:
        """Run the command line in-process; returns (exit status, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        code = self.assertRaises(SystemExit, cli.main, [*argv, "-c", self.config_path]).code
        return int(code or 0), out.getvalue(), err.getvalue()

    def test_drain_posts_and_says_when_refusals_start(self) -> None:
        """drain POSTs /api/v1/drain and prints the node and the grace."""
        self.answer = (200, json.dumps({"draining": True, "refusing": False, "grace_seconds": 10.0, "node": "gw-a"}).encode())
        code, out, _ = self.command("drain")
        self.assertEqual((code, self.calls), (0, [("POST", "/api/v1/drain")]))
        self.assertIn("gw-a: draining", out)
        self.assertIn("10s more", out)

    def test_drain_past_the_grace_says_it_is_refusing(self) -> None:
        """A second drain after the grace says new associations are rejected."""
        self.answer = (200, json.dumps({"draining": True, "refusing": True, "grace_seconds": 10.0, "node": ""}).encode())
        code, out, _ = self.command("drain")
        self.assertEqual(code, 0)
        self.assertIn("rejected (2,3,2)", out)

    def test_undrain_posts_undrain(self) -> None:
        """undrain POSTs /api/v1/undrain."""
        self.answer = (200, json.dumps({"draining": False, "refusing": False, "grace_seconds": 0, "node": "gw-a"}).encode())
        code, out, _ = self.command("undrain")
        self.assertEqual((code, self.calls), (0, [("POST", "/api/v1/undrain")]))
        self.assertIn("drain ended", out)

    def test_an_error_status_exits_1(self) -> None:
        """A refused call (e.g. 401) is reported on stderr with exit status 1."""
        self.answer = (401, b'{"error": "unauthorized"}')
        code, _, err = self.command("drain")
        self.assertEqual(code, 1)
        self.assertIn("HTTP 401", err)
