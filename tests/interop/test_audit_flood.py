"""A flood of rejected associations against the real gateway process (HARDENING H11).

Today every rejection is one audit record, so a client opening associations
in a loop rotates the retained audit history away. With aggregation, the
process writes the first rejection from an address and a summary with the
count (here at stop, which ends the open windows); the records written
before the flood survive, and the file's hash chain verifies with
``dicom-gateway audit verify``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import TestCase

from gateway.ul.pdu import AAssociateRJ
from tests.support.gateway_process import REPO_ROOT, GatewayProcess
from tests.support.rawpeer import RawPeer, associate_rq

#: Rejected associations played (the issue measured 24,000 in 10 s; a few hundred show the behaviour).
FLOOD = 300


class AuditFloodTests(TestCase):
    """Rejections from one address are aggregated by the running gateway; the chain verifies."""

    timeout = 180

    def test_rejection_flood_is_one_record_and_one_summary(self) -> None:
        """300 rejected associations from 127.0.0.1 leave 2 rejection records (the first, and a summary of 299) and the start record."""
        base = Path(self.mktemp()).resolve()
        audit = base / "audit" / "audit.jsonl"
        gateway = GatewayProcess(
            base / "gw",
            accept={"calling_ae_titles": ["CT*"]},
            audit={"file": str(audit), "rotate": {"size": 1024 * 1024, "keep": 2}},
        )
        self.addCleanup(gateway.stop, 15)
        gateway.start()
        for n in range(FLOOD):
            with RawPeer(gateway.host, gateway.port) as peer:
                answer = peer.associate(associate_rq(calling=f"MR{n}"), timeout=10)
                self.assertIsInstance(answer, AAssociateRJ)
        gateway.stop(15)
        records = [json.loads(line) for line in audit.read_text().splitlines()]
        rejected = [r for r in records if r.get("disposition") == "rejected"]
        self.assertEqual(len(rejected), 2, [r.get("description") for r in rejected][:5])
        self.assertEqual(rejected[0]["participants"][0]["user_id"], "MR0")
        self.assertEqual(rejected[1]["extra"]["aggregated"], str(FLOOD - 1))
        self.assertEqual(rejected[1]["participants"][0]["network_access_point"], "127.0.0.1")
        self.assertEqual(records[0]["disposition"], "start")
        self.assertEqual(records[-1]["disposition"], "stop")
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "audit", "verify", str(audit)],
            cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.startswith(f"OK: {len(records)} record(s) in 1 file(s)"), result.stdout)
