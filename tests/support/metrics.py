"""Read a running gateway's ``/metrics`` in interop tests.

:func:`metrics_text` scrapes, :func:`sample` sums one metric's samples
filtered by labels; both use prometheus-client's own parser, so the tests
read the exposition format the way Prometheus does.
"""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["metrics_text", "parse", "sample"]


def metrics_text(http_port: int) -> str:
    """Scrape ``/metrics``.

    :param http_port: the gateway's HTTP port.
    :returns: the exposition text.
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Flatten an exposition text to samples.

    :param text: ``/metrics`` output.
    :returns: ``(name, labels, value)`` per sample.
    """
    return [(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text) for s in family.samples]


def sample(text: str, name: str, **labels: str) -> float:
    """Sum the samples of one metric in an exposition text, filtered by labels.

    :param text: ``/metrics`` output.
    :param name: the sample name.
    :param labels: label values the samples must carry.
    :returns: the sum (0 when absent).
    """
    return sum(v for n, l, v in parse(text) if n == name and all(l.get(k) == x for k, x in labels.items()))
