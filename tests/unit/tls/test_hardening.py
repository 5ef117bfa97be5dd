"""Client certificate checks, CRLs, weak keys and bounded handshakes of :mod:`gateway.tls` (HARDENING T06, T11, T14, T15).

Handshakes run in memory between two pyOpenSSL connections
(:func:`tests.unit.tls.test_context.handshake`); the interop module
``tests.interop.test_tls_hardening`` runs the same cases with real clients.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.config.errors import ConfigErrors
from gateway.config.load import load_config_text
from gateway.tls import (
    HANDSHAKE_FAILURE_REASONS,
    MAX_HANDSHAKE_BYTES,
    ServerTLS,
    ServerTLSSettings,
    TLSConfigError,
    TLSListenerFactory,
    build_server_context,
    classify_handshake_failure,
)
from tests.support.certs import hardening_material, material
from tests.unit.tls.test_context import _client_context, handshake


class ClientCertificateTests(SynchronousTestCase):
    """Each bad client certificate fails with its own reason label (T06)."""

    def setUp(self) -> None:
        self.m = material()
        self.h = hardening_material()

    def reason(self, stem: str, crl: str = "", ciphers: str = "") -> str:
        """The reason label of a handshake with the client certificate ``stem`` of the hardening material."""
        settings = ServerTLSSettings(self.m.server, self.m.server_key, self.m.ca, True, crl=crl)
        client = _client_context(None, cert=getattr(self.h, stem), key=getattr(self.h, f"{stem}_key"), ca=self.m.ca,
                                 ciphers=ciphers)
        server, _client, error = handshake(ServerTLS(settings), client)
        self.assertIsNotNone(error, f"{stem} was accepted")
        label = classify_handshake_failure(error, server.verify_errors)  # type: ignore[attr-defined]
        self.assertIn(label, HANDSHAKE_FAILURE_REASONS)
        return label

    def test_not_yet_valid_certificate(self) -> None:
        """A certificate valid from next month fails with not_yet_valid."""
        self.assertEqual(self.reason("notyet_client"), "not_yet_valid")

    def test_revoked_certificate(self) -> None:
        """A certificate the CRL lists fails with revoked."""
        self.assertEqual(self.reason("revoked_client", crl=self.h.crl_revoked), "revoked")

    def test_certificate_not_in_the_crl_passes(self) -> None:
        """With the CRL loaded, a certificate it does not list still gets in (the check is not a blanket refusal)."""
        settings = ServerTLSSettings(self.m.server, self.m.server_key, self.m.ca, True, crl=self.h.crl_revoked)
        client = _client_context(None, cert=self.m.client, key=self.m.client_key, ca=self.m.ca)
        _server, _client, error = handshake(ServerTLS(settings), client)
        self.assertIsNone(error)

    def test_revoked_certificate_passes_without_crl(self) -> None:
        """Without a CRL the same certificate is accepted: the CRL is what refuses it."""
        settings = ServerTLSSettings(self.m.server, self.m.server_key, self.m.ca, True)
        client = _client_context(None, cert=self.h.revoked_client, key=self.h.revoked_client_key, ca=self.m.ca)
        _server, _client, error = handshake(ServerTLS(settings), client)
        self.assertIsNone(error)

    def test_server_auth_only_certificate(self) -> None:
        """Extended key usage serverAuth without clientAuth fails with wrong_key_usage."""
        self.assertEqual(self.reason("serveronly_client"), "wrong_key_usage")

    def test_key_cert_sign_only_certificate(self) -> None:
        """Key usage keyCertSign alone (no digitalSignature) fails with wrong_key_usage."""
        self.assertEqual(self.reason("certsign_client"), "wrong_key_usage")

    def test_the_four_failures_have_distinct_labels(self) -> None:
        """Expired, not yet valid, revoked and wrong key usage are told apart (T06)."""
        labels = {
            self.reason("notyet_client"),
            self.reason("revoked_client", crl=self.h.crl_revoked),
            self.reason("serveronly_client"),
            classify_handshake_failure(None, [10]),
        }
        self.assertEqual(labels, {"not_yet_valid", "revoked", "wrong_key_usage", "expired"})


class CRLFileTests(SynchronousTestCase):
    """The ``crl`` file is checked when the context is built (at start, ``check`` and SIGHUP)."""

    def setUp(self) -> None:
        self.m = material()
        self.h = hardening_material()
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)

    def settings(self, crl: str, ca: str = "") -> ServerTLSSettings:
        """Listener settings with ``crl``."""
        return ServerTLSSettings(self.m.server, self.m.server_key, ca or self.m.ca, True, crl=crl)

    def test_missing_file_is_a_config_error(self) -> None:
        """A CRL that cannot be read is refused with its path."""
        error = self.assertRaises(TLSConfigError, build_server_context, self.settings("/nonexistent/crl.pem"))
        self.assertIn("cannot read the CRL file /nonexistent/crl.pem", str(error))

    def test_file_without_a_crl_is_a_config_error(self) -> None:
        """A certificate where a CRL is expected is refused."""
        error = self.assertRaises(TLSConfigError, build_server_context, self.settings(self.m.ca))
        self.assertIn("holds no PEM certificate revocation list", str(error))

    def test_crl_of_another_ca_is_a_config_error(self) -> None:
        """A CRL that none of the trusted CAs signed is refused (every client would fail otherwise)."""
        error = self.assertRaises(TLSConfigError, build_server_context, self.settings(self.h.other_crl))
        self.assertIn("is not signed by a CA of", str(error))

    def test_crl_without_ca_is_a_config_error(self) -> None:
        """A CRL without client certificate checking is refused."""
        settings = ServerTLSSettings(self.m.server, self.m.server_key, crl=self.h.crl_empty)
        self.assertRaises(TLSConfigError, build_server_context, settings)

    def test_several_crls_in_one_file_are_all_loaded(self) -> None:
        """A file with the CRLs of both CAs is accepted when both CAs are trusted, and revokes."""
        both_ca = os.path.join(self.dir, "cas.pem")
        both_crl = os.path.join(self.dir, "crls.pem")
        with open(both_ca, "wb") as out:
            out.write(open(self.m.ca, "rb").read() + open(self.m.other_ca, "rb").read())
        with open(both_crl, "wb") as out:
            out.write(open(self.h.other_crl, "rb").read() + open(self.h.crl_revoked, "rb").read())
        server_tls = ServerTLS(self.settings(both_crl, both_ca))
        client = _client_context(None, cert=self.h.revoked_client, key=self.h.revoked_client_key, ca=self.m.ca)
        server, _client, error = handshake(server_tls, client)
        self.assertEqual(classify_handshake_failure(error, server.verify_errors), "revoked")  # type: ignore[attr-defined]

    def test_reload_reads_the_new_crl(self) -> None:
        """reload() re-reads the CRL file: a certificate revoked since start-up is then refused (SIGHUP)."""
        crl = os.path.join(self.dir, "crl.pem")
        shutil.copy(self.h.crl_empty, crl)
        server_tls = ServerTLS(self.settings(crl))
        client = lambda: _client_context(  # noqa: E731
            None, cert=self.h.revoked_client, key=self.h.revoked_client_key, ca=self.m.ca
        )
        self.assertIsNone(handshake(server_tls, client())[2])
        shutil.copy(self.h.crl_revoked, crl)
        self.assertIsNone(server_tls.reload())
        server, _client, error = handshake(server_tls, client())
        self.assertEqual(classify_handshake_failure(error, server.verify_errors), "revoked")  # type: ignore[attr-defined]

    def test_unusable_new_crl_keeps_the_old_context(self) -> None:
        """A reload with a broken CRL file is refused with the error; the running context stays."""
        crl = os.path.join(self.dir, "crl.pem")
        shutil.copy(self.h.crl_revoked, crl)
        server_tls = ServerTLS(self.settings(crl))
        with open(crl, "w") as out:
            out.write("-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n")
        self.assertIn("cannot be read", server_tls.reload() or "")
        client = _client_context(None, cert=self.h.revoked_client, key=self.h.revoked_client_key, ca=self.m.ca)
        server, _client, error = handshake(server_tls, client)
        self.assertEqual(classify_handshake_failure(error, server.verify_errors), "revoked")  # type: ignore[attr-defined]


class CRLConfigTests(SynchronousTestCase):
    """The ``listen[i].tls.crl`` key of the configuration."""

    def load(self, tls: str) -> object:
        """Load a configuration with one TLS listener whose ``tls`` block is ``tls``."""
        text = f"ae_title: GW\nspool: /tmp/spool\nlisten:\n  - host: 0.0.0.0\n    port: 2762\n    tls: {tls}\n"
        return load_config_text(text, "gw.yaml", "/etc/gw")

    def test_crl_path_is_made_absolute(self) -> None:
        """``crl`` is a path relative to the configuration file, like the other TLS files."""
        config = self.load("{certificate: gw.pem, private_key: gw-key.pem, ca: ca.pem, crl: tls/ca.crl}")
        self.assertEqual(config.listen[0].tls.crl, "/etc/gw/tls/ca.crl")  # type: ignore[attr-defined]

    def test_crl_defaults_to_none(self) -> None:
        """Without ``crl`` there is no revocation check."""
        config = self.load("{certificate: gw.pem, private_key: gw-key.pem, ca: ca.pem}")
        self.assertEqual(config.listen[0].tls.crl, "")  # type: ignore[attr-defined]

    def test_crl_without_ca_is_an_error_with_its_line(self) -> None:
        """A ``crl`` without ``ca`` is reported at its key path and line."""
        with self.assertRaises(ConfigErrors) as caught:
            self.load("{certificate: gw.pem, private_key: gw-key.pem, crl: ca.crl}")
        text = str(caught.exception)
        self.assertIn("listen[0].tls.crl", text)
        self.assertIn("needs 'ca'", text)
        self.assertIn("gw.yaml:6", text)

    def test_crl_of_the_wrong_type_is_an_error(self) -> None:
        """A ``crl`` that is not a string is refused."""
        with self.assertRaises(ConfigErrors) as caught:
            self.load("{certificate: gw.pem, private_key: gw-key.pem, ca: ca.pem, crl: [a, b]}")
        self.assertIn("listen[0].tls.crl", str(caught.exception))

    def test_check_material_reports_an_unusable_crl(self) -> None:
        """``check`` and ``run`` report a CRL of an untrusted CA as one line, not a traceback."""
        from gateway.security import check_material

        m, h = material(), hardening_material()
        config = self.load(f"{{certificate: {m.server}, private_key: {m.server_key}, ca: {m.ca}, crl: {h.other_crl}}}")
        problems = check_material(config)  # type: ignore[arg-type]
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("is not signed by a CA of", problems[0])


class WeakKeyTests(SynchronousTestCase):
    """RSA 512/1024 and MD5/SHA1 signatures are refused, ours at load and the client's at the handshake (T11)."""

    def setUp(self) -> None:
        self.m = material()
        self.h = hardening_material()

    def client_reason(self, stem: str) -> str:
        """The reason label of a TLS 1.2 handshake with the weak client certificate ``stem`` (client at SECLEVEL 0).

        TLS 1.2, because a 512-bit RSA key cannot make the RSA-PSS signature
        TLS 1.3 needs: the client would then send no certificate at all.
        """
        from OpenSSL import SSL

        settings = ServerTLSSettings(self.m.server, self.m.server_key, self.m.ca, True)
        client = _client_context(None, cert=getattr(self.h, stem), key=getattr(self.h, f"{stem}_key"),
                                 ciphers="DEFAULT:@SECLEVEL=0", version=SSL.TLS1_2_VERSION)
        server, _client, error = handshake(ServerTLS(settings), client)
        self.assertIsNotNone(error, f"{stem} was accepted")
        return classify_handshake_failure(error, server.verify_errors)  # type: ignore[attr-defined]

    def test_rsa512_client_key(self) -> None:
        """A 512-bit RSA client certificate fails with weak_key."""
        self.assertEqual(self.client_reason("rsa512_client"), "weak_key")

    def test_sha1_signed_client_certificate(self) -> None:
        """A SHA1-signed client certificate fails with weak_signature."""
        self.assertEqual(self.client_reason("sha1_client"), "weak_signature")

    def test_md5_signed_client_certificate(self) -> None:
        """An MD5-signed client certificate fails with weak_signature."""
        self.assertEqual(self.client_reason("md5_client"), "weak_signature")

    def test_own_sha1_certificate_is_refused_at_load(self) -> None:
        """The gateway refuses to start with a SHA1-signed certificate, saying it is too weak."""
        error = self.assertRaises(TLSConfigError, build_server_context,
                                  ServerTLSSettings(self.h.sha1_server, self.h.sha1_server_key))
        self.assertIn("too weak", str(error))

    def test_own_rsa1024_key_is_refused_at_load(self) -> None:
        """The gateway refuses to start with a 1024-bit RSA key."""
        error = self.assertRaises(TLSConfigError, build_server_context,
                                  ServerTLSSettings(self.h.rsa1024_server, self.h.rsa1024_server_key))
        self.assertIn("too weak", str(error))

    def test_security_level_is_pinned_against_a_weaker_system_configuration(self) -> None:
        """With an OpenSSL configuration at SECLEVEL 0, a plain context takes a 1024-bit key, ours still refuses it."""
        import subprocess
        import sys

        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        conf = os.path.join(folder, "openssl.cnf")
        with open(conf, "w") as out:
            out.write(
                "openssl_conf = init\n[init]\nssl_conf = ssl\n[ssl]\nsystem_default = weak\n"
                "[weak]\nCipherString = DEFAULT@SECLEVEL=0\n"
            )
        script = (
            "import sys\n"
            "from OpenSSL import SSL\n"
            "from gateway.tls import ServerTLSSettings, TLSConfigError, build_server_context\n"
            "plain = SSL.Context(SSL.TLS_METHOD)\n"
            "plain.use_certificate_file(sys.argv[1]); plain.use_privatekey_file(sys.argv[2])\n"
            "print('plain context accepted the weak key')\n"
            "try:\n"
            "    build_server_context(ServerTLSSettings(sys.argv[1], sys.argv[2]))\n"
            "except TLSConfigError as error:\n"
            "    print('gateway refused:', error)\n"
        )
        import gateway

        root = os.path.dirname(os.path.dirname(os.path.abspath(gateway.__file__)))
        env = dict(os.environ, OPENSSL_CONF=conf, PYTHONPATH=root)
        result = subprocess.run([sys.executable, "-c", script, self.h.rsa1024_server, self.h.rsa1024_server_key],
                                capture_output=True, text=True, env=env, timeout=60)
        self.assertIn("plain context accepted the weak key", result.stdout, result.stderr)
        self.assertIn("gateway refused:", result.stdout, result.stderr)
        self.assertIn("too weak", result.stdout)


