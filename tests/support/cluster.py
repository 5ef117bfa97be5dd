"""Several gateway processes acting as one, behind a real HAProxy, on a real PostgreSQL (issue 14).

Theory of operation
-------------------
A :class:`Cluster` is what the issue's "Running several nodes" describes,
on one machine and on free ports:

- one PostgreSQL database (:mod:`tests.support.postgres`: a real server
  started once per test process, a fresh database per cluster) holding the
  shared queue; its password is in a 0600 file the nodes read
  (``queue.password_file``), never in the configuration;
- one spool folder every node names in ``spool: {path, shared: true}``;
- N :class:`ClusterNode` gateway processes (``python -m gateway run``), each
  with its own ``node:`` name, DICOM port, DICOM TLS port and HTTP port,
  the short ``cluster: {lease, heartbeat}`` a test asks for, and
  ``proxy_protocol: {trusted: [127.0.0.2/32]}`` on both listeners;
- one :class:`HAProxy` in front: the shipped ``etc/haproxy/haproxy.cfg``
  as :mod:`tests.support.haproxy` renders it for a test (TCP mode, DICOM and
  DICOM TLS passed through, ``balance leastconn``, ``send-proxy-v2``, a
  health check on each node's ``/readyz``, here every 500 ms), with a
  server line for every node configured, started or not (a node started
  later is DOWN until it answers).

HAProxy opens its connections to the nodes *from 127.0.0.2* (``source``
on each server line) while the modalities (``storescu``) connect from
127.0.0.1: so a node that sees 127.0.0.1 (journal, audit) read it from the
PROXY header, and one that did not honour the header would see 127.0.0.2.

Destinations are ``storescp +B --fork +uf`` (bit-preserving, one child per
association so cluster-wide ``max_associations`` above 1 are served in
parallel, unique file names so a second copy of an instance is a second
file, which :func:`copies_by_uid` counts).

Every process is stopped by its pid (SIGTERM, then SIGKILL) in the test's
cleanups; a node can be killed with SIGKILL (:meth:`ClusterNode.kill`),
drained (:meth:`ClusterNode.drain`) and started again on the same
configuration. The journal is read through the store's own interface
(:class:`gateway.queue.postgres.PostgresQueueStore` as node ``observer``,
which never leases), so the tests do not depend on the schema's tables.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import yaml

from tests.support import dcmtk, haproxy, postgres
from tests.support.certs import Material, material
from tests.support.gateway_process import REPO_ROOT, GatewayProcess, dicom_destination, wait_until
from tests.support.metrics import metrics_text, parse
from tests.support.ports import free_port

__all__ = [
    "PROXY_SOURCE",
    "Cluster",
    "ClusterNode",
    "HAProxy",
    "destination",
    "SendOutcome",
    "copies_by_uid",
    "fork_storescp",
    "storescu_outcome",
]

#: The address HAProxy connects to the nodes from (any 127/8 address is local on Linux).
PROXY_SOURCE = "127.0.0.2"

#: What HAProxy checks and how often, in the tests: a node is DOWN after
#: ``fall`` failed checks ``inter`` apart (1 s here; the shipped file's 2 s x 3),
#: UP again after ``rise`` good ones.
CHECK = "inter 500ms fall 2 rise 1"

#: HAProxy's backends (``etc/haproxy/haproxy.cfg``).
BACKENDS = ("gateways_dicom", "gateways_dicom_tls")


class HAProxy(haproxy.HAProxy):
    """The shipped HAProxy configuration in front of the nodes, connecting to them from :data:`PROXY_SOURCE`.

    :class:`tests.support.haproxy.HAProxy` renders ``etc/haproxy/haproxy.cfg``
    for the test's ports; this adds ``source 127.0.0.2`` to every
    ``default-server`` line, the one change a test on one machine needs to
    tell the PROXY header's address (the modality's, 127.0.0.1) from the TCP
    peer's (HAProxy's).

    :param directory: where its configuration and log go.
    :param nodes: every node it may send to (started or not: a node not
        started is DOWN until it answers its health check).
    """

    def __init__(self, directory: Path, nodes: Sequence[haproxy.Node]) -> None:
        super().__init__(directory, nodes, tls=True, check=CHECK)
        text = self.config_path.read_text()
        text = re.sub(r"^(\s+default-server .*)$", rf"\1 source {PROXY_SOURCE}", text, flags=re.M)
        if text.count(f"source {PROXY_SOURCE}") != len(BACKENDS):
            raise RuntimeError(f"no default-server line to add the source address to in {self.config_path}")
        self.config_path.write_text(text)
        self.port = self.dicom_port

    def states(self) -> dict[str, str]:
        """Each server's status in both backends, for an assertion message.

        :returns: ``{backend/server: status}``.
        """
        return {f"{row['pxname']}/{row['svname']}": row.get("status", "") for row in self.stats()
                if row.get("pxname") in BACKENDS and row.get("svname") not in ("FRONTEND", "BACKEND")}

    def wait_state(self, server: str, state: str, timeout: float = 30.0) -> None:
        """Wait until ``server`` has ``state`` (``UP`` or ``DOWN``) in both backends.

        :param server: the node's name.
        :param state: the status awaited.
        :param timeout: seconds.
        :raises AssertionError: on timeout.
        """
        wait_until(lambda: all(self.server_status(server, b) == state for b in BACKENDS),
                   timeout, lambda: f"haproxy to see {server} {state}: {self.states()}")


class ClusterNode(GatewayProcess):
    """One gateway of a cluster: its node name, its ports, the shared spool and queue.

    :param directory: its configuration and log (its spool is the cluster's).
    :param node: its ``node:`` name.
    :param cluster: the cluster it belongs to (spool, queue, lease, certificates).
    :param overrides: more configuration keys (``destinations``, ``routes``...).
    """

    def __init__(self, directory: Path, node: str, cluster: Cluster, **overrides: Any) -> None:
        self.cluster = cluster
        self.tls_port = free_port()
        http_port = free_port()
        trusted = {"trusted": [f"{PROXY_SOURCE}/32"]}
        m = cluster.material
        super().__init__(
            directory,
            node=node,
            http_port=http_port,
            spool=cluster.spool_config(),
            queue=cluster.queue_config(),
            **cluster.cluster_config(),
            audit={"file": str(Path(directory).resolve() / "audit.jsonl")},
            **overrides,
        )
        self.http_port = http_port
        self.config["listen"] = [
            {"host": self.host, "port": self.port, "name": "dicom", "proxy_protocol": trusted},
            {"host": self.host, "port": self.tls_port, "name": "dicom-tls", "proxy_protocol": trusted,
             "tls": {"certificate": m.server, "private_key": m.server_key, "ca": m.ca,
                     "require_client_certificate": True, "handshake_timeout": "5s"}},
        ]
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    @property
    def backend(self) -> haproxy.Node:
        """The node as HAProxy's server lines name it.

        :returns: the node's ports.
        """
        return haproxy.Node(str(self.node), self.port, self.http_port, self.tls_port)

    def start(self, timeout: float = 60.0) -> ClusterNode:
        """Start the node and wait until it is ready (``/readyz`` 200, so HAProxy may send to it).

        :param timeout: seconds.
        :returns: this object.
        """
        # Readiness is /readyz, not a TCP connect to the DICOM port: a connection from
        # 127.0.0.1 without a PROXY header would be refused there (and audited).
        self.spawn(self.command(), lambda: self.readyz(timeout=1.0)[0] == 200, timeout, env=self._env(),
                   cwd=REPO_ROOT, what=f"answer 200 on {self.http_url('/readyz')}")
        return self

    def journaled_ids(self) -> set[str]:
        """The instance ids the shared journal holds (PostgreSQL, not a SQLite file).

        :returns: the instance ids.
        """
        if self.cluster.database is None:
            return super().journaled_ids()
        return set(self.cluster.observer().instance_ids())

    def drain(self) -> None:
        """``dicom-gateway drain``: ``/readyz`` fails at once, new associations refused after the grace.

        :raises AssertionError: if the command fails.
        """
        result = self.cli("drain")
        if result.returncode != 0:
            raise AssertionError(result.describe())

    def associations_active(self) -> float:
        """Associations open on the node now (``dicom_gateway_associations_active``).

        :returns: the sum over listeners (-1 when ``/metrics`` does not answer).
        """
        return self.metric("dicom_gateway_associations_active")

    def metric(self, name: str) -> float:
        """The sum of one metric's samples on this node's ``/metrics``.

        :param name: e.g. ``dicom_gateway_forwarded_total``.
        :returns: the sum (-1 when ``/metrics`` does not answer).
        """
        try:
            samples = parse(metrics_text(self.http_port))
        except OSError:
            return -1
        return sum(v for n, _, v in samples if n == name)

    def audit_addresses(self) -> list[str]:
        """The addresses (without port) of the calling side of every audited accepted association.

        :returns: one address per accepted association.
        """
        from gateway.audit import read_records

        path = self.dir / "audit.jsonl"
        found = []
        for record in read_records(str(path)) if path.exists() else []:
            if record.get("disposition") != "accepted":
                continue
            for participant in record.get("participants", []):
                if participant.get("requestor"):
                    found.append(str(participant.get("network_access_point", "")).rsplit(":", 1)[0])
        return found


class Cluster:
    """N nodes sharing a spool and a PostgreSQL database, HAProxy in front.

    Nodes ``node-1`` ... ``node-<count + spare>`` are configured (HAProxy
    knows them all); :meth:`start` starts the first ``count``. Every process
    is stopped in the test's cleanups.

    With ``backend="sqlite"`` (one node: the reference of ``bench/cluster.py``)
    the node keeps today's SQLite journal in a spool of its own (not shared)
    and no database is made.

    :param test: the running trial ``TestCase``, or any object with its
        ``mktemp`` and ``addCleanup`` (the bench's).
    :param count: nodes started by :meth:`start`.
    :param spare: more nodes configured but not started (a node added later).
    :param lease: ``cluster.lease`` (``None``: the gateway's default).
    :param heartbeat: ``cluster.heartbeat`` (``None``: the gateway's default).
    :param drain_grace: ``drain.grace`` (at least HAProxy's fall x inter).
    :param backend: ``postgresql`` or ``sqlite``.
    :param node_config: more configuration keys for every node (``destinations``, ``routes``).
    """

    def __init__(self, test: Any, count: int = 3, *, spare: int = 0, lease: str | None = "4s",
                 heartbeat: str | None = "1s", drain_grace: str = "3s", backend: str = "postgresql",
                 node_config: dict[str, Any] | None = None) -> None:
        self.test = test
        self.dir = Path(test.mktemp()).resolve()
        self.dir.mkdir(parents=True)
        self.count = count
        self.backend = backend
        if backend == "sqlite" and count + spare != 1:
            raise ValueError("the SQLite store serves one node (spool.shared is refused with it)")
        self.lease, self.heartbeat, self.drain_grace = lease, heartbeat, drain_grace
        self.material: Material = material()
        self.database = postgres.fresh_database(test) if backend == "postgresql" else None
        self.password_file = self.dir / "queue.password"
        if self.database is not None:
            self.password_file.write_text(self.database.password + "\n")
            os.chmod(self.password_file, 0o600)
        self.spool = self.dir / "spool"
        self._observer: Any = None
        self.nodes = [ClusterNode(self.dir / f"node-{i}", f"node-{i}", self, **(node_config or {}))
                      for i in range(1, count + spare + 1)]
        self.haproxy = HAProxy(self.dir / "haproxy", [node.backend for node in self.nodes])
        test.addCleanup(self.stop)

    def queue_config(self) -> dict[str, Any]:
        """The nodes' ``queue:`` block: PostgreSQL, the password in a file, short timeouts.

        :returns: the block (``{"backend": "sqlite"}`` for the SQLite reference).
        """
        if self.database is None:
            return {"backend": "sqlite"}
        return {"backend": "postgresql", "dsn": self.database.dsn, "password_file": str(self.password_file),
                "pool": {"min": 1, "max": 4}, "timeouts": {"connect": "3s", "statement": "5s"}}

    def spool_config(self) -> dict[str, Any]:
        """The nodes' ``spool:`` block: the one folder, shared (not with SQLite).

        :returns: the block.
        """
        return {"path": str(self.spool), "shared": self.database is not None}

    def cluster_config(self) -> dict[str, Any]:
        """The ``cluster:`` and ``drain:`` keys of every node.

        :returns: top-level keys.
        """
        timers = {key: value for key, value in (("lease", self.lease), ("heartbeat", self.heartbeat)) if value}
        return {**({"cluster": timers} if timers else {}), "drain": {"grace": self.drain_grace}}

    def start(self) -> Cluster:
        """Start the first ``count`` nodes together, then HAProxy; wait until HAProxy sees them UP.

        The nodes start at the same time (a node takes seconds to start on a
        loaded machine), so they also meet the schema migration together:
        it runs under an advisory lock, once.

        :returns: this object.
        """
        with ThreadPoolExecutor(self.count) as pool:
            for future in [pool.submit(node.start) for node in self.nodes[:self.count]]:
                future.result()
        self.haproxy.start()
        for node in self.nodes[:self.count]:
            self.haproxy.wait_state(str(node.node), "UP")
        return self

    def stop(self) -> None:
        """Stop HAProxy, every node and the observer (safe twice)."""
        self.haproxy.stop()
        for node in self.nodes:
            node.stop(timeout=15)
        if self._observer is not None:
            self._observer.close()
            self._observer = None

    @property
    def running(self) -> list[ClusterNode]:
        """The nodes running now.

        :returns: the nodes.
        """
        return [node for node in self.nodes if node.running]

    def observer(self) -> Any:
        """A store of the shared queue for the test to read (node ``observer``: it never leases).

        :returns: a :class:`gateway.queue.postgres.PostgresQueueStore`.
        """
        if self._observer is None:
            from gateway.queue.postgres import PostgresQueueStore

            assert self.database is not None, "the SQLite reference has no shared queue to observe"

            self._observer = PostgresQueueStore(self.database.dsn, "observer", password=self.database.password,
                                                pool_min=1, pool_max=2, connect_timeout=3.0,
                                                statement_timeout=10.0)
        return self._observer

    def entries(self, destination: str | None = None) -> list[Any]:
        """Every entry of the shared journal (with its instance), oldest first.

        :param destination: only this destination's.
        :returns: :class:`gateway.queue.interfaces.Entry` objects.
        """
        return list(self.observer().entries(destination, None, 10_000_000))

    def states(self, destination: str | None = None) -> Counter[str]:
        """Entries per state.

        :param destination: only this destination's.
        :returns: ``{state value: count}``.
        """
        return Counter(entry.state.value for entry in self.entries(destination))

    def leases_by_node(self, destination: str | None = None) -> Counter[str]:
        """LEASED entries per owner node.

        :param destination: only this destination's.
        :returns: ``{node: count}``.
        """
        return Counter(e.lease_owner for e in self.entries(destination) if e.state.value == "leased")

    def sessions_of(self, node: str) -> list[int]:
        """The PostgreSQL sessions a node holds in the cluster's database (its store names them).

        After ``kill -9`` of a node its sessions end once PostgreSQL has read
        the closed connections; until then a COMMIT the node sent just before
        it died may still land, so a test reads the dead node's leases after
        its sessions are gone.

        :param node: the node's name.
        :returns: the backends' pids.
        """
        assert self.database is not None
        return [pid for pid, name in self.server.backends(self.database.name) if name == f"dicom-gateway {node}"]

    def wait_sessions_gone(self, node: str, timeout: float = 30.0) -> None:
        """Wait until a (killed) node has no session left in the database.

        :param node: the node's name.
        :param timeout: seconds.
        :raises AssertionError: on timeout.
        """
        wait_until(lambda: not self.sessions_of(node), timeout, f"{node}'s PostgreSQL sessions to end")

    def heartbeats(self) -> dict[str, Any]:
        """Every node that sent a heartbeat, by name.

        :returns: ``{node: NodeStatus}``.
        """
        return {status.node: status for status in self.observer().nodes(time.time())}

    @property
    def server(self) -> postgres.PostgresServer:
        """The PostgreSQL server (``stop()``/``start()`` take the database away and back).

        :returns: the test process's server.
        """
        return postgres.server()

    def explain(self) -> str:
        """The cluster's state for an assertion message: states, leases, HAProxy, log tails.

        :returns: a multi-line text.
        """
        parts = []
        try:
            parts.append(f"journal states {dict(self.states())}, leases {dict(self.leases_by_node())}")
        except Exception as error:  # the database may be the thing that is away
            parts.append(f"journal unreadable: {error}")
        try:
            parts.append(f"haproxy {self.haproxy.states()}")
        except (OSError, KeyError) as error:
            parts.append(f"haproxy stats unreadable: {error}")
        for node in self.nodes:
            if node.log_path.exists():
                parts.append(f"--- {node.node} (returncode {node.returncode}) ---\n{node.log_text()[-1500:]}")
        return "\n".join(parts)


# --- destinations and senders -----------------------------------------------------------------

def fork_storescp(test: Any, name: str) -> dcmtk.Storescp:
    """Start a ``storescp +B +xa --fork +uf`` destination, stopped in a cleanup.

    ``--fork`` serves each association in a child (several at once);
    ``+uf`` gives every received file a unique name, so a second copy of an
    instance is kept beside the first and counted.

    :param test: the running test.
    :param name: a label for its folder.
    :returns: the running peer.
    """
    scp = dcmtk.Storescp(Path(test.mktemp()).resolve() / name, extra=["--fork", "+uf"])
    test.addCleanup(scp.stop)
    scp.start()
    return scp


def destination(scp: dcmtk.Storescp, **overrides: Any) -> dict[str, Any]:
    """A destination block for ``scp`` with the cluster tests' short timers.

    :param scp: the destination.
    :param overrides: more keys (``max_associations``...).
    :returns: the block.
    """
    return dicom_destination(scp.port, scp.ae_title, **overrides)


def copies_by_uid(scp: dcmtk.Storescp) -> Counter[str]:
    """How many copies of each SOP Instance UID the destination holds.

    A file still being written may not parse yet: it is skipped (the
    caller polls).

    :param scp: the destination.
    :returns: ``{uid: copies}``.
    """
    found: Counter[str] = Counter()
    if not scp.outdir.is_dir():
        return found
    for path in scp.outdir.iterdir():
        try:
            found[str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
                      .SOPInstanceUID)] += 1
        except Exception:  # a partial file: counted once complete
            continue
    return found


@dataclass(frozen=True)
class SendOutcome:
    """What one ``storescu -v`` run says happened to each file.

    :param result: the command's exit status and output.
    :param statuses: file path -> the response text (``Success``, ``Refused: Out of Resources``...),
        for each file whose C-STORE-RSP came back.
    """

    result: dcmtk.Result
    statuses: dict[str, str]

    @property
    def acknowledged(self) -> list[str]:
        """The files answered with success (the gateway took custody of them).

        :returns: their paths.
        """
        return [path for path, status in self.statuses.items() if status.startswith("Success")]

    @property
    def refused(self) -> list[str]:
        """The files answered with a failure status (0xA700: not acknowledged).

        :returns: their paths.
        """
        return [path for path, status in self.statuses.items() if not status.startswith(("Success", "Warning"))]


_SENDING = re.compile(r"^I: Sending file: (.+)$")
_RESPONSE = re.compile(r"^I: Received Store Response \((.*)\)$")


def storescu_outcome(port: int, files: Iterable[Path], *, tls: Material | None = None,
                     calling_ae: str = "STORESCU", timeout: float = 300.0) -> SendOutcome:
    """Send files in one association with ``storescu -v`` and read each file's response.

    :param port: HAProxy's DICOM (or, with ``tls``, DICOM TLS) port.
    :param files: the files.
    :param tls: send with ``+tls`` and this client certificate, trusting its CA.
    :param calling_ae: our AE title.
    :param timeout: seconds before storescu is killed.
    :returns: the outcome.
    """
    extra = ["-v"] + (["+tls", tls.client_key, tls.client, "+cf", tls.ca] if tls else [])
    result = dcmtk.storescu(port, list(files), calling_ae=calling_ae, extra=extra, timeout=timeout,
                            env={"TCP_NODELAY": "1"})
    statuses: dict[str, str] = {}
    current: str | None = None
    for line in result.output.splitlines():
        if match := _SENDING.match(line):
            current = match.group(1)
        elif (match := _RESPONSE.match(line)) and current is not None:
            statuses[current] = match.group(1)
            current = None
    return SendOutcome(result, statuses)
