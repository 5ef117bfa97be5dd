"""Prometheus metrics of the gateway: the ``dicom_gateway_*`` contract (issue 6, HARDENING decision 11).

:class:`GatewayMetrics` owns every metric, registered in a
:class:`~prometheus_client.CollectorRegistry` handed to it (never the
global ``REGISTRY``: tests build their own, as prometheus-client's own
tests do). Its methods are named for the events that move the metrics
(``association_accepted``, ``instance_reported``, ``route_matched``...);
the adapters call them and never touch a metric object.

Counters move at events. The gauges that describe the queue and the spool
(queue depth, oldest age, dead letters, destination up, spool free/used
bytes) are computed from a cached :class:`StateSnapshot` that
:class:`StateRefresher` renews every few seconds through the store's own
runner thread; a scrape only reads that snapshot, so ``/metrics`` never
blocks on SQLite or on a walk of the spool (HARDENING L8: scrape < 1 s with a
1M backlog).

Label values are bounded (HARDENING P10): destination and route names come
from the configuration; calling AE titles are kept only when they are
allow-listed (literal entries of ``accept.calling_ae_titles`` or
``metrics.calling_ae_titles``), every other title becomes ``other``;
modality is one of the defined terms of PS3.3 C.7.3.1.1.1, else ``other``;
store failure statuses are the gateway's own answers; Storage Commitment
outcomes and policies are fixed sets (:data:`COMMITMENT_OUTCOMES`), and no
Transaction UID or requester AE title is ever a label.

Storage Commitment (issue 15): counters move at the events of
:mod:`gateway.events` (requests answered, reports delivered or failed,
archives asked and reporting); the reports owed, overdue and dead are
gauges read from :meth:`ICommitmentJournal.transaction_stats` into the
snapshot, as the queue's figures are.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway import __version__, events
from gateway.blocking import IBlockingRunner
from gateway.forward_types import ForwardObserver
from gateway.heartbeat import said_stopped
from gateway.queue.commitments import ICommitmentJournal, TransactionStats
from gateway.queue.interfaces import DestinationStats, Entry, IQueueStore, StoreUnavailable
from gateway.queue.outcome import DeadLetterKind
from gateway.queue.retrieves import IRetrieveJournal

#: Every metric name starts with this.
PREFIX = "dicom_gateway"

#: The label value for anything outside a bounded set.
OTHER = "other"

#: Modality defined terms (PS3.3 C.7.3.1.1.1, current and retired ones still
#: seen in the field). Anything else is counted as ``other``.
MODALITIES = frozenset(
    {
        "AR", "ASMT", "AU", "BDUS", "BI", "BMD", "CR", "CT", "CTPROTOCOL", "DG", "DOC", "DX", "ECG",
        "EPS", "ES", "FID", "GM", "HC", "HD", "IO", "IOL", "IVOCT", "IVUS", "KER", "KO", "LEN", "LS",
        "MG", "MR", "M3D", "NM", "OAM", "OCT", "OP", "OPM", "OPT", "OPTBSV", "OPTENF", "OPV", "OSS",
        "OT", "PLAN", "PR", "PT", "PX", "REG", "RESP", "RF", "RG", "RTDOSE", "RTIMAGE", "RTINTENT",
        "RTPLAN", "RTRAD", "RTRECORD", "RTSEGANN", "RTSTRUCT", "RWV", "SEG", "SM", "SMR", "SR",
        "SRF", "STAIN", "TEXTUREMAP", "TG", "US", "VA", "XA", "XC",
        # Retired terms (PS3.3 C.7.3.1.1.1 note) that older modalities still send.
        "DS", "DF", "CF", "CD", "DM", "EC", "FA", "FS", "LP", "MA", "MS", "OPR", "ST", "VF",
    }
)

#: Buckets of ``forward_duration_seconds`` (one instance to one destination).
FORWARD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Buckets of ``end_to_end_seconds`` (receipt to delivery, retries and outages included).
END_TO_END_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)

#: C-STORE statuses that are not failures (PS3.4 B.2.3: success and the warnings 0xB000, 0xB006, 0xB007).
_NOT_FAILURES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})

#: The ``reason`` label of ``associations_rejected_total`` (HARDENING P16):
#: ``limit`` (max_associations, RJ 2,3,2), ``space`` (below spool.min_free,
#: RJ 2,3,1), ``acse`` (PS3.8 ACSE checks: version, application context,
#: called AE title, no context), ``access`` (the calling AE, address or
#: certificate policy), ``identity`` (user identity, PS3.7 D.3.3.7), ``draining``
#: (``dicom-gateway drain`` past its grace, RJ 2,3,2; issue 14), ``store`` (the queue
#: store does not answer the node's heartbeats, RJ 2,3,1; issue 14), ``other``.
REJECT_REASONS = ("limit", "space", "acse", "access", "identity", "draining", "store", "other")

#: The ``outcome`` label of ``commitment_requests_total`` (issue 15): how an
#: N-ACTION-RQ of Storage Commitment was answered (see
#: :class:`gateway.events.CommitmentRequested`); anything else is ``other``.
COMMITMENT_OUTCOMES = ("accepted", "repeated", "refused", "invalid", "conflict", "unavailable", "other")

#: The ``policy`` label of ``commitment_latency_seconds`` (``commitment.policy`` values).
COMMITMENT_POLICY_LABELS = ("received", "delivered", "committed", "other")

#: Buckets of ``commitment_latency_seconds``: N-ACTION to the acknowledged report,
#: seconds (``received``) to a day (``committed`` with a slow archive).
COMMITMENT_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0, 172800.0)

#: The ``outcome`` label of ``queries_total`` (issue 16; :data:`gateway.events.QUERY_OUTCOMES`).
QUERY_OUTCOME_LABELS = events.QUERY_OUTCOMES + ("other",)

#: The ``table`` label of ``retrieve_journal_purged_total`` (issue 16's clean-up).
RETRIEVE_JOURNAL_TABLES: tuple[str, ...] = ("retrieves", "retrieve_items", "remapped_uids")

#: The ``verb`` and ``outcome`` labels of ``retrieves_total`` (issue 16).
RETRIEVE_VERBS = ("move", "get")
RETRIEVE_OUTCOME_LABELS = events.RETRIEVE_OUTCOMES + ("other",)

#: The ``result`` label of ``retrieve_suboperations_total``: the C-MOVE/C-GET
#: sub-operation counts of the final response (PS3.7 9.1.3.1, 9.1.4.1).
SUBOPERATION_RESULTS = ("completed", "failed", "warning")

#: Buckets of ``query_latency_seconds`` (one source's part of a query): a
#: PACS answers in tens of milliseconds to seconds; ``query.timeout`` is 30s by default.
#: The HTTP statuses a DICOMweb destination's answers are counted by; others fold into ``4xx``/``5xx``/``other``.
DICOMWEB_CODES = frozenset({200, 202, 204, 400, 401, 403, 404, 408, 409, 413, 415, 429, 500, 502, 503, 504})


def dicomweb_code_label(code: int) -> str:
    """The ``code`` label of ``dicomweb_responses_total``: the status itself for the known ones, else its class.

    :param code: the HTTP status, 0 when the request got no answer.
    """
    if code == 0:
        return "none"
    if code in DICOMWEB_CODES:
        return str(code)
    if 400 <= code <= 599:
        return f"{code // 100}xx"
    return OTHER


QUERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def fold_modality(modality: str | None) -> str:
    """The modality label: a defined term of PS3.3 C.7.3.1.1.1, ``unknown`` when absent, else ``other``.

    :param modality: the instance's Modality (0008,0060), as read.
    :returns: a bounded label value.
    """
    if not modality:
        return "unknown"
    value = modality.strip().upper()
    return value if value in MODALITIES else OTHER


def allowlisted_titles(accept_titles: Iterable[str], metrics_titles: Iterable[str]) -> frozenset[str]:
    """The calling AE titles that get their own label value.

    :param accept_titles: ``accept.calling_ae_titles`` (globs; only literal entries count).
    :param metrics_titles: ``metrics.calling_ae_titles`` (all literal).
    :returns: the stripped titles.
    """
    literal = {t for t in accept_titles if not any(c in t for c in "*?[")}
    return frozenset(t.strip() for t in (*literal, *metrics_titles) if t.strip())


class AELabels:
    """Folds a peer-supplied calling AE title to a bounded label value.

    :param allowed: titles kept as they are (leading/trailing spaces are not
        significant in an AE title, PS3.5 6.2).
    """

    def __init__(self, allowed: Iterable[str]) -> None:
        self._allowed = frozenset(t.strip() for t in allowed)

    def __call__(self, title: str) -> str:
        """The label for ``title``: itself when allow-listed, else ``other``."""
        stripped = title.strip()
        return stripped if stripped in self._allowed else OTHER


@dataclass(frozen=True)
class DestinationState:
    """One destination's figures at snapshot time.

    :ivar depth: entries waiting or being sent (queued + in flight).
    :ivar oldest_age: seconds since the oldest waiting entry was queued (0 when none).
    :ivar dead: dead letters.
    :ivar up: whether the destination's circuit is closed (its last attempt or probe succeeded).
    :ivar stranded: queued entries only an absent node can send (node-local spools, issue 14).
    """

    name: str
    depth: int
    oldest_age: float
    dead: int
    up: bool
    stranded: int = 0


@dataclass(frozen=True)
class NodeState:
    """One node of the cluster at snapshot time (issue 14), from the store's node table.

    :ivar node: its name.
    :ivar last_seen: its last heartbeat (wall clock); the age is computed at scrape time.
    :ivar leases: entries it holds leased.
    :ivar slots: association slots it holds.
    :ivar stopped: its last heartbeat said it stopped cleanly (not late: not reported).
    """

    node: str
    last_seen: float
    leases: int = 0
    slots: int = 0
    stopped: bool = False


@dataclass(frozen=True)
class StateSnapshot:
    """What the scrape-time gauges report; replaced as a whole by :class:`StateRefresher`.

    :ivar taken_at: wall time of the snapshot (0 before the first one).
    :ivar nodes: every node of the store's node table (issue 14).
    """

    destinations: tuple[DestinationState, ...] = ()
    spool_free_bytes: int | None = None
    spool_used_bytes: int | None = None
    spool_capacity_bytes: int | None = None
    taken_at: float = 0.0
    nodes: tuple[NodeState, ...] = ()
    #: Storage Commitment transactions (issue 15), when the store journals them.
    commitments: TransactionStats | None = None
    #: OPEN retrieves by kind (issue 16), when the store journals them.
    retrieves_open: Mapping[str, int] | None = None


def destination_states(
    stats: Mapping[str, DestinationStats], names: Sequence[str], now: float, down: Iterable[str] = ()
) -> tuple[DestinationState, ...]:
    """Per-destination figures from the store's statistics.

    :param stats: :meth:`IQueueStore.stats` output.
    :param names: the configured destinations (each gets a row, even with no entries).
    :param now: wall time, for ages.
    :param down: destinations whose circuit is open now (from the workers);
        the journal's ``circuit_open`` is used as well.
    :returns: one state per configured destination, in configuration order.
    """
    down_set = set(down)
    states = []
    for name in names:
        s = stats.get(name, DestinationStats(destination=name))
        oldest = 0.0 if s.oldest_queued_at is None else max(0.0, now - s.oldest_queued_at)
        states.append(
            DestinationState(
                name=name,
                depth=s.queued + s.in_flight,
                oldest_age=oldest,
                dead=s.dead,
                up=not (s.circuit_open or name in down_set),
                stranded=s.stranded,
            )
        )
    return tuple(states)


def spool_usage(root: str) -> tuple[int, int, int]:
    """Free, used and total bytes of a spool (blocking: statvfs and a walk; run it off the reactor).

    :param root: the spool directory.
    :returns: ``(free, used, capacity)``: free is what an unprivileged
        process may still write, used is the size of the files under ``root``,
        capacity is the size of the filesystem.
    """
    st = os.statvfs(root)
    used = 0
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                for item in it:
                    try:
                        if item.is_dir(follow_symlinks=False):
                            stack.append(item.path)
                        elif item.is_file(follow_symlinks=False):
                            used += item.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue  # removed while we walked
        except OSError:
            continue
    return st.f_bavail * st.f_frsize, used, st.f_blocks * st.f_frsize


class SnapshotCollector(Collector):
    """Yields the state gauges from the current snapshot; never does I/O (a scrape must not block).

    :param snapshot: returns the latest :class:`StateSnapshot`.
    """

    def __init__(self, snapshot: Callable[[], StateSnapshot], wall: Callable[[], float] = time.time) -> None:
        self._snapshot = snapshot
        self._wall = wall

    def describe(self) -> list[Any]:
        """No description: the collector is called at scrape time only (prometheus-client custom collectors)."""
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The gauges, labelled by destination."""
        snap = self._snapshot()
        depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Entries queued or in flight per destination.", labels=["destination"])
        oldest = GaugeMetricFamily(
            f"{PREFIX}_queue_oldest_age_seconds", "Age of the oldest queued entry per destination.", labels=["destination"]
        )
        dead = GaugeMetricFamily(f"{PREFIX}_dead_letters", "Dead letters per destination.", labels=["destination"])
        up = GaugeMetricFamily(
            f"{PREFIX}_destination_up", "1 when the destination's last attempt or probe succeeded.", labels=["destination"]
        )
        stranded = GaugeMetricFamily(
            f"{PREFIX}_queue_stranded",
            "Queued entries only an absent node can send (node-local spools; issue 14).",
            labels=["destination"],
        )
        for state in snap.destinations:
            depth.add_metric([state.name], state.depth)
            oldest.add_metric([state.name], state.oldest_age)
            dead.add_metric([state.name], state.dead)
            up.add_metric([state.name], 1.0 if state.up else 0.0)
            stranded.add_metric([state.name], state.stranded)
        yield from (depth, oldest, dead, up, stranded)
        if snap.nodes:
            # Every node reports every node: a dead node's age is still exported by the live ones.
            # Prometheus's ``instance`` label tells the reporting processes apart.
            age = GaugeMetricFamily(
                f"{PREFIX}_node_heartbeat_age_seconds",
                "Seconds since each node's last heartbeat in the shared store, as this node sees it (issue 14).",
                labels=["node"],
            )
            leases = GaugeMetricFamily(
                f"{PREFIX}_node_leases", "Queue entries each node holds leased (issue 14).", labels=["node"]
            )
            now = self._wall()
            for node in snap.nodes:
                if not node.stopped:  # a clean stop (rolling restart, removed node) is not a late heartbeat
                    age.add_metric([node.node], max(0.0, now - node.last_seen))
                leases.add_metric([node.node], node.leases)
            yield from (age, leases)
        if snap.spool_free_bytes is not None:
            yield GaugeMetricFamily(f"{PREFIX}_spool_free_bytes", "Free bytes on the spool's filesystem.", value=snap.spool_free_bytes)
        if snap.spool_used_bytes is not None:
            yield GaugeMetricFamily(f"{PREFIX}_spool_used_bytes", "Bytes of files in the spool.", value=snap.spool_used_bytes)
        if snap.spool_capacity_bytes is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_spool_capacity_bytes", "Size of the spool's filesystem.", value=snap.spool_capacity_bytes
            )
        if snap.commitments is not None:
            yield from commitment_gauges(snap.commitments)
        if snap.retrieves_open is not None:
            open_retrieves = GaugeMetricFamily(
                f"{PREFIX}_retrieves_open", "C-MOVE and C-GET retrieves open in the journal (every node's), by kind.",
                labels=["kind"],
            )
            for kind in ("move", "get"):
                open_retrieves.add_metric([kind], snap.retrieves_open.get(kind, 0))
            yield open_retrieves
        yield GaugeMetricFamily(
            f"{PREFIX}_state_snapshot_timestamp_seconds",
            "Wall time of the queue/spool snapshot behind the state gauges.",
            value=snap.taken_at,
        )


