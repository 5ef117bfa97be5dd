"""Soak run (HARDENING L7): traffic, a flapping destination and ``kill -9`` of the gateway; nothing acknowledged lost.

For ``--minutes`` it:

- runs the real gateway (``python -m gateway run -c CONFIG`` from this checkout, config and spool in
  ``--workdir``) forwarding everything to a DCMTK ``storescp`` (``+uf``: one file per receipt, so
  duplicates can be counted) and, with ``--folder``, also to a folder destination;
- sends generated CT instances (unique SOP Instance UIDs, sizes spread around ``--size-kib``) from
  ``--senders`` pynetdicom SCU threads at an aggregate ``--rate`` per second; an instance counts as
  acknowledged only when its C-STORE-RSP status is 0x0000 (PS3.4 Annex B.2.3); its UID and the SHA-256
  of its Pixel Data are appended to ``acknowledged.jsonl``; an instance whose association broke (the
  kill) is re-sent on the next association, up to ``--attempts`` times, and never counted unless
  acknowledged;
- every ``--flap-every`` s stops ``storescp`` for ``--down-for`` s (destination flapping);
- every ``--kill-every`` s sends SIGKILL to the gateway and restarts it at once with the same config;
- every ``--sample-every`` s records the gateway's RSS, open fds, threads, queue depth and
  ``destination_up`` (from ``/metrics``) into ``samples.jsonl``.

Then it stops the senders, brings the destination up for good, waits for the queues to drain (at most
``--drain-timeout`` s) and checks that every acknowledged instance is at the destination(s) with the
same Pixel Data, counts duplicates (at-least-once allows them) and dead letters, and prints a summary
(``--json PATH`` also writes it as JSON). Exit status 1 if an acknowledged instance is missing or
altered, an entry was dead-lettered, or the queue did not drain; 2 if the set-up failed.

Usage::

    .venv/bin/python bench/soak.py --minutes 30                      # the L7 run (scaled)
    .venv/bin/python bench/soak.py --minutes 3 --flap-every 40 --kill-every 60   # smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# Scripts in bench/ run with bench/ first on sys.path; keep it off so no file there can shadow a module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import pydicom  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

from tests.support import dcmtk  # noqa: E402
from tests.support.datasets import ct_dataset  # noqa: E402
from tests.support.gateway_process import (  # noqa: E402
    GatewayProcess,
    dicom_destination,
    folder_destination,
)
from tests.support.ports import free_port  # noqa: E402
from tests.support.procstat import fd_count, rss_kib, thread_count  # noqa: E402

#: C-STORE-RSP status Success (PS3.4 Annex B.2.3); the only status that counts as acknowledged.
SUCCESS = 0x0000


def log(message: str) -> None:
    """Print a time-stamped progress line on stderr.

    :param message: the line.
    """
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


# -- the acknowledged set ----------------------------------------------------------------------


class Ledger:
    """What the senders sent and what the gateway acknowledged, shared by the sender threads.

    :param path: ``acknowledged.jsonl``; one line per acknowledged instance, flushed at once.
    """

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._file = open(path, "a", encoding="utf-8")
        self.acknowledged: dict[str, str] = {}
        self.sent = 0  # distinct instances offered at least once
        self.attempts = 0  # C-STORE requests issued
        self.unanswered = 0  # requests with no response (association broken)
        self.refused: Counter[int] = Counter()  # non-success statuses
        self.given_up = 0  # never acknowledged after --attempts
        self.association_failures = 0
        self.crashed = 0  # sender threads that died

    def ack(self, uid: str, digest: str) -> None:
        """Record an instance answered 0x0000.

        :param uid: its SOP Instance UID.
        :param digest: SHA-256 hex of its Pixel Data.
        """
        with self._lock:
            self.acknowledged[uid] = digest
            self._file.write(json.dumps({"uid": uid, "pixel_sha256": digest, "t": time.time()}) + "\n")
            self._file.flush()

    def count(self, name: str, status: int | None = None) -> None:
        """Increment a counter under the lock.

        :param name: the attribute name.
        :param status: for ``refused``, the status.
        """
        with self._lock:
            if name == "refused":
                self.refused[status or 0] += 1
            else:
                setattr(self, name, getattr(self, name) + 1)

    def close(self) -> None:
        """Close the file."""
        self._file.close()


@dataclass
class Pending:
    """An instance to send, with its Pixel Data digest and attempts so far."""

    ds: Any
    digest: str
    attempts: int = 0


class Sender(threading.Thread):
    """One SCU: keeps an association to the gateway and sends instances at ``rate`` per second.

    :param index: sender number (for the calling AE title and the random seed).
    :param port: the gateway's port.
    :param rate: instances per second for this sender.
    :param size: average instance size in bytes.
    :param attempts: how many times an unanswered instance is offered before giving up.
    :param ledger: where outcomes go.
    :param stop: set to end the thread.
    :param seed: random seed.
    """

    def __init__(self, index: int, port: int, rate: float, size: int, attempts: int, ledger: Ledger,
                 stop: threading.Event, seed: int) -> None:
        super().__init__(name=f"sender-{index}", daemon=True)
        self.index = index
        self.port = port
        self.interval = 1.0 / rate
        self.size = size
        self.max_attempts = attempts
        self.ledger = ledger
        self.stop_event = stop
        self.random = random.Random(seed * 1000 + index)
        self.retry: list[Pending] = []
        self.study = generate_uid()
        self.series = generate_uid()
        self.in_study = 0

    def make(self) -> Pending:
        """Generate a fresh instance: unique UIDs, 20 instances per study, size in [0.5, 1.5] x size.

        :returns: the instance with its Pixel Data digest.
        """
        if self.in_study >= 20:
            self.study, self.series, self.in_study = generate_uid(), generate_uid(), 0
        self.in_study += 1
        size = max(64, int(self.size * self.random.uniform(0.5, 1.5)))
        columns = 64
        rows = max(1, size // (columns * 2))
        ds = ct_dataset(rows, columns, study_instance_uid=self.study, series_instance_uid=self.series,
                        seed=self.random.getrandbits(32))
        ds.InstanceNumber = self.in_study
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        self.ledger.count("sent")
        return Pending(ds, hashlib.sha256(ds.PixelData).hexdigest())

    def run(self) -> None:
        """Run :meth:`loop`; a crash is logged and counted, so the summary fails."""
        try:
            self.loop()
        except BaseException as exc:  # noqa: BLE001 - reported, and the run fails
            self.ledger.count("crashed")
            log(f"{self.name} crashed: {exc!r}")
            raise

    def loop(self) -> None:
        """Associate, send paced instances, re-associate after a failure, until stopped."""
        from pynetdicom import AE

        ae = AE(ae_title=f"SOAK{self.index}")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            assoc = ae.associate("127.0.0.1", self.port, ae_title="DICOMGW")
            if not assoc.is_established:
                self.ledger.count("association_failures")
                self.stop_event.wait(0.5)
                continue
            try:
                while not self.stop_event.is_set() and assoc.is_established:
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        self.stop_event.wait(delay)
                        if self.stop_event.is_set():
                            break
                    next_at = max(next_at + self.interval, time.monotonic() - 1.0)
                    item = self.retry.pop(0) if self.retry else self.make()
                    self.send(assoc, item)
            finally:
                if assoc.is_established:
                    assoc.release()
        # Whatever is left to retry was never acknowledged.
        for _ in self.retry:
            self.ledger.count("given_up")

    def send(self, assoc: Any, item: Pending) -> None:
        """Send one instance and record its outcome.

        :param assoc: an established association.
        :param item: the instance.
        """
        item.attempts += 1
        self.ledger.count("attempts")
        try:
            rsp = assoc.send_c_store(item.ds)
            status = int(rsp.Status) if rsp is not None and "Status" in rsp else None
        except Exception:  # noqa: BLE001 - a broken association surfaces in several ways
            status = None
        if status == SUCCESS:
            self.ledger.ack(str(item.ds.SOPInstanceUID), item.digest)
            return
        if status is None:
            self.ledger.count("unanswered")
        else:
            self.ledger.count("refused", status)
        if item.attempts < self.max_attempts:
            self.retry.append(item)
        else:
            self.ledger.count("given_up")


# -- sampling --------------------------------------------------------------------------------


def _proc_status(pid: int) -> dict[str, int]:
    """Read VmRSS (KiB) and Threads from ``/proc/PID/status`` and count ``/proc/PID/fd``.

    :param pid: the process.
    :returns: ``{"rss_kib", "threads", "fds"}``; empty if the process is gone.
    """
    try:
        return {"rss_kib": rss_kib(pid), "threads": thread_count(pid), "fds": fd_count(pid)}
    except (OSError, AssertionError):
        return {}


def _metrics(http_port: int) -> dict[str, float]:
    """Scrape ``/metrics`` for queue depth and destination_up per destination.

    :param http_port: the gateway's HTTP port.
    :returns: ``{"queue_depth{dest}": v, "destination_up{dest}": v}``; empty on failure.
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as rsp:
            text = rsp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for match in re.finditer(
            r'^dicom_gateway_(queue_depth|destination_up|dead_letters)\{destination="([^"]+)"\} (\S+)$',
            text, re.M):
        out[f"{match.group(1)}[{match.group(2)}]"] = float(match.group(3))
    return out


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Soak:
    """State of one soak run (the main thread flaps and kills, a thread samples).

    :param args: the parsed command line.
    :param work: the work directory.
    """

    args: argparse.Namespace
    work: Path
    lifetime: int = 0
    kills: int = 0
    flaps: int = 0
    destination_up: bool = True
    samples: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sample(self, gateway: GatewayProcess, http_port: int, phase: str) -> None:
        """Take one sample of the running gateway and append it.

        :param gateway: the gateway.
        :param http_port: its HTTP port.
        :param phase: ``traffic`` or ``drain``.
        """
        with self.lock:
            pid, lifetime, up = gateway.pid, self.lifetime, self.destination_up
        row: dict[str, Any] = {"t": time.time(), "lifetime": lifetime, "pid": pid, "phase": phase,
                               "scp_up": up, **_proc_status(pid), **_metrics(http_port)}
        with self.lock:
            if row["pid"] == gateway.pid:  # not killed meanwhile
                self.samples.append(row)
        with open(self.work / "samples.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def _start_scp(scp: dcmtk.Storescp) -> None:
    """Start ``storescp``, retrying a few times (its port may linger after a stop).

    :param scp: the peer (keeps its port across restarts).
    :raises RuntimeError: if it never starts.
    """
    for attempt in range(10):
        try:
            scp.start()
            return
        except RuntimeError:
            if attempt == 9:
                raise
            time.sleep(1)


def _received(folder: Path, recursive: bool) -> tuple[dict[str, list[str]], int]:
    """Read every received file: SOP Instance UID and SHA-256 of its Pixel Data.

    :param folder: where the destination wrote files.
    :param recursive: walk sub-folders (the folder destination).
    :returns: ``({uid: [pixel digest per file]}, unreadable file count)``.
    """
    found: dict[str, list[str]] = defaultdict(list)
    unreadable = 0
    paths = folder.rglob("*") if recursive else folder.iterdir()
    for path in paths:
        if not path.is_file() or path.name.endswith(".log"):
            continue
        try:
            ds = pydicom.dcmread(path)
            found[str(ds.SOPInstanceUID)].append(hashlib.sha256(ds.PixelData).hexdigest())
        except Exception:  # noqa: BLE001 - a truncated file from a stopped storescp
            unreadable += 1
    return found, unreadable


def _check(acknowledged: dict[str, str], found: dict[str, list[str]]) -> dict[str, Any]:
    """Compare the acknowledged instances with what a destination holds.

    :param acknowledged: ``{uid: pixel digest}`` as sent.
    :param found: ``{uid: [pixel digests]}`` as received.
    :returns: counts and a few example UIDs.
    """
    missing = [uid for uid in acknowledged if uid not in found]
    altered = [uid for uid, digest in acknowledged.items()
               if uid in found and digest not in found[uid]]
    duplicates = sum(len(v) - 1 for v in found.values() if len(v) > 1)
    return {"delivered": sum(1 for uid in acknowledged if uid in found),
            "files": sum(len(v) for v in found.values()),
            "distinct": len(found), "lost": len(missing), "altered": len(altered),
            "duplicates": duplicates, "instances_with_duplicates": sum(1 for v in found.values() if len(v) > 1),
            "lost_examples": missing[:5], "altered_examples": altered[:5]}


def _lifetime_stats(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Summarise the traffic-phase samples of each gateway lifetime.

    :param samples: every sample.
    :returns: one row per lifetime: RSS first/last/max, the median of the last 3 RSS samples
        (the phase-matched figure: just before the kill or the end of traffic), fds and threads.
    """
    rows = []
    by_lifetime: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        # Only samples of a serving gateway: a process still starting (no /metrics yet) is not comparable.
        if s["phase"] == "traffic" and "rss_kib" in s and any(k.startswith("queue_depth[") for k in s):
            by_lifetime[s["lifetime"]].append(s)
    for lifetime, group in sorted(by_lifetime.items()):
        rss = [s["rss_kib"] for s in group]
        rows.append({"lifetime": lifetime, "samples": len(group), "rss_first_kib": rss[0],
                     "rss_last_kib": rss[-1], "rss_max_kib": max(rss),
                     "rss_end_median_kib": statistics.median(rss[-3:]),
                     "fds_min": min(s["fds"] for s in group), "fds_max": max(s["fds"] for s in group),
                     "threads_min": min(s["threads"] for s in group),
                     "threads_max": max(s["threads"] for s in group)})
    return rows


def run(args: argparse.Namespace) -> int:
    """Run the soak and print the summary.

    :param args: the parsed command line.
    :returns: the exit status.
    """
    reason = dcmtk.skip_reason("storescp")
    if reason:
        print(reason, file=sys.stderr)
        return 2
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gw-soak-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    soak = Soak(args, work)
    ledger = Ledger(work / "acknowledged.jsonl")
    scp = dcmtk.Storescp(work / "scp", bit_preserving=False, extra=["+uf"])
    http_port = free_port()
    destinations = {"pacs": dicom_destination(scp.port, scp.ae_title, max_associations=2,
                                              batch_size=50, max_delay=args.max_delay)}
    if args.folder:
        destinations["folder"] = folder_destination(work / "folder")
    gateway = GatewayProcess(work / "gateway", destinations=destinations,
                             routes=[{"name": "all", "forward": sorted(destinations)}],
                             http={"host": "127.0.0.1", "port": http_port},
                             spool={"path": str(work / "gateway" / "spool"), "min_free": "256MiB",
                                    "resume_margin": "128MiB"})
    log(f"workdir {work}; gateway port {gateway.port}, http {http_port}; storescp port {scp.port}")
    _start_scp(scp)
    stop_senders = threading.Event()
    stop_sampler = threading.Event()
    senders: list[Sender] = []
    started = time.monotonic()
    drained_in: float | None = None
    try:
        gateway.start(timeout=60)
        for i in range(args.senders):
            sender = Sender(i, gateway.port, args.rate / args.senders, args.size_kib * 1024,
                            args.attempts, ledger, stop_senders, args.seed)
            sender.start()
            senders.append(sender)

        phase = ["traffic"]

        def sampler() -> None:
            while not stop_sampler.wait(args.sample_every):
                try:
                    soak.sample(gateway, http_port, phase[0])
                except Exception as exc:  # noqa: BLE001 - a sample must never end the run
                    log(f"sample failed: {exc!r}")

        sampling = threading.Thread(target=sampler, name="sampler", daemon=True)
        sampling.start()
        end = started + args.minutes * 60
        next_kill = started + args.kill_every
        next_flap = started + args.flap_every
        up_at: float | None = None
        last_report = started
        while (now := time.monotonic()) < end:
            if up_at is not None and now >= up_at:
                _start_scp(scp)
                with soak.lock:
                    soak.destination_up = True
                up_at = None
                log("destination up")
            elif up_at is None and now >= next_flap:
                scp.stop()
                with soak.lock:
                    soak.destination_up = False
                soak.flaps += 1
                up_at = now + args.down_for
                next_flap += args.flap_every
                log(f"destination down for {args.down_for:g} s (flap {soak.flaps})")
            if now >= next_kill:
                with soak.lock:
                    gateway.kill()
                    soak.kills += 1
                    soak.lifetime += 1
                log(f"kill -9 #{soak.kills}; restarting")
                restart = time.monotonic()
                gateway.start(timeout=120)
                log(f"gateway listening again after {time.monotonic() - restart:.1f} s")
                next_kill += args.kill_every
            if now - last_report >= 60:
                last_report = now
                log(f"sent {ledger.sent} acknowledged {len(ledger.acknowledged)} "
                    f"unanswered {ledger.unanswered} refused {sum(ledger.refused.values())}")
            time.sleep(0.2)
        traffic_seconds = time.monotonic() - started
        log("stopping senders")
        stop_senders.set()
        for sender in senders:
            sender.join(120)
        phase[0] = "drain"
        if not soak.destination_up:
            _start_scp(scp)
            with soak.lock:
                soak.destination_up = True
        drain_start = time.monotonic()
        log(f"draining (at most {args.drain_timeout:g} s)")
        while time.monotonic() - drain_start < args.drain_timeout:
            rows = gateway.queue_rows()
            if all(r["queued"] == 0 and r["in_flight"] == 0 for r in rows.values()):
                drained_in = time.monotonic() - drain_start
                break
            time.sleep(1)
        stop_sampler.set()
        sampling.join(30)
        rows = gateway.queue_rows()
        dead = gateway.dead_letters()
        gateway.stop()
        scp.stop()
        log("reading what the destinations received")
        acknowledged = dict(ledger.acknowledged)
        ledger.close()
        found, unreadable = _received(scp.outdir, recursive=False)
        checks = {"pacs": {**_check(acknowledged, found), "unreadable_files": unreadable}}
        if args.folder:
            found, unreadable = _received(work / "folder", recursive=True)
            checks["folder"] = {**_check(acknowledged, found), "unreadable_files": unreadable}
    finally:
        stop_senders.set()
        stop_sampler.set()
        gateway.stop()
        scp.stop()

    lifetimes = _lifetime_stats(soak.samples)
    traffic = [s for s in soak.samples if s["phase"] == "traffic" and "rss_kib" in s
               and any(k.startswith("queue_depth[") for k in s)]
    first = lifetimes[0]["rss_end_median_kib"] if lifetimes else None
    # Drift is only meaningful for lifetimes with at least 3 samples (a short last lifetime gets None).
    drifts = [round(100.0 * (row["rss_end_median_kib"] - first) / first, 1) if row["samples"] >= 3 else None
              for row in lifetimes] if first else []
    summary: dict[str, Any] = {
        "workdir": str(work),
        "minutes": args.minutes, "traffic_seconds": round(traffic_seconds, 1),
        "rate_target": args.rate, "senders": args.senders, "size_kib": args.size_kib,
        "sent": ledger.sent, "attempts": ledger.attempts,
        "acknowledged": len(acknowledged),
        "acknowledged_rate": round(len(acknowledged) / traffic_seconds, 2),
        "unanswered": ledger.unanswered, "refused": {f"0x{k:04X}": v for k, v in ledger.refused.items()},
        "given_up": ledger.given_up, "association_failures": ledger.association_failures,
        "kills": soak.kills, "flaps": soak.flaps,
        "drained": drained_in is not None,
        "drain_seconds": None if drained_in is None else round(drained_in, 1),
        "queue_after": rows, "dead_letters": len(dead),
        "destinations": checks,
        "lost": max(c["lost"] for c in checks.values()),
        "altered": max(c["altered"] for c in checks.values()),
        "duplicates": checks["pacs"]["duplicates"],
        "lifetimes": lifetimes,
        "rss_drift_percent": drifts,
        "fds": [min(s["fds"] for s in traffic), max(s["fds"] for s in traffic)] if traffic else None,
        "threads": [min(s["threads"] for s in traffic), max(s["threads"] for s in traffic)] if traffic else None,
        "max_queue_depth": max((v for s in soak.samples for k, v in s.items()
                                if k.startswith("queue_depth[")), default=None),
    }
    summary["senders_crashed"] = ledger.crashed
    failed = (summary["lost"] > 0 or summary["altered"] > 0 or summary["dead_letters"] > 0
              or not summary["drained"] or summary["acknowledged"] == 0 or ledger.crashed > 0)
    summary["ok"] = not failed
    print_summary(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if failed else 0


def print_summary(s: dict[str, Any]) -> None:
    """Print the summary for a human.

    :param s: the summary mapping.
    """
    print(f"soak: {s['traffic_seconds']:.0f} s of traffic ({s['minutes']} min), {s['senders']} senders, "
          f"target {s['rate_target']}/s, ~{s['size_kib']} KiB; workdir {s['workdir']}")
    print(f"instances: sent {s['sent']}, acknowledged {s['acknowledged']} "
          f"({s['acknowledged_rate']}/s), C-STOREs {s['attempts']}, unanswered {s['unanswered']}, "
          f"refused {s['refused']}, given up {s['given_up']}, association failures {s['association_failures']}")
    print(f"events: kills {s['kills']}, flaps {s['flaps']}, max queue depth {s['max_queue_depth']}")
    print(f"drain: {'%.1f s' % s['drain_seconds'] if s['drained'] else 'NOT DRAINED'}; "
          f"dead letters {s['dead_letters']}")
    for name, c in s["destinations"].items():
        print(f"destination {name}: delivered {c['delivered']}/{s['acknowledged']}, lost {c['lost']}, "
              f"altered {c['altered']}, duplicates {c['duplicates']} "
              f"({c['instances_with_duplicates']} instances), files {c['files']}, "
              f"unreadable {c['unreadable_files']}"
              + (f", lost e.g. {c['lost_examples']}" if c["lost"] else ""))
    print("lifetime  samples  RSS first/last/max/end-median MiB  drift%  fds min-max  threads min-max")
    for row, drift in zip(s["lifetimes"], s["rss_drift_percent"]):
        mib = [row[k] / 1024 for k in ("rss_first_kib", "rss_last_kib", "rss_max_kib", "rss_end_median_kib")]
        print(f"{row['lifetime']:>8} {row['samples']:>8}  {mib[0]:7.1f} {mib[1]:7.1f} {mib[2]:7.1f} {mib[3]:7.1f}"
              f"          {str(drift):>6}  {row['fds_min']:>4}-{row['fds_max']:<6} "
              f"{row['threads_min']:>4}-{row['threads_max']}")
    print(f"fds {s['fds']}, threads {s['threads']}; result: {'OK' if s['ok'] else 'FAILED'}")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run.

    :param argv: command-line arguments.
    :returns: the exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help="duration of the traffic")
    parser.add_argument("--rate", type=float, default=20.0, help="aggregate instances/s (20)")
    parser.add_argument("--flap-every", type=float, default=300.0, help="seconds between destination stops (300)")
    parser.add_argument("--down-for", type=float, default=None,
                        help="seconds the destination stays down (default: min(60, flap-every/3))")
    parser.add_argument("--kill-every", type=float, default=600.0, help="seconds between kill -9 (600)")
    parser.add_argument("--senders", type=int, default=4, help="SCU threads (4)")
    parser.add_argument("--size-kib", type=int, default=64, help="average instance size (64 KiB, spread +-50%%)")
    parser.add_argument("--attempts", type=int, default=3, help="offers of an unanswered instance (3)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples (10)")
    parser.add_argument("--drain-timeout", type=float, default=600.0, help="seconds to wait for the drain (600)")
    parser.add_argument("--max-delay", default="5s", help="destination retry.max_delay (5s)")
    parser.add_argument("--folder", action="store_true", help="also forward to a folder destination")
    parser.add_argument("--workdir", default=None, help="work directory (default: a new temp dir; kept)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of sizes and pixels")
    parser.add_argument("--json", default=None, help="also write the summary as JSON to this file")
    args = parser.parse_args(argv)
    if args.down_for is None:
        args.down_for = min(60.0, args.flap_every / 3)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
