"""Tests for :mod:`gateway.conformance`: the conformance statement matches the code."""

from __future__ import annotations

import io
import re
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway import conformance, identity, sopclasses
from gateway.config.schema import LimitsConfig, TLS_PROFILES
from gateway.dimse.status import Status


def _document() -> str:
    """The statement as committed in ``docs/``."""
    return conformance.DOCUMENT_PATH.read_text(encoding="utf-8")


def _block(text: str, name: str) -> str:
    """The text between the markers of generated block ``name`` (fails the test if absent)."""
    begin = text.index(conformance.begin_marker(name)) + len(conformance.begin_marker(name))
    return text[begin : text.index(conformance.end_marker(name))]


def _table_uids(block: str) -> list[str]:
    """The backquoted UIDs of the second column of a generated table, in order."""
    return re.findall(r"^\| [^|]+ \| `([0-9.]+)` \|", block, re.MULTILINE)


class DocumentMatchesCodeTests(SynchronousTestCase):
    """The committed document is what the generator renders from today's code."""

    def test_committed_document_equals_fresh_rendering(self) -> None:
        """Regenerating in memory gives the committed file byte for byte (else: rerun the generator)."""
        self.assertEqual(conformance.check(), [])
        self.assertEqual(_document(), conformance.render())

    def test_every_storage_sop_class_uid_is_in_the_document(self) -> None:
        """Each UID of STORAGE_SOP_CLASSES appears in the storage table, in the code's order."""
        uids = _table_uids(_block(_document(), "storage-sop-classes"))
        self.assertEqual(uids, list(sopclasses.STORAGE_SOP_CLASSES))

    def test_every_accepted_transfer_syntax_uid_is_in_the_document(self) -> None:
        """Each UID of ACCEPTED_TRANSFER_SYNTAXES appears in the transfer syntax table, in the code's order."""
        uids = _table_uids(_block(_document(), "transfer-syntaxes"))
        self.assertEqual(uids, list(sopclasses.ACCEPTED_TRANSFER_SYNTAXES))

    def test_verification_sop_class_is_listed(self) -> None:
        """The Verification SOP Class UID is in its own table."""
        self.assertEqual(_table_uids(_block(_document(), "verification-sop-class")), [sopclasses.VERIFICATION_SOP_CLASS])

    def test_implementation_identity_matches_identity_module(self) -> None:
        """The class UID and version name in the document are those gateway.identity sends."""
        block = _block(_document(), "identity")
        self.assertIn(f"| Implementation Class UID | `{identity.IMPLEMENTATION_CLASS_UID}` |", block)
        self.assertIn(f"| Implementation Version Name | `{identity.IMPLEMENTATION_VERSION_NAME}` |", block)

    def test_counts_match_the_lists(self) -> None:
        """The count lines state the lengths of the code's lists."""
        text = _document()
        self.assertIn(f"{len(sopclasses.STORAGE_SOP_CLASSES)} Storage SOP Classes", _block(text, "storage-sop-classes"))
        self.assertIn(f"{len(sopclasses.ACCEPTED_TRANSFER_SYNTAXES)} Transfer Syntaxes.", _block(text, "transfer-syntaxes"))

    def test_configuration_defaults_come_from_the_schema(self) -> None:
        """The limits table shows the schema's default association limit and PDU size."""
        block = _block(_document(), "configuration-defaults")
        limits = LimitsConfig()
        self.assertIn(f"| `limits.max_associations` | {limits.max_associations} |", block)
        self.assertIn(f"| `limits.max_pdu_length` | {limits.max_pdu_length} ", block)

    def test_every_tls_profile_is_described(self) -> None:
        """Each profile name the configuration accepts has a row."""
        block = _block(_document(), "tls-profiles")
        for name in TLS_PROFILES:
            self.assertIn(f"`{name}`", block)

    def test_every_status_code_the_scp_answers_is_documented(self) -> None:
        """The SCP status table names each code receive.py and spool.py answer."""
        text = _document()
        for status in (
            Status.SUCCESS,
            Status.OUT_OF_RESOURCES,
            Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            Status.CANNOT_UNDERSTAND,
            Status.SOP_CLASS_NOT_SUPPORTED,
            Status.UNRECOGNIZED_OPERATION,
        ):
            self.assertIn(f"| 0x{int(status):04X} |", text)

    def test_no_placeholder_is_left_unrendered(self) -> None:
        """Every placeholder of the template names a generator, so none survives rendering."""
        self.assertNotIn("@@GENERATED", conformance.render())
        names = re.findall(r"^@@GENERATED ([a-z0-9-]+)@@$", conformance.TEMPLATE, re.MULTILINE)
        self.assertEqual(sorted(names), sorted(conformance.GENERATORS))


