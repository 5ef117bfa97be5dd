"""The front door's configuration (issue 14): ``listen[i].proxy_protocol`` and ``drain``, checked at load.

Errors carry the file, the line and the key path, as every configuration error does.
"""

from __future__ import annotations

from gateway.config.schema import DrainConfig, ProxyProtocolConfig
from tests.unit.config.test_load import MINIMAL, LoadTestCase, _text

#: A listener behind HAProxy; line 5 holds ``trusted``.
PROXIED = """\
ae_title: GW
listen:
  - host: 127.0.0.1
    port: 0
    proxy_protocol: {trusted: [%s]}
spool: spool
"""


class ProxyProtocolConfigTests(LoadTestCase):
    """``listen[i].proxy_protocol``."""

    def test_off_by_default(self) -> None:
        """A listener without the key takes no PROXY header."""
        config = self.load(MINIMAL)
        self.assertIsNone(config.listen[0].proxy_protocol)  # type: ignore[attr-defined]

    def test_trusted_networks_and_timeout(self) -> None:
        """Networks are kept (normalised); the deadline defaults to 5 s and takes a duration."""
        config = self.load(PROXIED % '10.0.0.5/32, "fd00::/64"')
        self.assertEqual(config.listen[0].proxy_protocol, ProxyProtocolConfig(("10.0.0.5/32", "fd00::/64"), 5.0))  # type: ignore[attr-defined]
        config = self.load(_text("""
            ae_title: GW
            listen:
              - host: 127.0.0.1
                port: 0
                proxy_protocol: {trusted: [127.0.0.1/32], timeout: 2s}
            spool: spool
            """))
        self.assertEqual(config.listen[0].proxy_protocol.timeout, 2.0)  # type: ignore[attr-defined]

    def test_bad_cidr_is_an_error_with_file_line_and_key(self) -> None:
        """A network with host bits set, or not an address at all, is refused at line 5 with its key path."""
        self.assertOneError(PROXIED % "10.0.0.5/24", 5, "listen[0].proxy_protocol.trusted[0]", "CIDR")
        self.assertOneError(PROXIED % "haproxy.local", 5, "listen[0].proxy_protocol.trusted[0]", "CIDR")

    def test_empty_or_missing_trusted_is_an_error(self) -> None:
        """Trusting nobody would refuse every connection: an empty or missing list is refused."""
        self.assertOneError(PROXIED % "", 5, "listen[0].proxy_protocol.trusted", "networks")
        errors = self.errors(_text("""
            ae_title: GW
            listen:
              - host: 127.0.0.1
                port: 0
                proxy_protocol: {timeout: 5s}
            spool: spool
            """))
        self.assertEqual([e.key_path for e in errors], ["listen[0].proxy_protocol.trusted"])

    def test_unknown_key_is_an_error(self) -> None:
        """A misspelt key inside proxy_protocol is refused."""
        errors = self.errors(_text("""
            ae_title: GW
            listen:
              - host: 127.0.0.1
                port: 0
                proxy_protocol: {trusted: [127.0.0.1/32], trust: [10.0.0.0/8]}
            spool: spool
            """))
        self.assertEqual([e.key_path for e in errors], ["listen[0].proxy_protocol.trust"])


class DrainConfigTests(LoadTestCase):
    """``drain: {grace: ...}``."""

    def test_default_grace_covers_the_shipped_haproxy_fall_times_inter(self) -> None:
        """The default grace (10 s) is at least fall x inter of the shipped HAProxy file (3 x 2 s)."""
        from tests.support.haproxy import SHIPPED_CONFIG

        self.assertEqual(self.load(MINIMAL).drain, DrainConfig(10.0))  # type: ignore[attr-defined]
        text = SHIPPED_CONFIG.read_text()
        self.assertIn("inter 2s fall 3 rise 2", text)
        self.assertGreaterEqual(DrainConfig().grace, 2 * 3)

    def test_grace_takes_a_duration_and_zero(self) -> None:
        """drain.grace accepts a duration, and 0 (refuse at once)."""
        self.assertEqual(self.load(MINIMAL + "drain: {grace: 30s}\n").drain.grace, 30.0)  # type: ignore[attr-defined]
        self.assertEqual(self.load(MINIMAL + "drain: {grace: 0}\n").drain.grace, 0.0)  # type: ignore[attr-defined]

    def test_bad_grace_is_an_error(self) -> None:
        """A negative or absurd grace is refused with its line and key."""
        self.assertOneError(MINIMAL + "drain: {grace: -1s}\n", 6, "drain.grace", "")
        self.assertOneError(MINIMAL + "drain: {grace: 2d}\n", 6, "drain.grace", "")
