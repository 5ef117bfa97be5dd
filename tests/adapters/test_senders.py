"""Tests for :mod:`gateway.send`: each sender's mapping of what a destination says to typed outcomes.

The DICOM sender is driven with scripted associations (statuses, aborts,
refusals) and, end to end, with the real requestor joined to our acceptor
through StringTransports on a ``task.Clock``; the folder sender writes into
a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Sequence

from pydicom.data import get_testdata_file
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.associate import (
    AssociationAborted,
    ClientAssociation,
    RequestorProtocol,
    StoreResult,
    read_part10_header,
)
from gateway.blocking import SynchronousRunner
from gateway.config.schema import DicomDestination, FolderDestination, RetryConfig
from gateway.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from gateway.queue.interfaces import Entry, EntryState, InstanceRecord
from gateway.queue.outcome import DeadLetter, DeadLetterKind, Delivered, DestinationDown, Outcome, Retry
from gateway.send import SendContext
from gateway.send.dicom import DicomSender, Proposals
from gateway.send.folder import FolderSender
from gateway.send.registry import SENDERS, register_sender, sender_for
from gateway.sopclasses import IMPLICIT_VR_LE, VERIFICATION_SOP_CLASS
from gateway.ul.negotiate import AcceptedContext, build_request
from tests.adapters.loopback import Loopback
from tests.adapters.test_listen import AcceptorTestsMixin

CT_SMALL = get_testdata_file("CT_small.dcm", download=False)
MR_SMALL = get_testdata_file("MR_small.dcm", download=False)
JPEG = get_testdata_file("JPEG2000.dcm", download=False)


def entry(path: str, entry_id: int = 1, attempts: int = 0, sop_instance_uid: str = "1.2.3.4") -> Entry:
    """A leased entry for ``path``."""
    record = InstanceRecord(
        instance_id=f"i{entry_id}", path=path, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=sop_instance_uid, transfer_syntax_uid="1.2.840.10008.1.2.1", size=1, sha256="00",
        received_at=0.0, correlation_id=f"c{entry_id}", study_instance_uid="1.2.3", series_instance_uid="1.2.3.1",
        patient_id="P1",
    )
    return Entry(entry_id, record, "r", "d", path, EntryState.LEASED, attempts, 0.0, 0.0)


def journaled(path: str, entry_id: int = 1, send_path: str | None = None) -> Entry:
    """A leased entry whose record carries the file meta facts and data set offset (schema v4), as the intake writes them.

    :param send_path: the file the entry sends, when not the received one (a morphed copy).
    """
    header = read_part10_header(path)
    record = InstanceRecord(
        instance_id=f"i{entry_id}", path=path, sop_class_uid=header.sop_class_uid,
        sop_instance_uid=header.sop_instance_uid, transfer_syntax_uid=header.transfer_syntax_uid,
        size=os.path.getsize(path), sha256="00", received_at=0.0, correlation_id=f"c{entry_id}",
        dataset_offset=header.dataset_offset,
    )
    return Entry(entry_id, record, "r", "d", send_path or path, EntryState.LEASED, 0, 0.0, 0.0)


def drain(test: SynchronousTestCase, sender: Any, batch: Sequence[Entry], slot: int = 0) -> list[Outcome]:
    """Run ``sender.send`` to the end (everything synchronous) and return the outcomes in order."""
    outcomes: list[Outcome] = []

    async def run() -> None:
        async for _, outcome in sender.send(slot, batch):
            outcomes.append(outcome)

    test.successResultOf(Deferred.fromCoroutine(run()))
    return outcomes


class ScriptedAssociation:
    """An association whose C-STORE answers come from a script: a status, ``(status, comment)``, or an exception."""

    def __init__(self, contexts: dict[int, AcceptedContext], script: list[Any], echo_status: int = 0) -> None:
        self.contexts = contexts
        self.script = script
        self.echo_status = echo_status
        self.open = True
        #: The transfer syntax of each file stored, in order.
        self.stored: list[str] = []
        #: The header the sender passed with each C-STORE (``None``: none).
        self.known: list[Any] = []

    @property
    def is_open(self) -> bool:
        return self.open

    def context_for(self, sop: str, ts: str) -> AcceptedContext | None:
        return next((c for c in self.contexts.values() if c.abstract_syntax == sop and c.transfer_syntax == ts), None)

    async def echo(self) -> int:
        return self.echo_status

    async def store(self, path: str, known: Any = None, zero_copy: bool = True) -> StoreResult:
        self.known.append(known)
        header = read_part10_header(path)
        self.stored.append(header.transfer_syntax_uid)
        action = self.script.pop(0) if self.script else 0
        if isinstance(action, Exception):
            self.open = False
            raise action
        status, comment = action if isinstance(action, tuple) else (action, None)
        return StoreResult(status, header.sop_class_uid, header.sop_instance_uid, header.size, comment)

    def release(self) -> Deferred[None]:
        self.open = False
        return succeed(None)

    def abort(self) -> None:
        self.open = False


class DicomSenderTests(SynchronousTestCase):
    """The DICOM sender's outcomes, with scripted associations."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.script: list[Any] = []
        self.refuse: Exception | None = None
        self.accept_syntaxes: set[str] | None = None
        self.associations: list[ScriptedAssociation] = []
        self.reachable = 0
        self.echo_status = 0
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def connect(self, destination: DicomDestination, proposals: Proposals) -> Deferred[ClientAssociation]:
        if self.refuse is not None:
            return fail(self.refuse)
        contexts = {}
        for i, (sop, syntaxes) in enumerate(proposals):
            chosen = next((ts for ts in syntaxes if self.accept_syntaxes is None or ts in self.accept_syntaxes), None)
            if chosen is not None:
                contexts[2 * i + 1] = AcceptedContext(2 * i + 1, sop, chosen, True, False)
        association = ScriptedAssociation(contexts, self.script, self.echo_status)
        self.associations.append(association)
        return succeed(association)  # type: ignore[arg-type]

    def sender(self, **overrides: Any) -> DicomSender:
        config = DicomDestination(
            name="pacs", ae_title="PACS", host="127.0.0.1", port=11112, calling_ae_title="DICOMGW",
            batch_size=10, retry=RetryConfig(unknown_status_attempts=2), **overrides,
        )

        def reachable() -> None:
            self.reachable += 1

        context = SendContext(SynchronousRunner(), self.clock, None, self.connect, self.tmp, reachable)
        return DicomSender(config, context)

    def test_statuses_map_to_outcomes(self) -> None:
        """0x0000 delivered, 0xB000 delivered with a warning, 0xA700 retried, 0xC000 refused, on one association."""
        self.script.extend([0x0000, 0xB000, 0xA700, 0xC000])
        outcomes = drain(self, self.sender(), [entry(CT_SMALL, i) for i in range(1, 5)])
        self.assertEqual(outcomes[0], Delivered(0))
        self.assertEqual(outcomes[1], Delivered(0xB000, "warning status 0xB000"))
        self.assertEqual(outcomes[2], Retry("out of resources (status 0xA700)"))
        self.assertEqual(outcomes[3], DeadLetter("cannot understand (status 0xC000)", DeadLetterKind.REFUSED))
        self.assertEqual(len(self.associations), 1)
        self.assertEqual(self.reachable, 1)

    def test_error_comment_is_kept_with_the_kind(self) -> None:
        """A failure's Error Comment (0000,0902) is appended to the reason; the kind stays ``refused``."""
        self.script.append((0x0122, "SOP class not supported"))
        (outcome,) = drain(self, self.sender(), [entry(CT_SMALL)])
        self.assertEqual(outcome, DeadLetter("refused (status 0x0122): SOP class not supported", DeadLetterKind.REFUSED))

    def test_unknown_status_is_retried_then_refused_by_attempt_count(self) -> None:
        """0xD123 is a retry at the first attempt and a ``refused`` dead letter at unknown_status_attempts."""
        self.script.extend([0xD123, 0xD123])
        first, second = drain(self, self.sender(), [entry(CT_SMALL, 1, attempts=0), entry(CT_SMALL, 2, attempts=1)])
        self.assertEqual(first, Retry("unknown status 0xD123"))
        assert isinstance(second, DeadLetter)
        self.assertIs(second.kind, DeadLetterKind.REFUSED)

    def test_abort_after_the_data_is_ambiguous_and_the_association_is_not_reused(self) -> None:
        """An abort once the data went out is an ambiguous retry; the next entry gets a fresh association."""
        aborted = AssociationAborted("transport connection closed")
        aborted.data_sent = True  # type: ignore[attr-defined]
        self.script.extend([aborted, 0])
        outcomes = drain(self, self.sender(), [entry(CT_SMALL, 1), entry(CT_SMALL, 2)])
        self.assertEqual(outcomes, [Retry("AssociationAborted: transport connection closed", ambiguous=True), Delivered(0)])
        self.assertEqual(len(self.associations), 2)

    def test_abort_before_the_data_is_a_plain_retry(self) -> None:
        """An abort while sending (before the last fragment) is a retry, not ambiguous."""
        self.script.append(AssociationAborted("association ended while sending"))
        (outcome,) = drain(self, self.sender(), [entry(CT_SMALL)])
        self.assertEqual(outcome, Retry("AssociationAborted: association ended while sending"))

    def test_refused_connection_is_destination_down(self) -> None:
        """A refused TCP connection is the destination's fault, not the entry's; nothing reachable."""
        self.refuse = ConnectionRefusedError()
        (outcome,) = drain(self, self.sender(), [entry(CT_SMALL)])
        self.assertIsInstance(outcome, DestinationDown)
        self.assertEqual(self.reachable, 0)

    def test_compressed_instance_without_its_syntax_is_no_context(self) -> None:
        """A JPEG 2000 instance the peer takes only uncompressed cannot be converted: ``no_context``."""
        self.accept_syntaxes = {IMPLICIT_VR_LE}
        (outcome,) = drain(self, self.sender(), [entry(JPEG)])
        assert isinstance(outcome, DeadLetter)
        self.assertIs(outcome.kind, DeadLetterKind.NO_CONTEXT)
        self.assertTrue(outcome.reason.startswith("no accepted presentation context"), outcome.reason)

    def test_native_instance_is_converted_to_an_accepted_fallback(self) -> None:
        """An Explicit VR LE instance the peer takes only as Implicit VR LE is converted and delivered."""
        self.accept_syntaxes = {IMPLICIT_VR_LE}
        explicit = os.path.join(self.tmp, "explicit.dcm")
        shutil.copy(MR_SMALL, explicit)
        (outcome,) = drain(self, self.sender(), [entry(explicit)])
        self.assertEqual(outcome, Delivered(0))
        self.assertEqual(self.associations[0].stored, [IMPLICIT_VR_LE])
        self.assertEqual([n for n in os.listdir(self.tmp) if n.startswith("transcode-")], [])

    def test_unreadable_and_missing_files_come_first(self) -> None:
        """A file that is not Part 10 is ``unreadable``; a missing one a retry; both before any send."""
        garbage = os.path.join(self.tmp, "garbage.dcm")
        with open(garbage, "wb") as f:
            f.write(b"not dicom")
        outcomes = drain(self, self.sender(), [entry(CT_SMALL, 1), entry(garbage, 2), entry(os.path.join(self.tmp, "gone"), 3)])
        assert isinstance(outcomes[0], DeadLetter)
        self.assertIs(outcomes[0].kind, DeadLetterKind.UNREADABLE)
        assert isinstance(outcomes[1], Retry)
        self.assertTrue(outcomes[1].reason.startswith("spool file missing"), outcomes[1].reason)
        self.assertEqual(outcomes[2], Delivered(0))

    def read_counter(self) -> list[str]:
        """Count the sender's reads of a Part 10 header (the paths read)."""
        import gateway.send.dicom

        reads: list[str] = []

        def counting(path: str) -> Any:
            reads.append(path)
            return read_part10_header(path)

        self.patch(gateway.send.dicom, "read_part10_header", counting)
        return reads

    def test_journaled_data_set_offset_spares_the_header_read(self) -> None:
        """A record with the data set's offset (schema v4) is sent with the journal's header: the file meta is not read."""
        reads = self.read_counter()
        outcomes = drain(self, self.sender(), [journaled(CT_SMALL)])
        self.assertEqual(outcomes, [Delivered(0)])
        self.assertEqual(reads, [])
        (known,) = self.associations[0].known
        real = read_part10_header(CT_SMALL)
        self.assertEqual(
            (known.sop_class_uid, known.sop_instance_uid, known.transfer_syntax_uid, known.dataset_offset, known.size),
            (real.sop_class_uid, real.sop_instance_uid, real.transfer_syntax_uid, real.dataset_offset, real.size),
        )

    def test_old_journal_record_reads_the_header(self) -> None:
        """A record without the offset (a journal older than schema v4) has its file meta read, as before."""
        reads = self.read_counter()
        outcomes = drain(self, self.sender(), [entry(CT_SMALL)])
        self.assertEqual(outcomes, [Delivered(0)])
        self.assertEqual(reads, [CT_SMALL])

    def test_a_morphed_copy_reads_its_own_header(self) -> None:
        """An entry sending another file than the received one (a morphed copy) reads that file's meta, not the record's."""
        copy = os.path.join(self.tmp, "copy.dcm")
        shutil.copyfile(MR_SMALL, copy)
        reads = self.read_counter()
        outcomes = drain(self, self.sender(), [journaled(CT_SMALL, send_path=copy)])
        self.assertEqual(outcomes, [Delivered(0)])
        self.assertEqual(reads, [copy])
        self.assertEqual(self.associations[0].known[0].sop_class_uid, read_part10_header(MR_SMALL).sop_class_uid)

    def test_journaled_entry_whose_file_is_gone_is_a_retry(self) -> None:
        """With the header from the journal, a spool file gone missing is still a retry, and the association stays usable."""
        gone = os.path.join(self.tmp, "gone.dcm")
        shutil.copyfile(CT_SMALL, gone)
        missing = journaled(gone, 1)
        os.unlink(gone)
        outcomes = drain(self, self.sender(), [missing, journaled(CT_SMALL, 2)])
        assert isinstance(outcomes[0], Retry)
        self.assertTrue(outcomes[0].reason.startswith("spool file missing"), outcomes[0].reason)
        self.assertEqual(outcomes[1], Delivered(0))

    def test_probe_is_a_c_echo(self) -> None:
        """The probe succeeds on C-ECHO 0x0000, is down on another status or a refused connection."""
        sender = self.sender()
        self.assertIsNone(self.successResultOf(Deferred.fromCoroutine(sender.probe())))
        self.echo_status = 0x0110
        down = self.successResultOf(Deferred.fromCoroutine(sender.probe()))
        self.assertEqual(down, DestinationDown("C-ECHO status 0x0110"))
        self.refuse = ConnectionRefusedError()
        self.assertIsInstance(self.successResultOf(Deferred.fromCoroutine(sender.probe())), DestinationDown)

    def test_idle_association_is_released_after_idle_release(self) -> None:
        """idle() reports the time left, then releases the association once idle_release has passed."""
        sender = self.sender(idle_release=5.0)
        drain(self, sender, [entry(CT_SMALL)])
        self.assertEqual(sender.connections(), 1)
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(sender.idle(0, self.clock.seconds() + 2))), 3.0)
        self.assertIsNone(self.successResultOf(Deferred.fromCoroutine(sender.idle(0, self.clock.seconds() + 5))))
        self.assertEqual(sender.connections(), 0)


