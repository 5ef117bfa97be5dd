"""Load rows against the real gateway process (HARDENING L1, L2, L3, L4, L5, L6, P16, P39; issue 7 "Load").

- **L1 / P16 / P39**: 64 concurrent inbound associations (raw peers in
  threads, all established before any stores), each storing 20 instances,
  every one acknowledged 0x0000 and committed to the spool; while all of
  them are held, the next association gets A-ASSOCIATE-RJ (2,3,2) within
  100 ms, never a TCP reset; and ``echoscu`` runs during the load each
  complete in under a second.  The same load is then sent by 64
  ``storescu`` processes started together (a real peer).  pynetdicom is not
  used: 64 of its associations in one test process stall on pynetdicom's
  side (every socket idle in both directions, the gateway's responses read),
  which would test pynetdicom rather than the gateway.
- **L6 (idle part) / P01 at scale**: idle connections that never send a byte
  are all closed at ARTIM while a legitimate ``storescu`` completes
  promptly, and the gateway's open file descriptors and RSS return to their
  baseline.  The issue asks for 500; CI runs 200 (HARDENING decision 12: a
  2-core CI box, and 500 client sockets with reader threads in the test
  process itself cost more than the row proves); ``IDLE_CONNECTIONS`` can be
  raised for a full-size run.

- **L2 (scaled)**: 4 parallel ``storescu`` associations x 25 instances, all
  acknowledged, journaled and delivered to a folder with identical data sets.
- **L4 (scaled)**: one 256 MB multi-frame instance (the row says 2 GB)
  received and delivered with the gateway's peak RSS growing < 64 MB.
- **L6 (scaled)**: 10 s of 20 idle + 5 garbage connects/s (the row says 100 +
  10) while ``storescu`` sends 50 instances: all delivered, fds and RSS back,
  each garbage connection counted in ``dicom_gateway_pdu_protocol_errors_total``.

Rates, latencies and the full-size runs are ``bench/load.py``'s (speed is
never a timed assertion here).  Its connect storm, process sampler and
parallel ``storescu`` helpers live in this module so both use the same code.
The gateway runs with short timers (ARTIM 2 s) so the tier stays fast.
"""

from __future__ import annotations

import os
import queue
import random
import re
import selectors
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from twisted.trial.unittest import TestCase

from gateway.dimse.commands import CEchoRSP
from gateway.ul import pdu as _pdu
from tests.support import dcmtk
from tests.support.datasets import dataset_digest, dataset_offset, write_instance, write_multiframe
from tests.support.gateway_process import GatewayProcess, dicom_destination, folder_destination, wait_until
from tests.support.procstat import fd_count, rss_kib, vm_hwm_kib
from tests.support.interop import GatewayTestMixin, digests_by_sop_instance, make_series, part10_files
from tests.support.rawpeer import (
    RawPeer,
    associate_rq,
    command_pdata,
    echo_rq_command,
    pdata,
    pdv,
    release_rq,
    response_commands,
    store_rq_command,
    tiny_dataset,
)

#: Concurrent storing associations (HARDENING L1: at least 64).
ASSOCIATIONS = 64
#: Instances stored by each association.
INSTANCES = 20
#: Idle connections of the L6 test: 200 in CI, scaled down from the issue's 500 (decision 12).
IDLE_CONNECTIONS = int(os.environ.get("GATEWAY_LOAD_IDLE_CONNECTIONS", "200"))
#: The CT context of the raw peers' default A-ASSOCIATE-RQ.
CT_CONTEXT = 3
#: ARTIM of the gateways under test, seconds.
ARTIM = 2.0


class ProcessSampler:
    """Sample a process's VmRSS and open fds in a background thread, keeping the peaks.

    VmHWM (:func:`vm_hwm_kib`) catches peaks between samples; the samples
    show when they happened.

    :param pid: the process.
    :param interval: seconds between samples.
    """

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        #: The largest VmRSS seen, KiB.
        self.peak_rss_kib = 0
        #: The largest number of open fds seen.
        self.peak_fds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_rss_kib = max(self.peak_rss_kib, rss_kib(self.pid))
                self.peak_fds = max(self.peak_fds, fd_count(self.pid))
            except (OSError, AssertionError):
                return  # the process ended
            self._stop.wait(self.interval)

    def start(self) -> ProcessSampler:
        """Start sampling.

        :returns: this object.
        """
        self._thread.start()
        return self

    def stop(self) -> ProcessSampler:
        """Stop sampling and wait for the thread.

        :returns: this object.
        """
        self._stop.set()
        self._thread.join(5)
        return self


