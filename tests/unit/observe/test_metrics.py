"""Each ``dicom_gateway_*`` metric moves on the events that should move it (injected registry)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.blocking import SynchronousRunner
from gateway.forward_types import ForwardObserver
from gateway.observe import (
    OTHER,
    GatewayMetrics,
    StateRefresher,
    allowlisted_titles,
    fold_modality,
)
from gateway.queue.interfaces import DestinationStats, Entry, EntryState, InstanceRecord


def _entry(destination: str = "pacs", route: str = "r1", received_at: float = 100.0) -> Entry:
    record = InstanceRecord(
        instance_id="i1", path="/x", sop_class_uid="1.2", sop_instance_uid="1.2.3", transfer_syntax_uid="1.2.840.10008.1.2",
        size=10, sha256="", received_at=received_at, correlation_id="c1",
    )
    return Entry(
        entry_id=1, instance=record, route=route, destination=destination, path="/x", state=EntryState.LEASED,
        attempts=0, enqueued_at=received_at, next_attempt_at=received_at,
    )


@dataclass(frozen=True)
class _Summary:
    modality: str | None


@dataclass(frozen=True)
class _Spooled:
    summary: _Summary


@dataclass(frozen=True)
class _Report:
    calling_ae_title: str
    status: int
    size: int
    spooled: Any = None


@dataclass(frozen=True)
class _Admission:
    matched: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()
    unrouted: bool = False


class MetricsTestCase(SynchronousTestCase):
    """A fresh registry and metrics per test."""

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.now = 1000.0
        self.metrics = GatewayMetrics(self.registry, ["CT01"], wall=lambda: self.now, version="9.9")

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


class LabelTests(SynchronousTestCase):
    """Label values are bounded whatever a peer sends."""

    def test_modality_defined_term_is_kept_and_others_fold(self) -> None:
        """A PS3.3 defined term keeps its value; garbage becomes other; absence becomes unknown."""
        self.assertEqual(fold_modality("CT"), "CT")
        self.assertEqual(fold_modality(" mr "), "MR")
        self.assertEqual(fold_modality("../../etc"), OTHER)
        self.assertEqual(fold_modality(""), "unknown")

    def test_only_literal_accept_entries_are_allowlisted(self) -> None:
        """Glob entries of the accept list are not label values; literal ones and metrics entries are."""
        self.assertEqual(allowlisted_titles(["CT*", "MR01", "US?"], ["PACS "]), frozenset({"MR01", "PACS"}))


class AssociationMetricTests(MetricsTestCase):
    """associations_total, associations_active, artim and DIMSE errors."""

    def test_accept_counts_and_opens(self) -> None:
        """An accepted association counts under its allow-listed title and raises the active gauge."""
        self.metrics.association_accepted("main", "CT01")
        self.assertEqual(self.value("dicom_gateway_associations_total", listener="main", calling_ae="CT01", result="accepted"), 1)
        self.assertEqual(self.value("dicom_gateway_associations_active", listener="main"), 1)

    def test_unknown_title_is_folded_into_other(self) -> None:
        """A hostile title never becomes a label value."""
        self.metrics.association_rejected("main", "%s%n../x")
        self.assertEqual(self.value("dicom_gateway_associations_total", listener="main", calling_ae="other", result="rejected"), 1)
        self.assertNotIn(b"%s%n", generate_latest(self.registry))

    def test_rejection_counts_under_its_reason(self) -> None:
        """HARDENING P16: associations_rejected_total{reason="limit"}; an unknown reason is folded into other."""
        self.metrics.declare([], [], ["main"])
        self.assertEqual(self.value("dicom_gateway_associations_rejected_total", listener="main", reason="limit"), 0)
        self.metrics.association_rejected("main", "CT01", "limit")
        self.metrics.association_rejected("main", "CT01", "%s../x")
        self.assertEqual(self.value("dicom_gateway_associations_rejected_total", listener="main", reason="limit"), 1)
        self.assertEqual(self.value("dicom_gateway_associations_rejected_total", listener="main", reason="other"), 1)
        self.assertNotIn(b"%s../x", generate_latest(self.registry))

    def test_abort_counts_aborted_and_release_does_not(self) -> None:
        """An association that ends without A-RELEASE counts as aborted; both close the active gauge."""
        for _ in range(2):
            self.metrics.association_accepted("main", "CT01")
        self.metrics.association_ended("main", "CT01", released=True)
        self.metrics.association_ended("main", "CT01", released=False)
        self.assertEqual(self.value("dicom_gateway_associations_total", listener="main", calling_ae="CT01", result="aborted"), 1)
        self.assertEqual(self.value("dicom_gateway_associations_active", listener="main"), 0)

    def test_artim_and_dimse_errors(self) -> None:
        """ARTIM expiries and DIMSE protocol errors have their own counters."""
        self.metrics.artim_expired("main")
        self.metrics.dimse_protocol_error("main")
        self.assertEqual(self.value("dicom_gateway_artim_expired_total", listener="main"), 1)
        self.assertEqual(self.value("dicom_gateway_dimse_protocol_errors_total", listener="main"), 1)


class PduErrorMetricTests(MetricsTestCase):
    """Connections aborted for bad PDUs (HARDENING P37)."""

    def test_each_abort_reason_is_its_own_bounded_label(self) -> None:
        """Reasons 1 and 6 are named; an unknown reason is folded into 'other'."""
        self.metrics.pdu_protocol_error("main", 1)
        self.metrics.pdu_protocol_error("main", 6)
        self.metrics.pdu_protocol_error("main", 6)
        self.metrics.pdu_protocol_error("main", 99)
        value = lambda reason: self.registry.get_sample_value(  # noqa: E731
            "dicom_gateway_pdu_protocol_errors_total", {"listener": "main", "reason": reason}
        )
        self.assertEqual((value("unrecognized_pdu"), value("invalid_parameter_value"), value("other")), (1, 2, 1))


class InstanceMetricTests(MetricsTestCase):
    """instances_received_total, received_bytes_total, store_failures_total."""

    def test_success_counts_instance_and_bytes_by_modality(self) -> None:
        """A 0x0000 report counts one instance of its modality and its bytes."""
        self.metrics.instance_reported(_Report("CT01", 0, 500, _Spooled(_Summary("CT"))))
        self.assertEqual(self.value("dicom_gateway_instances_received_total", calling_ae="CT01", modality="CT"), 1)
        self.assertEqual(self.value("dicom_gateway_received_bytes_total", calling_ae="CT01"), 500)

    def test_failure_counts_status_not_instance(self) -> None:
        """A 0xA700 answer counts as a store failure with its hex status and not as received."""
        self.metrics.instance_reported(_Report("CT01", 0xA700, 500))
        self.assertEqual(self.value("dicom_gateway_store_failures_total", status="0xA700"), 1)
        self.assertIsNone(self.value("dicom_gateway_received_bytes_total", calling_ae="CT01"))


class RoutingMetricTests(MetricsTestCase):
    """route_matches_total, instances_unrouted_total, duplicates_total, morph_errors_total."""

    def test_admission_counts_routes_and_duplicates(self) -> None:
        """Each matched route counts once; each duplicate destination counts."""
        self.metrics.admitted(_Admission(matched=("r1", "r2", "r1"), duplicates=("pacs",)))
        self.assertEqual(self.value("dicom_gateway_route_matches_total", route="r1"), 1)
        self.assertEqual(self.value("dicom_gateway_route_matches_total", route="r2"), 1)
        self.assertEqual(self.value("dicom_gateway_duplicates_total", destination="pacs"), 1)

    def test_unrouted_admission(self) -> None:
        """An unrouted admission counts in instances_unrouted_total."""
        self.metrics.admitted(_Admission(unrouted=True))
        self.assertEqual(self.value("dicom_gateway_instances_unrouted_total"), 1)

    def test_morph_dead_letter_counts_for_its_route(self) -> None:
        """A dead letter whose reason is a morph failure counts a morph error for the entry's route."""
        self.metrics.forward_observer().dead_lettered(_entry(route="anon"), "morph: bad template")
        self.assertEqual(self.value("dicom_gateway_morph_errors_total", route="anon"), 1)

    def test_dead_letters_are_counted_by_reason_class(self) -> None:
        """dead_lettered_total carries the bounded reason class, never the free text."""
        observer = self.metrics.forward_observer()
        observer.dead_lettered(_entry(route="anon"), "morph: bad template 1.2.3.4")
        observer.dead_lettered(_entry(route="anon"), "refused (status 0x0122)")
        entry = _entry(route="anon")
        self.assertEqual(self.value("dicom_gateway_dead_lettered_total", destination=entry.destination, reason="morph"), 1)
        self.assertEqual(self.value("dicom_gateway_dead_lettered_total", destination=entry.destination, reason="refused"), 1)


