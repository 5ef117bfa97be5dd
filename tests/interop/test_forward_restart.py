"""A poison instance, a restart with a big queue, and wall-clock jumps (HARDENING F16, F18, F19).

- F16: one instance whose route's morph fails every time, at the head of a
  study's queue: it is dead-lettered at its first attempt with a ``morph:``
  reason, the 19 behind it are delivered, and ``/metrics`` counts it
  (``dicom_gateway_dead_letters{destination}``, ``dicom_gateway_morph_errors_total{route}``).
- F18 (CI scale, decision 12): 10,000 entries queued offline with the
  gateway's own store API (:func:`bench.backlog.build_backlog`) for a
  destination that never answers; the real process listens and dequeues in
  under 60 s and its first state snapshot in ``/metrics`` already shows the
  10,000. Full size (100k, 1M) is ``bench/backlog.py``.
- F19: the gateway runs under libfaketime with the offset read from a file
  at every call (``FAKETIME_NO_CACHE``) and the monotonic clock left real
  (``FAKETIME_DONT_FAKE_MONOTONIC``); its destination accepts TCP and closes
  at once, so the worker's circuit probes arrive every ``max_delay``.
  After a +1 h jump the probes keep their pace (no burst); after a -1 h
  jump they keep coming (no stall). Each test also proves the preload took
  effect (a control that can fail): after the jump it asks the gateway to
  reload (SIGHUP) and reads the wall time the gateway stamped on its
  "configuration reloaded" log line, which must be off by the jump.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from datetime import datetime

from twisted.trial.unittest import TestCase

from tests.support.datasets import ct_dataset
from tests.support.gateway_process import GatewayProcess, dicom_destination
from tests.support.interop import ForwardTestMixin, pynetdicom_store
from tests.support.invariants import check_forward_invariants
from tests.support.ports import free_port
from tests.support.metrics import metrics_text, sample

def find_libfaketime() -> str | None:
    """Locate the ``libfaketime.so.1`` preload library on any architecture.

    Debian's ``libfaketime`` package installs it under the multiarch folder
    (``/usr/lib/<triplet>/faketime/``), so it is looked up in the package's
    file list (``dpkg -L``) first, then in the dynamic linker's cache.

    :returns: the library's path, or ``None`` if neither knows it.
    """
    for argv, pattern in ((["dpkg", "-L", "libfaketime"], r"^(/\S*/libfaketime\.so\.1)$"),
                          (["ldconfig", "-p"], r"=>\s*(/\S*/libfaketime\.so\.1)$")):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        for line in out.splitlines():
            match = re.search(pattern, line.strip())
            if match and os.path.exists(match.group(1)):
                return match.group(1)
    return None


#: The preload library, found once per test run.
LIBFAKETIME: str | None = find_libfaketime()

#: The text log's line for an applied reload, with the wall time the gateway stamped on it.
_RELOADED = re.compile(r"^(\S+) \[[^\]]*\] configuration reloaded", re.M)


class PoisonInstanceTests(ForwardTestMixin, TestCase):
    """F16: a copy the morph can never make does not block the ones behind it."""

    timeout = 120

    def test_poison_at_the_head_is_dead_lettered_once_and_the_rest_flow(self) -> None:
        """The first of 20 (one study, one slot) fails its morph: dead at attempt 1 with 'morph:'; 19 delivered; metrics count it."""
        recorder = self.recorder()
        http_port = free_port()
        gateway = self.start_gateway(
            destinations={"pacs": dicom_destination(recorder.port, recorder.ae_title, max_associations=1,
                                                    batch_size=10)},
            # PatientID is LO (64 chars, PS3.5 6.2): three 30-char descriptions cannot fit.
            routes=[{"name": "all", "forward": ["pacs"],
                     "morph": [{"set": {"PatientID": "{StudyDescription}{StudyDescription}{StudyDescription}"}}]}],
            http={"host": "127.0.0.1", "port": http_port},
        )
        self.assertEqual(gateway.cli("queue", "pause", "pacs").returncode, 0)
        study = "1.2.826.0.1.3680043.8.498.16016"
        datasets = []
        for i in range(20):
            ds = ct_dataset(8, 8, study_instance_uid=study, seed=i)
            ds.PatientID = "P16"
            ds.StudyDescription = "X" * 30 if i == 0 else "ok"
            datasets.append(ds)
        self.assertEqual(pynetdicom_store(gateway.port, datasets), [0x0000] * 20)
        poison = str(datasets[0].SOPInstanceUID)
        others = {str(ds.SOPInstanceUID) for ds in datasets[1:]}
        self.assertEqual(gateway.cli("queue", "resume", "pacs").returncode, 0)
        self.wait_for(gateway, lambda: set(recorder.successes()) == others and self.idle(gateway), 30,
                      "the 19 healthy instances delivered")
        [dead] = gateway.dead_letters()
        self.assertTrue(dead["dead_reason"].startswith("morph: "), dead["dead_reason"])
        self.assertLessEqual(dead["attempts"], 1)
        self.assertNotIn(poison, recorder.counts(), "a copy the morph could not make was sent")
        self.assertEqual(recorder.duplicates(), 0)
        text = self.wait_for(gateway, lambda: (t := metrics_text(http_port)) and sample(
            t, "dicom_gateway_dead_letters", destination="pacs") == 1 and t, 15, "dead_letters{pacs} == 1")
        self.assertEqual(sample(text, "dicom_gateway_morph_errors_total", route="all"), 1)
        self.assertEqual(sample(text, "dicom_gateway_dead_lettered_total", destination="pacs", reason="morph"), 1)
        self.assertEqual(sample(text, "dicom_gateway_forward_failures_total", destination="pacs",
                                kind="permanent"), 1)
        self.assertEqual(sample(text, "dicom_gateway_forwarded_total", destination="pacs"), 19)
        check_forward_invariants(self, gateway, destinations={"pacs": recorder}, accepted=20)


class BigQueueRestartTests(TestCase):
    """F18 and L8 (CI scale): start with 10,000 queued entries; ``bench/backlog.py`` runs 100k and 1M."""

    timeout = 180

    def test_ten_thousand_queued_ready_in_under_60s_and_metrics_right_at_once(self) -> None:
        """10,000 entries built offline: listening and dequeuing < 60 s; the first snapshot in /metrics shows depth 10,000."""
        from bench.backlog import FirstConnection, build_backlog

        count = 10_000
        destination = FirstConnection()
        self.addCleanup(destination.close)
        http_port = free_port()
        gateway = GatewayProcess(
            self.mktemp(),
            destinations={"pacs": dicom_destination(destination.port, "PACS",
                                                    timeouts={"connect": "5s", "acse": "60s", "dimse": "60s"})},
            routes=[{"name": "all", "forward": ["pacs"]}],
            http={"host": "127.0.0.1", "port": http_port},
        )
        build_backlog(gateway.spool, count)
        self.addCleanup(gateway.kill)
        started = time.monotonic()
        gateway.start(timeout=60)
        listening = time.monotonic() - started
        deadline = started + 60
        while destination.at is None and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIsNotNone(destination.at, "the worker never dequeued (no connection at the destination)")
        assert destination.at is not None
        dequeuing = destination.at - started
        # The first scrape carrying a snapshot (timestamp > 0) must already be right.
        while True:
            text = metrics_text(http_port)
            if sample(text, "dicom_gateway_state_snapshot_timestamp_seconds") > 0:
                break
            self.assertLess(time.monotonic(), deadline, "no state snapshot within 60 s")
            time.sleep(0.05)
        print(f"F18 CI: {count} queued: listening {listening:.2f} s, dequeuing {dequeuing:.2f} s")
        self.assertLess(listening, 60)
        self.assertLess(dequeuing, 60)
        self.assertEqual(sample(text, "dicom_gateway_queue_depth", destination="pacs"), count)
        self.assertEqual(sample(text, "dicom_gateway_dead_letters", destination="pacs"), 0)
        rows = {row["destination"]: row for row in gateway.cli("queue", "list", "--json").json()}
        self.assertEqual(rows["pacs"]["queued"] + rows["pacs"]["in_flight"], count)
        # L8 (CI scale): a scrape stays under 1 s with the backlog, and no label carries a UID.
        scrape_started = time.monotonic()
        text = metrics_text(http_port)
        # The row's bound; bench/backlog.py measures a scrape at 0.8 ms with 1M queued, so
        # 1 s only fails if a scrape's cost grows with the backlog (the failure L8 is about).
        self.assertLess(time.monotonic() - scrape_started, 1.0)
        series = [line for line in text.splitlines() if line and not line.startswith("#")]
        self.assertLess(len(series), 300, "label cardinality grows with the backlog")
        uid_like = [line for line in series if "1.2." in line.split(" ")[0]]
        self.assertEqual(uid_like, [], "a UID in a label")


class _Knocks:
    """A TCP listener that accepts and closes at once, noting when each connection came (test monotonic time)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port: int = self._sock.getsockname()[1]
        self.times: list[float] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.times.append(time.monotonic())
            conn.close()

    def since(self, start: float) -> list[float]:
        """Connections at or after ``start``."""
        return [t for t in self.times if t >= start]

    def close(self) -> None:
        """Stop listening."""
        self._sock.close()


