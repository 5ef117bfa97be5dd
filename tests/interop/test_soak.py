"""The soak script, scaled down for CI (HARDENING L7, decision 12).

``bench/soak.py`` runs traffic from pynetdicom senders through a real gateway
process to a DCMTK ``storescp`` that is stopped and restarted (flapping),
kills the gateway with SIGKILL and restarts it, then checks that every
instance acknowledged with status 0x0000 reached the destinations with the
same Pixel Data.  Here it runs for about 40 s with at least one kill and one
flap at small sizes; the full-size figures come from a 30-minute run (see
``bench/README.md``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.support import dcmtk
from tests.support.gateway_process import REPO_ROOT


class SoakTests(TestCase):
    """``bench/soak.py --minutes 0.7`` with short intervals."""

    skip = dcmtk.skip_reason("storescp")
    timeout = 300

    def test_short_soak_with_kill_and_flap_loses_nothing_acknowledged(self) -> None:
        """40 s of traffic, one kill -9 and a flapping storescp: lost == 0, acknowledged > 0, no dead letters."""
        work = Path(self.mktemp()).resolve()
        summary_path = work / "summary.json"
        work.mkdir(parents=True)
        proc = subprocess.run(
            [sys.executable, str(REPO_ROOT / "bench" / "soak.py"), "--minutes", "0.7",
             "--rate", "10", "--senders", "2", "--size-kib", "8", "--flap-every", "12",
             "--down-for", "5", "--kill-every", "25", "--sample-every", "2", "--folder",
             "--drain-timeout", "120", "--workdir", str(work / "soak"), "--json", str(summary_path)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=280, check=False)
        output = f"exit {proc.returncode}\n{proc.stdout}\n--- stderr ---\n{proc.stderr[-4000:]}"
        self.assertTrue(summary_path.exists(), output)
        summary = json.loads(summary_path.read_text())
        self.assertGreater(summary["acknowledged"], 0, output)
        self.assertEqual(summary["lost"], 0, output)
        self.assertEqual(summary["altered"], 0, output)
        self.assertEqual(summary["dead_letters"], 0, output)
        self.assertTrue(summary["drained"], output)
        self.assertGreaterEqual(summary["kills"], 1, output)
        self.assertGreaterEqual(summary["flaps"], 1, output)
        for name in ("pacs", "folder"):
            self.assertEqual(summary["destinations"][name]["delivered"], summary["acknowledged"], output)
        self.assertTrue(summary["lifetimes"], output)
        self.assertEqual(proc.returncode, 0, output)
