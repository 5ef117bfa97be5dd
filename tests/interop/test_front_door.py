"""The front door with real engines (issue 14): a real HAProxy, the shipped config's shape, real DICOM peers.

HAProxy (Debian ``haproxy``) runs from a configuration rewritten from
``etc/haproxy/haproxy.cfg`` by :mod:`tests.support.haproxy` (TCP mode,
``send-proxy-v2``, ``/readyz`` checks on the HTTP port, ``balance
leastconn``); the gateway is a real process whose listeners take PROXY
headers from 127.0.0.1/32 only. Modalities are DCMTK ``storescu`` (plain and
TLS, with the test CA) and, where a distinct source address is needed, a
pynetdicom SCU bound to 127.0.0.2 (the whole of 127.0.0.0/8 is on the
loopback interface): HAProxy connects to the gateway from 127.0.0.1, so
only the PROXY header can tell the gateway about 127.0.0.2.

Waits poll state with a bound (files, audit records, HAProxy's stats
socket); nothing sleeps for a fixed time, and no assertion is on a duration.
"""

from __future__ import annotations

import json
import socket
import struct
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from twisted.trial.unittest import TestCase

from gateway.audit import read_records
from tests.support import dcmtk
from tests.support.certs import material, tls_listener
from tests.support.gateway_process import GatewayProcess, dicom_destination, folder_destination, wait_until
from gateway.proxyproto import V2_SIGNATURE
from tests.support.haproxy import HAProxy, Node, haproxy_available
from tests.support.interop import ForwardTestMixin, digests_by_sop_instance, make_series, part10_files
from tests.support.ports import free_port, port_is_open

#: The admin API token of the test gateways.
TOKEN = "front-door-token-0123456789"

#: Where the PROXY-only listeners accept headers from (HAProxy connects from here).
TRUSTED = {"trusted": ["127.0.0.1/32"]}


def _skip() -> str | None:
    """Why the class cannot run here (never under CI: ``make test`` installs everything)."""
    reason = dcmtk.skip_reason("storescu", "storescp", "echoscu")
    if reason:
        return reason
    if not haproxy_available():
        return "haproxy is not installed (make cluster)"
    return None


