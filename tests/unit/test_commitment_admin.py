"""``dicom-gateway commitment list|show|retry``, the ``queue list`` line, and their :mod:`gateway.admin` functions (issue 15).

The journal is the in-memory store (the verified fake of
:class:`~gateway.queue.commitments.ICommitmentJournal`), filled as the SCP,
the intake, the forwarders and the report worker would have left it: one
transaction reported, one owed with an instance delivered to one destination
and dead-lettered at the other, one dead. The command line runs in-process
(:func:`gateway.cli.main`) with its store opening patched to that journal,
and writes its audit records to the configured file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway import admin, cli
from gateway.commitment.model import CommitmentReport, FailedReference
from gateway.queue.commitments import NewTransaction, Reference, TransactionState, Unforwarded
from gateway.queue.interfaces import NewEntry
from gateway.queue.memory import MemoryQueueStore
from tests.unit.queue.test_store import make_record

T0 = 1_700_000_000.0
CT = "1.2.840.10008.5.1.4.1.1.2"

CONFIG = """\
ae_title: GW
listen: [{host: 127.0.0.1, port: 0}]
spool: spool
audit: {file: audit.jsonl}
destinations:
  pacs: {ae_title: PACS, host: 127.0.0.1, port: 1}
  vna: {ae_title: VNA, host: 127.0.0.1, port: 2}
