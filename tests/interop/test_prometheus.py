"""A real Prometheus scrapes a running gateway; the shipped dashboard's PromQL is evaluated against it.

The gateway runs as a process with two destinations: ``archive`` (a folder,
always up) and ``down`` (a DICOM AE on a closed port, so its circuit opens).
``storescu`` sends instances as ``STORESCU`` (allow-listed, so it keeps its
label) and once as ``INTRUDER`` (rejected by the calling AE policy).
Prometheus (Debian package ``prometheus``; skipped only when it is not
installed) runs on loopback with a 1 s scrape interval, a temporary storage
directory and a configuration generated from ``etc/prometheus/prometheus.yml``
pointed at the gateway's HTTP port. The test reads counters and gauges back
through Prometheus's HTTP API, then evaluates every expression of
``etc/grafana/dicom-gateway.json`` with its variables substituted: each must
be valid and return data.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from twisted.trial.unittest import SkipTest, TestCase

from tests.support import dcmtk
from tests.support.datasets import bundled
from tests.support.gateway_process import GatewayProcess, dicom_destination, folder_destination, wait_until
from tests.support.ports import free_port, wait_for_port
from tests.unit.test_shipped_etc import PROMETHEUS, dashboard_expressions, substitute


def _get(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


class PrometheusInteropTests(TestCase):
    """Counters and gauges as a real Prometheus sees them; the dashboard's queries return data."""

    timeout = 240

    def setUp(self) -> None:
        self.prometheus = shutil.which("prometheus")
        if self.prometheus is None:
            raise SkipTest("prometheus not installed (make test installs the Debian package)")
        if dcmtk.skip_reason("storescu"):
            raise SkipTest(dcmtk.skip_reason("storescu"))
        self.tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.http_port = free_port()
        self.gateway = GatewayProcess(
            self.tmp / "gw",
            accept={"calling_ae_titles": ["STORESCU", "CT*"]},
            http={"host": "127.0.0.1", "port": self.http_port},
            destinations={
                "archive": folder_destination(self.tmp / "archive"),
                "down": dicom_destination(free_port(), "NOBODY", circuit={"failures": 1}),
                # Issue 17: a STOW-RS destination on a closed port: its requests get no
                # answer, counted with code "none" (the DICOMweb panels' data).
                "web": {"dicomweb": {"url": f"http://127.0.0.1:{free_port()}/dicom-web", "circuit": {"failures": 1},
                                     "retry": {"initial_delay": "200ms", "max_delay": "1s"}}},
            },
            routes=[{"name": "all", "forward": ["archive", "down", "web"]}],
            # Issue 16: C-FIND through the gateway, asking the closed port: the query
            # panels (latency and failures by source) get their data from one query.
            query={"sources": ["down"], "timeout": "5s"},
        )
        self.gateway.start()
        self.addCleanup(self.gateway.stop)
        wait_for_port("127.0.0.1", self.http_port)
        self.prom_port = free_port()
        self.base = f"http://127.0.0.1:{self.prom_port}"
        self._start_prometheus()

    def _start_prometheus(self) -> None:
        config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
        config["global"]["scrape_interval"] = "1s"
        config["global"]["evaluation_interval"] = "1s"
        config["rule_files"] = [str(PROMETHEUS / "alerts.yml")]
        config["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{self.http_port}"]
        path = self.tmp / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        log = open(self.tmp / "prometheus.log", "wb")
        self.addCleanup(log.close)
        proc = subprocess.Popen(
            [
                self.prometheus,
                f"--config.file={path}",
                f"--storage.tsdb.path={self.tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.prom_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

        def stop() -> None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

        self.addCleanup(stop)
        wait_for_port("127.0.0.1", self.prom_port, timeout=30)
        wait_until(lambda: self._ready(), 30, "prometheus /-/ready")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; fails the test on a PromQL error."""
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            answer = _get(url)
        except urllib.error.HTTPError as e:
            self.fail(f"{expr}: {e.read().decode()}")
        self.assertEqual(answer["status"], "success", expr)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, expr: str, predicate: Any, timeout: float = 60.0) -> float:
        """Poll ``expr`` until its first sample satisfies ``predicate``; returns the value."""

        def check() -> tuple[float] | None:
            v = self.value(expr)
            return (v,) if v is not None and predicate(v) else None

        found = wait_until(
            check,
            timeout,
            lambda: f"{expr} (now {self.value(expr)}); gateway log:\n{self.gateway.log_text()[-3000:]}",
            interval=0.5,
        )
        return float(found[0])

    def test_traffic_is_seen_by_prometheus_and_the_dashboard_returns_data(self) -> None:
        """Counters and gauges move as the traffic says; every dashboard expression is valid and returns data."""
        files = [str(bundled("CT_small.dcm")), str(bundled("MR_small.dcm"))]
        sent = dcmtk.storescu(self.gateway.port, files, called_ae="DICOMGW", calling_ae="STORESCU")
        self.assertEqual(sent.returncode, 0, sent.describe())
        refused = dcmtk.storescu(self.gateway.port, files[:1], called_ae="DICOMGW", calling_ae="INTRUDER")
        self.assertNotEqual(refused.returncode, 0)

        received = 'sum(dicom_gateway_instances_received_total{calling_ae="STORESCU"})'
        self.wait_value(received, lambda v: v == 2)
        self.assertEqual(self.value('dicom_gateway_instances_received_total{modality="CT"}'), 1)
        self.assertEqual(self.value('dicom_gateway_instances_received_total{modality="MR"}'), 1)
        self.assertGreater(self.value('dicom_gateway_received_bytes_total{calling_ae="STORESCU"}') or 0, 10000)
        self.wait_value('sum(dicom_gateway_associations_total{result="rejected",calling_ae="other"})', lambda v: v == 1)
        self.assertEqual(self.value('dicom_gateway_associations_total{result="accepted",calling_ae="STORESCU"}'), 1)
        self.assertEqual(self.value('dicom_gateway_route_matches_total{route="all"}'), 2)
        self.wait_value('dicom_gateway_forwarded_total{destination="archive"}', lambda v: v == 2)
        self.wait_value('dicom_gateway_destination_up{destination="down"}', lambda v: v == 0)
        self.assertEqual(self.value('dicom_gateway_destination_up{destination="archive"}'), 1)
        self.wait_value('dicom_gateway_queue_depth{destination="down"}', lambda v: v == 2)
        self.assertEqual(self.value('dicom_gateway_queue_depth{destination="archive"}'), 0)
        self.assertGreater(self.value('dicom_gateway_forward_failures_total{destination="down",kind="transient"}') or 0, 0)
        self.wait_value('dicom_gateway_queue_oldest_age_seconds{destination="down"}', lambda v: v > 0)
        self.assertGreater(self.value("dicom_gateway_spool_free_bytes") or 0, 0)
        self.assertGreater(self.value("dicom_gateway_spool_used_bytes") or 0, 0)
        self.assertEqual(self.value('dicom_gateway_end_to_end_seconds_count{destination="archive"}'), 2)
        self.assertEqual(len(self.query("dicom_gateway_build_info")), 1)
        # One C-FIND through the gateway: its only source is down, so the query fails (0xC001)
        # and the source's failure and latency are counted.
        from tests.support.qr import findscu

        findscu(self.gateway.port, "DICOMGW", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"],
                        outdir=self.tmp / "find", calling_aet="STORESCU")
        self.wait_value('dicom_gateway_query_source_failures_total{source="down"}', lambda v: v == 1)
        self.wait_value('dicom_gateway_query_latency_seconds_count{source="down"}', lambda v: v == 1)
        self.wait_value('dicom_gateway_dicomweb_responses_total{destination="web",code="none"}', lambda v: v >= 1)
        self.wait_value('dicom_gateway_dicomweb_send_seconds_count{destination="web"}', lambda v: v >= 1)
        # A couple of scrapes more, so range functions (rate, deriv) have two samples in their windows.
        self.wait_value("count_over_time(dicom_gateway_spool_free_bytes[1m])", lambda v: v >= 5)

        empty = []
        for title, expr in dashboard_expressions():
            if not self.query(substitute(expr)):
                empty.append(f"{title}: {expr}")
        self.assertEqual(empty, [], "dashboard expressions without data")
