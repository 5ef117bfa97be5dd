"""Run PixelMed's Java DICOM tools (Debian ``pixelmed-apps`` / ``libpixelmed-java``) as interop peers.

PixelMed (David Clunie's toolkit, version 20220618 in Debian 12) is a DICOM
implementation we did not write.  Its jar has command-line ``main()`` methods;
their arguments, found with ``javap -c`` on the jar (there is no manual page):

- ``com.pixelmed.network.VerificationSOPClassSCU host port calledAET callingAET
  [SECURE|NONSECURE] [username] [password]``: one C-ECHO.  Its usage text says
  ``ae_title called_ae_title`` but the third argument is the *called* AE title
  (the gateway's audit trail shows it).  At least five arguments are needed.
  It prints ``VerificationSOPClass: was successful`` or ``... was not
  successful`` and exits 0 either way.
- ``com.pixelmed.network.StorageSOPClassSCU host port calledAET callingAET
  file [sopClass sopInstance] [compressionLevel]``: one association sending
  the file's data set as it is in the file, in the file's transfer syntax;
  ``-`` as ``file`` reads one file name per line from standard input (all in
  one association).  It prints nothing on success and exits 0 even when it
  fails, so callers check what arrived.
- ``com.pixelmed.network.StorageSOPClassSCPDispatcher port AET folder
  [NONSECURE|SECURE [UNCOMPRESSED|ANY]]``: a Storage SCP writing each received
  instance as a Part 10 file named by its SOP Instance UID into ``folder``;
  ``ANY`` accepts compressed transfer syntaxes.  It binds every interface (no
  option for an address); only loopback traffic is sent to it.

TLS (``SECURE``): PixelMed uses the JVM's default ``SSLSocketFactory``, so the
key and trust stores come from ``javax.net.ssl.*`` system properties
(:func:`tls_properties`).  ``Association.getCipherSuitesToEnable`` then enables
only ``TLS_RSA_WITH_AES_128_CBC_SHA`` and ``SSL_RSA_WITH_3DES_EDE_CBC_SHA`` (the
retired PS3.15 B.1 Basic and B.3 AES TLS Secure Transport Connection
Profiles: RSA key transport, CBC with SHA-1), and ``getProtocolsToEnable``
would pin TLS 1.0 if the JVM still enabled it (Java 17 does not, so its
defaults stay).  Those suites are outside BCP 195, which the gateway's TLS
profiles implement (HARDENING T09), so PixelMed's TLS cannot interoperate
with the gateway in either direction; the matrix tests prove the refusal and
that PixelMed's TLS works with itself, so the refusal is the suites'.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.peerprocess import PeerProcess
from tests.support.ports import free_port, port_is_open

__all__ = [
    "JAR",
    "Result",
    "StorageScp",
    "skip_reason",
    "storage_scu",
    "tls_properties",
    "verification_scu",
]

#: PixelMed's jar as the Debian package installs it.
JAR = "/usr/share/java/pixelmed.jar"
#: The Java launcher.
JAVA: str | None = shutil.which("java")
#: Password of the generated key and trust stores (test material only).
STORE_PASSWORD = "changeit"


def skip_reason() -> str | None:
    """Explain why PixelMed tests cannot run here, for a class's ``skip``.

    :returns: a reason, or ``None`` when Java and the jar are installed.
    """
    if JAVA is None or not os.path.exists(JAR):
        return "PixelMed or Java is not installed (run `make test`, or `apt-get install pixelmed-apps`)"
    return None


@dataclass(frozen=True)
class Result:
    """The outcome of one PixelMed command.

    :param returncode: the exit status (PixelMed's tools exit 0 even on failure).
    :param output: stdout and stderr, interleaved.
    :param argv: the command that ran.
    """

    returncode: int
    output: str
    argv: tuple[str, ...]

    def describe(self) -> str:
        """Render the command and its output for an assertion message.

        :returns: a multi-line description.
        """
        return f"$ {' '.join(self.argv)}\n(exit {self.returncode})\n{self.output}"


def tls_properties(folder: str | os.PathLike[str], certificate: str, private_key: str, ca: str) -> list[str]:
    """Write a PKCS#12 key store and trust store and return the JVM options that select them.

    The trust store is made by ``keytool -importcert`` (a trusted-certificate
    entry, which a PKCS#12 file written by ``cryptography`` would lack).

    :param folder: where to write ``keystore.p12`` and ``truststore.p12`` (created).
    :param certificate: our PEM certificate.
    :param private_key: its PEM private key.
    :param ca: the PEM CA certificate to trust.
    :returns: ``-Djavax.net.ssl...`` options for ``java``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import (
        BestAvailableEncryption,
        load_pem_private_key,
        pkcs12,
    )

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    keystore, truststore = out / "keystore.p12", out / "truststore.p12"
    cert = x509.load_pem_x509_certificate(Path(certificate).read_bytes())
    key = load_pem_private_key(Path(private_key).read_bytes(), None)
    keystore.write_bytes(pkcs12.serialize_key_and_certificates(
        b"peer", key, cert, None, BestAvailableEncryption(STORE_PASSWORD.encode())))  # type: ignore[arg-type]
    truststore.unlink(missing_ok=True)
    keytool = shutil.which("keytool") or "keytool"
    subprocess.run([keytool, "-importcert", "-noprompt", "-storetype", "PKCS12", "-alias", "ca",
                    "-keystore", str(truststore), "-storepass", STORE_PASSWORD, "-file", ca],
                   check=True, capture_output=True, timeout=60)
    return [
        f"-Djavax.net.ssl.keyStore={keystore}", "-Djavax.net.ssl.keyStoreType=PKCS12",
        f"-Djavax.net.ssl.keyStorePassword={STORE_PASSWORD}",
        f"-Djavax.net.ssl.trustStore={truststore}", "-Djavax.net.ssl.trustStoreType=PKCS12",
        f"-Djavax.net.ssl.trustStorePassword={STORE_PASSWORD}",
    ]


def _java(main_class: str, args: Sequence[str], properties: Sequence[str] = ()) -> list[str]:
    """Build a ``java -cp pixelmed.jar CLASS ARGS`` command line.

    :param main_class: the fully qualified class.
    :param args: its arguments.
    :param properties: JVM options (``-D...``) placed before ``-cp``.
    :returns: the argv.
    """
    return [JAVA or "java", "-Xshare:auto", *properties, "-cp", JAR, main_class, *args]


def _run(argv: list[str], timeout: float, stdin: str | None = None) -> Result:
    """Run a command to completion.

    :param argv: the command line.
    :param timeout: seconds before it is killed.
    :param stdin: text fed to its standard input.
    :returns: exit status and output.
    """
    proc = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace", timeout=timeout, check=False)
    return Result(proc.returncode, proc.stdout, tuple(argv))


def verification_scu(port: int, *, called_ae: str = "DICOMGW", calling_ae: str = "PIXELMED",
                     host: str = "127.0.0.1", secure: bool = False, properties: Sequence[str] = (),
                     timeout: float = 60.0) -> Result:
    """Send one C-ECHO with ``VerificationSOPClassSCU``.

    :param port: the peer's port.
    :param called_ae: the peer's AE title.
    :param calling_ae: our AE title.
    :param host: the peer's address.
    :param secure: ``SECURE`` (TLS) instead of ``NONSECURE``.
    :param properties: JVM options (the TLS stores).
    :param timeout: seconds before the process is killed.
    :returns: exit status and output; success is the line ``VerificationSOPClass: was successful``.
    """
    args = [host, str(port), called_ae, calling_ae, "SECURE" if secure else "NONSECURE"]
    return _run(_java("com.pixelmed.network.VerificationSOPClassSCU", args, properties), timeout)


def storage_scu(port: int, files: Iterable[str | os.PathLike[str]], *, called_ae: str = "DICOMGW",
                calling_ae: str = "PIXELMED", host: str = "127.0.0.1", timeout: float = 120.0) -> Result:
    """Send files in one association with ``StorageSOPClassSCU`` (file names on standard input).

    :param port: the peer's port.
    :param files: Part 10 files.
    :param called_ae: the peer's AE title.
    :param calling_ae: our AE title.
    :param host: the peer's address.
    :param timeout: seconds before the process is killed.
    :returns: exit status and output (check the receiving side for the outcome).
    """
    args = [host, str(port), called_ae, calling_ae, "-"]
    names = "".join(f"{os.fspath(f)}\n" for f in files)
    return _run(_java("com.pixelmed.network.StorageSOPClassSCU", args), timeout, stdin=names)


class StorageScp(PeerProcess):
    """A ``StorageSOPClassSCPDispatcher`` on a free port, as a context manager.

    :param outdir: the folder received files are written to (created).
    :param ae_title: its AE title.
    :param secure: listen with TLS (``SECURE``); give the stores in ``properties``.
    :param properties: JVM options.
    """

    def __init__(self, outdir: str | os.PathLike[str], *, ae_title: str = "PIXELMED",
                 secure: bool = False, properties: Sequence[str] = ()) -> None:
        self.outdir = Path(outdir).resolve()
        self.ae_title = ae_title
        self.port = free_port()
        self._argv = _java("com.pixelmed.network.StorageSOPClassSCPDispatcher",
                           [str(self.port), ae_title, str(self.outdir),
                            "SECURE" if secure else "NONSECURE", "ANY"], properties)
        super().__init__("PixelMed SCP", self.outdir.parent / f"{self.outdir.name}.pixelmed.log")

    def start(self, timeout: float = 60.0) -> StorageScp:
        """Start the JVM and wait until the port accepts connections.

        :param timeout: seconds to wait.
        :returns: this object.
        :raises RuntimeError: if it exits or never listens.
        """
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.spawn(self._argv, lambda: port_is_open("127.0.0.1", self.port), timeout, what=f"listen on {self.port}")
        return self

    def files(self) -> list[Path]:
        """List the received files (any ``*.tmp`` name is left out, in case one is being written).

        :returns: paths, sorted.
        """
        if not self.outdir.is_dir():
            return []
        return sorted(p for p in self.outdir.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))