class RealRequestorSenderTests(AcceptorTestsMixin, SynchronousTestCase):
    """The DICOM sender with the real requestor, over StringTransports to our own acceptor."""

    def setUp(self) -> None:
        AcceptorTestsMixin.setUp(self)
        self.loops: list[Loopback] = []

    def connect(self, destination: DicomDestination, proposals: Proposals) -> Deferred[ClientAssociation]:
        wanted = [(VERIFICATION_SOP_CLASS, [IMPLICIT_VR_LE])] + [(sop, list(ts)) for sop, ts in proposals]
        request = build_request(
            destination.calling_ae_title, destination.ae_title, wanted, max_pdu_length=16384,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID, implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        )
        client = RequestorProtocol(request, self.clock, 30.0, 16384)
        loop = Loopback(self.factory.buildProtocol(None), client)
        self.loops.append(loop)
        loop.pump()
        return client.established

    def test_delivers_and_probes_through_the_acceptor(self) -> None:
        """Two instances are Delivered and committed by the acceptor; a probe's C-ECHO succeeds."""
        config = DicomDestination(name="pacs", ae_title="DICOMGW", host="127.0.0.1", port=11112, calling_ae_title="CT01")
        sender = DicomSender(config, SendContext(SynchronousRunner(), self.clock, None, self.connect, self.tmp))
        outcomes: list[Outcome] = []

        async def run() -> None:
            async for _, outcome in sender.send(0, [entry(CT_SMALL, 1), entry(MR_SMALL, 2)]):
                outcomes.append(outcome)

        d = Deferred.fromCoroutine(run())
        for _ in range(20):
            for loop in self.loops:
                loop.pump()
        self.successResultOf(d)
        self.assertEqual(outcomes, [Delivered(0), Delivered(0)])
        self.assertEqual(len(self.committed()), 2)
        probe = Deferred.fromCoroutine(sender.probe())
        for _ in range(20):
            for loop in self.loops:
                loop.pump()
        self.assertIsNone(self.successResultOf(probe))
        closed = Deferred.fromCoroutine(sender.close(0))
        for loop in self.loops:
            loop.pump()
        self.successResultOf(closed)
        self.assertEqual(sender.connections(), 0)


    def test_journaled_header_sends_the_data_set_bytes_unchanged(self) -> None:
        """With the journal's offset and no header read, the acceptor commits the original data set byte for byte."""
        config = DicomDestination(name="pacs", ae_title="DICOMGW", host="127.0.0.1", port=11112, calling_ae_title="CT01")
        sender = DicomSender(config, SendContext(SynchronousRunner(), self.clock, None, self.connect, self.tmp))
        outcomes: list[Outcome] = []

        async def run() -> None:
            async for _, outcome in sender.send(0, [journaled(CT_SMALL)]):
                outcomes.append(outcome)

        d = Deferred.fromCoroutine(run())
        for _ in range(20):
            for loop in self.loops:
                loop.pump()
        self.successResultOf(d)
        self.assertEqual(outcomes, [Delivered(0)])
        (name,) = self.committed()
        stored = os.path.join(self.tmp, "instances", name)
        with open(stored, "rb") as f, open(CT_SMALL, "rb") as g:
            f.seek(read_part10_header(stored).dataset_offset)
            g.seek(read_part10_header(CT_SMALL).dataset_offset)
            self.assertEqual(f.read(), g.read())


