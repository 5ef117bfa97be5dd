"""Outage run (HARDENING F01 at full size): the destination refuses connections for M minutes, then recovers.

It:

- runs the real gateway (``python -m gateway run -c CONFIG`` from this checkout, config, spool and
  JSON log in ``--workdir``) with one DICOM destination ``pacs`` configured with ``ae_title``,
  ``host`` and ``port`` only, so its retry, circuit and association settings are the shipped
  defaults (printed at the start, as loaded by the gateway's own config loader);
- keeps the destination's port bound but not listening for ``--outage-minutes`` (a connect is
  answered with RST: connection refused; holding the port also keeps any other process, or an
  ephemeral source port, off it);
- sends ``--count`` generated CT instances with pynetdicom on one association at the start; each
  must be acknowledged with C-STORE-RSP 0x0000 (PS3.4 Annex B.2.3);
- every ``--sample-every`` s (10) scrapes ``/metrics`` (queue depth, oldest age, destination_up,
  dead letters, forward failures, retries, circuit openings) and the gateway's RSS into
  ``samples.jsonl``;
- reads every connection attempt toward the destination from the gateway's JSON log (a refused
  connect fails at once, so the time of the failure line is the time of the attempt): the slot's
  own failures before the circuit opens, then the circuit probes; from them it prints the backoff
  intervals actually used;
- after the outage starts ``storescp +uf`` (one file per receipt, so duplicates can be counted) on
  that port, and measures the time to the first and to the last delivery, then checks that every
  acknowledged SOP Instance UID arrived, once, and that nothing was dead-lettered.

Exit status 1 if an acknowledged instance is missing, duplicated, dead-lettered or the queue did not
drain; 2 if the set-up failed (DCMTK missing, not every instance acknowledged). A recovery slower than
the backoff cap plus its jitter and a margin is printed as a FINDING (``recovery_within_cap`` in the
JSON) without changing the exit status.

Usage::

    .venv/bin/python bench/outage.py --outage-minutes 30 --json /tmp/outage30.json   # the F01 run
    .venv/bin/python bench/outage.py --outage-minutes 1                              # smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# Scripts in bench/ run with bench/ first on sys.path; keep it off so no file there can shadow a module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import pydicom  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian  # noqa: E402

from gateway.config.load import load_config  # noqa: E402
from gateway.config.schema import DicomDestination  # noqa: E402
from tests.support import dcmtk  # noqa: E402
from tests.support.datasets import ct_dataset  # noqa: E402
from tests.support.gateway_process import GatewayProcess  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.procstat import rss_kib  # noqa: E402

#: C-STORE-RSP status Success (PS3.4 Annex B.2.3); the only status that counts as acknowledged.
SUCCESS = 0x0000

#: The destination's name in the config.
DEST = "pacs"

#: Seconds allowed past the backoff cap (with jitter) for the probe, the C-ECHO, and the first store.
RECOVERY_MARGIN = 30.0


def log(message: str) -> None:
    """Print a time-stamped progress line on stderr.

    :param message: the line.
    """
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def _rss_kib(pid: int) -> int | None:
    """Read VmRSS of a process.

    :param pid: the process.
    :returns: KiB, or ``None`` if it is gone.
    """
    try:
        return rss_kib(pid)
    except (OSError, AssertionError):
        return None


def _metrics(http_port: int) -> dict[str, float]:
    """Scrape ``/metrics`` for the destination's series.

    :param http_port: the gateway's HTTP port.
    :returns: ``{name or name{other labels}: value}`` for every ``dicom_gateway_*`` series labelled
        ``destination="pacs"`` (histograms left out), prefix dropped; empty on failure.
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as rsp:
            text = rsp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for match in re.finditer(r"^dicom_gateway_(\w+)\{([^}]*)\} (\S+)$", text, re.M):
        name, labels, value = match.groups()
        if name.endswith(("_bucket", "_sum", "_count", "_created")):
            continue
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if pairs.pop("destination", None) != DEST:
            continue
        key = name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(pairs.items())) + "}" if pairs else "")
        out[key] = float(value)
    return out


