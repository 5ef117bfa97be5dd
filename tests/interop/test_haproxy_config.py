"""The shipped ``etc/haproxy/haproxy.cfg`` (issue 14): valid for the real HAProxy, and the choices the README promises.

``haproxy -c`` (the Debian binary) checks the shipped file and the test
rendering of :mod:`tests.support.haproxy`; the other tests read the file's
directives, so a change that drops one of them fails here rather than in
production.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.support.haproxy import HAPROXY, SHIPPED_CONFIG, Node, haproxy_available, render_config


def sections(text: str) -> dict[str, list[str]]:
    """The directives of each section (``global``, ``defaults``, ``frontend dicom``...), comments removed."""
    found: dict[str, list[str]] = {}
    current = ""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            current = " ".join(line.split()[:2])
            found[current] = []
        else:
            found[current].append(" ".join(line.split()))
    return found


class ShippedHAProxyConfigTests(TestCase):
    """What the shipped file says, and that HAProxy accepts it."""

    skip = None if haproxy_available() else "haproxy is not installed (make cluster)"

    def check(self, path: Path) -> None:
        """Run ``haproxy -c -f path`` and fail with its output unless it says the file is valid."""
        done = subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True, timeout=60, check=False)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)

    def test_shipped_file_is_valid(self) -> None:
        """haproxy -c accepts etc/haproxy/haproxy.cfg as shipped."""
        self.check(SHIPPED_CONFIG)

    def test_test_rendering_is_valid_and_keeps_the_shipped_options(self) -> None:
        """The rendering for tests is valid and keeps every backend option; only binds and servers change."""
        path = Path(self.mktemp())
        text = render_config([Node("gw1", 1001, 2001, 3001), Node("gw2", 1002, 2002, 3002)],
                             dicom_port=5000, tls_port=5001, stats_socket="/tmp/front-test.sock")
        path.write_text(text)
        self.check(path)
        shipped, rendered = sections(SHIPPED_CONFIG.read_text()), sections(text)
        for name in ("defaults", "backend gateways_dicom", "backend gateways_dicom_tls"):
            kept = [d for d in shipped[name] if not d.startswith("server ")]
            self.assertEqual([d for d in rendered[name] if not d.startswith("server ")], kept, name)
        self.assertIn("server gw2 127.0.0.1:1002 port 2002", rendered["backend gateways_dicom"])
        self.assertIn("server gw2 127.0.0.1:3002 port 2002", rendered["backend gateways_dicom_tls"])

    def test_tcp_mode_and_long_timeouts(self) -> None:
        """TCP mode, connect 5 s, client and server 1 h (a long association is not cut)."""
        defaults = sections(SHIPPED_CONFIG.read_text())["defaults"]
        for directive in ("mode tcp", "timeout connect 5s", "timeout client 1h", "timeout server 1h"):
            self.assertIn(directive, defaults)

    def test_two_frontends_pass_through_without_tls_termination(self) -> None:
        """A DICOM and a DICOM TLS frontend; no certificate anywhere (HAProxy never terminates TLS)."""
        parsed = sections(SHIPPED_CONFIG.read_text())
        self.assertEqual(parsed["frontend dicom"], ["bind :104", "default_backend gateways_dicom"])
        self.assertEqual(parsed["frontend dicom_tls"], ["bind :2762", "default_backend gateways_dicom_tls"])
        self.assertNotRegex(SHIPPED_CONFIG.read_text().split("\nglobal", 1)[1], re.compile(r"^\s*bind .* ssl", re.M))

    def test_backends_balance_leastconn_send_proxy_v2_and_check_readyz(self) -> None:
        """Both backends: leastconn, PROXY v2 to the gateways, /readyz on the HTTP port every 2 s, 3 falls, 2 rises."""
        parsed = sections(SHIPPED_CONFIG.read_text())
        for name in ("backend gateways_dicom", "backend gateways_dicom_tls"):
            directives = parsed[name]
            self.assertIn("balance leastconn", directives, name)
            self.assertIn("option httpchk GET /readyz", directives, name)
            self.assertIn("http-check expect status 200", directives, name)
            self.assertIn("default-server check port 9102 inter 2s fall 3 rise 2 send-proxy-v2", directives, name)
            # The check goes to the HTTP port, so it must not carry a PROXY header.
            self.assertNotIn("check-send-proxy", " ".join(directives))
