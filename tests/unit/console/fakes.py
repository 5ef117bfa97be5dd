"""A fake :class:`~gateway.console.data.ConsoleData` for the console's page tests (issue 18).

It answers from canned records and records every call, so a test can
check what a page asked for and what an action did, with which operator.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet.defer import Deferred, fail, succeed

from gateway.admin import Operator
from gateway.config.schema import RouteConfig
from gateway.console.data import (
    ActionResult,
    AuditPage,
    AuditRecordView,
    DeadFilter,
    DeadPage,
    DestinationView,
    FoundInstance,
    ListenerView,
    NodeView,
    Overview,
    RuleCheck,
)
from gateway.queue.interfaces import Attempt, Entry, EntryState, InstanceRecord

NOW = 1_800_000_000.0


def instance(n: int, patient_id: str = "PAT12345") -> InstanceRecord:
    """A spooled instance with a Patient ID (PHI the list pages mask)."""
    return InstanceRecord(
        instance_id=f"i{n}", path=f"/spool/i{n}.dcm", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=f"1.2.3.{n}", transfer_syntax_uid="1.2.840.10008.1.2.1", size=100, sha256="00",
        received_at=NOW - 3600, correlation_id=f"c{n}", study_instance_uid="1.2.3", patient_id=patient_id,
        accession_number="ACC1", modality="CT",
    )


def dead_entry(n: int, destination: str = "pacs", error: str = "refused: 0xA700") -> Entry:
    """A dead letter with two attempts."""
    return Entry(
        entry_id=n, instance=instance(n), route="ct", destination=destination, path=f"/spool/i{n}.dcm",
        state=EntryState.DEAD, attempts=2, enqueued_at=NOW - 7200, next_attempt_at=NOW, last_error=error,
        dead_reason="refused", history=(Attempt(NOW - 7000, "timeout"), Attempt(NOW - 6000, error)),
    )


class FakeConsoleData:
    """Canned answers; ``calls`` lists what was asked, with the operator of each action."""

    node = "node-a"

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.last_error = "association refused"
        self.dead = [dead_entry(n) for n in range(60, 0, -1)]
        self.paused: set[str] = set()
        self.checked: list[tuple[str, bytes]] = []
        self.spooled = {"i7": "/nonexistent/i7.dcm"}
        self.report: dict[str, Any] = {
            "file": "x", "sop_instance_uid": "1.2.3.4", "modality": "CT",
            "routes": [{"route": "ct", "destinations": ["pacs"], "changes": [
                {"path": "(0010,0010) PatientName", "old": "DOE^JOHN", "new": "ANON"}]}],
            "rejected": None, "dropped": False, "unrouted": False, "errors": [],
        }

    def overview(self) -> Deferred[Overview]:
        self.calls.append(("overview",))
        return succeed(Overview(
            node=self.node,
            destinations=(
                DestinationView("pacs", "dicom", "paused" if "pacs" in self.paused else "down", queued=12, in_flight=1,
                                dead=3, oldest_age=90.0, last_error=self.last_error, rate=tuple(range(60))),
                DestinationView("archive", "dicom", "up", queued=0, rate=(0,) * 60),
            ),
            listeners=(ListenerView("main", "0.0.0.0:11112", False, 2),),
            nodes=(NodeView("node-a", 1.0, 3, this_node=True), NodeView("node-b", 4.0, 0)),
            spool_free_bytes=10 * 2**30, spool_floor_bytes=2**30, generated_at=NOW,
        ))

    def find(self, by: str, value: str, limit: int = 500) -> Deferred[tuple[FoundInstance, ...]]:
        self.calls.append(("find", by, value))
        return succeed((FoundInstance(instance(1), (dead_entry(1),)),))

    def _match(self, where: DeadFilter | None) -> list[Entry]:
        where = where or DeadFilter()
        return [
            e for e in self.dead
            if (where.destination is None or e.destination == where.destination)
            and (where.route is None or e.route == where.route)
            and (where.reason is None or e.dead_reason == where.reason)
            and (where.enqueued_before is None or e.enqueued_at < where.enqueued_before)
        ]

    def dead_letters(self, where: DeadFilter, before: int | None, limit: int = 50) -> Deferred[DeadPage]:
        self.calls.append(("dead_letters", where, before))
        rows = [e for e in self._match(where) if before is None or e.entry_id < before]
        page = tuple(rows[:limit])
        return succeed(DeadPage(page, page[-1].entry_id if len(rows) > limit else None))

    def count_dead(self, where: DeadFilter) -> Deferred[int]:
        self.calls.append(("count_dead", where))
        return succeed(len(self._match(where)))

    def dead_letter(self, entry_id: int) -> Deferred[Entry]:
        for entry in self.dead:
            if entry.entry_id == entry_id:
                return succeed(entry)
        return fail(KeyError(entry_id))

    def retry(self, ids: Sequence[int] | None, where: DeadFilter | None, to: str | None, operator: Operator) -> Deferred[ActionResult]:
        self.calls.append(("retry", None if ids is None else tuple(ids), where, to, operator))
        chosen = self._match(where) if ids is None else [e for e in self.dead if e.entry_id in ids]
        return succeed(ActionResult(changed=tuple(e.entry_id for e in chosen)))

    def purge(self, ids: Sequence[int] | None, where: DeadFilter | None, operator: Operator) -> Deferred[ActionResult]:
        self.calls.append(("purge", None if ids is None else tuple(ids), where, operator))
        chosen = self._match(where) if ids is None else [e for e in self.dead if e.entry_id in ids]
        return succeed(ActionResult(changed=tuple(e.entry_id for e in chosen)))

    def pause(self, destination: str, paused: bool, operator: Operator) -> Deferred[None]:
        self.calls.append(("pause", destination, paused, operator))
        (self.paused.add if paused else self.paused.discard)(destination)
        return succeed(None)

    def reload(self, operator: Operator) -> Deferred[bool]:
        self.calls.append(("reload", operator))
        return succeed(True)

    def audit(self, event: str | None, ae: str | None, before: str | None, limit: int = 100) -> Deferred[AuditPage]:
        self.calls.append(("audit", event, ae, before))
        record = AuditRecordView("2027-01-15T08:00:00Z", "User Authentication", "0", ("MODALITY",), "console sign-in accepted", {})
        return succeed(AuditPage(self.node, (record,), None))

    def check(self, path: str, calling_ae_title: str = "", called_ae_title: str = "") -> Deferred[RuleCheck]:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:
            data = b""
        self.checked.append((path, data))
        return succeed(RuleCheck(self.report))

    def spool_file(self, instance_id: str) -> Deferred[str]:
        if instance_id not in self.spooled:
            return fail(KeyError(instance_id))
        return succeed(self.spooled[instance_id])

    def destinations(self) -> tuple[str, ...]:
        return ("pacs", "archive")

    def routes(self) -> tuple[Any, ...]:
        return (RouteConfig("ct", ("pacs",), origin="gateway.yaml:12"), RouteConfig("all", ("archive",)))