class Sampler(threading.Thread):
    """Samples RSS and ``/metrics`` every ``every`` seconds into a list and ``samples.jsonl``.

    :param pid: the gateway's pid.
    :param http_port: its HTTP port.
    :param path: ``samples.jsonl``.
    :param every: seconds between samples.
    :param origin: wall-clock time the relative ``t`` of a sample counts from.
    """

    def __init__(self, pid: int, http_port: int, path: Path, every: float, origin: float) -> None:
        super().__init__(name="sampler", daemon=True)
        self.pid, self.http_port, self.path, self.every, self.origin = pid, http_port, path, every, origin
        self.samples: list[dict[str, Any]] = []
        self.phase = "outage"
        self.stop_event = threading.Event()
        self.lock = threading.Lock()

    def sample(self) -> dict[str, Any]:
        """Take one sample now.

        :returns: the sample.
        """
        now = time.time()
        row: dict[str, Any] = {"t": round(now - self.origin, 2), "wall": now, "phase": self.phase,
                               "rss_kib": _rss_kib(self.pid), **_metrics(self.http_port)}
        with self.lock:
            self.samples.append(row)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        return row

    def run(self) -> None:
        """Sample until stopped; a failed sample is logged, never fatal."""
        while not self.stop_event.wait(self.every):
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 - a sample must never end the run
                log(f"sample failed: {exc!r}")


def send(port: int, count: int) -> tuple[list[str], Counter[str]]:
    """Send ``count`` fresh CT instances on one association.

    :param port: the gateway's port.
    :param count: how many.
    :returns: the acknowledged SOP Instance UIDs, and the other outcomes counted.
    """
    from pynetdicom import AE

    ae = AE(ae_title="OUTAGE")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    acknowledged: list[str] = []
    other: Counter[str] = Counter()
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMGW")
    if not assoc.is_established:
        other["association_failed"] += 1
        return acknowledged, other
    try:
        for i in range(count):
            ds = ct_dataset(64, 64, seed=i)
            ds.InstanceNumber = i + 1
            ds.file_meta = pydicom.dataset.FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            rsp = assoc.send_c_store(ds)
            status = int(rsp.Status) if rsp is not None and "Status" in rsp else None
            if status == SUCCESS:
                acknowledged.append(str(ds.SOPInstanceUID))
            else:
                other["no response" if status is None else f"0x{status:04X}"] += 1
    finally:
        if assoc.is_established:
            assoc.release()
    return acknowledged, other


def parse_log(path: Path) -> list[dict[str, Any]]:
    """Read the gateway's JSON log for the destination's attempts and circuit changes.

    :param path: the log (one JSON object per line; other lines are skipped).
    :returns: events ``{"wall", "kind", "message"}`` in log order; ``kind`` is ``failed`` (a slot's
        connect failed), ``probe_failed``, ``circuit_open``, ``circuit_closed`` (the probe that
        succeeded), ``retry`` (an entry rescheduled: counts an attempt) or ``dead``.
    """
    patterns = (
        ("failed", re.compile(rf"^destination {DEST} failed \(\d+ in a row\)")),
        ("probe_failed", re.compile(rf"^probe of {DEST} failed")),
        ("circuit_open", re.compile(rf"^destination {DEST} is down, circuit open")),
        ("circuit_closed", re.compile(rf"^destination {DEST} is up, circuit closed")),
        ("retry", re.compile(rf"^retrying \S+ to {DEST} ")),
        ("dead", re.compile(rf"^dead-lettered \S+ for {DEST}")),
    )
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        message = str(record.get("message", ""))
        for kind, pattern in patterns:
            if pattern.search(message):
                wall = datetime.fromisoformat(record["time"]).timestamp()
                events.append({"wall": wall, "kind": kind, "message": message})
                break
    return events


def _received(folder: Path) -> tuple[Counter[str], int]:
    """Read every file ``storescp`` wrote.

    :param folder: its output directory.
    :returns: ``(SOP Instance UID -> files, unreadable files)``.
    """
    found: Counter[str] = Counter()
    unreadable = 0
    for path in folder.iterdir():
        if not path.is_file() or path.name.endswith(".log"):
            continue
        try:
            found[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] += 1
        except Exception:  # noqa: BLE001 - counted and reported
            unreadable += 1
    return found, unreadable


def _files(folder: Path) -> int:
    """Count the files in ``folder`` (storescp's output, logs excluded).

    :param folder: the folder.
    :returns: the count.
    """
    return sum(1 for p in folder.iterdir() if p.is_file() and not p.name.endswith(".log")) if folder.is_dir() else 0