routes: [{name: all, forward: [pacs, vna]}]
modalities: {ct1: {ae_title: CT1, host: 127.0.0.1, port: 104}}
commitment: {policy: delivered}
"""


def _new(uid: str, references: tuple[Reference, ...], requested: float) -> NewTransaction:
    """A ``delivered`` transaction of ``ct1`` asked at ``requested`` (deadline an hour later, report deadline a day)."""
    return NewTransaction(
        transaction_uid=uid, calling_ae_title="CT1", called_ae_title="GW", modality="ct1", listener="l1",
        policy="delivered", references=references, deadline=requested + 3600, report_deadline=requested + 86400,
        lookback_from=requested - 7 * 86400, source_address="127.0.0.1:40000",
    )


def fill(store: MemoryQueueStore) -> None:
    """Three transactions: 2.25.1 reported, 2.25.2 owed and overdue (one copy delivered, one dead), 2.25.3 dead."""
    record = make_record("i1", sop_class_uid=CT, sop_instance_uid="1.2.3.1", received_at=T0 - 7200)
    store.add_instance(record, [NewEntry("all", "pacs"), NewEntry("all", "vna")], T0 - 7200, 0)
    (pacs,) = store.lease("pacs", 10, T0 - 7100, 60)
    store.complete([pacs.entry_id], T0 - 7100)
    (vna,) = store.lease("vna", 10, T0 - 7100, 60)
    store.dead_letter(vna.entry_id, "refused: 0xA700 out of resources", T0 - 7000)
    store.note_unforwarded([Unforwarded(CT, "1.2.3.2", "dropped", T0 - 7200, "CT1", "rule drop-scouts")], T0 - 7200)

    one = Reference(CT, "1.2.3.1")
    store.add_transaction(_new("2.25.1", (one,), T0 - 9000), T0 - 9000)
    store.add_transaction(_new("2.25.2", (one, Reference(CT, "1.2.3.2"), Reference(CT, "1.2.3.9")), T0 - 3700), T0 - 3700)
    store.add_transaction(_new("2.25.3", (one,), T0 - 90000), T0 - 90000)
    leased = {t.transaction_uid: t for t in store.lease_transactions(T0, 10, 60)}
    report = CommitmentReport("2.25.1", committed=(one,)).to_json()
    store.decide_transaction("2.25.1", report, T0 - 8000, leased["2.25.1"].lease_generation)
    store.transaction_reported("2.25.1", T0 - 7990, leased["2.25.1"].lease_generation)
    store.defer_transaction("2.25.2", T0 + 60, T0, leased["2.25.2"].lease_generation, "not decided: 2 undecided")
    failed = CommitmentReport("2.25.3", failed=(FailedReference(one, 0x0110),)).to_json()
    store.decide_transaction("2.25.3", failed, T0 - 80000, leased["2.25.3"].lease_generation)
    store.transaction_dead("2.25.3", "report_deadline passed: connection refused", T0 - 10, leased["2.25.3"].lease_generation)


class AdminFunctionTests(SynchronousTestCase):
    """The shared functions the CLI and the API call."""

    def setUp(self) -> None:
        self.store = MemoryQueueStore("gw-a")
        fill(self.store)
        self.journal = admin.commitment_journal(self.store)
        assert self.journal is not None

    def test_rows_newest_first_with_state_and_report(self) -> None:
        """Rows come newest request first; a decided report shows its counts, an owed one past its deadline is overdue."""
        rows = admin.commitment_rows(self.journal, T0)
        self.assertEqual([r["transaction_uid"] for r in rows], ["2.25.2", "2.25.1", "2.25.3"])
        owed, reported, dead = rows
        self.assertEqual((owed["state"], owed["overdue"], owed["event_type"], owed["instances"]), ("open", True, None, 3))
        self.assertEqual((reported["state"], reported["event_type"], reported["committed"], reported["failed"]), ("reported", 1, 1, 0))
        self.assertEqual((dead["state"], dead["event_type"], dead["failed"]), ("dead", 2, 1))
        self.assertIn("connection refused", dead["dead_reason"])

    def test_rows_of_one_state(self) -> None:
        """``state`` keeps only that state's transactions."""
        rows = admin.commitment_rows(self.journal, T0, TransactionState.DEAD)
        self.assertEqual([r["transaction_uid"] for r in rows], ["2.25.3"])

    def test_detail_judges_each_instance_per_destination(self) -> None:
        """``show`` before the deadline: the dead-lettered copy fails its instance (0x0110), a dropped one too, one never received is undecided; each destination's state is listed."""
        detail = admin.commitment_detail(self.journal, "2.25.2", [], T0 - 200)
        by_uid = {i["sop_instance_uid"]: i for i in detail["instances_detail"]}
        delivered_and_dead = by_uid["1.2.3.1"]
        self.assertEqual((delivered_and_dead["verdict"], delivered_and_dead["reason"]), ("failed", "0x0110"))
        self.assertEqual(
            sorted((d["destination"], d["state"]) for d in delivered_and_dead["destinations"]),
            [("pacs", "delivered"), ("vna", "dead")],
        )
        self.assertEqual((by_uid["1.2.3.2"]["verdict"], by_uid["1.2.3.2"]["reason"]), ("failed", "0x0110"))
        self.assertEqual(by_uid["1.2.3.2"]["received"][0]["outcome"], "dropped")
        self.assertEqual((by_uid["1.2.3.9"]["verdict"], by_uid["1.2.3.9"]["received"]), ("undecided", []))
        self.assertIsNone(detail["report"])

    def test_detail_after_the_deadline_fails_the_unreceived_with_0x0112(self) -> None:
        """Judged past the deadline, the instance never received fails with 0x0112 (no such object instance)."""
        detail = admin.commitment_detail(self.journal, "2.25.2", [], T0)
        by_uid = {i["sop_instance_uid"]: i for i in detail["instances_detail"]}
        self.assertEqual((by_uid["1.2.3.9"]["verdict"], by_uid["1.2.3.9"]["reason"]), ("failed", "0x0112"))

    def test_detail_shows_the_decided_report(self) -> None:
        """A decided report is shown as decided, per instance, whatever the journal says now."""
        detail = admin.commitment_detail(self.journal, "2.25.3", [], T0)
        self.assertEqual(detail["report"], {"event_type": 2, "committed": 0, "failed": 1})
        self.assertEqual(detail["instances_detail"][0]["in_report"], "failed 0x0110")
        self.assertTrue(any("connection refused" in a["error"] for a in detail["history"]))
        text = admin.format_commitment(detail)
        self.assertIn("event type 2: 0 committed, 1 failed", text)
        self.assertIn("in the report: failed 0x0110", text)

    def test_detail_of_unknown_transaction(self) -> None:
        """An unknown Transaction UID raises KeyError (404 in the API)."""
        self.assertRaises(KeyError, admin.commitment_detail, self.journal, "9.9.9", [], T0)

    def test_retry_a_dead_report(self) -> None:
        """A dead report is owed again, due now, with a report deadline as far off as the first; its report kept."""
        before = self.store.get_transaction("2.25.3")
        transaction = admin.retry_commitment(self.journal, "2.25.3", T0)
        self.assertEqual(transaction.state, TransactionState.OPEN)
        self.assertEqual(transaction.request.report_deadline, T0 + 86400)
        self.assertEqual(transaction.report, before.report)

    def test_retry_refuses_what_is_not_dead(self) -> None:
        """Only a dead report can be retried: an open or unknown one raises KeyError saying why."""
        error = self.assertRaises(KeyError, admin.retry_commitment, self.journal, "2.25.2", T0)
        self.assertIn("is open, not dead", str(error))
        self.assertRaises(KeyError, admin.retry_commitment, self.journal, "9.9.9", T0)

    def test_summary_line(self) -> None:
        """``queue list`` gets one line of reports owed, overdue and dead; none when nothing is owed or dead."""
        summary = admin.commitment_summary(self.journal, T0)
        self.assertEqual((summary["owed"], summary["overdue"], summary["dead"], summary["reported"]), (1, 1, 1, 1))
        self.assertEqual(
            admin.format_commitment_summary(summary),
            "Storage Commitment reports: 1 owed (1 overdue), 1 dead; see dicom-gateway commitment list",
        )
        empty = admin.commitment_summary(MemoryQueueStore("x"), T0)
        self.assertEqual(admin.format_commitment_summary(empty), "")


