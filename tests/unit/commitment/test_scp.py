"""Tests for :mod:`gateway.commitment.scp`: the N-ACTION checks, the journal, archives' reports.

:class:`~gateway.commitment.scp.CommitmentSCP` runs over the in-memory queue
store (the verified fake of the SQLite and PostgreSQL journals) through a
:class:`~gateway.blocking.SynchronousRunner`, so its answers have fired when
``action`` returns (a held runner shows that the answer waits for the
journal). The Action Information data sets are written by pydicom (test-only),
so the decoder is also checked against a real library's encoding.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway import events
from gateway.blocking import SynchronousRunner
from gateway.commitment.model import (
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH,
    CommitmentReport,
    FailedReference,
    Reference,
)
from gateway.commitment.scp import CommitmentSCP, OpenAssociations, ReportRefusedOnOpen, modality_for
from gateway.config.schema import (
    AcceptConfig,
    CommitmentConfig,
    GatewayConfig,
    LimitsConfig,
    ListenerConfig,
    ModalityConfig,
    SpoolConfig,
)
from gateway.dimse import commands as dimse
from gateway.dimse.commitment import decode_event_report
from gateway.queue.commitments import NewTransaction, Transaction, TransactionState
from gateway.queue.interfaces import StoreUnavailable
from gateway.queue.memory import MemoryQueueStore
from gateway.receive import AssociationInfo
from gateway.ul.negotiate import AcceptedContext

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Wall-clock time the tests run at.
T0 = 1_700_000_000.0

INFO = AssociationInfo(
    assoc_id="A1",
    peer_address="10.0.0.7:40000",
    calling_ae_title="CT01",
    called_ae_title="DICOMGW",
    listener="dicom",
    contexts={},
)


def action_rq(
    sop_class: str = STORAGE_COMMITMENT_PUSH, instance: str = STORAGE_COMMITMENT_INSTANCE, action_type: int = 1
) -> dimse.NActionRQ:
    """An N-ACTION-RQ command as the codec decodes it."""
    return dimse.NActionRQ(
        message_id=5,
        requested_sop_class_uid=sop_class,
        requested_sop_instance_uid=instance,
        action_type_id=action_type,
        has_dataset=True,
    )


def event_rq(
    sop_class: str = STORAGE_COMMITMENT_PUSH, instance: str = STORAGE_COMMITMENT_INSTANCE, event_type: int = 1
) -> dimse.NEventReportRQ:
    """An N-EVENT-REPORT-RQ command as the codec decodes it."""
    return dimse.NEventReportRQ(
        message_id=9,
        affected_sop_class_uid=sop_class,
        affected_sop_instance_uid=instance,
        event_type_id=event_type,
        has_dataset=True,
    )


def _item(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def _encode(ds: Dataset, transfer_syntax: str) -> bytes:
    """``ds`` as pydicom writes it in ``transfer_syntax`` (a data set, no file meta)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = transfer_syntax == IMPLICIT_LE
    write_dataset(buffer, ds)
    return buffer.getvalue()


def action_dataset(
    transaction_uid: str, uids: Sequence[str], transfer_syntax: str = IMPLICIT_LE, sop_class: str = CT_IMAGE
) -> bytes:
    """An N-ACTION Action Information (PS3.4 Table J.3-1), written by pydicom."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.ReferencedSOPSequence = [_item(sop_class, uid) for uid in uids]
    return _encode(ds, transfer_syntax)


def report_dataset(transaction_uid: str, committed: Sequence[str], failed: Sequence[tuple[str, int]]) -> bytes:
    """An N-EVENT-REPORT Event Information (PS3.4 Table J.3-2), written by pydicom in Explicit VR LE."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    if committed:
        ds.ReferencedSOPSequence = [_item(CT_IMAGE, uid) for uid in committed]
    if failed:
        items = []
        for uid, reason in failed:
            item = _item(CT_IMAGE, uid)
            item.FailureReason = reason
            items.append(item)
        ds.FailedSOPSequence = items
    return _encode(ds, EXPLICIT_LE)


