"""TLS hardening against real peers: bad client certificates, CRLs, weak keys, renegotiation, oversized handshakes, TLS destinations.

HARDENING T06, T11, T14, T15 and F20. The gateway runs as a process with a
plain and a TLS listener (:class:`tests.interop.test_tls.TLSGatewayMixin`)
and its HTTP endpoint on, so each failure is checked in the audit trail
*and* in ``dicom_gateway_tls_handshake_failures_total{listener,reason}``.
Clients are DCMTK's ``echoscu +tls``, ``openssl s_client`` (which, at
``@SECLEVEL=0``, sends weak certificates a DCMTK built on OpenSSL 3 would
not even load) and raw sockets. Every failure is followed by a successful
mutual-TLS echo: the gateway keeps serving.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from twisted.trial.unittest import SkipTest, TestCase

from tests.interop.test_tls import OPENSSL, TLSGatewayMixin
from tests.support import dcmtk
from tests.support.certs import destination_tls, hardening_material, material, tls_listener
from tests.support.datasets import write_instance
from tests.support.procstat import rss_kib
from tests.support.gateway_process import GatewayProcess, dicom_destination, wait_until
from tests.support.ports import free_port, port_is_open


def metric(gw: GatewayProcess, reason: str, listener: str = "tls") -> float:
    """``dicom_gateway_tls_handshake_failures_total{listener,reason}`` read from the gateway's ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    found = re.search(r"on http://([0-9.]+):(\d+)/", gw.log_text())
    if found is None:
        raise AssertionError("the gateway logged no HTTP address:\n" + gw.log_text())
    with urllib.request.urlopen(f"http://{found.group(1)}:{found.group(2)}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "dicom_gateway_tls_handshake_failures_total"
        and sample.labels == {"listener": listener, "reason": reason}
    )


class HardeningGatewayMixin(TLSGatewayMixin):
    """:class:`TLSGatewayMixin` with the HTTP endpoint on (for ``/metrics``) and the hardening material."""

    def start_hardened(self, tls: dict[str, Any] | None = None, **overrides: Any) -> GatewayProcess:
        """Start the gateway: plain listener ``plain``, TLS listener ``tls`` (mutual TLS), audit file, HTTP on port 0.

        :param tls: keys replacing the TLS listener's defaults.
        :param overrides: more configuration keys.
        :returns: the running gateway.
        """
        self.m = material()
        self.h = hardening_material()
        gw = GatewayProcess(self.mktemp(), **overrides)  # type: ignore[attr-defined]
        self.tls_port = free_port("127.0.0.1")
        while self.tls_port == gw.port:
            self.tls_port = free_port("127.0.0.1")
        gw.config["listen"] = [{"host": "127.0.0.1", "port": gw.port, "name": "plain"},
                               tls_listener(self.tls_port, self.m, **(tls or {}))]
        gw.config["audit"] = {"file": str(gw.dir / "audit.jsonl")}
        gw.config_path.write_text(yaml.safe_dump(gw.config, sort_keys=False))
        self.addCleanup(self._stop_gateway, gw)  # type: ignore[attr-defined]
        gw.start()
        wait_until(lambda: port_is_open("127.0.0.1", self.tls_port), 10, gw.log_text)
        wait_until(lambda: "on http://" in gw.log_text(), 10, gw.log_text)
        self.gw = gw
        return gw

    def tls_reasons(self) -> list[str]:
        """The reason labels of the listener's TLS failure audit records, in order."""
        return [r["extra"]["reason"] for r in self.audit()
                if r.get("disposition") == "tls_failure" and r.get("extra", {}).get("listener") == "tls"]

    def wait_reasons(self, count: int) -> list[str]:
        """Wait until ``count`` TLS failures are audited; return their reasons."""
        wait_until(lambda: len(self.tls_reasons()) >= count, 15, lambda: f"{self.tls_reasons()}\n{self.gw.log_text()[-3000:]}")
        return self.tls_reasons()

    def s_client(self, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        """Run ``openssl s_client`` against the TLS listener with ``args``."""
        if OPENSSL is None:
            raise SkipTest("openssl is not installed")
        return subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{self.tls_port}", *args],
                              input=stdin, capture_output=True, timeout=30)


