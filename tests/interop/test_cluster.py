"""Three gateways as one, behind a real HAProxy, on a real PostgreSQL and a shared spool (issue 14).

Each test builds a :class:`~tests.support.cluster.Cluster`: gateway
processes ``node-1`` ... with one spool folder and one PostgreSQL database,
HAProxy in TCP mode in front (PROXY v2 to the nodes, health checks on
``/readyz``) and ``storescp +B --fork +uf`` destinations, where a second
copy of an instance is a second file. Leases and heartbeats are short
(4 s and 1 s) so a dead node's work comes back within the test's budget.

=====================================================  ==================================================
case                                                   what must hold
=====================================================  ==================================================
storescu through HAProxy, plain and mutual TLS         byte-identical at the destination, each instance
(TLS passed through to the nodes)                      once; the nodes record 127.0.0.1 (the PROXY
                                                       header), not HAProxy's 127.0.0.2; work spread
``kill -9`` of the node holding leases mid-batch       every acknowledged instance arrives; a second copy
(500 instances)                                        only of entries the journal marks ambiguous (the
                                                       dead node's expired lease); its backlog flows
                                                       again within lease + heartbeat (+ slack)
PostgreSQL stopped for 30 s under load                 every node's /readyz 503 and HAProxy marks it
                                                       DOWN; senders see 0xA700 or a rejection, never a
                                                       false success; nothing acknowledged is lost;
                                                       traffic resumes by itself, no node restarted
rolling restart under load (drain, wait, restart)      every storescu exits 0 with every response a
                                                       success; nothing acknowledged is lost
a node added while running                             its heartbeat appears, HAProxy sends it
                                                       associations, it leases and delivers part of
                                                       the backlog (its share of the slots)
=====================================================  ==================================================

Timing figures (rates, CPU) belong to ``bench/cluster.py``; the bounds
here are loose (a loaded 2-core CI machine).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from twisted.trial.unittest import TestCase

from gateway.queue.interfaces import EXPIRED_LEASE_PREFIX
from tests.support import dcmtk
from tests.support.cluster import (
    PROXY_SOURCE,
    Cluster,
    SendOutcome,
    copies_by_uid,
    destination,
    fork_storescp,
    storescu_outcome,
)
from tests.support.datasets import dataset_digest, write_instance
from tests.support.gateway_process import wait_until
from tests.support.interop import make_series, sop_instance_uid

#: The cluster's lease and heartbeat in these tests, in seconds (config ``cluster``).
LEASE, HEARTBEAT = 4.0, 1.0

#: Slack on top of lease + heartbeat for a loaded 2-core machine.
SLACK = 10.0


def uids_of(paths: list[Path]) -> dict[str, str]:
    """Map files to their SOP Instance UIDs.

    :param paths: Part 10 files.
    :returns: ``{path as text: uid}``.
    """
    return {str(path): sop_instance_uid(path) for path in paths}


class Senders:
    """Modalities sending new instances through HAProxy in a loop, in threads, until stopped.

    Each round is one ``storescu -v`` association of ``per_round`` new
    files (written just before), so every response is tied to one instance.

    :param folder: where the files are written.
    :param port: HAProxy's DICOM port.
    :param threads: concurrent senders.
    :param per_round: files per association.
    :param pause: seconds between a sender's rounds.
    """

    def __init__(self, folder: Path, port: int, threads: int = 2, per_round: int = 5, pause: float = 0.3) -> None:
        self.folder, self.port, self.per_round, self.pause = folder, port, per_round, pause
        self.outcomes: list[tuple[float, float, SendOutcome]] = []  # (start, end, outcome)
        self.uids: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._count = 0
        self._study = generate_uid()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def start(self) -> Senders:
        """Start the sender threads.

        :returns: this object.
        """
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Ask the senders to stop after their round, and wait for them."""
        self._stop.set()
        for thread in self._threads:
            thread.join(600)

    def _files(self) -> list[Path]:
        """Write ``per_round`` new instances of one study."""
        with self._lock:
            first, self._count = self._count, self._count + self.per_round
        self.folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in range(first, first + self.per_round):
            path = write_instance(self.folder / f"load{i:06d}.dcm", ExplicitVRLittleEndian, 8 * 1024, seed=i,
                                  study_instance_uid=self._study)
            paths.append(path)
        with self._lock:
            self.uids.update(uids_of(paths))
        return paths

    def _run(self, index: int) -> None:
        """One sender's loop."""
        while not self._stop.is_set():
            files = self._files()
            start = time.monotonic()
            outcome = storescu_outcome(self.port, files, calling_ae=f"LOAD{index}", timeout=120)
            with self._lock:
                self.outcomes.append((start, time.monotonic(), outcome))
            self._stop.wait(self.pause)

    def acknowledged(self) -> set[str]:
        """SOP Instance UIDs answered with success.

        :returns: the UIDs.
        """
        with self._lock:
            return {self.uids[path] for _, _, outcome in self.outcomes for path in outcome.acknowledged}

    def complete(self, outcome: SendOutcome) -> bool:
        """Tell whether a round ended well: storescu exited 0 and every file was acknowledged.

        :param outcome: the round.
        :returns: ``True`` when nothing failed.
        """
        return outcome.result.returncode == 0 and len(outcome.acknowledged) == self.per_round

    def failed(self, after: float = 0.0, before: float = float("inf")) -> list[SendOutcome]:
        """Rounds that ran (at least partly) between two times and did not end well.

        :param after: monotonic start of the window.
        :param before: monotonic end of the window.
        :returns: those rounds.
        """
        with self._lock:
            rounds = list(self.outcomes)
        return [o for start, end, o in rounds if end >= after and start <= before and not self.complete(o)]

    def first_complete_after(self, after: float) -> float | None:
        """When the first round started after ``after`` ended well.

        :param after: a monotonic time.
        :returns: that round's end, or ``None``.
        """
        with self._lock:
            rounds = list(self.outcomes)
        ends = [end for start, end, o in rounds if start > after and self.complete(o)]
        return min(ends) if ends else None


