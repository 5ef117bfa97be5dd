"""The Storage Commitment metrics of :mod:`gateway.observe` (issue 15).

Counters move at the events of :mod:`gateway.events` (through
:meth:`GatewayMetrics.observe`, as the service's fan-out calls it); the
gauges of reports owed, overdue and dead come from the journal's
:meth:`~gateway.queue.commitments.ICommitmentJournal.transaction_stats`,
read by a :class:`~gateway.observe.StateRefresher` refresh, never at scrape
time. All read from a private registry.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer_only

from gateway import events
from gateway.blocking import SynchronousRunner
from gateway.observe import GatewayMetrics, StateRefresher
from gateway.queue.commitments import NewTransaction, Reference
from gateway.queue.interfaces import IQueueStore
from gateway.queue.memory import MemoryQueueStore

T0 = 1_000_000.0


@implementer_only(IQueueStore)
class _QueueOnly(MemoryQueueStore):
    """A queue store that keeps no Storage Commitment journal (a store from before issue 15)."""


def _new(uid: str, deadline: float) -> NewTransaction:
    """A transaction asking about one instance, due at ``deadline``."""
    return NewTransaction(
        transaction_uid=uid, calling_ae_title="CT1", called_ae_title="GW", modality="ct1", listener="l1",
        policy="delivered", references=(Reference("1.2.840.10008.5.1.4.1.1.2", uid + ".1"),),
        deadline=deadline, report_deadline=deadline + 86400, lookback_from=T0 - 86400,
    )


def _requested(outcome: str, status: int = 0) -> events.CommitmentRequested:
    """An N-ACTION answered with ``outcome``."""
    return events.CommitmentRequested("l1", "CT1", "10.0.0.1:4000", "1.2.3.4", outcome, status, 3)


class CommitmentCounterTests(SynchronousTestCase):
    """Counters and the latency histogram, from events."""

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, wall=lambda: T0)

    def value(self, name: str, **labels: str) -> float | None:
        """One sample of the registry."""
        return self.registry.get_sample_value(name, labels)

    def test_request_outcomes_exist_at_zero_and_count(self) -> None:
        """Every outcome's series exists from the start (increase() sees the first), and each request counts under its own."""
        for outcome in ("accepted", "repeated", "refused", "invalid", "conflict", "unavailable"):
            self.assertEqual(self.value("dicom_gateway_commitment_requests_total", outcome=outcome), 0.0)
        self.metrics.observe(_requested("accepted"))
        self.metrics.observe(_requested("accepted"))
        self.metrics.observe(_requested("refused", 0x0124))
        self.assertEqual(self.value("dicom_gateway_commitment_requests_total", outcome="accepted"), 2.0)
        self.assertEqual(self.value("dicom_gateway_commitment_requests_total", outcome="refused"), 1.0)

    def test_unknown_outcome_is_folded(self) -> None:
        """An outcome outside the fixed set counts as ``other`` (bounded labels, HARDENING P10)."""
        self.metrics.observe(_requested("\x1b[31mweird"))
        self.assertEqual(self.value("dicom_gateway_commitment_requests_total", outcome="other"), 1.0)
        self.assertNotIn(b"weird", generate_latest(self.registry))

    def test_report_sent_observes_latency_by_policy_and_counts_the_result(self) -> None:
        """A delivered report is observed in the latency histogram under its policy and counted as committed or failures."""
        self.metrics.observe(events.CommitmentReportSent("1.2.3", "ct1", "CT1", "delivered", 1, 3, 0, 42.0, 1))
        self.metrics.observe(events.CommitmentReportSent("1.2.4", "ct1", "CT1", "delivered", 2, 2, 1, 4000.0, 3))
        self.assertEqual(self.value("dicom_gateway_commitment_latency_seconds_count", policy="delivered"), 2.0)
        self.assertEqual(self.value("dicom_gateway_commitment_latency_seconds_sum", policy="delivered"), 4042.0)
        self.assertEqual(self.value("dicom_gateway_commitment_latency_seconds_bucket", policy="delivered", le="60.0"), 1.0)
        self.assertEqual(self.value("dicom_gateway_commitment_reports_total", result="committed"), 1.0)
        self.assertEqual(self.value("dicom_gateway_commitment_reports_total", result="failures"), 1.0)

    def test_latency_series_exist_for_each_policy_from_the_start(self) -> None:
        """Each policy's latency histogram exists at 0 before any report (the dashboard's p95 is never "no data")."""
        for policy in ("received", "delivered", "committed"):
            self.assertEqual(self.value("dicom_gateway_commitment_latency_seconds_count", policy=policy), 0.0)

    def test_report_failures_count(self) -> None:
        """Each failed delivery attempt counts, the last one (dead) included."""
        self.assertEqual(self.value("dicom_gateway_commitment_report_failures_total"), 0.0)
        self.metrics.observe(events.CommitmentReportFailed("1.2.3", "ct1", "connection refused", 1, 10.0))
        self.metrics.observe(events.CommitmentReportFailed("1.2.3", "ct1", "connection refused", 2, 0.0, dead=True))
        self.assertEqual(self.value("dicom_gateway_commitment_report_failures_total"), 2.0)

    def test_archive_requests_and_reports_by_destination(self) -> None:
        """Archives' series exist at 0 once declared; requests and reports count per destination, an unknown Transaction UID as ``unknown``."""
        self.metrics.declare(["pacs", "vna"], [], [], archives=["vna"])
        self.assertEqual(self.value("dicom_gateway_archive_commitment_requests_total", destination="vna"), 0.0)
        self.assertIsNone(self.value("dicom_gateway_archive_commitment_requests_total", destination="pacs"))
        self.metrics.observe(events.ArchiveCommitmentRequested("vna", "2.25.1", 10, 0))
        self.metrics.observe(events.ArchiveCommitmentReported("vna", "VNA", "2.25.1", 10, 0, 0))
        self.metrics.observe(events.ArchiveCommitmentReported("", "VNA", "2.25.9", 1, 0, 0x0110))
        self.assertEqual(self.value("dicom_gateway_archive_commitment_requests_total", destination="vna"), 1.0)
        self.assertEqual(self.value("dicom_gateway_archive_commitment_reports_total", destination="vna"), 1.0)
        self.assertEqual(self.value("dicom_gateway_archive_commitment_reports_total", destination="unknown"), 1.0)


