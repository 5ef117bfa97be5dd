"""A route's morph is a promise about every copy it queued (issue 11): storescu -> gateway -> storescp +B.

Each test queues three instances for a route that morphs (``deidentify:
basic``) while its destination is down, changes what the configuration
says (rename, removal or edit of the route and SIGHUP; a restart; a plugin
removed), then starts the destination and reads what ``storescp +B``
actually wrote: the bytes as the gateway sent them. Before the fix the
gateway looked the route up by name when sending, and a renamed or removed
route sent the patient's name. The re-target tests check that ``queue retry
--to`` and ``replay --to`` only send an entry's copy where a route already
sends copies made with the same plan, unless ``--force``. Waits poll state
with a bound; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from twisted.trial.unittest import TestCase

from tests.support import dcmtk
from tests.support.datasets import write_instance
from tests.support.gateway_process import GatewayProcess, dicom_destination
from tests.support.interop import ForwardTestMixin

#: The patient's name and ID the instances carry; no de-identified copy may hold either.
PATIENT_NAME = "DOE^JANE"
PATIENT_ID = "PID-SECRET-42"

#: The route of every test: de-identify what goes to the research archive.
RESEARCH = {"name": "research", "morph": [{"deidentify": "basic"}], "forward": ["research"]}

#: A morph plugin that replaces the patient's name (written into a plugin folder by a test).
SCRUB_PLUGIN = textwrap.dedent(
    '''
    """A test morph plugin: PatientName becomes SCRUBBED."""

    from dataclasses import dataclass

    from twisted.plugin import IPlugin
    from zope.interface import implementer

    from gateway.interfaces import IMorphAction
    from gateway.morph import Change


    @dataclass(frozen=True)
    class Scrub:
        def apply(self, dataset, context):
            dataset.PatientName = "SCRUBBED"
            return [Change("PatientName", None, "SCRUBBED")]


    @implementer(IPlugin, IMorphAction)
    class ScrubPlugin:
        name = "scrub_names"

        def compile(self, arguments):
            return Scrub()


    scrub_names = ScrubPlugin()
    '''
)


def header(path: Path) -> Any:
    """The data set of a received file, without pixel data.

    :param path: a Part 10 file.
    :returns: the pydicom data set.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, stop_before_pixels=True)