class ClientCertificateTests(HardeningGatewayMixin, TestCase):
    """Client certificates expired, not yet valid, revoked or with the wrong key usage (T06)."""

    skip = dcmtk.skip_reason("echoscu")
    timeout = 120

    def setUp(self) -> None:
        h = hardening_material()
        self.crl = Path(self.mktemp()).resolve()
        self.crl.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(h.crl_empty, self.crl)
        self.start_hardened(tls={"crl": str(self.crl)})

    def test_each_bad_certificate_fails_with_its_own_reason(self) -> None:
        """echoscu +tls with four bad certificates: four distinct reasons in the audit trail and in the metric."""
        cases = [
            ("expired", self.m.expired_client, self.m.expired_client_key),
            ("not_yet_valid", self.h.notyet_client, self.h.notyet_client_key),
            ("wrong_key_usage", self.h.serveronly_client, self.h.serveronly_client_key),  # EKU serverAuth only
            ("wrong_key_usage", self.h.certsign_client, self.h.certsign_client_key),  # KU keyCertSign only
        ]
        for expected, cert, key in cases:
            result = self.echo_tls(key, cert)
            self.assertNotEqual(result.returncode, 0, f"{expected}: {result.describe()}")
        self.assertEqual(self.wait_reasons(4), [case[0] for case in cases])
        self.assertEqual([metric(self.gw, r) for r in ("expired", "not_yet_valid", "wrong_key_usage")], [1, 1, 2])
        self.assert_still_serving()
        self.assertEqual(metric(self.gw, "revoked"), 0)

    def test_certificate_revoked_by_a_crl_loaded_on_sighup_fails(self) -> None:
        """A certificate accepted under an empty CRL is refused (revoked) after the CRL naming it is installed and SIGHUP sent."""
        before = self.echo_tls(self.h.revoked_client_key, self.h.revoked_client)
        self.assertEqual(before.returncode, 0, before.describe())
        shutil.copy(self.h.crl_revoked, self.crl)
        os.kill(self.gw.pid, signal.SIGHUP)
        wait_until(lambda: "TLS certificate and key reloaded" in self.gw.log_text(), 10, self.gw.log_text)
        after = self.echo_tls(self.h.revoked_client_key, self.h.revoked_client)
        self.assertNotEqual(after.returncode, 0, after.describe())
        self.assertEqual(self.wait_reasons(1), ["revoked"])
        self.assertEqual(metric(self.gw, "revoked"), 1)
        self.assert_still_serving()  # the valid client is not on the list
        alerts = [r for r in self.audit() if r.get("disposition") == "tls_failure"]
        self.assertEqual(alerts[0]["event"], "Security Alert")


