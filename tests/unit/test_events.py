"""Typed events and the one observer (issue 12, item 2).

- :class:`~gateway.events.FanOutObserver` hands every event to every sink,
  and the gateway's three sinks (metrics, audit, log) each act on it.
- The adapters and the service never ask whether an observer or an audit
  trail is there, nor read one with ``getattr``: an AST walk, in the manner
  of ``tests/unit/test_rules.py``, with the checker tried on snippets first.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from gateway import events
from gateway.audit import AuditTrail, MemorySink
from gateway.forward_types import ForwardObserver
from gateway.observe import GatewayMetrics
from gateway.queue.outcome import DeadLetterKind
from gateway.security import AuditObserver
from tests.unit.observe.test_metrics import _entry

#: The repository root.
ROOT: Path = Path(__file__).resolve().parents[2]

#: Modules that emit events and must not look for optional collaborators.
EMITTERS: tuple[str, ...] = (
    "gateway/listen.py",
    "gateway/forward.py",
    "gateway/membership.py",
    "gateway/forward_circuit.py",
    "gateway/drain.py",
    "gateway/heartbeat.py",
    "gateway/service.py",
    "gateway/receive.py",
    "gateway/commitment/scp.py",
    "gateway/commitment/worker.py",
    "gateway/commitment/archive.py",
    "gateway/commitment/report.py",
)

#: Attribute and variable names of the collaborators the rule is about.
WATCHED: frozenset[str] = frozenset({"observer", "_observer", "audit", "_audit", "on_instance", "_on_instance"})


def _named(node: ast.AST) -> str | None:
    """The watched name ``node`` refers to (``x.observer``, ``observer``), or ``None``."""
    if isinstance(node, ast.Attribute) and node.attr in WATCHED:
        return node.attr
    if isinstance(node, ast.Name) and node.id in WATCHED:
        return node.id
    return None


def optional_collaborator_reads(source: str, filename: str = "<snippet>") -> list[str]:
    """Every ``<observer|audit> is (not) None`` test and ``getattr``/``hasattr`` of one in ``source``.

    :param source: Python source text.
    :param filename: named in each violation.
    :returns: one line per violation, empty when there is none.
    """
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and o.value is None for o in operands):
                for operand in operands:
                    name = _named(operand)
                    if name is not None:
                        found.append(f"{filename}:{node.lineno}: '{name} is (not) None'")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
            args = node.args
            target = _named(args[0]) if args else None
            attribute = args[1].value if len(args) > 1 and isinstance(args[1], ast.Constant) else None
            if target is not None or (isinstance(attribute, str) and attribute in WATCHED):
                found.append(f"{filename}:{node.lineno}: {node.func.id}() of {target or attribute}")
    return found


class OptionalCollaboratorRuleTests(SynchronousTestCase):
    """No adapter or service asks whether its observer or audit trail is there."""

    def test_checker_finds_is_not_none_checks(self) -> None:
        """``self.factory.observer is not None`` and ``None is self.audit`` are both found."""
        source = "if self.factory.observer is not None:\n    pass\nif None is self.audit:\n    pass\n"
        self.assertEqual(len(optional_collaborator_reads(source)), 2)

    def test_checker_finds_getattr_of_an_observer(self) -> None:
        """``getattr(x, 'observer', None)`` and ``getattr(self.audit, 'sinks')`` are found."""
        source = "a = getattr(x, 'observer', None)\nb = getattr(self.audit, 'sinks')\nc = hasattr(f, 'on_instance')\n"
        self.assertEqual(len(optional_collaborator_reads(source)), 3)

    def test_checker_ignores_other_reads(self) -> None:
        """Other ``is None`` tests and ``getattr`` calls are left alone."""
        source = "if self._service is not None:\n    pass\nh = getattr(peer, 'host', '?')\nself.observer.observe(e)\n"
        self.assertEqual(optional_collaborator_reads(source), [])

    def test_emitters_have_no_optional_collaborator_reads(self) -> None:
        """listen.py, forward.py, service.py and receive.py emit to an observer that is always there."""
        found: list[str] = []
        for name in EMITTERS:
            found += optional_collaborator_reads((ROOT / name).read_text(encoding="utf-8"), name)
        self.assertEqual(found, [])

    def test_no_getattr_delegation_in_security(self) -> None:
        """security.py defines no ``__getattr__`` (the auditing observer no longer forwards unknown calls)."""
        tree = ast.parse((ROOT / "gateway/security.py").read_text(encoding="utf-8"))
        names = [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
        self.assertNotIn("__getattr__", names)


def _samples() -> list[Any]:
    """One instance of every event type of :data:`gateway.events.Event`."""
    entry = _entry()
    return [
        events.AssociationAccepted("l1", "CT1", "GW", "10.0.0.1:4000"),
        events.AssociationRejected("l1", "CT1", "GW", "10.0.0.1:4000", "access", "not allowed", (1, 1, 3)),
        events.AssociationEnded("l1", "CT1", False),
        events.UserAuthenticated("l1", "10.0.0.1:4000", "CT1", "alice", 1, True, "ok"),
        events.ArtimExpired("l1"),
        events.PduProtocolError("l1", 2),
        events.DimseProtocolError("l1"),
        events.TLSHandshakeFailed("l1", "10.0.0.1:4000", "expired", "certificate has expired"),
        events.InstanceStored(None),
        events.InstanceAdmitted(None, None, None),
        events.Delivered(entry, 0.5, ""),
        events.Redelivered(entry),
        events.Retried(entry, "out of resources"),
        events.DeadLettered(entry, DeadLetterKind.MORPH, "morph: bad template"),
        events.DestinationFault("pacs", "ConnectionRefusedError: refused", False),
        events.CircuitOpened("pacs", "ConnectionRefusedError: refused", False),
        events.CircuitClosed("pacs"),
        events.LeaseLost("pacs", 7, "node-a"),
        events.CircuitAdopted("pacs", True, "ConnectionRefusedError: refused"),
        events.ConfigReloaded(True),
        events.ProxyRefused("l1", "10.0.0.9:4000", "untrusted", "10.0.0.9 is not in proxy_protocol.trusted"),
        events.DrainChanged(True),
        events.CommitmentRequested("l1", "CT1", "10.0.0.1:4000", "1.2.3", "accepted", 0, 3),
        events.CommitmentReportSent("1.2.3", "ct1", "CT1", "delivered", 2, 2, 1, 4.5, 1),
        events.CommitmentReportFailed("1.2.3", "ct1", "ConnectionRefusedError: refused", 1, 10.0),
        events.ArchiveCommitmentRequested("pacs", "1.2.4", 3, 0),
        events.ArchiveCommitmentReported("pacs", "PACS", "1.2.4", 3, 0, 0),
        events.QueryAnswered("l1", "WS1", "10.0.0.1:4000", "1.2.840.10008.5.1.4.1.2.2.1", "STUDY", b"", "1.2.840.10008.1.2", "success", 0, 2),
        events.QuerySourceAnswered("pacs", True, 2, 0.25),
        events.RetrieveAnswered("l1", "WS1", "10.0.0.1:4000", "move", "1.2.840.10008.5.1.4.1.2.2.2", "STUDY", "success", 0, 3),
        events.DicomWebAnswered("cloud", 202, 3, 4096, 0.25),
        events.RetrieveJournalCleaned(2, 40, 5),
        events.StudyCompleted("ct", "complete", False, False, ("hook",), 12.0),  # issue 18 (notify)
    ]


class _Recorder:
    """A sink that keeps what it is told."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def observe(self, event: Any) -> None:
        self.seen.append(event)


