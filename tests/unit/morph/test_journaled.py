"""The journaled form of a morph plan (issue 11): canonical, versioned, hashed, rebuilt by the same compiler."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Any

from pydicom.dataset import Dataset
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gateway.interfaces import IMorphAction
from gateway.config.morph import compile_canonical
from gateway.morph import (
    EMPTY_PLAN,
    PLAN_VERSION,
    Change,
    PlanError,
    plan_hash,
)

from tests.unit.morph.helpers import CONTEXT, compile_text, plan_of

#: One of each built-in action, as a route would write them.
EVERY_ACTION = """\
- set: {InstitutionName: Example, PatientName: "{PatientID}^R", SliceThickness: 1.50}
- delete: [PatientBirthDate, {private: all}, "(0009,xxxx)", {group: "0019"}]
- replace: {tag: AccessionNumber, pattern: "^0+", with: ""}
- copy: {from: PatientID, to: OtherPatientIDs}
- uid_remap: {salt: s1, root: "2.25", tags: [StudyInstanceUID]}
- hash: {tag: PatientID, salt: s2, length: 12, encoding: base32}
- date_shift: {salt: s3, max_days: 30}
- deidentify: {profile: basic, options: [retain_uids], salt: s4}
- deidentify: basic
"""


@implementer(IMorphAction)
class _Stamp:
    """A morph plugin whose action writes ImageComments."""

    name = "stamp"

    def compile(self, arguments: dict[str, Any]) -> Any:
        """An action writing ``arguments['text']``."""
        text = str(arguments["text"])

        class Action:
            def apply(self, dataset: Dataset, context: Any) -> list[Change]:
                dataset.ImageComments = text
                return [Change("ImageComments", None, text)]

        return Action()


class CanonicalFormTests(SynchronousTestCase):
    """What the journal stores for a route's morph."""

    def test_form_is_versioned_sorted_and_without_whitespace(self) -> None:
        """The text is {"actions":[...],"v":1}: keys sorted, no spaces, the YAML vocabulary (no class names)."""
        canonical = plan_of("- replace: {with: X, tag: AccessionNumber, pattern: a}\n").canonical
        self.assertEqual(
            canonical, '{"actions":[{"replace":{"pattern":"a","tag":"AccessionNumber","with":"X"}}],"v":1}'
        )
        self.assertEqual(json.loads(canonical)["v"], PLAN_VERSION)
        self.assertNotIn("Action", plan_of(EVERY_ACTION).canonical)

    def test_key_order_and_yaml_spelling_do_not_change_the_form(self) -> None:
        """Flow or block style, quoting and mapping key order give the same text and hash."""
        one = plan_of('- hash: {tag: PatientID, salt: "k", length: 8}\n- deidentify: {profile: basic, salt: z}\n')
        two = plan_of("- hash:\n    length: 8\n    salt: k\n    tag: 'PatientID'\n- deidentify:\n    salt: z\n    profile: basic\n")
        self.assertEqual(one.canonical, two.canonical)
        self.assertEqual(plan_hash(one.canonical), plan_hash(two.canonical))

    def test_set_keeps_the_order_of_its_pairs(self) -> None:
        """set is a list of pairs: a template may read what an earlier pair set, so its order is meaning."""
        first = plan_of('- set: {PatientName: X, PatientID: "{PatientName}"}\n')
        second = plan_of('- set: {PatientID: "{PatientName}", PatientName: X}\n')
        self.assertIn('"set":[["PatientName","X"],["PatientID","{PatientName}"]]', first.canonical)
        self.assertNotEqual(first.canonical, second.canonical)
        ds = Dataset()
        ds.PatientName = "OLD"
        compile_canonical(first.canonical, {}).apply(ds, CONTEXT)
        self.assertEqual((str(ds.PatientName), str(ds.PatientID)), ("X", "X"))

    def test_a_changed_definition_changes_the_hash(self) -> None:
        """Adding an action, or changing one argument, gives another plan."""
        hashes = {
            plan_hash(plan_of(text).canonical)
            for text in ("- deidentify: basic\n", "- deidentify: basic\n- delete: [SeriesNumber]\n",
                         "- deidentify: {profile: basic, salt: other}\n")
        }
        self.assertEqual(len(hashes), 3)

    def test_hash_is_the_sha256_of_the_canonical_bytes(self) -> None:
        """plan_hash is hex SHA-256 of the UTF-8 text; the empty plan has its own fixed hash."""
        canonical = plan_of("- deidentify: basic\n").canonical
        self.assertEqual(plan_hash(canonical), hashlib.sha256(canonical.encode("utf-8")).hexdigest())
        self.assertEqual(EMPTY_PLAN, '{"actions":[],"v":1}')
        self.assertEqual(len(plan_hash(EMPTY_PLAN)), 64)