def commitment_gauges(stats: TransactionStats) -> Iterator[GaugeMetricFamily]:
    """The Storage Commitment gauges of one :class:`TransactionStats` (issue 15).

    ``reports_owed``: OPEN transactions (a report owed to a modality, decided
    or not); ``reports_overdue``: those past their ``deadline`` (the report
    should have gone; the requester keeps its images meanwhile);
    ``reports_dead``: reports given up at ``report_deadline``, kept for an
    operator (``dicom-gateway commitment retry``).

    :param stats: the journal's figures.
    :returns: the three gauges.
    """
    yield GaugeMetricFamily(
        f"{PREFIX}_commitment_reports_owed",
        "Storage Commitment reports owed to modalities (open transactions; issue 15).",
        value=stats.open,
    )
    yield GaugeMetricFamily(
        f"{PREFIX}_commitment_reports_overdue",
        "Storage Commitment reports owed past their deadline.",
        value=stats.overdue,
    )
    yield GaugeMetricFamily(
        f"{PREFIX}_commitment_reports_dead",
        "Storage Commitment reports given up at report_deadline, kept for an operator.",
        value=stats.dead,
    )


class GatewayMetrics:
    """Every ``dicom_gateway_*`` metric, and the events that move them.

    :param registry: where the metrics are registered (inject one per test).
    :param calling_ae_titles: titles that keep their own ``calling_ae``
        label value (see :func:`allowlisted_titles`); others are ``other``.
    :param wall: wall-clock time, for end-to-end latency.
    :param version: reported by ``build_info``.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        calling_ae_titles: Iterable[str] = (),
        *,
        wall: Callable[[], float] = time.time,
        version: str = __version__,
    ) -> None:
        self.registry = registry
        self.calling_ae = AELabels(calling_ae_titles)
        self.wall = wall
        self.snapshot = StateSnapshot()
        p, r = PREFIX, registry
        # -- intake (associations and instances) --
        self.associations = Counter(f"{p}_associations", "Associations by outcome.", ["listener", "calling_ae", "result"], registry=r)
        # HARDENING P16: why associations were rejected (bounded: REJECT_REASONS).
        self.associations_rejected = Counter(
            f"{p}_associations_rejected",
            "A-ASSOCIATE-RJ sent, by reason (limit, space, acse, access, identity, draining, store).",
            ["listener", "reason"],
            registry=r,
        )
        self.associations_active = Gauge(f"{p}_associations_active", "Associations open now.", ["listener"], registry=r)
        self.artim = Counter(f"{p}_artim_expired", "Connections closed by ARTIM before an A-ASSOCIATE-RQ (PS3.8 9.1.5).", ["listener"], registry=r)
        self.dimse_errors = Counter(f"{p}_dimse_protocol_errors", "Associations aborted for a DIMSE protocol error.", ["listener"], registry=r)
        self.pdu_errors = Counter(
            f"{p}_pdu_protocol_errors",
            "Connections we aborted for an invalid or unexpected PDU (PS3.8 A-ABORT reason).",
            ["listener", "reason"],
            registry=r,
        )
        self.tls_failures = Counter(
            f"{p}_tls_handshake_failures",
            "TLS handshakes that failed at a listener, by reason (PS3.15 Annex B; HARDENING T04-T15).",
            ["listener", "reason"],
            registry=r,
        )
        # Issue 14: connections a proxy_protocol listener closed before a PROXY header was accepted.
        self.proxy_refusals = Counter(
            f"{p}_proxy_protocol_refused",
            "Connections refused by a proxy_protocol listener, by reason (untrusted, missing, malformed, timeout).",
            ["listener", "reason"],
            registry=r,
        )
        # Issue 14: 1 while the node drains (dicom-gateway drain), 0 otherwise.
        self.draining = Gauge(f"{p}_draining", "1 while this node is draining (not ready, then refusing new associations).", registry=r)
        self.instances = Counter(f"{p}_instances_received", "Instances stored and acknowledged.", ["calling_ae", "modality"], registry=r)
        self.received_bytes = Counter(f"{p}_received_bytes", "Bytes of instances stored and acknowledged.", ["calling_ae"], registry=r)
        self.store_failures = Counter(f"{p}_store_failures", "C-STORE failures answered to modalities.", ["status"], registry=r)
        # HARDENING D11, D12: the 0xA700 series exists at 0 from the start, so
        # the shipped DicomGatewayStoresRefused alert (an increase()) sees the
        # first refusal; a series born at 1 has no increase for Prometheus.
        self.store_failures.labels(f"0x{0xA700:04X}")
        # -- routing --
        self.route_matches = Counter(f"{p}_route_matches", "Instances taken by each route.", ["route"], registry=r)
        self.unrouted = Counter(f"{p}_instances_unrouted", "Instances no route took (kept in unrouted/).", registry=r)
        self.morph_errors = Counter(f"{p}_morph_errors", "Copies a route's morph could not make.", ["route"], registry=r)
        self.dead_lettered = Counter(
            f"{p}_dead_lettered",
            "Entries moved to the dead letters, by destination and reason class (morph, refused, gave_up, ...).",
            ["destination", "reason"],
            registry=r,
        )
        # -- delivery --
        self.forwarded = Counter(f"{p}_forwarded", "Instances delivered per destination.", ["destination"], registry=r)
        self.forwarded_with_warning = Counter(
            f"{p}_delivered_with_warning", "Deliveries answered with a warning status.", ["destination"], registry=r
        )
        self.forward_failures = Counter(
            f"{p}_forward_failures", "Failed deliveries by kind (transient, permanent).", ["destination", "kind"], registry=r
        )
        self.retries = Counter(f"{p}_retries", "Entries scheduled for another attempt.", ["destination"], registry=r)
        self.duplicates = Counter(f"{p}_duplicates", "Identical re-sends not forwarded again.", ["destination"], registry=r)
        self.redeliveries = Counter(
            f"{p}_redeliveries", "Deliveries after an ambiguous attempt (the destination may hold two copies).", ["destination"], registry=r
        )
        self.circuit_opened = Counter(f"{p}_destination_down_events", "Times a destination's circuit opened.", ["destination"], registry=r)
        self.forward_duration = Histogram(
            f"{p}_forward_duration_seconds", "Time to send one instance.", ["destination"], buckets=FORWARD_BUCKETS, registry=r
        )
        self.end_to_end = Histogram(
            f"{p}_end_to_end_seconds",
            "From receipt of the instance to the destination's success.",
            ["destination"],
            buckets=END_TO_END_BUCKETS,
            registry=r,
        )
        # -- several nodes (issue 14) --
        self.leases_lost = Counter(
            f"{p}_leases_lost",
            "Entries another node took over after this node's lease expired (this node's outcome was dropped).",
            ["destination"],
            registry=r,
        )
        # -- Storage Commitment (issue 15) --
        self.commitment_requests = Counter(
            f"{p}_commitment_requests",
            "Storage Commitment N-ACTION requests answered, by outcome (accepted, repeated, refused, invalid, conflict, unavailable).",
            ["outcome"],
            registry=r,
        )
        self.commitment_latency = Histogram(
            f"{p}_commitment_latency_seconds",
            "From a Storage Commitment N-ACTION to the requester's acknowledgement of its report, by policy.",
            ["policy"],
            buckets=COMMITMENT_BUCKETS,
            registry=r,
        )
        self.commitment_reports = Counter(
            f"{p}_commitment_reports",
            "Storage Commitment reports delivered, by result (committed: event type 1; failures: event type 2).",
            ["result"],
            registry=r,
        )
        self.commitment_report_failures = Counter(
            f"{p}_commitment_report_failures",
            "Storage Commitment report deliveries that failed (each attempt; retried until report_deadline).",
            registry=r,
        )
        self.archive_commitment_requests = Counter(
            f"{p}_archive_commitment_requests",
            "Storage Commitment N-ACTION requests the gateway sent to archives (storage_commitment destinations).",
            ["destination"],
            registry=r,
        )
        self.archive_commitment_reports = Counter(
            f"{p}_archive_commitment_reports",
            "Storage Commitment N-EVENT-REPORTs received from archives (unknown: an unknown Transaction UID).",
            ["destination"],
            registry=r,
        )
        for outcome in COMMITMENT_OUTCOMES:
            self.commitment_requests.labels(outcome)
        for result in ("committed", "failures"):
            self.commitment_reports.labels(result)
        # The dashboard's latency p95 has a series (NaN, not "no data") before the first report.
        for policy in COMMITMENT_POLICY_LABELS[:-1]:
            self.commitment_latency.labels(policy)
        # -- Query/Retrieve (issue 16) --
        self.queries = Counter(
            f"{p}_queries",
            "C-FIND requests answered, by outcome (success, partial: a source left out, cancelled, "
            "limited: max_results, refused, invalid, failed).",
            ["outcome"],
            registry=r,
        )
        self.query_results = Counter(
            f"{p}_query_results",
            "C-FIND pending responses relayed to requesters (after duplicate removal).",
            registry=r,
        )
        # -- DICOMweb destinations (issue 17) --
        self.dicomweb_responses = Counter(
            f"{p}_dicomweb_responses",
            "STOW-RS requests to DICOMweb destinations, by destination and HTTP status class "
            "(200, 202, 409, 401, 403, 413, 429, 503, other 4xx/5xx as 4xx/5xx; none: no answer).",
            ["destination", "code"],
            registry=r,
        )
        self.dicomweb_sent_bytes = Counter(
            f"{p}_dicomweb_sent_bytes",
            "Request body bytes sent to DICOMweb destinations (STOW-RS).",
            ["destination"],
            registry=r,
        )
        self.dicomweb_latency = Histogram(
            f"{p}_dicomweb_send_seconds",
            "A STOW-RS request to a DICOMweb destination: from the request to its whole answer.",
            ["destination"],
            buckets=QUERY_BUCKETS,
            registry=r,
        )
        self.query_source_failures = Counter(
            f"{p}_query_source_failures",
            "Sources that failed, refused or timed out during a query (left out, or failing a strict query).",
            ["source"],
            registry=r,
        )
        self.query_latency = Histogram(
            f"{p}_query_latency_seconds",
            "One source's part of a query: from the association request to its final C-FIND response.",
            ["source"],
            buckets=QUERY_BUCKETS,
            registry=r,
        )
        self.retrieves = Counter(
            f"{p}_retrieves",
            "C-MOVE and C-GET requests answered, by verb and outcome.",
            ["verb", "outcome"],
            registry=r,
        )
        self.retrieve_suboperations = Counter(
            f"{p}_retrieve_suboperations",
            "C-MOVE/C-GET sub-operations by result, as reported in the final responses.",
            ["result"],
            registry=r,
        )
        for outcome in QUERY_OUTCOME_LABELS[:-1]:
            self.queries.labels(outcome)
        for verb in RETRIEVE_VERBS:
            for outcome in RETRIEVE_OUTCOME_LABELS[:-1]:
                self.retrieves.labels(verb, outcome)
        for result in SUBOPERATION_RESULTS:
            self.retrieve_suboperations.labels(result)
        self.retrieve_journal_purged = Counter(
            f"{p}_retrieve_journal_purged",
            "Rows the housekeeping deleted from the Query/Retrieve journal past retention, by table "
            "(retrieves, retrieve_items, remapped_uids).",
            ["table"],
            registry=r,
        )
        for table in RETRIEVE_JOURNAL_TABLES:
            self.retrieve_journal_purged.labels(table)
        # -- study notifications: issue 18 (notify) --
        self.study_notifications = Counter(
            f"{p}_study_notifications",
            "Study notifications queued, by sink and event (complete, amended).",
            ["sink", "event"],
            registry=r,
        )
        self.studies_completed = Counter(
            f"{p}_studies_completed",
            "Studies recorded complete at a notifying route's destinations, by route and how "
            "(complete, amended, forced, closed: the route no longer notifies).",
            ["route", "how"],
            registry=r,
        )
        self.study_completion = Histogram(
            f"{p}_study_completion_seconds",
            "From a study's first instance (of its opening) to its completion, by route.",
            ["route"],
            buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600),
            registry=r,
        )
        # -- process --
        self.reloads = Counter(f"{p}_config_reloads", "Configuration reloads by result.", ["result"], registry=r)
        self.build_info = Info(f"{p}_build", "The gateway's version.", registry=r)
        self.build_info.info({"version": version})
        # -- cluster (issue 14) --
        self.node_info = Gauge(
            f"{p}_node_info", "This process's node name (1); join on instance to label any series by node.", ["node"], registry=r
        )
        self.heartbeat_seconds = Gauge(
            f"{p}_cluster_heartbeat_seconds", "This node's heartbeat interval (cluster.heartbeat).", registry=r
        )
        self.store_up = Gauge(
            f"{p}_queue_store_up", "1 while the queue store answers this node's heartbeats, else 0.", registry=r
        )
        self.store_up.set(1)
        registry.register(SnapshotCollector(lambda: self.snapshot, wall))
        self._forward = MetricsForwardObserver(self)

    # -- the node (issue 14) ---------------------------------------------------------------

    def cluster_node(self, node: str, heartbeat: float) -> None:
        """Name this process's node (``node_info``) and its heartbeat interval (the age alert's yardstick).

        :param node: the configuration's ``node``.
        :param heartbeat: ``cluster.heartbeat`` seconds.
        """
        self.node_info.clear()
        self.node_info.labels(node).set(1)
        self.heartbeat_seconds.set(heartbeat)

    def store_available(self, available: bool) -> None:
        """The queue store answers this node's heartbeats again (``True``) or no longer (``False``)."""
        self.store_up.set(1 if available else 0)

    # -- the gateway's events (gateway.events) ---------------------------------------------

    def observe(self, event: events.Event) -> None:
        """Move the metrics an event moves (the metrics sink of :class:`~gateway.events.FanOutObserver`)."""
        if isinstance(event, events.AssociationAccepted):
            self.association_accepted(event.listener, event.calling_ae_title)
        elif isinstance(event, events.AssociationRejected):
            self.association_rejected(event.listener, event.calling_ae_title, event.label)
        elif isinstance(event, events.AssociationEnded):
            self.association_ended(event.listener, event.calling_ae_title, event.released)
        elif isinstance(event, events.ArtimExpired):
            self.artim_expired(event.listener)
        elif isinstance(event, events.DimseProtocolError):
            self.dimse_protocol_error(event.listener)
        elif isinstance(event, events.PduProtocolError):
            self.pdu_protocol_error(event.listener, event.reason)
        elif isinstance(event, events.TLSHandshakeFailed):
            self.tls_handshake_failed(event.listener, event.reason)
        elif isinstance(event, events.ProxyRefused):
            self.proxy_refused(event.listener, event.reason)
        elif isinstance(event, events.DrainChanged):
            self.draining.set(1 if event.draining else 0)
        elif isinstance(event, events.InstanceStored):
            self.instance_reported(event.report)
        elif isinstance(event, events.InstanceAdmitted):
            self.admitted(event.admission)
        elif isinstance(event, events.ConfigReloaded):
            self.config_reloaded(event.applied)
        elif isinstance(event, events.CommitmentRequested):
            self.commitment_requests.labels(event.outcome if event.outcome in COMMITMENT_OUTCOMES else OTHER).inc()
        elif isinstance(event, events.CommitmentReportSent):
            policy = event.policy if event.policy in COMMITMENT_POLICY_LABELS else OTHER
            self.commitment_latency.labels(policy).observe(max(0.0, event.latency_seconds))
            self.commitment_reports.labels("failures" if event.failed else "committed").inc()
        elif isinstance(event, events.CommitmentReportFailed):
            self.commitment_report_failures.inc()
        elif isinstance(event, events.ArchiveCommitmentRequested):
            self.archive_commitment_requests.labels(event.destination).inc()
        elif isinstance(event, events.ArchiveCommitmentReported):
            # An unknown Transaction UID has no destination; its label stays bounded.
            self.archive_commitment_reports.labels(event.destination or "unknown").inc()
        elif isinstance(event, events.QueryAnswered):
            self.queries.labels(event.outcome if event.outcome in QUERY_OUTCOME_LABELS else OTHER).inc()
            self.query_results.inc(max(0, event.results))
        elif isinstance(event, events.QuerySourceAnswered):
            # Source names come from the configuration: a bounded label.
            self.query_latency.labels(event.destination).observe(max(0.0, event.latency_seconds))
            if not event.ok:
                self.query_source_failures.labels(event.destination).inc()
        elif isinstance(event, events.RetrieveAnswered):
            verb = event.verb if event.verb in RETRIEVE_VERBS else OTHER
            self.retrieves.labels(verb, event.outcome if event.outcome in RETRIEVE_OUTCOME_LABELS else OTHER).inc()
            for result, count in zip(SUBOPERATION_RESULTS, (event.completed, event.failed, event.warning)):
                if count > 0:
                    self.retrieve_suboperations.labels(result).inc(count)
        elif isinstance(event, events.DicomWebAnswered):
            # Destination names come from the configuration; codes are folded to a bounded set.
            self.dicomweb_responses.labels(event.destination, dicomweb_code_label(event.code)).inc()
            self.dicomweb_sent_bytes.labels(event.destination).inc(max(0, event.bytes_sent))
            self.dicomweb_latency.labels(event.destination).observe(max(0.0, event.seconds))
        elif isinstance(event, events.RetrieveJournalCleaned):
            for table, count in zip(RETRIEVE_JOURNAL_TABLES, (event.retrieves, event.items, event.remapped_uids)):
                if count > 0:
                    self.retrieve_journal_purged.labels(table).inc(count)
        elif isinstance(event, events.StudyCompleted):
            # issue 18 (notify): route and sink names come from the configuration (bounded labels).
            how = "forced" if event.forced and event.event != "closed" else event.event
            self.studies_completed.labels(event.route, how if how in ("complete", "amended", "forced", "closed") else OTHER).inc()
            if event.event != "closed":
                self.study_completion.labels(event.route).observe(max(0.0, event.seconds))
            for sink in event.sinks:
                self.study_notifications.labels(sink, event.event).inc()
        else:
            self._forward.observe(event)

    # -- destinations and routes known in advance (so a series exists at 0) -----------------

    def declare(
        self,
        destinations: Iterable[str],
        routes: Iterable[str],
        listeners: Iterable[str],
        archives: Iterable[str] = (),
        query_sources: Iterable[str] = (),
    ) -> None:
        """Create the labelled series of configured names at zero, so rates and alerts see them from the start.

        :param destinations: destination names.
        :param routes: route names.
        :param listeners: listener names.
        :param archives: the destinations with ``storage_commitment: true`` (issue 15).
        :param query_sources: the destinations named in ``query.sources`` (issue 16).
        """
        for name in query_sources:
            self.query_source_failures.labels(name)
            self.query_latency.labels(name)
        for name in archives:
            self.archive_commitment_requests.labels(name)
            self.archive_commitment_reports.labels(name)
        for name in destinations:
            for metric in (self.forwarded, self.retries, self.duplicates, self.redeliveries, self.leases_lost):
                metric.labels(name)
            for kind in ("transient", "permanent"):
                self.forward_failures.labels(name, kind)
        for route in routes:
            self.route_matches.labels(route)
            self.morph_errors.labels(route)
        for listener in listeners:
            self.associations_active.labels(listener)
            for result in ("accepted", "rejected", "aborted"):
                self.associations.labels(listener, OTHER, result)
            for reason in REJECT_REASONS:
                self.associations_rejected.labels(listener, reason)
        for result in ("success", "failure"):
            self.reloads.labels(result)

    # -- associations (gateway.listen) -----------------------------------------------------

    def association_accepted(self, listener: str, calling_ae: str) -> None:
        """A-ASSOCIATE-AC sent: counted and open."""
        self.associations.labels(listener, self.calling_ae(calling_ae), "accepted").inc()
        self.associations_active.labels(listener).inc()

    def association_rejected(self, listener: str, calling_ae: str, reason: str = OTHER) -> None:
        """A-ASSOCIATE-RJ sent (access policy, ACSE check, limit or low spool).

        :param reason: one of :data:`REJECT_REASONS` (anything else counts as ``other``).
        """
        self.associations.labels(listener, self.calling_ae(calling_ae), "rejected").inc()
        self.associations_rejected.labels(listener, reason if reason in REJECT_REASONS else OTHER).inc()

    def association_ended(self, listener: str, calling_ae: str, released: bool) -> None:
        """An accepted association ended; one that was not released counts as ``aborted``.

        :param released: true for an orderly A-RELEASE.
        """
        self.associations_active.labels(listener).dec()
        if not released:
            self.associations.labels(listener, self.calling_ae(calling_ae), "aborted").inc()

    def artim_expired(self, listener: str) -> None:
        """ARTIM fired before any A-ASSOCIATE-RQ arrived (a port scan or a stuck peer)."""
        self.artim.labels(listener).inc()

    def dimse_protocol_error(self, listener: str) -> None:
        """An association was aborted for a DIMSE protocol violation."""
        self.dimse_errors.labels(listener).inc()

    #: A-ABORT reasons (PS3.8 Table 9-26) as bounded label values.
    _ABORT_REASONS = {
        0: "not_specified",
        1: "unrecognized_pdu",
        2: "unexpected_pdu",
        4: "unrecognized_parameter",
        5: "unexpected_parameter",
        6: "invalid_parameter_value",
    }

    def pdu_protocol_error(self, listener: str, reason: int) -> None:
        """We aborted a connection for a bad PDU (garbage, oversized, unexpected in its state; HARDENING P37)."""
        self.pdu_errors.labels(listener, self._ABORT_REASONS.get(reason, "other")).inc()

    def tls_handshake_failed(self, listener: str, reason: str) -> None:
        """A TLS handshake failed at a listener (or a renegotiation was refused).

        :param listener: the listener's name (from the configuration).
        :param reason: the label of :func:`gateway.tls.classify_handshake_failure`;
            anything outside :data:`gateway.tls.HANDSHAKE_FAILURE_REASONS` is
            counted as ``other`` (bounded labels, HARDENING P10).
        """
        from gateway.tls import HANDSHAKE_FAILURE_REASONS

        self.tls_failures.labels(listener, reason if reason in HANDSHAKE_FAILURE_REASONS else OTHER).inc()

    def proxy_refused(self, listener: str, reason: str) -> None:
        """A ``proxy_protocol`` listener refused a connection before its PROXY header (issue 14).

        :param listener: the listener's name.
        :param reason: a label of :data:`gateway.proxyproto.REFUSAL_REASONS` (others count as ``other``).
        """
        from gateway.proxyproto import REFUSAL_REASONS

        self.proxy_refusals.labels(listener, reason if reason in REFUSAL_REASONS else OTHER).inc()

    # -- instances (gateway.receive) -------------------------------------------------------

    def instance_reported(self, report: Any) -> None:
        """One C-STORE answered (a :class:`~gateway.receive.InstanceReport`).

        A success counts the instance and its bytes; a failure status
        counts under its hexadecimal code (PS3.4 B.2.3); warnings are successes.
        """
        status = int(report.status)
        if status in _NOT_FAILURES:
            calling = self.calling_ae(report.calling_ae_title)
            spooled = getattr(report, "spooled", None)
            modality = fold_modality(spooled.summary.modality if spooled is not None else None)
            self.instances.labels(calling, modality).inc()
            self.received_bytes.labels(calling).inc(report.size)
        else:
            self.store_failures.labels(f"0x{status:04X}").inc()

    # -- routing (gateway.intake) ----------------------------------------------------------

    def route_matched(self, route: str) -> None:
        """A route took an instance."""
        self.route_matches.labels(route).inc()

    def instance_unrouted(self) -> None:
        """No route took an instance."""
        self.unrouted.inc()

    def duplicate_skipped(self, destination: str) -> None:
        """An identical re-send was not queued again for ``destination``."""
        self.duplicates.labels(destination).inc()

    def admitted(self, admission: Any) -> Any:
        """The intake's outcome for one instance (an :class:`~gateway.intake.Admission`): routes, unrouted, duplicates.

        :param admission: the admission; returned unchanged (use it as a Deferred callback).
        """
        if getattr(admission, "unrouted", False):
            self.instance_unrouted()
        for route in dict.fromkeys(getattr(admission, "matched", ())):
            self.route_matched(route)
        for destination in getattr(admission, "duplicates", ()):
            self.duplicate_skipped(destination)
        return admission

    # -- process ---------------------------------------------------------------------------

    def config_reloaded(self, applied: bool) -> None:
        """A reload (SIGHUP or API) was applied or refused."""
        self.reloads.labels("success" if applied else "failure").inc()

    def forward_observer(self) -> "MetricsForwardObserver":
        """The :class:`~gateway.forward_types.ForwardObserver` feeding the delivery metrics."""
        return MetricsForwardObserver(self)


