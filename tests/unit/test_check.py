"""``dicom-gateway check``: validation, and what the routes would do with given files (text and JSON).

The command runs in-process (:func:`gateway.cli.main` with stdout captured)
against the shipped ``etc/gateway.yaml`` and the routing corpus
``tests/support/corpus/rules.yaml``, whose routes cover reject, drop,
morph, a templated forward, plugins in a combinator and ``final``. The
DICOM files are written at test time with :mod:`tests.support.datasets`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian
from twisted.trial.unittest import SynchronousTestCase

from gateway.cli import main
from gateway.config.errors import ConfigErrors
from gateway.config.load import load_config, load_config_text
from tests.support.datasets import _file_meta, ct_dataset

#: The repository root.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: The routing corpus configuration.
CORPUS = os.path.join(REPO_ROOT, "tests", "support", "corpus", "rules.yaml")
#: The shipped example configuration.
EXAMPLE = os.path.join(REPO_ROOT, "etc", "gateway.yaml")


def run_check(*argv: str) -> tuple[int, str, str]:
    """Run ``dicom-gateway check ARGV`` in-process.

    :param argv: the arguments after ``check``.
    :returns: the exit status, stdout and stderr.
    """
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["check", *argv])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def write_file(folder: str, name: str, **elements: str) -> str:
    """Write a small CT Part 10 file with some elements changed.

    :param folder: where.
    :param name: the file name.
    :param elements: keyword -> value, set after the defaults.
    :returns: the path.
    """
    ds = ct_dataset(4, 4)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.file_meta = _file_meta(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian)
    path = os.path.join(folder, name)
    ds.save_as(path, enforce_file_format=True)
    return path


class CorpusTestCase(SynchronousTestCase):
    """A folder of corpus files, one per kind of outcome."""

    def setUp(self) -> None:
        """Write the files."""
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.ct = write_file(self.folder, "ct.dcm", AccessionNumber="000123", PatientBirthDate="19700101")
        self.head = write_file(self.folder, "head.dcm", Modality="MR", BodyPartExamined="HEAD",
                               AccessionNumber="A1")
        self.mr = write_file(self.folder, "mr.dcm", Modality="MR", BodyPartExamined="KNEE")
        self.sr = write_file(self.folder, "sr.dcm", Modality="SR")
        self.test_patient = write_file(self.folder, "test.dcm", PatientID="TEST-7")
        self.long = write_file(self.folder, "long.dcm", Modality="MR", StudyDescription="research",
                               AccessionNumber="1234567890123")

    def json_report(self, *argv: str) -> dict[str, Any]:
        """The JSON report of one file.

        :param argv: the file and options.
        :returns: the one report.
        """
        code, out, err = run_check("-c", CORPUS, "--json", *argv)
        self.assertEqual(code, 0, err)
        reports = json.loads(out)
        self.assertEqual(len(reports), 1)
        return reports[0]


class CorpusJsonTests(CorpusTestCase):
    """``check --json`` on the corpus: routes, destinations and changes per file."""

    def test_ct_from_a_ct_station_is_morphed_and_fans_out_to_a_templated_destination(self) -> None:
        """With --calling-ae CT1 the CT file takes ct-to-archive (three changes) and per-station to CT1-archive."""
        report = self.json_report(self.ct, "--calling-ae", "CT1")
        self.assertEqual([(r["route"], r["destinations"]) for r in report["routes"]],
                         [("ct-to-archive", ["archive"]), ("per-station", ["CT1-archive"])])
        self.assertEqual(report["routes"][0]["changes"], [
            {"path": "InstitutionName", "old": None, "new": "Example Hospital"},
            {"path": "PatientBirthDate", "old": "19700101", "new": None},
            {"path": "AccessionNumber", "old": "000123", "new": "123"},
        ])
        self.assertNotIn("changes", report["routes"][1])
        self.assertEqual((report["unrouted"], report["dropped"], report["rejected"], report["errors"]),
                         (False, False, None, []))

    def test_calling_ae_decides_the_calling_ae_title_condition(self) -> None:
        """The same CT file from MR1 matches no route and is reported as unrouted."""
        report = self.json_report(self.ct, "--calling-ae", "MR1")
        self.assertEqual(report["routes"], [])
        self.assertTrue(report["unrouted"])

    def test_final_route_stops_evaluation_and_plugins_change_the_copy(self) -> None:
        """A head MR takes research (plugin match, PatientID set, accession prefixed) and never mr-to-pacs."""
        report = self.json_report(self.head)
        self.assertEqual([(r["route"], r["destinations"]) for r in report["routes"]], [("research", ["research"])])
        self.assertEqual(report["routes"][0]["changes"], [
            {"path": "PatientID", "old": "INTEROP-1", "new": "R-INTEROP-1"},
            {"path": "AccessionNumber", "old": "A1", "new": "EXT-A1"},
        ])

    def test_other_mr_goes_to_the_pacs_unchanged(self) -> None:
        """A knee MR takes only mr-to-pacs, with no changes."""
        report = self.json_report(self.mr)
        self.assertEqual(report["routes"], [{"route": "mr-to-pacs", "destinations": ["pacs"]}])

    def test_drop_route_is_reported_as_dropped(self) -> None:
        """An SR matches drop-sr: dropped, not unrouted, no destination."""
        report = self.json_report(self.sr, "--calling-ae", "CT1")
        self.assertEqual(report["routes"], [{"route": "drop-sr", "destinations": [], "action": "drop"}])
        self.assertEqual((report["dropped"], report["unrouted"]), (True, False))

    def test_reject_route_names_the_status_and_stops(self) -> None:
        """PatientID TEST-7 is rejected with 0xA900 by reject-test-patients, even from a CT station."""
        report = self.json_report(self.test_patient, "--calling-ae", "CT1")
        self.assertEqual(report["rejected"], "0xA900 by route reject-test-patients")
        self.assertEqual([r["route"] for r in report["routes"]], ["reject-test-patients"])
        self.assertEqual(report["routes"][0]["action"], "reject 0xA900")

    def test_a_morph_that_would_fail_is_reported_for_that_route(self) -> None:
        """A 13-character accession number cannot take 'EXT-' (SH max 16): the route shows a morph error."""
        report = self.json_report(self.long)
        self.assertEqual(report["routes"][0]["route"], "research")
        self.assertIn("longer than 16", report["routes"][0]["morph_error"])
        self.assertNotIn("changes", report["routes"][0])

    def test_a_folder_argument_reports_every_file(self) -> None:
        """Passing the folder reports all six files, in name order."""
        code, out, err = run_check("-c", CORPUS, "--json", self.folder)
        self.assertEqual(code, 0, err)
        self.assertEqual([os.path.basename(r["file"]) for r in json.loads(out)],
                         ["ct.dcm", "head.dcm", "long.dcm", "mr.dcm", "sr.dcm", "test.dcm"])


class CorpusTextTests(CorpusTestCase):
    """``check`` without --json: the same facts, for a person."""

    def test_text_lists_routes_destinations_and_old_new_values(self) -> None:
        """The CT file's text report shows both routes and each change as old -> new."""
        code, out, err = run_check("-c", CORPUS, self.ct, "--calling-ae", "CT1")
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[1:], [
            "  route ct-to-archive -> archive",
            "      InstitutionName: (absent) -> 'Example Hospital'",
            "      PatientBirthDate: '19700101' -> (deleted)",
            "      AccessionNumber: '000123' -> '123'",
            "  route per-station -> CT1-archive",
        ])
        self.assertTrue(lines[0].startswith(f"{self.ct}  (CT, "), lines[0])

    def test_text_explains_reject_drop_unrouted_and_morph_failure(self) -> None:
        """Each outcome has its sentence in the text report."""
        outputs = {}
        for name, path in (("reject", self.test_patient), ("drop", self.sr), ("unrouted", self.ct),
                           ("morph", self.long)):
            code, out, err = run_check("-c", CORPUS, path, "--calling-ae", "US1")
            self.assertEqual(code, 0, err)
            outputs[name] = out
        self.assertIn("rejected with 0xA900 by route reject-test-patients", outputs["reject"])
        self.assertIn("route drop-sr drop", outputs["drop"])
        self.assertIn("dropped (acknowledged, not kept)", outputs["drop"])
        self.assertIn("no route forwards it: kept in the spool's unrouted/ area", outputs["unrouted"])
        self.assertIn("morph would fail: ", outputs["morph"])
        self.assertIn("(the copy would be dead-lettered)", outputs["morph"])


