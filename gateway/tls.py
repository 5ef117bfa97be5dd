"""DICOM TLS: secure transport connection profiles, peer identity and reloadable contexts (PS3.15 Annex B).

This module is the only place that talks to pyOpenSSL. It builds:

* **server contexts** for TLS listeners (:func:`build_server_context`), held by
  a :class:`ServerTLS` that Twisted asks for one ``SSL.Connection`` per
  accepted connection, and that can :meth:`~ServerTLS.reload` its
  certificate and key on SIGHUP without touching connections already made
  (each ``SSL.Connection`` keeps the context it was created from);
* **client connection creators** for TLS destinations
  (:func:`client_creator`), built on Twisted's ``optionsForClientTLS`` so the
  server's certificate is verified against the configured CA *and* its name
  checked with service-identity (RFC 6125; HARDENING T12);
* a **wrapping factory** (:class:`TLSListenerFactory`) that puts TLS under an
  acceptor factory, closes connections whose handshake does not finish by a
  deadline (HARDENING T13: no half-open TLS connection outlives ARTIM) and
  reports every failed handshake with a short reason label (T04-T09), out of
  the bounded set :data:`HANDSHAKE_FAILURE_REASONS` (metric label values; the
  labels and their classification live in the leaf :mod:`gateway.tlslabels`).

Profiles (PS3.15 Annex B)
-------------------------
Only two profiles are offered; both refuse SSLv3, TLS 1.0 and TLS 1.1 at any
security level, because the minimum protocol version is set on the context
itself (not left to the OpenSSL configuration file):

* ``bcp195-nd``, the default: the *Non-Downgrading BCP 195 TLS Secure
  Transport Connection Profile* (PS3.15 B.10). TLS 1.2 and 1.3 only; the
  BCP 195 (RFC 7525 section 4.2) recommended suites, all with forward
  secrecy and AEAD encryption: ECDHE or DHE with AES-GCM, plus
  ChaCha20-Poly1305 (RFC 7905), which OpenSSL offers under the same rules.
* ``bcp195-extended``: the *Extended BCP 195 TLS Profile* (PS3.15 B.11):
  TLS 1.2 and 1.3, ECDHE only, with AES-GCM suites for ECDSA and RSA keys.

The plain BCP 195 profile (PS3.15 B.9), which allows a fallback to older
versions, is deliberately not offered. TLS 1.3's own suites are all AEAD
with forward secrecy (RFC 8446 section 9.1), so both profiles allow the
three standard ones. Compression (CRIME) and client-initiated renegotiation
are disabled on every context (HARDENING T14); a refused renegotiation
attempt is reported like a failed handshake (reason ``renegotiation``).

Key strength (HARDENING T11) is pinned with ``@SECLEVEL=2`` in the cipher
string, whatever the system OpenSSL configuration says: RSA and DH keys of
at least 2048 bits, ECC of 224, and no MD5- or SHA1-signed certificate
(OpenSSL counts SHA1 below 80 bits of security), for the gateway's own
certificate at load and for client certificates at the handshake. PS3.15
B.10/B.11 point to BCP 195, which asks for 2048-bit RSA/DH at least
(RFC 7525 section 4.5).

Revocation
----------
A listener's optional ``crl`` file (PEM, one or more CRLs of the CAs in
``ca``) is loaded into the context's X509 store with ``CRL_CHECK``: a
client certificate whose issuer has no CRL in the file, or that the CRL
lists, fails the handshake (``crl_unavailable`` / ``revoked``). It is read
again with the certificate on SIGHUP.

Bounded handshakes
------------------
A client that sends more than :data:`MAX_HANDSHAKE_BYTES` before its
handshake finishes (a 100 KB ClientHello, a huge certificate chain) is
aborted with the reason ``oversized`` before OpenSSL buffers it (HARDENING
T15); a legitimate handshake, client certificate chain included, is a few
kilobytes.

Peer identity
-------------
:func:`peer_identity` reads a verified peer certificate into a
:class:`PeerIdentity`: the subject as an RFC 4514 string (``CN=ct1,O=Site``),
which access control maps to calling AE titles and routing sees as
``tls_subject``, and the subject alternative names.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509.oid import ExtensionOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl as _tssl
from twisted.internet.error import VerifyError
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

# The failure labels live in a leaf module; the public names are re-exported here.
from gateway.tlslabels import (
    _VERIFY_TEXT,
    HANDSHAKE_FAILURE_REASONS,
    _ssl_reason,
    classify_handshake_failure,
    destination_failure_label,
)


class TLSProfile(Enum):
    """The secure transport connection profiles we offer (PS3.15 Annex B)."""

    #: Non-Downgrading BCP 195 TLS Secure Transport Connection Profile (PS3.15 B.10).
    BCP195_ND = "bcp195-nd"
    #: Extended BCP 195 TLS Profile (PS3.15 B.11).
    BCP195_EXTENDED = "bcp195-extended"


#: OpenSSL cipher strings for TLS 1.2, per profile. BCP 195 (RFC 7525 4.2)
#: recommends ECDHE/DHE with AES-GCM; ChaCha20-Poly1305 (RFC 7905) has the
#: same properties (forward secrecy, AEAD). No CBC, RC4, 3DES, NULL,
#: anonymous or export suite can ever be negotiated (HARDENING T09).
PROFILE_CIPHERS: dict[TLSProfile, str] = {
    TLSProfile.BCP195_ND: ":".join(
        (
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "ECDHE-RSA-AES128-GCM-SHA256",
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-RSA-AES256-GCM-SHA384",
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            "ECDHE-RSA-CHACHA20-POLY1305",
            "DHE-RSA-AES128-GCM-SHA256",
            "DHE-RSA-AES256-GCM-SHA384",
        )
    ),
    # PS3.15 B.11: ECDHE key exchange with AES-GCM only.
    TLSProfile.BCP195_EXTENDED: ":".join(
        (
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-RSA-AES128-GCM-SHA256",
            "ECDHE-RSA-AES256-GCM-SHA384",
        )
    ),
}

#: TLS 1.3 suites (RFC 8446 9.1): every one is AEAD with forward secrecy.
TLS13_SUITES = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"

#: Options set on every context: no SSLv2/3, TLS 1.0/1.1 (belt and braces
#: with the minimum version), no compression (CRIME), no renegotiation
#: (HARDENING T14), fresh ephemeral keys, our cipher order.
_CONTEXT_OPTIONS = (
    SSL.OP_NO_SSLv2
    | SSL.OP_NO_SSLv3
    | SSL.OP_NO_TLSv1
    | SSL.OP_NO_TLSv1_1
    | SSL.OP_NO_COMPRESSION
    | SSL.OP_NO_RENEGOTIATION
    | SSL.OP_SINGLE_DH_USE
    | SSL.OP_SINGLE_ECDH_USE
    | SSL.OP_CIPHER_SERVER_PREFERENCE
)

#: Bytes a client may send before its handshake completes (HARDENING T15).
#: ClientHello and client certificate chain together are normally under
#: 10 KiB; OpenSSL itself would buffer a ClientHello of up to 128 KiB and a
#: certificate chain of up to 100 KiB per connection.
MAX_HANDSHAKE_BYTES = 64 * 1024

#: OpenSSL alert description no_renegotiation (RFC 5246 7.2.2), sent by a
#: context with ``OP_NO_RENEGOTIATION`` to a client asking to renegotiate.
_ALERT_NO_RENEGOTIATION = 100


class TLSConfigError(Exception):
    """A certificate, key or CA file cannot be used (missing, unreadable, mismatched)."""


@dataclass(frozen=True)
class ServerTLSSettings:
    """What a TLS listener needs; built from the ``tls`` block of a ``listen`` entry.

    :ivar certificate: PEM file with the gateway's certificate (and chain).
    :ivar private_key: PEM file with its private key.
    :ivar ca: PEM file of CA certificates that client certificates must chain
        to; empty means client certificates are neither asked for nor checked.
    :ivar require_client_certificate: fail the handshake of a client that
        presents no certificate signed by ``ca``.
    :ivar profile: the secure transport connection profile.
    :ivar crl: PEM file of certificate revocation lists of the CAs in
        ``ca``; empty means no revocation check.
    """

    certificate: str
    private_key: str
    ca: str = ""
    require_client_certificate: bool = False
    profile: TLSProfile = TLSProfile.BCP195_ND
    crl: str = ""


@dataclass(frozen=True)
class ClientTLSSettings:
    """What a TLS destination needs; built from a destination's ``tls`` block.

    :ivar ca: PEM file of CA certificates the server's certificate must chain to.
    :ivar server_name: the name (DNS name or IP address) the server's
        certificate must carry (RFC 6125); the destination's host by default.
    :ivar certificate: our client certificate for mutual authentication, if any.
    :ivar private_key: its private key.
    :ivar profile: the secure transport connection profile.
    """

    ca: str
    server_name: str = ""
    certificate: str = ""
    private_key: str = ""
    profile: TLSProfile = TLSProfile.BCP195_ND


@dataclass(frozen=True)
class PeerIdentity:
    """The identity a verified peer certificate carries.

    :ivar subject: the subject distinguished name, RFC 4514 string.
    :ivar issuer: the issuer distinguished name, RFC 4514 string.
    :ivar sans: subject alternative names as ``DNS:name``, ``IP:addr``,
        ``email:addr`` or ``URI:uri``.
    :ivar serial: the certificate's serial number, hexadecimal.
    """

    subject: str
    issuer: str = ""
    sans: tuple[str, ...] = field(default=())
    serial: str = ""


def peer_identity(certificate: crypto.X509 | x509.Certificate) -> PeerIdentity:
    """Read the identity of a peer certificate.

    :param certificate: the certificate, from ``transport.getPeerCertificate()``
        or parsed by ``cryptography``.
    :returns: its subject, issuer, serial and subject alternative names.
    """
    cert = certificate.to_cryptography() if isinstance(certificate, crypto.X509) else certificate
    sans: list[str] = []
    try:
        extension = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        extension = None
    if extension is not None:
        names = extension.value
        assert isinstance(names, x509.SubjectAlternativeName)
        sans.extend(f"DNS:{name}" for name in names.get_values_for_type(x509.DNSName))
        sans.extend(f"IP:{address}" for address in names.get_values_for_type(x509.IPAddress))
        sans.extend(f"email:{mail}" for mail in names.get_values_for_type(x509.RFC822Name))
        sans.extend(f"URI:{uri}" for uri in names.get_values_for_type(x509.UniformResourceIdentifier))
    return PeerIdentity(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sans=tuple(sans),
        serial=format(cert.serial_number, "x"),
    )


def transport_peer_identity(transport: Any) -> PeerIdentity | None:
    """The verified peer identity of a TLS transport, or ``None`` (plain TCP, or no client certificate).

    :param transport: a Twisted transport; TLS transports have ``getPeerCertificate``.
    :returns: the identity or ``None``.
    """
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    try:
        certificate = get()
    except (SSL.Error, AttributeError):
        return None
    if certificate is None:
        return None
    return peer_identity(certificate)


def key_mode_problem(path: str) -> str | None:
    """Check that a private key file is not readable by group or others (HARDENING T16).

    :param path: the key file.
    :returns: a warning to log, or ``None`` when the mode is 0600 or stricter.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        return f"cannot stat private key {path}: {error.strerror or error}"
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"private key {path} has mode {stat.S_IMODE(mode):04o}; it should be 0600 (readable by its owner only)"
    return None


