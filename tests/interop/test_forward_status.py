"""Every C-STORE status of HARDENING F04 from a real scriptable peer over the network.

The destination is the recording pynetdicom SCP of :mod:`tests.support.scp`
(a test-only peer in a thread of the test process); its C-STORE handler
answers a status scripted per SOP Instance UID and per attempt. The gateway
is the real process; the modality is DCMTK ``storescu``. One instance is
sent per scripted case, all of them to one destination with one association
slot, so their statuses arrive interleaved on the same association: each
instance's outcome must follow its own status only (status aggregation per
instance, HARDENING F04's "weasis #4 lesson").

The row's outcomes (PS3.7 Annex C, PS3.4 Table B.2-1, HARDENING decision 6):

- 0xB000, 0xB006, 0xB007 (warnings): delivered at the first attempt, and
  counted in ``delivered_with_warning_total``;
- 0xA700, 0xA7FF (refused, out of resources): retried, then delivered when
  the peer takes it; retried without end would stop at ``max_attempts``;
- 0xA900, 0xC000, 0x0122, 0x0124, 0x0211 (failures re-sending cannot
  change): dead letter after <= N attempts (here at the first);
- 0xD123 (no class): failure with bounded retries
  (``unknown_status_attempts``), then dead letter naming the code.

Each case is checked three ways: what the peer received (attempts, one
receipt per attempt), the journal as ``dicom-gateway find --study UID
--json`` shows it (state, reason, history) and ``queue list --dead`` lists
it, and the counters on ``/metrics``. The attempts are counted at the peer
and in the entry's history (one item per failed attempt); the journal's
``attempts`` field of a dead letter counts the retried attempts only (the
attempt that dead-letters it is its last history item, marked not counted),
so it is not what the test compares.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from tests.support import dcmtk
from tests.support.gateway_process import GatewayProcess, dicom_destination
from tests.support.interop import ForwardTestMixin, index_by_sop_instance, make_series, part10_files
from tests.support.invariants import check_forward_invariants
from tests.support.metrics import metrics_text, sample
from tests.support.ports import free_port

#: ``retry.max_attempts`` of the destination: the N of "dead letter after <= N attempts".
MAX_ATTEMPTS = 6

#: ``retry.unknown_status_attempts``: not the default (3), so the bound seen is the configured one.
UNKNOWN_STATUS_ATTEMPTS = 4


@dataclass(frozen=True)
class StatusCase:
    """One scripted instance: what the peer answers and what the gateway must make of it.

    :param name: a label for messages.
    :param script: ``attempt -> status`` (1-based attempts of this instance).
    :param state: the entry's final state in the journal (``delivered`` or ``dead``).
    :param attempts: how many C-STORE requests the peer must receive for it.
    :param reason: text the dead letter's reason (or the delivered entry's warning) must hold.
    :param reason_class: the ``reason`` label of ``dead_lettered_total`` (dead letters only).
    """

    name: str
    script: Callable[[int], int]
    state: str
    attempts: int
    reason: str = ""
    reason_class: str = ""


def _always(status: int) -> Callable[[int], int]:
    """A script answering ``status`` to every attempt.

    :param status: the C-STORE status.
    :returns: the script.
    """
    return lambda _attempt: status


def _then_success(status: int, failures: int) -> Callable[[int], int]:
    """A script answering ``status`` to the first ``failures`` attempts, then 0x0000.

    :param status: the failure status.
    :param failures: how many attempts fail.
    :returns: the script.
    """
    return lambda attempt: status if attempt <= failures else 0x0000


#: The row's statuses, plus a success (the control) and 0xA700 without end (bounded by max_attempts).
CASES: tuple[StatusCase, ...] = (
    StatusCase("success", _always(0x0000), "delivered", 1),
    # PS3.4 B.2.3: warnings; the destination has the instance.
    StatusCase("B000", _always(0xB000), "delivered", 1, "warning status 0xB000"),
    StatusCase("B006", _always(0xB006), "delivered", 1, "warning status 0xB006"),
    StatusCase("B007", _always(0xB007), "delivered", 1, "warning status 0xB007"),
    # PS3.4 Table B.2-1: refused, out of resources: transient.
    StatusCase("A700", _then_success(0xA700, 2), "delivered", 3),
    StatusCase("A7FF", _then_success(0xA7FF, 2), "delivered", 3),
    StatusCase("A700 forever", _always(0xA700), "dead", MAX_ATTEMPTS,
               f"out of resources (status 0xA700); gave up after {MAX_ATTEMPTS} attempts", "gave_up"),
    # PS3.4 Table B.2-1 and PS3.7 C.5: permanent for these bytes.
    StatusCase("A900", _always(0xA900), "dead", 1, "status 0xA900", "refused"),
    StatusCase("C000", _always(0xC000), "dead", 1, "status 0xC000", "refused"),
    StatusCase("0122", _always(0x0122), "dead", 1, "status 0x0122", "refused"),
    StatusCase("0124", _always(0x0124), "dead", 1, "status 0x0124", "refused"),
    StatusCase("0211", _always(0x0211), "dead", 1, "status 0x0211", "refused"),
    # No class: bounded retries, then a dead letter naming the code (HARDENING decision 6).
    StatusCase("D123", _always(0xD123), "dead", UNKNOWN_STATUS_ATTEMPTS,
               f"unknown status 0xD123 after {UNKNOWN_STATUS_ATTEMPTS} attempts", "refused"),
)


class StatusScriptingTests(ForwardTestMixin, TestCase):
    """HARDENING F04: each C-STORE status from a real peer ends in the row's outcome."""

    timeout = 180

    def _send_cases(self) -> tuple[GatewayProcess, Any, dict[str, StatusCase], int]:
        """Start the scripted peer and the gateway, send one instance per case, wait until all settled.

        :returns: the gateway, the peer, SOP Instance UID -> case, the HTTP port.
        """
        source = Path(self.mktemp()).resolve()
        study, _series = make_series(source, len(CASES), 4 * 1024)
        uids = sorted(index_by_sop_instance(part10_files(source)))
        by_uid = dict(zip(uids, CASES))
        recorder = self.recorder(status_for=lambda uid, attempt: by_uid[uid].script(attempt))
        http_port = free_port()
        gateway = self.start_gateway(
            http={"host": "127.0.0.1", "port": http_port},
            destinations={"pacs": dicom_destination(
                recorder.port, recorder.ae_title, max_associations=1, batch_size=100,
                initial_delay="100ms", max_delay="1s",
                retry={"max_attempts": MAX_ATTEMPTS, "unknown_status_attempts": UNKNOWN_STATUS_ATTEMPTS})},
            routes=[{"name": "all", "forward": ["pacs"]}],
        )
        # Queue every instance before the destination may start, so the first
        # attempts of all cases share one association.
        self.assertEqual(gateway.cli("queue", "pause", "pacs").returncode, 0)
        result = dcmtk.storescu(gateway.port, [source], extra=["+sd"])
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertEqual(gateway.cli("queue", "resume", "pacs").returncode, 0)
        self.wait_for(gateway, lambda: self.idle(gateway), 90, "every case settled")
        self.study = study
        return gateway, recorder, by_uid, http_port

    def _entries(self, gateway: GatewayProcess) -> dict[str, dict[str, Any]]:
        """Read each instance's entry for ``pacs`` with ``dicom-gateway find --study UID --json``.

        :param gateway: the gateway.
        :returns: SOP Instance UID -> the entry as JSON.
        """
        found = gateway.cli("find", "--study", self.study, "--json")
        self.assertEqual(found.returncode, 0, found.describe())
        entries: dict[str, dict[str, Any]] = {}
        for item in found.json():
            (entry,) = [e for e in item["entries"] if e["destination"] == "pacs"]
            entries[item["instance"]["sop_instance_uid"]] = entry
        return entries

    def test_each_status_ends_in_the_row_outcome_with_its_attempts_journal_and_metrics(self) -> None:
        """F04: warnings delivered and counted, A7xx retried, A900/C000/0122/0124/0211 dead at once, D123 dead after the bound."""
        gateway, recorder, by_uid, http_port = self._send_cases()
        counts = recorder.counts()
        entries = self._entries(gateway)
        self.assertEqual(set(entries), set(by_uid))
        for uid, case in by_uid.items():
            entry = entries[uid]
            where = f"{case.name}: {entry}"
            # What the peer saw: one C-STORE per attempt, no more.
            self.assertEqual(counts[uid], case.attempts, where)
            self.assertEqual(entry["state"], case.state, where)
            if case.state == "delivered":
                # The warning is kept as the delivered entry's last error, empty on success.
                self.assertEqual(entry["last_error"], case.reason, where)
                self.assertEqual(entry["dead_reason"], "", where)
            else:
                self.assertIn(case.reason, entry["dead_reason"], where)
                self.assertLessEqual(case.attempts, MAX_ATTEMPTS, where)
            # Every failed attempt is in the history (for a dead letter, the last one says why).
            failed = case.attempts - (1 if case.state == "delivered" else 0)
            self.assertEqual(len(entry["history"]), failed, where)
            if case.state == "dead":
                self.assertEqual(entry["history"][-1]["error"], entry["dead_reason"], where)
        # Status aggregation per instance: the first attempts of all cases shared
        # one association, yet each instance got its own outcome.
        first = {r.sop_instance_uid: r.association for r in reversed(recorder.receipts)}
        self.assertEqual(set(first.values()), {1}, recorder.receipts)
        dead = {letter["instance"]["sop_instance_uid"]: letter for letter in gateway.dead_letters()}
        self.assertEqual(set(dead), {uid for uid, c in by_uid.items() if c.state == "dead"})
        # The counters tell the same story.
        text = metrics_text(http_port)
        delivered = [c for c in CASES if c.state == "delivered"]
        self.assertEqual(sample(text, "dicom_gateway_forwarded_total", destination="pacs"), len(delivered))
        self.assertEqual(sample(text, "dicom_gateway_delivered_with_warning_total", destination="pacs"),
                         sum(1 for c in delivered if c.reason))
        for reason_class in ("refused", "gave_up"):
            self.assertEqual(
                sample(text, "dicom_gateway_dead_lettered_total", destination="pacs", reason=reason_class),
                sum(1 for c in CASES if c.reason_class == reason_class), reason_class)
        retries = sum(c.attempts - 1 for c in CASES)
        self.assertEqual(sample(text, "dicom_gateway_retries_total", destination="pacs"), retries)
        self.assertEqual(sample(text, "dicom_gateway_forward_failures_total", destination="pacs",
                                kind="transient"), retries)
        self.assertEqual(sample(text, "dicom_gateway_forward_failures_total", destination="pacs",
                                kind="permanent"), len(dead))
        self.assertEqual(sample(text, "dicom_gateway_destination_down_events_total", destination="pacs"), 0)
        check_forward_invariants(self, gateway, destinations={"pacs": recorder}, accepted=len(CASES))