class WeakKeyTests(HardeningGatewayMixin, TestCase):
    """Weak client keys and signatures are refused at the handshake, weak own keys at start-up (T11)."""

    timeout = 120

    def setUp(self) -> None:
        if OPENSSL is None:
            raise SkipTest("openssl is not installed")
        self.start_hardened()

    def test_weak_client_certificates_are_refused_though_an_openssl_server_takes_them(self) -> None:
        """RSA 512/1024 and MD5/SHA1-signed client certificates: an s_server at SECLEVEL 0 accepts each, the gateway refuses each."""
        port = free_port("127.0.0.1")
        control = subprocess.Popen(
            [OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}", "-tls1_2", "-cipher", "DEFAULT:@SECLEVEL=0",
             "-Verify", "1", "-verify_return_error", "-CAfile", self.m.ca,
             "-cert", self.m.server, "-key", self.m.server_key, "-naccept", "4"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.addCleanup(lambda: (control.kill(), control.wait()))
        wait_until(lambda: port_is_open("127.0.0.1", port), 10, lambda: "s_server did not start")
        cases = [("weak_key", "rsa512_client"), ("weak_key", "rsa1024_client"),
                 ("weak_signature", "sha1_client"), ("weak_signature", "md5_client")]
        for _label, stem in cases:
            # TLS 1.2: a 512-bit key cannot make TLS 1.3's RSA-PSS signature, and would not be sent at all.
            probe = ["-tls1_2", "-cipher", "DEFAULT:@SECLEVEL=0", "-CAfile", self.m.ca,
                     "-cert", getattr(self.h, stem), "-key", getattr(self.h, f"{stem}_key")]
            accepted = subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", *probe],
                                      input=b"", capture_output=True, timeout=30)
            self.assertNotIn(b"Cipher is (NONE)", accepted.stdout, f"control refused {stem}: {accepted.stderr!r}")
            refused = self.s_client(*probe)
            self.assertIn(b"alert", refused.stderr, f"{stem}: {refused.stdout!r}{refused.stderr!r}")
        self.assertEqual(self.wait_reasons(4), [label for label, _stem in cases])
        self.assertEqual((metric(self.gw, "weak_key"), metric(self.gw, "weak_signature")), (2, 2))
        self.assert_still_serving()

    def test_dhe_only_client_gets_no_shared_cipher(self) -> None:
        """A client offering only DHE suites gets no shared cipher: the listener never runs a DH exchange, so never a < 2048-bit one."""
        result = self.s_client("-tls1_2", "-cipher", "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384",
                               "-cert", self.m.client, "-key", self.m.client_key, "-CAfile", self.m.ca)
        self.assertIn(b"Cipher is (NONE)", result.stdout)
        self.assertEqual(self.wait_reasons(1), ["no_shared_cipher"])
        self.assert_still_serving()

    def test_weak_own_certificates_stop_the_gateway_at_start(self) -> None:
        """A 1024-bit RSA or a SHA1-signed certificate of the gateway itself is refused at start-up with a clear error."""
        for stem in ("rsa1024_server", "sha1_server"):
            gw = GatewayProcess(self.mktemp())
            gw.config["listen"] = [tls_listener(free_port("127.0.0.1"), self.m, certificate=getattr(self.h, stem),
                                                private_key=getattr(self.h, f"{stem}_key"))]
            gw.config_path.write_text(yaml.safe_dump(gw.config, sort_keys=False))
            with self.assertRaises(RuntimeError) as caught:
                gw.start(timeout=30)
            self.assertIn("too weak", str(caught.exception), stem)
            self.assertNotEqual(gw.returncode, 0)


