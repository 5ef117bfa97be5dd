"""Load benchmark: HARDENING rows L2 to L6 at full size, against DCMTK on the same run.

One subcommand per row (``all`` runs them in order); each prints its figures
and the load average of the machine before it starts (other work on the box
skews every figure here).  Every measurement uses fresh processes: the
gateway is a real ``python -m gateway run`` from this checkout with its
shipped durability (each instance fsynced, file and directory, and journaled
in SQLite with ``synchronous=FULL`` before its C-STORE-RSP); ``storescp``
fsyncs nothing.  DCMTK peers run with ``TCP_NODELAY=1`` unless ``--nagle``
(as shipped, DCMTK meets Nagle + delayed ACK on loopback: about 40 ms per
instance, which would flatter the gateway).

- ``l2``: inbound rate of ``--count`` 512 KiB instances split over N = 1, 4,
  10 parallel ``storescu`` associations, to the gateway (a route to a paused
  folder destination, so each instance is journaled but nothing is forwarded
  meanwhile) and to ``storescp --fork``.  Targets: >= 100/s in total, >= 40/s
  on one association (on 4 vCPU).
- ``l3``: C-STORE-RSP latency (p50, p90, p99, max) of 512 KiB instances sent
  at 80% of the gateway's L2 rate with 4 associations, by paced raw-socket
  SCUs (one process per association, each timing RQ -> RSP); the same
  paced load against ``storescp --fork``.  Target: p99 <= 250 ms.
- ``l4``: one ``--l4-mib`` (2048) MiB multi-frame instance, generated into a
  temporary file and deleted afterwards, received by the gateway and by
  ``storescp`` (bit-preserving and not): time, MB/s, RSS growth (sampled
  VmRSS and VmHWM).  Target: growth < 64 MB.
- ``l5``: forwarding rate to one ``storescp --fork`` with the destination's
  ``max_associations`` = 1 and 4 (instances of 40 studies, since one study
  keeps to one association); then the healthy destination's rate alone and
  with a second destination behind a ``FaultProxy`` capped at
  ``--slow-kbps`` per connection on the same route.  The queue is filled
  while the destinations are paused, then resumed: the rate is timed from the
  first file landing to the last, the median of ``--repeat`` (3) runs.
  Targets: >= 50 MB/s, a slow destination costs < 10%.
- ``l6``: back-to-back ``storescu`` runs of 200 x 512 KiB for ``--seconds``
  alone, then as long again under 100 idle connects/s (never a byte) plus 10
  garbage connects/s (random bytes, not a PDU): the drop in instances/s, the
  gateway's peak fds against its limit, RSS before, during and after, and
  the gateway's CPU time per acknowledged instance in each phase (beside the
  rate: it does not depend on how long the gateway waited for a core).
  Targets: drop <= 10%, fds <= limit, RSS flat.

Usage::

    .venv/bin/python bench/load.py all                  # full size, about 10 minutes
    .venv/bin/python bench/load.py l2 --count 200       # one row, smaller
    .venv/bin/python bench/load.py l6 --seconds 10      # smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# Scripts in bench/ run with bench/ first on sys.path; keep it off so no file there can shadow a module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO_ROOT / "bench"]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from tests.interop.test_load import (  # noqa: E402
    ConnectStorm,
    ProcessSampler,
    finish_storescus,
    scrape_metric,
    start_storescus,
)
from tests.support import dcmtk  # noqa: E402
from tests.support.paced import paced_latencies  # noqa: E402
from tests.support.procstat import fd_count, fd_limit, rss_kib, vm_hwm_kib  # noqa: E402
from tests.support.cputime import cpu_seconds  # noqa: E402
from tests.support.datasets import write_instance, write_multiframe  # noqa: E402
from tests.support.faultproxy import FaultPlan, FaultProxy  # noqa: E402
from tests.support.gateway_process import (  # noqa: E402
    GatewayProcess,
    dicom_destination,
    folder_destination,
    wait_until,
)

MB = 1e6
#: Spool floor for the benches: the shipped 512 MiB would refuse a 2 GB instance on a small disk.
SPOOL_FLOOR = {"min_free": "256MiB", "resume_margin": "64MiB"}


def banner(row: str, what: str) -> None:
    """Print a row's heading with the machine's state.

    :param row: the HARDENING row.
    :param what: one line saying what is measured.
    """
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n== {row}: {what}\n   load average {load}, {os.cpu_count()} CPUs "
          f"(the rows assume 4 vCPU), python {sys.version.split()[0]}", flush=True)


def dcmtk_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment of every DCMTK process.

    :param args: the command line.
    :returns: ``TCP_NODELAY=1`` unless ``--nagle``.
    """
    return {} if args.nagle else {"TCP_NODELAY": "1"}