class _Sink(Protocol):
    """The wrapped application protocol: records what reaches it."""

    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        """Keep the bytes."""
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        """Note the close."""
        self.lost = True


class BoundedHandshakeTests(SynchronousTestCase):
    """A client sending more than MAX_HANDSHAKE_BYTES before the handshake ends is aborted (T15)."""

    def setUp(self) -> None:
        m = material()
        self.failures: list[tuple[str, str]] = []
        self.factory = TLSListenerFactory(
            ServerTLS(ServerTLSSettings(m.server, m.server_key)),
            Factory.forProtocol(_Sink),
            Clock(),
            10.0,
            lambda peer, label, detail: self.failures.append((peer, label)),
        )

    def connect(self) -> tuple[Protocol, StringTransport]:
        """A server-side TLS protocol on a string transport."""
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        protocol.makeConnection(transport)
        return protocol, transport

    def test_oversized_hello_is_aborted_and_labelled(self) -> None:
        """100 KB of ClientHello records: the transport is aborted once the cap is passed; reason oversized."""
        protocol, transport = self.connect()
        hello = b"\x16\x03\x01\x40\x00\x01\x01\x86\xa0" + b"\x00" * (16 * 1024 - 4)
        fed = 0
        while not transport.disconnecting and fed < 100 * 1024:
            protocol.dataReceived(hello if fed == 0 else b"\x16\x03\x03\x40\x00" + b"\x00" * 16 * 1024)
            fed += 16 * 1024
        self.assertTrue(transport.disconnecting)
        self.assertLessEqual(fed, MAX_HANDSHAKE_BYTES + 16 * 1024 + 5)
        self.assertEqual(self.failures, [("127.0.0.1:5000", "oversized")])

    def test_handshake_under_the_cap_is_not_aborted(self) -> None:
        """A short partial ClientHello only waits (the deadline deals with it)."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.failures, [])

    def test_oversized_message_error_is_labelled_oversized(self) -> None:
        """OpenSSL's own "excessive message size" also maps to oversized."""
        from OpenSSL import SSL

        error = SSL.Error([("SSL routines", "", "excessive message size")])
        self.assertEqual(classify_handshake_failure(error, []), "oversized")


