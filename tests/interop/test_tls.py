"""DICOM TLS against real peers: DCMTK with ``+tls``, ``openssl s_client``, raw sockets (HARDENING D, T01-T16).

The gateway runs as a process with a plain listener and a TLS listener side
by side; certificates are generated per run (:mod:`tests.support.certs`).
Every failure case is followed by a successful association, to show that the
gateway keeps serving others and no association slot is left stuck.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from twisted.trial.unittest import SkipTest, TestCase

from gateway.audit import read_records
from tests.support import dcmtk
from tests.support.certs import destination_tls, material, tls_listener
from tests.support.datasets import write_instance
from tests.support.gateway_process import GatewayProcess, dicom_destination, wait_until
from tests.support.interop import ForwardTestMixin, digests_by_sop_instance
from tests.support.ports import free_port, port_is_open

OPENSSL = shutil.which("openssl")



class TLSGatewayMixin(ForwardTestMixin):
    """Start a gateway with a plain listener (``gw.port``) and a TLS listener (``self.tls_port``)."""

    def start_tls_gateway(self, tls: dict[str, Any] | None = None, access: dict[str, Any] | None = None,
                          **overrides: Any) -> GatewayProcess:
        """Start the gateway; the audit trail goes to ``<dir>/audit.jsonl``.

        :param tls: TLS keys for the TLS listener.
        :param access: the TLS listener's ``access`` block.
        :param overrides: more configuration keys.
        :returns: the running gateway.
        """
        self.m = material()
        gw = GatewayProcess(self.mktemp(), http={"enabled": False}, **overrides)  # type: ignore[attr-defined]
        self.tls_port = free_port("127.0.0.1")
        while self.tls_port == gw.port:  # neither is bound yet: do not pick the same one twice
            self.tls_port = free_port("127.0.0.1")
        listener = tls_listener(self.tls_port, self.m, **(tls or {}))
        if access:
            listener["access"] = access
        gw.config["listen"] = [{"host": "127.0.0.1", "port": gw.port, "name": "plain"}, listener]
        gw.config["audit"] = {"file": str(gw.dir / "audit.jsonl")}
        gw.config_path.write_text(yaml.safe_dump(gw.config, sort_keys=False))
        self.addCleanup(self._stop_gateway, gw)  # type: ignore[attr-defined]
        gw.start()
        wait_until(lambda: port_is_open("127.0.0.1", self.tls_port), 10, lambda: gw.log_text())
        self.gw = gw
        return gw

    def echo_tls(self, key: str = "", cert: str = "", port: int | None = None, calling: str = "ECHOSCU") -> dcmtk.Result:
        """``echoscu +tls`` (or ``+tla`` without a key) trusting the test CA."""
        extra = ["+tls", key, cert] if key else ["+tla"]
        return dcmtk.echoscu(port or self.tls_port, calling_ae=calling, extra=[*extra, "+cf", self.m.ca])

    def assert_still_serving(self) -> None:
        """A valid mutual-TLS echo and a plain echo both succeed."""
        result = self.echo_tls(self.m.client_key, self.m.client)
        self.assertEqual(result.returncode, 0, result.describe() + self.gw.log_text()[-2000:])
        plain = dcmtk.echoscu(self.gw.port)
        self.assertEqual(plain.returncode, 0, plain.describe())

    def audit(self) -> list[dict[str, Any]]:
        """The audit records so far."""
        path = self.gw.dir / "audit.jsonl"
        return read_records(str(path)) if path.exists() else []


class HandshakeTests(TLSGatewayMixin, TestCase):
    """Client certificates and protocol versions at the TLS listener (HARDENING T03-T08)."""

    skip = dcmtk.skip_reason("echoscu", "storescu")
    timeout = 120

    def setUp(self) -> None:
        self.start_tls_gateway()

    def test_echoscu_and_storescu_with_client_certificate_succeed(self) -> None:
        """Mutual TLS from DCMTK: C-ECHO and C-STORE work; the certificate subject is audited (T03)."""
        result = self.echo_tls(self.m.client_key, self.m.client)
        self.assertEqual(result.returncode, 0, result.describe())
        source = Path(self.mktemp())
        source.mkdir()
        write_instance(source / "ct.dcm", "1.2.840.10008.1.2.1", 20000, seed=1)
        stored = dcmtk.storescu(self.tls_port, [source / "ct.dcm"],
                                extra=["+tls", self.m.client_key, self.m.client, "+cf", self.m.ca])
        self.assertEqual(stored.returncode, 0, stored.describe())
        wait_until(lambda: any(r.get("disposition") == "received" for r in self.audit()), 10, lambda: str(self.audit()))
        accepted = [r for r in self.audit() if r.get("disposition") == "accepted"]
        self.assertEqual({r["participants"][0]["certificate_subject"] for r in accepted},
                         {self.m.subject("client")})

    def test_no_client_certificate_when_required_fails(self) -> None:
        """Anonymous TLS fails the handshake; others are still served (T05)."""
        result = self.echo_tls()
        self.assertNotEqual(result.returncode, 0)
        self.assert_still_serving()
        reasons = [r["extra"]["reason"] for r in self.audit() if r.get("disposition") == "tls_failure"]
        self.assertEqual(reasons, ["no_certificate"])

    def test_certificate_from_another_ca_fails(self) -> None:
        """A client certificate from an unknown CA fails with reason unknown_ca (T04)."""
        result = self.echo_tls(self.m.other_client_key, self.m.other_client)
        self.assertNotEqual(result.returncode, 0)
        self.assert_still_serving()
        reasons = [r["extra"]["reason"] for r in self.audit() if r.get("disposition") == "tls_failure"]
        self.assertEqual(reasons, ["unknown_ca"])

    def test_expired_certificate_fails(self) -> None:
        """An expired client certificate fails with reason expired (T06)."""
        result = self.echo_tls(self.m.expired_client_key, self.m.expired_client)
        self.assertNotEqual(result.returncode, 0)
        self.assert_still_serving()
        reasons = [r["extra"]["reason"] for r in self.audit() if r.get("disposition") == "tls_failure"]
        self.assertEqual(reasons, ["expired"])

    def test_tls11_probe_fails_against_the_gateway_but_succeeds_against_a_tls11_server(self) -> None:
        """``openssl s_client -tls1_1`` at SECLEVEL=0 is refused by the gateway, yet works against a server allowing 1.1 (T08)."""
        if OPENSSL is None:
            raise SkipTest("openssl is not installed")
        probe = [OPENSSL, "s_client", "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0",
                 "-cert", self.m.client, "-key", self.m.client_key, "-CAfile", self.m.ca]
        # The control: an openssl s_server that allows TLS 1.1, so the probe can succeed.
        port = free_port("127.0.0.1")
        server = subprocess.Popen(
            [OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}", "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0",
             "-cert", self.m.server, "-key", self.m.server_key, "-quiet"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.addCleanup(lambda: (server.kill(), server.wait()))
        wait_until(lambda: port_is_open("127.0.0.1", port), 10, lambda: "s_server did not start")
        control = subprocess.run([*probe, "-connect", f"127.0.0.1:{port}"], input=b"", capture_output=True, timeout=30)
        # s_client prints the session either way; a handshake that worked has a cipher.
        self.assertIn(b"Protocol  : TLSv1.1", control.stdout, control.stdout + control.stderr)
        self.assertNotIn(b"Cipher is (NONE)", control.stdout)
        against_gateway = subprocess.run([*probe, "-connect", f"127.0.0.1:{self.tls_port}"], input=b"",
                                         capture_output=True, timeout=30)
        self.assertNotEqual(against_gateway.returncode, 0)
        self.assertIn(b"Cipher is (NONE)", against_gateway.stdout)
        self.assert_still_serving()
        reasons = [r["extra"]["reason"] for r in self.audit() if r.get("disposition") == "tls_failure"]
        self.assertEqual(reasons, ["protocol_version"])

    def test_tls13_is_negotiated(self) -> None:
        """A TLS 1.3-capable client gets TLS 1.3 (T10)."""
        context = ssl.create_default_context(cafile=self.m.ca)
        context.load_cert_chain(self.m.client, self.m.client_key)
        with socket.create_connection(("127.0.0.1", self.tls_port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                self.assertEqual(tls.version(), "TLSv1.3")


class WrongProtocolTests(TLSGatewayMixin, TestCase):
    """Plain DICOM on the TLS port and TLS on the plain port (T01, T02) and silent connections (T13)."""

    skip = dcmtk.skip_reason("echoscu")
    timeout = 120

    def setUp(self) -> None:
        # One association at a time: a stuck slot would refuse the next echo.
        self.start_tls_gateway(limits={"max_associations": 1})

    def test_plain_dicom_to_tls_port_fails_cleanly(self) -> None:
        """echoscu without TLS on the TLS port fails; no PDU is parsed; the gateway keeps serving (T01)."""
        result = dcmtk.echoscu(self.tls_port)
        self.assertNotEqual(result.returncode, 0)
        self.assert_still_serving()
        self.assertNotIn("unrecognized PDU", self.gw.log_text())
        reasons = [r["extra"]["reason"] for r in self.audit() if r.get("disposition") == "tls_failure"]
        self.assertEqual(reasons, ["not_tls"])
        self.assertIsNone(self.gw.returncode)

    def test_tls_to_plain_port_fails_cleanly(self) -> None:
        """echoscu +tls on the plain port fails; the gateway keeps serving (T02)."""
        result = self.echo_tls(self.m.client_key, self.m.client, port=self.gw.port)
        self.assertNotEqual(result.returncode, 0)
        self.assert_still_serving()
        self.assertIsNone(self.gw.returncode)

    def test_silent_and_half_hello_connections_are_closed_at_the_deadline(self) -> None:
        """Connections that send nothing or half a ClientHello are closed by the 2 s deadline; others get in meanwhile (T13)."""
        sockets = []
        for index in range(20):
            sock = socket.create_connection(("127.0.0.1", self.tls_port), timeout=10)
            if index % 2:
                sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello cut short
            sockets.append(sock)
        self.addCleanup(lambda: [s.close() for s in sockets])
        started = time.monotonic()
        result = self.echo_tls(self.m.client_key, self.m.client)
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertLess(time.monotonic() - started, 2.0)
        for sock in sockets:
            sock.settimeout(10)
            try:
                data = sock.recv(100)
            except ConnectionResetError:
                data = b""  # aborted by the gateway: an RST is a close too
            self.assertEqual(data, b"")
        self.assertLess(time.monotonic() - started, 8.0)
        timeouts = [r for r in self.audit() if r.get("extra", {}).get("reason") == "timeout"]
        self.assertEqual(len(timeouts), 20)
        self.assert_still_serving()


class GarbageInsideTLSTests(TLSGatewayMixin, TestCase):
    """TLS does not change upper-layer behaviour (HARDENING T17)."""

    timeout = 60

    def setUp(self) -> None:
        self.start_tls_gateway()

    @staticmethod
    def exchange(sock: Any, data: bytes) -> bytes:
        """Send ``data`` and read the answer: an A-ABORT PDU is 10 bytes (PS3.8 9.3.8); stop there or at close."""
        sock.sendall(data)
        received = b""
        while len(received) < 10:
            try:
                chunk = sock.recv(4096)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            received += chunk
        return received

    def test_unknown_pdu_inside_tls_is_answered_as_on_plain_tcp(self) -> None:
        """An unknown PDU type gets the same A-ABORT over TLS as over plain TCP."""
        garbage = b"\x09\x00\x00\x00\x00\x04abcd"
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=10) as plain:
            plain_answer = self.exchange(plain, garbage)
        context = ssl.create_default_context(cafile=self.m.ca)
        context.load_cert_chain(self.m.client, self.m.client_key)
        with socket.create_connection(("127.0.0.1", self.tls_port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls_answer = self.exchange(tls, garbage)
        self.assertEqual(plain_answer[:1], b"\x07")  # A-ABORT
        self.assertEqual(tls_answer, plain_answer)
        self.assert_still_serving()


class ReloadTests(TLSGatewayMixin, TestCase):
    """SIGHUP with a renewed certificate (T16)."""

    skip = dcmtk.skip_reason("echoscu")
    timeout = 120

    def setUp(self) -> None:
        m = material()
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir(parents=True)
        self.cert, self.key = self.dir / "gw.pem", self.dir / "gw-key.pem"
        shutil.copy(m.server, self.cert)
        shutil.copy(m.server_key, self.key)
        os.chmod(self.key, 0o600)
        self.start_tls_gateway(tls={"certificate": str(self.cert), "private_key": str(self.key)})

    def served_subject(self) -> str:
        """The certificate subject a new handshake sees."""
        context = ssl.create_default_context(cafile=self.m.ca)
        context.load_cert_chain(self.m.client, self.m.client_key)
        with socket.create_connection(("127.0.0.1", self.tls_port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                cert = tls.getpeercert()
        return dict(item[0] for item in cert["subject"])["commonName"]

    def test_renewed_certificate_is_served_while_a_running_association_completes(self) -> None:
        """A transfer on an association opened before SIGHUP goes on after it; new handshakes see the renewed certificate."""
        from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        from tests.support.datasets import ct_dataset

        def instance(seed: int) -> Any:
            from pydicom.dataset import FileMetaDataset

            ds = ct_dataset(128, 128, seed=seed)
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            return ds

        self.assertEqual(self.served_subject(), "dicom-gateway")
        ae = AE(ae_title="PYNET")
        ae.add_requested_context(Verification)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        context = ssl.create_default_context(cafile=self.m.ca)
        context.load_cert_chain(self.m.client, self.m.client_key)
        assoc = ae.associate("127.0.0.1", self.tls_port, ae_title="DICOMGW", tls_args=(context, "localhost"))
        self.assertTrue(assoc.is_established)
        try:
            # Half the transfer before the renewal...
            for seed in range(5):
                self.assertEqual(assoc.send_c_store(instance(seed)).Status, 0)
            shutil.copy(self.m.server2, self.cert)
            shutil.copy(self.m.server2_key, self.key)
            os.kill(self.gw.pid, signal.SIGHUP)
            wait_until(lambda: "TLS certificate and key reloaded" in self.gw.log_text(), 10, self.gw.log_text)
            self.assertEqual(self.served_subject(), "dicom-gateway-renewed")
            # ...and the rest after it, on the association that began under the old certificate.
            for seed in range(5, 10):
                self.assertEqual(assoc.send_c_store(instance(seed)).Status, 0)
        finally:
            assoc.release()
        self.assertFalse(assoc.is_aborted)
        received = [r for r in self.audit() if r.get("disposition") == "received"]
        self.assertEqual(len(received), 10)
        self.assertEqual({r["participants"][0]["certificate_subject"] for r in received}, {self.m.subject("client")})

    def test_bad_new_certificate_is_refused_and_the_old_one_stays(self) -> None:
        """A renewed certificate without its key is refused with a logged error; the old pair keeps serving."""
        shutil.copy(self.m.server2, self.cert)  # the key is still the old one
        os.kill(self.gw.pid, signal.SIGHUP)
        wait_until(lambda: "new TLS certificate refused" in self.gw.log_text(), 10, self.gw.log_text)
        self.assertEqual(self.served_subject(), "dicom-gateway")
        self.assert_still_serving()


class DestinationTLSTests(TLSGatewayMixin, TestCase):
    """Forwarding over TLS to DCMTK storescp (T12)."""

    skip = dcmtk.skip_reason("storescu", "storescp")
    timeout = 180

    def tls_storescp(self, name: str, cert: str, key: str) -> dcmtk.Storescp:
        """A ``storescp +tls`` requiring a client certificate from the test CA."""
        return self.storescp(name, extra=["+tls", key, cert, "+cf", self.m.ca, "-rc"])

    def send_one(self) -> None:
        """Send one CT instance to the gateway's plain listener."""
        source = Path(self.mktemp())
        source.mkdir()
        write_instance(source / "ct.dcm", "1.2.840.10008.1.2.1", 20000, seed=7)
        result = dcmtk.storescu(self.gw.port, [source / "ct.dcm"])
        self.assertEqual(result.returncode, 0, result.describe())

    def destination(self, scp: dcmtk.Storescp, **tls: str) -> dict[str, Any]:
        """A TLS destination for ``scp`` presenting the gateway's certificate as client certificate."""
        settings = {"ca": self.m.ca, "certificate": self.m.server, "private_key": self.m.server_key}
        settings.update(tls)
        return dicom_destination(scp.port, scp.ae_title, tls=settings)

    def test_forward_to_storescp_over_mutual_tls(self) -> None:
        """An instance forwarded to storescp +tls arrives (mutual authentication) and is audited as forwarded."""
        self.m = material()
        scp = self.tls_storescp("pacs", self.m.server, self.m.server_key)
        self.start_tls_gateway(
            destinations={"pacs": self.destination(scp, server_name="localhost")},
            routes=[{"name": "all", "forward": ["pacs"]}],
        )
        self.send_one()
        self.wait_for(self.gw, lambda: len(scp.files()) == 1, 60, "the instance at storescp")
        self.wait_for(self.gw, lambda: any(r.get("disposition") == "forwarded" for r in self.audit()), 10,
                      "the forwarded audit record")

    def test_forward_to_pynetdicom_scp_over_mutual_tls(self) -> None:
        """Matrix: an instance forwarded to a pynetdicom SCP over mutual TLS arrives byte-identical, over TLS 1.2+ only."""
        import ssl

        from tests.support.scp import RecordingScp

        self.m = material()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.m.server, self.m.server_key)
        context.load_verify_locations(self.m.ca)
        context.verify_mode = ssl.CERT_REQUIRED  # the gateway must present its certificate
        scp = RecordingScp("PYNETTLS", ssl_context=context).start()
        self.addCleanup(scp.stop)
        self.start_tls_gateway(
            destinations={"pacs": dicom_destination(scp.port, scp.ae_title, tls=destination_tls(self.m))},
            routes=[{"name": "all", "forward": ["pacs"]}],
        )
        source = Path(self.mktemp())
        source.mkdir()
        write_instance(source / "ct.dcm", "1.2.840.10008.1.2.1", 20000, seed=11)
        result = dcmtk.storescu(self.gw.port, [source / "ct.dcm"])
        self.assertEqual(result.returncode, 0, result.describe())
        self.wait_for(self.gw, lambda: len(scp.successes()) == 1, 60, "the instance at the pynetdicom TLS SCP")
        self.assertEqual({r.sop_instance_uid: r.digest for r in scp.receipts},
                         digests_by_sop_instance([source / "ct.dcm"]))
        # A plain-TCP association to the same port gets nowhere: the SCP speaks TLS only.
        plain = dcmtk.echoscu(scp.port, called_ae=scp.ae_title)
        self.assertNotEqual(plain.returncode, 0, plain.describe())

    def test_wrong_server_name_is_refused_and_retried(self) -> None:
        """storescp with a certificate for another name: nothing sent in clear, the entry stays queued and is retried."""
        self.m = material()
        scp = self.tls_storescp("wrong", self.m.wrongname, self.m.wrongname_key)
        self.start_tls_gateway(
            destinations={"pacs": self.destination(scp)},  # server_name defaults to host 127.0.0.1
            routes=[{"name": "all", "forward": ["pacs"]}],
        )
        self.send_one()

        def refused() -> bool:
            row = self.gw.queue_rows()["pacs"]
            return row["queued"] + row["in_flight"] == 1 and bool(row.get("last_error"))

        self.wait_for(self.gw, refused, 60, "a recorded TLS failure with the entry still queued")
        row = self.gw.queue_rows()["pacs"]
        self.assertIn("TLS failure", row["last_error"])
        self.assertIn("expected name", row["last_error"])
        self.assertEqual(row["dead"], 0)
        self.assertEqual(scp.files(), [])
        self.assertNotIn("ECHOSCU", scp.log_text())