class FakedTimeGateway(GatewayProcess):
    """A gateway process under libfaketime whose wall-clock offset is read from a file at every call."""

    def __init__(self, tmpdir: str, **overrides: object) -> None:
        super().__init__(tmpdir, **overrides)
        self.offset_file = self.dir / "faketime"
        self.shift("+0")

    def shift(self, offset: str) -> None:
        """Set the wall-clock offset (``+3600``, ``-3600``): only ``CLOCK_REALTIME`` moves."""
        self.offset_file.write_text(offset + "\n")

    def _env(self) -> dict[str, str]:
        env = super()._env()
        assert LIBFAKETIME is not None
        env.update(LD_PRELOAD=LIBFAKETIME, FAKETIME_TIMESTAMP_FILE=str(self.offset_file), FAKETIME_NO_CACHE="1",
                   FAKETIME_DONT_FAKE_MONOTONIC="1")
        return env

    def wall_clock_offset(self, timeout: float = 30.0) -> float:
        """How far the gateway's wall clock is from ours, read from the gateway itself.

        Sends SIGHUP and waits for the next ``configuration reloaded`` line;
        its timestamp is the gateway's ``time.time()`` at that moment.

        :param timeout: seconds to wait for the line.
        :returns: the gateway's wall time minus ours, in seconds.
        """
        before = len(_RELOADED.findall(self.log_text()))
        asked = time.time()
        self.reload()
        deadline = time.monotonic() + timeout
        while True:
            stamps = _RELOADED.findall(self.log_text())
            if len(stamps) > before:
                return datetime.fromisoformat(stamps[before]).timestamp() - asked
            if time.monotonic() > deadline:
                raise AssertionError(f"no reload line within {timeout}s\n{self.log_text()[-3000:]}")
            time.sleep(0.05)