class FanOutTests(SynchronousTestCase):
    """The fan-out observer tells every sink of every event, in order."""

    def test_every_event_type_has_a_sample(self) -> None:
        """The samples cover every member of the Event union, so the tests below cover every event."""
        self.assertEqual({type(e) for e in _samples()}, set(events.Event.__args__))  # type: ignore[attr-defined]

    def test_each_event_reaches_each_sink_in_order(self) -> None:
        """Three recording sinks each see every event, and the first sink sees it before the second."""
        order: list[str] = []

        class Tagged(_Recorder):
            def __init__(self, tag: str) -> None:
                super().__init__()
                self.tag = tag

            def observe(self, event: Any) -> None:
                order.append(self.tag)
                super().observe(event)

        sinks = [Tagged("metrics"), Tagged("audit"), Tagged("log")]
        fan = events.FanOutObserver(*sinks)
        samples = _samples()
        for event in samples:
            fan.observe(event)
        for sink in sinks:
            self.assertEqual(sink.seen, samples)
        self.assertEqual(order[:3], ["metrics", "audit", "log"])

    def test_null_observer_takes_every_event(self) -> None:
        """The default observer accepts every event and does nothing."""
        for event in _samples():
            self.assertIsNone(events.NULL_OBSERVER.observe(event))
        self.assertIsInstance(events.NULL_OBSERVER, events.IGatewayObserver)