class CommitmentGaugeTests(SynchronousTestCase):
    """Reports owed, overdue and dead, from the journal through the refresher."""

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, wall=lambda: T0)
        self.spool = self.mktemp()
        os.makedirs(self.spool)

    def refresh(self, store: MemoryQueueStore) -> None:
        """One synchronous refresh over ``store``."""
        StateRefresher(
            metrics=self.metrics, store=store, store_runner=SynchronousRunner(), file_runner=SynchronousRunner(),
            spool_root=self.spool, destinations=lambda: ["pacs"], down=lambda: [], clock=Clock(), wall=lambda: T0,
        ).refresh()

    def value(self, name: str) -> float | None:
        """One unlabelled sample of the registry."""
        return self.registry.get_sample_value(name, {})

    def test_gauges_follow_the_journal(self) -> None:
        """owed = open transactions, overdue = open past their deadline, dead = given up, as the journal counts them at the refresh."""
        store = MemoryQueueStore("gw-a")
        store.add_transaction(_new("2.25.1", T0 + 3600), T0 - 10)  # owed, on time
        store.add_transaction(_new("2.25.2", T0 - 60), T0 - 4000)  # owed, overdue
        store.add_transaction(_new("2.25.3", T0 - 60), T0 - 4000)  # given up
        leased = {t.transaction_uid: t for t in store.lease_transactions(T0 - 4000, 10, 60)}["2.25.3"]
        store.transaction_dead("2.25.3", "report_deadline passed", T0 - 3000, leased.lease_generation)
        self.refresh(store)
        self.assertEqual(self.value("dicom_gateway_commitment_reports_owed"), 2.0)
        self.assertEqual(self.value("dicom_gateway_commitment_reports_overdue"), 1.0)
        self.assertEqual(self.value("dicom_gateway_commitment_reports_dead"), 1.0)

    def test_scrape_does_not_read_the_journal(self) -> None:
        """A scrape reads the snapshot only: a transaction added after the refresh is not seen until the next one."""
        store = MemoryQueueStore("gw-a")
        self.refresh(store)
        store.add_transaction(_new("2.25.1", T0 + 3600), T0)
        generate_latest(self.registry)
        self.assertEqual(self.value("dicom_gateway_commitment_reports_owed"), 0.0)
        self.refresh(store)
        self.assertEqual(self.value("dicom_gateway_commitment_reports_owed"), 1.0)

    def test_no_gauges_without_a_commitment_journal(self) -> None:
        """A store that journals no commitments exports no commitment gauges (absent, not a false 0)."""
        self.refresh(_QueueOnly("gw-a"))
        self.assertIsNone(self.value("dicom_gateway_commitment_reports_owed"))
        self.assertIsNotNone(self.value("dicom_gateway_state_snapshot_timestamp_seconds"))