class FolderSenderTests(SynchronousTestCase):
    """The folder sender's outcomes, in a temporary folder."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.root = os.path.join(self.tmp, "out")
        os.mkdir(self.root)
        config = FolderDestination(name="disk", path=self.root, pattern="{StudyInstanceUID}/{SOPInstanceUID}.dcm")
        self.sender = FolderSender(config, SendContext(SynchronousRunner(), Clock()))

    def test_written_file_is_delivered(self) -> None:
        """The file lands at its pattern's path: Delivered(0)."""
        (outcome,) = drain(self, self.sender, [entry(CT_SMALL)])
        self.assertEqual(outcome, Delivered(0))
        self.assertTrue(os.path.isfile(os.path.join(self.root, "1.2.3", "1.2.3.4.dcm")))

    def test_crafted_uid_is_an_unsafe_path_dead_letter(self) -> None:
        """A SOP Instance UID with ``../`` is dead-lettered as ``unsafe_path``; nothing is written."""
        (outcome,) = drain(self, self.sender, [entry(CT_SMALL, sop_instance_uid="../../etc/x")])
        assert isinstance(outcome, DeadLetter)
        self.assertIs(outcome.kind, DeadLetterKind.UNSAFE_PATH)
        self.assertTrue(outcome.reason.startswith("unsafe path: "), outcome.reason)
        self.assertEqual(os.listdir(self.root), [])

    def test_missing_spool_file_is_a_retry(self) -> None:
        """The file to copy is gone: a retry of that entry, not the folder's fault."""
        (outcome,) = drain(self, self.sender, [entry(os.path.join(self.tmp, "gone.dcm"))])
        assert isinstance(outcome, Retry)
        self.assertTrue(outcome.reason.startswith("spool file missing"), outcome.reason)

    def test_missing_folder_is_destination_down_and_the_probe_says_so(self) -> None:
        """The root is gone (an unmounted share): DestinationDown, and the probe fails until it is back."""
        os.rmdir(self.root)
        (outcome,) = drain(self, self.sender, [entry(CT_SMALL)])
        self.assertIsInstance(outcome, DestinationDown)
        self.assertIsInstance(self.successResultOf(Deferred.fromCoroutine(self.sender.probe())), DestinationDown)
        os.mkdir(self.root)
        self.assertIsNone(self.successResultOf(Deferred.fromCoroutine(self.sender.probe())))