class MorphCustodyTestCase(ForwardTestMixin, TestCase):
    """Three identified instances, a research destination that is down, and the checks on what it got."""

    timeout = 240

    def setUp(self) -> None:
        """Three CT instances of one patient, with the name and ID de-identification must remove."""
        source = Path(self.mktemp()).resolve()
        source.mkdir()
        self.originals: list[Path] = []
        for n in range(4):
            path = write_instance(source / f"ct{n}.dcm", ExplicitVRLittleEndian, 16 * 1024, seed=40 + n)
            ds = pydicom.dcmread(path)
            ds.PatientName = PATIENT_NAME
            ds.PatientID = PATIENT_ID
            ds.InstanceNumber = n + 1
            ds.save_as(path, enforce_file_format=True)
            self.originals.append(path)
        self.uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in self.originals]

    def send(self, gateway: GatewayProcess, *paths: Path) -> None:
        """Send files with storescu and require success (the entries are journaled then).

        :param gateway: the gateway.
        :param paths: the files.
        """
        result = dcmtk.storescu(gateway.port, paths, extra=["-xe"])
        self.assertEqual(result.returncode, 0, result.describe())

    def queue_three(self, **overrides: Any) -> tuple[GatewayProcess, dcmtk.Storescp]:
        """Start a gateway with route ``research`` to a research archive that is down; queue three instances.

        :param overrides: more gateway configuration keys.
        :returns: the gateway and the (not yet started) archive.
        """
        scp = self.storescp("research", start=False)
        gateway = self.start_gateway(
            destinations={"research": dicom_destination(scp.port)}, routes=[RESEARCH], **overrides
        )
        self.send(gateway, *self.originals[:3])
        rows = gateway.queue_rows()["research"]
        self.assertEqual(rows["queued"] + rows["in_flight"], 3, rows)
        self.assertFalse(scp.running)
        return gateway, scp

    def reload(self, gateway: GatewayProcess, **config: Any) -> None:
        """Rewrite the configuration, send SIGHUP and wait until it is applied.

        :param gateway: the gateway.
        :param config: top-level keys to replace.
        """
        before = gateway.log_text().count("configuration reloaded")
        gateway.rewrite_config(**config)
        gateway.reload()
        self.wait_for(gateway, lambda: gateway.log_text().count("configuration reloaded") > before, 30, "the reload")

    def received(self, gateway: GatewayProcess, scp: dcmtk.Storescp, count: int) -> dict[str, Path]:
        """Start the archive and wait for ``count`` files; key them by the instance they came from.

        De-identification replaces the SOP Instance UID, so each file is
        matched to its original by Instance Number (kept by the profile).

        :param gateway: the gateway.
        :param scp: the archive (started here when not running).
        :param count: how many files to await.
        :returns: ``{original SOP Instance UID: received file}``.
        """
        if not scp.running:
            scp.start()
        files = self.wait_for(gateway, lambda: len(scp.files()) >= count and scp.files(), 90,
                              f"{count} file(s) at the archive")
        self.wait_for(gateway, lambda: self.idle(gateway), 30, "an idle queue")
        self.assertEqual(len(scp.files()), count)
        by_number = {str(header(p).InstanceNumber): uid for p, uid in zip(self.originals, self.uids)}
        return {by_number[str(header(f).InstanceNumber)]: f for f in files}

    def assert_deidentified(self, path: Path) -> Any:
        """The file holds neither the patient's name nor ID (anywhere in its bytes) and says it was de-identified.

        :param path: a received file.
        :returns: its data set.
        """
        raw = path.read_bytes()
        self.assertNotIn(b"DOE", raw, path)
        self.assertNotIn(PATIENT_ID.encode(), raw, path)
        ds = header(path)
        self.assertEqual(str(ds.PatientName), "")
        self.assertEqual(ds.PatientIdentityRemoved, "YES")
        return ds


class ReloadKeepsTheQueuedMorphTests(MorphCustodyTestCase):
    """A reload changes what later instances get, never the copies already queued."""

    def test_renamed_route_still_deidentifies_what_it_queued(self) -> None:
        """research -> research-v2 (same rules) and SIGHUP: the three queued copies arrive de-identified."""
        gateway, scp = self.queue_three()
        self.reload(gateway, routes=[{**RESEARCH, "name": "research-v2"}])
        files = self.received(gateway, scp, 3)
        self.assertEqual(sorted(files), sorted(self.uids[:3]))
        for path in files.values():
            self.assert_deidentified(path)

    def test_removed_route_still_deidentifies_what_it_queued(self) -> None:
        """The route removed and SIGHUP: the queued copies are still sent, de-identified."""
        gateway, scp = self.queue_three()
        self.reload(gateway, routes=[])
        files = self.received(gateway, scp, 3)
        for path in files.values():
            self.assert_deidentified(path)
        self.assertEqual(gateway.dead_letters(), [])

    def test_edited_route_applies_only_to_instances_received_after_the_reload(self) -> None:
        """A delete added by SIGHUP is not applied to the three queued copies (de-identified as queued); the next one gets it."""
        gateway, scp = self.queue_three()
        edited = {**RESEARCH, "morph": [{"deidentify": "basic"}, {"delete": ["SeriesNumber"]}]}
        self.reload(gateway, routes=[edited])
        self.send(gateway, self.originals[3])
        files = self.received(gateway, scp, 4)
        for uid in self.uids[:3]:
            ds = self.assert_deidentified(files[uid])
            self.assertEqual(str(ds.SeriesNumber), "1", "the queued copy was made with the plan it was queued with")
        later = self.assert_deidentified(files[self.uids[3]])
        self.assertNotIn("SeriesNumber", later)


