"""The forwarding invariants of HARDENING section C, checked after every F test.

HARDENING C: "Invariants checked after every F test":

1. For each destination: ``accepted_total = delivered_total + queue_depth +
   dlq_depth + filtered_total``.
2. Every accepted instance, by content hash, is either at each destination
   or in the DLQ with a reason.
3. Extra copies at a destination <= the number of ambiguous faults injected,
   and equal ``redelivery_total``.

:func:`check_forward_invariants` checks all three for the destinations a test
names, from three independent sources:

- **the journal** (the SQLite queue store, read read-only): one row per
  (instance, destination) entry in state ``delivered``, ``queued``,
  ``leased``, ``dead`` or ``duplicate`` (an identical re-send not forwarded
  again: the "filtered" term), and each instance's ``sha256``, which the
  gateway computes over the data set bytes as received (after the file meta,
  ``gateway.spool.dataset_sha256``): the same bytes it puts on the wire when
  no morph changes them, so the same digest as a
  :class:`~tests.support.scp.Receipt`'s or :func:`~tests.support.datasets.dataset_digest`
  of a ``storescp +B`` or folder file;
- **/metrics**: ``instances_received_total`` (accepted), ``forwarded_total``
  (delivered), ``queue_depth``, ``dead_letters``, ``duplicates_total``
  (filtered) and ``redeliveries_total``; each must agree with the journal;
- **what each destination holds**: a :class:`~tests.support.scp.RecordingScp`'s
  receipts (every copy counted, so extra copies are exact), or the files of a
  ``storescp`` / folder destination (one file per SOP Instance UID: a second
  copy overwrites the first, so extra copies there are not observable and
  count as 0).

The check never degrades to one that cannot fail. Without ``restarted`` the
gateway must be running with a known HTTP port: a gateway that has exited,
or whose port is unknown, fails the check (it does not fall back to the
journal). After a restart (``restarted=True``: the test killed or stopped the
gateway) the counters started again from 0 while the journal kept everything,
so the counters are not compared with the journal and every term of
invariant 1 is the journal's; then the test must give the count it recorded
independently (``accepted``: what its senders saw acknowledged), which the
journal's entries must equal, so journal-only counting is checked against a
figure the journal did not produce; ``redelivery_total`` is then the number of delivered entries
whose history holds an ``ambiguous:`` attempt, which is exactly what the
gateway counts as a redelivery (``gateway.forward``, and the journal keeps
that history across restarts).  Without a restart the counters must equal the
journal's figures, and extra copies must equal ``redelivery_total``.  After a
``kill -9`` the journal marks the send that was in flight as ambiguous
without knowing whether it reached the destination (it cannot), so there the
check is ``extra copies <= redelivery_total <= ambiguous faults``.

A destination that is down keeps its entries queued: invariant 1 holds with
``queue_depth > 0``, and invariant 2 then asks that each queued entry's spool
file is still there (custody).  When a route morphs (``<spool>/morphed/``
exists) a delivered copy is matched by the digest of its morphed file while
that is still in the spool, else by SOP Instance UID only.

The state gauges come from a snapshot renewed every 5 s, so the check polls
until the counters, the gauges and the journal agree and nothing is leased,
then asserts with messages naming the destination, the term and the figures.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from tests.support import dcmtk
from tests.support.datasets import dataset_digest
from tests.support.gateway_process import GatewayProcess
from tests.support.interop import part10_files, sop_instance_uid
from tests.support.scp import RecordingScp
from tests.support.metrics import metrics_text, parse

__all__ = [
    "DestinationFigures",
    "HoldingSource",
    "check_forward_invariants",
    "held_copies",
    "http_port",
    "journal_path",
    "metrics_samples",
]

#: What a destination holds: a recording SCP, a ``storescp``, a folder, or a
#: callable returning ``(SOP Instance UID, data set digest)`` per copy.
HoldingSource = Union[RecordingScp, dcmtk.Storescp, Path, Callable[[], Iterable[tuple[str, str]]]]

#: The prefix of an attempt whose outcome the gateway could not know (``gateway.forward.AMBIGUOUS_PREFIX``).
AMBIGUOUS_PREFIX = "ambiguous: "

#: The journal's entry states and the invariant term each belongs to.
_TERMS = {"delivered": "delivered", "queued": "queued", "leased": "queued", "dead": "dead",
          "duplicate": "filtered"}


def journal_path(gateway: GatewayProcess) -> Path:
    """The gateway's queue journal: ``queue.path`` or ``<spool>/queue.sqlite``.

    :param gateway: the gateway.
    :returns: the SQLite file.
    """
    configured = (gateway.config.get("queue") or {}).get("path")
    return Path(configured) if configured else gateway.spool / "queue.sqlite"


def http_port(gateway: GatewayProcess) -> int | None:
    """The gateway's HTTP port: configured, or the one its log says it bound (port 0).

    :param gateway: the gateway.
    :returns: the port, or ``None`` when the endpoint is off or not yet bound.
    """
    http = gateway.config.get("http") or {}
    if http.get("enabled") is False:
        return None
    if http.get("port"):
        return int(http["port"])
    bound = re.findall(r"HTTP \(metrics, health, API\) on http://[^:/]+:(\d+)/", gateway.log_text())
    return int(bound[-1]) if bound else None


def metrics_samples(port: int) -> list[tuple[str, dict[str, str], float]]:
    """Scrape ``/metrics`` and flatten it to samples.

    :param port: the gateway's HTTP port.
    :returns: ``(name, labels, value)`` per sample.
    """
    return parse(metrics_text(port))


def _metric(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """Sum the samples called ``name`` carrying ``labels`` (0 when absent)."""
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == x for k, x in labels.items()))


def held_copies(source: HoldingSource) -> list[tuple[str, str]]:
    """List the copies a destination holds as ``(SOP Instance UID, data set digest)``.

    A recording SCP holds every receipt it acknowledged with success or a
    warning, and every receipt it aborted after reading (the data reached
    it; the sender could not know: an ambiguous fault); receipts it refused
    (0xA700 and other failures) are not held.

    :param source: the destination's SCP, ``storescp``, folder or a callable.
    :returns: one pair per copy.
    """
    if isinstance(source, RecordingScp):
        return [(r.sop_instance_uid, r.digest) for r in source.receipts
                if r.status is None or r.status == 0 or r.status >> 12 == 0xB]
    if isinstance(source, dcmtk.Storescp):
        paths = source.files() if source.outdir.exists() else []
    elif isinstance(source, Path):
        paths = part10_files(source)
    else:
        return list(source())
    return [(sop_instance_uid(p), dataset_digest(p)) for p in paths]


@dataclass
class DestinationFigures:
    """One destination's figures from the journal (and, without a restart, from /metrics).

    :ivar journal: entries per term (``delivered``, ``queued``, ``dead``, ``filtered``).
    :ivar redelivered: delivered entries whose history holds an ambiguous attempt.
    :ivar metrics: the counters and gauges of the same terms (empty after a restart).
    """

    journal: Counter[str] = field(default_factory=Counter)
    redelivered: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


def _read_journal(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Read every entry with its instance, and the number of instances, read-only.

    :param path: the journal.
    :returns: (entries as dicts, instance count).
    """
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in conn.execute(
            "SELECT e.entry_id, e.destination, e.state, e.path AS entry_path, e.history, e.dead_reason,"
            " e.last_error, i.instance_id, i.sop_instance_uid, i.sha256, i.path AS instance_path"
            " FROM entries e JOIN instances i ON i.instance_id = e.instance_id ORDER BY e.entry_id")]
        instances = int(conn.execute("SELECT count(*) FROM instances").fetchone()[0])
    finally:
        conn.close()
    return rows, instances