class GeneratorTests(SynchronousTestCase):
    """The rendering machinery and the command line."""

    def test_render_wraps_each_block_in_markers(self) -> None:
        """A placeholder becomes its begin marker, the generated text and its end marker."""
        rendered = conformance.render("before\n@@GENERATED identity@@\nafter\n")
        lines = rendered.splitlines()
        self.assertEqual(lines[0], "before")
        self.assertEqual(lines[1], conformance.begin_marker("identity"))
        self.assertEqual(lines[-2], conformance.end_marker("identity"))
        self.assertEqual(lines[-1], "after")

    def test_render_refuses_an_unknown_block(self) -> None:
        """A placeholder naming no generator raises KeyError instead of being left in place."""
        self.assertRaises(KeyError, conformance.render, "@@GENERATED no-such-table@@\n")

    def test_render_is_deterministic(self) -> None:
        """Two renderings are identical, so the check cannot flap."""
        self.assertEqual(conformance.render(), conformance.render())

    def test_check_reports_a_stale_document(self) -> None:
        """A document whose storage table lost a row gives a non-empty diff naming the UID."""
        first_uid = next(iter(sopclasses.STORAGE_SOP_CLASSES))
        stale = "".join(
            line for line in conformance.render().splitlines(keepends=True) if f"`{first_uid}`" not in line
        )
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "statement.md"
            path.write_text(stale, encoding="utf-8")
            diff = conformance.check(path)
        self.assertTrue(any(first_uid in line and line.startswith("+") for line in diff))

    def test_check_reports_a_missing_document(self) -> None:
        """A missing file is stale, not an exception."""
        with tempfile.TemporaryDirectory() as folder:
            self.assertNotEqual(conformance.check(Path(folder) / "absent.md"), [])

    def test_main_prints_the_rendering(self) -> None:
        """Without options the command writes the whole statement to standard output."""
        out = io.StringIO()
        with redirect_stdout(out):
            code = conformance.main([])
        self.assertEqual(code, 0)
        self.assertEqual(out.getvalue(), conformance.render())

    def test_main_check_exits_1_on_a_stale_file(self) -> None:
        """``--check`` on an outdated file exits 1 and prints the diff."""
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "statement.md"
            path.write_text("old\n", encoding="utf-8")
            out, err = io.StringIO(), io.StringIO()
            with redirect_stdout(out), redirect_stderr(err):
                code = conformance.main(["--check", "--path", str(path)])
        self.assertEqual(code, 1)
        self.assertIn("is stale", err.getvalue())
        self.assertIn("+# dicom-gateway DICOM Conformance Statement", out.getvalue())

    def test_main_check_exits_0_on_the_committed_file(self) -> None:
        """``--check`` on the committed document exits 0 and prints nothing."""
        out = io.StringIO()
        with redirect_stdout(out):
            code = conformance.main(["--check"])
        self.assertEqual((code, out.getvalue()), (0, ""))

    def test_retired_classes_are_marked(self) -> None:
        """A retired storage class (Ultrasound Image Storage, 1.2.840.10008.5.1.4.1.1.6) is labelled retired, its successor not."""
        block = conformance.render_storage_sop_classes()
        self.assertIn("| Ultrasound Image Storage (retired) | `1.2.840.10008.5.1.4.1.1.6` |", block)
        self.assertIn("| Ultrasound Image Storage | `1.2.840.10008.5.1.4.1.1.6.1` |", block)

    def test_newer_transfer_syntaxes_get_their_names(self) -> None:
        """Syntaxes newer than pydicom's registry are named from gateway.sopclasses, not shown as bare UIDs."""
        self.assertEqual(conformance.transfer_syntax_name("1.2.840.10008.1.2.4.110"), "JPEG XL Lossless")

    def test_scu_proposals_follow_the_forwarder(self) -> None:
        """A compressed instance is proposed alone; a native one also gets the Explicit VR LE fallback."""
        block = conformance.render_scu_proposals()
        self.assertIn("| JPEG 2000 Image Compression | 1 | JPEG 2000 Image Compression (`1.2.840.10008.1.2.4.91`) | original bytes |", block)
        self.assertNotIn("| JPEG 2000 Image Compression | 2 |", block)
        self.assertIn("| Implicit VR Little Endian | 2 | Explicit VR Little Endian (`1.2.840.10008.1.2.1`) |", block)