class GatewaySinksTests(SynchronousTestCase):
    """Through one fan-out, the metrics, audit and log sinks each act on an event."""

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, ["CT1"], wall=lambda: 1000.0, version="9.9")
        self.sink = MemorySink()
        self.trail = AuditTrail([self.sink], ae_title="GW", hostname="h")
        self.lines: list[dict[str, Any]] = []
        log = Logger(namespace="gateway.events", observer=self.lines.append)
        destinations = {"pacs": _Dicom()}
        self.fan = events.FanOutObserver(self.metrics, AuditObserver(self.trail, lambda: destinations), events.LogObserver(log))

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def test_association_accepted(self) -> None:
        """Counted as accepted and open, audited as an association event, logged once."""
        self.fan.observe(events.AssociationAccepted("l1", "CT1", "GW", "10.0.0.1:4000"))
        self.assertEqual(self.value("dicom_gateway_associations_total", listener="l1", calling_ae="CT1", result="accepted"), 1)
        self.assertEqual(self.value("dicom_gateway_associations_active", listener="l1"), 1)
        self.assertEqual(len(self.sink.records), 1)
        self.assertEqual(self.sink.records[0].participants[0].user_id, "CT1")
        self.assertEqual([line["event_type"] for line in self.lines], ["AssociationAccepted"])

    def test_association_rejected(self) -> None:
        """Counted under its label, audited with its rejection values, logged naming the listener only."""
        self.fan.observe(events.AssociationRejected("l1", "CT\x1b1", "GW", "", "limit", "provider", (2, 3, 2)))
        self.assertEqual(self.value("dicom_gateway_associations_rejected_total", listener="l1", reason="limit"), 1)
        (record,) = self.sink.records
        self.assertEqual((record.event_id, record.extra["rejection"]), ("110113", "2,3,2"))
        self.assertNotIn("\x1b", record.participants[0].user_id)
        self.assertEqual(self.lines[0]["subject"], " listener l1")

    def test_tls_handshake_failure_but_a_silent_close(self) -> None:
        """A failed handshake is counted and audited; a silent close is counted but not audited."""
        self.fan.observe(events.TLSHandshakeFailed("l1", "10.0.0.1:4000", "expired", "certificate has expired"))
        self.fan.observe(events.TLSHandshakeFailed("l1", "10.0.0.2:4000", "closed", ""))
        self.assertEqual(self.value("dicom_gateway_tls_handshake_failures_total", listener="l1", reason="expired"), 1)
        self.assertEqual(self.value("dicom_gateway_tls_handshake_failures_total", listener="l1", reason="closed"), 1)
        self.assertEqual(len(self.sink.records), 1)
        self.assertEqual(len(self.lines), 2)

    def test_delivered(self) -> None:
        """Counted as forwarded, audited as transferred to the destination AE, logged with the entry id."""
        self.fan.observe(events.Delivered(_entry(), 0.5, ""))
        self.assertEqual(self.value("dicom_gateway_forwarded_total", destination="pacs"), 1)
        (record,) = self.sink.records
        self.assertEqual((record.event_id, record.action, record.disposition), ("110104", "R", "forwarded"))
        self.assertEqual(self.lines[0]["subject"], " destination pacs entry 1")

    def test_dead_lettered_by_kind(self) -> None:
        """Counted under its kind (and as a morph error of its route), audited as a serious failure, logged."""
        self.fan.observe(events.DeadLettered(_entry(route="anon"), DeadLetterKind.MORPH, "morph: bad template"))
        self.assertEqual(self.value("dicom_gateway_dead_lettered_total", destination="pacs", reason="morph"), 1)
        self.assertEqual(self.value("dicom_gateway_morph_errors_total", route="anon"), 1)
        (record,) = self.sink.records
        self.assertEqual((record.outcome, record.disposition), (8, "dead_letter"))
        self.assertEqual([line["event_type"] for line in self.lines], ["DeadLettered"])

    def test_circuit_opened_is_not_audited(self) -> None:
        """Counted as a down event; no audit record; logged."""
        self.fan.observe(events.CircuitOpened("pacs", "refused", False))
        self.assertEqual(self.value("dicom_gateway_destination_down_events_total", destination="pacs"), 1)
        self.assertEqual(self.sink.records, [])
        self.assertEqual(self.lines[0]["subject"], " destination pacs")

    def test_lease_lost_is_counted_not_audited(self) -> None:
        """Issue 14: a lease another node took over is counted per destination; no audit record; logged."""
        self.fan.observe(events.LeaseLost("pacs", 7, "node-a"))
        self.assertEqual(self.value("dicom_gateway_leases_lost_total", destination="pacs"), 1)
        self.assertEqual(self.sink.records, [])
        self.assertEqual(self.lines[0]["subject"], " destination pacs")

    def test_circuit_adopted_is_not_a_down_event(self) -> None:
        """Issue 14: a circuit opened after another node's record is not counted as a down event of this node, nor audited; logged."""
        self.fan.observe(events.CircuitAdopted("pacs", True, "refused"))
        self.assertIsNone(self.value("dicom_gateway_destination_down_events_total", destination="pacs"))
        self.assertEqual(self.sink.records, [])
        self.assertEqual([line["event_type"] for line in self.lines], ["CircuitAdopted"])

    def test_config_reloaded(self) -> None:
        """Counted by result; logged with no subject."""
        self.fan.observe(events.ConfigReloaded(False))
        self.assertEqual(self.value("dicom_gateway_config_reloads_total", result="failure"), 1)
        self.assertEqual(self.lines[0]["subject"], "")

    def test_log_lines_are_debug(self) -> None:
        """The log sink writes at debug level, so the default info level adds no line."""
        from twisted.logger import LogLevel

        # (the instance events' samples carry no report or admission for the metrics to read)
        for event in [e for e in _samples() if not isinstance(e, (events.InstanceStored, events.InstanceAdmitted))]:
            self.fan.observe(event)
        self.assertTrue(self.lines)
        self.assertEqual({line["log_level"] for line in self.lines}, {LogLevel.debug})