class CommitmentCliTests(SynchronousTestCase):
    """The command line on the same journal."""

    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.folder, "spool"))
        self.config_path = os.path.join(self.folder, "gw.yaml")
        with open(self.config_path, "w", encoding="utf-8") as stream:
            stream.write(CONFIG)
        self.store = MemoryQueueStore("gw-a")
        fill(self.store)
        self.patch(cli, "_open_store", lambda config: self.store)
        self.patch(self.store, "close", lambda: None)
        self.patch(admin.time, "time", lambda: T0)

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        """Run ``dicom-gateway ARGV`` in-process; the exit status, stdout and stderr."""
        out, err = io.StringIO(), io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main(list(argv))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
        return code, out.getvalue(), err.getvalue()

    def audit_records(self) -> list[dict[str, Any]]:
        """The audit file's records."""
        with open(os.path.join(self.folder, "audit.jsonl"), encoding="utf-8") as stream:
            return [json.loads(line) for line in stream]

    def test_list_text_and_json(self) -> None:
        """``list`` prints one line per transaction (UID last, whole); ``--state dead --json`` the dead one's row."""
        code, out, err = self.run_cli("commitment", "list", "-c", self.config_path)
        self.assertEqual(code, 0, err)
        self.assertIn("TRANSACTION UID", out)
        self.assertRegex(out, r"dead\s+ct1\s+delivered\s+1 .*0 ok/1 fail.* 2\.25\.3")
        code, out, err = self.run_cli("commitment", "list", "-c", self.config_path, "--state", "dead", "--json")
        self.assertEqual((code, [r["transaction_uid"] for r in json.loads(out)]), (0, ["2.25.3"]))

    def test_show(self) -> None:
        """``show`` names the requester, the policy, each instance's verdict and each destination's state."""
        code, out, err = self.run_cli("commitment", "show", "-c", self.config_path, "2.25.2")
        self.assertEqual(code, 0, err)
        self.assertIn("transaction 2.25.2: open (overdue)", out)
        self.assertIn("1.2.3.1 (1.2.840.10008.5.1.4.1.1.2): now failed 0x0110", out)
        self.assertRegex(out, r"-> vna\s+\[\d+\] route all: dead: refused: 0xA700")
        self.assertIn("received", out)
        self.assertIn("dropped (sent nowhere)", out)
        code, out, err = self.run_cli("commitment", "show", "-c", self.config_path, "9.9.9")
        self.assertEqual(code, 1)
        self.assertIn("no Storage Commitment transaction 9.9.9", err)

    def test_retry_is_audited(self) -> None:
        """``retry`` of a dead report makes it owed again and writes an audit record naming the transaction and the operator."""
        code, out, err = self.run_cli("commitment", "retry", "-c", self.config_path, "2.25.3")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.store.get_transaction("2.25.3").state, TransactionState.OPEN)
        (record,) = self.audit_records()
        self.assertEqual((record["event_id"], record["action"], record["outcome"]), ("110103", "U", 0))
        self.assertEqual(record["extra"]["transaction_uid"], "2.25.3")
        self.assertEqual(record["extra"]["action"], "commitment_retry")

    def test_retry_of_an_open_report_is_refused_and_audited(self) -> None:
        """``retry`` of a report still owed exits 1, changes nothing and is audited as a minor failure."""
        code, _, err = self.run_cli("commitment", "retry", "-c", self.config_path, "2.25.2")
        self.assertEqual(code, 1)
        self.assertIn("not dead", err)
        (record,) = self.audit_records()
        self.assertEqual(record["outcome"], 4)

    def test_queue_list_shows_the_reports_owed(self) -> None:
        """``queue list`` adds the line of reports owed, overdue and dead."""
        code, out, err = self.run_cli("queue", "list", "-c", self.config_path)
        self.assertEqual(code, 0, err)
        self.assertIn("Storage Commitment reports: 1 owed (1 overdue), 1 dead", out)