class ClusterTests(TestCase):
    """Three gateway processes behind HAProxy sharing a spool and a PostgreSQL."""

    skip = dcmtk.skip_reason("storescu", "storescp")
    timeout = 240

    def cluster(self, count: int = 3, *, spare: int = 0, max_associations: int = 2) -> tuple[Cluster, dcmtk.Storescp]:
        """Start a cluster forwarding everything to one ``storescp --fork`` destination ``archive``.

        :param count: nodes started.
        :param spare: nodes configured (and known to HAProxy) but not started.
        :param max_associations: the destination's cluster-wide association cap.
        :returns: the running cluster and its destination.
        """
        scp = fork_storescp(self, "archive")
        config = {"destinations": {"archive": destination(scp, max_associations=max_associations, batch_size=20)},
                  "routes": [{"name": "all", "forward": ["archive"]}]}
        cluster = Cluster(self, count, spare=spare, lease=f"{LEASE:g}s", heartbeat=f"{HEARTBEAT:g}s",
                          node_config=config)
        return cluster.start(), scp

    def wait(self, cluster: Cluster, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll ``predicate``; on timeout fail with the cluster's state.

        :param cluster: the cluster.
        :param predicate: polled every 0.1 s.
        :param timeout: seconds.
        :param what: what is awaited.
        :returns: the predicate's first true result.
        """
        return wait_until(predicate, timeout, lambda: f"{what}\n{cluster.explain()}")

    def assert_custody(self, cluster: Cluster, scp: dcmtk.Storescp, acknowledged: set[str],
                       timeout: float = 120.0) -> Counter[str]:
        """Wait until the queue is empty, then check every acknowledged instance reached the destination.

        A second copy of an instance is allowed only for an entry whose history
        holds an ambiguous attempt (a send in flight when its node died or
        its lease expired, HARDENING F13): the journal counts it.

        :param cluster: the cluster.
        :param scp: the destination.
        :param acknowledged: SOP Instance UIDs the senders saw acknowledged.
        :param timeout: seconds for the queue to drain.
        :returns: the copies per UID at the destination.
        """
        self.wait(cluster, lambda: not {"queued", "leased"} & set(cluster.states("archive")), timeout,
                  "every entry delivered")
        entries = cluster.entries("archive")
        dead = [e for e in entries if e.state.value == "dead"]
        self.assertEqual(dead, [], "dead letters in a healthy cluster")
        journaled = {e.instance.sop_instance_uid for e in entries}
        self.assertLessEqual(acknowledged, journaled, "acknowledged instances missing from the shared journal")
        copies = self.wait(cluster, lambda: (c := copies_by_uid(scp)) and set(c) >= acknowledged and c, 30,
                           "the destination's files")
        missing = acknowledged - set(copies)
        self.assertEqual(missing, set(), f"{len(missing)} acknowledged instances never arrived")
        ambiguous = {e.instance.sop_instance_uid for e in entries
                     if e.last_error.startswith("ambiguous") or any(a.error.startswith("ambiguous") for a in e.history)}
        twice = {uid for uid, n in copies.items() if n > 1}
        self.assertLessEqual(twice, ambiguous,
                             f"{len(twice - ambiguous)} instances arrived twice with no ambiguous send on record")
        return copies

    def test_storescu_plain_and_tls_through_haproxy_once_byte_identical_with_the_modality_address(self) -> None:
        """Four storescu (two plain, two mutual TLS passed through) via HAProxy: each instance once, same bytes, 127.0.0.1 recorded."""
        cluster, scp = self.cluster()
        root = Path(self.mktemp()).resolve()
        folders = []
        for i in range(4):
            make_series(root / f"s{i}", 15, 16 * 1024, prefix=f"s{i}-")
            folders.append(sorted((root / f"s{i}").iterdir()))
        sent = {sop_instance_uid(p): dataset_digest(p) for files in folders for p in files}
        self.assertEqual(len(sent), 60)
        m = cluster.material
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(storescu_outcome, cluster.haproxy.tls_port if i % 2 else cluster.haproxy.port,
                                   files, tls=m if i % 2 else None, calling_ae=f"MOD{i}")
                       for i, files in enumerate(folders)]
            outcomes = [future.result(timeout=300) for future in futures]
        for outcome in outcomes:
            self.assertEqual(outcome.result.returncode, 0, outcome.result.describe())
            self.assertEqual(len(outcome.acknowledged), 15, outcome.result.describe())
        copies = self.assert_custody(cluster, scp, set(sent))
        self.assertEqual(copies, Counter({uid: 1 for uid in sent}), "an instance arrived twice")
        received = {sop_instance_uid(path): dataset_digest(path) for path in scp.files()}
        self.assertEqual(received, sent, "the destination holds other bytes than the modalities sent")
        entries = cluster.entries("archive")
        self.assertEqual({e.instance.sha256 for e in entries}, set(sent.values()))
        # The PROXY header, not the TCP peer (HAProxy connects from 127.0.0.2), gives the address.
        self.assertEqual({e.instance.source_address.rsplit(":", 1)[0] for e in entries}, {"127.0.0.1"})
        audited = [address for node in cluster.nodes for address in node.audit_addresses()]
        self.assertGreaterEqual(len(audited), 4, "accepted associations missing from the audit trails")
        self.assertNotIn(PROXY_SOURCE, audited)
        self.assertEqual(set(audited), {"127.0.0.1"})
        receivers = Counter(e.instance.node for e in entries)
        self.assertGreaterEqual(len(receivers), 2, f"HAProxy sent every association to one node: {receivers}")

    def test_kill_9_of_the_node_holding_leases_mid_batch_loses_nothing_and_its_backlog_flows_again(self) -> None:
        """500 acknowledged instances, the lease holder killed while they flow: all arrive, extra copies only where the journal says ambiguous, the backlog moves again within lease + heartbeat."""
        cluster, scp = self.cluster()
        cluster.observer().set_paused("archive", True)
        root = Path(self.mktemp()).resolve()
        make_series(root, 500, 32 * 1024)
        files = sorted(root.iterdir())
        sent = uids_of(files)
        with ThreadPoolExecutor(2) as pool:
            outcomes = list(pool.map(lambda share: storescu_outcome(cluster.haproxy.port, share, calling_ae="BATCH"),
                                     [files[0::2], files[1::2]]))
        acknowledged = {sent[path] for outcome in outcomes for path in outcome.acknowledged}
        self.assertEqual(len(acknowledged), 500, "\n".join(o.result.describe()[-2000:] for o in outcomes))
        cluster.observer().set_paused("archive", False)

        def holder() -> str | None:
            states = cluster.states("archive")
            leases = cluster.leases_by_node("archive")
            if states["delivered"] >= 60 and leases:
                return leases.most_common(1)[0][0]
            return None

        victim_name = self.wait(cluster, holder, 60, "a node holding leases after 60 deliveries")
        victim = next(node for node in cluster.nodes if node.node == victim_name)
        self.assertTrue(cluster.sessions_of(victim_name), "the store's sessions are not named after the node")
        victim.kill()
        killed_at = time.monotonic()
        # A COMMIT the victim sent as it died may still land: read its leases once its sessions are gone.
        cluster.wait_sessions_gone(victim_name)
        stranded = {e.entry_id for e in cluster.entries("archive")
                    if e.state.value == "leased" and e.lease_owner == victim_name}
        self.assertTrue(stranded, f"{victim_name} held no lease when it died")

        def flowing() -> bool:
            return any(e.entry_id in stranded and e.state.value == "delivered" and e.lease_owner != victim_name
                       for e in cluster.entries("archive"))

        self.wait(cluster, flowing, LEASE + HEARTBEAT + SLACK + 30, "the dead node's entries delivered by another")
        recovery = time.monotonic() - killed_at
        self.assertLessEqual(recovery, LEASE + HEARTBEAT + SLACK,
                             f"the dead node's backlog flowed again only after {recovery:.1f} s")
        copies = self.assert_custody(cluster, scp, acknowledged)
        entries = cluster.entries("archive")
        marked = {e.instance.sop_instance_uid for e in entries
                  if any(a.error.startswith(EXPIRED_LEASE_PREFIX + victim_name) for a in e.history)}
        extra = sum(n - 1 for n in copies.values())
        self.assertLessEqual(len(marked), len(stranded), "more entries marked in flight than the dead node held")
        self.assertLessEqual(extra, len(marked), f"{extra} extra copies, {len(marked)} sends in flight on record")
        # For the report: python -m tests.runner ... prints the figures with -v.
        print(f"\nkill -9 of {victim_name}: {len(stranded)} entries leased, backlog flowing again after "
              f"{recovery:.1f} s (lease {LEASE:g} s + heartbeat {HEARTBEAT:g} s); {len(marked)} marked in flight, "
              f"{extra} delivered twice")

    def test_postgresql_stopped_30_s_under_load_loses_nothing_and_traffic_resumes_by_itself(self) -> None:
        """The database away for 30 s while modalities send: refusals or 0xA700 only, every acknowledged instance delivered, sends succeed again without a restart."""
        cluster, scp = self.cluster()
        pids = {node.node: node.pid for node in cluster.nodes}
        senders = Senders(Path(self.mktemp()).resolve(), cluster.haproxy.port).start()
        self.addCleanup(senders.stop)
        self.wait(cluster, lambda: len(senders.acknowledged()) >= 20, 60, "instances acknowledged before the outage")
        server = cluster.server
        server.stop()
        down_at = time.monotonic()
        # Each node's heartbeat fails: /readyz 503, so HAProxy stops sending it new associations.
        for node in cluster.nodes:
            self.wait(cluster, lambda: node.readyz()[0] == 503, 15, f"{node.node}'s /readyz 503")
            cluster.haproxy.wait_state(str(node.node), "DOWN", timeout=15)
        time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))  # the rest of the 30 s outage, under load
        server.start()
        up_at = time.monotonic()
        resumed = self.wait(cluster, lambda: senders.first_complete_after(up_at), 90,
                            "an association fully acknowledged after PostgreSQL returned")
        senders.stop()
        self.assertTrue(senders.failed(down_at + 5, up_at), "no sender noticed a 30 s database outage")
        for _, _, outcome in senders.outcomes:
            for path in outcome.refused:
                # 0xA700, DCMTK's "Refused: OutOfResources" (PS3.4 Table B.2-1).
                self.assertIn("OutOfResources", outcome.statuses[path].replace(" ", ""), outcome.result.describe())
        self.assertEqual({node.node: node.pid for node in cluster.running}, pids, "a node exited or restarted")
        self.assert_custody(cluster, scp, senders.acknowledged())
        print(f"\nPostgreSQL away 30 s: {len(senders.acknowledged())} acknowledged, "
              f"{len(senders.failed(down_at, up_at))} associations failed or refused meanwhile, "
              f"traffic back {resumed - up_at:.1f} s after the restart")

    def test_rolling_restart_under_load_loses_nothing_and_rejects_no_association(self) -> None:
        """Drain, wait for HAProxy and the open associations, restart: node after node, while modalities send; every storescu succeeds."""
        cluster, scp = self.cluster()
        senders = Senders(Path(self.mktemp()).resolve(), cluster.haproxy.port, threads=2, pause=0.2).start()
        self.addCleanup(senders.stop)
        self.wait(cluster, lambda: len(senders.acknowledged()) >= 10, 60, "load flowing")
        began = time.monotonic()
        for node in cluster.nodes:
            name = str(node.node)
            node.drain()
            cluster.haproxy.wait_state(name, "DOWN", timeout=20)
            self.wait(cluster, lambda: node.associations_active() == 0, 60, f"{name}'s associations closed")
            self.assertEqual(node.stop(timeout=30), 0, node.log_text()[-3000:])
            node.start()
            cluster.haproxy.wait_state(name, "UP", timeout=30)
        ended = time.monotonic()
        time.sleep(2)  # a few more rounds on the restarted cluster
        senders.stop()
        failed = senders.failed()
        self.assertEqual(failed, [], "\n\n".join(o.result.describe()[-1500:] for o in failed[:3]))
        during = [o for start, end, o in senders.outcomes if end >= began and start <= ended]
        self.assertGreaterEqual(len(during), 6, "too little load while the nodes restarted to tell anything")
        print(f"\nrolling restart: {len(during)} associations during the {ended - began:.0f} s of restarts, "
              f"{len(senders.acknowledged())} instances acknowledged, none failed")
        self.assert_custody(cluster, scp, senders.acknowledged())

    def add_third_node(self) -> tuple[Cluster, dcmtk.Storescp, set[str]]:
        """Start node-3 into a running two-node cluster, then send it a backlog through HAProxy.

        The destination (``max_associations`` 4: a share for every node) is
        paused while 240 instances of 24 studies arrive through HAProxy from
        6 concurrent ``storescu``, then resumed.

        :returns: the cluster, its destination and the acknowledged UIDs.
        """
        cluster, scp = self.cluster(2, spare=1, max_associations=4)
        newcomer = cluster.nodes[2]
        self.assertNotIn("node-3", cluster.heartbeats())
        newcomer.start()
        cluster.haproxy.wait_state("node-3", "UP")
        self.wait(cluster, lambda: "node-3" in cluster.heartbeats(), 30, "node-3's heartbeat")
        cluster.observer().set_paused("archive", True)
        root = Path(self.mktemp()).resolve()
        # 24 studies: slot k sends only the studies of shard k (crc32 of the Study Instance UID
        # modulo the slots), so one study would travel through one slot of one node.
        for study in range(24):
            make_series(root, 10, 16 * 1024, prefix=f"st{study:02d}-")
        files = sorted(root.iterdir())
        with ThreadPoolExecutor(6) as pool:
            outcomes = list(pool.map(lambda i: storescu_outcome(cluster.haproxy.port, files[i::6], calling_ae=f"MOD{i}"),
                                     range(6)))
        sent = uids_of(files)
        acknowledged = {sent[path] for outcome in outcomes for path in outcome.acknowledged}
        self.assertEqual(len(acknowledged), 240)
        cluster.observer().set_paused("archive", False)
        return cluster, scp, acknowledged

    def test_a_node_added_while_running_heartbeats_receives_and_delivers(self) -> None:
        """A third node started into a running two-node cluster: its heartbeat appears, HAProxy sends it associations, it leases and delivers part of the backlog (its share of the 4 slots)."""
        cluster, scp, acknowledged = self.add_third_node()
        receivers = Counter(e.instance.node for e in cluster.entries("archive"))
        self.assertGreater(receivers["node-3"], 0, f"HAProxy sent node-3 no association: {receivers}")
        self.assert_custody(cluster, scp, acknowledged)
        self.assertGreater(cluster.heartbeats()["node-3"].last_seen, time.time() - 10 * HEARTBEAT)
        senders_of = Counter(e.lease_owner for e in cluster.entries("archive"))
        self.assertGreater(senders_of["node-3"], 0, f"node-3 delivered nothing: {senders_of}")