def _read(path: str, what: str) -> bytes:
    """Read a PEM file, turning ``OSError`` into :class:`TLSConfigError`."""
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as error:
        raise TLSConfigError(f"cannot read the {what} {path}: {error.strerror or error}") from error


def _base_context(method_profile: TLSProfile) -> SSL.Context:
    """A context with the profile's versions, suites and options, and nothing else.

    PS3.15 B.10/B.11: TLS 1.2 is the minimum, TLS 1.3 preferred when both
    sides have it (OpenSSL always picks the highest common version).
    """
    context = SSL.Context(SSL.TLS_METHOD)
    # The floor is set here, not by the OpenSSL configuration file, so a
    # "MinProtocol = TLSv1" in /etc/ssl/openssl.cnf cannot lower it (T08).
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(_CONTEXT_OPTIONS)
    # @SECLEVEL=2 (HARDENING T11): 2048-bit RSA/DH at least, no MD5/SHA1
    # certificate signatures, even if the system configuration asks for less.
    context.set_cipher_list(f"{PROFILE_CIPHERS[method_profile]}:@SECLEVEL=2".encode("ascii"))
    context.set_tls13_ciphersuites(TLS13_SUITES.encode("ascii"))
    return context


#: Signature hashes no certificate of ours may be signed with (HARDENING T11).
_WEAK_SIGNATURE_HASHES = frozenset({"md5", "sha1", "md5-sha1", "md4", "md2"})


