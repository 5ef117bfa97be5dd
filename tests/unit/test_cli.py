"""The ``dicom-gateway`` queue, find, replay and echo subcommands, run as a subprocess.

Each test writes a configuration in a temporary folder, fills its SQLite
journal directly with :class:`~gateway.queue.sqlite.SqliteQueueStore` (the
state a running gateway would have left), then runs
``python -m gateway ...`` against it and checks the output, the exit status
and the journal afterwards. The gateway itself never runs here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from gateway.config.load import load_config
from gateway.queue.interfaces import EntryState, InstanceRecord, NewEntry
from gateway.queue.sqlite import SqliteQueueStore
from gateway.prepare import NO_MORPH, route_plan

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIG = """\
ae_title: GW
listen:
  - host: 127.0.0.1
    port: 0
spool: spool
destinations:
  pacs: {ae_title: PACS, host: 127.0.0.1, port: 1}
  backup: {ae_title: BACKUP, host: 127.0.0.1, port: 1}
  archive: {folder: out}
routes:
  - {name: everything, forward: [pacs, archive]}
  - {name: spare, forward: [backup]}
"""


class CliTestCase(SynchronousTestCase):
    """A configuration, its journal and a way to run the command line against them."""

    #: The configuration file's text.
    config_text = CONFIG

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.config_path = os.path.join(self.tmp, "gateway.yaml")
        with open(self.config_path, "w") as f:
            f.write(self.config_text)
        self.config = load_config(self.config_path)
        os.makedirs(self.config.spool.path)
        self.store = SqliteQueueStore(self.config.queue_path)
        self.addCleanup(self.store.close)
        self.now = time.time()

    def instance(
        self,
        instance_id: str,
        destinations: tuple[str, ...] = ("pacs", "archive"),
        study: str = "1.2.3",
        keep_file: bool = True,
    ) -> tuple[int, ...]:
        """Journal an instance (with a spool file unless ``keep_file`` is false) and return its entry ids."""
        path = os.path.join(self.config.spool.path, instance_id + ".dcm")
        if keep_file:
            with open(path, "wb") as f:
                f.write(b"x")
        record = InstanceRecord(
            instance_id=instance_id,
            path=path,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            sop_instance_uid=f"1.2.3.{instance_id}",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            size=1,
            sha256=instance_id,
            received_at=self.now - 120,
            correlation_id="c0ffee",
            study_instance_uid=study,
            patient_id="PID-" + instance_id,
            accession_number="ACC-" + instance_id,
            calling_ae_title="CT01",
        )
        # Journaled as the intake does: with the route's plan (no morph here).
        entries = [NewEntry("everything", d, plan=NO_MORPH) for d in destinations]
        result = self.store.add_instance(record, entries, self.now - 120, 0)
        return result.entry_ids

    def dead(self, entry_id: int, destination: str, reason: str = "0xA900 SOP class rejected") -> None:
        """Lease the destination's entries and dead-letter ``entry_id``."""
        leased = self.store.lease(destination, 100, self.now, 600)
        for entry in leased:
            if entry.entry_id == entry_id:
                self.store.dead_letter(entry_id, reason, self.now)
            else:
                self.store.release([entry.entry_id])

    def run_cli(self, *args: str) -> tuple[int, str, str]:
        """Run ``python -m gateway ARGS`` and return (exit status, stdout, stderr)."""
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        done = subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=env,
            timeout=60,
        )
        return done.returncode, done.stdout, done.stderr

    def queue(self, *args: str) -> tuple[int, str, str]:
        """Run ``dicom-gateway queue ARGS -c CONFIG``."""
        return self.run_cli("queue", *args, "-c", self.config_path)


