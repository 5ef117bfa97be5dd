"""Benchmark a gateway restart with a large backlog (HARDENING F18 full size, L8).

The backlog is built offline with the gateway's own store API
(:meth:`SqliteQueueStore.add_instances`, batches of 10,000, fsync off during
set-up only) and spool layout (``<spool>/instances/<instance_id>.dcm``). The
instances are tiny (one ~1.5 KiB CT Part 10 file, hard-linked under every
instance id, a new source file every 60,000 links): the restart work depends
on the number of entries and files, not on their size. Every entry is queued
for one destination, ``pacs``, whose address is a TCP listener of this
script that records the time of the first connection: a connection proves
the worker leased entries and read a spooled file (dequeuing).

Then the real gateway process starts (``python -m gateway run``) and the
script prints:

* time from ``Popen`` to the DICOM port accepting connections (listening);
* time to the first connection at the destination (dequeuing);
* time until ``/metrics`` reports ``dicom_gateway_queue_depth{destination="pacs"}``
  equal to the backlog (metrics correct);
* the time of one ``/metrics`` scrape, its size and its number of series,
  the label names and how many distinct values each takes (cardinality:
  none may grow with the backlog; no per-UID labels).

Usage::

    .venv/bin/python bench/backlog.py                    # 100k (F18) then 1M (L8)
    .venv/bin/python bench/backlog.py --sizes 10000      # quick run

``--tmpdir`` puts the spool and journal on the disk you want to measure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import yaml  # noqa: E402

from gateway.queue.interfaces import InstanceRecord, NewEntry  # noqa: E402
from gateway.queue.sqlite import SqliteQueueStore  # noqa: E402

#: Links per source file (ext4 allows 65,000 links to one inode).
LINKS_PER_FILE = 60_000

#: CT Image Storage and Explicit VR Little Endian.
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


def free_port() -> int:
    """A free loopback port.

    :returns: the port.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_backlog(spool: Path, count: int, destination: str = "pacs", journal: Path | None = None) -> float:
    """Queue ``count`` tiny instances for ``destination`` in a spool and journal, offline.

    :param spool: the spool directory (created).
    :param count: how many instances (one entry each).
    :param destination: the destination's name.
    :param journal: the journal file (``<spool>/queue.sqlite`` by default).
    :returns: the seconds it took.
    """
    from tests.support.datasets import write_instance

    started = time.monotonic()
    instances = spool / "instances"
    instances.mkdir(parents=True, exist_ok=True)
    sources = spool.parent / f"{spool.name}-sources"
    sources.mkdir(exist_ok=True)
    store = SqliteQueueStore(str(journal or spool / "queue.sqlite"))
    store._conn.execute("PRAGMA synchronous = OFF")  # set-up only
    entries = [NewEntry("all", destination)]
    now = time.time() - count * 0.001
    batch: list[tuple[InstanceRecord, list[NewEntry]]] = []
    source = Path()
    size = 0
    for n in range(count):
        if n % LINKS_PER_FILE == 0:
            source = write_instance(sources / f"src{n // LINKS_PER_FILE}.dcm", EXPLICIT_VR_LE, 1024, seed=n)
            size = source.stat().st_size
        instance_id = f"{n:032x}"
        path = instances / f"{instance_id}.dcm"
        os.link(source, path)
        study = f"1.2.826.0.1.3680043.8.498.{n // 50}"
        batch.append((InstanceRecord(
            instance_id=instance_id, path=str(path), sop_class_uid=CT, sop_instance_uid=f"{study}.{n}",
            transfer_syntax_uid=EXPLICIT_VR_LE, size=size, sha256=f"{n:064x}", received_at=now + n * 0.001,
            correlation_id=f"c{n}", study_instance_uid=study, series_instance_uid=study + ".1",
            patient_id=f"P{n // 500}", accession_number=f"A{n // 50}", modality="CT",
        ), entries))
        if len(batch) == 10_000:
            store.add_instances(batch, now + n * 0.001, 0.0)
            batch = []
    if batch:
        store.add_instances(batch, now + count * 0.001, 0.0)
    store._conn.execute("PRAGMA synchronous = FULL")
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return time.monotonic() - started


class FirstConnection:
    """A TCP listener that notes when the first connection arrives and keeps it open.

    :ivar port: its port.
    :ivar at: ``time.monotonic()`` of the first accept, or ``None``.
    """

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port: int = self._sock.getsockname()[1]
        self.at: float | None = None
        self._held: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        """Accept connections (holding them open, never answering)."""
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            if self.at is None:
                self.at = time.monotonic()
            self._held.append(conn)

    def close(self) -> None:
        """Stop listening and drop every held connection."""
        self._sock.close()
        for conn in self._held:
            conn.close()