def _figures(rows: list[dict[str, Any]], names: Iterable[str],
             samples: list[tuple[str, dict[str, str], float]] | None) -> dict[str, DestinationFigures]:
    """Tally the journal's entries per destination and term, and the metrics of the same terms."""
    figures = {name: DestinationFigures() for name in names}
    for row in rows:
        figure = figures.get(row["destination"])
        if figure is None:
            continue
        figure.journal[_TERMS[row["state"]]] += 1
        if row["state"] == "delivered" and (row["last_error"].startswith(AMBIGUOUS_PREFIX)
                                            or AMBIGUOUS_PREFIX in row["history"]):
            figure.redelivered += 1
    if samples is not None:
        for name, figure in figures.items():
            figure.metrics = {
                "delivered": _metric(samples, "dicom_gateway_forwarded_total", destination=name),
                "queued": _metric(samples, "dicom_gateway_queue_depth", destination=name),
                "dead": _metric(samples, "dicom_gateway_dead_letters", destination=name),
                "filtered": _metric(samples, "dicom_gateway_duplicates_total", destination=name),
                "redelivered": _metric(samples, "dicom_gateway_redeliveries_total", destination=name),
            }
    return figures


def _agree(figure: DestinationFigures) -> bool:
    """Tell whether the counters and gauges equal the journal's figures."""
    return all(figure.metrics[k] == figure.journal[k] for k in ("delivered", "queued", "dead", "filtered")) \
        and figure.metrics["redelivered"] == figure.redelivered