def _weak_signature(cert: x509.Certificate) -> str | None:
    """The name of a weak hash ``cert`` is signed with (MD5, SHA1), or ``None``.

    OpenSSL's security level refuses such *peer* certificates during
    verification, but not our own when it is loaded; a self-signed
    certificate's signature protects nothing and is not checked.
    """
    if cert.issuer == cert.subject:
        return None
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return None
    if algorithm is not None and algorithm.name in _WEAK_SIGNATURE_HASHES:
        return algorithm.name.upper()
    return None


def _load_key_pair(context: SSL.Context, certificate: str, private_key: str) -> None:
    """Load a certificate chain and its key into ``context``, checking they belong together and are strong enough."""
    chain = _read(certificate, "certificate")
    key = _read(private_key, "private key")
    try:
        certs = x509.load_pem_x509_certificates(chain)
    except ValueError as error:
        raise TLSConfigError(f"{certificate} holds no usable PEM certificate: {error}") from error
    for cert in certs:
        weak = _weak_signature(cert)
        if weak is not None:
            # PS3.15 B.10/B.11 via BCP 195 (RFC 7525 4.5): SHA-256 or better.
            raise TLSConfigError(
                f"{certificate}: the certificate {cert.subject.rfc4514_string()} is signed with {weak}, "
                "which is too weak (SHA-256 or better is needed)"
            )
    try:
        pkey = crypto.load_privatekey(crypto.FILETYPE_PEM, key)
    except crypto.Error as error:
        raise TLSConfigError(f"{private_key} holds no usable PEM private key") from error
    try:
        context.use_certificate(crypto.X509.from_cryptography(certs[0]))
        for extra in certs[1:]:
            context.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
        context.use_privatekey(pkey)
        context.check_privatekey()
    except SSL.Error as error:
        raise TLSConfigError(
            f"the key {private_key} does not match the certificate {certificate}, "
            f"or one of them is too weak: {_ssl_reason(error)}"
        ) from error


