"""Tests for :mod:`gateway.prepare`: copies made from the journaled plan, the re-target guard, copy removal."""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import pydicom
from pydicom.uid import ExplicitVRLittleEndian
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from gateway.blocking import SynchronousRunner
from gateway.config.schema import RouteConfig
from gateway.forward_types import PrepareError
from gateway.morph import plan_hash
from gateway.prepare import NO_MORPH, CopyMaker, legacy_plans, remove_copies, retarget_refusal, route_plan
from gateway.queue.interfaces import Entry, NewEntry, PlanRecord
from gateway.queue.memory import MemoryQueueStore

from tests.adapters.test_instance_reads import _OpenCounter
from tests.support.datasets import write_instance
from tests.unit.morph.helpers import compile_text, plan_of
from tests.unit.queue.test_store import make_record


class RemoveCopiesTests(SynchronousTestCase):
    """Only the instance's own copies go; nothing is cached per instance id."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)

    def touch(self, name: str) -> None:
        with open(os.path.join(self.dir, name), "wb"):
            pass

    def test_removes_every_copy_of_the_instance_and_nothing_else(self) -> None:
        """Copies of ``a1`` and ``b2`` go in one call; ``a10``'s copy, a temp file of ``a1`` and an unrelated file stay."""
        for name in ("a1.0123abcd.dcm", "a1.ffff0000.dcm", "b2.0123abcd.dcm", "a10.0123abcd.dcm",
                     "a1.0123abcd.dcm.tmp", "other"):
            self.touch(name)
        self.assertEqual(remove_copies(self.dir, ["a1", "b2"]), 3)
        self.assertEqual(sorted(os.listdir(self.dir)), ["a1.0123abcd.dcm.tmp", "a10.0123abcd.dcm", "other"])

    def test_missing_folder_is_nothing_to_remove(self) -> None:
        """A morphed folder that does not exist (no route morphs) removes nothing."""
        self.assertEqual(remove_copies(os.path.join(self.dir, "absent"), ["a1"]), 0)

    def test_many_instance_ids_do_not_grow_the_pattern_cache(self) -> None:
        """1,000 distinct ids leave fnmatch's compiled-pattern cache as it was (a 2 KB-per-instance growth seen in the soak)."""
        cache = getattr(fnmatch, "_compile_pattern")
        before = cache.cache_info().currsize
        for n in range(1000):
            remove_copies(self.dir, [f"id{n:06d}"])
        self.assertEqual(cache.cache_info().currsize, before)