def gateway_config(root: Path, port: int, http_port: int, destination_port: int) -> Path:
    """Write a gateway configuration for the backlog run.

    :param root: the run's directory (the spool is ``root/spool``).
    :param port: the DICOM port.
    :param http_port: the HTTP port.
    :param destination_port: the destination's port.
    :returns: the config file.
    """
    config: dict[str, Any] = {
        "ae_title": "DICOMGW",
        "listen": [{"host": "127.0.0.1", "port": port}],
        "accept": {"calling_ae_titles": ["*"]},
        "spool": str(root / "spool"),
        "http": {"host": "127.0.0.1", "port": http_port},
        "destinations": {"pacs": {
            "ae_title": "PACS", "host": "127.0.0.1", "port": destination_port, "max_associations": 2,
            "batch_size": 50, "timeouts": {"connect": "5s", "acse": "60s", "dimse": "60s"},
        }},
        "routes": [{"name": "all", "forward": ["pacs"]}],
    }
    path = root / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def scrape(http_port: int) -> tuple[float, str]:
    """One ``/metrics`` scrape.

    :param http_port: the HTTP port.
    :returns: (seconds, text).
    """
    started = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return time.monotonic() - started, text


def depth(text: str, destination: str = "pacs") -> float | None:
    """Read ``dicom_gateway_queue_depth`` of one destination.

    :param text: a scrape.
    :param destination: the destination.
    :returns: the value, or ``None`` when absent.
    """
    prefix = f'dicom_gateway_queue_depth{{destination="{destination}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return None


def cardinality(text: str) -> dict[str, set[str]]:
    """Every label name of a scrape with the distinct values it takes.

    :param text: a scrape.
    :returns: ``{label: {values}}``.
    """
    from prometheus_client.parser import text_string_to_metric_families

    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for key, value in sample.labels.items():
                labels.setdefault(key, set()).add(value)
    return labels


def wait(predicate: Any, timeout: float, what: str) -> Any:
    """Poll until ``predicate()`` is true.

    :param predicate: the condition.
    :param timeout: seconds.
    :param what: for the error.
    :returns: the first true result.
    :raises SystemExit: on timeout.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.02)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


def port_open(port: int) -> bool:
    """Whether a loopback port accepts connections.

    :param port: the port.
    :returns: ``True`` if it does.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def run(count: int, tmpdir: str | None) -> dict[str, Any]:
    """Build a backlog of ``count``, start the gateway and measure.

    :param count: backlog size.
    :param tmpdir: where to put the run's directory.
    :returns: the figures.
    """
    root = Path(tempfile.mkdtemp(prefix=f"backlog-{count}-", dir=tmpdir))
    destination = FirstConnection()
    proc: subprocess.Popen[bytes] | None = None
    try:
        built = build_backlog(root / "spool", count)
        port, http_port = free_port(), free_port()
        config = gateway_config(root, port, http_port, destination.port)
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
        with open(root / "gateway.log", "wb") as log:
            started = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(config)], cwd=REPO_ROOT,
                                    env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait(lambda: port_open(port) or proc.poll() is not None, 300, "listening")
        if proc.poll() is not None:
            raise SystemExit((root / "gateway.log").read_text()[-3000:])
        listening = time.monotonic() - started
        wait(lambda: destination.at is not None, 300, "the first connection at the destination")
        assert destination.at is not None
        dequeuing = destination.at - started

        def correct() -> bool:
            try:
                return depth(scrape(http_port)[1]) == count
            except OSError:
                return False

        wait(correct, 300, f"queue_depth == {count}")
        metrics_correct = time.monotonic() - started
        timings = []
        for _ in range(5):
            seconds, text = scrape(http_port)
            timings.append(seconds)
        labels = cardinality(text)
        series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        return {
            "count": count, "build_s": built, "listening_s": listening, "dequeuing_s": dequeuing,
            "metrics_correct_s": metrics_correct, "scrape_ms": 1000 * sorted(timings)[len(timings) // 2],
            "metrics_bytes": len(text.encode()), "series": series,
            "labels": {k: len(v) for k, v in sorted(labels.items())},
            "journal_mb": (root / "spool" / "queue.sqlite").stat().st_size / 1e6,
        }
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        destination.close()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    """Parse arguments, run each size and print the figures."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated backlog sizes")
    parser.add_argument("--tmpdir", default=None, help="directory for the spool and journal")
    args = parser.parse_args()
    print(f"{'backlog':>9} {'build s':>8} {'listen s':>9} {'dequeue s':>10} {'metrics ok s':>13} "
          f"{'scrape ms':>10} {'bytes':>7} {'series':>7} {'journal MB':>11}  labels (distinct values)")
    for size in (int(s) for s in args.sizes.split(",")):
        r = run(size, args.tmpdir)
        print(f"{r['count']:>9} {r['build_s']:>8.1f} {r['listening_s']:>9.2f} {r['dequeuing_s']:>10.2f} "
              f"{r['metrics_correct_s']:>13.2f} {r['scrape_ms']:>10.1f} {r['metrics_bytes']:>7} {r['series']:>7} "
              f"{r['journal_mb']:>11.1f}  {r['labels']}", flush=True)


if __name__ == "__main__":
    main()
