"""Tests for ``dicom-gateway tls init`` (:mod:`gateway.tlsinit`) and the example TLS listener."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

from gateway.config.load import load_config
from gateway.tls import ServerTLS, ServerTLSSettings
from gateway.tlsinit import FILES, TLSInitError, run_tls_init, tls_init

REPO = Path(__file__).resolve().parents[3]


class TLSInitTests(SynchronousTestCase):
    """The development CA, gateway and client certificates."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.out = os.path.join(self.dir, "tls")
        self.paths = tls_init(self.out, names=("gw.example", "10.0.0.1"))

    def test_every_file_is_written_and_keys_are_0600(self) -> None:
        """Six files; the three keys are readable by their owner only."""
        self.assertEqual(sorted(os.listdir(self.out)), sorted(FILES))
        for name in FILES:
            mode = stat.S_IMODE(os.stat(self.paths[name]).st_mode)
            if name.endswith("-key.pem"):
                self.assertEqual(mode, 0o600, name)
            else:
                self.assertFalse(mode & 0o077 == 0o077, name)

    def test_gateway_certificate_names_and_chain(self) -> None:
        """The gateway certificate carries the names as SANs and is signed by the CA."""
        cert = x509.load_pem_x509_certificate(Path(self.paths["gateway.pem"]).read_bytes())
        ca = x509.load_pem_x509_certificate(Path(self.paths["ca.pem"]).read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["gw.example"])
        self.assertEqual([str(ip) for ip in sans.get_values_for_type(x509.IPAddress)], ["10.0.0.1"])
        cert.verify_directly_issued_by(ca)
        self.assertGreaterEqual(cert.public_key().key_size, 2048)

    def test_material_loads_into_a_server_context(self) -> None:
        """The gateway pair and CA make a working mutual-TLS server context."""
        ServerTLS(ServerTLSSettings(self.paths["gateway.pem"], self.paths["gateway-key.pem"], self.paths["ca.pem"], True))

    def test_existing_files_are_not_overwritten(self) -> None:
        """A second run refuses; --force replaces the files."""
        before = Path(self.paths["ca.pem"]).read_bytes()
        self.assertRaises(TLSInitError, tls_init, self.out)
        self.assertEqual(run_tls_init(self.out, [], False), 1)
        self.assertEqual(run_tls_init(self.out, [], True), 0)
        self.assertNotEqual(Path(self.paths["ca.pem"]).read_bytes(), before)


class ExampleConfigTests(SynchronousTestCase):
    """The example configuration's commented TLS listener is valid once uncommented."""

    def test_uncommented_tls_listener_loads_with_tls_init_material(self) -> None:
        """Uncommenting the listener block of etc/gateway.yaml gives a valid configuration using tls/dev files."""
        text = (REPO / "etc" / "gateway.yaml").read_text()
        lines = text.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("  # - host: 0.0.0.0"))
        end = next(i for i in range(start, len(lines)) if not lines[i].startswith("  #"))
        block = []
        for line in lines[start:end]:
            if re.match(r"^  #   # ", line):
                continue  # a comment inside the example stays a comment
            block.append("  " + line[4:])
        uncommented = "\n".join(lines[:start] + block + lines[end:]) + "\n"
        folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, folder)
        shutil.copytree(REPO / "etc", folder / "etc")
        (folder / "routes").mkdir()
        tls_init(str(folder / "tls" / "dev"))
        (folder / "etc" / "gateway.yaml").write_text(uncommented)
        config = load_config(str(folder / "etc" / "gateway.yaml"))
        secure = [listener for listener in config.listen if listener.tls is not None]
        self.assertEqual(len(secure), 1)
        self.assertEqual(secure[0].port, 2762)
        self.assertTrue(secure[0].tls.require_client_certificate)  # type: ignore[union-attr]
        ServerTLS(ServerTLSSettings(secure[0].tls.certificate, secure[0].tls.private_key, secure[0].tls.ca, True))  # type: ignore[union-attr]