class SqliteCliTests(SynchronousTestCase):
    """The real command, as a subprocess, on the SQLite journal a gateway would have left."""

    def setUp(self) -> None:
        from gateway.config.load import load_config
        from gateway.queue.sqlite import SqliteQueueStore

        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.folder, "spool"))
        self.config_path = os.path.join(self.folder, "gw.yaml")
        with open(self.config_path, "w", encoding="utf-8") as stream:
            stream.write(CONFIG)
        store = SqliteQueueStore(load_config(self.config_path).queue_path)
        try:
            fill(store)  # type: ignore[arg-type]
        finally:
            store.close()

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        """Run ``python -m gateway ARGV`` from this tree; the exit status, stdout and stderr."""
        import subprocess
        import sys

        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        done = subprocess.run(
            [sys.executable, "-m", "gateway", *argv], capture_output=True, text=True, cwd=root,
            env=dict(os.environ, PYTHONPATH=root), timeout=60,
        )
        return done.returncode, done.stdout, done.stderr

    def test_list_show_retry_on_sqlite(self) -> None:
        """list shows the three transactions, show the dead one's report, retry makes it owed again (seen by list)."""
        code, out, err = self.run_cli("commitment", "list", "-c", self.config_path, "--json")
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(r["transaction_uid"] for r in json.loads(out)), ["2.25.1", "2.25.2", "2.25.3"])
        code, out, err = self.run_cli("commitment", "show", "-c", self.config_path, "2.25.3")
        self.assertEqual(code, 0, err)
        self.assertIn("event type 2: 0 committed, 1 failed", out)
        code, out, err = self.run_cli("commitment", "retry", "-c", self.config_path, "2.25.3")
        self.assertEqual(code, 0, err)
        code, out, err = self.run_cli("commitment", "list", "-c", self.config_path, "--state", "dead", "--json")
        self.assertEqual((code, json.loads(out)), (0, []))
        with open(os.path.join(self.folder, "audit.jsonl"), encoding="utf-8") as stream:
            self.assertEqual([json.loads(line)["extra"]["action"] for line in stream], ["commitment_retry"])