def make_series(folder: Path, count: int, size: int, studies: int = 1) -> int:
    """Write ``count`` CT instances of about ``size`` bytes over ``studies`` studies.

    :param folder: the directory (created).
    :param count: instances.
    :param size: approximate size of each, in bytes.
    :param studies: studies the instances are spread over (round robin).
    :returns: the total bytes written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    uids = [(generate_uid(), generate_uid()) for _ in range(studies)]
    total = 0
    for i in range(count):
        study, series = uids[i % studies]
        path = write_instance(folder / f"i{i:05d}.dcm", ExplicitVRLittleEndian, size, seed=i,
                              study_instance_uid=study, series_instance_uid=series)
        total += path.stat().st_size
    return total


def split(folder: Path, parts: int, into: Path) -> list[Path]:
    """Hard-link a folder's files into ``parts`` sub-folders, round robin.

    :param folder: the files.
    :param parts: how many sub-folders.
    :param into: where to create them.
    :returns: the sub-folders.
    """
    folders = [into / f"part{k:02d}" for k in range(parts)]
    for sub in folders:
        sub.mkdir(parents=True)
    for i, path in enumerate(sorted(folder.iterdir())):
        os.link(path, folders[i % parts] / path.name)
    return folders


def files_in(folder: Path) -> int:
    """Count the files below a folder (recursively).

    :param folder: the directory (missing counts as empty).
    :returns: the count.
    """
    return sum(len(files) for _root, _dirs, files in os.walk(folder))


def storescp(outdir: Path, args: argparse.Namespace, *, fork: bool = True,
             bit_preserving: bool = False) -> dcmtk.Storescp:
    """Start a ``storescp`` (``--fork``: one process per association, so parallel ones run).

    :param outdir: its output folder.
    :param args: the command line.
    :param fork: pass ``--fork``.
    :param bit_preserving: pass ``+B`` (written as received) rather than ``-B``.
    :returns: the running process.
    """
    scp = dcmtk.Storescp(outdir, bit_preserving=bit_preserving, accept_all=False,
                         extra=["--fork"] if fork else [], env=dcmtk_env(args))
    scp.start()
    return scp


def gateway_process(work: Path, name: str, **overrides: Any) -> GatewayProcess:
    """Start a fresh gateway (shipped limits, a lower spool floor).

    :param work: the scratch directory.
    :param name: its sub-directory.
    :param overrides: config keys.
    :returns: the running gateway.
    """
    spool = {"path": str(work / name / "spool"), **SPOOL_FLOOR}
    gateway = GatewayProcess(work / name, spool=spool, **overrides)
    gateway.spool = Path(spool["path"])
    return gateway.start()


def discard(gateway: GatewayProcess) -> None:
    """Stop a gateway and delete its directory.

    :param gateway: the process.
    """
    gateway.stop()
    shutil.rmtree(gateway.dir, ignore_errors=True)


def parallel_send(port: int, folders: list[Path], args: argparse.Namespace,
                  called_ae: str = "DICOMGW") -> float:
    """Run one ``storescu +sd`` per folder at once and time them all.

    :param port: the receiver's port.
    :param folders: one folder per association.
    :param args: the command line.
    :param called_ae: the receiver's AE title.
    :returns: seconds from the first start to the last exit.
    """
    start = time.perf_counter()
    procs = start_storescus(port, folders, called_ae=called_ae, env=dcmtk_env(args))
    failed = finish_storescus(procs, timeout=3600)
    seconds = time.perf_counter() - start
    for n, code, tail in failed:
        print(f"   storescu {n} exited {code}: {tail}", file=sys.stderr)
    return seconds


# -- L2 ------------------------------------------------------------------------------------------


def run_l2(args: argparse.Namespace, work: Path) -> dict[int, float]:
    """L2: inbound instances/s and MB/s with N parallel associations, gateway and storescp.

    :param args: the command line.
    :param work: the scratch directory.
    :returns: the gateway's instances/s by N.
    """
    banner("L2", f"inbound rate, {args.count} x {args.kib} KiB over N parallel storescu associations")
    series = work / "l2-series"
    total = make_series(series, args.count, args.kib * 1024, studies=10)
    print(f"   {'target':<9} {'N':>3} {'count':>6} {'seconds':>8} {'instances/s':>12} {'MB/s':>8}"
          f" {'per assoc/s':>12}  received")
    rates: dict[int, float] = {}
    for n in args.parallel:
        folders = split(series, n, work / f"l2-n{n}")
        for target in ("gateway", "storescp"):
            if target == "gateway":
                gateway = gateway_process(work, f"l2-gw{n}",
                                          destinations={"archive": folder_destination(work / f"l2-archive{n}")},
                                          routes=[{"name": "all", "forward": ["archive"]}],
                                          http={"enabled": False})
                paused = gateway.cli("queue", "pause", "archive")
                if paused.returncode != 0:
                    print(paused.describe(), file=sys.stderr)
                try:
                    seconds = parallel_send(gateway.port, folders, args)
                    received = len(gateway.instances())
                finally:
                    discard(gateway)
                rates[n] = args.count / seconds
            else:
                scp = storescp(work / f"l2-scp{n}", args)
                try:
                    seconds = parallel_send(scp.port, folders, args, called_ae=scp.ae_title)
                    received = files_in(scp.outdir)
                finally:
                    scp.stop()
                    shutil.rmtree(scp.outdir, ignore_errors=True)
            rate = args.count / seconds
            print(f"   {target:<9} {n:>3} {args.count:>6} {seconds:>8.2f} {rate:>12.1f} "
                  f"{total / seconds / MB:>8.1f} {rate / n:>12.1f}  {received}", flush=True)
        shutil.rmtree(work / f"l2-n{n}")
    shutil.rmtree(series)
    return rates


# -- L3 ------------------------------------------------------------------------------------------


def describe_latencies(target: str, latencies: list[float]) -> str:
    """Format latency percentiles as a table row.

    :param target: ``gateway`` or ``storescp``.
    :param latencies: seconds, ``-1`` for failures.
    :returns: one line.
    """
    ok = sorted(x for x in latencies if x >= 0)
    if len(ok) < 2:
        return f"   {target:<9} no successful sends"
    cuts = statistics.quantiles(ok, n=100, method="inclusive")
    failed = len(latencies) - len(ok)
    return (f"   {target:<9} {len(ok):>6} {cuts[49] * 1000:>8.1f} {cuts[89] * 1000:>8.1f} "
            f"{cuts[98] * 1000:>8.1f} {ok[-1] * 1000:>8.1f}  {failed} failed")


def run_l3(args: argparse.Namespace, work: Path, l2_rate: float | None) -> None:
    """L3: C-STORE-RSP latency percentiles at 80% of the L2 load.

    :param args: the command line.
    :param work: the scratch directory.
    :param l2_rate: the gateway's L2 rate with ``args.l3_associations`` associations
        (``None``: measure it first, with ``--count`` instances).
    """
    n = args.l3_associations
    if args.rate:
        rate = args.rate
    else:
        if l2_rate is None:
            print(f"\n   (calibrating: L2 with N = {n}, {args.count} instances)")
            saved = args.parallel
            args.parallel = [n]
            l2_rate = run_l2(args, work)[n]
            args.parallel = saved
        rate = 0.8 * l2_rate
    count = max(n * 20, int(rate * args.l3_seconds))
    count -= count % n
    banner("L3", f"C-STORE-RSP latency, {count} x {args.kib} KiB paced at {rate:.1f}/s "
                 f"over {n} associations")
    series = work / "l3-series"
    make_series(series, count, args.kib * 1024, studies=n)
    folders = split(series, n, work / "l3-parts")
    print(f"   {'target':<9} {'ok':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    gateway = gateway_process(work, "l3-gw", destinations={"archive": folder_destination(work / "l3-archive")},
                              routes=[{"name": "all", "forward": ["archive"]}], http={"enabled": False})
    gateway.cli("queue", "pause", "archive")
    try:
        latencies = paced_latencies(gateway.port, "DICOMGW", folders, rate)
        print(describe_latencies("gateway", latencies), flush=True)
        if min(latencies) < 0:
            print("   gateway log, lines about ends and failures:\n" + "\n".join(
                line for line in gateway.log_text().splitlines()
                if "abort" in line or ("status 0x" in line and "status 0x0000" not in line))[-3000:])
    finally:
        discard(gateway)
    scp = storescp(work / "l3-scp", args)
    try:
        latencies = paced_latencies(scp.port, scp.ae_title, folders, rate)
        print(describe_latencies("storescp", latencies), flush=True)
        if min(latencies) < 0:
            print("   storescp log tail:\n" + scp.log_text()[-1500:])
    finally:
        scp.stop()
        shutil.rmtree(scp.outdir, ignore_errors=True)
    shutil.rmtree(series)
    shutil.rmtree(work / "l3-parts")


# -- L4 ------------------------------------------------------------------------------------------


def _receive_big(pid: int, send: Callable[[], dcmtk.Result], check: Callable[[], bool]) -> tuple[float, int, int, int]:
    """Time one big send while sampling the receiver's memory.

    :param pid: the receiving process.
    :param send: runs the sender to completion.
    :param check: tells whether the instance arrived whole.
    :returns: (seconds, RSS before KiB, sampled peak VmRSS KiB, VmHWM after KiB).
    """
    before = rss_kib(pid)
    sampler = ProcessSampler(pid, interval=0.01).start()
    start = time.perf_counter()
    result = send()
    seconds = time.perf_counter() - start
    sampler.stop()
    hwm = vm_hwm_kib(pid)
    if result.returncode != 0 or not check():
        print(result.describe()[-2000:], file=sys.stderr)
    return seconds, before, sampler.peak_rss_kib, hwm


def run_l4(args: argparse.Namespace, work: Path) -> None:
    """L4: one big multi-frame instance; time, MB/s and RSS growth of the receiver.

    :param args: the command line.
    :param work: the scratch directory.
    """
    banner("L4", f"one {args.l4_mib} MiB multi-frame instance, one association")
    source = work / "l4-big.dcm"
    started = time.perf_counter()
    write_multiframe(source, args.l4_mib * 1024 * 1024)
    size = source.stat().st_size
    print(f"   generated {size / MB:.0f} MB in {time.perf_counter() - started:.1f} s (deleted afterwards)")
    print(f"   {'receiver':<22} {'seconds':>8} {'MB/s':>8} {'RSS before':>11} {'peak VmRSS':>11} "
          f"{'VmHWM':>8} {'growth':>8}  (MiB)")

    def row(name: str, figures: tuple[float, int, int, int]) -> None:
        seconds, before, peak, hwm = figures
        growth = max(peak, hwm) - before
        print(f"   {name:<22} {seconds:>8.2f} {size / seconds / MB:>8.1f} {before / 1024:>11.1f} "
              f"{peak / 1024:>11.1f} {hwm / 1024:>8.1f} {growth / 1024:>8.1f}", flush=True)

    try:
        gateway = gateway_process(work, "l4-gw", http={"enabled": False})
        try:
            warm = write_instance(work / "l4-warm.dcm", ExplicitVRLittleEndian, 8192)
            dcmtk.storescu(gateway.port, [warm], env=dcmtk_env(args))
            row("gateway", _receive_big(
                gateway.pid, lambda: dcmtk.storescu(gateway.port, [source], env=dcmtk_env(args), timeout=3600),
                lambda: len(gateway.instances()) == 2))
        finally:
            discard(gateway)
        for bit_preserving in (True, False):
            scp = storescp(work / "l4-scp", args, fork=False, bit_preserving=bit_preserving)
            try:
                row(f"storescp {'+B' if bit_preserving else '-B'}", _receive_big(
                    scp.pid, lambda: dcmtk.storescu(scp.port, [source], called_ae=scp.ae_title,
                                                    env=dcmtk_env(args), timeout=3600),
                    lambda: files_in(scp.outdir) == 1))
            finally:
                scp.stop()
                shutil.rmtree(scp.outdir, ignore_errors=True)
    finally:
        source.unlink(missing_ok=True)


# -- L5 ------------------------------------------------------------------------------------------


def forward_rate(args: argparse.Namespace, work: Path, series: Path, count: int, slots: int,
                 slow: bool) -> tuple[float, float]:
    """Fill a gateway's queue with the destinations paused, resume, and time the healthy one.

    :param args: the command line.
    :param work: the scratch directory.
    :param series: the instances (several studies).
    :param count: how many there are.
    :param slots: ``max_associations`` of each destination.
    :param slow: also route every instance to a destination behind a bandwidth-capped proxy.
    :returns: (seconds from the first file landing at the healthy destination to the last,
        seconds from the resume command to the last).
    """
    tag = f"l5-{slots}{'-slow' if slow else ''}"
    healthy = storescp(work / f"{tag}-healthy", args)
    names = ["healthy"]
    destinations = {"healthy": dicom_destination(healthy.port, healthy.ae_title, max_associations=slots,
                                                 batch_size=50)}
    slow_scp = proxy = None
    if slow:
        slow_scp = storescp(work / f"{tag}-slow", args)
        proxy = FaultProxy(slow_scp.port, lambda _n: FaultPlan(bandwidth=args.slow_kbps * 1000)).start()
        destinations["slow"] = dicom_destination(proxy.port, slow_scp.ae_title, max_associations=slots,
                                                 batch_size=50, timeouts={"connect": "5s", "acse": "30s",
                                                                          "dimse": "600s"})
        names.append("slow")
    gateway = gateway_process(work, f"{tag}-gw", destinations=destinations,
                              routes=[{"name": "all", "forward": names}], http={"enabled": False})
    try:
        for name in names:
            gateway.cli("queue", "pause", name)
        parallel_send(gateway.port, split(series, 4, work / f"{tag}-parts"), args)
        wait_until(lambda: all(row["queued"] == count for row in gateway.queue_rows().values()), 120,
                   "every instance queued")
        resumed = time.perf_counter()
        for name in names:
            gateway.cli("queue", "resume", name)
        first = wait_until(lambda: files_in(healthy.outdir) > 0 and time.perf_counter(), 600,
                           "the first file at the healthy destination", interval=0.005)
        wait_until(lambda: files_in(healthy.outdir) >= count, 1800, "every file at the healthy destination",
                   interval=0.01)
        last = time.perf_counter()
    finally:
        discard(gateway)
        for scp in (healthy, slow_scp):
            if scp is not None:
                scp.stop()
                shutil.rmtree(scp.outdir, ignore_errors=True)
        if proxy is not None:
            proxy.stop()
        shutil.rmtree(work / f"{tag}-parts", ignore_errors=True)
    return last - first, last - resumed


def run_l5(args: argparse.Namespace, work: Path) -> None:
    """L5: forwarding MB/s per destination, and what a slow destination costs a healthy one.

    :param args: the command line.
    :param work: the scratch directory.
    """
    count = args.count
    banner("L5", f"forwarding {count} x {args.kib} KiB (40 studies) to storescp --fork, queue filled while paused")
    series = work / "l5-series"
    total = make_series(series, count, args.kib * 1024, studies=40)
    per_instance = total / count
    print(f"   {'setup':<36} {'slots':>5} {'seconds':>8} {'instances/s':>12} {'MB/s':>8}  "
          f"(first->last file; from resume)")

    def row(name: str, slots: int, slow: bool) -> float:
        # The median of --repeat runs: one run of a few seconds on a shared 2-core box is noisy.
        runs = sorted(forward_rate(args, work, series, count, slots, slow) for _ in range(args.repeat))
        seconds, from_resume = runs[len(runs) // 2]
        mbs = (count - 1) * per_instance / seconds / MB
        print(f"   {name:<36} {slots:>5} {seconds:>8.2f} {(count - 1) / seconds:>12.1f} {mbs:>8.1f}  "
              f"({from_resume:.2f} s from resume; runs {', '.join(f'{r[0]:.2f}' for r in runs)} s)", flush=True)
        return mbs

    alone = {}
    for slots in args.slots:
        alone[slots] = row("healthy alone", slots, False)
    slots = max(args.slots)
    with_slow = row(f"healthy + slow ({args.slow_kbps} kB/s/conn)", slots, True)
    cost = (alone[slots] - with_slow) / alone[slots] * 100
    print(f"   a slow destination costs the healthy one {cost:.1f}% of its rate (target < 10%)")
    shutil.rmtree(series)


# -- L6 ------------------------------------------------------------------------------------------


def legit_rate(gateway: GatewayProcess, series: Path, count: int, seconds: float,
               args: argparse.Namespace) -> tuple[float, int, float]:
    """Run ``storescu`` on a series back to back for ``seconds``; spooled files are deleted between runs.

    :param gateway: the receiver (no routes: instances are kept in ``unrouted/``).
    :param series: the folder sent by each run.
    :param count: instances in it.
    :param seconds: how long to keep sending.
    :param args: the command line.
    :returns: (instances/s over the storescu run time, failed runs, gateway CPU seconds per
        instance acknowledged over the whole phase: a storm's own cost is included).
    """
    sent = failed = 0
    busy = 0.0
    cpu0 = cpu_seconds(gateway.pid)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        result = dcmtk.storescu(gateway.port, [series], extra=["+sd"], env=dcmtk_env(args), timeout=600)
        busy += time.perf_counter() - start
        if result.returncode != 0:
            failed += 1
        else:
            sent += count
        # Keep the disk from filling up: acknowledged, unrouted instances are not needed here.
        for path in (gateway.spool / "unrouted").glob("*.dcm"):
            path.unlink()
    return sent / busy, failed, (cpu_seconds(gateway.pid) - cpu0) / max(sent, 1)


def run_l6(args: argparse.Namespace, work: Path) -> None:
    """L6: legitimate storescu throughput alone vs under idle and garbage connects.

    :param args: the command line.
    :param work: the scratch directory.
    """
    banner("L6", f"storescu {args.l6_count} x {args.kib} KiB back to back, {args.seconds:g} s alone, then "
                 f"{args.seconds:g} s under {args.idle_rate:g} idle + {args.garbage_rate:g} garbage connects/s")
    series = work / "l6-series"
    make_series(series, args.l6_count, args.kib * 1024)
    gateway = gateway_process(work, "l6-gw")
    storm = None
    try:
        limit = fd_limit(gateway.pid)
        legit_rate(gateway, series, args.l6_count, 0.1, args)  # warm up
        time.sleep(1)
        rss0, fds0 = rss_kib(gateway.pid), fd_count(gateway.pid)
        errors0 = scrape_metric(gateway, "dicom_gateway_pdu_protocol_errors_total")
        alone, failed_alone, cpu_alone = legit_rate(gateway, series, args.l6_count, args.seconds, args)
        rss1 = rss_kib(gateway.pid)
        sampler = ProcessSampler(gateway.pid, interval=0.1).start()
        storm = ConnectStorm(gateway.host, gateway.port, args.idle_rate, args.garbage_rate).start()
        stormed, failed_storm, cpu_storm = legit_rate(gateway, series, args.l6_count, args.seconds, args)
        storm.stop_opening()
        rss2 = rss_kib(gateway.pid)
        acse = gateway.config["limits"]["acse_timeout"]
        closed = time.monotonic()
        wait_until(lambda: storm.open_now == 0, 120, "the gateway to close every storm connection")
        print(f"   all storm connections closed {time.monotonic() - closed:.1f} s after the last "
              f"(ARTIM {acse})")
        wait_until(lambda: fd_count(gateway.pid) <= fds0 + 2, 30, "fds back")
        sampler.stop()
        time.sleep(1)
        rss3, fds3 = rss_kib(gateway.pid), fd_count(gateway.pid)
        errors = scrape_metric(gateway, "dicom_gateway_pdu_protocol_errors_total") - errors0
        drop = (alone - stormed) / alone * 100
        print(f"   storescu alone          {alone:8.1f} instances/s  gateway CPU {cpu_alone * 1000:.2f} ms/instance  "
              f"({failed_alone} failed runs)")
        print(f"   storescu under storm    {stormed:8.1f} instances/s  gateway CPU {cpu_storm * 1000:.2f} ms/instance "
              f"(storm included)  ({failed_storm} failed runs)")
        print(f"   drop                    {drop:8.1f} %  (target <= 10%)")
        print(f"   storm                   {storm.opened['idle']} idle + {storm.opened['garbage']} garbage "
              f"connects, {storm.failed} failed, {storm.resets} reset, peak {storm.peak_open} open at once, "
              f"{storm.idle_bytes_received} bytes sent on idle ones")
        print(f"   protocol errors counted {errors:.0f} (dicom_gateway_pdu_protocol_errors_total)")
        print(f"   gateway fds             {fds0} before, peak {sampler.peak_fds}, {fds3} after "
              f"(limit {limit})")
        print(f"   gateway RSS (MiB)       {rss0 / 1024:.1f} before, {rss1 / 1024:.1f} after alone, "
              f"{rss2 / 1024:.1f} end of storm (peak {sampler.peak_rss_kib / 1024:.1f}), "
              f"{rss3 / 1024:.1f} after", flush=True)
    finally:
        if storm is not None:
            storm.close()
        discard(gateway)
        shutil.rmtree(series, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen rows and print their figures.

    :param argv: command-line arguments.
    :returns: the exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("row", choices=["l2", "l3", "l4", "l5", "l6", "all"])
    parser.add_argument("--count", type=int, default=1000, help="instances for L2 and L5 (1000)")
    parser.add_argument("--kib", type=int, default=512, help="instance size for L2, L3, L5, L6 (512)")
    parser.add_argument("--parallel", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 10],
                        help="L2 association counts (1,4,10)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="L3 total instances/s (default: 80%% of the L2 rate, measured)")
    parser.add_argument("--l3-associations", type=int, default=4, help="L3 associations (4)")
    parser.add_argument("--l3-seconds", type=float, default=20.0, help="L3 duration (20 s)")
    parser.add_argument("--l4-mib", type=int, default=2048, help="L4 instance size, MiB (2048)")
    parser.add_argument("--slots", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4],
                        help="L5 max_associations values (1,4)")
    parser.add_argument("--slow-kbps", type=int, default=1000,
                        help="L5 slow destination's cap per connection, kB/s (1000)")
    parser.add_argument("--repeat", type=int, default=3, help="L5 runs per setup, median printed (3)")
    parser.add_argument("--l6-count", type=int, default=200, help="L6 instances per storescu run (200)")
    parser.add_argument("--seconds", type=float, default=60.0, help="L6 duration of each phase (60 s)")
    parser.add_argument("--idle-rate", type=float, default=100.0, help="L6 idle connects/s (100)")
    parser.add_argument("--garbage-rate", type=float, default=10.0, help="L6 garbage connects/s (10)")
    parser.add_argument("--nagle", action="store_true", help="run DCMTK as shipped (no TCP_NODELAY=1)")
    parser.add_argument("--tmpdir", default=None, help="scratch directory (default: system temp)")
    args = parser.parse_args(argv)

    reason = dcmtk.skip_reason("storescu", "storescp")
    if reason:
        print(reason, file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="gw-bench-load-", dir=args.tmpdir)).resolve()
    print(f"scratch: {work}  DCMTK peers: {'as shipped' if args.nagle else 'TCP_NODELAY=1'}")
    try:
        rows = ["l2", "l3", "l4", "l5", "l6"] if args.row == "all" else [args.row]
        l2_rates: dict[int, float] = {}
        for row in rows:
            if row == "l2":
                l2_rates = run_l2(args, work)
            elif row == "l3":
                run_l3(args, work, l2_rates.get(args.l3_associations))
            elif row == "l4":
                run_l4(args, work)
            elif row == "l5":
                run_l5(args, work)
            else:
                run_l6(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