class CopyMakerTests(SynchronousTestCase):
    """The copy an entry sends is made with the plan journaled with it, never the routes in force (issue 11)."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.source = write_instance(Path(self.dir) / "i1.dcm", ExplicitVRLittleEndian, 1024, seed=3)
        ds = pydicom.dcmread(self.source)
        ds.PatientName = "DOE^JANE"
        ds.save_as(self.source, enforce_file_format=True)
        self.store = MemoryQueueStore()
        self.fetched: list[str] = []
        self.errors: list[str] = []
        self.plugins: dict[str, Any] = {}
        self.morphed = os.path.join(self.dir, "morphed")
        self.maker = CopyMaker(self.definition, lambda: self.plugins, SynchronousRunner(), self.morphed,
                               on_error=self.errors.append)

    def definition(self, digest: str) -> Deferred[str]:
        """The journal's definition, counting the look-ups."""
        self.fetched.append(digest)
        return SynchronousRunner().run(self.store.plan, digest)

    def entry(self, plan: PlanRecord | None, instance_id: str = "i1") -> Entry:
        """Journal one entry of route 'research' with ``plan`` and lease it."""
        record = make_record(instance_id, path=str(self.source))
        self.store.add_instance(record, [NewEntry("research", "A", plan=plan)], 0.0, 0.0)
        (leased,) = self.store.lease("A", 1, 0.0, 30.0)
        return leased

    def plan(self, text: str) -> PlanRecord:
        """The journaled record of a morph written as YAML."""
        morph = plan_of(text)
        return PlanRecord(plan_hash(morph.canonical), morph.canonical)

    def test_unmorphed_plan_sends_the_entry_itself(self) -> None:
        """An entry journaled with NO_MORPH sends the spooled file; nothing is fetched or written."""
        entry = self.entry(NO_MORPH)
        self.assertIs(self.successResultOf(self.maker(entry)), entry)
        self.assertEqual((self.fetched, os.path.exists(self.morphed)), ([], False))

    def test_copy_is_made_with_the_journaled_plan_and_named_by_its_hash(self) -> None:
        """The copy lands at morphed/<instance>.<plan hash>.dcm and is de-identified as journaled."""
        plan = self.plan("- deidentify: basic\n")
        prepared = self.successResultOf(self.maker(self.entry(plan)))
        self.assertEqual(prepared.path, os.path.join(self.morphed, f"i1.{plan.plan_hash}.dcm"))
        self.assertEqual(str(pydicom.dcmread(prepared.path).PatientName), "")
        self.assertNotEqual(prepared.instance.sop_instance_uid, str(pydicom.dcmread(self.source).SOPInstanceUID))
        self.assertEqual(prepared.instance.sop_instance_uid, str(pydicom.dcmread(prepared.path).SOPInstanceUID))

    def test_entry_without_a_plan_is_a_morph_failure(self) -> None:
        """An entry journaled with no plan (an old journal, route gone) raises PrepareError: dead letter, not sent."""
        failure = self.failureResultOf(self.maker(self.entry(None)), PrepareError)
        self.assertIn("no morph plan was journaled", str(failure.value))
        self.assertIn("'research'", str(failure.value))
        self.assertEqual(self.errors, ["research"])

    def test_plan_whose_plugin_is_gone_is_a_morph_failure(self) -> None:
        """A plugin plan rebuilds while the plugin is installed; once it is gone (a reload), PrepareError."""
        from tests.unit.morph.test_journaled import _Stamp

        self.plugins = {"stamp": _Stamp()}
        morph, _ = compile_text("- {plugin: stamp, text: hi}\n", plugins=self.plugins)
        assert morph is not None
        plan = PlanRecord(plan_hash(morph.canonical), morph.canonical)
        made = self.successResultOf(self.maker(self.entry(plan)))
        self.assertEqual(str(pydicom.dcmread(made.path).ImageComments), "hi")
        self.plugins = {}
        failure = self.failureResultOf(self.maker(self.entry(plan, "i2")), PrepareError)
        self.assertIn("cannot be rebuilt", str(failure.value))
        self.assertIn("stamp", str(failure.value))

    def test_plan_missing_from_the_journal_is_a_morph_failure(self) -> None:
        """A hash the journal does not know cannot be made into a copy."""
        entry = dataclasses.replace(self.entry(NO_MORPH), plan_hash="f" * 64)
        failure = self.failureResultOf(self.maker(entry), PrepareError)
        self.assertIn("not in the journal", str(failure.value))

    def test_a_plan_is_fetched_once_per_set_of_plugins(self) -> None:
        """Two entries of one plan read it once; a reload (new plugin set) reads it again."""
        plan = self.plan("- delete: [PatientName]\n")
        self.successResultOf(self.maker(self.entry(plan)))
        self.successResultOf(self.maker(self.entry(plan, "i2")))
        self.assertEqual(self.fetched, [plan.plan_hash])
        self.plugins = {}
        self.successResultOf(self.maker(self.entry(plan, "i3")))
        self.assertEqual(self.fetched, [plan.plan_hash, plan.plan_hash])

    def test_copy_is_not_read_back_and_the_source_is_opened_twice(self) -> None:
        """The source: the header read and the tail copy (3 opens before); the copy: none (2 before).

        The header the plan produced is what the copy's record is built from,
        and the meta walk runs on the header read's open file.
        """
        plan = self.plan("- deidentify: basic\n")
        entry = self.entry(plan)
        counter = _OpenCounter()
        with mock.patch("builtins.open", counter.builtin_open), mock.patch("os.open", counter.os_open):
            prepared = self.successResultOf(self.maker(entry))
        self.assertEqual(counter.reads_of(str(self.source)), 2)
        self.assertEqual(counter.reads_of(prepared.path), 0)
        self.assertEqual(prepared.instance.sop_instance_uid, str(pydicom.dcmread(prepared.path).SOPInstanceUID))
        self.assertEqual(prepared.instance.patient_id, str(pydicom.dcmread(prepared.path).PatientID))


class RetargetRefusalTests(SynchronousTestCase):
    """retarget_refusal: allowed only where a route sends copies with the entry's plan."""

    def test_refusal_names_the_plans_and_the_routes(self) -> None:
        """Refused: the message has the entry's plan, each route to the target with its plan, and --force."""
        research = RouteConfig("research", ("res",), morph=plan_of("- deidentify: basic\n"))
        routes = [RouteConfig("clinical", ("pacs",)), research]
        digest = route_plan(research).plan_hash
        self.assertIsNone(retarget_refusal(routes, digest, "res"))
        self.assertIsNone(retarget_refusal(routes, NO_MORPH.plan_hash, "pacs"))
        message = retarget_refusal(routes, NO_MORPH.plan_hash, "res")
        assert message is not None
        self.assertIn(f"plan {NO_MORPH.plan_hash[:16]} (no morph)", message)
        self.assertIn(f"routes to res: research (plan {digest[:16]})", message)
        self.assertIn("--force", message)
        self.assertIsNotNone(retarget_refusal(routes, digest, "pacs"))
        self.assertIn("no journaled plan", retarget_refusal(routes, None, "pacs") or "")
        self.assertIn("routes to nowhere: none", retarget_refusal(routes, digest, "nowhere") or "")


class LegacyPlanTests(SynchronousTestCase):
    """legacy_plans: what entries journaled before plans adopt at the first start (schema 2 -> 3)."""

    def test_each_forwarding_route_gives_its_plan_and_replay_is_unmorphed(self) -> None:
        """A route's current plan by name; ``replay`` (never morphed) gets NO_MORPH unless a route has that name."""
        research = RouteConfig("research", ("res",), morph=plan_of("- deidentify: basic\n"))
        plans = legacy_plans([RouteConfig("clinical", ("pacs",)), research, RouteConfig("bin", (), drop=True)])
        self.assertEqual(plans, {"clinical": NO_MORPH, "research": route_plan(research), "replay": NO_MORPH})
        named = RouteConfig("replay", ("res",), morph=plan_of("- deidentify: basic\n"))
        self.assertEqual(legacy_plans([named])["replay"], route_plan(named))

