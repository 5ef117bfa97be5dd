"""Tests for :mod:`gateway.tls`: profiles, peer identity, reload, failure labels (PS3.15 Annex B; HARDENING T04-T16)."""

from __future__ import annotations

import os
import shutil
import tempfile

from OpenSSL import SSL, crypto
from twisted.trial.unittest import SynchronousTestCase

from gateway.tls import (
    PROFILE_CIPHERS,
    ServerTLS,
    ServerTLSSettings,
    TLSConfigError,
    TLSProfile,
    build_server_context,
    classify_handshake_failure,
    key_mode_problem,
    peer_identity,
)
from gateway.tlsinit import issue, make_ca, write_certificate, write_key
from tests.support.certs import material


def _client_context(material_dir: object, *, cert: str = "", key: str = "", ca: str = "", version: int | None = None,
                    ciphers: str = "") -> SSL.Context:
    """A plain pyOpenSSL client context for in-memory handshakes."""
    context = SSL.Context(SSL.TLS_METHOD)
    if version is not None:
        context.set_min_proto_version(version)
        context.set_max_proto_version(version)
    if ciphers:
        context.set_cipher_list(ciphers.encode())
    if cert:
        context.use_certificate_file(cert)
        context.use_privatekey_file(key)
    if ca:
        context.load_verify_locations(ca)
        context.set_verify(SSL.VERIFY_PEER, lambda *args: bool(args[-1]))
    return context


class _Holder:
    """Stands in for the TLS wrapper protocol: the verify callback records errors on it."""

    def __init__(self) -> None:
        self.verify_errors: list[int] = []


def handshake(server_tls: ServerTLS, client_context: SSL.Context) -> tuple[SSL.Connection, SSL.Connection, BaseException | None]:
    """Run a TLS handshake between two memory-BIO connections.

    :returns: the server connection, the client connection and the server's error (or ``None``).
    """
    holder = _Holder()
    server = server_tls.serverConnectionForTLS(holder)
    server.set_accept_state()
    client = SSL.Connection(client_context, None)
    client.set_connect_state()
    client.set_tlsext_host_name(b"localhost")
    server_error: BaseException | None = None
    for _ in range(20):
        for side in (client, server):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error as error:
                if side is server:
                    server_error = error
                    server.verify_errors = holder.verify_errors  # type: ignore[attr-defined]
                    return server, client, error
                break
        # Shuttle bytes both ways.
        for source, sink in ((client, server), (server, client)):
            try:
                data = source.bio_read(65536)
            except SSL.WantReadError:
                continue
            sink.bio_write(data)
    server.verify_errors = holder.verify_errors  # type: ignore[attr-defined]
    return server, client, server_error


