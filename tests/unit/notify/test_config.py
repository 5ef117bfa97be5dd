"""Tests for the notification configuration (issue 18): sinks, a route's ``notify``, ``retention.studies``."""

from __future__ import annotations

from gateway.config.schema import CircuitConfig, ExpectSeries, FhirSink, Hl7Sink, NotifyConfig, WebhookSink
from tests.unit.config.test_load import MINIMAL, LoadTestCase

#: Lines 1-5 are MINIMAL; line 6 "destinations:", line 7 "  pacs: ...", line 8 "  hook:", line 9 its first key.
DESTINATIONS = MINIMAL + """\
destinations:
  pacs: {ae_title: PACS, host: 127.0.0.1, port: 104}
  hook:
"""


def config(sink: str, notify: str = "{sinks: [hook]}", forward: str = "[pacs]") -> str:
    """A configuration with a DICOM destination ``pacs``, the sink ``hook`` written as ``sink``, and a route."""
    body = "\n".join("    " + line for line in sink.strip("\n").splitlines())
    return DESTINATIONS + body + f"\nroutes:\n  - name: ct\n    forward: {forward}\n    notify: {notify}\n"


WEBHOOK = "webhook: {url: 'http://127.0.0.1:9000/hook/', secret_file: hook.key}"


class SinkDestinationTests(LoadTestCase):
    """``webhook:``, ``hl7:`` and ``fhir:`` make a destination a sink; settings inside, retry/circuit beside."""

    def test_webhook(self) -> None:
        """A webhook sink with its settings, retry and circuit beside it; relative paths resolved."""
        loaded = self.load(config(
            "webhook: {url: 'http://127.0.0.1:9000/hook/', secret_file: hook.key, phi: true, timeout: 5s}\n"
            "circuit: {failures: 2}"
        ))
        sink = loaded.destination("hook")  # type: ignore[attr-defined]
        self.assertEqual(sink, WebhookSink(
            name="hook", url="http://127.0.0.1:9000/hook", secret_file="/srv/gw/etc/hook.key", phi=True,
            timeout=5.0, circuit=CircuitConfig(failures=2),
        ))

    def test_hl7_and_fhir(self) -> None:
        """hl7: and fhir: sinks with their keys."""
        loaded = self.load(config("hl7: {host: ris, port: 2575, receiving_application: RIS, on_error: retry}"))
        self.assertEqual(loaded.destination("hook"),  # type: ignore[attr-defined]
                         Hl7Sink(name="hook", host="ris", port=2575, receiving_application="RIS", on_error="retry"))
        loaded = self.load(config("fhir: {url: 'https://fhir/r4', subject: search, patient_system: 'urn:oid:1.2'}"))
        self.assertEqual(loaded.destination("hook"),  # type: ignore[attr-defined]
                         FhirSink(name="hook", url="https://fhir/r4", subject="search", patient_system="urn:oid:1.2"))

    def test_missing_secret_file(self) -> None:
        """A webhook without secret_file: an error with its path and line."""
        self.assertOneError(config("webhook: {url: 'http://x/'}"), 9, "destinations.hook.webhook.secret_file", "required")

    def test_keys_beside_the_kind_are_refused(self) -> None:
        """A setting beside webhook: (not retry/circuit) is refused at the name's line."""
        self.assertOneError(config(WEBHOOK + "\nphi: true"), 8, "destinations.hook", "inside webhook:")

    def test_two_kinds(self) -> None:
        """webhook: and hl7: in one destination is refused."""
        self.assertOneError(config(WEBHOOK + "\nhl7: {host: x, port: 1}"), 8, "destinations.hook", "two sink kinds")

    def test_bad_values(self) -> None:
        """An unknown on_reject, and an hl7 port out of range: errors with their paths."""
        self.assertOneError(config("hl7: {host: x, port: 1, on_reject: ignore}"), 9,
                            "destinations.hook.hl7.on_reject", "must be one of")
        self.assertOneError(config("hl7: {host: x, port: 70000}"), 9, "destinations.hook.hl7.port", "65535")
        self.assertOneError(config("fhir: {url: 'http://x', subject: name}"), 9,
                            "destinations.hook.fhir.subject", "must be one of")


