"""``dicom-gateway tls init DIR``: a development CA, a gateway certificate and a client certificate.

For trying TLS out and for tests, never for production: a real deployment
uses certificates from the site's PKI. Everything is made with the
``cryptography`` package:

* ``ca.pem`` / ``ca-key.pem``: a self-signed CA (basic constraints CA:TRUE,
  key usage keyCertSign and cRLSign);
* ``gateway.pem`` / ``gateway-key.pem``: a server certificate for the
  gateway, with the given host names and addresses as subject alternative
  names (RFC 6125: clients check these, not the common name) and extended
  key usage serverAuth *and* clientAuth, so the gateway can present the same
  pair to TLS destinations;
* ``client.pem`` / ``client-key.pem``: a client certificate (clientAuth) for
  a modality or for DCMTK's ``+tls``.

Keys are RSA 2048 (PS3.15 B.10 and B.11 ask for at least 2048-bit RSA) and
written with mode 0600; certificates are signed with SHA-256. The functions
are also what ``tests/support/certs.py`` uses to make per-run material,
including expired certificates and a second, untrusted CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from typing import BinaryIO, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.durable import replace_durably, through_file

#: Validity of development certificates, in days.
DEFAULT_DAYS = 825


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key.

    :ivar certificate: the certificate.
    :ivar key: its RSA private key.
    """

    certificate: x509.Certificate
    key: rsa.RSAPrivateKey

    def certificate_pem(self) -> bytes:
        """The certificate, PEM-encoded."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """The private key, PEM-encoded (PKCS#8, unencrypted)."""
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def _name(common_name: str, organisation: str) -> x509.Name:
    """A distinguished name ``CN=...,O=...``."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _window(not_before: datetime.datetime | None, days: int) -> tuple[datetime.datetime, datetime.datetime]:
    """The validity window: from an hour ago (clock skew) for ``days`` days, unless given."""
    start = not_before or (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1))
    return start, start + datetime.timedelta(days=days)


def new_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """A fresh RSA key.

    :param bits: the modulus size; 2048 or more for the BCP 195 profiles.
    :returns: the key.
    """
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def make_ca(
    common_name: str = "dicom-gateway development CA",
    organisation: str = "dicom-gateway",
    *,
    days: int = DEFAULT_DAYS,
    not_before: datetime.datetime | None = None,
) -> Issued:
    """A self-signed CA certificate.

    :param common_name: the CA's CN.
    :param organisation: the CA's O.
    :param days: validity in days.
    :param not_before: start of validity; an hour ago by default.
    :returns: the CA certificate and key.
    """
    key = new_key()
    name = _name(common_name, organisation)
    start, end = _window(not_before, days)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(certificate, key)


def _san(names: Sequence[str]) -> list[x509.GeneralName]:
    """Subject alternative names: IP addresses as such, everything else as DNS names."""
    result: list[x509.GeneralName] = []
    for name in names:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result


def issue(
    ca: Issued,
    common_name: str,
    *,
    names: Sequence[str] = (),
    server: bool = True,
    client: bool = True,
    organisation: str = "dicom-gateway",
    days: int = DEFAULT_DAYS,
    not_before: datetime.datetime | None = None,
    key_bits: int = 2048,
) -> Issued:
    """An end-entity certificate signed by ``ca``.

    :param ca: the issuing CA.
    :param common_name: the subject's CN.
    :param names: DNS names and IP addresses for the subject alternative name.
    :param server: allow TLS server authentication (extended key usage).
    :param client: allow TLS client authentication.
    :param organisation: the subject's O.
    :param days: validity in days.
    :param not_before: start of validity; an hour ago by default (give a
        past date and few days for an expired certificate).
    :param key_bits: the RSA key size (tests make weak 1024-bit keys).
    :returns: the certificate and key.
    """
    key = new_key(key_bits)
    start, end = _window(not_before, days)
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organisation))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(_san(names)), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def write_certificate(path: str, *certificates: Issued) -> None:
    """Write certificates as PEM (readable by all: certificates are public).

    :param path: the file.
    :param certificates: one or more certificates, leaf first.
    """

    def write(stream: BinaryIO) -> None:
        """The certificates, leaf first."""
        for item in certificates:
            stream.write(item.certificate_pem())

    # Mode 0666 less the umask, as open() gave: certificates are public.
    replace_durably(path, through_file(write), mode=0o666)


def write_key(path: str, issued: Issued) -> None:
    """Write a private key as PEM, created with mode 0600 (never readable by others, even briefly).

    :param path: the file; replaced when it exists.
    :param issued: the holder of the key.
    """

    def write(stream: BinaryIO) -> None:
        """The key."""
        stream.write(issued.key_pem())

    # A unique temporary file created 0600 (O_EXCL) and renamed over ``path``.
    replace_durably(path, through_file(write), mode=0o600)
    os.chmod(path, 0o600)


#: The files ``tls init`` writes, in order.
FILES = ("ca.pem", "ca-key.pem", "gateway.pem", "gateway-key.pem", "client.pem", "client-key.pem")


class TLSInitError(Exception):
    """``tls init`` would overwrite existing material (without ``--force``)."""


def tls_init(
    directory: str,
    *,
    names: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    gateway_cn: str = "dicom-gateway",
    client_cn: str = "dicom-client",
    force: bool = False,
) -> dict[str, str]:
    """Create the development CA, gateway certificate and client certificate in ``directory``.

    :param directory: created when missing (mode 0700).
    :param names: the gateway certificate's DNS names and IP addresses.
    :param gateway_cn: the gateway certificate's CN.
    :param client_cn: the client certificate's CN.
    :param force: overwrite existing files.
    :returns: ``{file name: path}`` of what was written.
    :raises TLSInitError: when a file exists and ``force`` is false.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    paths = {name: os.path.join(directory, name) for name in FILES}
    existing = [path for path in paths.values() if os.path.exists(path)]
    if existing and not force:
        raise TLSInitError(f"{', '.join(existing)} already exist; use --force to replace them")
    ca = make_ca()
    gateway = issue(ca, gateway_cn, names=names, server=True, client=True)
    client = issue(ca, client_cn, names=(), server=False, client=True)
    write_certificate(paths["ca.pem"], ca)
    write_key(paths["ca-key.pem"], ca)
    write_certificate(paths["gateway.pem"], gateway)
    write_key(paths["gateway-key.pem"], gateway)
    write_certificate(paths["client.pem"], client)
    write_key(paths["client-key.pem"], client)
    return paths


def run_tls_init(directory: str, names: Sequence[str], force: bool) -> int:
    """The ``tls init`` subcommand: write the files and say what to do next.

    :param directory: where to write.
    :param names: the gateway certificate's names (empty: the defaults).
    :param force: overwrite existing files.
    :returns: the exit status (0, or 1 when files exist).
    """
    try:
        paths = tls_init(directory, names=tuple(names) or ("localhost", "127.0.0.1", "::1"), force=force)
    except TLSInitError as error:
        print(f"tls init: {error}")
        return 1
    for name in FILES:
        print(f"wrote {paths[name]}")
    print(
        "development material only: keep ca-key.pem away from the gateway host, and use your "
        "site's PKI in production (see tls/README.md)"
    )
    return 0