class _Observer:
    """Keeps every event."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def observe(self, event: Any) -> None:
        self.seen.append(event)


class _HeldRunner:
    """A store runner whose calls wait until the test releases them."""

    def __init__(self) -> None:
        self.held: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.held.append((f, args, d))
        return d

    def release(self) -> None:
        f, args, d = self.held.pop(0)
        try:
            d.callback(f(*args))
        except Exception as e:
            d.errback(e)


class _UnavailableStore(MemoryQueueStore):
    """A journal that cannot be reached (PostgreSQL away)."""

    def add_transaction(self, new: NewTransaction, now: float) -> tuple[Transaction, bool]:
        raise StoreUnavailable("PostgreSQL at host=db: connection refused")


class _Archive:
    """A fake :class:`~gateway.commitment.archive.ArchiveReports`: records calls, answers ``answer``."""

    def __init__(self, answer: "Deferred[tuple[int, str]] | None" = None) -> None:
        self.calls: list[tuple[str, CommitmentReport]] = []
        self.answer = answer

    def record(self, calling_ae_title: str, report: CommitmentReport) -> "Deferred[tuple[int, str]]":
        self.calls.append((calling_ae_title, report))
        return self.answer if self.answer is not None else succeed((0, ""))


class SCPTestsMixin:
    """A configuration with one listener, a ``modalities`` table and a CommitmentSCP over a memory store."""

    def setUp(self) -> None:
        self.now = T0
        self.commitment: CommitmentConfig | None = CommitmentConfig(
            policy="delivered", deadline=3600.0, report_deadline=86400.0, lookback=7 * 86400.0
        )
        self.listener_commitment: CommitmentConfig | None = None
        self.modalities: tuple[ModalityConfig, ...] = (
            ModalityConfig("ct1", "CT01", "10.0.0.7", 11112),
            ModalityConfig("mr1", "MR01", "10.0.0.8", 11112),
        )
        self.store = MemoryQueueStore()
        self.observer = _Observer()
        self.poked = 0
        self.scp = self.make_scp(self.store)

    def config(self) -> GatewayConfig:
        return GatewayConfig(
            source="test.yaml",
            ae_title="DICOMGW",
            listen=(ListenerConfig("0.0.0.0", 11112, name="dicom", commitment=self.listener_commitment),),
            accept=AcceptConfig(),
            limits=LimitsConfig(),
            spool=SpoolConfig("/nonexistent"),
            modalities=self.modalities,
            commitment=self.commitment,
        )

    def make_scp(self, store: MemoryQueueStore, run: Any = None) -> CommitmentSCP:
        def poke() -> None:
            self.poked += 1

        return CommitmentSCP(
            journal=store,
            run=run or SynchronousRunner(),
            config=self.config,
            wall=lambda: self.now,
            observer=self.observer,
            on_journaled=poke,
        )

    def act(
        self, rq: dimse.NActionRQ | None = None, dataset: bytes | None = None, info: AssociationInfo = INFO,
        transfer_syntax: str = IMPLICIT_LE,
    ) -> tuple[int, str]:
        if dataset is None:
            dataset = action_dataset("1.2.9.1", ["1.2.3.1", "1.2.3.2"], transfer_syntax)
        d = self.scp.action(info, rq or action_rq(), dataset, transfer_syntax)
        result: tuple[int, str] = self.successResultOf(d)  # type: ignore[attr-defined]
        return result

    def requested(self) -> list[events.CommitmentRequested]:
        return [e for e in self.observer.seen if isinstance(e, events.CommitmentRequested)]


class ActionChecksTests(SCPTestsMixin, SynchronousTestCase):
    """The N-ACTION checks before the journal, each with the status the standard names."""

    def assertRefused(self, result: tuple[int, str], status: int, outcome: str) -> None:
        """``result`` has ``status``, nothing was journaled, and one event says ``outcome``."""
        self.assertEqual(result[0], status)
        self.assertEqual(self.store.transactions(), [])
        self.assertEqual(self.poked, 0)
        [event] = self.requested()
        self.assertEqual((event.outcome, event.status), (outcome, status))

    def test_other_requested_sop_class_is_no_such_sop_class(self) -> None:
        """A Requested SOP Class other than the Push Model class is answered 0x0118 (PS3.7 10.1.4.1.10)."""
        self.assertRefused(self.act(action_rq(sop_class=CT_IMAGE)), 0x0118, "invalid")

    def test_other_requested_instance_is_no_such_sop_instance(self) -> None:
        """A valid Requested SOP Instance UID other than 1.2.840.10008.1.20.1.1 is answered 0x0112."""
        self.assertRefused(self.act(action_rq(instance="1.2.3.4")), 0x0112, "invalid")

    def test_malformed_requested_instance_is_invalid_sop_instance(self) -> None:
        """A Requested SOP Instance UID that breaks PS3.5 9.1 (leading zero) is answered 0x0117."""
        self.assertRefused(self.act(action_rq(instance="1.02.3")), 0x0117, "invalid")

    def test_empty_requested_instance_is_invalid_sop_instance(self) -> None:
        """An empty Requested SOP Instance UID is answered 0x0117."""
        self.assertRefused(self.act(action_rq(instance="")), 0x0117, "invalid")

    def test_other_action_type_is_no_such_action(self) -> None:
        """Action Type ID 2 is answered 0x0123 (PS3.4 Table J.3-1 defines only 1)."""
        self.assertRefused(self.act(action_rq(action_type=2)), 0x0123, "invalid")

    def test_ae_without_modalities_entry_is_not_authorized(self) -> None:
        """A calling AE with no entry in ``modalities`` (its report could not be sent) gets 0x0124."""
        info = AssociationInfo("A2", "10.0.0.9:1000", "US01", "DICOMGW", "dicom", {})
        self.assertRefused(self.act(info=info), 0x0124, "refused")

    def test_ae_outside_allowed_ae_titles_is_not_authorized(self) -> None:
        """``allowed_ae_titles`` narrows the table: an AE of the table that matches no glob gets 0x0124."""
        self.commitment = CommitmentConfig(allowed_ae_titles=("MR*",))
        self.assertRefused(self.act(), 0x0124, "refused")

    def test_ae_matching_allowed_ae_titles_is_accepted(self) -> None:
        """An AE of the table matching one of the globs is accepted (case-sensitive fnmatch)."""
        self.commitment = CommitmentConfig(allowed_ae_titles=("MR*", "CT?1"))
        self.assertEqual(self.act()[0], 0x0000)

    def test_listener_without_commitment_refuses(self) -> None:
        """Without a ``commitment`` section (top level or listener), a request is refused 0x0124."""
        self.commitment = None
        self.assertRefused(self.act(), 0x0124, "refused")

    def test_request_on_a_listener_removed_by_a_reload_is_refused(self) -> None:
        """A listener no longer in the configuration has no commitment settings: 0x0124."""
        info = AssociationInfo("A2", "10.0.0.7:1000", "CT01", "DICOMGW", "gone", {})
        self.assertRefused(self.act(info=info), 0x0124, "refused")

    def test_sop_class_is_checked_before_access(self) -> None:
        """The checks run in the documented order: a wrong class from an unknown AE is 0x0118, not 0x0124."""
        info = AssociationInfo("A2", "10.0.0.9:1000", "US01", "DICOMGW", "dicom", {})
        self.assertRefused(self.act(action_rq(sop_class=CT_IMAGE), info=info), 0x0118, "invalid")

    def test_access_is_checked_before_the_data_set(self) -> None:
        """An AE not allowed is refused 0x0124 even when its data set is malformed."""
        info = AssociationInfo("A2", "10.0.0.9:1000", "US01", "DICOMGW", "dicom", {})
        self.assertRefused(self.act(dataset=b"\x08\x00", info=info), 0x0124, "refused")

    def test_missing_transaction_uid_answers_the_codecs_status(self) -> None:
        """A data set without (0008,1195) is refused with the failure status the codec names."""
        ds = Dataset()
        ds.ReferencedSOPSequence = [_item(CT_IMAGE, "1.2.3.1")]
        status, comment = self.act(dataset=_encode(ds, IMPLICIT_LE))
        self.assertNotEqual(status, 0)
        self.assertTrue(comment)
        self.assertEqual(self.store.transactions(), [])

    def test_no_data_set_is_refused(self) -> None:
        """An N-ACTION without Action Information (PS3.4 J.3.2.1.1 requires it) is refused, nothing journaled."""
        status, _ = self.act(dataset=b"")
        self.assertNotEqual(status, 0)
        self.assertEqual(self.store.transactions(), [])


class ActionJournalTests(SCPTestsMixin, SynchronousTestCase):
    """A well-formed request is journaled, then answered success; repeats, conflicts and an absent journal."""

    def test_accepted_request_is_journaled_with_its_settings(self) -> None:
        """The journaled transaction carries the requester, its modality name, policy, times and references."""
        status = self.act(dataset=action_dataset("1.2.9.1", ["1.2.3.1", "1.2.3.2", "1.2.3.1"]))
        self.assertEqual(status, (0x0000, ""))
        [transaction] = self.store.transactions()
        new = transaction.request
        self.assertEqual(
            (new.transaction_uid, new.calling_ae_title, new.called_ae_title, new.modality, new.listener, new.policy),
            ("1.2.9.1", "CT01", "DICOMGW", "ct1", "dicom", "delivered"),
        )
        # Repeats go, request order stays.
        self.assertEqual(new.references, (Reference(CT_IMAGE, "1.2.3.1"), Reference(CT_IMAGE, "1.2.3.2")))
        self.assertEqual(
            (new.deadline, new.report_deadline, new.lookback_from), (T0 + 3600.0, T0 + 86400.0, T0 - 7 * 86400.0)
        )
        self.assertEqual((new.unrouted, new.report_association, new.source_address), ("fail", "new", "10.0.0.7:40000"))
        self.assertEqual(transaction.state, TransactionState.OPEN)
        self.assertEqual(self.poked, 1)
        [event] = self.requested()
        self.assertEqual(
            (event.outcome, event.status, event.instances, event.transaction_uid, event.calling_ae_title),
            ("accepted", 0, 2, "1.2.9.1", "CT01"),
        )

    def test_explicit_vr_request_is_accepted(self) -> None:
        """A request on an Explicit VR Little Endian context is decoded in that syntax."""
        self.assertEqual(
            self.act(dataset=action_dataset("1.2.9.2", ["1.2.3.1"], EXPLICIT_LE), transfer_syntax=EXPLICIT_LE)[0], 0
        )
        self.assertEqual([t.transaction_uid for t in self.store.transactions()], ["1.2.9.2"])

    def test_listener_settings_override_the_top_level(self) -> None:
        """``listen[i].commitment`` wins over the top-level ``commitment`` (policy, deadlines, unrouted)."""
        self.listener_commitment = CommitmentConfig(policy="received", deadline=60.0, unrouted="success")
        self.act()
        [transaction] = self.store.transactions()
        self.assertEqual(
            (transaction.request.policy, transaction.request.deadline, transaction.request.unrouted),
            ("received", T0 + 60.0, "success"),
        )

    def test_repeat_with_same_references_is_success_again(self) -> None:
        """The same Transaction UID with the same references (another order) is idempotent: success, one transaction."""
        self.act(dataset=action_dataset("1.2.9.1", ["1.2.3.1", "1.2.3.2"]))
        self.assertEqual(self.act(dataset=action_dataset("1.2.9.1", ["1.2.3.2", "1.2.3.1"])), (0, ""))
        self.assertEqual(len(self.store.transactions()), 1)
        self.assertEqual([e.outcome for e in self.requested()], ["accepted", "repeated"])
        self.assertEqual(self.poked, 1)

    def test_same_uid_with_other_references_is_refused(self) -> None:
        """The same Transaction UID with other references is refused 0x0115, naming PS3.3 C.14.1.1's 0x0131."""
        self.act(dataset=action_dataset("1.2.9.1", ["1.2.3.1"]))
        status, comment = self.act(dataset=action_dataset("1.2.9.1", ["1.2.3.1", "1.2.3.5"]))
        self.assertEqual(status, 0x0115)
        self.assertIn("0x0131", comment)
        [transaction] = self.store.transactions()
        self.assertEqual(transaction.request.references, (Reference(CT_IMAGE, "1.2.3.1"),))
        self.assertEqual([e.outcome for e in self.requested()], ["accepted", "conflict"])

    def test_unreachable_journal_is_resource_limitation(self) -> None:
        """A journal that cannot be reached answers 0x0213 and nobody is poked."""
        self.scp = self.make_scp(_UnavailableStore())
        status, comment = self.act()
        self.assertEqual(status, 0x0213)
        self.assertIn("journal", comment)
        self.assertEqual(self.poked, 0)
        self.assertEqual([e.outcome for e in self.requested()], ["unavailable"])

    def test_success_waits_for_the_journal(self) -> None:
        """No answer leaves before the journal write has returned (the report owed must survive a restart)."""
        runner = _HeldRunner()
        self.scp = self.make_scp(self.store, runner)
        d = self.scp.action(INFO, action_rq(), action_dataset("1.2.9.1", ["1.2.3.1"]), IMPLICIT_LE)
        self.assertNoResult(d)
        self.assertEqual(self.poked, 0)
        runner.release()
        self.assertEqual(self.successResultOf(d), (0, ""))
        self.assertEqual(self.poked, 1)

    def test_a_failing_poke_still_answers_success(self) -> None:
        """The journal has committed: a worker poke that raises does not change the answer."""

        def broken() -> None:
            raise RuntimeError("worker gone")

        self.scp.on_journaled = broken
        self.assertEqual(self.act()[0], 0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ModalityForTests(SynchronousTestCase):
    """Which ``modalities`` entry a requester is."""

    def config(self, *modalities: ModalityConfig) -> GatewayConfig:
        return GatewayConfig(
            source="t", ae_title="GW", listen=(ListenerConfig("0.0.0.0", 1),), accept=AcceptConfig(),
            limits=LimitsConfig(), spool=SpoolConfig("/nonexistent"), modalities=modalities,
        )

    def test_entry_whose_host_is_the_peer_wins(self) -> None:
        """Two entries with the same AE title: the one at the peer's address is chosen."""
        config = self.config(ModalityConfig("a", "CT01", "10.0.0.1", 104), ModalityConfig("b", "CT01", "10.0.0.2", 104))
        self.assertEqual(modality_for(config, "CT01", "10.0.0.2:5000").name, "b")  # type: ignore[union-attr]

    def test_first_entry_when_no_host_matches(self) -> None:
        """No host matches: the first entry in file order, deterministically."""
        config = self.config(ModalityConfig("a", "CT01", "10.0.0.1", 104), ModalityConfig("b", "CT01", "10.0.0.2", 104))
        self.assertEqual(modality_for(config, "CT01 ", "10.0.0.3:5000").name, "a")  # type: ignore[union-attr]

    def test_ae_titles_compare_case_sensitively(self) -> None:
        """AE titles are case-sensitive: ``ct01`` is not ``CT01``."""
        config = self.config(ModalityConfig("a", "CT01", "10.0.0.1", 104))
        self.assertIsNone(modality_for(config, "ct01", "10.0.0.1:5000"))


class EventReportTests(SCPTestsMixin, SynchronousTestCase):
    """An archive's N-EVENT-REPORT-RQ: checked, decoded and handed to ArchiveReports; always answered."""

    def setUp(self) -> None:
        super().setUp()
        self.archive = _Archive()
        self.scp.archive_reports = self.archive

    def report(self, rq: dimse.NEventReportRQ | None = None, dataset: bytes | None = None) -> tuple[int, str]:
        if dataset is None:
            dataset = report_dataset("1.2.8.1", ["1.2.3.1"], [("1.2.3.2", 0x0112)])
        d = self.scp.event_report(
            AssociationInfo("A9", "10.0.0.20:104", "PACS ", "DICOMGW", "dicom", {}), rq or event_rq(event_type=2), dataset, EXPLICIT_LE
        )
        return self.successResultOf(d)

    def test_report_goes_to_the_archive_helper(self) -> None:
        """A well-formed report is decoded and recorded with the calling AE title; its answer is sent."""
        self.archive.answer = succeed((0, ""))
        self.assertEqual(self.report(), (0, ""))
        [(calling, report)] = self.archive.calls
        self.assertEqual(calling, "PACS")
        self.assertEqual(report.transaction_uid, "1.2.8.1")
        self.assertEqual(report.committed, (Reference(CT_IMAGE, "1.2.3.1"),))
        self.assertEqual(report.failed, (FailedReference(Reference(CT_IMAGE, "1.2.3.2"), 0x0112),))

    def test_archive_helpers_status_is_answered(self) -> None:
        """The archive helper's status (e.g. an unknown Transaction UID) is what the RSP carries."""
        self.archive.answer = succeed((0x0115, "unknown Transaction UID"))
        self.assertEqual(self.report(), (0x0115, "unknown Transaction UID"))

    def test_unknown_event_type_is_no_such_event_type(self) -> None:
        """Event Type ID 3 is answered 0x0113 (PS3.7 10.1.1.1.8) and not recorded."""
        self.assertEqual(self.report(event_rq(event_type=3))[0], 0x0113)
        self.assertEqual(self.archive.calls, [])
        [event] = [e for e in self.observer.seen if isinstance(e, events.ArchiveCommitmentReported)]
        self.assertEqual(event.status, 0x0113)

    def test_other_sop_class_is_no_such_sop_class(self) -> None:
        """An Affected SOP Class other than the Push Model class is answered 0x0118."""
        self.assertEqual(self.report(event_rq(sop_class=CT_IMAGE))[0], 0x0118)
        self.assertEqual(self.archive.calls, [])

    def test_other_instance_is_no_such_sop_instance(self) -> None:
        """An Affected SOP Instance other than the well-known one is answered 0x0112."""
        self.assertEqual(self.report(event_rq(instance="1.2.3"))[0], 0x0112)

    def test_malformed_report_is_processing_failure(self) -> None:
        """A data set that cannot be decoded is answered 0x0110 and not recorded."""
        self.assertEqual(self.report(dataset=b"\x08\x00\x95\x11")[0], 0x0110)
        self.assertEqual(self.archive.calls, [])

    def test_no_committing_archive_is_processing_failure(self) -> None:
        """With no archive helper (no destination commits) a report is answered 0x0110."""
        self.scp.archive_reports = None
        self.assertEqual(self.report()[0], 0x0110)

    def test_failing_archive_helper_is_processing_failure(self) -> None:
        """An error recording the report is answered 0x0110, never left unanswered."""
        self.archive.answer = fail(RuntimeError("boom"))
        self.assertEqual(self.report()[0], 0x0110)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class _Channel:
    """A fake requester association (:class:`~gateway.commitment.scp.IReportChannel`)."""

    def __init__(self, transfer_syntax: str = IMPLICIT_LE, push: bool = True) -> None:
        self.context = AcceptedContext(1, STORAGE_COMMITMENT_PUSH, transfer_syntax, True, False) if push else None
        self.sent: list[tuple[int, bytes]] = []
        self.answers: list[Deferred[tuple[int, str]]] = []

    @property
    def reporting(self) -> bool:
        return any(not d.called for d in self.answers)

    def report_context(self) -> AcceptedContext | None:
        return self.context

    def send_event_report(self, event_type_id: int, dataset: bytes) -> Deferred[tuple[int, str]]:
        self.sent.append((event_type_id, dataset))
        d: Deferred[tuple[int, str]] = Deferred()
        self.answers.append(d)
        return d


def transaction(calling: str = "CT01") -> Transaction:
    """A journaled transaction from ``calling``."""
    new = NewTransaction(
        "1.2.9.1", calling, "DICOMGW", "ct1", "dicom", "delivered", (Reference(CT_IMAGE, "1.2.3.1"),),
        T0 + 60, T0 + 600, T0 - 60, report_association="open",
    )
    return Transaction(new, T0, "node1", TransactionState.OPEN)


REPORT = CommitmentReport(
    "1.2.9.1", committed=(Reference(CT_IMAGE, "1.2.3.1"),), failed=(FailedReference(Reference(CT_IMAGE, "1.2.3.2"), 0x0112),)
)


class OpenAssociationsTests(SynchronousTestCase):
    """``report_association: open``: the report goes on the requester's open association when it has one."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = OpenAssociations(self.clock, timeout=30.0)

    def info(self, calling: str = "CT01") -> AssociationInfo:
        return AssociationInfo("A1", "10.0.0.7:40000", calling, "DICOMGW", "dicom", {})

    def test_no_open_association_is_none(self) -> None:
        """Nothing open from the requester: ``None`` (the sender opens a new association)."""
        self.registry.opened(self.info("MR01"), _Channel())
        self.assertIsNone(self.registry.open_route(transaction(), REPORT))

    def test_report_goes_on_the_most_recent_association_and_success_fires(self) -> None:
        """The newest association of the requester gets the report, encoded in its syntax; 0x0000 fires the Deferred."""
        older, newer = _Channel(), _Channel(EXPLICIT_LE)
        self.registry.opened(self.info(), older)
        self.registry.opened(self.info(), newer)
        d = self.registry.open_route(transaction(), REPORT)
        assert d is not None
        self.assertEqual(older.sent, [])
        [(event_type, dataset)] = newer.sent
        self.assertEqual(event_type, 2)
        self.assertEqual(decode_event_report(dataset, EXPLICIT_LE), REPORT)
        newer.answers[0].callback((0, ""))
        self.assertIsNone(self.successResultOf(d))

    def test_failure_status_fails(self) -> None:
        """A failure status fails the attempt (the sender then tries a new association)."""
        channel = _Channel()
        self.registry.opened(self.info(), channel)
        d = self.registry.open_route(transaction(), REPORT)
        assert d is not None
        channel.answers[0].callback((0x0110, "busy"))
        self.failureResultOf(d, ReportRefusedOnOpen)

    def test_no_answer_times_out(self) -> None:
        """No RSP within the timeout: the attempt fails and the channel's report is given up."""
        channel = _Channel()
        self.registry.opened(self.info(), channel)
        d = self.registry.open_route(transaction(), REPORT)
        assert d is not None
        self.clock.advance(30.0)
        self.failureResultOf(d)
        self.assertFalse(channel.reporting)

    def test_busy_or_closed_associations_are_skipped(self) -> None:
        """An association already awaiting a report, or one that ended, is not used."""
        busy, gone = _Channel(), _Channel()
        self.registry.opened(self.info(), busy)
        self.registry.opened(self.info(), gone)
        self.registry.closed(gone)
        busy.answers.append(Deferred())
        self.assertIsNone(self.registry.open_route(transaction(), REPORT))
        self.assertEqual(len(self.registry), 1)