class QueueListTests(CliTestCase):
    """``queue list``: per destination figures, text and JSON, and the dead letters."""

    def test_list_text_shows_every_configured_destination(self) -> None:
        """The table has a row per configured destination with its queued count."""
        self.instance("a")
        self.instance("b")
        code, out, err = self.queue("list")
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertTrue(lines[0].startswith("DESTINATION"))
        rows = {line.split()[0]: line.split() for line in lines[1:]}
        self.assertEqual(set(rows), {"pacs", "backup", "archive"})
        self.assertEqual(rows["pacs"][1], "2")
        self.assertEqual(rows["backup"][1], "0")
        self.assertIn("active", rows["pacs"])

    def test_list_json_has_counts_and_oldest_age(self) -> None:
        """``--json`` gives one object per destination with queued, dead and the oldest age."""
        (pacs, _) = self.instance("a")
        self.instance("b")
        self.dead(pacs, "pacs")
        code, out, err = self.queue("list", "--json")
        self.assertEqual(code, 0, err)
        rows = {r["destination"]: r for r in json.loads(out)}
        self.assertEqual((rows["pacs"]["queued"], rows["pacs"]["dead"]), (1, 1))
        self.assertEqual(rows["archive"]["queued"], 2)
        self.assertGreaterEqual(rows["archive"]["oldest_age_seconds"], 100)
        self.assertIsNone(rows["backup"]["oldest_age_seconds"])

    def test_list_dead_shows_reason(self) -> None:
        """``--dead`` lists each dead letter with its destination and reason, and a count."""
        (pacs, _) = self.instance("a")
        self.dead(pacs, "pacs", "0xA900 SOP class rejected")
        code, out, err = self.queue("list", "--dead")
        self.assertEqual(code, 0, err)
        self.assertIn("0xA900 SOP class rejected", out)
        self.assertIn(f"{pacs:>8}  pacs", out)
        self.assertIn("1 dead letter(s)", out)

    def test_list_dead_json_filtered_by_destination(self) -> None:
        """``--dead --json --destination`` gives only that destination's dead letters as entry objects."""
        (pacs, archive) = self.instance("a")
        self.dead(pacs, "pacs")
        self.dead(archive, "archive", "folder refused the UID")
        code, out, err = self.queue("list", "--dead", "--json", "--destination", "archive")
        self.assertEqual(code, 0, err)
        (entry,) = json.loads(out)
        self.assertEqual((entry["entry_id"], entry["state"], entry["dead_reason"]), (archive, "dead", "folder refused the UID"))

    def test_list_works_on_an_empty_journal(self) -> None:
        """A fresh journal lists every destination with zeros."""
        code, out, err = self.queue("list", "--json")
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted((r["destination"], r["queued"]) for r in json.loads(out)), [("archive", 0), ("backup", 0), ("pacs", 0)])


class QueueShowTests(CliTestCase):
    """``queue show``."""

    def test_show_prints_entry_and_history(self) -> None:
        """An entry is shown with its state, destination, instance and dead-letter reason."""
        (pacs, _) = self.instance("a")
        self.dead(pacs, "pacs", "0xA900 SOP class rejected")
        code, out, err = self.queue("show", str(pacs))
        self.assertEqual(code, 0, err)
        self.assertIn(f"entry {pacs}: dead for pacs (route everything)", out)
        self.assertIn("1.2.3.a", out)
        self.assertIn("dead letter  0xA900 SOP class rejected", out)

    def test_show_json(self) -> None:
        """``show --json`` gives the entry as an object with its instance."""
        (pacs, _) = self.instance("a")
        code, out, err = self.queue("show", str(pacs), "--json")
        self.assertEqual(code, 0, err)
        data = json.loads(out)
        self.assertEqual((data["entry_id"], data["state"], data["instance"]["sop_instance_uid"]), (pacs, "queued", "1.2.3.a"))

    def test_show_unknown_entry_is_a_clear_error(self) -> None:
        """An unknown entry id prints 'no entry N' on stderr and exits 1."""
        code, out, err = self.queue("show", "999")
        self.assertEqual(code, 1)
        self.assertIn("no entry 999", err)
        self.assertNotIn("Traceback", err)


