"""TLS material generated per test run (never committed), as Tahoe-LAFS's tests make theirs.

:func:`material` writes, once per process, into a fresh temporary folder:

* ``ca.pem`` / ``ca-key.pem``: the trusted test CA;
* ``other-ca.pem``: an unrelated CA (HARDENING T04);
* ``server.pem`` / ``server-key.pem``: the gateway's certificate for
  ``localhost`` and ``127.0.0.1``;
* ``server2.pem`` / ``server2-key.pem``: a renewed gateway certificate (new
  key, new serial, CN ``dicom-gateway-renewed``) for the SIGHUP test (T16);
* ``wrongname.pem`` / ``wrongname-key.pem``: a server certificate for
  ``archive.invalid`` only (T12);
* ``client.pem`` / ``client-key.pem``: a client certificate ``CN=modality1``;
* ``client2.pem`` / ``client2-key.pem``: ``CN=modality2``, for certificate to
  AE title binding (T07);
* ``other-client.pem`` / ``other-client-key.pem``: signed by the other CA;
* ``expired-client.pem`` / ``expired-client-key.pem``: valid for one day, two
  years ago (T06).

The certificates come from :mod:`gateway.tlsinit`, the code behind
``dicom-gateway tls init``, so the tests exercise that too.
"""

from __future__ import annotations

import atexit
import datetime
import shutil
import tempfile
from typing import Any
from dataclasses import dataclass
from pathlib import Path

from gateway.tlsinit import Issued, issue, make_ca, write_certificate, write_key


@dataclass(frozen=True)
class Material:
    """Paths of the generated files.

    :ivar dir: the folder holding them.
    """

    dir: Path

    def __getattr__(self, name: str) -> str:
        """``m.client`` -> ``.../client.pem``, ``m.client_key`` -> ``.../client-key.pem``."""
        path = self.dir / f"{name.replace('_', '-')}.pem"
        if not path.exists():
            raise AttributeError(name)
        return str(path)

    def subject(self, name: str) -> str:
        """The RFC 4514 subject of a generated certificate.

        :param name: its stem (``client``).
        :returns: e.g. ``CN=modality1,O=dicom-gateway tests``.
        """
        from cryptography import x509

        return x509.load_pem_x509_certificate((self.dir / f"{name}.pem").read_bytes()).subject.rfc4514_string()


_cached: Material | None = None

#: The organisation of every test certificate.
ORG = "dicom-gateway tests"


def _write(folder: Path, stem: str, item: Issued, *chain: Issued) -> None:
    write_certificate(str(folder / f"{stem}.pem"), item, *chain)
    write_key(str(folder / f"{stem}-key.pem"), item)


def material() -> Material:
    """Generate (once per process) and return the test TLS material.

    :returns: the paths.
    """
    global _cached
    if _cached is not None:
        return _cached
    folder = Path(tempfile.mkdtemp(prefix="gw-tls-"))
    atexit.register(shutil.rmtree, folder, True)  # made once per process: removed when it ends
    ca = make_ca("dicom-gateway test CA", ORG)
    other = make_ca("some other CA", "elsewhere")
    _write(folder, "ca", ca)
    _write(folder, "other-ca", other)
    names = ("localhost", "127.0.0.1")
    _write(folder, "server", issue(ca, "dicom-gateway", names=names, organisation=ORG))
    _write(folder, "server2", issue(ca, "dicom-gateway-renewed", names=names, organisation=ORG))
    _write(folder, "wrongname", issue(ca, "archive", names=("archive.invalid",), organisation=ORG))
    _write(folder, "client", issue(ca, "modality1", server=False, organisation=ORG))
    _write(folder, "client2", issue(ca, "modality2", server=False, organisation=ORG))
    _write(folder, "other-client", issue(other, "modality1", server=False, organisation=ORG))
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=730)
    _write(folder, "expired-client", issue(ca, "modality1", server=False, organisation=ORG, days=1, not_before=past))
    _cached = Material(folder)
    return _cached


