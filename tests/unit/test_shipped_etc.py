"""The shipped operations files: Prometheus config and alert rules (promtool), the Grafana dashboard, the systemd unit."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from gateway.forward import DestinationWorker

ETC = Path(__file__).resolve().parents[2] / "etc"
PROMETHEUS = ETC / "prometheus"
DASHBOARD = ETC / "grafana" / "dicom-gateway.json"
UNIT = ETC / "systemd" / "dicom-gateway.service"


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel of the shipped dashboard."""
    data = json.loads(DASHBOARD.read_text())
    found = []
    for panel in data["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                found.append((inner["title"], target["expr"]))
    return found


def substitute(expr: str, instance: str = ".*", rate_interval: str = "1m", node: str = ".*") -> str:
    """Replace the dashboard's variables as Grafana would (``node``: issue 14's node variable, "All" by default)."""
    return expr.replace("$__rate_interval", rate_interval).replace("$instance", instance).replace("$node", node)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        raise SkipTest("promtool not installed (make test installs the Debian package prometheus)")
    return subprocess.run([promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)


class PromtoolTests(SynchronousTestCase):
    """promtool accepts the shipped Prometheus files and the alert unit tests pass."""

    def test_check_config(self) -> None:
        """promtool check config on prometheus.yml (which loads alerts.yml)."""
        result = _promtool("check", "config", "prometheus.yml")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_check_rules(self) -> None:
        """promtool check rules on alerts.yml."""
        result = _promtool("check", "rules", "alerts.yml")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_alert_unit_tests(self) -> None:
        """promtool test rules on alerts_test.yml passes."""
        result = _promtool("test", "rules", "alerts_test.yml")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_every_alert_has_a_unit_test_and_annotations(self) -> None:
        """Each alert has summary and description and appears in alerts_test.yml."""
        import yaml

        rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
        tests = (PROMETHEUS / "alerts_test.yml").read_text()
        self.assertEqual(len(rules), 14)
        for rule in rules:
            self.assertEqual(set(rule["annotations"]), {"summary", "description"}, rule["alert"])
            self.assertIn(f"alertname: {rule['alert']}", tests)


class DashboardTests(SynchronousTestCase):
    """The dashboard parses, uses its variables, and covers the six rows."""

    def test_rows_and_variables(self) -> None:
        """Rows intake, delivery, backlog, latency, capacity, cluster, Storage Commitment, Q/R and DICOMweb destinations; datasource, instance and node variables."""
        data = json.loads(DASHBOARD.read_text())
        rows = [p["title"] for p in data["panels"] if p["type"] == "row"]
        self.assertEqual(
            rows, ["Intake", "Delivery", "Backlog", "Latency", "Capacity", "Cluster", "Storage Commitment", "Query/Retrieve",
                   "DICOMweb destinations"]
        )
        variables = {v["name"]: v["type"] for v in data["templating"]["list"]}
        self.assertEqual(variables, {"datasource": "datasource", "instance": "query", "node": "query"})

    def test_cluster_row_per_node(self) -> None:
        """Issue 14: per-node receive rate, leases held and heartbeat age, each filtered on $node and grouped by node."""
        exprs = dict(dashboard_expressions())
        for title, metric in (
            ("Instances/s received per node", "dicom_gateway_instances_received_total"),
            ("Leases held per node", "dicom_gateway_node_leases"),
            ("Heartbeat age per node", "dicom_gateway_node_heartbeat_age_seconds"),
        ):
            self.assertIn(metric, exprs[title])
            self.assertIn('node=~"$node"', exprs[title])
            self.assertTrue(exprs[title].startswith(("sum by (node)", "max by (node)", "min by (node)")), title)

    def test_storage_commitment_row(self) -> None:
        """Issue 15: reports owed, overdue and dead; requests by outcome; latency p95 by policy."""
        exprs = dict(dashboard_expressions())
        owed = [e for t, e in dashboard_expressions() if t == "Commitment reports owed, overdue and dead"]
        for metric in ("owed", "overdue", "dead"):
            self.assertTrue(any(f"dicom_gateway_commitment_reports_{metric}" in e for e in owed), metric)
        self.assertIn("sum by (outcome) (rate(dicom_gateway_commitment_requests_total", exprs["Commitment requests/s by outcome"])
        self.assertIn(
            "histogram_quantile(0.95, sum by (le, policy) (rate(dicom_gateway_commitment_latency_seconds_bucket",
            exprs["Commitment latency p95 by policy"],
        )

    def test_query_retrieve_row(self) -> None:
        """Issue 16: queries by outcome, latency p95 and failures by source, retrieves and sub-operations by result."""
        exprs: dict[str, str] = {}
        for title, expr in dashboard_expressions():
            exprs[title] = exprs.get(title, "") + " " + expr
        self.assertIn("sum by (outcome) (rate(dicom_gateway_queries_total", exprs["Queries/s by outcome"])
        self.assertIn(
            "histogram_quantile(0.95, sum by (le, source) (rate(dicom_gateway_query_latency_seconds_bucket",
            exprs["Query latency p95 by source"],
        )
        self.assertIn("dicom_gateway_query_source_failures_total", exprs["Query source failures/s by source"])
        self.assertIn("sum by (verb, outcome) (rate(dicom_gateway_retrieves_total", exprs["Retrieves/s by verb and outcome"])
        self.assertIn("sum by (result) (rate(dicom_gateway_retrieve_suboperations_total", exprs["Retrieve sub-operations/s by result"])

    def test_panels_do_not_overlap(self) -> None:
        """No two panels share a grid cell (a panel added below the last row lands where Grafana draws it)."""
        data = json.loads(DASHBOARD.read_text())
        cells: dict[tuple[int, int], str] = {}
        for panel in data["panels"]:
            grid = panel["gridPos"]
            for y in range(grid["y"], grid["y"] + grid["h"]):
                for x in range(grid["x"], grid["x"] + grid["w"]):
                    self.assertNotIn((x, y), cells, (panel["title"], cells.get((x, y))))
                    cells[(x, y)] = panel["title"]

    def test_dicomweb_destinations_row(self) -> None:
        """Issue 17: STOW-RS requests by destination and code, and their p95 by destination."""
        exprs = dict(dashboard_expressions())
        self.assertIn("sum by (destination, code) (rate(dicom_gateway_dicomweb_responses_total",
                      exprs["STOW-RS requests/s by destination and code"])
        self.assertIn("histogram_quantile(0.95, sum by (le, destination) (rate(dicom_gateway_dicomweb_send_seconds_bucket",
                      exprs["STOW-RS request p95 by destination"])

    def test_every_expression_uses_the_instance_variable_and_contract_metrics(self) -> None:
        """Each expression filters on $instance and names only dicom_gateway_* metrics."""
        exprs = dashboard_expressions()
        self.assertGreater(len(exprs), 15)
        for title, expr in exprs:
            self.assertIn('instance=~"$instance"', expr, title)
            for name in re.findall(r"\b([a-z_]+)\{", expr):
                self.assertTrue(name.startswith("dicom_gateway_"), (title, name))

    def test_latency_percentiles_from_histograms(self) -> None:
        """p50, p95 and p99 of end_to_end_seconds are on the dashboard."""
        exprs = " ".join(e for _, e in dashboard_expressions())
        for q in ("0.5", "0.95", "0.99"):
            self.assertIn(f"histogram_quantile({q}, sum by (le, destination) (rate(dicom_gateway_end_to_end_seconds_bucket", exprs)


class SystemdUnitTests(SynchronousTestCase):
    """The unit runs unprivileged, reloads with SIGHUP, stops with SIGTERM beyond the grace, restarts on failure."""

    def setUp(self) -> None:
        self.unit = configparser.ConfigParser(strict=False, interpolation=None)
        self.unit.optionxform = str  # type: ignore[assignment,method-assign]
        self.unit.read_string(UNIT.read_text())

    def test_unprivileged_and_hardened(self) -> None:
        """A non-root user, no new privileges, a read-only system."""
        service = self.unit["Service"]
        self.assertNotIn(service["User"], ("", "root"))
        self.assertEqual(service["NoNewPrivileges"], "yes")
        self.assertEqual(service["ProtectSystem"], "strict")

    def test_reload_stop_restart(self) -> None:
        """SIGHUP reload, SIGTERM stop with a timeout longer than the workers' grace, restart on failure."""
        service = self.unit["Service"]
        self.assertEqual(service["ExecReload"], "/bin/kill -HUP $MAINPID")
        self.assertEqual(service["KillSignal"], "SIGTERM")
        import inspect

        grace = inspect.signature(DestinationWorker.__init__).parameters["grace"].default
        self.assertGreater(int(service["TimeoutStopSec"]), grace)
        self.assertEqual(service["Restart"], "on-failure")