class ExitCodeTests(CorpusTestCase):
    """Exit 0 for a valid configuration and readable files, 1 otherwise."""

    def test_valid_configuration_without_files_exits_zero(self) -> None:
        """check -c on the corpus prints a summary and exits 0; --json says valid."""
        code, out, _ = run_check("-c", CORPUS)
        self.assertEqual(code, 0)
        self.assertIn("configuration is valid", out)
        self.assertIn("6 route(s)", out)
        code, out, _ = run_check("-c", CORPUS, "--json")
        self.assertEqual((code, json.loads(out)["valid"]), (0, True))

    def test_invalid_configuration_exits_one_with_every_error(self) -> None:
        """A config with two mistakes exits 1 naming both, file and line, without a traceback."""
        path = os.path.join(self.folder, "bad.yaml")
        with open(CORPUS, encoding="utf-8") as stream:
            text = stream.read()
        text = text.replace("Modality: SR", "Modalty: SR").replace("forward: [pacs]", "forward: [pacz]")
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(text)
        code, out, err = run_check("-c", path, self.ct)
        self.assertEqual(code, 1)
        self.assertEqual(out, "")
        self.assertIn("routes[1].match.Modalty", err)
        self.assertIn("did you mean Modality?", err)
        self.assertIn("routes[5].forward[0]: unknown destination 'pacz'", err)
        self.assertNotIn("Traceback", err)

    def test_unreadable_file_exits_one(self) -> None:
        """A missing file is reported with its error and the exit status is 1."""
        missing = os.path.join(self.folder, "missing.dcm")
        code, out, _ = run_check("-c", CORPUS, missing, self.mr)
        self.assertEqual(code, 1)
        self.assertIn(f"{missing}\n  error: cannot read the file", out)
        self.assertIn("route mr-to-pacs -> pacs", out)