class DestinationFailureAuditTests(SynchronousTestCase):
    """A TLS failure of a destination is a Security Alert with a reason label (F20)."""

    def test_labels_of_destination_failures(self) -> None:
        """Expired, unknown CA and wrong name are told apart; a non-TLS fault has no label."""
        from gateway.tls import destination_failure_label

        self.assertEqual(destination_failure_label("TLS failure: certificate verify failed: certificate has expired"), "expired")
        self.assertEqual(
            destination_failure_label("TLS failure: certificate verify failed: unable to get local issuer certificate"),
            "unknown_ca",
        )
        self.assertEqual(
            destination_failure_label("TLS failure: server certificate does not match the expected name (x)"), "wrong_name"
        )
        self.assertEqual(destination_failure_label("TLS failure: dh key too small"), "weak_key")
        self.assertIsNone(destination_failure_label("ConnectionRefusedError: connection refused"))

    def test_tls_fault_is_audited_and_passed_on_other_faults_only_passed_on(self) -> None:
        """The auditing observer writes one Security Alert per TLS fault and none for a refused connection; both reach the metrics."""
        from dataclasses import dataclass

        from gateway.audit import AuditTrail, MemorySink
        from gateway.events import DestinationFault, FanOutObserver
        from gateway.forward_types import ForwardObserver
        from gateway.security import AuditObserver

        @dataclass
        class Destination:
            ae_title: str = "ARCHIVE"
            host: str = "10.0.0.9"
            port: int = 2762

        faults: list[str] = []

        class Inner(ForwardObserver):
            def destination_fault(self, name: str, reason: str, permanent: bool) -> None:
                faults.append(reason)

        sink = MemorySink()
        observer = FanOutObserver(AuditObserver(AuditTrail([sink], ae_title="GW"), lambda: {"pacs": Destination()}), Inner())
        observer.observe(DestinationFault("pacs", "TLS failure: certificate verify failed: certificate has expired", False,
                                          "expired"))
        observer.observe(DestinationFault("pacs", "ConnectionRefusedError: refused", False))
        self.assertEqual(len(faults), 2)
        self.assertEqual(len(sink.records), 1)
        record = sink.records[0]
        self.assertEqual((record.event, record.event_type, record.disposition), ("Security Alert", "Node Authentication", "tls_failure"))
        self.assertEqual(record.extra, {"destination": "pacs", "reason": "expired"})
        self.assertEqual(record.participants[1].network_access_point, "10.0.0.9:2762")
