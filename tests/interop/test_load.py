"""Load rows against the real gateway process (HARDENING L1, L6, P16, P39; issue 7 "Load").

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

The gateway runs with short timers (ARTIM 2 s) so the tier stays fast.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from twisted.trial.unittest import TestCase

from gateway.dimse.commands import CEchoRSP
from gateway.ul import pdu as _pdu
from tests.support import dcmtk
from tests.support.datasets import write_instance
from tests.support.gateway_process import wait_until
from tests.support.interop import GatewayTestMixin
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


def rss_kib(pid: int) -> int:
    """Read a process's resident set size.

    :param pid: the process.
    :returns: VmRSS in KiB.
    """
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    """Count a process's open file descriptors.

    :param pid: the process.
    :returns: entries in ``/proc/PID/fd``.
    """
    return len(os.listdir(f"/proc/{pid}/fd"))


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
        self.assertLess(elapsed, 0.1, f"RJ took {elapsed * 1000:.0f} ms")
        self.assertTrue(extra.closed is None or not extra.closed.reset, "RJ followed by a reset")
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
        self.assertLess(max(latencies), 1.0, f"echoscu times under load: {sorted(latencies)[-5:]}")

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