class RebuildTests(SynchronousTestCase):
    """compile_canonical: the configuration's compiler, fed the journaled form."""

    def test_every_built_in_action_rebuilds_to_the_same_plan(self) -> None:
        """Each action compiles back from its journaled form to an equal plan."""
        plan = plan_of(EVERY_ACTION)
        self.assertEqual(compile_canonical(plan.canonical, {}), plan)
        self.assertEqual(len(plan.actions), 11)  # set's three pairs are three actions

    def test_lookup_carries_its_rows_so_a_later_edit_of_the_table_changes_nothing(self) -> None:
        """The table's rows are in the plan: editing or deleting the CSV after load leaves the rebuilt plan as it was."""
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        table = os.path.join(folder, "sites.csv")
        with open(table, "w") as f:
            f.write("from,to\nOLD,NEW\n")
        plan, sink = compile_text("- lookup: {tag: InstitutionName, table: sites.csv, default: OTHER}\n", base_dir=folder)
        assert plan is not None, sink.errors
        self.assertIn('"rows":[["OLD","NEW"]]', plan.canonical)
        os.remove(table)
        rebuilt = compile_canonical(plan.canonical, {})
        self.assertEqual(rebuilt, plan)
        ds = Dataset()
        ds.InstitutionName = "OLD"
        rebuilt.apply(ds, CONTEXT)
        self.assertEqual(ds.InstitutionName, "NEW")

    def test_plugin_action_is_journaled_by_name_and_arguments(self) -> None:
        """A plugin's action is its YAML mapping; it rebuilds while the plugin is installed."""
        plan, sink = compile_text("- {plugin: stamp, text: hi}\n", plugins={"stamp": _Stamp()})
        assert plan is not None, sink.errors
        self.assertEqual(plan.canonical, '{"actions":[{"plugin":"stamp","text":"hi"}],"v":1}')
        ds = Dataset()
        compile_canonical(plan.canonical, {"stamp": _Stamp()}).apply(ds, CONTEXT)
        self.assertEqual(ds.ImageComments, "hi")

    def test_plugin_gone_cannot_be_rebuilt(self) -> None:
        """Without the plugin the plan is a PlanError naming it (the entry goes to the dead letters)."""
        plan, _ = compile_text("- {plugin: stamp, text: hi}\n", plugins={"stamp": _Stamp()})
        assert plan is not None
        with self.assertRaises(PlanError) as raised:
            compile_canonical(plan.canonical, {})
        self.assertIn("unknown morph plugin 'stamp'", str(raised.exception))

    def test_unknown_version_and_malformed_text_are_refused(self) -> None:
        """A version this code does not read, JSON that is not a plan, and a compile error are each a PlanError."""
        for text, words in (
            ('{"actions":[],"v":2}', "version 2 is unknown"),
            ("not json", "not JSON"),
            ('{"actions":{},"v":1}', "is not"),
            ('{"actions":[{"set":[["NoSuchKeyword","x"]]}],"v":1}', "NoSuchKeyword"),
            ('{"actions":[{"frobnicate":1}],"v":1}', "unknown morph action"),
        ):
            with self.assertRaises(PlanError) as raised:
                compile_canonical(text, {})
            self.assertIn(words, str(raised.exception), text)

    def test_rebuilt_plan_keeps_the_text_it_came_from(self) -> None:
        """The rebuilt plan's canonical text is the journal's, byte for byte."""
        canonical = plan_of("- deidentify: basic\n").canonical
        self.assertEqual(compile_canonical(canonical, {}).canonical, canonical)