class ProfileTests(SynchronousTestCase):
    """The profiles allow TLS 1.2 and 1.3 with AEAD suites only (PS3.15 B.10, B.11)."""

    def setUp(self) -> None:
        self.m = material()

    def settings(self, **kw: object) -> ServerTLSSettings:
        """Settings for the test server certificate."""
        base = dict(certificate=self.m.server, private_key=self.m.server_key, ca=self.m.ca)
        base.update(kw)
        return ServerTLSSettings(**base)  # type: ignore[arg-type]

    def test_tls13_is_negotiated_when_the_client_offers_it(self) -> None:
        """A modern client gets TLS 1.3 (B.12: servers prefer 1.3; HARDENING T10)."""
        server, client, error = handshake(ServerTLS(self.settings()), _client_context(None, ca=self.m.ca))
        self.assertIsNone(error)
        self.assertEqual(server.get_protocol_version_name(), "TLSv1.3")

    def test_tls12_client_gets_an_aead_ecdhe_suite(self) -> None:
        """A TLS 1.2-only client is served with an ECDHE AES-GCM or ChaCha20 suite."""
        server, client, error = handshake(
            ServerTLS(self.settings()), _client_context(None, ca=self.m.ca, version=SSL.TLS1_2_VERSION)
        )
        self.assertIsNone(error)
        self.assertEqual(server.get_protocol_version_name(), "TLSv1.2")
        cipher = server.get_cipher_name()
        self.assertTrue(cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher), cipher)

    def test_tls11_client_is_refused(self) -> None:
        """A TLS 1.1 ClientHello fails, whatever the security level (HARDENING T08)."""
        client = _client_context(None, version=SSL.TLS1_1_VERSION, ciphers="DEFAULT:@SECLEVEL=0")
        _server, _client, error = handshake(ServerTLS(self.settings()), client)
        self.assertIsNotNone(error)
        self.assertEqual(classify_handshake_failure(error, []), "protocol_version")

    def test_cbc_only_client_finds_no_shared_cipher(self) -> None:
        """A TLS 1.2 client offering only AES-CBC-SHA1 is refused (HARDENING T09)."""
        client = _client_context(None, version=SSL.TLS1_2_VERSION, ciphers="AES128-SHA:ECDHE-RSA-AES128-SHA")
        _server, _client, error = handshake(ServerTLS(self.settings()), client)
        self.assertIsNotNone(error)
        self.assertEqual(classify_handshake_failure(error, []), "no_shared_cipher")

    def test_extended_profile_refuses_dhe(self) -> None:
        """The extended profile (B.11) offers ECDHE suites only."""
        self.assertNotIn("DHE-RSA", PROFILE_CIPHERS[TLSProfile.BCP195_EXTENDED].replace("ECDHE-RSA", ""))
        client = _client_context(None, version=SSL.TLS1_2_VERSION, ciphers="DHE-RSA-AES128-GCM-SHA256")
        _server, _client, error = handshake(ServerTLS(self.settings(profile=TLSProfile.BCP195_EXTENDED)), client)
        self.assertIsNotNone(error)

    def test_no_profile_allows_cbc_rc4_3des_or_null(self) -> None:
        """No weak suite appears in any profile's cipher string."""
        for ciphers in PROFILE_CIPHERS.values():
            for weak in ("CBC", "RC4", "DES", "NULL", "EXPORT", "anon", "-SHA:", "MD5"):
                self.assertNotIn(weak, ciphers + ":")

    def test_required_client_certificate_missing_fails(self) -> None:
        """Without a client certificate the handshake fails with reason no_certificate (HARDENING T05)."""
        server_tls = ServerTLS(self.settings(require_client_certificate=True))
        server, _client, error = handshake(server_tls, _client_context(None, ca=self.m.ca))
        self.assertIsNotNone(error)
        self.assertEqual(classify_handshake_failure(error, server.verify_errors), "no_certificate")  # type: ignore[attr-defined]

    def test_optional_client_certificate_missing_passes(self) -> None:
        """With a CA but no requirement, a client without a certificate gets in (HARDENING T05)."""
        server, _client, error = handshake(ServerTLS(self.settings()), _client_context(None, ca=self.m.ca))
        self.assertIsNone(error)
        self.assertIsNone(server.get_peer_certificate())

    def test_client_certificate_from_another_ca_is_unknown_ca(self) -> None:
        """A certificate signed by another CA fails with reason unknown_ca (HARDENING T04)."""
        client = _client_context(None, cert=self.m.other_client, key=self.m.other_client_key, ca=self.m.ca)
        server, _client, error = handshake(ServerTLS(self.settings(require_client_certificate=True)), client)
        self.assertIsNotNone(error)
        self.assertEqual(classify_handshake_failure(error, server.verify_errors), "unknown_ca")  # type: ignore[attr-defined]

    def test_expired_client_certificate_is_expired(self) -> None:
        """An expired certificate fails with its own reason label (HARDENING T06)."""
        client = _client_context(None, cert=self.m.expired_client, key=self.m.expired_client_key, ca=self.m.ca)
        server, _client, error = handshake(ServerTLS(self.settings(require_client_certificate=True)), client)
        self.assertIsNotNone(error)
        self.assertEqual(classify_handshake_failure(error, server.verify_errors), "expired")  # type: ignore[attr-defined]

    def test_valid_client_certificate_identity_is_read(self) -> None:
        """The verified client certificate's subject reaches the server side (HARDENING T03)."""
        client = _client_context(None, cert=self.m.client, key=self.m.client_key, ca=self.m.ca)
        server, _client, error = handshake(ServerTLS(self.settings(require_client_certificate=True)), client)
        self.assertIsNone(error)
        identity = peer_identity(server.get_peer_certificate())
        self.assertEqual(identity.subject, "CN=modality1,O=dicom-gateway tests")
        self.assertEqual(identity.issuer, "CN=dicom-gateway test CA,O=dicom-gateway tests")

    def test_require_client_certificate_without_ca_is_a_config_error(self) -> None:
        """Requiring client certificates with nothing to check them against is refused."""
        self.assertRaises(TLSConfigError, build_server_context, self.settings(ca="", require_client_certificate=True))

    def test_compression_and_renegotiation_are_off(self) -> None:
        """Every context disables compression and renegotiation (HARDENING T14)."""
        context = build_server_context(self.settings())
        options = context.set_options(0)
        self.assertTrue(options & SSL.OP_NO_COMPRESSION)
        self.assertTrue(options & SSL.OP_NO_RENEGOTIATION)
        self.assertTrue(options & SSL.OP_NO_TLSv1_1)