class RouteNotifyTests(LoadTestCase):
    """A route's ``notify``: sinks that exist and are sinks, durations, expected series."""

    def test_full(self) -> None:
        """Every key of notify, parsed to a NotifyConfig."""
        loaded = self.load(config(WEBHOOK, notify=(
            "{sinks: [hook], quiet_period: 1s, max_wait: 2m, "
            "expect_series: [{series_number: 1, instances: 10}, {modality: SR}], expect_count: true}"
        )))
        (route,) = loaded.routes  # type: ignore[attr-defined]
        self.assertEqual(route.notify, NotifyConfig(
            sinks=("hook",), quiet_period=1.0, max_wait=120.0,
            expect_series=(ExpectSeries(series_number=1, instances=10), ExpectSeries(modality="SR")),
            expect_count=True,
        ))
        self.assertEqual(loaded.unused_destinations(), ())  # type: ignore[attr-defined]

    def test_defaults(self) -> None:
        """Only sinks: 60 s quiet, 6 h max_wait; a route without notify has None."""
        loaded = self.load(config(WEBHOOK))
        self.assertEqual(loaded.routes[0].notify, NotifyConfig(sinks=("hook",)))  # type: ignore[attr-defined]

    def test_unknown_sink(self) -> None:
        """A sink name that is no destination: an error at the name's line suggesting the configured sinks."""
        self.assertOneError(config(WEBHOOK, notify="{sinks: [hooks]}"), 13, "routes[0].notify.sinks[0]",
                            "unknown sink 'hooks'; configured sinks: hook")

    def test_sinks_names_a_dicom_destination(self) -> None:
        """notify.sinks naming a DICOM destination is refused."""
        self.assertOneError(config(WEBHOOK, notify="{sinks: [pacs]}"), 13, "routes[0].notify.sinks[0]",
                            "not a sink")

    def test_forward_names_a_sink(self) -> None:
        """forward naming a sink is refused (it gets notifications, not instances)."""
        self.assertOneError(config(WEBHOOK, forward="[pacs, hook]"), 12, "routes[0].forward[1]", "notification sink")

    def test_empty_sinks_and_duplicates(self) -> None:
        """An empty sinks list, and a sink listed twice."""
        self.assertOneError(config(WEBHOOK, notify="{sinks: []}"), 13, "routes[0].notify.sinks", "at least one sink")
        self.assertOneError(config(WEBHOOK, notify="{sinks: [hook, hook]}"), 13, "routes[0].notify.sinks[1]",
                            "already listed")

    def test_max_wait_shorter_than_quiet_period(self) -> None:
        """max_wait below quiet_period could never wait the quiet period: refused."""
        self.assertOneError(config(WEBHOOK, notify="{sinks: [hook], quiet_period: 10m, max_wait: 1m}"), 13,
                            "routes[0].notify.max_wait", "must not be shorter")

    def test_expect_series_needs_a_selector(self) -> None:
        """An expect_series item with only a count names no series."""
        self.assertOneError(config(WEBHOOK, notify="{sinks: [hook], expect_series: [{instances: 3}]}"), 13,
                            "routes[0].notify.expect_series[0]", "series_number, modality")

    def test_unknown_notify_key(self) -> None:
        """A misspelt key (quiet) is reported with its path."""
        self.assertOneError(config(WEBHOOK, notify="{sinks: [hook], quiet: 1s}"), 13, "routes[0].notify.quiet", "")

    def test_unused_sink_is_an_unused_destination(self) -> None:
        """A sink no route's notify names is listed by unused_destinations (the start-up warning)."""
        loaded = self.load(config(WEBHOOK, notify="null").replace("    notify: null\n", ""))
        self.assertEqual(loaded.unused_destinations(), ("hook",))  # type: ignore[attr-defined]


class StudyRetentionTests(LoadTestCase):
    """``retention.studies`` sets how long completed study rows are kept."""

    def test_studies(self) -> None:
        """retention: {studies: 2d} -> two days; absent -> 30 days."""
        self.assertEqual(self.load(MINIMAL + "retention: {studies: 2d}\n").study_retention, 2 * 86400.0)  # type: ignore[attr-defined]
        self.assertEqual(self.load(MINIMAL).study_retention, 30 * 86400.0)  # type: ignore[attr-defined]

    def test_negative(self) -> None:
        """A negative duration is refused with its path."""
        self.assertOneError(MINIMAL + "retention: {studies: -1d}\n", 6, "retention.studies", "")


class SinkMaterialTests(LoadTestCase):
    """``check_material`` (run and check) reads a webhook sink's secret file, not a DICOM TLS block."""

    def test_missing_secret_file_is_a_problem(self) -> None:
        """A secret file that does not exist is named; no crash on the sink's HTTP TLS settings."""
        from gateway.security import check_material

        loaded = self.load(config(
            "webhook: {url: 'https://ris/hook', secret_file: /nonexistent/hook.key, tls: {ca: /nonexistent/ca.pem}}"
        ))
        problems = [p for p in check_material(loaded) if p.startswith("destination hook")]  # type: ignore[arg-type]
        self.assertTrue(any("secret_file" in p and "/nonexistent/hook.key" in p for p in problems), problems)
