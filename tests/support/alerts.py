"""Evaluate a shipped alert rule on metrics scraped from a running gateway.

The storage-fault tests (HARDENING D11, D12) check that the alert an
operator would get fires: :func:`alert_fires` takes the rule named from
``etc/prometheus/alerts.yml`` (its expression, ``for`` and labels as
shipped; only the annotations are left out, since they are text, not a
condition), turns a list of ``/metrics`` scrapes into promtool input series
one minute apart (the last scrape held long enough to cover the rule's
``for`` and any range in the expression), and runs ``promtool test rules``
expecting the alert to fire with the given labels.  promtool is Prometheus's
own evaluator, so this is the expression exactly as Prometheus would see it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tests.support.gateway_process import REPO_ROOT
from tests.support.metrics import parse

__all__ = ["alert_fires", "shipped_rule"]

#: The shipped alert rules.
ALERTS = REPO_ROOT / "etc" / "prometheus" / "alerts.yml"
#: The ``instance`` label the scrapes are given.
INSTANCE = "gw:9102"


def shipped_rule(name: str) -> dict[str, Any]:
    """Find one alert rule of ``etc/prometheus/alerts.yml``.

    :param name: the alert's name.
    :returns: the rule mapping.
    :raises AssertionError: if there is no such alert.
    """
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                return dict(rule)
    raise AssertionError(f"no alert {name} in {ALERTS}")


def _minutes(duration: str) -> int:
    """Convert a Prometheus duration (``5m``, ``15m``, ``2h``) to whole minutes, rounded up."""
    total = 0.0
    for number, unit in re.findall(r"(\d+)([smhd])", duration):
        total += int(number) * {"s": 1 / 60, "m": 1, "h": 60, "d": 1440}[unit]
    return int(total) + (total % 1 > 0)


def _series(scrapes: list[str], names: set[str], hold: int) -> list[dict[str, str]]:
    """Build promtool input series: one value per scrape, then the last one ``hold`` more times."""
    by_series: dict[str, list[float | None]] = {}
    for index, text in enumerate(scrapes):
        for name, labels, value in parse(text):
            if name not in names:
                continue
            labels = {**labels, "instance": INSTANCE}
            key = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
            by_series.setdefault(key, [None] * len(scrapes))[index] = value
    out = []
    for key, values in by_series.items():
        text = " ".join("_" if v is None else repr(float(v)) for v in values)
        last = values[-1]
        if last is not None and hold:
            text += f" {float(last)!r}x{hold}"
        out.append({"series": key, "values": text})
    return out


def alert_fires(name: str, scrapes: list[str], labels: dict[str, str]) -> tuple[bool, str]:
    """Tell whether a shipped alert fires on a sequence of scrapes.

    :param name: the alert's name in ``alerts.yml``.
    :param scrapes: ``/metrics`` texts, taken in this order (one minute apart
        as far as the rule is concerned).
    :param labels: the labels the firing alert must carry, besides the
        rule's own and ``instance``.
    :returns: whether promtool found the alert firing with those labels at
        the end, and promtool's output (for an assertion message).
    :raises AssertionError: if promtool is not installed.
    """
    promtool = shutil.which("promtool")
    if promtool is None:
        raise AssertionError("promtool is needed (make test installs the Debian package prometheus)")
    rule = shipped_rule(name)
    rule.pop("annotations", None)
    expr = str(rule["expr"])
    metric_names = set(re.findall(r"\b(dicom_gateway_[a-z0-9_]+)", expr))
    pending = _minutes(str(rule.get("for", "0m")))
    hold = pending + 2
    # Evaluated at the last scrape, or once it has been held for the rule's
    # ``for`` (a range in the expression still reaches the earlier scrapes
    # when the rule has no ``for``).
    eval_minute = len(scrapes) - 1 + (pending + 1 if pending else 0)
    with tempfile.TemporaryDirectory(prefix="gw-alert-") as tmp:
        rules = Path(tmp) / "rules.yml"
        rules.write_text(yaml.safe_dump({"groups": [{"name": "under-test", "rules": [rule]}]}))
        test = {
            "rule_files": [str(rules)],
            "evaluation_interval": "1m",
            "tests": [{
                "interval": "1m",
                "input_series": _series(scrapes, metric_names, hold),
                "alert_rule_test": [{
                    "eval_time": f"{eval_minute}m",
                    "alertname": name,
                    "exp_alerts": [{"exp_labels": {**rule.get("labels", {}), "instance": INSTANCE, **labels}}],
                }],
            }],
        }
        test_file = Path(tmp) / "test.yml"
        test_file.write_text(yaml.safe_dump(test, sort_keys=False))
        result = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True,
                                timeout=60, check=False)
        return result.returncode == 0, f"{test_file.read_text()}\n{result.stdout}{result.stderr}"