class ForwardTemplateTests(SynchronousTestCase):
    """Templated ``forward`` entries at load (fix in gateway/config/load.py)."""

    def load_routes(self, forward: str) -> Any:
        """Load a configuration whose one route forwards to ``forward``.

        :param forward: the YAML of the forward list.
        :returns: the configuration.
        """
        base = os.path.abspath(self.mktemp())
        text = (
            "ae_title: DICOMGW\nlisten: [{host: 127.0.0.1, port: 0}]\nspool: spool\n"
            "destinations: {CT1-archive: {folder: a}, archive: {folder: b}}\n"
            f"routes:\n  - name: t\n    forward: {forward}\n"
        )
        return load_config_text(text, "gateway.yaml", base)

    def test_a_template_fitting_a_destination_loads(self) -> None:
        """'{calling_ae_title}-archive' fits CT1-archive and loads as written."""
        config = self.load_routes('["{calling_ae_title}-archive", archive]')
        self.assertEqual(config.routes[0].forward, ("{calling_ae_title}-archive", "archive"))

    def test_a_template_that_never_names_a_destination_is_an_error(self) -> None:
        """'{Modality}-pacs' fits no destination: an error at its line listing the destinations."""
        with self.assertRaises(ConfigErrors) as caught:
            self.load_routes('["{Modality}-pacs"]')
        self.assertEqual([str(e) for e in caught.exception.errors], [
            "gateway.yaml:7: routes[0].forward[0]: forward template '{Modality}-pacs' can never name a "
            "configured destination (configured: CT1-archive, archive)",
        ])

    def test_a_template_with_an_unknown_field_is_an_error(self) -> None:
        """'{Modalty}' is refused with a did-you-mean hint."""
        with self.assertRaises(ConfigErrors) as caught:
            self.load_routes('["{Modalty}"]')
        self.assertEqual(len(caught.exception.errors), 1)
        self.assertIn("did you mean Modality?", str(caught.exception.errors[0]))


