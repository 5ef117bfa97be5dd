"""A dead letter's kind travels as data from the worker to metrics and audit (issue 12): nothing parses reason text.

The journal keeps its human-readable reasons (``"morph: ..."``, ``"...; gave
up after ..."``), as before; the ``reason`` label of ``dead_lettered_total``
comes from :class:`~gateway.queue.outcome.DeadLetterKind`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import fail
from twisted.trial.unittest import SynchronousTestCase

from gateway.events import DeadLettered, FanOutObserver
from gateway.forward_types import ForwardObserver, PrepareError
from gateway.observe import GatewayMetrics
from gateway.queue.interfaces import Entry, EntryState
from gateway.queue.outcome import DeadLetterKind
from gateway.security import AuditObserver
from tests.adapters.test_forward import RETRY, FakePeer, WorkerTestsMixin
from tests.unit.observe.test_metrics import _entry


class KindRecorder(ForwardObserver):
    """Records each dead letter's kind and text as the worker reports them."""

    def __init__(self) -> None:
        self.dead: list[tuple[DeadLetterKind, str]] = []

    def dead_lettered_as(self, entry: Entry, kind: DeadLetterKind, reason: str) -> None:
        self.dead.append((kind, reason))


class WorkerKindTests(WorkerTestsMixin, SynchronousTestCase):
    """The worker reports each dead letter with its kind beside the journal's text."""

    def setUp(self) -> None:
        WorkerTestsMixin.setUp(self)
        self.kinds = KindRecorder()
        self.observer = self.kinds  # type: ignore[assignment]

    def test_morph_failure_is_kind_morph_and_the_journal_text_is_unchanged(self) -> None:
        """A PrepareError: kind MORPH to the observer, 'morph: ...' in the journal."""
        record = self.instance()
        self.enqueue(record)
        self.worker(self.destination(), FakePeer(), prepare=lambda entry: fail(PrepareError("bad template")))
        (dead,) = self.store.entries("archive", EntryState.DEAD)
        self.assertEqual(dead.dead_reason, "morph: bad template")
        self.assertEqual(self.kinds.dead, [(DeadLetterKind.MORPH, "morph: bad template")])

    def test_a_retry_that_runs_out_is_gave_up(self) -> None:
        """Two 0xA700 answers with max_attempts=2: kind GAVE_UP, whatever the last failure."""
        record = self.instance()
        self.enqueue(record)
        peer = FakePeer()
        peer.script[record.sop_instance_uid] = [0xA700] * 10
        self.worker(self.destination(retry=dataclasses.replace(RETRY, max_attempts=2)), peer)
        self.clock.pump([1.0, 2.0, 4.0])
        ((kind, reason),) = self.kinds.dead
        self.assertIs(kind, DeadLetterKind.GAVE_UP)
        self.assertTrue(reason.startswith("out of resources (status 0xA700); gave up after 2 attempts"), reason)

    def test_a_refused_status_is_refused(self) -> None:
        """0xC000 is dead at once with kind REFUSED."""
        record = self.instance()
        self.enqueue(record)
        peer = FakePeer()
        peer.script[record.sop_instance_uid] = [0xC000]
        self.worker(self.destination(), peer)
        self.assertEqual(self.kinds.dead, [(DeadLetterKind.REFUSED, "cannot understand (status 0xC000)")])


class MetricsKindTests(SynchronousTestCase):
    """The metrics observer labels dead letters by the kind it is given."""

    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, [], wall=lambda: 1000.0, version="9.9")

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def test_the_label_is_the_kind_not_the_words(self) -> None:
        """Text that reads like a morph failure but comes with kind CONVERSION is counted as conversion, no morph error."""
        self.metrics.forward_observer().dead_lettered_as(_entry(route="anon"), DeadLetterKind.CONVERSION, "morph: lookalike")
        self.assertEqual(self.value("dicom_gateway_dead_lettered_total", destination="pacs", reason="conversion"), 1)
        self.assertIsNone(self.value("dicom_gateway_dead_lettered_total", destination="pacs", reason="morph"))
        self.assertIsNone(self.value("dicom_gateway_morph_errors_total", route="anon"))

    def test_kind_morph_counts_a_morph_error_for_the_route(self) -> None:
        """Kind MORPH counts under reason=morph and as a morph error of the entry's route."""
        self.metrics.forward_observer().dead_lettered_as(_entry(route="anon"), DeadLetterKind.MORPH, "anything")
        self.assertEqual(self.value("dicom_gateway_dead_lettered_total", destination="pacs", reason="morph"), 1)
        self.assertEqual(self.value("dicom_gateway_morph_errors_total", route="anon"), 1)

    def test_every_kind_is_a_label_value_of_the_contract(self) -> None:
        """The kinds are exactly the label values dead_lettered_total has always had."""
        self.assertEqual(
            {k.value for k in DeadLetterKind},
            {"morph", "refused", "no_context", "conversion", "unreadable", "unsafe_path", "gave_up", "other"},
        )


class AuditKindTests(SynchronousTestCase):
    """The auditing observer records the dead letter and passes its kind on."""

    def test_kind_reaches_the_inner_observer(self) -> None:
        """dead_lettered_as through the audit wrapper: an audit record, and the inner observer gets the kind."""
        inner = KindRecorder()
        records: list[Any] = []

        class Trail:
            def us(self, role: str) -> Any:
                return None

            def instance(self, disposition: str, **fields: Any) -> None:
                records.append(disposition)

        observer = FanOutObserver(AuditObserver(Trail(), lambda: {}), inner)  # type: ignore[arg-type]
        observer.observe(DeadLettered(_entry(), DeadLetterKind.UNSAFE_PATH, "unsafe path: x"))
        self.assertEqual(records, ["dead_letter"])
        self.assertEqual(inner.dead, [(DeadLetterKind.UNSAFE_PATH, "unsafe path: x")])