class RestartKeepsTheQueuedMorphTests(MorphCustodyTestCase):
    """A restart with a changed configuration does not change the queued copies either."""

    def test_restart_with_the_route_renamed_still_deidentifies(self) -> None:
        """Stop, rename the route in the file, start: the journaled plan de-identifies the queued copies."""
        gateway, scp = self.queue_three()
        gateway.stop(timeout=15)
        gateway.rewrite_config(routes=[{**RESEARCH, "name": "renamed-while-stopped"}])
        gateway.start(timeout=60)
        files = self.received(gateway, scp, 3)
        for path in files.values():
            self.assert_deidentified(path)


class PluginGoneTests(MorphCustodyTestCase):
    """A plan whose plugin is gone cannot be rebuilt: dead letters (reason morph), nothing sent."""

    def test_removed_plugin_dead_letters_the_queued_copies(self) -> None:
        """The plugin file and its use are removed (SIGHUP) before the archive is up: three morph dead letters, no file."""
        folder = Path(self.mktemp()).resolve()
        folder.mkdir(mode=0o700)
        plugin = folder / "scrub_names_plugin.py"
        plugin.write_text(SCRUB_PLUGIN)
        route = {"name": "research", "morph": [{"plugin": "scrub_names"}], "forward": ["research"]}
        scp = self.storescp("research", start=False)
        gateway = self.start_gateway(
            destinations={"research": dicom_destination(scp.port)}, routes=[route], plugins={"folders": [str(folder)]}
        )
        self.send(gateway, *self.originals[:3])
        plugin.unlink()
        self.reload(gateway, routes=[RESEARCH])
        scp.start()
        # Either outcome ends the wait: three dead letters, or a file at the archive (the bug).
        self.wait_for(gateway, lambda: len(gateway.dead_letters()) == 3 or scp.files(), 90, "3 dead letters")
        self.assertEqual(scp.files(), [])
        dead = gateway.dead_letters()
        self.assertEqual(len(dead), 3)
        for letter in dead:
            self.assertEqual((letter["destination"], letter["route"]), ("research", "research"))
            self.assertTrue(letter["dead_reason"].startswith("morph: "), letter["dead_reason"])
            self.assertIn("scrub_names", letter["dead_reason"])
        rows = gateway.queue_rows()["research"]
        self.assertEqual((rows["queued"], rows["in_flight"], rows["delivered"]), (0, 0, 0))
        self.assertEqual(scp.files(), [])