class ForwardMetricTests(MetricsTestCase):
    """The forward observer feeds the delivery metrics."""

    def setUp(self) -> None:
        super().setUp()
        self.observer = self.metrics.forward_observer()

    def test_observer_is_a_forward_observer(self) -> None:
        """Workers accept it where they accept a ForwardObserver."""
        self.assertIsInstance(self.observer, ForwardObserver)

    def test_delivered_counts_and_observes_both_histograms(self) -> None:
        """A delivery counts, observes its send time and its age since receipt."""
        self.now = 160.0
        self.observer.delivered(_entry(received_at=100.0), 0.2, "")
        self.assertEqual(self.value("dicom_gateway_forwarded_total", destination="pacs"), 1)
        self.assertEqual(self.value("dicom_gateway_forward_duration_seconds_sum", destination="pacs"), 0.2)
        self.assertEqual(self.value("dicom_gateway_end_to_end_seconds_sum", destination="pacs"), 60.0)
        self.assertEqual(self.value("dicom_gateway_end_to_end_seconds_bucket", destination="pacs", le="60.0"), 1)
        self.assertEqual(self.value("dicom_gateway_end_to_end_seconds_bucket", destination="pacs", le="30.0"), 0)

    def test_retry_is_a_transient_failure(self) -> None:
        """A retried attempt counts a retry and a transient failure."""
        self.observer.retried(_entry(), "0xA700")
        self.assertEqual(self.value("dicom_gateway_retries_total", destination="pacs"), 1)
        self.assertEqual(self.value("dicom_gateway_forward_failures_total", destination="pacs", kind="transient"), 1)

    def test_dead_letter_is_a_permanent_failure(self) -> None:
        """A dead-lettered entry counts a permanent failure."""
        self.observer.dead_lettered(_entry(), "0xC000")
        self.assertEqual(self.value("dicom_gateway_forward_failures_total", destination="pacs", kind="permanent"), 1)

    def test_destination_down_and_up_move_the_up_gauge(self) -> None:
        """The circuit opening sets destination_up to 0 at once; closing sets it back to 1."""
        self.metrics.snapshot = StateRefresherTests.snapshot_for(["pacs"])
        self.observer.destination_down("pacs", "refused", permanent=False)
        self.assertEqual(self.value("dicom_gateway_destination_up", destination="pacs"), 0)
        self.assertEqual(self.value("dicom_gateway_destination_down_events_total", destination="pacs"), 1)
        self.observer.destination_up("pacs")
        self.assertEqual(self.value("dicom_gateway_destination_up", destination="pacs"), 1)

    def test_every_destination_wide_fault_counts_a_failure_of_its_kind(self) -> None:
        """Each fault counts, not only the one that opens the circuit: two refusals and a permanent rejection."""
        self.observer.destination_fault("pacs", "refused", permanent=False)
        self.observer.destination_fault("pacs", "refused", permanent=False)
        self.observer.destination_fault("pacs", "rejected (1, 1, 7)", permanent=True)
        self.assertEqual(self.value("dicom_gateway_forward_failures_total", destination="pacs", kind="transient"), 2)
        self.assertEqual(self.value("dicom_gateway_forward_failures_total", destination="pacs", kind="permanent"), 1)

    def test_redelivery(self) -> None:
        """A delivery after an ambiguous attempt counts a redelivery."""
        self.observer.redelivered(_entry())
        self.assertEqual(self.value("dicom_gateway_redeliveries_total", destination="pacs"), 1)