@dataclasses.dataclass(frozen=True)
class _Dicom:
    ae_title: str = "ARCHIVE"
    host: str = "archive.example"
    port: int = 104


class ForwardObserverAdapterTests(SynchronousTestCase):
    """ForwardObserver turns the worker's events into one method call each."""

    def test_each_forward_event_calls_its_method(self) -> None:
        """Every forwarding event reaches its method; other events are ignored."""
        calls: list[str] = []

        class Methods(ForwardObserver):
            def delivered(self, entry: Any, duration: float, warning: str) -> None:
                calls.append("delivered")

            def redelivered(self, entry: Any) -> None:
                calls.append("redelivered")

            def retried(self, entry: Any, reason: str) -> None:
                calls.append("retried")

            def dead_lettered_as(self, entry: Any, kind: DeadLetterKind, reason: str) -> None:
                calls.append(f"dead:{kind.value}")

            def destination_fault(self, name: str, reason: str, permanent: bool) -> None:
                calls.append("fault")

            def destination_down(self, name: str, reason: str, permanent: bool) -> None:
                calls.append("down")

            def destination_up(self, name: str) -> None:
                calls.append("up")

        observer = Methods()
        for event in _samples():
            observer.observe(event)
        self.assertEqual(calls, ["delivered", "redelivered", "retried", "dead:morph", "fault", "down", "up"])