class MetricsForwardObserver(ForwardObserver):
    """Turns the workers' events into delivery metrics.

    :param metrics: the metrics to move.
    """

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def delivered(self, entry: Entry, duration: float, warning: str) -> None:
        """Count the delivery; observe its send time and its age since receipt."""
        m, name = self.metrics, entry.destination
        m.forwarded.labels(name).inc()
        if warning:
            m.forwarded_with_warning.labels(name).inc()
        m.forward_duration.labels(name).observe(max(0.0, duration))
        m.end_to_end.labels(name).observe(max(0.0, m.wall() - entry.instance.received_at))

    def retried(self, entry: Entry, reason: str) -> None:
        """A failed attempt that will be tried again: a transient failure and a retry."""
        self.metrics.forward_failures.labels(entry.destination, "transient").inc()
        self.metrics.retries.labels(entry.destination).inc()

    def dead_lettered(self, entry: Entry, reason: str) -> None:
        """A dead letter known only by its text (a caller without the kind): counted under the kind its words name."""
        self.dead_lettered_as(entry, DeadLetterKind.of_reason(reason), reason)

    def dead_lettered_as(self, entry: Entry, kind: DeadLetterKind, reason: str) -> None:
        """A permanent failure, counted under its kind; a morph failure is counted for its route as well."""
        self.metrics.forward_failures.labels(entry.destination, "permanent").inc()
        self.metrics.dead_lettered.labels(entry.destination, kind.value).inc()
        if kind is DeadLetterKind.MORPH:
            self.metrics.morph_errors.labels(entry.route).inc()

    def destination_fault(self, name: str, reason: str, permanent: bool) -> None:
        """Each destination-wide fault is a failed delivery attempt of the kind the worker decided."""
        self.metrics.forward_failures.labels(name, "permanent" if permanent else "transient").inc()

    def destination_down(self, name: str, reason: str, permanent: bool) -> None:
        """The circuit opened."""
        self.metrics.circuit_opened.labels(name).inc()
        self._set_up(name, False)

    def destination_up(self, name: str) -> None:
        """The circuit closed again."""
        self._set_up(name, True)

    def redelivered(self, entry: Entry) -> None:
        """A delivery that may have made a second copy."""
        self.metrics.redeliveries.labels(entry.destination).inc()

    def duplicate(self, entry: Entry) -> None:
        """An identical re-send was not forwarded."""
        self.metrics.duplicate_skipped(entry.destination)

    def lease_lost(self, destination: str, entry_id: int, node: str) -> None:
        """Another node took an entry over after this node's lease expired (issue 14)."""
        self.metrics.leases_lost.labels(destination).inc()

    def circuit_adopted(self, name: str, circuit_open: bool, reason: str) -> None:
        """The circuit followed another node's record: up or down here too, not counted as a down event of this node."""
        self._set_up(name, not circuit_open)

    def _set_up(self, name: str, up: bool) -> None:
        # The snapshot is refreshed every few seconds; reflect a circuit change at once.
        snap = self.metrics.snapshot
        states = tuple(replace(s, up=up) if s.name == name else s for s in snap.destinations)
        self.metrics.snapshot = replace(snap, destinations=states)