class PeerIdentityTests(SynchronousTestCase):
    """Subjects and subject alternative names of peer certificates."""

    def test_sans_are_listed_by_kind(self) -> None:
        """DNS names and IP addresses come back prefixed by their kind."""
        m = material()
        with open(m.server, "rb") as stream:
            cert = crypto.load_certificate(crypto.FILETYPE_PEM, stream.read())
        identity = peer_identity(cert)
        self.assertEqual(identity.sans, ("DNS:localhost", "IP:127.0.0.1"))
        self.assertEqual(identity.subject, "CN=dicom-gateway,O=dicom-gateway tests")
        self.assertTrue(identity.serial)


class ReloadTests(SynchronousTestCase):
    """Certificate and key reload (HARDENING T16)."""

    def setUp(self) -> None:
        self.m = material()
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.cert = os.path.join(self.dir, "gw.pem")
        self.key = os.path.join(self.dir, "gw-key.pem")
        shutil.copy(self.m.server, self.cert)
        shutil.copy(self.m.server_key, self.key)
        self.tls = ServerTLS(ServerTLSSettings(self.cert, self.key))

    def served_subject(self) -> str:
        """The subject of the certificate a new handshake sees."""
        server, client, error = handshake(self.tls, _client_context(None, ca=self.m.ca))
        self.assertIsNone(error)
        return peer_identity(client.get_peer_certificate()).subject

    def test_new_handshakes_see_the_renewed_certificate(self) -> None:
        """After the files change and reload succeeds, new handshakes get the new certificate."""
        self.assertIn("CN=dicom-gateway,", self.served_subject())
        shutil.copy(self.m.server2, self.cert)
        shutil.copy(self.m.server2_key, self.key)
        self.assertIsNone(self.tls.reload())
        self.assertIn("CN=dicom-gateway-renewed", self.served_subject())

    def test_connection_made_before_reload_keeps_its_context(self) -> None:
        """A connection created before the reload keeps the old context (running associations are not dropped)."""
        before = self.tls.serverConnectionForTLS(_Holder())
        shutil.copy(self.m.server2, self.cert)
        shutil.copy(self.m.server2_key, self.key)
        self.tls.reload()
        after = self.tls.serverConnectionForTLS(_Holder())
        self.assertIsNot(before.get_context(), after.get_context())

    def test_mismatched_key_is_refused_and_the_old_pair_stays(self) -> None:
        """A certificate with another certificate's key is refused with an error; the old pair keeps serving."""
        shutil.copy(self.m.server2, self.cert)  # key stays the old one: mismatch
        error = self.tls.reload()
        self.assertIsNotNone(error)
        self.assertIn("does not match", error)
        self.assertIn("CN=dicom-gateway,", self.served_subject())

    def test_missing_file_is_refused_and_the_old_pair_stays(self) -> None:
        """A missing certificate file is refused; the old context stays."""
        os.unlink(self.cert)
        error = self.tls.reload()
        self.assertIsNotNone(error)
        self.assertIn("cannot read", error)
        self.assertIn("CN=dicom-gateway,", self.served_subject())

    def test_garbage_certificate_is_refused(self) -> None:
        """A file without a PEM certificate is refused."""
        with open(self.cert, "w") as stream:
            stream.write("not a certificate\n")
        self.assertIn("no usable PEM certificate", self.tls.reload() or "")