class ExampleConfigTests(SynchronousTestCase):
    """``check`` on the shipped etc/gateway.yaml."""

    def test_example_configuration_is_valid(self) -> None:
        """check -c etc/gateway.yaml exits 0."""
        code, out, err = run_check("-c", EXAMPLE)
        self.assertEqual(code, 0, err)
        self.assertIn("configuration is valid", out)

    def test_example_routes_everything_to_the_archive(self) -> None:
        """A CT file is routed by 'everything' to the archive folder, unchanged (text and JSON)."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = write_file(folder, "ct.dcm")
        code, out, err = run_check("-c", EXAMPLE, path, "--json")
        self.assertEqual(code, 0, err)
        report = json.loads(out)[0]
        self.assertEqual([(r["route"], r["destinations"]) for r in report["routes"]][:1],
                         [("everything", ["archive"])])
        code, out, err = run_check("-c", EXAMPLE, path)
        self.assertEqual(code, 0, err)
        self.assertIn("  route everything -> archive", out.splitlines())


def uncomment(text: str, first_line: str) -> str:
    """Uncomment the block of ``"#  "`` lines starting at ``first_line`` (each loses its ``#``).

    :param text: the file's text.
    :param first_line: the block's first line, exactly.
    :returns: the text with the block uncommented.
    """
    lines = text.split("\n")
    index = lines.index(first_line)
    while index < len(lines) and lines[index].startswith("#  "):
        lines[index] = lines[index][1:]
        index += 1
    return "\n".join(lines)


class ExampleRuleTests(SynchronousTestCase):
    """The commented rule examples of etc/gateway.yaml load and do what their comments say."""

    def setUp(self) -> None:
        """Load etc/gateway.yaml with the rule examples uncommented."""
        with open(EXAMPLE, encoding="utf-8") as stream:
            text = stream.read()
        text = uncomment(text, "#  - name: ct-edited")
        text = uncomment(text, "#  - name: no-test-patients")
        root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(root, "etc"))
        self.path = os.path.join(root, "etc", "gateway.yaml")
        with open(self.path, "w", encoding="utf-8") as stream:
            stream.write(text)
        self.folder = os.path.join(root, "files")
        os.makedirs(self.folder)

    def test_uncommented_rule_examples_are_valid(self) -> None:
        """The configuration loads with the four routes in file order."""
        config = load_config(self.path)
        self.assertEqual([r.name for r in config.routes][:4],
                         ["everything", "ct-edited", "no-test-patients", "discard-sr"])

    def test_ct_edited_route_changes_what_it_says(self) -> None:
        """From CT1, a CT file's ct-edited copy has the institution, station, birth date and accession changed."""
        path = write_file(self.folder, "ct.dcm", AccessionNumber="0042", PatientBirthDate="19700101")
        code, out, err = run_check("-c", self.path, "--json", "--calling-ae", "CT1", path)
        self.assertEqual(code, 0, err)
        routes = {r["route"]: r for r in json.loads(out)[0]["routes"]}
        self.assertEqual(sorted(routes)[:2], ["ct-edited", "everything"])
        self.assertEqual({(c["path"], c["old"], c["new"]) for c in routes["ct-edited"]["changes"]}, {
            ("InstitutionName", None, "Example Hospital"),
            ("StationName", None, "CT1"),
            ("PatientBirthDate", "19700101", None),
            ("AccessionNumber", "0042", "42"),
        })

    def test_test_patients_are_rejected_over_every_other_route(self) -> None:
        """PatientID TEST1 is rejected with 0xA900 although 'everything' matched first."""
        path = write_file(self.folder, "test.dcm", PatientID="TEST1")
        code, out, err = run_check("-c", self.path, "--json", path)
        self.assertEqual(code, 0, err)
        report = json.loads(out)[0]
        self.assertEqual(report["rejected"], "0xA900 by route no-test-patients")


class ReadmeExampleTests(SynchronousTestCase):
    """The full example of the README's "Routing rules and morphing" section is a valid configuration."""

    def test_readme_rules_example_loads(self) -> None:
        """The first YAML block of the section loads from etc/ with its five routes."""
        with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as stream:
            text = stream.read()
        section = text[text.index("## Routing rules and morphing"):]
        block = section[section.index("```yaml") + len("```yaml"):]
        block = block[: block.index("```")]
        config = load_config_text(block, "README.md", os.path.join(REPO_ROOT, "etc"))
        self.assertEqual([r.name for r in config.routes],
                         ["no-test-patients", "discard-sr", "ct-to-archive", "per-station", "research"])


class CommitmentWarningTests(SynchronousTestCase):
    """``check`` on a configuration that is valid but says more than is true (issue 15)."""

    def test_committed_without_committing_destination_is_valid_with_a_warning(self) -> None:
        """Policy ``committed`` with no ``storage_commitment`` destination: exit 0, a warning line, and ``warnings`` in JSON."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "gw.yaml")
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(
                "ae_title: GW\nlisten: [{host: 127.0.0.1, port: 0}]\nspool: spool\n"
                "destinations: {pacs: {ae_title: PACS, host: 127.0.0.1, port: 104}}\n"
                "routes: [{name: all, forward: [pacs]}]\n"
                "modalities: {ct1: {ae_title: CT1, host: 127.0.0.1, port: 104}}\n"
                "commitment: {policy: committed}\n"
            )
        code, out, err = run_check("-c", path)
        self.assertEqual(code, 0, err)
        self.assertIn("configuration is valid", out)
        self.assertIn("warning: commitment.policy: 'committed' but no destination has storage_commitment: true", out)
        code, out, _ = run_check("-c", path, "--json")
        report = json.loads(out)
        self.assertEqual((code, report["valid"], len(report["warnings"])), (0, True, 1))


class ExampleCommitmentTests(SynchronousTestCase):
    """The commented Storage Commitment example of etc/gateway.yaml (issue 15) loads as its comments say."""

    def test_uncommented_commitment_section_loads_with_the_documented_defaults(self) -> None:
        """Uncommented, the modalities table and the commitment section load; the values shown are the defaults."""
        from gateway.config.schema import CommitmentConfig

        with open(EXAMPLE, encoding="utf-8") as stream:
            text = stream.read()
        lines = text.split("\n")
        index = lines.index("# modalities:")
        # The top-level block is commented "# KEY" (one space): drop "# " to the end of the comment.
        while index < len(lines) and lines[index].startswith("# "):
            lines[index] = lines[index][2:]
            index += 1
        text = "\n".join(lines)
        config = load_config_text(text, EXAMPLE, os.path.dirname(EXAMPLE))
        self.assertEqual([(m.name, m.ae_title, m.port) for m in config.modalities], [("ct1", "CT1", 104)])
        self.assertEqual(config.commitment, CommitmentConfig(allowed_ae_titles=("*",)))