class RenegotiationTests(HardeningGatewayMixin, TestCase):
    """Client-initiated renegotiation and compression (T14)."""

    timeout = 60

    def setUp(self) -> None:
        if OPENSSL is None:
            raise SkipTest("openssl is not installed")
        self.start_hardened()

    def test_renegotiation_is_refused_and_compression_is_off(self) -> None:
        """s_client -tls1_2 then "R": the gateway answers no_renegotiation, audits it; the session shows Compression: NONE."""
        client = subprocess.Popen(
            [OPENSSL, "s_client", "-connect", f"127.0.0.1:{self.tls_port}", "-tls1_2", "-CAfile", self.m.ca,
             "-cert", self.m.client, "-key", self.m.client_key],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.addCleanup(lambda: (client.kill(), client.wait()))
        assert client.stdin is not None and client.stdout is not None
        output = b""
        while b"Verify return code" not in output:  # the session summary is printed: the handshake is done
            chunk = client.stdout.read1(4096)  # type: ignore[attr-defined]
            self.assertTrue(chunk, output)
            output += chunk
        self.assertIn(b"Compression: NONE", output)
        self.assertIn(b"Protocol  : TLSv1.2", output)
        client.stdin.write(b"R\n")
        client.stdin.flush()
        self.assertEqual(self.wait_reasons(1), ["renegotiation"])
        # OpenSSL's client takes the no_renegotiation alert as fatal and leaves.
        output += client.stdout.read()
        self.assertEqual(client.wait(timeout=20), 1, output)
        self.assertIn(b"RENEGOTIATING", output)
        self.assertIn(b"no renegotiation", output)
        self.assertEqual(metric(self.gw, "renegotiation"), 1)
        self.assert_still_serving()


def client_hello(size: int) -> bytes:
    """A ClientHello of about ``size`` bytes (cipher suites and extensions padded), cut into 16 KiB TLS records."""
    half = (size // 2) & ~1
    suites = struct.pack("!H", 0xC02F) + b"\x0a\x0a" * (min(half, 65000) // 2 - 1)
    extensions = struct.pack("!HH", 0xFAFA, min(half, 65000)) + b"\x00" * min(half, 65000)
    body = (b"\x03\x03" + os.urandom(32) + b"\x00" + struct.pack("!H", len(suites)) + suites + b"\x01\x00"
            + struct.pack("!H", len(extensions)) + extensions)
    message = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"".join(b"\x16\x03\x01" + struct.pack("!H", len(chunk)) + chunk
                    for chunk in (message[i:i + 16384] for i in range(0, len(message), 16384)))


class OversizedHandshakeTests(HardeningGatewayMixin, TestCase):
    """A 100 KB ClientHello and a 100 KB client certificate: bounded memory, clean failure (T15)."""

    skip = dcmtk.skip_reason("echoscu")
    timeout = 120

    def setUp(self) -> None:
        self.start_hardened()

    def send_hello(self, hello: bytes) -> None:
        """Send ``hello`` on a raw connection and wait for the gateway to close it."""
        with socket.create_connection(("127.0.0.1", self.tls_port), timeout=10) as sock:
            try:
                sock.sendall(hello)
                while sock.recv(65536):
                    pass
            except (ConnectionResetError, BrokenPipeError):
                pass  # aborted by the gateway: a reset is a close too

    def send_big_certificate(self) -> None:
        """A mutual-TLS handshake presenting the 100 KB certificate; it must fail."""
        context = ssl.create_default_context(cafile=self.m.ca)
        context.load_cert_chain(self.h.big_client, self.h.big_client_key)
        answer = b""
        with socket.create_connection(("127.0.0.1", self.tls_port), timeout=10) as raw:
            try:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    # TLS 1.3: the client's certificate follows the server's Finished, so
                    # the client may think it is connected; the abort shows on the next read.
                    tls.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # an A-RELEASE-RQ
                    answer = tls.recv(100)
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
                pass
        self.assertEqual(answer, b"")  # never an A-RELEASE-RP or A-ABORT: no DICOM behind a failed handshake

    def test_oversized_hello_and_certificate_fail_cleanly_with_bounded_memory(self) -> None:
        """20 x 100 KB ClientHellos and 20 x 100 KB certificates: each closed as oversized, RSS grows < 6 MiB, echo still works."""
        hello = client_hello(100 * 1024)
        self.assertGreater(len(hello), 100 * 1024)
        # Warm-up: one of each, so allocator pools exist before the baseline.
        self.send_hello(hello)
        self.send_big_certificate()
        self.assert_still_serving()
        self.wait_reasons(2)
        baseline = rss_kib(self.gw.pid)
        rounds = 20
        for _ in range(rounds):
            self.send_hello(hello)
            self.send_big_certificate()
        reasons = self.wait_reasons(2 + 2 * rounds)
        grown = rss_kib(self.gw.pid) - baseline
        self.assertEqual(set(reasons), {"oversized"}, reasons)
        self.assertEqual(metric(self.gw, "oversized"), 2 + 2 * rounds)
        self.assertLess(grown, 6 * 1024, f"RSS grew by {grown} KiB")
        self.assert_still_serving()
        self.assertIsNone(self.gw.returncode)


class RawRecorder:
    """A TCP listener that keeps the first bytes of every connection and answers nothing (a port no TLS ever completes on)."""

    def __init__(self) -> None:
        import threading

        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.first_bytes: list[bytes] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.first_bytes.append(conn.recv(5))
                except OSError:
                    self.first_bytes.append(b"")

    def close(self) -> None:
        """Stop listening."""
        self.server.close()


class DestinationTLSFailureTests(HardeningGatewayMixin, TestCase):
    """TLS destinations with an expired certificate, another CA's, another name's; and no plain fallback (F20, T11)."""

    skip = dcmtk.skip_reason("storescu", "storescp")
    timeout = 180

    def send_one(self) -> None:
        """Send one CT instance to the gateway's plain listener."""
        source = Path(self.mktemp())
        source.mkdir()
        write_instance(source / "ct.dcm", "1.2.840.10008.1.2.1", 20000, seed=11)
        result = dcmtk.storescu(self.gw.port, [source / "ct.dcm"])
        self.assertEqual(result.returncode, 0, result.describe())

    def destination(self, port: int, ae_title: str = "STORESCP", **tls: str) -> dict[str, Any]:
        """A TLS destination trusting the test CA, presenting the gateway's certificate; circuit opens after 2 faults."""
        return dicom_destination(port, ae_title, tls=destination_tls(self.m, **tls), circuit={"failures": 2})

    def alerts(self, destination: str) -> list[dict[str, Any]]:
        """The destination's Security Alert records."""
        return [r for r in self.audit() if r.get("event") == "Security Alert"
                and r.get("extra", {}).get("destination") == destination]

    def test_bad_destination_certificates_are_refused_audited_and_retried(self) -> None:
        """Expired, other-CA and other-name certificates: nothing stored, entries kept, circuits open, a Security Alert per fault."""
        self.m, self.h = material(), hardening_material()
        peers = {
            "expired": (self.h.expired_server, self.h.expired_server_key, "expired"),
            "otherca": (self.h.otherca_server, self.h.otherca_server_key, "unknown_ca"),
            "wrongname": (self.m.wrongname, self.m.wrongname_key, "wrong_name"),
        }
        scps = {name: self.storescp(name, extra=["+tls", key, cert, "+cf", self.m.ca, "-rc"])
                for name, (cert, key, _label) in peers.items()}
        self.start_hardened(
            destinations={name: self.destination(scp.port) for name, scp in scps.items()},
            routes=[{"name": "all", "forward": list(scps)}],
        )
        self.send_one()

        def all_down() -> bool:
            rows = self.gw.queue_rows()
            return all(rows[name]["queued"] + rows[name]["in_flight"] == 1 and rows[name].get("circuit") == "open"
                       for name in scps)

        self.wait_for(self.gw, all_down, 60, "three open circuits with the entry kept")
        rows = self.gw.queue_rows()
        for name, (_cert, _key, label) in peers.items():
            self.assertIn("TLS failure", rows[name]["last_error"], name)
            self.assertEqual(rows[name]["dead"], 0, name)
            self.assertEqual(scps[name].files(), [], name)
            alerts = self.alerts(name)
            self.assertGreaterEqual(len(alerts), 2, name)  # one per fault: the circuit opened after 2
            self.assertEqual({a["extra"]["reason"] for a in alerts}, {label}, name)
            self.assertEqual(alerts[0]["event_type"], "Node Authentication")
            self.assertEqual(alerts[0]["participants"][1]["network_access_point"], f"127.0.0.1:{scps[name].port}")

    def test_no_plain_tcp_fallback_and_small_dh_refused(self) -> None:
        """A port that never completes TLS only ever sees TLS records; an s_server with 1024-bit DH is refused (T11 outbound)."""
        if OPENSSL is None:
            raise SkipTest("openssl is not installed")
        self.m, self.h = material(), hardening_material()
        recorder = RawRecorder()
        self.addCleanup(recorder.close)
        dh_port = free_port("127.0.0.1")
        dh_server = subprocess.Popen(
            [OPENSSL, "s_server", "-accept", f"127.0.0.1:{dh_port}", "-tls1_2", "-dhparam", self.h.dh1024,
             "-cipher", "DHE-RSA-AES128-GCM-SHA256:@SECLEVEL=0", "-cert", self.m.server, "-key", self.m.server_key],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.addCleanup(lambda: (dh_server.kill(), dh_server.wait()))
        wait_until(lambda: port_is_open("127.0.0.1", dh_port), 10, lambda: "s_server did not start")
        self.start_hardened(
            destinations={"silent": self.destination(recorder.port), "smalldh": self.destination(dh_port)},
            routes=[{"name": "all", "forward": ["silent", "smalldh"]}],
        )
        self.send_one()
        self.wait_for(self.gw, lambda: len(recorder.first_bytes) >= 3, 60, "three attempts at the silent port")
        self.assertEqual({first[:1] for first in recorder.first_bytes}, {b"\x16"}, recorder.first_bytes)  # handshake records only
        self.assertNotIn(b"\x01", {first[:1] for first in recorder.first_bytes})  # never an A-ASSOCIATE-RQ

        def dh_refused() -> bool:
            row = self.gw.queue_rows()["smalldh"]
            return "dh key too small" in (row.get("last_error") or "")

        self.wait_for(self.gw, dh_refused, 60, "the 1024-bit DH destination refused")
        self.assertEqual(self.gw.queue_rows()["smalldh"]["dead"], 0)