def http_get(port: int, path: str) -> tuple[int, Any]:
    """GET a path on a gateway's HTTP port.

    :returns: the status and the JSON body.
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def store_from(address: str, port: int, files: list[Path], calling_ae: str = "BOUNDSCU") -> list[int | None]:
    """Send Part 10 files with pynetdicom from a chosen loopback address (a test-only SCU).

    :param address: the local address to bind (``127.0.0.2``).
    :param port: where to connect (HAProxy's frontend).
    :param files: the files.
    :param calling_ae: our AE title.
    :returns: the C-STORE-RSP statuses.
    """
    import pydicom
    from pynetdicom import AE

    datasets = [pydicom.dcmread(str(path)) for path in files]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for ds in datasets:
        ae.add_requested_context(str(ds.SOPClassUID), [str(ds.file_meta.TransferSyntaxUID)])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMGW", bind_address=(address, 0))
    if not assoc.is_established:
        raise AssertionError(f"association through 127.0.0.1:{port} from {address} not established")
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


class FrontDoorMixin(ForwardTestMixin):
    """A gateway with PROXY-only listeners behind a real HAProxy."""

    def start_node(self, *, tls: bool = False, proxy: bool = True, **overrides: Any) -> GatewayProcess:
        """Start one gateway: a plain listener (and a TLS one), PROXY headers from 127.0.0.1/32, a fixed HTTP port.

        :param tls: add a TLS listener (``self.tls_port``) requiring a client certificate of the test CA.
        :param proxy: require PROXY headers on the listeners.
        :param overrides: more configuration keys.
        :returns: the running gateway (``self.http_port`` is its HTTP port).
        """
        self.http_port = free_port()
        gw = GatewayProcess(self.mktemp(), http={"host": "127.0.0.1", "port": self.http_port, "token": TOKEN},  # type: ignore[attr-defined]
                            **overrides)
        plain: dict[str, Any] = {"host": "127.0.0.1", "port": gw.port, "name": "dicom"}
        listeners = [plain]
        self.tls_port: int | None = None
        if tls:
            self.m = material()
            self.tls_port = free_port()
            listeners.append(tls_listener(self.tls_port, self.m))
        if proxy:
            for listener in listeners:
                listener["proxy_protocol"] = dict(TRUSTED)
        gw.config["listen"] = listeners
        gw.config["audit"] = {"file": str(gw.dir / "audit.jsonl")}
        gw.config_path.write_text(yaml.safe_dump(gw.config, sort_keys=False))
        self.addCleanup(self._stop_gateway, gw)  # type: ignore[attr-defined]
        gw.start()
        wait_until(lambda: port_is_open("127.0.0.1", self.http_port), 20, gw.log_text)
        if self.tls_port is not None:
            wait_until(lambda: port_is_open("127.0.0.1", self.tls_port), 20, gw.log_text)
        return gw

    def start_haproxy(self, gw: GatewayProcess, **kwargs: Any) -> HAProxy:
        """Start HAProxy in front of ``gw`` (server ``gw1``) and wait until it sees the node UP.

        :param gw: the gateway.
        :param kwargs: :class:`~tests.support.haproxy.HAProxy` arguments.
        :returns: the running HAProxy.
        """
        node = Node("gw1", gw.port, self.http_port, self.tls_port)
        proxy = HAProxy(self.mktemp(), [node], tls=self.tls_port is not None, **kwargs)  # type: ignore[attr-defined]
        self.addCleanup(proxy.stop)  # type: ignore[attr-defined]
        proxy.start()
        proxy.wait_for_status("gw1", "UP", 30)
        return proxy

    @staticmethod
    def audit(gw: GatewayProcess) -> list[dict[str, Any]]:
        """The gateway's audit records so far."""
        path = gw.dir / "audit.jsonl"
        return read_records(str(path)) if path.exists() else []

    @classmethod
    def accepted_peers(cls, gw: GatewayProcess, calling: str) -> list[str]:
        """The peer addresses of the accepted associations of one calling AE title, from the audit trail."""
        return [r["participants"][0]["network_access_point"] for r in cls.audit(gw)
                if r.get("disposition") == "accepted" and r["participants"][0]["user_id"] == calling]


class ThroughHAProxyTests(FrontDoorMixin, TestCase):
    """storescu through HAProxy (plain and TLS passthrough) to a PROXY-only gateway."""

    skip = _skip()
    timeout = 240

    def test_plain_and_tls_through_haproxy_arrive_byte_identical_and_the_gateway_sees_the_modality(self) -> None:
        """6 instances, 3 via the plain and 3 via the TLS frontend, reach storescp +B byte-identical; audit and routing see 127.0.0.2."""
        source = Path(self.mktemp()).resolve() / "series"
        make_series(source, 6, 16 * 1024)
        files = sorted(source.iterdir())
        reference_scp = self.storescp("reference")
        result = dcmtk.storescu(reference_scp.port, files, called_ae=reference_scp.ae_title)
        self.assertEqual(result.returncode, 0, result.describe())
        reference = digests_by_sop_instance(reference_scp.files())
        reference_scp.stop()
        archive = self.storescp("archive")
        bound = Path(self.mktemp()).resolve() / "from-127.0.0.2"
        gw = self.start_node(
            tls=True,
            destinations={"archive": dicom_destination(archive.port), "bound": folder_destination(bound)},
            routes=[
                {"name": "all", "forward": ["archive"]},
                # Routing sees the PROXY header's source: only 127.0.0.2's instance lands here.
                {"name": "by-source", "match": {"source_ip": "127.0.0.2/32"}, "forward": ["bound"]},
            ],
        )
        proxy = self.start_haproxy(gw)
        plain = dcmtk.storescu(proxy.dicom_port, files[:3])
        self.assertEqual(plain.returncode, 0, plain.describe() + gw.log_text()[-3000:])
        assert proxy.tls_port is not None
        secure = dcmtk.storescu(proxy.tls_port, files[3:], calling_ae="TLSSCU",
                                extra=["+tls", self.m.client_key, self.m.client, "+cf", self.m.ca])
        self.assertEqual(secure.returncode, 0, secure.describe() + gw.log_text()[-3000:])
        self.wait_for(gw, lambda: len(archive.files()) == 6, 90, "6 files at the archive")
        self.assertEqual(digests_by_sop_instance(archive.files()), reference)
        # Both went through HAProxy: its stats count one session on each backend's server.
        self.assertEqual(proxy.sessions_total("gw1"), 1)
        self.assertEqual(proxy.sessions_total("gw1", "gateways_dicom_tls"), 1)
        # A modality on 127.0.0.2: HAProxy still connects from 127.0.0.1; audit and routing see 127.0.0.2.
        self.assertEqual(store_from("127.0.0.2", proxy.dicom_port, files[:1]), [0])
        self.wait_for(gw, lambda: len(part10_files(bound)) == 1, 60, "the 127.0.0.2 instance in the by-source folder")
        peers = self.accepted_peers(gw, "BOUNDSCU")
        self.assertEqual([p.rsplit(":", 1)[0] for p in peers], ["127.0.0.2"])
        self.assertEqual({p.rsplit(":", 1)[0] for p in self.accepted_peers(gw, "STORESCU")}, {"127.0.0.1"})
        self.assertEqual(len(self.accepted_peers(gw, "TLSSCU")), 1)
        self.assertIn("127.0.0.2", gw.log_text())

    def test_direct_connection_without_a_header_is_refused_and_audited(self) -> None:
        """echoscu straight to the PROXY-only listener fails; the refusal is a 'missing' Security Alert; via HAProxy it works."""
        gw = self.start_node()
        direct = dcmtk.echoscu(gw.port)
        self.assertNotEqual(direct.returncode, 0, direct.describe())
        refusals = wait_until(
            lambda: [r for r in self.audit(gw) if r.get("disposition") == "proxy_refused"], 20, gw.log_text
        )
        self.assertEqual(refusals[0]["extra"]["reason"], "missing")
        self.assertEqual(refusals[0]["extra"]["listener"], "dicom")
        self.assertEqual(self.accepted_peers(gw, "ECHOSCU"), [])
        proxy = self.start_haproxy(gw)
        via = dcmtk.echoscu(proxy.dicom_port)
        self.assertEqual(via.returncode, 0, via.describe() + gw.log_text()[-3000:])


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Tell whether the gateway closes ``sock`` (EOF or reset, nothing sent) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


class HostileHeaderTests(FrontDoorMixin, TestCase):
    """Raw sockets against PROXY listeners of a real process: slow, oversized and untrusted headers (HARDENING R4)."""

    skip = _skip()
    timeout = 120

    def test_slow_oversized_and_untrusted_headers_are_closed_and_audited(self) -> None:
        """Half a header is closed at the 1 s deadline, a v2 length of 65535 at once, a peer outside trusted at connect."""
        gw = self.start_node(proxy=False)
        elsewhere = free_port()
        listeners = [
            {"host": "127.0.0.1", "port": gw.port, "name": "dicom",
             "proxy_protocol": {"trusted": ["127.0.0.1/32"], "timeout": "1s"}},
            {"host": "127.0.0.1", "port": elsewhere, "name": "elsewhere",
             "proxy_protocol": {"trusted": ["192.0.2.0/24"]}},
        ]
        gw.stop()
        gw.rewrite_config(listen=listeners)
        gw.start()
        wait_until(lambda: port_is_open("127.0.0.1", elsewhere), 20, gw.log_text)
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as slow:
            slow.sendall(b"PROXY TCP4 192.0.2.10 ")
            self.assertTrue(closed_within(slow, 30), "half a header was not closed")
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as big:
            big.sendall(V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", 65535) + b"\0" * 1024)
            self.assertTrue(closed_within(big, 30), "an oversized v2 header was not closed")
        with socket.create_connection(("127.0.0.1", elsewhere), timeout=10) as untrusted:
            self.assertTrue(closed_within(untrusted, 30), "an untrusted peer was not closed")

        def reasons() -> set[tuple[str, str]]:
            return {(r["extra"]["listener"], r["extra"]["reason"]) for r in self.audit(gw)
                    if r.get("disposition") == "proxy_refused"}

        expected = {("dicom", "timeout"), ("dicom", "malformed"), ("elsewhere", "untrusted")}
        wait_until(lambda: reasons() >= expected, 20, lambda: f"{reasons()}\n{gw.log_text()[-3000:]}")
        # The gateway still serves after all of it (through the header, as HAProxy would send it).
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as fine:
            fine.sendall(b"PROXY TCP4 192.0.2.10 127.0.0.1 40000 104\r\n")
            self.assertFalse(closed_within(fine, 2), "a valid header was refused")


class DrainTests(FrontDoorMixin, TestCase):
    """dicom-gateway drain / undrain on a real process (issue 14)."""

    skip = _skip()
    timeout = 240

    def test_drain_fails_readyz_at_once_accepts_in_the_grace_then_rejects_2_3_2(self) -> None:
        """drain: /readyz 503 'draining' at once; an echo inside the grace succeeds; after it RJ(2,3,2); undrain reverses it."""
        gw = self.start_node(proxy=False, drain={"grace": "20s"})
        self.assertEqual(http_get(self.http_port, "/readyz")[0], 200)
        drained = gw.cli("drain")
        self.assertEqual(drained.returncode, 0, drained.describe())
        self.assertIn("draining", drained.stdout)
        status, body = http_get(self.http_port, "/readyz")
        self.assertEqual((status, body["reasons"]), (503, ["draining"]))
        inside = dcmtk.echoscu(gw.port)
        self.assertEqual(inside.returncode, 0, inside.describe())
        wait_until(lambda: "drain grace over" in gw.log_text(), 60, gw.log_text)
        after = dcmtk.echoscu(gw.port)
        self.assertNotEqual(after.returncode, 0, after.describe())
        rejected = [r for r in self.audit(gw) if r.get("disposition") == "rejected"]
        self.assertEqual(len(rejected), 1, rejected)
        self.assertIn("draining", rejected[0]["description"])
        undrained = gw.cli("undrain")
        self.assertEqual(undrained.returncode, 0, undrained.describe())
        self.assertEqual(http_get(self.http_port, "/readyz")[0], 200)
        again = dcmtk.echoscu(gw.port)
        self.assertEqual(again.returncode, 0, again.describe())
        actions = [r["extra"].get("action") for r in self.audit(gw) if r.get("disposition") in ("drain", "undrain")]
        self.assertEqual(actions, ["drain", "undrain"])

    def test_haproxy_takes_a_draining_node_out_and_back(self) -> None:
        """With the shipped check timing (inter 2s fall 3 rise 2), HAProxy marks a draining node DOWN and an undrained one UP."""
        gw = self.start_node(drain={"grace": "60s"})
        proxy = self.start_haproxy(gw)
        self.assertEqual(gw.cli("drain").returncode, 0)
        proxy.wait_for_status("gw1", "DOWN", 60)
        self.assertEqual(gw.cli("undrain").returncode, 0)
        proxy.wait_for_status("gw1", "UP", 60)
        via = dcmtk.echoscu(proxy.dicom_port)
        self.assertEqual(via.returncode, 0, via.describe())