class ProcessMetricTests(MetricsTestCase):
    """build_info, config_reloads_total and declared series."""

    def test_build_info_carries_the_version(self) -> None:
        """build_info is 1 with the version label."""
        self.assertEqual(self.value("dicom_gateway_build_info", version="9.9"), 1)

    def test_reload_results(self) -> None:
        """Applied and refused reloads count separately."""
        self.metrics.config_reloaded(True)
        self.metrics.config_reloaded(False)
        self.metrics.config_reloaded(False)
        self.assertEqual(self.value("dicom_gateway_config_reloads_total", result="success"), 1)
        self.assertEqual(self.value("dicom_gateway_config_reloads_total", result="failure"), 2)

    def test_declare_creates_zero_series(self) -> None:
        """Configured names have series at 0 before any event, so rates and alerts see them."""
        self.metrics.declare(["pacs"], ["r1"], ["main"])
        self.assertEqual(self.value("dicom_gateway_forwarded_total", destination="pacs"), 0)
        self.assertEqual(self.value("dicom_gateway_route_matches_total", route="r1"), 0)
        self.assertEqual(self.value("dicom_gateway_associations_active", listener="main"), 0)

    def test_out_of_resources_series_exists_at_zero(self) -> None:
        """HARDENING D11/D12: store_failures_total{status="0xA700"} is 0 before any failure, so increase() sees the first."""
        self.assertEqual(self.value("dicom_gateway_store_failures_total", status="0xA700"), 0)
        self.assertIn(b'dicom_gateway_store_failures_total{status="0xA700"} 0.0', generate_latest(self.registry))