def check_forward_invariants(
    test: Any,
    gateway: GatewayProcess,
    *,
    destinations: Mapping[str, HoldingSource],
    ambiguous_faults: Mapping[str, int] | None = None,
    accepted: int | Mapping[str, int] | None = None,
    restarted: bool = False,
    unanswered: int = 0,
    timeout: float = 20.0,
    ambiguous_may_be_lost: bool = False,
) -> dict[str, DestinationFigures]:
    """Assert the three HARDENING C invariants for each named destination, once traffic settled.

    accepted_total is the gateway's ``instances_received_total`` (it must
    also equal the journal's instance count) when every route reaches the
    destination, else the sum of ``route_matches_total`` of the routes that
    do; after a restart (counters started again from 0) it is the journal's
    entry count for the destination, checked against ``accepted`` if given.

    :param test: the running ``TestCase`` (its ``assert*`` methods are used).
    :param gateway: the gateway (running, unless ``restarted`` and stopped).
    :param destinations: destination name -> what it holds (see :func:`held_copies`).
    :param ambiguous_faults: destination name -> ambiguous faults injected there
        (sends whose outcome the gateway could not know); absent means 0.
    :param ambiguous_may_be_lost: an ambiguous send may not have reached the
        destination (a peer that closes the connection as the next instance
        goes out, HARDENING F22): a redelivery is then counted with no extra
        copy, so extra copies <= redeliveries <= ambiguous faults is checked
        instead of equality.
    :param accepted: the instances the test knows were acknowledged (one
        number for every destination, or per destination); checked too.
    :param restarted: the gateway was killed or restarted during the test:
        compare with the journal only (the counters were reset).
    :param unanswered: C-STOREs in flight when the test killed the gateway
        while it received: each may have been journaled with its response
        never sent, so the journal may hold up to this many entries more than
        ``accepted`` (never fewer).
    :param timeout: seconds to wait for the gauges' snapshot and leases to settle.
    :returns: the figures per destination (for a test's own checks or prints).
    """
    faults = dict(ambiguous_faults or {})
    path = journal_path(gateway)
    port: int | None = None
    if restarted:
        test.assertIsNotNone(accepted, "journal-only check (restarted=True) needs the accepted count the "
                                       "test recorded itself: the journal cannot vouch for its own totals")
    else:
        test.assertIsNone(gateway.returncode,
                          f"the gateway exited ({gateway.returncode}) before the invariants were checked"
                          f"\n{gateway.log_text()[-3000:]}")
        port = http_port(gateway)
        test.assertIsNotNone(port, "the gateway's HTTP port is unknown: /metrics cannot be compared with the "
                                   "journal (enable http in the test's configuration)")
    use_metrics = port is not None
    deadline = time.monotonic() + timeout
    while True:
        rows, instances = _read_journal(path)
        samples = metrics_samples(port) if port is not None else None
        figures = _figures(rows, destinations, samples)
        leased = [r for r in rows if r["state"] == "leased" and r["destination"] in destinations]
        settled = not leased and (not use_metrics or (
            all(_agree(f) for f in figures.values())
            and _metric(samples or [], "dicom_gateway_instances_received_total") == instances))
        if settled or time.monotonic() >= deadline:
            break
        time.sleep(0.2)

    received = _metric(samples, "dicom_gateway_instances_received_total") if samples is not None else None
    if samples is not None:
        # The counters and gauges must tell what the journal tells.
        test.assertEqual(received, instances,
                         f"instances_received_total {received:g} != {instances} instances in the journal {path}")
        for name, figure in figures.items():
            for term in ("delivered", "queued", "dead", "filtered"):
                test.assertEqual(
                    figure.metrics[term], figure.journal[term],
                    f"{name}: /metrics {term} = {figure.metrics[term]:g} but the journal has "
                    f"{figure.journal[term]} entries {term} (journal {dict(figure.journal)}, metrics {figure.metrics})")
    morphed_dir = gateway.spool / "morphed"
    by_destination: dict[str, list[dict[str, Any]]] = {name: [] for name in destinations}
    for row in rows:
        if row["destination"] in by_destination:
            by_destination[row["destination"]].append(row)
    for name, source in destinations.items():
        figure = figures[name]
        entries = by_destination[name]
        # 1. accepted_total = delivered_total + queue_depth + dlq_depth + filtered_total.
        total = received if received is not None else len(entries)
        routes = [r for r in gateway.config.get("routes") or [] if name in (r.get("forward") or [])]
        if samples is not None and len(routes) < len(gateway.config.get("routes") or []):
            # Not every route reaches this destination: accepted_total is what its routes took.
            total = sum(_metric(samples, "dicom_gateway_route_matches_total", route=r["name"]) for r in routes)
        terms = figure.metrics if samples is not None else figure.journal
        parts = {k: terms[k] for k in ("delivered", "queued", "dead", "filtered")}
        test.assertEqual(
            total, sum(parts.values()),
            f"{name}: accepted_total {total:g} != delivered + queue_depth + dlq_depth + filtered "
            f"= {' + '.join(f'{v:g} ({k})' for k, v in parts.items())}"
            f" [{'journal only: the gateway restarted' if samples is None else '/metrics'}]")
        test.assertEqual(len({r["instance_id"] for r in entries}), len(entries),
                         f"{name}: an instance has two entries for this destination")
        if accepted is not None:
            expected = accepted if isinstance(accepted, int) else accepted[name]
            if unanswered:
                # Durable, then acknowledged: a kill between the two leaves entries nobody saw acknowledged.
                test.assertTrue(expected <= len(entries) <= expected + unanswered,
                                f"{name}: the journal has {len(entries)} entries, the test had {expected} acknowledged"
                                f" and {unanswered} unanswered")
            else:
                test.assertEqual(len(entries), expected,
                                 f"{name}: the journal has {len(entries)} entries, the test had {expected} acknowledged")
        # 2. Every accepted instance, by content hash, is at the destination or dead with a reason.
        held = held_copies(source)
        held_by_uid: dict[str, Counter[str]] = {}
        for uid, digest in held:
            held_by_uid.setdefault(uid, Counter())[digest] += 1
        known: dict[str, set[str]] = {}
        for row in entries:
            uid, digest, state = row["sop_instance_uid"], row["sha256"], row["state"]
            digests = {digest}
            if morphed_dir.is_dir():
                # A route's morph changed the copy sent: its digest is the copy's
                # (<spool>/morphed/<instance id>.<plan>.dcm) while the file exists, else unknown.
                copies_made = sorted(morphed_dir.glob(f"{row['instance_id']}.*.dcm"))
                digests = {dataset_digest(c) for c in copies_made} or {"*"}
            known.setdefault(uid, set()).update(digests)
            where = f"{name}: {uid} (entry {row['entry_id']}, {state}, sha256 {digest[:12]})"
            if state in ("delivered", "duplicate"):
                copies = held_by_uid.get(uid, Counter())
                test.assertTrue(copies, f"{where}: {state} in the journal but not at the destination")
                if "*" not in digests:
                    test.assertTrue(digests & set(copies),
                                    f"{where}: the destination holds other bytes: {sorted(copies)}"
                                    f" (expected {sorted(digests)})")
            elif state == "dead":
                test.assertTrue(row["dead_reason"].strip(), f"{where}: dead letter without a reason")
            else:
                spooled = row["entry_path"] or row["instance_path"]
                test.assertTrue(spooled and Path(spooled).is_file(),
                                f"{where}: queued but its spool file {spooled!r} is gone")
        for uid, digests in held_by_uid.items():
            test.assertIn(uid, known, f"{name}: holds {uid}, which the journal never accepted for it")
            if "*" not in known[uid]:
                test.assertLessEqual(set(digests), known[uid],
                                     f"{name}: holds bytes of {uid} the gateway never accepted")
        # 3. Extra copies <= ambiguous faults injected, and == redelivery_total.
        extra = len(held) - len(held_by_uid)
        injected = faults.get(name, 0)
        test.assertLessEqual(extra, injected,
                             f"{name}: {extra} extra copies but {injected} ambiguous faults injected "
                             f"({[u for u, c in held_by_uid.items() if sum(c.values()) > 1]})")
        redelivered = figure.metrics["redelivered"] if samples is not None else figure.redelivered
        if samples is not None:
            test.assertEqual(figure.metrics["redelivered"], figure.redelivered,
                             f"{name}: redeliveries_total {figure.metrics['redelivered']:g} != "
                             f"{figure.redelivered} delivered entries with an ambiguous attempt in the journal")
        if isinstance(source, RecordingScp) and (samples is None or ambiguous_may_be_lost):
            # After a kill the journal marks the send in flight as ambiguous without
            # knowing whether it reached the destination: it may count one it did not.
            test.assertLessEqual(extra, redelivered,
                                 f"{name}: {extra} extra copies at the destination > redelivery_total "
                                 f"{redelivered:g} (journal: the gateway restarted)")
            test.assertLessEqual(redelivered, injected,
                                 f"{name}: redelivery_total {redelivered:g} > {injected} ambiguous faults "
                                 f"(journal: the gateway restarted)")
        elif isinstance(source, RecordingScp):
            test.assertEqual(extra, redelivered,
                             f"{name}: {extra} extra copies at the destination != redelivery_total {redelivered:g}")
        else:
            # storescp and folders overwrite a second copy: only the bound is checkable.
            test.assertLessEqual(redelivered, injected,
                                 f"{name}: redelivery_total {redelivered:g} > {injected} ambiguous faults")
    return figures