def run(args: argparse.Namespace) -> int:
    """Run the outage and print the summary.

    :param args: the parsed command line.
    :returns: the exit status.
    """
    reason = dcmtk.skip_reason("storescp")
    if reason:
        print(reason, file=sys.stderr)
        return 2
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gw-outage-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    scp = dcmtk.Storescp(work / "scp", bit_preserving=False, extra=["+uf"])
    # Hold the destination's port: bound, never listening, so a connect is refused (RST) and no other
    # process can take the port during the outage.
    hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hold.bind(("127.0.0.1", scp.port))
    http_port = free_port()
    gateway = GatewayProcess(
        work / "gateway",
        destinations={DEST: {"ae_title": scp.ae_title, "host": "127.0.0.1", "port": scp.port}},
        routes=[{"name": "all", "forward": [DEST]}],
        http={"host": "127.0.0.1", "port": http_port},
        log={"format": "json"},
    )
    config = load_config(str(gateway.config_path))
    destination = next(d for d in config.destinations if d.name == DEST)
    assert isinstance(destination, DicomDestination)
    settings = {"retry": asdict(destination.retry), "circuit": asdict(destination.circuit),
                "max_associations": destination.max_associations, "batch_size": destination.batch_size,
                "connect_timeout": destination.connect_timeout, "acse_timeout": destination.acse_timeout}
    retry = destination.retry
    log(f"workdir {work}; gateway port {gateway.port}, http {http_port}; destination port {scp.port} (refusing)")
    log(f"destination settings (defaults): {json.dumps(settings)}")
    cap_bound = retry.max_delay  # backoff() never exceeds max_delay, jitter included
    sampler: Sampler | None = None
    timings: dict[str, float | None] = {"first_delivery_s": None, "all_delivered_s": None, "drained_s": None,
                                        "metrics_drained_s": None}
    try:
        gateway.start(timeout=60)
        t0 = time.time()
        t0_mono = time.monotonic()
        sampler = Sampler(gateway.pid, http_port, work / "samples.jsonl", args.sample_every, t0)
        start_sample = sampler.sample()
        sampler.start()
        acknowledged, other = send(gateway.port, args.count)
        sent_s = time.monotonic() - t0_mono
        log(f"sent {args.count} in {sent_s:.1f} s: {len(acknowledged)} acknowledged, other {dict(other)}")
        if len(acknowledged) != args.count:
            log("not every instance was acknowledged: set-up failed")
            return 2
        after_send = sampler.sample()
        outage_end = t0_mono + args.outage_minutes * 60
        last_report = time.monotonic()
        while (now := time.monotonic()) < outage_end:
            if gateway.returncode is not None:
                log(f"gateway exited with {gateway.returncode}")
                return 2
            if now - last_report >= 60:
                last_report = now
                events = parse_log(gateway.log_path)
                so_far = sum(1 for e in events if e["kind"] in ("failed", "probe_failed"))
                s = sampler.samples[-1]
                log(f"{(now - t0_mono) / 60:.1f} min: attempts {so_far}, queue_depth {s.get('queue_depth')}, "
                    f"oldest {s.get('queue_oldest_age_seconds')} s, up {s.get('destination_up')}, "
                    f"rss {s.get('rss_kib')} KiB")
            time.sleep(min(1.0, max(0.0, outage_end - now)))
        before = sampler.sample()
        log("outage over: starting storescp on the destination port")
        hold.close()
        up_wall = time.time()
        up_mono = time.monotonic()
        sampler.phase = "recovery"
        scp.start()
        deadline = up_mono + cap_bound + RECOVERY_MARGIN + args.drain_timeout
        while time.monotonic() < deadline:
            files = _files(scp.outdir)
            if files and timings["first_delivery_s"] is None:
                timings["first_delivery_s"] = round(time.monotonic() - up_mono, 2)
                log(f"first delivery {timings['first_delivery_s']} s after recovery")
            if files >= args.count and timings["all_delivered_s"] is None:
                timings["all_delivered_s"] = round(time.monotonic() - up_mono, 2)
                log(f"{files} files {timings['all_delivered_s']} s after recovery")
            if timings["all_delivered_s"] is not None:
                rows = gateway.queue_rows()
                if rows[DEST]["queued"] == 0 and rows[DEST]["in_flight"] == 0:
                    timings["drained_s"] = round(time.monotonic() - up_mono, 2)
                    break
            time.sleep(0.1)
        # The queue gauges come from a snapshot the store renews every few seconds: wait for it.
        metrics_deadline = time.monotonic() + 30
        while True:
            after = sampler.sample()
            if after.get("queue_depth") == 0 or time.monotonic() >= metrics_deadline:
                break
            time.sleep(0.5)
        timings["metrics_drained_s"] = round(time.monotonic() - up_mono, 2) if after.get("queue_depth") == 0 else None
        sampler.stop_event.set()
        sampler.join(30)
        rows = gateway.queue_rows()
        dead = gateway.dead_letters()
        rss_end = _rss_kib(gateway.pid)
        gateway.stop()
        scp.stop()
        found, unreadable = _received(scp.outdir)
    finally:
        if sampler is not None:
            sampler.stop_event.set()
        gateway.stop()
        scp.stop()
        hold.close()

    events = parse_log(gateway.log_path)
    down = [e for e in events if e["wall"] < up_wall]
    attempts = [e["wall"] for e in down if e["kind"] in ("failed", "probe_failed")]
    closed = [e["wall"] for e in events if e["kind"] == "circuit_closed" and e["wall"] >= up_wall]
    intervals = [round(b - a, 2) for a, b in zip(attempts, attempts[1:])]
    # What the policy asks for before jitter: the slot backs off between its own failures until the
    # circuit opens, then the probe loop starts again from initial_delay (gateway/forward.py).
    nominal = [min(retry.initial_delay * retry.multiplier ** k, retry.max_delay)
               for k in range(destination.circuit.failures - 1)]
    nominal += [min(retry.initial_delay * retry.multiplier ** k, retry.max_delay)
                for k in range(max(0, len(intervals) + 1 - len(nominal)))]
    # The wait that ended the outage: from the last refused attempt to the probe that succeeded.
    last_wait = round(closed[0] - attempts[-1], 2) if closed and attempts else None
    recovery_probe_s = round(closed[0] - up_wall, 2) if closed else None
    missing = [uid for uid in acknowledged if uid not in found]
    extra = [uid for uid in found if uid not in set(acknowledged)]
    duplicates = sum(n - 1 for n in found.values() if n > 1)
    # Intervals whose delay before jitter is the cap (jitter can only shorten them: backoff() clips at max_delay).
    at_cap = [k for k, n in enumerate(nominal[:len(intervals)]) if n >= retry.max_delay]
    first = timings["first_delivery_s"]
    within = first is not None and first <= cap_bound + RECOVERY_MARGIN
    summary: dict[str, Any] = {
        "workdir": str(work),
        "settings": settings,
        "outage_minutes": args.outage_minutes,
        "outage_seconds": round(up_wall - t0, 1),
        "count": args.count,
        "acknowledged": len(acknowledged),
        "send_seconds": round(sent_s, 2),
        "attempts_during_outage": len(attempts),
        "slot_failures": sum(1 for e in down if e["kind"] == "failed"),
        "failed_probes": sum(1 for e in down if e["kind"] == "probe_failed"),
        "circuit_opened_at_s": next((round(e["wall"] - t0, 2) for e in down if e["kind"] == "circuit_open"), None),
        "first_attempt_at_s": round(attempts[0] - t0, 2) if attempts else None,
        "attempt_times_s": [round(a - t0, 2) for a in attempts],
        "intervals_s": intervals,
        "nominal_intervals_s": [round(n, 2) for n in nominal],
        "interval_min_s": min(intervals) if intervals else None,
        "interval_max_s": max(intervals) if intervals else None,
        "intervals_at_cap": [intervals[k] for k in at_cap],
        "intervals_exactly_max_delay": sum(1 for k in at_cap if intervals[k] >= retry.max_delay - 0.05),
        "cap_reached_after_s": round(attempts[at_cap[0]] - t0, 1) if at_cap else None,
        "last_wait_s": last_wait,
        "retries_logged_during_outage": sum(1 for e in down if e["kind"] == "retry"),
        "before_recovery": {k: before.get(k) for k in sorted(before) if k not in ("wall",)},
        "queue_depth_before_recovery": before.get("queue_depth"),
        "oldest_age_before_recovery_s": before.get("queue_oldest_age_seconds"),
        "destination_up_before_recovery": before.get("destination_up"),
        "recovery_probe_s": recovery_probe_s,
        "first_delivery_s": first,
        "all_delivered_s": timings["all_delivered_s"],
        "drained_s": timings["drained_s"],
        "metrics_drained_s": timings.get("metrics_drained_s"),
        "delivered": len(acknowledged) - len(missing),
        "missing": len(missing),
        "missing_examples": missing[:5],
        "unexpected_uids": len(extra),
        "duplicates": duplicates,
        "unreadable_files": unreadable,
        "dead_letters": len(dead),
        "dead_lettered_logged": sum(1 for e in events if e["kind"] == "dead"),
        "queue_after": rows.get(DEST),
        "metrics_after": {k: v for k, v in after.items() if k not in ("wall", "phase", "t")},
        "rss_kib": {"gateway_start": start_sample.get("rss_kib"), "outage_start": after_send.get("rss_kib"),
                    "outage_end": before.get("rss_kib"), "end": rss_end},
        "recovery_within_cap": within,
        "recovery_bound_s": cap_bound + RECOVERY_MARGIN,
    }
    summary["ok"] = (summary["missing"] == 0 and summary["duplicates"] == 0 and summary["dead_letters"] == 0
                     and summary["dead_lettered_logged"] == 0 and summary["unexpected_uids"] == 0
                     and summary["unreadable_files"] == 0 and timings["drained_s"] is not None)
    print_summary(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["ok"] else 1


def print_summary(s: dict[str, Any]) -> None:
    """Print the summary as text.

    :param s: the summary.
    """
    r = s["settings"]["retry"]
    rss = s["rss_kib"]

    def mib(kib: int | None) -> str:
        return "-" if kib is None else f"{kib / 1024:.1f}"

    print(f"workdir {s['workdir']}")
    print(f"settings (shipped defaults): retry initial {r['initial_delay']:g} s x {r['multiplier']:g}, cap "
          f"{r['max_delay']:g} s, jitter +-{r['jitter']:.0%}, max_attempts {r['max_attempts']}, max_age "
          f"{r['max_age']:g} s; circuit opens after {s['settings']['circuit']['failures']} failures; "
          f"max_associations {s['settings']['max_associations']}, batch_size {s['settings']['batch_size']}")
    print(f"outage {s['outage_seconds']:.0f} s ({s['outage_minutes']:g} min); {s['acknowledged']}/{s['count']} "
          f"acknowledged in {s['send_seconds']} s at the start")
    print(f"attempts during the outage: {s['attempts_during_outage']} ({s['slot_failures']} slot connects, "
          f"{s['failed_probes']} circuit probes); first at {s['first_attempt_at_s']} s, circuit open at "
          f"{s['circuit_opened_at_s']} s; entries rescheduled as attempts: {s['retries_logged_during_outage']}")
    print(f"intervals (s): {s['intervals_s']}")
    print(f"nominal (s):   {s['nominal_intervals_s']} (before +-jitter; the last one is the wait the recovery ended)")
    print(f"interval min/max {s['interval_min_s']}/{s['interval_max_s']} s; at the cap: {s['intervals_at_cap']} "
          f"({s['intervals_exactly_max_delay']} exactly max_delay; first capped wait began "
          f"{s['cap_reached_after_s']} s into the outage); last wait (last refusal -> successful probe) "
          f"{s['last_wait_s']} s")
    print(f"before recovery: queue_depth {s['queue_depth_before_recovery']}, oldest age "
          f"{s['oldest_age_before_recovery_s']} s, destination_up {s['destination_up_before_recovery']}")
    print(f"after recovery: circuit closed {s['recovery_probe_s']} s, first delivery {s['first_delivery_s']} s, "
          f"all delivered {s['all_delivered_s']} s, queue drained {s['drained_s']} s (queue list), "
          f"{s['metrics_drained_s']} s (/metrics queue_depth 0)")
    print(f"delivered {s['delivered']}/{s['acknowledged']}, missing {s['missing']}, duplicates {s['duplicates']}, "
          f"unexpected {s['unexpected_uids']}, unreadable {s['unreadable_files']}, dead letters {s['dead_letters']}")
    print(f"gateway RSS MiB: start {mib(rss['gateway_start'])}, outage start {mib(rss['outage_start'])}, "
          f"outage end {mib(rss['outage_end'])}, end {mib(rss['end'])}")
    if not s["recovery_within_cap"]:
        print(f"FINDING: first delivery {s['first_delivery_s']} s after recovery, more than the backoff cap + "
              f"{RECOVERY_MARGIN:g} s ({s['recovery_bound_s']:g} s)")
    print(f"result: {'OK' if s['ok'] else 'FAILED'}")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run.

    :param argv: command-line arguments.
    :returns: the exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage-minutes", type=float, default=30.0, help="minutes the destination refuses (30)")
    parser.add_argument("--count", type=int, default=200, help="instances sent at the start (200)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between /metrics samples (10)")
    parser.add_argument("--drain-timeout", type=float, default=300.0,
                        help="seconds allowed past the recovery bound for all to arrive (300)")
    parser.add_argument("--workdir", default=None, help="work directory (default: a new temp dir; kept)")
    parser.add_argument("--json", default=None, help="also write the summary as JSON to this file")
    args = parser.parse_args(argv)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