def peer(stem: str, common_name: str) -> tuple[str, str]:
    """Issue (once per process) a certificate from the test CA for an interop peer.

    The certificate names ``localhost`` and ``127.0.0.1`` and allows both TLS
    server and client authentication, as a peer such as Orthanc presents the
    same pair as an SCP and as an SCU.  It is written next to :func:`material`'s
    files as ``<stem>.pem`` and ``<stem>-key.pem``.

    :param stem: the file stem, e.g. ``orthanc``.
    :param common_name: the subject's CN.
    :returns: (certificate path, private key path).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    folder = material().dir
    certificate, key = folder / f"{stem}.pem", folder / f"{stem}-key.pem"
    if not certificate.exists():
        ca = Issued(x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes()),
                    serialization.load_pem_private_key((folder / "ca-key.pem").read_bytes(), None))  # type: ignore[arg-type]
        _write(folder, stem, issue(ca, common_name, names=("localhost", "127.0.0.1"), organisation=ORG))
    return str(certificate), str(key)


_hardening_cached: Material | None = None


def _openssl_issue(folder: Path, stem: str, common_name: str, *, digest: str = "sha256", bits: int = 2048,
                   server: bool = False) -> None:
    """Issue ``<stem>.pem`` from the test CA with the openssl command line.

    ``cryptography`` refuses to sign with MD5 or SHA1 and to make RSA keys
    under 1024 bits, which is just what the weak-key cases need (T11).
    """
    import secrets
    import subprocess

    key, csr, ext = folder / f"{stem}-key.pem", folder / f"{stem}.csr", folder / f"{stem}.ext"
    usage = "serverAuth,clientAuth" if server else "clientAuth"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\n" + ("subjectAltName=DNS:localhost,IP:127.0.0.1\n" if server else "")
    )
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("genrsa", "-out", str(key), str(bits))
    run("req", "-new", "-key", str(key), "-subj", f"/O={ORG}/CN={common_name}", "-out", str(csr))
    ca = material()
    run("x509", "-req", "-in", str(csr), "-CA", ca.ca, "-CAkey", ca.ca_key, "-set_serial", str(secrets.randbelow(2**63) + 1),
        "-days", "30", f"-{digest}", "-extfile", str(ext), "-out", str(folder / f"{stem}.pem"))


def hardening_material() -> Material:
    """Generate (once per process) the certificates of the TLS hardening rows T06, T11, T15 and F20.

    In a folder of its own, all issued by :func:`material`'s CA unless said otherwise:

    * ``notyet-client``: valid from 30 days from now (T06);
    * ``revoked-client`` with ``crl-revoked.pem`` (a CRL of the CA listing it)
      and ``crl-empty.pem`` (a CRL listing nothing); ``other-crl.pem`` is a
      CRL of the other CA (T06);
    * ``serveronly-client``: extended key usage serverAuth only (T06);
    * ``certsign-client``: key usage keyCertSign only, clientAuth (T06);
    * ``rsa1024-client``, ``rsa512-client``, ``sha1-client``, ``md5-client``
      and ``rsa1024-server``, ``sha1-server`` (T11);
    * ``big-client``: a valid client certificate made about 100 KB by a
      non-critical private extension (T15);
    * ``expired-server``: the gateway names, expired a year ago (F20);
      ``otherca-server``: the gateway names, issued by the other CA (F20);
    * ``dh1024.pem``: 1024-bit DH parameters for an ``openssl s_server`` (T11).

    :returns: the paths (``m.crl_revoked`` -> ``.../crl-revoked.pem``).
    """
    global _hardening_cached
    if _hardening_cached is not None:
        return _hardening_cached
    import subprocess

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

    from gateway.tlsinit import new_key

    base = material()
    folder = Path(tempfile.mkdtemp(prefix="gw-tls-hard-"))
    atexit.register(shutil.rmtree, folder, True)  # made once per process: removed when it ends

    def load(stem: str, where: Path = base.dir) -> Issued:
        return Issued(
            x509.load_pem_x509_certificate((where / f"{stem}.pem").read_bytes()),
            serialization.load_pem_private_key((where / f"{stem}-key.pem").read_bytes(), None),  # type: ignore[arg-type]
        )

    ca, other = load("ca"), load("other-ca")
    now = datetime.datetime.now(datetime.timezone.utc)
    names = ("localhost", "127.0.0.1")
    _write(folder, "notyet-client", issue(ca, "modality1", server=False, organisation=ORG,
                                          not_before=now + datetime.timedelta(days=30)))
    revoked = issue(ca, "modality1", server=False, organisation=ORG)
    _write(folder, "revoked-client", revoked)
    _write(folder, "serveronly-client", issue(ca, "modality1", client=False, organisation=ORG))
    _write(folder, "rsa1024-client", issue(ca, "modality1", server=False, organisation=ORG, key_bits=1024))
    _write(folder, "rsa1024-server", issue(ca, "dicom-gateway", names=names, organisation=ORG, key_bits=1024))
    _write(folder, "expired-server", issue(ca, "dicom-gateway", names=names, organisation=ORG, days=1,
                                           not_before=now - datetime.timedelta(days=365)))
    _write(folder, "otherca-server", issue(other, "dicom-gateway", names=names, organisation=ORG))

    def crl(issuer: Issued, serials: tuple[int, ...]) -> bytes:
        builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer.certificate.subject)
                   .last_update(now - datetime.timedelta(hours=1)).next_update(now + datetime.timedelta(days=7)))
        for serial in serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now - datetime.timedelta(hours=1)).build()
            )
        return builder.sign(issuer.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    (folder / "crl-revoked.pem").write_bytes(crl(ca, (revoked.certificate.serial_number,)))
    (folder / "crl-empty.pem").write_bytes(crl(ca, ()))
    (folder / "other-crl.pem").write_bytes(crl(other, ()))

    def custom(stem: str, usage: x509.KeyUsage, extra: x509.ExtensionType | None = None) -> None:
        key = new_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name.from_rfc4514_string(f"CN=modality1,O={ORG}"))
            .issuer_name(ca.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        if extra is not None:
            builder = builder.add_extension(extra, critical=False)
        _write(folder, stem, Issued(builder.sign(ca.key, hashes.SHA256()), key))

    flags = dict(content_commitment=False, data_encipherment=False, key_agreement=False, crl_sign=False,
                 encipher_only=False, decipher_only=False)
    custom("certsign-client", x509.KeyUsage(digital_signature=False, key_encipherment=False, key_cert_sign=True, **flags))
    custom("big-client", x509.KeyUsage(digital_signature=True, key_encipherment=True, key_cert_sign=False, **flags),
           x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.15"), b"\x04\x83\x01\x86\xa0" + b"A" * 100000))
    _openssl_issue(folder, "rsa512-client", "modality1", bits=512)
    _openssl_issue(folder, "sha1-client", "modality1", digest="sha1")
    _openssl_issue(folder, "md5-client", "modality1", digest="md5")
    _openssl_issue(folder, "sha1-server", "dicom-gateway", digest="sha1", server=True)
    # DSA-style generation is fast but writes X9.42 parameters, which s_server does not load:
    # rewrite p and g as PKCS#3 DHParameter ::= SEQUENCE { prime INTEGER, base INTEGER } by hand.
    import base64
    import re as _re

    text = subprocess.run(["openssl", "dhparam", "-dsaparam", "-noout", "-text", "1024"],
                          check=True, capture_output=True, text=True).stdout
    p_hex = "".join(_re.search(r"P:\s*\n((?:\s+[0-9a-f:]+\n)+)", text).group(1).split()).replace(":", "")  # type: ignore[union-attr]
    g_hex = "".join(_re.search(r"G:\s*\n((?:\s+[0-9a-f:]+\n)+)", text).group(1).split()).replace(":", "")  # type: ignore[union-attr]

    def der(tag: int, body: bytes) -> bytes:
        size = len(body)
        head = bytes([size]) if size < 128 else bytes([0x80 | ((size.bit_length() + 7) // 8)]) + size.to_bytes((size.bit_length() + 7) // 8, "big")
        return bytes([tag]) + head + body

    def integer(value: int) -> bytes:
        return der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))

    sequence = der(0x30, integer(int(p_hex, 16)) + integer(int(g_hex, 16)))
    encoded = base64.encodebytes(sequence).decode().replace("\n", "")
    lines = "\n".join(encoded[i:i + 64] for i in range(0, len(encoded), 64))
    (folder / "dh1024.pem").write_text(f"-----BEGIN DH PARAMETERS-----\n{lines}\n-----END DH PARAMETERS-----\n")
    _hardening_cached = Material(folder)
    return _hardening_cached


def _issue_subject(ca: Issued, subject: Any) -> Issued:
    """A client certificate from ``ca`` with exactly ``subject`` (an ``x509.Name``), which :func:`issue` cannot make."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from gateway.tlsinit import new_key

    key = new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(certificate, key)