def _load_ca(context: SSL.Context, ca: str) -> None:
    """Trust the CA certificates of a PEM file, and name them to clients."""
    data = _read(ca, "CA file")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise TLSConfigError(f"{ca} holds no usable PEM certificate: {error}") from error
    store = context.get_cert_store()
    assert store is not None
    for cert in certs:
        store.add_cert(crypto.X509.from_cryptography(cert))
        # The CertificateRequest lists acceptable issuers (RFC 8446 4.2.4).
        context.add_client_ca(crypto.X509.from_cryptography(cert))


def _load_crl(context: SSL.Context, crl: str, ca: str) -> None:
    """Load the CRLs of a PEM file into the context's store and turn revocation checking on.

    Each CRL must be issued and signed by one of the CAs of ``ca``: a CRL of
    another CA would leave every client certificate without a CRL, and
    each handshake would then fail with ``crl_unavailable``.

    :param context: the server context (its CA certificates already loaded).
    :param crl: the CRL file.
    :param ca: the CA file, for the issuer check.
    :raises TLSConfigError: when the file holds no usable CRL, or a CRL that
        none of the CAs issued.
    """
    data = _read(crl, "CRL file")
    blocks = [
        b"-----BEGIN X509 CRL-----" + part.split(b"-----END X509 CRL-----")[0] + b"-----END X509 CRL-----\n"
        for part in data.split(b"-----BEGIN X509 CRL-----")[1:]
    ]
    if not blocks:
        raise TLSConfigError(f"{crl} holds no PEM certificate revocation list (-----BEGIN X509 CRL-----)")
    authorities = x509.load_pem_x509_certificates(_read(ca, "CA file"))
    store = context.get_cert_store()
    assert store is not None
    for index, block in enumerate(blocks, 1):
        try:
            revocations = x509.load_pem_x509_crl(block)
        except ValueError as error:
            raise TLSConfigError(f"{crl}: CRL {index} cannot be read: {error}") from error
        issuers = [cert for cert in authorities if cert.subject == revocations.issuer]
        if not any(revocations.is_signature_valid(cert.public_key()) for cert in issuers):  # type: ignore[arg-type]
            raise TLSConfigError(
                f"{crl}: CRL {index} (issuer {revocations.issuer.rfc4514_string()}) is not signed by a CA of {ca}"
            )
        store.add_crl(revocations)
    # RFC 5280 6.3: check the end-entity certificate against its issuer's CRL.
    store.set_flags(crypto.X509StoreFlags.CRL_CHECK)