#: PDU types PS3.8 9.3.1 defines (A-ASSOCIATE-RQ 01H to A-ABORT 07H); garbage starts with any other byte.
_PDU_TYPES = range(0x01, 0x08)


def garbage_payload(rng: random.Random) -> bytes:
    """Build random bytes that are not a PDU: an unrecognised type byte, then 15 to 4095 random bytes.

    A first byte outside PS3.8 9.3.1's PDU types is Evt19 (unrecognised PDU,
    PS3.8 Table 9-10) as soon as it arrives, so every garbage connection ends
    in an A-ABORT we can count, rather than in a wait for a long PDU's body.

    :param rng: the random source.
    :returns: the bytes.
    """
    first = rng.choice([b for b in range(256) if b not in _PDU_TYPES])
    return bytes([first]) + rng.randbytes(rng.randint(15, 4095))


class ConnectStorm:
    """Open idle and garbage connections at steady rates from background threads (HARDENING L6).

    Idle connections never send a byte; garbage connections send
    :func:`garbage_payload` once.  Neither closes its end: one reaper thread
    waits for the gateway to close each (ARTIM for idle ones, an A-ABORT for
    garbage) and then closes ours, so the client holds as many sockets as the
    gateway.  Any byte the gateway sends on an idle connection is counted
    (P01 wants none).

    :param host: the gateway's address.
    :param port: its port.
    :param idle_per_second: idle connects per second (0: none).
    :param garbage_per_second: garbage connects per second (0: none).
    :param seed: seed of the garbage bytes.
    """

    def __init__(self, host: str, port: int, idle_per_second: float, garbage_per_second: float,
                 seed: int = 0) -> None:
        self.address = (host, port)
        self.rates = {"idle": idle_per_second, "garbage": garbage_per_second}
        #: Connections opened, by kind.
        self.opened = {"idle": 0, "garbage": 0}
        #: Connects that failed (refused, timed out).
        self.failed = 0
        #: Connections the gateway ended with a reset instead of a FIN.
        self.resets = 0
        #: Bytes the gateway sent on idle connections (should stay 0).
        self.idle_bytes_received = 0
        #: The largest number of our connections open at once.
        self.peak_open = 0
        self._rng = random.Random(seed)
        self._open: dict[socket.socket, str] = {}
        self._new: queue.SimpleQueue[tuple[socket.socket, str]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._closing = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._threads = [threading.Thread(target=self._open_loop, args=(kind,), daemon=True)
                         for kind, rate in self.rates.items() if rate > 0]
        self._reaper = threading.Thread(target=self._reap_loop, daemon=True)

    @property
    def open_now(self) -> int:
        """Count our connections the gateway has not closed yet.

        :returns: the number.
        """
        with self._lock:
            return len(self._open) + self._new.qsize()

    def start(self) -> ConnectStorm:
        """Start opening connections.

        :returns: this object.
        """
        self._reaper.start()
        for thread in self._threads:
            thread.start()
        return self

    def stop_opening(self) -> None:
        """Stop opening new connections (those open stay until the gateway closes them)."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(10)

    def close(self) -> None:
        """Stop everything and close every connection still open; safe to call twice."""
        self.stop_opening()
        self._closing.set()
        if self._reaper.is_alive():
            self._reaper.join(10)
        with self._lock:
            while not self._new.empty():
                self._new.get()[0].close()
            for sock in self._open:
                sock.close()
            self._open.clear()
        self._selector.close()

    def _open_loop(self, kind: str) -> None:
        interval = 1.0 / self.rates[kind]
        next_at = time.monotonic()
        while not self._stopping.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self._stopping.wait(delay):
                return
            next_at += interval
            try:
                sock = socket.create_connection(self.address, timeout=5)
                if kind == "garbage":
                    with self._lock:
                        payload = garbage_payload(self._rng)
                    sock.sendall(payload)
                sock.setblocking(False)
            except OSError:
                with self._lock:
                    self.failed += 1
                continue
            with self._lock:
                self.opened[kind] += 1
            self._new.put((sock, kind))

    def _reap_loop(self) -> None:
        while not self._closing.is_set():
            with self._lock:
                while not self._new.empty():
                    sock, kind = self._new.get()
                    self._open[sock] = kind
                    self._selector.register(sock, selectors.EVENT_READ, kind)
                self.peak_open = max(self.peak_open, len(self._open))
            if not self._open:
                self._closing.wait(0.01)
                continue
            for key, _events in self._selector.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data, reset = b"", True
                else:
                    reset = False
                if data:
                    if key.data == "idle":
                        self.idle_bytes_received += len(data)
                    continue
                with self._lock:
                    self.resets += reset
                    self._selector.unregister(sock)
                    del self._open[sock]
                sock.close()


def scrape_metric(gateway: GatewayProcess, name: str, **labels: str) -> float:
    """Sum one metric's samples matching ``labels`` from the gateway's ``/metrics``.

    :param gateway: a gateway with its HTTP endpoint on (its address is read from its log).
    :param name: the sample name, e.g. ``dicom_gateway_pdu_protocol_errors_total``.
    :param labels: label values the samples must carry.
    :returns: the sum (0 when there is no such sample).
    """
    from prometheus_client.parser import text_string_to_metric_families

    found = re.search(r"on http://([0-9.]+):(\d+)/", gateway.log_text())
    if found is None:
        raise AssertionError("the gateway logged no HTTP address")
    with urllib.request.urlopen(f"http://{found.group(1)}:{found.group(2)}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(sample.value
               for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def start_storescus(port: int, folders: list[Path], *, called_ae: str = "DICOMGW",
                    env: dict[str, str] | None = None) -> list[subprocess.Popen[str]]:
    """Start one ``storescu +sd`` process per folder, all at once (one association each).

    :param port: the receiver's port.
    :param folders: one directory of files per association.
    :param called_ae: the receiver's AE title.
    :param env: extra environment variables (e.g. ``TCP_NODELAY=1``).
    :returns: the running processes (stdout and stderr piped together).
    """
    storescu = dcmtk.require_tool("storescu")
    full_env = {**os.environ, **(env or {})}
    return [subprocess.Popen([storescu, "-aet", f"SCU{n:02d}", "-aec", called_ae, "-to", "30", "-ta", "60",
                              "+sd", "127.0.0.1", str(port), str(folder)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env)
            for n, folder in enumerate(folders)]


def finish_storescus(procs: list[subprocess.Popen[str]], timeout: float) -> list[tuple[int, int, str]]:
    """Wait for ``storescu`` processes and collect the failures.

    :param procs: from :func:`start_storescus`.
    :param timeout: seconds allowed for each.
    :returns: (index, exit status, output tail) of each one that did not exit 0.
    """
    outputs = [proc.communicate(timeout=timeout)[0] for proc in procs]
    return [(n, proc.returncode, out[-800:]) for n, (proc, out) in enumerate(zip(procs, outputs))
            if proc.returncode != 0]


def journal_rows(gateway: GatewayProcess, query: str) -> list[tuple[Any, ...]]:
    """Run a read-only query on the gateway's queue journal (SQLite, WAL).

    :param gateway: the gateway (its journal is ``<spool>/queue.sqlite``).
    :param query: the SQL.
    :returns: the rows.
    """
    conn = sqlite3.connect(f"file:{gateway.spool / 'queue.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


class ConcurrentAssociationTests(GatewayTestMixin, TestCase):
    """L1, P16 and P39 on one gateway with 64 storing associations."""

    timeout = 180

    def test_64_concurrent_associations_store_all_while_the_next_is_rejected_and_echo_is_fast(self) -> None:
        """L1/P16/P39: 64 held associations x 20 instances all acknowledged; the 66th gets RJ(2,3,2) in < 100 ms; echoscu < 1 s under load."""
        dcmtk.require_tool("echoscu")
        # 64 storing associations plus one echo association fill the limit exactly.
        gateway = self.start_gateway(limits={"max_associations": ASSOCIATIONS + 1, "acse_timeout": f"{ARTIM:g}s",
                                             "network_timeout": "30s"},
                                     http={"enabled": False})
        echo_peer = RawPeer(gateway.host, gateway.port)
        self.addCleanup(echo_peer.close)
        self.assertIsInstance(echo_peer.associate(associate_rq()), _pdu.AAssociateAC)

        established = threading.Barrier(ASSOCIATIONS + 1, timeout=60)
        go = threading.Event()
        statuses: dict[int, list[tuple[int, int, str | None]]] = {}
        errors: list[str] = []

        def sender(n: int) -> None:
            # A raw peer per thread: pynetdicom with 64 associations in one
            # process stalls on its own side (no bytes queued in either
            # direction), so it cannot carry this row; storescu carries the
            # next test.
            try:
                peer = RawPeer(gateway.host, gateway.port)
                self.addCleanup(peer.close)
                answer = peer.associate(associate_rq(calling=f"LOAD{n:02d}"), timeout=30)
                if not isinstance(answer, _pdu.AAssociateAC):
                    errors.append(f"association {n}: {answer}")
                established.wait()
                go.wait(60)
                result = []
                for i in range(INSTANCES):
                    uid = generate_uid()
                    peer.send(command_pdata(CT_CONTEXT, store_rq_command(uid, i + 1))
                              + pdata(pdv(CT_CONTEXT, 0x02, tiny_dataset(uid))))
                    # PDU 0 is the A-ASSOCIATE-AC; each C-STORE-RSP is one P-DATA-TF.
                    peer.wait_pdu(_pdu.PDataTF, 30, start=i + 1)
                    rsp = response_commands(peer)[i]
                    result.append((rsp.message_id_being_responded_to, rsp.status,  # type: ignore[union-attr]
                                   rsp.affected_sop_instance_uid == uid and uid))  # type: ignore[union-attr]
                statuses[n] = result
                peer.send(release_rq())
                peer.wait_pdu(_pdu.AReleaseRP, 10)
            except (AssertionError, threading.BrokenBarrierError) as e:
                errors.append(f"association {n}: {e}")

        threads = [threading.Thread(target=sender, args=(n,), daemon=True) for n in range(ASSOCIATIONS)]
        for thread in threads:
            thread.start()
        established.wait()
        self.assertEqual(errors, [])

        # P16: every slot is taken; the next association is refused at once, politely.
        extra = RawPeer(gateway.host, gateway.port)
        self.addCleanup(extra.close)
        start = time.monotonic()
        answer = extra.associate(associate_rq(calling="EXTRA"), timeout=5)
        elapsed = time.monotonic() - start
        self.assertIsInstance(answer, _pdu.AAssociateRJ)
        self.assertEqual((answer.result, answer.source, answer.reason), (2, 3, 2))  # type: ignore[union-attr]
        # The row's 100 ms is a figure of bench/associations.py (p50 92 ms, max 223 ms with 128
        # associations storing on 2 loaded cores). Here the failure mode is an RJ that waits for a
        # timer (ARTIM) or never comes, so the bound is half of ARTIM, not a latency target.
        self.assertLess(elapsed, ARTIM / 2, f"RJ took {elapsed * 1000:.0f} ms: did it wait for a timer?")
        # Not a reset (PS3.8 9.1.4): the RJ bytes, then a FIN at ARTIM (AE-8, Sta13); silence fails too.
        closed = extra.wait_closed(ARTIM + 3)
        self.assertFalse(closed.reset, "RJ followed by a reset")
        self.assertEqual(extra.received, bytes.fromhex("03 00 00000004 00 02 03 02"))
        extra.close()

        # The held echo association answers before the load starts, then frees its slot.
        echo_peer.send(command_pdata(1, echo_rq_command(1)))
        echo_peer.wait_pdu(_pdu.PDataTF, 5)
        self.assertTrue(all(isinstance(r, CEchoRSP) and r.status == 0 for r in response_commands(echo_peer)))
        echo_peer.send(release_rq())
        echo_peer.wait_pdu(_pdu.AReleaseRP, 5)
        echo_peer.close()

        # P39: whole echoscu runs (association, C-ECHO, release; a separate
        # process, so this test's threads do not skew the figure) while the
        # 64 associations store.
        go.set()
        latencies: list[float] = []
        while any(t.is_alive() for t in threads):
            sent = time.monotonic()
            echo = dcmtk.echoscu(gateway.port, called_ae="DICOMGW", timeout=20)
            latencies.append(time.monotonic() - sent)
            self.assertEqual(echo.returncode, 0, echo.describe())
        for thread in threads:
            thread.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(len(statuses), ASSOCIATIONS)
        for n, result in sorted(statuses.items()):
            self.assertEqual([(m, s, bool(u)) for m, s, u in result],
                             [(i + 1, 0, True) for i in range(INSTANCES)], f"association {n}")
        self.assertEqual(len(gateway.instances()), ASSOCIATIONS * INSTANCES)
        self.assertGreater(len(latencies), 0)
        # P39's figure (echo < 1 s under load) is bench/load.py's. The failure mode here is an
        # echo starved behind the 64 associations' stores (it would wait for most of the load,
        # many seconds, or for the 30 s ACSE timeout): the bound, 5 s, is over 20 times the
        # slowest echo measured while 128 associations stored (0.22 s, bench/associations.py).
        print(f"\nP39 CI: {len(latencies)} echoscu runs under load, slowest {max(latencies) * 1000:.0f} ms")
        self.assertLess(max(latencies), 5.0, f"echoscu times under load: {sorted(latencies)[-5:]}")

    def test_64_storescu_processes_at_once_all_acknowledged(self) -> None:
        """L1 with a real peer: 64 storescu processes started together, 20 instances each, all exit 0 and all 1280 are spooled."""
        storescu = dcmtk.require_tool("storescu")
        gateway = self.start_gateway(limits={"max_associations": ASSOCIATIONS, "acse_timeout": "10s"},
                                     http={"enabled": False})
        folder = Path(self.mktemp())
        folders = []
        for n in range(ASSOCIATIONS):
            series = folder / f"s{n:02d}"
            series.mkdir(parents=True)
            study, uid = generate_uid(), generate_uid()
            for i in range(INSTANCES):
                write_instance(series / f"ct{i:02d}.dcm", ExplicitVRLittleEndian, 2048, seed=i,
                               study_instance_uid=study, series_instance_uid=uid)
            folders.append(series)
        procs = [subprocess.Popen([storescu, "-aet", f"SCU{n:02d}", "-aec", "DICOMGW", "-to", "60", "+sd",
                                   gateway.host, str(gateway.port), str(series)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for n, series in enumerate(folders)]
        outputs = [proc.communicate(timeout=120)[0] for proc in procs]
        failed = [(n, proc.returncode, out[-500:]) for n, (proc, out) in enumerate(zip(procs, outputs))
                  if proc.returncode != 0]
        self.assertEqual(failed, [])
        self.assertEqual(len(gateway.instances()), ASSOCIATIONS * INSTANCES)
        self.assertNotIn("rejecting association", gateway.log_text())


class IdleConnectionTests(GatewayTestMixin, TestCase):
    """L6 (idle connects) and P01 at scale."""

    timeout = 120

    def test_idle_connections_closed_at_artim_while_storescu_completes_and_fds_return(self) -> None:
        """L6: 200 silent connections (scaled down from 500) are closed at ARTIM, storescu meanwhile completes promptly, fds and RSS return to baseline."""
        dcmtk.require_tool("storescu")
        # A longer ARTIM than elsewhere: storescu must finish while all idle connections are still open.
        artim = 2 * ARTIM
        gateway = self.start_gateway(limits={"max_associations": 64, "acse_timeout": f"{artim:g}s",
                                             "network_timeout": "10s"},
                                     http={"enabled": False})
        folder = Path(self.mktemp())
        folder.mkdir()
        study, series = generate_uid(), generate_uid()
        files = [write_instance(folder / f"ct{i}.dcm", ExplicitVRLittleEndian, 8 * 1024, seed=i,
                                study_instance_uid=study, series_instance_uid=series) for i in range(10)]
        # Warm up (first association, imports, spool directories), then take the baseline.
        warm = dcmtk.storescu(gateway.port, files[:1], called_ae="DICOMGW", timeout=30)
        self.assertEqual(warm.returncode, 0, warm.describe())
        time.sleep(0.3)
        fds_before, rss_before = fd_count(gateway.pid), rss_kib(gateway.pid)

        peers = []
        for _ in range(IDLE_CONNECTIONS):
            peer = RawPeer(gateway.host, gateway.port)
            self.addCleanup(peer.close)
            peers.append(peer)
        opened = time.monotonic()
        wait_until(lambda: fd_count(gateway.pid) >= fds_before + IDLE_CONNECTIONS, 5,
                   lambda: f"{IDLE_CONNECTIONS} connections accepted (fds {fd_count(gateway.pid)})")

        start = time.monotonic()
        result = dcmtk.storescu(gateway.port, files, called_ae="DICOMGW", timeout=30)
        took = time.monotonic() - start
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertLess(took, ARTIM, f"storescu took {took:.2f}s among {IDLE_CONNECTIONS} idle connections")
        self.assertLess(time.monotonic() - opened, artim, "storescu did not run while the idle ones were open")
        # 10 instances of this send plus the warm-up one.
        self.assertEqual(len(gateway.instances()), len(files) + 1)

        for peer in peers:
            closed = peer.wait_closed(artim + 5)
            self.assertFalse(closed.reset)
            self.assertGreaterEqual(closed.at, artim - 0.05)
            self.assertLess(closed.at, artim + 2.0)
            self.assertEqual(peer.received, b"")
        wait_until(lambda: fd_count(gateway.pid) <= fds_before, 5,
                   lambda: f"fds back to {fds_before} (now {fd_count(gateway.pid)})")
        grown = rss_kib(gateway.pid) - rss_before
        self.assertLess(grown, 8 * 1024, f"RSS grew by {grown} KiB")
        self.assertEqual(gateway.log_text().count("ARTIM expired before A-ASSOCIATE-RQ"), IDLE_CONNECTIONS)


class ParallelAssociationTests(GatewayTestMixin, TestCase):
    """L2 scaled for CI (decision 12): parallel associations lose nothing; the rate is ``bench/load.py l2``'s."""

    timeout = 120

    def test_4_parallel_associations_all_acknowledged_journaled_and_delivered(self) -> None:
        """L2 (scaled): 4 storescu associations at once x 25 instances all exit 0; the journal holds the 100 instances, each entry delivered, and the folder holds the same 100 data sets."""
        dcmtk.require_tool("storescu")
        work = Path(self.mktemp()).resolve()
        archive = work / "archive"
        gateway = self.start_gateway(destinations={"archive": folder_destination(archive)},
                                     routes=[{"name": "all", "forward": ["archive"]}],
                                     http={"enabled": False})
        folders = [work / f"a{n}" for n in range(4)]
        for folder in folders:
            make_series(folder, 25, 64 * 1024)
        sent = digests_by_sop_instance(p for folder in folders for p in folder.iterdir())
        self.assertEqual(len(sent), 100)

        failed = finish_storescus(start_storescus(gateway.port, folders), timeout=90)
        self.assertEqual(failed, [])
        self.assertNotIn("rejecting association", gateway.log_text())
        wait_until(lambda: journal_rows(gateway, "SELECT state, count(*) FROM entries GROUP BY state")
                   == [("delivered", 100)], 60,
                   lambda: f"100 delivered entries (journal: "
                           f"{journal_rows(gateway, 'SELECT state, count(*) FROM entries GROUP BY state')})")
        journaled = journal_rows(gateway, "SELECT i.sop_instance_uid, e.destination FROM instances i "
                                          "JOIN entries e ON e.instance_id = i.instance_id")
        self.assertEqual(sorted(journaled), sorted((uid, "archive") for uid in sent))
        self.assertEqual(digests_by_sop_instance(part10_files(archive)), sent)


class LatencyTests(GatewayTestMixin, TestCase):
    """L3 scaled for CI (decision 12): a paced load, every RSP timed; ``bench/load.py l3`` runs 80% of L2."""

    timeout = 120

    def test_paced_load_on_4_associations_every_rsp_success_and_p99_within_3_s(self) -> None:
        """L3 (scaled): 4 paced associations at 40/s in total of 256 KiB instances: all 120 answered 0x0000, p99 RQ->RSP < 3 s.

        The row's target is 250 ms at 80% of the L2 rate on a quiet 4-core machine;
        a CI runner shares 2 cores with the other test job, hence a bound set from
        the distribution measured there (see the assertion) at a tenth of the rate. A stall behind another association's fsync or a
        journal commit held for a whole batch would show here.
        """
        from tests.support.paced import paced_latencies

        work = Path(self.mktemp()).resolve()
        archive = work / "archive"
        gateway = self.start_gateway(destinations={"archive": folder_destination(archive)},
                                     routes=[{"name": "all", "forward": ["archive"]}],
                                     http={"enabled": False})
        folders = [work / f"a{n}" for n in range(4)]
        for folder in folders:
            make_series(folder, 30, 256 * 1024)
        latencies = paced_latencies(gateway.port, "DICOMGW", folders, rate=40.0)
        self.assertEqual(len(latencies), 120)
        self.assertNotIn(-1.0, latencies, "a C-STORE failed or went unanswered")
        ordered = sorted(latencies)
        p99 = ordered[int(0.99 * (len(ordered) - 1))]
        print(f"\nL3 CI: p50 {ordered[len(ordered) // 2] * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
        # The row's target (p99 <= 250 ms) is bench/load.py l3's figure (p99 55 ms). This
        # scaled run's p99, measured six times on this 2-core machine while other sessions
        # loaded it (load average 6.7-8.9): 147, 180, 211, 272, 315 and 1,188 ms. The bound
        # is 2.5 times the worst of those; a stall behind a batch-long journal commit or a
        # blocked reactor (the failure this guards against) costs whole seconds per RSP.
        self.assertLess(p99, 3.0, f"p99 {p99 * 1000:.0f} ms; slowest {[round(x * 1000) for x in ordered[-5:]]} ms")
        wait_until(lambda: journal_rows(gateway, "SELECT count(*) FROM entries WHERE state = 'delivered'")[0][0]
                   == 120, 60, "120 delivered entries")


class ParallelForwardTests(GatewayTestMixin, TestCase):
    """L5 scaled for CI (decision 12): forwarding over N parallel associations; ``bench/load.py l5`` gives MB/s.

    The other half of L5 (a slow destination costs a healthy one little) is F08 in
    ``tests.interop.test_forward_proxy``.
    """

    timeout = 120

    def test_queue_of_8_studies_forwards_over_up_to_4_parallel_associations_byte_identical(self) -> None:
        """L5 (scaled): 40 queued instances of 8 studies go out over >= 2 and <= 4 simultaneous associations, each once, byte-identical."""
        from tests.support.faultproxy import FaultProxy, NO_FAULT
        from tests.support.scp import RecordingScp

        work = Path(self.mktemp()).resolve()
        scp = RecordingScp("ARCHIVE").start()
        self.addCleanup(scp.stop)
        proxy = FaultProxy(scp.port, lambda _n: NO_FAULT).start()
        self.addCleanup(proxy.stop)
        destination = dicom_destination(proxy.port, "ARCHIVE", max_associations=4, batch_size=5)
        gateway = self.start_gateway(destinations={"archive": destination},
                                     routes=[{"name": "all", "forward": ["archive"]}],
                                     http={"enabled": False})
        paused = gateway.cli("queue", "pause", "archive")
        self.assertEqual(paused.returncode, 0, paused.describe())
        folders = [work / f"s{n}" for n in range(8)]
        for folder in folders:
            make_series(folder, 5, 64 * 1024)
        failed = finish_storescus(start_storescus(gateway.port, folders), timeout=90)
        self.assertEqual(failed, [])
        resumed = gateway.cli("queue", "resume", "archive")
        self.assertEqual(resumed.returncode, 0, resumed.describe())
        wait_until(lambda: len(scp.successes()) == 40, 60, lambda: f"{len(scp.successes())} of 40 delivered")
        self.assertGreaterEqual(proxy.peak_open, 2, "the queue went out over one association")
        self.assertLessEqual(proxy.peak_open, 4, "more associations than max_associations")
        self.assertEqual(scp.duplicates(), 0)
        received = {r.sop_instance_uid: r.digest for r in scp.receipts}
        self.assertEqual(received, digests_by_sop_instance(p for f in folders for p in f.iterdir()))


class LargeInstanceTests(GatewayTestMixin, TestCase):
    """L4 scaled for CI (decision 12): 256 MB instead of 2 GB; ``bench/load.py l4`` runs the full size."""

    timeout = 180

    def test_256_mb_multiframe_received_and_delivered_with_rss_growth_under_64_mb(self) -> None:
        """L4 (scaled): one 256 MB multi-frame instance is received and delivered to a folder with its data set byte-identical, the gateway's peak RSS growing < 64 MB."""
        dcmtk.require_tool("storescu")
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        # Registered first, so it runs after the gateway has stopped (cleanups run last-in first-out).
        self.addCleanup(shutil.rmtree, work, True)
        archive = work / "archive"
        source = write_multiframe(work / "big.dcm", 256 * 1024 * 1024)
        small = write_instance(work / "small.dcm", ExplicitVRLittleEndian, 8 * 1024)
        gateway = self.start_gateway(destinations={"archive": folder_destination(archive)},
                                     routes=[{"name": "all", "forward": ["archive"]}],
                                     http={"enabled": False})

        def delivered() -> int:
            return journal_rows(gateway, "SELECT count(*) FROM entries WHERE state = 'delivered'")[0][0]

        # Warm up (first association, first delivery, imports), then take the baseline.
        warm = dcmtk.storescu(gateway.port, [small], timeout=60)
        self.assertEqual(warm.returncode, 0, warm.describe())
        wait_until(lambda: delivered() == 1, 30, "the warm-up instance delivered")
        rss_before = rss_kib(gateway.pid)

        sampler = ProcessSampler(gateway.pid).start()
        result = dcmtk.storescu(gateway.port, [source], timeout=150)
        self.assertEqual(result.returncode, 0, result.describe())
        wait_until(lambda: delivered() == 2, 120, "the 256 MB instance delivered")
        sampler.stop()
        # VmHWM catches any peak between samples: the growth is measured against it.
        grown = vm_hwm_kib(gateway.pid) - rss_before
        self.assertLess(grown, 64 * 1024, f"peak RSS grew by {grown} KiB (sampled peak "
                                          f"{sampler.peak_rss_kib - rss_before} KiB)")

        # The data set bytes are the sender's; the file meta is the gateway's own (PS3.10 7.1).
        copies = [p for p in part10_files(archive) if p.stat().st_size > 1024 * 1024]
        self.assertEqual(len(copies), 1)
        self.assertEqual(dataset_digest(copies[0]), dataset_digest(source))
        self.assertEqual(copies[0].stat().st_size - dataset_offset(copies[0]),
                         source.stat().st_size - dataset_offset(source))


class ConnectStormTests(GatewayTestMixin, TestCase):
    """L6 scaled for CI (decision 12): 10 s of idle and garbage connects; ``bench/load.py l6`` runs 100/s + 10/s."""

    timeout = 120

    def test_idle_and_garbage_connects_while_storescu_sends_50_instances(self) -> None:
        """L6 (scaled): under 20 idle + 5 garbage connects/s for 10 s, 50 instances sent meanwhile are all acknowledged and delivered, fds and RSS return to baseline, and every garbage connection is a counted protocol error."""
        dcmtk.require_tool("storescu")
        work = Path(self.mktemp()).resolve()
        archive = work / "archive"
        gateway = self.start_gateway(destinations={"archive": folder_destination(archive)},
                                     routes=[{"name": "all", "forward": ["archive"]}],
                                     limits={"acse_timeout": f"{ARTIM:g}s", "network_timeout": "10s"})
        folders = [work / f"s{n}" for n in range(5)]
        for folder in folders:
            make_series(folder, 10, 32 * 1024)
        sent = digests_by_sop_instance(p for folder in folders for p in folder.iterdir())
        warm = write_instance(work / "warm.dcm", ExplicitVRLittleEndian, 8 * 1024)

        def delivered() -> int:
            return journal_rows(gateway, "SELECT count(*) FROM entries WHERE state = 'delivered'")[0][0]

        # Warm up (first association, delivery, a /metrics scrape), then take the baseline.
        result = dcmtk.storescu(gateway.port, [warm], timeout=60)
        self.assertEqual(result.returncode, 0, result.describe())
        wait_until(lambda: delivered() == 1, 30, "the warm-up instance delivered")
        errors_before = scrape_metric(gateway, "dicom_gateway_pdu_protocol_errors_total")
        time.sleep(0.3)
        fds_before, rss_before = fd_count(gateway.pid), rss_kib(gateway.pid)

        storm = ConnectStorm(gateway.host, gateway.port, idle_per_second=20, garbage_per_second=5)
        self.addCleanup(storm.close)
        sampler = ProcessSampler(gateway.pid, interval=0.05).start()
        started = time.monotonic()
        storm.start()
        # One storescu association of 10 instances every 2 s, from 1 s into the storm.
        for n, folder in enumerate(folders):
            wait_until(lambda n=n: time.monotonic() >= started + 1 + 2 * n, 15, interval=0.02)
            result = dcmtk.storescu(gateway.port, [folder], extra=["+sd"], timeout=60)
            self.assertEqual(result.returncode, 0, result.describe())
        wait_until(lambda: time.monotonic() >= started + 10, 15, interval=0.05)
        storm.stop_opening()
        wait_until(lambda: storm.open_now == 0, ARTIM + 15,
                   lambda: f"the gateway to close every storm connection ({storm.open_now} open)")
        sampler.stop()

        self.assertEqual(storm.failed, 0, "connects refused or timed out")
        self.assertEqual(storm.idle_bytes_received, 0, "the gateway sent bytes on an idle connection")
        self.assertGreater(storm.opened["idle"], 100)
        self.assertGreater(storm.opened["garbage"], 25)
        self.assertGreater(sampler.peak_fds, fds_before + 20, "the storm never held connections open")
        wait_until(lambda: delivered() == 1 + len(sent), 60, lambda: f"{len(sent)} delivered ({delivered()})")
        self.assertEqual({uid: digest for uid, digest in digests_by_sop_instance(part10_files(archive)).items()
                          if uid in sent}, sent)
        wait_until(lambda: fd_count(gateway.pid) <= fds_before, 10,
                   lambda: f"fds back to {fds_before} (now {fd_count(gateway.pid)})")
        grown = rss_kib(gateway.pid) - rss_before
        self.assertLess(grown, 10 * 1024, f"RSS grew by {grown} KiB")
        # P37: each garbage connection is one counted protocol error; idle ones (ARTIM) are not.
        errors = scrape_metric(gateway, "dicom_gateway_pdu_protocol_errors_total") - errors_before
        self.assertEqual(errors, storm.opened["garbage"])