class FakedTimeMixin:
    """The control of every F19 test: the gateway really runs on the shifted wall clock."""

    gateway: FakedTimeGateway

    def assert_gateway_clock_shifted(self, seconds: float) -> None:
        """Fail unless the gateway's wall clock is ``seconds`` away from ours (within a minute).

        :param seconds: the jump the test made (``3600`` or ``-3600``).
        """
        offset = self.gateway.wall_clock_offset()
        assert abs(offset - seconds) < 60, f"gateway clock offset {offset:.1f}s, expected {seconds}s: preload inactive?"


class WallClockJumpTests(FakedTimeMixin, TestCase):
    """F19: a wall-clock jump of +1 h or -1 h under a running gateway."""

    timeout = 120

    def setUp(self) -> None:
        """The destination knocks, the faked gateway, probes every ~1 s once its circuit is open."""
        # make test installs libfaketime (Makefile target peers): missing, the test fails, never skips.
        self.assertIsNotNone(LIBFAKETIME, "libfaketime not found by dpkg -L or ldconfig: install the Debian "
                                          "package libfaketime (make test does)")
        self.knocks = _Knocks()
        self.addCleanup(self.knocks.close)
        self.gateway = FakedTimeGateway(
            self.mktemp(),
            destinations={"pacs": dicom_destination(self.knocks.port, "PACS", initial_delay="1s", max_delay="1s",
                                                    retry={"jitter": 0}, circuit={"failures": 1})},
            routes=[{"name": "all", "forward": ["pacs"]}],
        )
        self.addCleanup(self.gateway.stop)
        self.gateway.start()
        # Something to forward, so the circuit opens and probes run.
        pynetdicom_store(self.gateway.port, [ct_dataset(8, 8)])
        self.wait_knocks(3, 30)

    def wait_knocks(self, n: int, timeout: float, start: float = 0.0) -> list[float]:
        """Wait for ``n`` connections after ``start``."""
        deadline = time.monotonic() + timeout
        while len(self.knocks.since(start)) < n:
            self.assertLess(time.monotonic(), deadline,
                            f"{len(self.knocks.since(start))} of {n} connections\n{self.gateway.log_text()[-3000:]}")
            time.sleep(0.05)
        return self.knocks.since(start)

    def test_minus_one_hour_does_not_stall_retries(self) -> None:
        """After -1 h, connection attempts keep coming about every second (5 within 15 s)."""
        jumped = time.monotonic()
        self.gateway.shift("-3600")
        self.wait_knocks(5, 15, jumped)
        self.assertIsNone(self.gateway.returncode)
        self.assert_gateway_clock_shifted(-3600)

    def test_plus_one_hour_does_not_burst(self) -> None:
        """After +1 h, the attempts keep their pace: at most 4 in the next 3 s (about 1 per second), none missing."""
        jumped = time.monotonic()
        self.gateway.shift("+3600")
        time.sleep(3)
        burst = self.knocks.since(jumped)
        # A burst (the failure) is a catch-up of the hour's worth of 1 s probes; a slow,
        # loaded gateway can only make fewer attempts, which the lower bound below catches.
        self.assertLessEqual(len(burst), 4, [round(t - jumped, 2) for t in burst])
        self.assertGreaterEqual(len(burst), 1, "no attempt after the jump")
        self.wait_knocks(len(burst) + 3, 10, jumped)
        self.assert_gateway_clock_shifted(3600)