def _info_callback(connection: SSL.Connection, where: int, ret: int) -> None:
    """Note a refused renegotiation: OpenSSL answers a ClientHello after the handshake with no_renegotiation (T14)."""
    if where & SSL.SSL_CB_WRITE_ALERT and ret & 0xFF == _ALERT_NO_RENEGOTIATION:
        holder = connection.get_app_data()
        if holder is not None and hasattr(holder, "renegotiation_refused"):
            holder.renegotiation_refused = True


def _verify_callback(connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
    """Keep OpenSSL's verdict, remembering why a certificate failed for the failure's reason label."""
    if not ok:
        holder = connection.get_app_data()
        errors = getattr(holder, "verify_errors", None)
        if isinstance(errors, list):
            errors.append(errno)
    return bool(ok)


def build_server_context(settings: ServerTLSSettings) -> SSL.Context:
    """Build the context of a TLS listener.

    With ``ca`` set, clients are asked for a certificate that must chain to
    it; with ``require_client_certificate`` also set, a client without one
    fails the handshake (HARDENING T05).

    :param settings: the listener's TLS settings.
    :returns: a ready context.
    :raises TLSConfigError: when a file is missing or unusable, or the key
        does not match the certificate.
    """
    context = _base_context(settings.profile)
    _load_key_pair(context, settings.certificate, settings.private_key)
    if settings.ca:
        _load_ca(context, settings.ca)
        mode = SSL.VERIFY_PEER
        if settings.require_client_certificate:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        context.set_verify(mode, _verify_callback)
        if settings.crl:
            _load_crl(context, settings.crl, settings.ca)
    elif settings.require_client_certificate:
        raise TLSConfigError("require_client_certificate needs a 'ca' to check client certificates against")
    elif settings.crl:
        raise TLSConfigError("a 'crl' needs a 'ca' to check client certificates against")
    context.set_info_callback(_info_callback)
    # Session tickets would outlive a certificate reload; sessions are cheap to renegotiate.
    context.set_options(SSL.OP_NO_TICKET)
    context.set_session_id(b"dicom-gateway")
    return context


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """The TLS side of one listener, whose certificate and key can be reloaded.

    Twisted calls :meth:`serverConnectionForTLS` once per accepted
    connection; that connection keeps the context it was made from, so a
    :meth:`reload` changes what *new* handshakes see and leaves running
    associations alone (HARDENING T16).

    :param settings: the listener's TLS settings.
    :raises TLSConfigError: when the initial context cannot be built.
    """

    log = Logger(namespace="gateway.tls")

    def __init__(self, settings: ServerTLSSettings) -> None:
        self.settings = settings
        self._context = build_server_context(settings)

    def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        """Make the ``SSL.Connection`` of one accepted connection.

        :param protocol: the TLS wrapper protocol; kept as the connection's
            app data so the verify callback can record why verification failed.
        :returns: the connection, using the current context.
        """
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(protocol)
        return connection

    def reload(self, settings: ServerTLSSettings | None = None) -> str | None:
        """Re-read the certificate, key and CA; keep the old context when they are unusable.

        :param settings: new settings, or ``None`` to re-read the same files.
        :returns: ``None`` when the new context is in use, else the error
            (logged by the caller); the old context then stays.
        """
        wanted = self.settings if settings is None else settings
        try:
            context = build_server_context(wanted)
        except TLSConfigError as error:
            return str(error)
        self._context = context
        self.settings = wanted
        return None


#: ``on_failure(peer_address, reason_label, detail)``: a handshake failed.
HandshakeFailureHook = Callable[[str, str, str], None]


class _ListenerTLSProtocol(BufferingTLSTransport):
    """The server side of one TLS connection: a handshake deadline and failure reports."""

    factory: "TLSListenerFactory"

    def makeConnection(self, transport: Any) -> None:
        """Start the handshake and its deadline (HARDENING T13)."""
        self.verify_errors: list[int] = []
        #: Set by the info callback when OpenSSL refused a renegotiation (T14).
        self.renegotiation_refused = False
        self._handshake_bytes = 0
        self._deadline: IDelayedCall | None = None
        self._reported = False
        peer = transport.getPeer()
        self.peer_address = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        super().makeConnection(transport)
        if not self._handshakeDone and not self._aborted and self.factory.handshake_timeout > 0:
            self._deadline = self.factory.clock.callLater(self.factory.handshake_timeout, self._deadline_passed)

    def handshake_done(self) -> bool:
        """Whether the TLS handshake completed."""
        return bool(self._handshakeDone)

    def _deadline_passed(self) -> None:
        """The handshake is late: report it and drop the connection without ceremony."""
        self._deadline = None
        if not self._handshakeDone:
            self._report("timeout", "handshake not finished within the deadline")
            self.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        """Feed TLS records; stop the deadline as soon as the handshake is done.

        Until then, at most :data:`MAX_HANDSHAKE_BYTES` are accepted: more is
        an oversized ClientHello or certificate chain, aborted before
        OpenSSL buffers it (HARDENING T15, rule R4 applied to TLS).
        """
        if not self._handshakeDone:
            self._handshake_bytes += len(data)
            if self._handshake_bytes > MAX_HANDSHAKE_BYTES:
                self._report("oversized", f"more than {MAX_HANDSHAKE_BYTES} bytes before the handshake finished")
                self.abortConnection()
                return
        super().dataReceived(data)
        if self._handshakeDone and self._deadline is not None:
            self._cancel_deadline()
        if self.renegotiation_refused and not self._reported:
            # The session goes on (no_renegotiation is a warning alert); the attempt is reported once.
            self._report("renegotiation", "client-initiated renegotiation refused")

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _report(self, label: str, detail: str) -> None:
        if self._reported:
            return
        self._reported = True
        self.factory.handshake_failed(self.peer_address, label, detail)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        """A connection that ends before its handshake finished is a handshake failure."""
        self._cancel_deadline()
        if not self._handshakeDone:
            error = self._reason.value if self._reason is not None else getattr(reason, "value", None)
            label = classify_handshake_failure(error if isinstance(error, SSL.Error) else None, self.verify_errors)
            if isinstance(error, SSL.Error) or self.verify_errors:
                self._report(label, _ssl_reason(error))
            else:
                self._report("closed", "connection closed before the TLS handshake finished")
        super().connectionLost(reason)


class TLSListenerFactory(TLSMemoryBIOFactory):
    """Puts TLS under an acceptor factory, with a handshake deadline.

    The wrapped protocol (the DICOM acceptor) is connected at once, so its
    ARTIM timer also runs during the handshake; the deadline here is
    normally shorter and closes a silent or half-finished handshake without
    any DICOM processing (HARDENING T01, T13).

    :param creator: the listener's :class:`ServerTLS`.
    :param wrapped: the acceptor factory.
    :param clock: for the deadline.
    :param handshake_timeout: seconds a handshake may take; 0 disables the deadline.
    :param on_failure: called with ``(peer, reason_label, detail)`` for each failed handshake.
    """

    protocol = _ListenerTLSProtocol
    log = Logger(namespace="gateway.tls")

    def __init__(
        self,
        creator: ServerTLS,
        wrapped: IProtocolFactory,
        clock: IReactorTime,
        handshake_timeout: float,
        on_failure: HandshakeFailureHook | None = None,
    ) -> None:
        super().__init__(creator, False, wrapped, clock)
        self.creator = creator
        self.clock = clock
        self.handshake_timeout = handshake_timeout
        self.on_failure = on_failure
        #: Failed handshakes by reason label (for metrics).
        self.failures: dict[str, int] = {}

    def handshake_failed(self, peer: str, label: str, detail: str) -> None:
        """Count, log and report one failed handshake.

        :param peer: ``host:port`` of the peer.
        :param label: the reason label (:func:`classify_handshake_failure`).
        :param detail: OpenSSL's words, for the log.
        """
        self.failures[label] = self.failures.get(label, 0) + 1
        if label != "closed":
            self.log.warn("TLS handshake from {peer} failed: {label} ({detail})", peer=peer, label=label, detail=detail)
        if self.on_failure is not None:
            self.on_failure(peer, label, detail)


def client_creator(settings: ClientTLSSettings, host: str) -> Any:
    """The client connection creator of a TLS destination.

    The server certificate must chain to ``settings.ca`` and carry
    ``settings.server_name`` (or ``host``) as a DNS or IP subject alternative
    name, checked by service-identity (RFC 6125; HARDENING T12). Our client
    certificate is presented when configured. There is no plaintext fallback:
    a failure fails the connection.

    :param settings: the destination's TLS settings.
    :param host: the destination's host, the default name to check.
    :returns: an ``IOpenSSLClientConnectionCreator``.
    :raises TLSConfigError: when a file is missing or unusable.
    """
    ca_pem = _read(settings.ca, "CA file")
    try:
        trust = _tssl.trustRootFromCertificates(
            [_tssl.Certificate.loadPEM(cert.public_bytes(_pem())) for cert in x509.load_pem_x509_certificates(ca_pem)]
        )
    except ValueError as error:
        raise TLSConfigError(f"{settings.ca} holds no usable PEM certificate: {error}") from error
    client_certificate = None
    if settings.certificate:
        cert_pem = _read(settings.certificate, "certificate")
        key_pem = _read(settings.private_key, "private key") if settings.private_key else cert_pem
        try:
            client_certificate = _tssl.PrivateCertificate.loadPEM(key_pem + b"\n" + cert_pem)
        except (crypto.Error, SSL.Error, ValueError, VerifyError) as error:
            raise TLSConfigError(
                f"cannot use the client certificate {settings.certificate} with {settings.private_key}: {error}"
            ) from error
    name = settings.server_name or host
    options = _tssl.CertificateOptions(
        trustRoot=trust,
        privateKey=client_certificate.privateKey.original if client_certificate is not None else None,
        certificate=client_certificate.original if client_certificate is not None else None,
        raiseMinimumTo=_tssl.TLSVersion.TLSv1_2,
        acceptableCiphers=_tssl.AcceptableCiphers.fromOpenSSLCipherString(PROFILE_CIPHERS[settings.profile]),
    )
    context = options.getContext()
    # What optionsForClientTLS would leave to the system: the security
    # level (DH and RSA keys of 2048 bits at least, no MD5/SHA1 signatures;
    # HARDENING T11 outbound).
    context.set_cipher_list(f"{PROFILE_CIPHERS[settings.profile]}:@SECLEVEL=2".encode("ascii"))
    return _ClientCreator(context, name)


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    """Client connections of a TLS destination: our context, the server name sent (SNI) and checked (RFC 6125).

    Twisted's ``optionsForClientTLS`` does the same, but its connections
    report every failed certificate as "certificate verify failed"; here
    the X.509 reason is kept (HARDENING F20: expired, unknown CA, another
    name), for the queue's ``last_error``, the log and the audit trail.

    :param context: the client context (verification on, trust set).
    :param name: the DNS name or IP address the server certificate must carry.
    """

    def __init__(self, context: SSL.Context, name: str) -> None:
        self._context = context
        self._name = name
        self._is_ip = _is_ip_address(name)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """One client connection; its verify callback fails the protocol with the reason.

        :param tlsProtocol: Twisted's TLS protocol (``failVerification`` ends it with our reason).
        :returns: the connection.
        """
        connection = SSL.Connection(self._context, None)
        if not self._is_ip:
            connection.set_tlsext_host_name(self._name.encode("idna"))
        name, is_ip = self._name, self._is_ip

        def verify(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
            from service_identity import VerificationError
            from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address

            if not ok:
                reason = _VERIFY_TEXT.get(errno, f"X.509 error {errno}")
                tlsProtocol.failVerification(
                    Failure(SSL.Error([("X509 certificate routines", "", f"certificate verify failed: {reason}")]))
                )
                return False
            if depth == 0:
                check = verify_certificate_ip_address if is_ip else verify_certificate_hostname
                try:
                    check(cert.to_cryptography(), name)
                except VerificationError as error:
                    tlsProtocol.failVerification(Failure(error))
                    return False
            return True

        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
        return connection


def _is_ip_address(name: str) -> bool:
    """Whether ``name`` is an IPv4 or IPv6 address (checked as an IP subject alternative name, not sent as SNI)."""
    import ipaddress

    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True




def _pem() -> Any:
    """The PEM encoding constant of ``cryptography``."""
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.PEM


def describe_tls_failure(error: BaseException | None) -> str | None:
    """Say why a client-side TLS connection failed, when it was TLS that failed.

    A destination whose certificate does not verify, or names another host,
    ends the connection before any PDU; this turns the exception the
    transport reports into a reason for the queue's ``last_error`` and the
    log (HARDENING T12, decision 9).

    :param error: the exception the connection was lost with.
    :returns: ``"TLS failure: ..."``, or ``None`` when the error is not TLS.
    """
    if error is None:
        return None
    try:
        from service_identity import VerificationError
    except ImportError:  # pragma: no cover - service_identity is a dependency
        VerificationError = ()  # type: ignore[assignment,misc]
    if isinstance(error, VerificationError):
        return f"TLS failure: server certificate does not match the expected name ({error})"
    if isinstance(error, SSL.Error):
        return f"TLS failure: {_ssl_reason(error)}"
    return None