@dataclass
class StateRefresher:
    """Renews :attr:`GatewayMetrics.snapshot` every ``interval`` seconds.

    The store is read only through ``store_runner`` (the thread it lives on)
    and the spool through ``file_runner``; a refresh still running when the
    next one is due is not doubled. The spool walk for ``used`` bytes is
    slower than a statvfs, so it runs every ``walk_every`` refreshes.

    :param metrics: whose snapshot to renew.
    :param store: the queue store.
    :param store_runner: the store's thread.
    :param file_runner: the blocking runner for the spool.
    :param spool_root: the spool directory.
    :param destinations: returns the configured destination names (they change on reload).
    :param down: returns the destinations whose circuit is open now.
    :param clock: the reactor (for the LoopingCall).
    :param wall: wall-clock time.
    :param stranded_after: seconds of a node's silence after which its queued
        entries count as stranded (node-local spools on a shared queue), or
        ``None`` where nothing can strand (the store's figures are then 0).
    :param own_node: this node as its heartbeat knows it, for a store
        without a node table (a SQLite store from before issue 14's migration).
    """

    metrics: GatewayMetrics
    store: IQueueStore
    store_runner: IBlockingRunner
    file_runner: IBlockingRunner
    spool_root: str
    destinations: Callable[[], Sequence[str]]
    down: Callable[[], Iterable[str]]
    clock: Any
    wall: Callable[[], float] = time.time
    interval: float = 5.0
    walk_every: int = 6
    stranded_after: float | None = None
    own_node: Callable[[], NodeState | None] = lambda: None
    _loop: LoopingCall | None = field(default=None, init=False)
    _busy: bool = field(default=False, init=False)
    _count: int = field(default=0, init=False)
    _used: int | None = field(default=None, init=False)

    log = Logger(namespace="gateway.observe")

    def start(self) -> None:
        """Refresh now and then every ``interval`` seconds."""
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        """Stop refreshing."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def refresh(self) -> Deferred[None] | None:
        """One refresh; errors are logged (the previous snapshot stays).

        :returns: a Deferred firing when the snapshot is replaced, or ``None`` if one is already running.
        """
        if self._busy:
            return None
        self._busy = True
        d = Deferred.fromCoroutine(self._refresh())

        def done(result: object) -> None:
            self._busy = False

        def failed(f: Any) -> None:
            if f.check(StoreUnavailable):
                # An outage, already reported by the heartbeat: no traceback every few seconds.
                self.log.debug("metrics snapshot not refreshed: {error}", error=f.getErrorMessage())
            else:
                self.log.failure("metrics snapshot refresh failed", f)

        d.addErrback(failed)
        d.addBoth(done)
        return d

    async def _refresh(self) -> None:
        now = self.wall()
        if self.stranded_after is None:
            stats = await self.store_runner.run(self.store.stats, now)
        else:
            stats = await self.store_runner.run(self.store.stats, now, self.stranded_after)
        nodes: list[NodeState] = []
        if hasattr(self.store, "nodes"):
            statuses = await self.store_runner.run(self.store.nodes, now)
            nodes = [NodeState(n.node, n.last_seen, n.leases, n.slots, said_stopped(n.detail)) for n in statuses]
        own = self.own_node()
        if own is not None and own.node not in {n.node for n in nodes}:
            nodes.append(own)
        walk = self._count % self.walk_every == 0 or self._used is None
        self._count += 1
        if walk:
            free, used, capacity = await self.file_runner.run(spool_usage, self.spool_root)
            self._used = used
        else:
            st = await self.file_runner.run(os.statvfs, self.spool_root)
            free, capacity = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        commitments = None
        if ICommitmentJournal.providedBy(self.store):
            # Issue 15: reports owed, overdue and dead, read like the queue's figures (never at scrape time).
            journal = ICommitmentJournal(self.store)
            commitments = await self.store_runner.run(journal.transaction_stats, now)
        retrieves_open = None
        if IRetrieveJournal.providedBy(self.store):
            # Issue 16: open retrieves by kind, read here (never at scrape time).
            retrieves_open = dict(await self.store_runner.run(IRetrieveJournal(self.store).open_retrieve_counts))
        states = destination_states(stats, list(self.destinations()), now, self.down())
        self.metrics.snapshot = StateSnapshot(
            states, free, self._used, capacity, now, tuple(nodes), commitments, retrieves_open
        )