class _StatsStore:
    """Just enough of IQueueStore for the refresher."""

    def __init__(self, stats: dict[str, DestinationStats]) -> None:
        self.result = stats
        self.calls = 0

    def stats(self, now: float) -> dict[str, DestinationStats]:
        self.calls += 1
        return self.result


class StateRefresherTests(MetricsTestCase):
    """The state gauges come from a snapshot renewed on a timer, never at scrape time."""

    @staticmethod
    def snapshot_for(names: list[str]) -> Any:
        from gateway.observe import DestinationState, StateSnapshot

        return StateSnapshot(tuple(DestinationState(n, 0, 0.0, 0, True) for n in names), 1, 2, 3, 1.0)

    def setUp(self) -> None:
        super().setUp()
        self.spool = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(self.spool, True))
        with open(os.path.join(self.spool, "a.dcm"), "wb") as f:
            f.write(b"x" * 1234)
        self.store = _StatsStore(
            {"pacs": DestinationStats("pacs", queued=3, in_flight=1, dead=2, oldest_queued_at=940.0, circuit_open=True)}
        )
        self.clock = Clock()
        self.refresher = StateRefresher(
            metrics=self.metrics, store=self.store, store_runner=SynchronousRunner(), file_runner=SynchronousRunner(),
            spool_root=self.spool, destinations=lambda: ["pacs", "idle"], down=lambda: [], clock=self.clock,
            wall=lambda: self.now, interval=5.0,
        )

    def test_refresh_sets_queue_and_spool_gauges(self) -> None:
        """Depth, oldest age, dead letters, up and spool bytes reflect the store and the spool."""
        self.refresher.start()
        self.addCleanup(self.refresher.stop)
        self.assertEqual(self.value("dicom_gateway_queue_depth", destination="pacs"), 4)
        self.assertEqual(self.value("dicom_gateway_queue_oldest_age_seconds", destination="pacs"), 60.0)
        self.assertEqual(self.value("dicom_gateway_dead_letters", destination="pacs"), 2)
        self.assertEqual(self.value("dicom_gateway_destination_up", destination="pacs"), 0)
        self.assertEqual(self.value("dicom_gateway_queue_depth", destination="idle"), 0)
        self.assertEqual(self.value("dicom_gateway_destination_up", destination="idle"), 1)
        self.assertEqual(self.value("dicom_gateway_spool_used_bytes"), 1234)
        self.assertGreater(self.value("dicom_gateway_spool_free_bytes") or 0, 0)

    def test_scrape_does_not_call_the_store(self) -> None:
        """Rendering the metrics reads the cached snapshot only."""
        self.refresher.start()
        self.addCleanup(self.refresher.stop)
        calls = self.store.calls
        generate_latest(self.registry)
        generate_latest(self.registry)
        self.assertEqual(self.store.calls, calls)

    def test_refresh_repeats_on_the_interval(self) -> None:
        """A new snapshot is taken every interval."""
        self.refresher.start()
        self.addCleanup(self.refresher.stop)
        self.store.result = {"pacs": DestinationStats("pacs", queued=9)}
        self.clock.advance(5.0)
        self.assertEqual(self.value("dicom_gateway_queue_depth", destination="pacs"), 9)
        self.assertEqual(self.store.calls, 2)