class StorageCommitmentTests(SynchronousTestCase):
    """Issue 15: the Storage Commitment SOP class in both roles, the policies, the statuses and the Failure Reasons."""

    def test_sop_class_and_well_known_instance_in_both_roles(self) -> None:
        """The generated row names the class UID, the well-known instance and both roles; Table 1-1 lists it."""
        from gateway.commitment.model import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH

        block = _block(_document(), "commitment-sop-class")
        self.assertIn(f"`{STORAGE_COMMITMENT_PUSH}`", block)
        self.assertIn(f"`{STORAGE_COMMITMENT_INSTANCE}`", block)
        self.assertIn("| Storage Commitment Push Model SOP Class | Yes (configured per destination) | Yes (configured) |", _document())

    def test_every_policy_is_described(self) -> None:
        """Each commitment.policy value the loader accepts has a row."""
        from gateway.config.schema import COMMITMENT_POLICIES

        block = _block(_document(), "commitment-policies")
        for policy in COMMITMENT_POLICIES:
            self.assertIn(f"| `{policy}` |", block)

    def test_failure_reasons_and_action_statuses_are_documented(self) -> None:
        """The reasons reports carry (0x0110, 0x0112, 0x0119) and the N-ACTION statuses (0x0124 among them) have rows."""
        text = _document()
        block = _block(text, "commitment-failure-reasons")
        for reason in ("0x0110", "0x0112", "0x0119"):
            self.assertIn(f"| {reason} |", block)
        for status in ("0x0000", "0x0124", "0x0118", "0x0123", "0x0115", "0x0213"):
            self.assertIn(f"| {status} |", text)


class QueryRetrieveTests(SynchronousTestCase):
    """Issue 16: the Q/R SOP classes in both roles, the documented statuses and defaults."""

    def test_every_qr_class_the_acceptor_offers_is_listed_in_both_roles(self) -> None:
        """Each UID of the acceptor's FIND/MOVE/GET lists has a row with an SCU and an SCP column; Table 1-1 lists them."""
        from gateway.sopclasses import QR_FIND_SOP_CLASSES, QR_GET_SOP_CLASSES, QR_MOVE_SOP_CLASSES

        block = _block(_document(), "qr-sop-classes")
        for uid in QR_FIND_SOP_CLASSES | QR_MOVE_SOP_CLASSES | QR_GET_SOP_CLASSES:
            row = next(line for line in block.splitlines() if f"`{uid}`" in line)
            self.assertEqual(row.count("| Yes ("), 2, row)
        self.assertIn("| *Query/Retrieve* | | |", _document())

    def test_qr_statuses_and_defaults_are_documented(self) -> None:
        """0xA801, 0xA700 (max_results), 0xFE00 and the Failed SOP Instance UID List are named; query defaults listed."""
        text = _document()
        for words in ("0xA801", "0xA700", "0xFE00", "(0008,0058)", "PS3.4 C.4.1.1.4"):
            self.assertIn(words, text)
        block = _block(text, "configuration-defaults")
        self.assertIn("| `query.max_results` | 10000 |", block)
        self.assertIn("| `retrieve.mode` | relay |", block)