class RetargetGuardTests(MorphCustodyTestCase):
    """``queue retry --to`` and ``replay --to`` send an entry's own copy only where its plan is already sent."""

    def test_identified_dead_letter_is_not_retargeted_to_the_research_archive_without_force(self) -> None:
        """Identified copies dead at 'pacs': --to research refused (says why), --to backup allowed, --force sends it."""
        pacs = self.recorder(abstract_syntaxes=[MRImageStorage])
        research, backup = self.storescp("research"), self.storescp("backup")
        gateway = self.start_gateway(
            destinations={
                "pacs": dicom_destination(pacs.port, pacs.ae_title),
                "research": dicom_destination(research.port),
                "backup": dicom_destination(backup.port),
            },
            routes=[
                {"name": "clinical", "forward": ["pacs"]},
                RESEARCH,
                # Sends unmorphed copies to 'backup', but of MR only (none here).
                {"name": "mr-copy", "match": {"Modality": "MR"}, "forward": ["backup"]},
            ],
        )
        self.send(gateway, *self.originals[:3])
        dead = self.wait_for(gateway, lambda: len(d := gateway.dead_letters()) == 3 and d, 60, "3 dead letters at pacs")
        self.received(gateway, research, 3)
        first, second, third = sorted(letter["entry_id"] for letter in dead)

        refused = gateway.cli("queue", "retry", str(first), "--to", "research")
        self.assertEqual(refused.returncode, 1, refused.describe())
        self.assertIn(f"entry {first}: not re-targeted to research", refused.stderr)
        self.assertIn("(no morph)", refused.stderr)
        self.assertIn("routes to research: research (plan ", refused.stderr)
        self.assertIn("--force", refused.stderr)
        self.assertEqual(len(gateway.dead_letters()), 3)

        allowed = gateway.cli("queue", "retry", str(first), "--to", "backup")
        self.assertEqual(allowed.returncode, 0, allowed.describe())
        [copy] = self.wait_for(gateway, lambda: backup.files(), 60, "the re-targeted copy at backup")
        self.assertEqual(str(header(copy).PatientName), PATIENT_NAME)

        forced = gateway.cli("queue", "retry", str(second), "--to", "research", "--force")
        self.assertEqual(forced.returncode, 0, forced.describe())
        files = self.wait_for(gateway, lambda: len(research.files()) == 4 and research.files(), 60,
                              "the forced copy at research")
        names = sorted(str(header(f).PatientName) for f in files)
        self.assertEqual(names, ["", "", "", PATIENT_NAME])
        self.assertEqual([letter["entry_id"] for letter in gateway.dead_letters()], [third])

    def test_deidentified_dead_letter_may_go_where_a_route_sends_the_same_plan(self) -> None:
        """De-identified copies dead at 'research': --to mirror (same plan in another route) needs no --force; --to pacs does."""
        research = self.recorder(abstract_syntaxes=[MRImageStorage])
        mirror, pacs = self.storescp("mirror"), self.storescp("pacs")
        gateway = self.start_gateway(
            destinations={
                "research": dicom_destination(research.port, research.ae_title),
                "mirror": dicom_destination(mirror.port),
                "pacs": dicom_destination(pacs.port),
            },
            routes=[
                RESEARCH,
                {"name": "mirror", "match": {"Modality": "MR"}, "morph": [{"deidentify": "basic"}], "forward": ["mirror"]},
                {"name": "clinical", "match": {"Modality": "MR"}, "forward": ["pacs"]},
            ],
        )
        self.send(gateway, *self.originals[:3])
        dead = self.wait_for(gateway, lambda: len(d := gateway.dead_letters()) == 3 and d, 60, "3 dead letters")
        first = min(letter["entry_id"] for letter in dead)
        self.assertEqual(gateway.cli("queue", "retry", str(first), "--to", "pacs").returncode, 1)
        allowed = gateway.cli("queue", "retry", str(first), "--to", "mirror")
        self.assertEqual(allowed.returncode, 0, allowed.describe())
        [copy] = self.wait_for(gateway, lambda: mirror.files(), 60, "the re-targeted copy at mirror")
        self.assert_deidentified(copy)
        self.assertEqual(pacs.files(), [])

    def test_replay_to_the_research_archive_needs_force(self) -> None:
        """replay sends instances as received: refused to 'research' (de-identified only) unless --force."""
        research = self.storescp("research")
        gateway = self.start_gateway(
            destinations={"research": dicom_destination(research.port)},
            routes=[RESEARCH],
            retention={"keep_delivered": "1h"},
        )
        self.send(gateway, self.originals[0])
        self.received(gateway, research, 1)
        study = str(header(self.originals[0]).StudyInstanceUID)
        refused = gateway.cli("replay", "--study", study, "--to", "research")
        self.assertEqual(refused.returncode, 1, refused.describe())
        self.assertIn("not replayed to research", refused.stderr)
        forced = gateway.cli("replay", "--study", study, "--to", "research", "--force")
        self.assertEqual(forced.returncode, 0, forced.describe())
        files = self.wait_for(gateway, lambda: len(research.files()) == 2 and research.files(), 60, "the replayed copy")
        self.assertEqual(sorted(str(header(f).PatientName) for f in files), ["", PATIENT_NAME])