_subject_cached: Material | None = None


def subject_material() -> Material:
    """Generate (once per process) the certificates of the subject-pattern cases of issue 11.

    In a folder of its own:

    * ``crafted-client``: subject exactly one attribute, CN ``mr1,O=Radiology``
      (RFC 4514 ``CN=mr1\\,O=Radiology``), from the test CA: the attack;
    * ``mr1-client``: ``CN=mr1,O=Radiology`` (two attributes), from the test CA;
    * ``other-mr1-client``: the same subject, from the other CA;
    * ``both-ca.pem``: the test CA and the other CA, for a listener that trusts both.

    :returns: the paths.
    """
    global _subject_cached
    if _subject_cached is not None:
        return _subject_cached
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    base = material()
    folder = Path(tempfile.mkdtemp(prefix="gw-tls-subject-"))
    atexit.register(shutil.rmtree, folder, True)  # made once per process: removed when it ends

    def load(stem: str) -> Issued:
        return Issued(
            x509.load_pem_x509_certificate((base.dir / f"{stem}.pem").read_bytes()),
            serialization.load_pem_private_key((base.dir / f"{stem}-key.pem").read_bytes(), None),  # type: ignore[arg-type]
        )

    ca, other = load("ca"), load("other-ca")
    crafted = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mr1,O=Radiology")])
    right = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Radiology"),
                       x509.NameAttribute(NameOID.COMMON_NAME, "mr1")])
    _write(folder, "crafted-client", _issue_subject(ca, crafted))
    _write(folder, "mr1-client", _issue_subject(ca, right))
    _write(folder, "other-mr1-client", _issue_subject(other, right))
    (folder / "both-ca.pem").write_bytes((base.dir / "ca.pem").read_bytes() + (base.dir / "other-ca.pem").read_bytes())
    _subject_cached = Material(folder)
    return _subject_cached


def tls_listener(port: int, m: Material, **tls: Any) -> dict[str, Any]:
    """A ``listen`` entry named ``tls`` on ``port``, serving ``m.server`` and requiring a client certificate from ``m.ca``.

    :param port: the port.
    :param m: the test material.
    :param tls: keys replacing the defaults (``handshake_timeout`` 2 s).
    :returns: the entry.
    """
    settings: dict[str, Any] = {
        "certificate": m.server,
        "private_key": m.server_key,
        "ca": m.ca,
        "require_client_certificate": True,
        "handshake_timeout": "2s",
    }
    settings.update(tls)
    return {"host": "127.0.0.1", "port": port, "name": "tls", "tls": settings}


def destination_tls(m: Material, **tls: Any) -> dict[str, Any]:
    """A destination's ``tls`` block: trust ``m.ca``, present ``m.server``, expect the name ``localhost``.

    :param m: the test material.
    :param tls: keys replacing the defaults.
    :returns: the block.
    """
    settings: dict[str, Any] = {"ca": m.ca, "certificate": m.server, "private_key": m.server_key,
                                "server_name": "localhost"}
    settings.update(tls)
    return settings
