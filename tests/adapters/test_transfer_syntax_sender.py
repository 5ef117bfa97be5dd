"""Tests for the DICOM sender under a destination's transfer-syntax policy (issue 17).

Scripted associations (:mod:`tests.adapters.test_senders`) that keep a copy
of every file the sender stores: the proposals carry the policy's target,
what is stored is in that syntax and decodes to the source's pixels, a
conversion the codecs cannot do is a ``conversion`` dead letter, the copies
are removed after each attempt, and ``preserve`` sends the spool file.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.pixels import pixel_array
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from gateway.associate import ClientAssociation, StoreResult
from gateway.codecs import TransferSyntaxPolicy
from gateway.config.schema import DicomDestination
from gateway.queue.outcome import DeadLetter, DeadLetterKind, Delivered, Retry
from gateway.send.dicom import Proposals, proposals_for
from gateway.sopclasses import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from gateway.ul.negotiate import AcceptedContext
from tests.adapters import test_senders as base
from tests.adapters.test_senders import ScriptedAssociation, drain, entry, journaled

CT_SMALL = get_testdata_file("CT_small.dcm", download=False)
JPEG2000_FILE = get_testdata_file("JPEG2000.dcm", download=False)
JPEG_12_BIT = get_testdata_file("JPGExtended.dcm", download=False)
REPORT = get_testdata_file("test-SR.dcm", download=False)
RLE = "1.2.840.10008.1.2.5"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


class CopyingAssociation(ScriptedAssociation):
    """A scripted association that keeps a copy of each file it stores."""

    def __init__(self, folder: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.folder = folder
        self.copies: list[str] = []

    async def store(self, path: str, known: Any = None, zero_copy: bool = True) -> StoreResult:
        copy = os.path.join(self.folder, f"sent-{len(self.copies)}.dcm")
        shutil.copy(path, copy)
        self.copies.append(copy)
        return await super().store(path, known, zero_copy)


class PolicySenderTests(SynchronousTestCase):
    """The DICOM sender with ``transfer_syntax`` set."""

    # The scripted-peer fixture of the plain sender tests (their class is not imported here, or trial would run it twice).
    setUp = base.DicomSenderTests.setUp
    sender = base.DicomSenderTests.sender

    def connect(self, destination: DicomDestination, proposals: Proposals) -> "Deferred[ClientAssociation]":
        self.proposals = [(sop, list(ts)) for sop, ts in proposals]
        contexts = {}
        for i, (sop, syntaxes) in enumerate(proposals):
            chosen = next((ts for ts in syntaxes if self.accept_syntaxes is None or ts in self.accept_syntaxes), None)
            if chosen is not None:
                contexts[2 * i + 1] = AcceptedContext(2 * i + 1, sop, chosen, True, False)
        self.sent_folder = os.path.join(self.tmp, "sent")
        os.makedirs(self.sent_folder, exist_ok=True)
        association = CopyingAssociation(self.sent_folder, contexts, self.script, self.echo_status)
        self.associations.append(association)
        return succeed(association)  # type: ignore[arg-type]

    def policy_sender(self, target: str, lossy: bool = False) -> Any:
        return self.sender(policy=TransferSyntaxPolicy(target, lossy))

    def scratch_left(self) -> list[str]:
        return [n for n in os.listdir(self.tmp) if n.startswith(("convert-", "transcode-"))]

    def test_target_is_proposed_and_sent(self) -> None:
        """Under ``rle`` the contexts propose RLE for the SOP class; the stored copy is RLE with the same pixels."""
        (outcome,) = drain(self, self.policy_sender("rle"), [entry(CT_SMALL)])
        self.assertEqual(outcome, Delivered(0))
        sop = str(dcmread(CT_SMALL, stop_before_pixels=True).SOPClassUID)
        self.assertIn((sop, [RLE]), self.proposals)
        self.assertEqual(self.associations[0].stored, [RLE])
        (copy,) = self.associations[0].copies
        np.testing.assert_array_equal(pixel_array(copy, raw=True), pixel_array(CT_SMALL, raw=True))
        self.assertEqual(self.scratch_left(), [])

    def test_compressed_source_to_jpeg2000_lossless(self) -> None:
        """A lossy JPEG 2000 source goes as JPEG 2000 lossless, the same decoded pixels, still flagged lossy."""
        (outcome,) = drain(self, self.policy_sender("jpeg2000-lossless"), [entry(JPEG2000_FILE)])
        self.assertEqual(outcome, Delivered(0))
        self.assertEqual(self.associations[0].stored, [J2K_LOSSLESS])
        (copy,) = self.associations[0].copies
        np.testing.assert_array_equal(pixel_array(copy, raw=True), pixel_array(JPEG2000_FILE, raw=True))
        self.assertEqual(dcmread(copy).LossyImageCompression, "01")
        self.assertEqual(self.scratch_left(), [])

    def test_uncompressed_falls_back_to_implicit(self) -> None:
        """Under ``uncompressed`` a peer taking only Implicit VR LE gets the decompressed copy re-encoded."""
        self.accept_syntaxes = {IMPLICIT_VR_LE}
        (outcome,) = drain(self, self.policy_sender("uncompressed"), [entry(JPEG2000_FILE)])
        self.assertEqual(outcome, Delivered(0))
        self.assertEqual(self.associations[0].stored, [IMPLICIT_VR_LE])
        (copy,) = self.associations[0].copies
        np.testing.assert_array_equal(pixel_array(copy, raw=True), pixel_array(JPEG2000_FILE, raw=True))
        self.assertEqual(self.scratch_left(), [])

    def test_conversion_error_is_a_conversion_dead_letter(self) -> None:
        """An instance the codecs cannot convert (12-bit JPEG without the GPL codec; corrupt data) is a dead letter
        of kind ``conversion``; the next entry of the batch is still delivered."""
        bad = os.path.join(self.tmp, "corrupt.dcm")
        data = bytearray(open(JPEG2000_FILE, "rb").read())
        start = data.index(b"\xff\x4f\xff\x51")  # the JPEG 2000 codestream's SOC and SIZ markers
        data[start + 4 : start + 64] = b"\xff" * 60
        with open(bad, "wb") as f:
            f.write(bytes(data))
        outcomes = drain(self, self.policy_sender("rle"), [entry(bad, 1), entry(CT_SMALL, 2)])
        assert isinstance(outcomes[0], DeadLetter), outcomes
        self.assertIs(outcomes[0].kind, DeadLetterKind.CONVERSION)
        self.assertTrue(outcomes[0].reason.startswith("cannot convert to rle"), outcomes[0].reason)
        self.assertEqual(outcomes[1], Delivered(0))
        self.assertEqual(self.associations[0].stored, [RLE])
        self.assertEqual(self.scratch_left(), [])

    def test_missing_spool_file_is_a_retry(self) -> None:
        """A journaled entry whose file is gone is retried, not dead-lettered as a conversion."""
        gone = os.path.join(self.tmp, "gone.dcm")
        shutil.copy(CT_SMALL, gone)
        batch = [journaled(gone)]
        os.unlink(gone)
        (outcome,) = drain(self, self.policy_sender("rle"), batch)
        self.assertIsInstance(outcome, Retry)

    def test_report_goes_uncompressed(self) -> None:
        """An instance without pixel data under a compressed target goes in a native syntax (the fallback context)."""
        (outcome,) = drain(self, self.policy_sender("jpeg-ls-lossless"), [entry(REPORT)])
        self.assertEqual(outcome, Delivered(0))
        self.assertIn(self.associations[0].stored[0], (EXPLICIT_VR_LE, IMPLICIT_VR_LE))

    def test_lossy_copy_has_a_new_uid(self) -> None:
        """Under ``jpeg2000`` with ``lossy: true`` the stored copy is a new, derived instance."""
        (outcome,) = drain(self, self.policy_sender("jpeg2000", lossy=True), [entry(CT_SMALL)])
        self.assertEqual(outcome, Delivered(0))
        (copy,) = self.associations[0].copies
        sent = dcmread(copy)
        self.assertNotEqual(sent.SOPInstanceUID, dcmread(CT_SMALL).SOPInstanceUID)
        self.assertEqual((sent.LossyImageCompression, sent.ImageType[0]), ("01", "DERIVED"))

    def test_target_refused_is_no_context(self) -> None:
        """A peer that refuses the target syntax (and it has pixel data) gives ``no_context``, no copy left."""
        self.accept_syntaxes = {EXPLICIT_VR_LE, IMPLICIT_VR_LE}
        (outcome,) = drain(self, self.policy_sender("rle"), [entry(CT_SMALL)])
        assert isinstance(outcome, DeadLetter)
        self.assertIs(outcome.kind, DeadLetterKind.NO_CONTEXT)
        self.assertEqual(self.scratch_left(), [])

    def test_conversion_runs_on_the_file_runner(self) -> None:
        """The conversion is handed to the context's file runner (a thread in the gateway), never called inline."""
        from gateway.blocking import SynchronousRunner
        from gateway.codecs.convert import convert_for

        ran: list[Any] = []

        class RecordingRunner(SynchronousRunner):
            def run(self, f: Any, *args: Any, **kwargs: Any) -> Any:
                ran.append(f)
                return super().run(f, *args, **kwargs)

        import dataclasses

        sender = self.policy_sender("rle")
        sender.context = dataclasses.replace(sender.context, file_runner=RecordingRunner())
        (outcome,) = drain(self, sender, [entry(CT_SMALL)])
        self.assertEqual(outcome, Delivered(0))
        self.assertIn(convert_for, ran)

    def test_preserve_sends_the_spool_file(self) -> None:
        """``preserve`` (the default) proposes and sends the instance's own syntax, no copy made."""
        (outcome,) = drain(self, self.policy_sender("preserve"), [entry(JPEG2000_FILE)])
        self.assertEqual(outcome, Delivered(0))
        self.assertEqual(self.associations[0].stored, ["1.2.840.10008.1.2.4.91"])
        self.assertEqual(open(self.associations[0].copies[0], "rb").read(), open(JPEG2000_FILE, "rb").read())


class ProposalTests(SynchronousTestCase):
    """:func:`proposals_for` under a policy."""

    def test_uncompressed_fallback_for_a_compressed_target(self) -> None:
        """The target first, then Explicit and Implicit VR LE for the same SOP class."""
        self.assertEqual(
            proposals_for([("1.2.3", RLE)], uncompressed_fallback=True),
            [("1.2.3", [RLE]), ("1.2.3", [EXPLICIT_VR_LE, IMPLICIT_VR_LE])],
        )

    def test_without_the_flag_nothing_changes(self) -> None:
        """Without a policy a compressed syntax gets no fallback (today's behaviour)."""
        self.assertEqual(proposals_for([("1.2.3", RLE)]), [("1.2.3", [RLE])])