class RetryScheduleJumpTests(FakedTimeMixin, TestCase):
    """F19 for one instance's retry: its due time is in the journal, in wall-clock time."""

    timeout = 120

    def setUp(self) -> None:
        """A destination that answers 0xA700 to the first attempt; the retry is due 8 s later."""
        # make test installs libfaketime (Makefile target peers): missing, the test fails, never skips.
        self.assertIsNotNone(LIBFAKETIME, "libfaketime not found by dpkg -L or ldconfig: install the Debian "
                                          "package libfaketime (make test does)")
        from tests.support.scp import RecordingScp

        self.scp = RecordingScp("PACS", status_for=lambda uid, attempt: 0xA700 if attempt == 1 else 0x0000).start()
        self.addCleanup(self.scp.stop)
        self.gateway = FakedTimeGateway(
            self.mktemp(),
            destinations={"pacs": dicom_destination(self.scp.port, "PACS", initial_delay="8s", max_delay="8s",
                                                    retry={"jitter": 0})},
            routes=[{"name": "all", "forward": ["pacs"]}],
        )
        self.addCleanup(self.gateway.stop)
        self.gateway.start()
        pynetdicom_store(self.gateway.port, [ct_dataset(8, 8)])
        deadline = time.monotonic() + 30
        while len(self.scp.receipts) < 1:
            self.assertLess(time.monotonic(), deadline, self.gateway.log_text()[-3000:])
            time.sleep(0.05)
        self.first = time.monotonic()

    def second_attempt_after(self, limit: float) -> float:
        """Seconds from the first attempt to the second, failing after ``limit`` s."""
        deadline = self.first + limit
        while len(self.scp.receipts) < 2:
            self.assertLess(time.monotonic(), deadline,
                            f"no retry within {limit}s\n{self.gateway.log_text()[-3000:]}")
            time.sleep(0.05)
        return time.monotonic() - self.first

    def test_plus_one_hour_does_not_fire_the_retry_early(self) -> None:
        """After +1 h, the 0xA700 retry still comes about 8 s after the first attempt, not at once."""
        self.gateway.shift("+3600")
        self.assertGreater(self.second_attempt_after(30), 6.0)
        self.assertEqual(self.scp.successes()[self.scp.receipts[0].sop_instance_uid], 1)
        self.assert_gateway_clock_shifted(3600)

    def test_minus_one_hour_does_not_stall_the_retry(self) -> None:
        """After -1 h, the 0xA700 retry comes within seconds of its due time, not an hour later."""
        self.gateway.shift("-3600")
        self.assertLess(self.second_attempt_after(30), 25.0)
        self.assert_gateway_clock_shifted(-3600)