class QueueRetryPurgeTests(CliTestCase):
    """``queue retry`` and ``queue purge`` on dead letters."""

    def test_retry_puts_a_dead_letter_at_the_tail(self) -> None:
        """A retried dead letter is QUEUED again behind the entries already queued."""
        (pacs, _) = self.instance("a")
        self.instance("b")
        self.dead(pacs, "pacs")
        code, out, err = self.queue("retry", str(pacs))
        self.assertEqual(code, 0, err)
        self.assertIn(f"entry {pacs}: queued again as", out)
        queued = self.store.entries(destination="pacs", state=EntryState.QUEUED)
        self.assertEqual([e.instance.instance_id for e in queued], ["b", "a"])
        self.assertEqual(self.store.entries(destination="pacs", state=EntryState.DEAD), [])

    def test_retry_to_another_destination_retargets(self) -> None:
        """``--to`` moves the dead letter to another configured destination."""
        (pacs, _) = self.instance("a")
        self.dead(pacs, "pacs")
        code, out, err = self.queue("retry", str(pacs), "--to", "backup")
        self.assertEqual(code, 0, err)
        self.assertIn("for backup", out)
        (entry,) = self.store.entries(destination="backup")
        self.assertEqual((entry.instance.instance_id, entry.state), ("a", EntryState.QUEUED))

    def test_retry_to_unknown_destination_is_refused(self) -> None:
        """``--to`` an unconfigured destination is refused, naming the configured ones, and nothing changes."""
        (pacs, _) = self.instance("a")
        self.dead(pacs, "pacs")
        code, out, err = self.queue("retry", str(pacs), "--to", "nowhere")
        self.assertNotEqual(code, 0)
        self.assertIn("unknown destination 'nowhere'", err)
        self.assertIn("pacs", err)
        self.assertEqual(self.store.get(pacs).state, EntryState.DEAD)

    def test_retry_all_of_one_destination(self) -> None:
        """``--all --destination`` requeues that destination's dead letters only."""
        (pacs_a, archive_a) = self.instance("a")
        (pacs_b, _) = self.instance("b")
        self.dead(pacs_a, "pacs")
        self.dead(pacs_b, "pacs")
        self.dead(archive_a, "archive")
        code, out, err = self.queue("retry", "--all", "--destination", "pacs")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.store.entries(destination="pacs", state=EntryState.DEAD), [])
        self.assertEqual(len(self.store.entries(destination="archive", state=EntryState.DEAD)), 1)

    def test_retry_of_unknown_or_live_entry_exits_1(self) -> None:
        """Retrying an id that is not a dead letter (unknown, or queued) says so and exits 1."""
        (pacs, _) = self.instance("a")
        code, out, err = self.queue("retry", "999", str(pacs))
        self.assertEqual(code, 1)
        self.assertIn("entry 999: not a dead letter", err)
        self.assertIn(f"entry {pacs}: not a dead letter", err)
        self.assertEqual(self.store.get(pacs).state, EntryState.QUEUED)

    def test_retry_with_nothing_to_retry_exits_1(self) -> None:
        """No ids and no --all is an error, not a silent success."""
        code, out, err = self.queue("retry")
        self.assertEqual(code, 1)
        self.assertIn("nothing to retry", err)

    def test_purge_deletes_a_dead_letter(self) -> None:
        """A purged dead letter is gone from the journal."""
        (pacs, _) = self.instance("a")
        self.dead(pacs, "pacs")
        code, out, err = self.queue("purge", str(pacs))
        self.assertEqual(code, 0, err)
        self.assertIn(f"entry {pacs}: purged", out)
        self.assertRaises(KeyError, self.store.get, pacs)

    def test_purge_unknown_entry_exits_1(self) -> None:
        """Purging an unknown id (or one that is not dead) prints a clear error and exits 1."""
        (pacs, _) = self.instance("a")
        code, out, err = self.queue("purge", "999", str(pacs))
        self.assertEqual(code, 1)
        self.assertIn("entry 999: not a dead letter", err)
        self.assertEqual(self.store.get(pacs).state, EntryState.QUEUED)


