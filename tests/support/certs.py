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

import datetime
import tempfile
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