class RegistryTests(SynchronousTestCase):
    """Senders are found by the destination's configuration type."""

    def test_builtin_kinds(self) -> None:
        """A DICOM destination gets a DicomSender, a folder one a FolderSender."""
        context = SendContext(SynchronousRunner(), Clock())
        dicom = DicomDestination(name="pacs", ae_title="PACS", host="h", port=104, calling_ae_title="GW", max_associations=3)
        folder = FolderDestination(name="disk", path="/tmp", pattern="{SOPInstanceUID}.dcm")
        self.assertIsInstance(sender_for(dicom, context), DicomSender)
        self.assertEqual(sender_for(dicom, context).slots, 3)
        self.assertIsInstance(sender_for(folder, context), FolderSender)

    def test_a_new_kind_plugs_in(self) -> None:
        """A registered configuration type gets its sender; an unregistered one is a TypeError."""

        class StowDestination:
            name = "web"

        made: list[Any] = []

        def factory(config: Any, context: SendContext) -> Any:
            made.append(config)
            return "stow-sender"

        self.addCleanup(SENDERS.pop, StowDestination, None)
        context = SendContext(SynchronousRunner(), Clock())
        self.assertRaises(TypeError, sender_for, StowDestination(), context)
        register_sender(StowDestination, factory)
        self.assertEqual(sender_for(StowDestination(), context), "stow-sender")
