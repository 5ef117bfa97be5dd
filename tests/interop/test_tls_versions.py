"""Old protocol versions at the TLS listener, with the alert read off the wire (HARDENING T08).

The row: a ClientHello with only SSLv3, TLS 1.0 or TLS 1.1 gets a
``protocol_version`` alert and fails (PS3.15 B.10 and B.12 ask for TLS 1.2
or later). :mod:`tests.interop.test_tls` probes TLS 1.1 with ``openssl
s_client`` and reads the gateway's own audit label; here the probe is a raw
ClientHello record from a plain socket (:mod:`tests.support.tlsprobe`:
OpenSSL 3 clients cannot send SSLv3 at all) and the answer is the TLS alert
record the gateway sends, parsed byte by byte (RFC 8446 6: level, then
description).

Controls, so each check can fail:

- the same probe builder with TLS 1.2 and TLS 1.3 on the same listener gets
  a ServerHello choosing that version: the refusals come from the version
  offered, not from a malformed probe;
- the TLS 1.0 and TLS 1.1 probes get a ServerHello from an ``openssl
  s_server`` that allows them (``-min_protocol TLSv1``, ``@SECLEVEL=0``).
  No SSLv3 server can be had here (Debian's OpenSSL 3 is built without
  SSLv3), so SSLv3 has the first control only.

What the gateway sends, pinned: a fatal (2) ``protocol_version`` (70) alert
for all three versions, then it closes the connection. That holds for SSLv3
too, though an OpenSSL 3.0 server (``openssl s_server``) answers the same
SSLv3 hello with ``handshake_failure`` (40): SSL 3.0 has no
``protocol_version`` alert (RFC 6101 5.4.2; TLS 1.0 added it, RFC 2246
7.2.2), so OpenSSL 3's ``ssl3_send_alert`` maps it to ``handshake_failure``
when the record version it answers with is SSLv3. The gateway's pyOpenSSL
is linked against the OpenSSL that ``cryptography`` bundles (4.x at the
time of writing), which dropped SSLv3 and that mapping, so it sends 70
in an SSLv3 record. Both are fatal refusals; the test pins 70 so that a
change of the TLS library shows up here.
"""

from __future__ import annotations

import subprocess

from twisted.trial.unittest import TestCase

from tests.interop.test_tls import OPENSSL, TLSGatewayMixin
from tests.support.gateway_process import wait_until
from tests.support.ports import free_port, port_is_open
from tests.support.tlsprobe import ALERT, HANDSHAKE, SSL3, TLS10, TLS11, TLS12, TLS13, probe

#: Alert level fatal and description protocol_version (RFC 8446 6).
FATAL, PROTOCOL_VERSION = 2, 70

#: The versions the row says must fail, with names for messages.
OLD_VERSIONS = {"SSLv3": SSL3, "TLS 1.0": TLS10, "TLS 1.1": TLS11}


class ProtocolVersionAlertTests(TLSGatewayMixin, TestCase):
    """SSLv3, TLS 1.0 and TLS 1.1 ClientHellos get a fatal protocol_version alert on the wire (T08)."""

    timeout = 90

    def setUp(self) -> None:
        self.start_tls_gateway()

    def test_old_versions_get_a_fatal_protocol_version_alert_and_new_ones_a_server_hello(self) -> None:
        """Raw SSLv3/TLS 1.0/TLS 1.1 hellos: alert 2/70 then close; TLS 1.2 and 1.3 hellos on the same listener: ServerHello."""
        for name, version in OLD_VERSIONS.items():
            answer = probe("127.0.0.1", self.tls_port, version)
            self.assertEqual(answer.record_type, ALERT, f"{name}: {answer.describe()}")
            self.assertEqual((answer.alert_level, answer.alert_description), (FATAL, PROTOCOL_VERSION),
                             f"{name}: {answer.describe()}")
            # OpenSSL answers in a record of the version the client offered.
            self.assertEqual(answer.record_version, version, f"{name}: {answer.describe()}")
            self.assertTrue(answer.closed, f"{name}: the connection stayed open after a fatal alert")
        # A TLS 1.0 hello in an SSLv3 record (as old clients sent) is refused the same way.
        answer = probe("127.0.0.1", self.tls_port, TLS10, record_version=SSL3)
        self.assertEqual((answer.record_type, answer.alert_level, answer.alert_description),
                         (ALERT, FATAL, PROTOCOL_VERSION), answer.describe())
        # Controls: the same builder offering TLS 1.2 or 1.3 gets a ServerHello choosing it.
        for version in (TLS12, TLS13):
            answer = probe("127.0.0.1", self.tls_port, version)
            self.assertEqual((answer.record_type, answer.server_version), (HANDSHAKE, version), answer.describe())
        self.assert_still_serving()

    def test_old_version_probes_get_a_server_hello_from_a_server_allowing_them(self) -> None:
        """Control: the raw TLS 1.0 and 1.1 hellos complete the first flight against ``openssl s_server -min_protocol TLSv1``."""
        # make test installs openssl (Makefile target peers): missing, the test fails, never skips.
        self.assertIsNotNone(OPENSSL, "the openssl command is not installed (make test installs the Debian package)")
        assert OPENSSL is not None
        port = free_port("127.0.0.1")
        server = subprocess.Popen(
            [OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}", "-min_protocol", "TLSv1",
             "-cipher", "DEFAULT:@SECLEVEL=0", "-cert", self.m.server, "-key", self.m.server_key, "-quiet"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.addCleanup(lambda: (server.kill(), server.wait()))
        wait_until(lambda: port_is_open("127.0.0.1", port), 10, "s_server did not start")
        for name, version in (("TLS 1.0", TLS10), ("TLS 1.1", TLS11)):
            answer = probe("127.0.0.1", port, version)
            self.assertEqual((answer.record_type, answer.server_version), (HANDSHAKE, version),
                             f"{name}: {answer.describe()}")