class QueueAuditTests(CliTestCase):
    """Every ``queue`` action is appended to the configured audit file with the local OS user (issue 11)."""

    def setUp(self) -> None:
        super().setUp()
        with open(self.config_path, "a") as f:
            f.write("audit: {file: audit.jsonl}\n")
        self.audit_path = os.path.join(self.tmp, "audit.jsonl")
        import pwd

        self.user = pwd.getpwuid(os.getuid()).pw_name

    def records(self) -> list[dict[str, object]]:
        """The audit file's records."""
        with open(self.audit_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def test_retry_retarget_purge_pause_resume_are_audited_with_the_os_user(self) -> None:
        """Each action is one record: who (the OS user), from where (local), which entries or destination."""
        (pacs_a, _) = self.instance("a")
        (pacs_b, _) = self.instance("b")
        (pacs_c, _) = self.instance("c")
        (dead, _) = self.instance("d")
        for entry_id in (pacs_a, pacs_b, pacs_c, dead):
            self.dead(entry_id, "pacs")
        self.assertEqual(self.queue("retry", str(pacs_a), str(pacs_b))[0], 0)
        self.assertEqual(self.queue("purge", str(pacs_c))[0], 0)
        self.assertEqual(self.queue("retry", str(dead), "--to", "backup")[0], 0)
        self.assertEqual(self.queue("pause", "pacs")[0], 0)
        self.assertEqual(self.queue("resume", "pacs")[0], 0)
        records = self.records()
        self.assertEqual(
            [(r["extra"]["action"], r["action"]) for r in records],  # type: ignore[index]
            [("retry", "U"), ("purge", "D"), ("retarget", "U"), ("pause", "E"), ("resume", "E")],
        )
        for record in records:
            self.assertEqual(record["participants"][0], {"user_id": self.user, "network_access_point": "local", "requestor": True})  # type: ignore[index]
            self.assertEqual(record["extra"]["via"], "cli")  # type: ignore[index]
        self.assertEqual(records[0]["extra"]["entry_ids"], f"{pacs_a},{pacs_b}")  # type: ignore[index]
        self.assertEqual(records[1]["extra"]["entry_ids"], str(pacs_c))  # type: ignore[index]
        self.assertEqual((records[2]["extra"]["entry_ids"], records[2]["extra"]["to"]), (str(dead), "backup"))  # type: ignore[index]
        self.assertEqual(records[3]["extra"]["destination"], "pacs")  # type: ignore[index]

    def test_replay_is_audited_as_a_retarget_of_the_new_entries(self) -> None:
        """``replay --to`` writes one record with the OS user, the target and the new entry ids."""
        self.instance("a", study="1.2.3")
        code, _out, err = self.run_cli("replay", "-c", self.config_path, "--study", "1.2.3", "--to", "backup")
        self.assertEqual(code, 0, err)
        (record,) = self.records()
        (entry,) = self.store.entries(destination="backup")
        self.assertEqual((record["extra"]["action"], record["extra"]["to"], record["extra"]["entry_ids"]),  # type: ignore[index]
                         ("replay", "backup", str(entry.entry_id)))
        self.assertEqual(record["participants"][0]["user_id"], self.user)  # type: ignore[index]

    def test_refused_actions_are_audited_as_failures(self) -> None:
        """A retry of an entry that is not a dead letter, or a pause of an unknown destination, is a minor failure record."""
        self.queue("retry", "999")
        self.queue("pause", "nowhere")
        retry, pause = self.records()
        self.assertEqual((retry["outcome"], retry["extra"]["entry_ids"]), (4, "999"))  # type: ignore[index]
        self.assertEqual((pause["outcome"], pause["extra"]["destination"]), (4, "nowhere"))  # type: ignore[index]

    def test_records_are_appended_to_the_gateways_file(self) -> None:
        """The command appends after the records the gateway wrote, never truncating or rotating them."""
        with open(self.audit_path, "w") as f:
            f.write('{"event":"written by the gateway"}\n')
        os.chmod(self.audit_path, 0o600)
        self.queue("pause", "pacs")
        records = self.records()
        self.assertEqual(records[0], {"event": "written by the gateway"})
        self.assertEqual(records[1]["extra"]["action"], "pause")  # type: ignore[index]

    def test_listing_is_not_audited(self) -> None:
        """Reading the queue changes nothing and writes no record."""
        self.queue("list")
        self.queue("list", "--dead")
        self.assertFalse(os.path.exists(self.audit_path))


class ApiCommandTests(CliTestCase):
    """``dicom-gateway api`` and ``reload`` read the API token like the gateway writes it."""

    def test_without_a_token_file_the_command_says_to_start_the_gateway(self) -> None:
        """Before the gateway's first start there is no generated token: a clear message, exit 1."""
        with open(self.config_path, "a") as f:
            f.write("http: {port: 1}\n")
        code, out, err = self.run_cli("reload", "-c", self.config_path)
        self.assertEqual(code, 1)
        self.assertIn("no admin API token", err)
        self.assertIn("http-token does not exist yet", err)


class QueuePauseTests(CliTestCase):
    """``queue pause`` and ``queue resume``."""

    def test_pause_and_resume_show_in_stats_and_list(self) -> None:
        """Pause marks the destination paused (journal stats and the list's STATE column); resume clears it."""
        code, out, err = self.queue("pause", "pacs")
        self.assertEqual(code, 0, err)
        self.assertIn("pacs: paused", out)
        self.assertTrue(self.store.stats(self.now)["pacs"].paused)
        code, out, _ = self.queue("list")
        self.assertIn("paused", [line.split() for line in out.splitlines() if line.startswith("pacs")][0])
        code, out, err = self.queue("resume", "pacs")
        self.assertEqual(code, 0, err)
        self.assertFalse(self.store.stats(self.now)["pacs"].paused)

    def test_paused_destination_leases_nothing(self) -> None:
        """While paused, entries keep queueing but none is leased."""
        self.queue("pause", "pacs")
        self.instance("a")
        self.assertEqual(self.store.lease("pacs", 10, self.now, 600), [])

    def test_pause_unknown_destination_is_refused(self) -> None:
        """Pausing a destination that is not configured is refused with a message."""
        code, out, err = self.queue("pause", "nowhere")
        self.assertNotEqual(code, 0)
        self.assertIn("unknown destination 'nowhere'", err)


class FindTests(CliTestCase):
    """``find``: where did it go."""

    def setUp(self) -> None:
        super().setUp()
        (self.pacs, self.archive) = self.instance("a", study="1.2.3")
        self.instance("b", study="9.9.9")
        self.store.lease("archive", 10, self.now, 600)
        self.store.complete([self.archive], self.now)
        self.dead(self.pacs, "pacs", "0xA900 SOP class rejected")

    def find(self, *args: str) -> tuple[int, str, str]:
        return self.run_cli("find", "-c", self.config_path, *args)

    def test_find_by_study_shows_state_per_destination(self) -> None:
        """By study: the instance, delivered to one destination and dead-lettered (with why) at the other."""
        code, out, err = self.find("--study", "1.2.3")
        self.assertEqual(code, 0, err)
        self.assertIn("1.2.3.a", out)
        self.assertNotIn("1.2.3.b", out)
        self.assertRegex(out, r"-> archive\s+\[\d+\] delivered ")
        self.assertRegex(out, r"-> pacs\s+\[\d+\] dead-lettered: 0xA900 SOP class rejected")

    def test_find_by_accession_patient_and_sop_instance(self) -> None:
        """Accession number, patient id and SOP Instance UID each find the one matching instance."""
        for args in (("--accession", "ACC-b"), ("--patient-id", "PID-b"), ("--sop-instance", "1.2.3.b")):
            code, out, err = self.find(*args)
            self.assertEqual(code, 0, (args, err))
            self.assertIn("1.2.3.b", out)
            self.assertNotIn("1.2.3.a ", out)

    def test_find_json(self) -> None:
        """``--json`` gives each instance with its entries."""
        code, out, err = self.find("--study", "9.9.9", "--json")
        self.assertEqual(code, 0, err)
        (result,) = json.loads(out)
        self.assertEqual(result["instance"]["sop_instance_uid"], "1.2.3.b")
        self.assertEqual(sorted(e["destination"] for e in result["entries"]), ["archive", "pacs"])

    def test_find_nothing_exits_1(self) -> None:
        """No match prints a clear line and exits 1."""
        code, out, err = self.find("--study", "4.4.4")
        self.assertEqual(code, 1)
        self.assertIn("no instance on record matches", out)

    def test_find_without_criterion_is_refused(self) -> None:
        """With no criterion the command says what to give."""
        code, out, err = self.find()
        self.assertEqual(code, 2)
        self.assertIn("--study", err)


class ReplayTests(CliTestCase):
    """``replay --study --to``."""

    def test_replay_queues_kept_instances_again(self) -> None:
        """Each instance of the study whose file is kept gets a new queued entry for the destination."""
        self.instance("a", study="1.2.3")
        self.instance("b", study="1.2.3")
        code, out, err = self.run_cli("replay", "-c", self.config_path, "--study", "1.2.3", "--to", "backup")
        self.assertEqual(code, 0, err)
        self.assertIn("2 instance(s) of study 1.2.3 queued for backup", out)
        self.assertEqual(
            sorted(e.instance.instance_id for e in self.store.entries(destination="backup", state=EntryState.QUEUED)),
            ["a", "b"],
        )

    def test_replay_of_instances_not_kept_says_so(self) -> None:
        """Instances whose files are gone are not queued; the command says retention would have kept them and exits 1."""
        self.instance("a", study="1.2.3", keep_file=False)
        code, out, err = self.run_cli("replay", "-c", self.config_path, "--study", "1.2.3", "--to", "backup")
        self.assertEqual(code, 1)
        self.assertIn("0 instance(s)", out)
        self.assertIn("keep_delivered", err)
        self.assertEqual(self.store.entries(destination="backup"), [])

    def test_replay_to_unknown_destination_is_refused(self) -> None:
        """Replaying to an unconfigured destination is refused before touching the journal."""
        self.instance("a", study="1.2.3")
        code, out, err = self.run_cli("replay", "-c", self.config_path, "--study", "1.2.3", "--to", "nowhere")
        self.assertNotEqual(code, 0)
        self.assertIn("unknown destination 'nowhere'", err)


class RetargetGuardTests(CliTestCase):
    """``--to`` sends the entry's own copy only where a route sends copies with the same plan (issue 11)."""

    config_text = CONFIG.replace(
        "  archive: {folder: out}\n", "  archive: {folder: out}\n  research: {ae_title: RES, host: 127.0.0.1, port: 1}\n"
    ) + "  - {name: research, forward: [research], morph: [{deidentify: basic}]}\n"

    def test_retry_to_a_destination_of_another_plan_is_refused_without_force(self) -> None:
        """An identified copy is not re-targeted to a de-identifying destination; the refusal names both plans; --force sends it."""
        (pacs, _) = self.instance("a")
        self.dead(pacs, "pacs")
        code, out, err = self.queue("retry", str(pacs), "--to", "research")
        self.assertEqual(code, 1)
        self.assertIn(f"entry {pacs}: not re-targeted to research", err)
        self.assertIn(f"plan {NO_MORPH.plan_hash[:16]} (no morph)", err)
        research = route_plan(self.config.routes[-1]).plan_hash
        self.assertIn(f"routes to research: research (plan {research[:16]})", err)
        self.assertIn("--force", err)
        self.assertEqual(self.store.entries(destination="research"), [])
        self.assertEqual(self.store.get(pacs).state, EntryState.DEAD)
        code, out, err = self.queue("retry", str(pacs), "--to", "research", "--force")
        self.assertEqual(code, 0, err)
        (entry,) = self.store.entries(destination="research")
        self.assertEqual((entry.state, entry.plan_hash), (EntryState.QUEUED, NO_MORPH.plan_hash))

    def test_retry_to_a_destination_with_the_same_plan_needs_no_force(self) -> None:
        """An unmorphed copy may go to 'backup', which route 'spare' feeds unmorphed."""
        (pacs, _) = self.instance("a")
        self.dead(pacs, "pacs")
        code, out, err = self.queue("retry", str(pacs), "--to", "backup")
        self.assertEqual(code, 0, err)

    def test_replay_to_a_de_identifying_destination_is_refused_without_force(self) -> None:
        """replay sends instances as received: refused to 'research' (only de-identified there) unless --force."""
        self.instance("a", study="1.2.3")
        code, out, err = self.run_cli("replay", "-c", self.config_path, "--study", "1.2.3", "--to", "research")
        self.assertEqual(code, 1)
        self.assertIn("not replayed to research", err)
        self.assertEqual(self.store.entries(destination="research"), [])
        code, out, err = self.run_cli("replay", "-c", self.config_path, "--study", "1.2.3", "--to", "research", "--force")
        self.assertEqual(code, 0, err)
        (entry,) = self.store.entries(destination="research")
        self.assertEqual(entry.plan_hash, NO_MORPH.plan_hash)


class EchoTests(CliTestCase):
    """``echo DEST -c CONFIG``."""

    def test_echo_to_a_folder_destination_is_refused(self) -> None:
        """A folder destination cannot be echoed: a message, a non-zero exit, no traceback."""
        code, out, err = self.run_cli("echo", "archive", "-c", self.config_path)
        self.assertNotEqual(code, 0)
        self.assertIn("archive is a folder destination", err)
        self.assertNotIn("Traceback", err)

    def test_echo_to_a_configured_destination_connects_as_its_worker_does(self) -> None:
        """``echo DEST`` opens the association with the worker's ``connect_dicom`` (its TLS settings included), not plain TCP."""
        from twisted.internet.defer import Deferred, fail

        from gateway import associate, cli, forward

        calls: list[object] = []

        def connect_dicom(reactor: object, destination: object, proposals: object) -> Deferred[object]:
            calls.append(destination)
            return fail(ConnectionRefusedError("refused"))

        self.patch(forward, "connect_dicom", connect_dicom)
        self.patch(associate, "connect_tcp", lambda *a, **k: self.fail("echo DEST must not use plain connect_tcp"))
        args = cli._parser().parse_args(["echo", "pacs", "-c", self.config_path])
        done = Deferred.fromCoroutine(cli._echo(object(), args))
        failure = self.failureResultOf(done, SystemExit)
        self.assertEqual(failure.value.code, 1)
        self.assertEqual(calls, [self.config.destination("pacs")])

    def test_echo_unknown_destination_is_refused(self) -> None:
        """An unconfigured destination name is refused with the configured names."""
        code, out, err = self.run_cli("echo", "nowhere", "-c", self.config_path)
        self.assertNotEqual(code, 0)
        self.assertIn("unknown destination 'nowhere'", err)

    def test_queue_with_invalid_config_exits_1(self) -> None:
        """An invalid configuration is reported and the queue command exits 1."""
        with open(self.config_path, "a") as f:
            f.write("bogus_key: 1\n")
        code, out, err = self.queue("list")
        self.assertEqual(code, 1)
        self.assertIn("invalid configuration", err)

    def test_queue_list_before_the_gateway_ever_ran(self) -> None:
        """With no spool folder yet (the gateway never started), ``queue list`` shows every destination empty."""
        shutil.rmtree(self.config.spool.path)
        code, out, err = self.queue("list")
        self.assertNotIn("Traceback", err)
        self.assertEqual(code, 0, err)
        for destination in self.config.destinations:
            self.assertIn(destination.name, out)