class KeyModeTests(SynchronousTestCase):
    """The private key's file mode is checked at start-up (HARDENING T16)."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.key = os.path.join(self.dir, "k.pem")
        ca = make_ca()
        write_key(self.key, issue(ca, "x"))

    def test_owner_only_key_is_fine(self) -> None:
        """Mode 0600 raises no warning."""
        self.assertIsNone(key_mode_problem(self.key))

    def test_group_readable_key_is_reported(self) -> None:
        """Mode 0640 is reported with the mode in octal (the mode is read, not tested by opening as root)."""
        os.chmod(self.key, 0o640)
        problem = key_mode_problem(self.key)
        self.assertIsNotNone(problem)
        self.assertIn("0640", problem or "")

    def test_missing_key_is_reported(self) -> None:
        """A key that does not exist is reported, not raised."""
        self.assertIn("cannot stat", key_mode_problem(os.path.join(self.dir, "none.pem")) or "")


class ClassifyTests(SynchronousTestCase):
    """Reason labels for failed handshakes."""

    def test_verify_errors_win_over_text(self) -> None:
        """An X.509 error number decides the label (10 is expired)."""
        self.assertEqual(classify_handshake_failure(None, [10]), "expired")

    def test_plain_text_on_tls_port_is_not_tls(self) -> None:
        """OpenSSL's "wrong version number" means the peer spoke something else (HARDENING T01)."""
        error = SSL.Error([("SSL routines", "", "wrong version number")])
        self.assertEqual(classify_handshake_failure(error, []), "not_tls")

    def test_no_error_is_closed(self) -> None:
        """A connection that simply went away is labelled closed."""
        self.assertEqual(classify_handshake_failure(None, []), "closed")


class WriteHelpersTests(SynchronousTestCase):
    """The PEM helpers the tests and ``tls init`` share."""

    def test_chain_file_holds_every_certificate(self) -> None:
        """write_certificate writes the leaf then the chain."""
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        ca = make_ca()
        leaf = issue(ca, "leaf")
        path = os.path.join(folder, "chain.pem")
        write_certificate(path, leaf, ca)
        with open(path) as stream:
            self.assertEqual(stream.read().count("BEGIN CERTIFICATE"), 2)


class WeakKeyTests(SynchronousTestCase):
    """Weak keys are refused on both sides (HARDENING T11; PS3.15 B.10/B.11 key lengths)."""

    def setUp(self) -> None:
        self.m = material()
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        ca = make_ca("weak test CA")
        self.ca_path = os.path.join(self.dir, "ca.pem")
        write_certificate(self.ca_path, ca)
        weak = issue(ca, "weak", names=("localhost",), key_bits=1024)
        self.cert = os.path.join(self.dir, "weak.pem")
        self.key = os.path.join(self.dir, "weak-key.pem")
        write_certificate(self.cert, weak)
        write_key(self.key, weak)

    def test_weak_server_key_is_a_config_error(self) -> None:
        """A 1024-bit RSA gateway key is refused when the context is built."""
        error = self.assertRaises(TLSConfigError, build_server_context, ServerTLSSettings(self.cert, self.key))
        self.assertIn("too weak", str(error))

    def test_weak_client_key_fails_the_handshake(self) -> None:
        """A client presenting a 1024-bit RSA certificate fails with reason weak_key."""
        server_tls = ServerTLS(ServerTLSSettings(self.m.server, self.m.server_key, self.ca_path, True))
        client = _client_context(None, cert=self.cert, key=self.key, ciphers="DEFAULT:@SECLEVEL=0")
        server, _client, error = handshake(server_tls, client)
        self.assertIsNotNone(error)
        self.assertEqual(classify_handshake_failure(error, server.verify_errors), "weak_key")  # type: ignore[attr-defined]
