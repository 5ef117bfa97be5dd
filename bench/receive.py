"""Receive benchmark: ``storescu -> gateway`` against ``storescu -> storescp``, interleaved.

Prints, from one run on this machine, for each series the runs of both
sides in turn (``storescp``, ``gateway``, ``storescp``, ``gateway``, ...: the
first round discarded, then ``--runs`` kept) and their medians: instances/s,
MB/s and CPU microseconds per instance of the receiver (the gateway process,
or ``storescp`` with its forked children) and of the ``storescu`` senders.
The series:

1. ``--count`` instances of about ``--large-kib`` (512 KiB), one association,
   DCMTK peers with ``TCP_NODELAY=1`` (like-for-like: the gateway always sets
   it on its sockets);
2. the same with ``--small-kib`` (10 KiB) instances;
3. the 512 KiB files split over ``--senders`` (8) concurrent ``storescu``
   processes, one association each, to the gateway and to ``storescp --fork``;
4. series 1 and 2 with the DCMTK peers as shipped (Nagle's algorithm on),
   ``--nagle-count`` instances;
5. peak RSS (``VmHWM``) of the gateway and of ``storescp`` receiving one
   ``--multiframe-mb`` MB multi-frame instance;
6. with ``--strace``: one run of series 1 to a gateway under ``strace -f``,
   counting the device flushes per instance (fsync + fdatasync + syncfs, by
   what they flushed) and, apart, ``sync_file_range`` calls.

then a summary block against the targets of issue 13.  The gateway is the
real ``python -m gateway run`` of this checkout with the test configuration
plus, by default (``--route paused``), one route to a folder destination
paused before it starts, so every instance is journaled and stays queued
(``--route none``: no routes, instances kept in ``unrouted/``, the issue 12
set-up); it makes durable what it acknowledges, ``storescp`` (``-B``,
defaults) does not.  Every run uses
fresh processes; the gateway's spool and storescp's folder are deleted after
each run; the input files are generated once and read through before the
first run.  See ``bench/_measure.py`` for how CPU time is read.

Usage::

    .venv/bin/python bench/receive.py                                # full run
    .venv/bin/python bench/receive.py --count 50 --runs 1 --multiframe-mb 50   # quick run
    .venv/bin/python bench/receive.py --only large --strace          # flushes per instance
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _measure as m  # noqa: E402  (bench/_measure.py, same folder)
from _measure import Run, Side, Target  # noqa: E402

from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from tests.support import dcmtk  # noqa: E402
from tests.support.datasets import write_instance, write_multiframe  # noqa: E402
from tests.support.gateway_process import folder_destination  # noqa: E402

#: The series ``--only`` can pick.
SERIES = ("large", "small", "multi", "nagle", "rss")


def make_series(folder: Path, count: int, size: int) -> int:
    """Write ``count`` CT instances of about ``size`` bytes.

    :param folder: destination directory (created).
    :param count: number of instances.
    :param size: approximate size of each.
    :returns: total bytes written.
    """
    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    total = 0
    for i in range(count):
        path = write_instance(folder / f"i{i:05d}.dcm", ExplicitVRLittleEndian, size, seed=i,
                              study_instance_uid=study, series_instance_uid=series)
        total += path.stat().st_size
    return total


def vm_hwm_kib(pid: int) -> int:
    """Read a process's peak resident set size.

    :param pid: the process id.
    :returns: ``VmHWM`` in KiB (0 if unavailable).
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def to_storescp(work: Path, series: str, files: Sequence[Path], shares: int, nodelay: bool,
                fork: bool) -> Callable[[int], Run]:
    """Build the ``storescp`` side of a series.

    :param work: scratch directory.
    :param series: the series' name.
    :param files: the instances.
    :param shares: concurrent senders (one association each).
    :param nodelay: ``TCP_NODELAY=1`` for both DCMTK peers.
    :param fork: run ``storescp --fork`` (one child per association).
    :returns: a function running one round.
    """
    total = sum(path.stat().st_size for path in files)
    env = m.nodelay_env(nodelay)

    def run(round_: int) -> Run:
        outdir = work / f"scp-{time.monotonic_ns()}"
        scp = dcmtk.Storescp(outdir, bit_preserving=False, accept_all=False, env=env,
                             extra=["--fork"] if fork else [])
        scp.start()
        try:
            before = m.tree_cpu(scp.pid)
            seconds, senders = m.run_senders(scp.port, m.split_files(files, shares),
                                             called_ae=scp.ae_title, env=env, log_dir=outdir.parent / "logs")
            after = m.settle(lambda: m.tree_cpu(scp.pid))
            delivered = len(os.listdir(outdir))
        finally:
            scp.stop()
            m.remove(outdir)
        cpu = {"storescp": after - before, "storescu": sum(s.cpu for s in senders)}
        ok = delivered == len(files) and all(s.returncode == 0 for s in senders)
        return Run(series, "storescp --fork" if fork else "storescp", round_, len(files), total,
                   seconds, delivered, cpu, ok)

    return run


def to_gateway(work: Path, series: str, files: Sequence[Path], shares: int, nodelay: bool, route: str,
               trace: Path | None = None, flushes: list[m.StraceCount] | None = None,
               root: Path | None = None) -> Callable[[int], Run]:
    """Build the gateway side of a series.

    :param work: scratch directory.
    :param series: the series' name.
    :param files: the instances.
    :param shares: concurrent senders (one association each).
    :param nodelay: ``TCP_NODELAY=1`` for ``storescu``.
    :param route: ``paused``: one route to a folder destination paused before the gateway
        starts (each instance is journaled for it and stays queued); ``none``: no routes
        (each instance is kept in ``unrouted/``).
    :param trace: run the gateway under ``strace`` writing this file.
    :param flushes: with ``trace``, each run's flush counts are appended here.
    :param root: run this checkout's gateway (``--baseline``), side ``gateway@baseline``.
    :returns: a function running one round.
    """
    total = sum(path.stat().st_size for path in files)
    env = m.nodelay_env(nodelay)
    side = "gateway@baseline" if root else "gateway"
    if trace:
        side += f" (strace, route {route})"

    def run(round_: int) -> Run:
        gateway = m.gateway_process(work / f"gw-{time.monotonic_ns()}", trace, root,
                                    **gateway_config(work, route))
        if route == "paused":
            paused = gateway.cli("queue", "pause", "archive")
            if paused.returncode != 0:
                raise RuntimeError(paused.describe())
        gateway.start()
        pid = m.traced_pid(gateway) if trace else gateway.pid
        delivered, senders = -1, []
        try:
            before = m.proc_cpu(pid)
            start = time.time()
            seconds, senders = m.run_senders(gateway.port, m.split_files(files, shares), called_ae="DICOMGW",
                                             env=env, log_dir=gateway.dir / "logs")
            after = m.settle(lambda: m.proc_cpu(pid))
            end = time.time()
            delivered = m.received_by_gateway(gateway)
            if trace is not None and flushes is not None:
                flushes.append(m.count_flushes(trace, start, end))
        finally:
            if trace:
                m.stop_traced(gateway)
            else:
                gateway.stop()
            if delivered != len(files) or any(s.returncode for s in senders):
                print(gateway.log_text()[-2000:], file=sys.stderr)
            m.remove(gateway.dir)
        cpu = {"gateway": after - before, "storescu": sum(s.cpu for s in senders)}
        ok = delivered == len(files) and all(s.returncode == 0 for s in senders)
        return Run(series, side, round_, len(files), total,
                   seconds, delivered, cpu, ok)

    return run


def gateway_config(work: Path, route: str) -> dict[str, Any]:
    """The config keys of a receiving gateway beyond the test defaults.

    :param work: scratch directory (the folder destination's parent; nothing is written there).
    :param route: ``paused`` or ``none`` (see :func:`to_gateway`).
    :returns: config overrides.
    """
    if route == "none":
        return {}
    return {"destinations": {"archive": folder_destination(work / "archive")},
            "routes": [{"name": "all", "forward": ["archive"]}]}


def peak_rss(work: Path, megabytes: int) -> dict[str, Any]:
    """Measure peak RSS of the gateway and of storescp receiving one large instance.

    :param work: scratch directory.
    :param megabytes: size of the multi-frame instance in MB (10^6 bytes).
    :returns: gateway VmHWM before and after (KiB), storescp's after, seconds, received.
    """
    source = work / "multiframe.dcm"
    write_multiframe(source, megabytes * 1_000_000)
    gateway = m.gateway_process(work / "gw-rss")
    gateway.start()
    try:
        idle = vm_hwm_kib(gateway.pid)
        start = time.perf_counter()
        result = dcmtk.storescu(gateway.port, [source], timeout=3600, env=m.nodelay_env(True))
        seconds = time.perf_counter() - start
        received = m.received_by_gateway(gateway)
        if result.returncode != 0 or received != 1:
            print(result.describe(), gateway.log_text()[-2000:], file=sys.stderr)
        gateway_peak = vm_hwm_kib(gateway.pid)
    finally:
        gateway.stop()
        m.remove(gateway.dir)
    outdir = work / "scp-rss"
    scp = dcmtk.Storescp(outdir, bit_preserving=False, accept_all=False)
    scp.start()
    try:
        dcmtk.storescu(scp.port, [source], called_ae=scp.ae_title, timeout=3600)
        scp_peak = vm_hwm_kib(scp.pid)
    finally:
        scp.stop()
        m.remove(outdir)
    source.unlink()
    return {"megabytes": megabytes, "gateway_idle_kib": idle, "gateway_peak_kib": gateway_peak,
            "storescp_peak_kib": scp_peak, "seconds": seconds, "received": received}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures.

    :param argv: command-line arguments.
    :returns: the exit status (1 if a run lost instances).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="instances per series (1000)")
    parser.add_argument("--runs", type=int, default=3, help="kept runs per side, after one discarded (3)")
    parser.add_argument("--large-kib", type=int, default=512, help="size of large instances (512)")
    parser.add_argument("--small-kib", type=int, default=10, help="size of small instances (10)")
    parser.add_argument("--senders", type=int, default=8, help="concurrent storescu of the multi series (8)")
    parser.add_argument("--nagle-count", type=int, default=200,
                        help="instances per as-shipped series, at most --count (200: DCMTK direct "
                             "runs at 10-20/s with Nagle on)")
    parser.add_argument("--multiframe-mb", type=int, default=500,
                        help="size of the multi-frame instance for peak RSS (500; 0 skips)")
    parser.add_argument("--only", default=",".join(SERIES),
                        help=f"comma-separated series to run, of {','.join(SERIES)} (all)")
    parser.add_argument("--strace", action="store_true",
                        help="also run the large series once to a gateway under strace -f and count "
                             "flushes per instance")
    parser.add_argument("--route", choices=("paused", "none"), default="paused",
                        help="gateway config: one route to a paused folder destination, so every "
                             "instance is journaled (paused, the default), or no routes (none, "
                             "unrouted/ as in the issue 12 figures)")
    parser.add_argument("--baseline", default=None, metavar="CHECKOUT",
                        help="also run the gateway of another checkout (e.g. a worktree of the commit "
                             "before a change) as a third side, interleaved: storescp, gateway, "
                             "gateway@baseline, ...")
    parser.add_argument("--json", default=None, metavar="FILE", help="write every figure to FILE")
    parser.add_argument("--tmpdir", default=None, help="scratch directory (default: system temp)")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    if only - set(SERIES) or args.runs < 1:
        parser.error(f"--only takes {','.join(SERIES)}; --runs at least 1")

    tools = ("storescu", "storescp", "strace") if args.strace else ("storescu", "storescp")
    missing = [tool for tool in tools if dcmtk.find_tool(tool) is None]
    if missing:
        print(f"{', '.join(missing)} not installed (run `make test`)", file=sys.stderr)
        return 2
    meta = m.header("bench/receive.py", args)
    work = m.scratch("gw-bench-", args.tmpdir)
    runs: list[Run] = []
    medians: list[m.Median] = []
    targets: list[Target] = []
    extra: dict[str, Any] = {}
    large_label, small_label = f"{args.large_kib} KiB", f"{args.small_kib} KiB"
    try:
        files = {}
        for label, kib in ((large_label, args.large_kib), (small_label, args.small_kib)):
            folder = work / f"series-{kib}"
            make_series(folder, args.count, kib * 1024)
            files[label] = sorted(folder.iterdir())
            m.warm(files[label])
        nagle = max(1, min(args.nagle_count, args.count))
        plan: list[tuple[str, str, str, int, bool]] = []  # key, name, files, shares, nodelay
        if "large" in only:
            plan.append(("large", f"{large_label}, 1 association, TCP_NODELAY=1", large_label, 1, True))
        if "small" in only:
            plan.append(("small", f"{small_label}, 1 association, TCP_NODELAY=1", small_label, 1, True))
        if "multi" in only:
            plan.append(("multi", f"{large_label}, {args.senders} associations at once, TCP_NODELAY=1",
                         large_label, args.senders, True))
        if "nagle" in only:
            plan.append(("nagle-large", f"{large_label}, 1 association, DCMTK as shipped (Nagle on)",
                         large_label, 1, False))
            plan.append(("nagle-small", f"{small_label}, 1 association, DCMTK as shipped (Nagle on)",
                         small_label, 1, False))
        results: dict[str, dict[str, m.Median]] = {}
        warmed: set[str] = set()  # file sets already sent through both sides
        for key, name, label, shares, nodelay in plan:
            chosen = files[label] if nodelay else files[label][:nagle]
            sides = [Side("storescp", to_storescp(work, name, chosen, shares, nodelay, fork=shares > 1)),
                     Side("gateway", to_gateway(work, name, chosen, shares, nodelay, args.route))]
            if args.baseline:
                sides.append(Side("gateway@baseline", to_gateway(work, name, chosen, shares, nodelay, args.route,
                                                                 root=Path(args.baseline))))
            kept = m.interleave(name, sides, args.runs, runs, discard=label not in warmed)
            warmed.add(label)
            row = {side: m.median_runs(side_runs) for side, side_runs in kept.items()}
            m.print_medians(list(row.values()), reference="storescp")
            medians.extend(row.values())
            results[key] = row

        flushes: dict[str, m.StraceCount] = {}
        if args.strace:
            for route in ("paused", "none"):
                name = f"{large_label}, 1 association, TCP_NODELAY=1, route {route}, gateway under strace -f"
                print(f"\n{name}")
                counts: list[m.StraceCount] = []
                run = m.run_once(to_gateway(work, name, files[large_label], 1, True, route,
                                            work / f"strace-{route}.txt", counts), 1)
                runs.append(run)
                print(run.line())
                count = flushes[route] = counts[0]
                per = {kind: n / run.count for kind, n in sorted(count.by_kind.items())}
                print(f"  flushes per instance (fsync+fdatasync+syncfs): {count.flushes / run.count:.2f}; "
                      f"by what: {', '.join(f'{k} {v:.2f}' for k, v in per.items()) or 'none'}; "
                      f"calls {count.by_call}; sync_file_range per instance "
                      f"{count.sync_file_range / run.count:.2f}")
                extra.setdefault("strace", {})[route] = {
                    "count": run.count, "by_kind": count.by_kind, "by_call": count.by_call,
                    "sync_file_range": count.sync_file_range}

        rss = None
        if "rss" in only and args.multiframe_mb:
            rss = peak_rss(work, args.multiframe_mb)
            extra["peak_rss"] = rss
            print(f"\nmulti-frame {args.multiframe_mb} MB (TCP_NODELAY=1): gateway received it in "
                  f"{rss['seconds']:.2f} s ({rss['received']} acknowledged)")
            print(f"peak RSS (VmHWM): gateway {rss['gateway_peak_kib'] / 1024:.1f} MiB "
                  f"(idle {rss['gateway_idle_kib'] / 1024:.1f} MiB), storescp {rss['storescp_peak_kib'] / 1024:.1f} MiB")

        targets = summary(results, flushes, runs, rss, args)
        m.print_summary(targets)
    finally:
        m.remove(work)
    m.write_json(args.json, meta, runs, medians, targets, extra)
    return 0 if all(run.ok for run in runs) else 1


def summary(results: dict[str, dict[str, m.Median]], flushes: dict[str, m.StraceCount], runs: list[Run],
            rss: dict[str, Any] | None, args: argparse.Namespace) -> list[Target]:
    """Build the summary lines of the targets this script measures.

    :param results: medians by series key and side.
    :param flushes: the strace counts by route (empty without ``--strace``).
    :param runs: every run.
    :param rss: the peak RSS figures, if measured.
    :param args: the arguments.
    :returns: the targets.
    """
    targets = []

    def pair(key: str) -> tuple[m.Median, m.Median] | None:
        row = results.get(key)
        return (row["gateway"], row["storescp"]) if row else None

    if found := pair("large"):
        gw, scp = found
        targets.append(Target(
            f"single association durable receive ({args.large_kib} KiB, TCP_NODELAY=1, route {args.route})",
            f"{gw.rate:,.0f}/s (storescp {scp.rate:,.0f}/s, ratio {m.ratio(gw.rate, scp.rate):.2f})",
            gw.rate, scp.rate, m.ratio(gw.rate, scp.rate), ">= 500/s", gw.rate >= 500))
        g, s = gw.cpu_us["gateway"], scp.cpu_us["storescp"]
        targets.append(Target(
            f"gateway CPU per instance received ({args.large_kib} KiB)",
            f"{g:,.0f} us (storescp: {s:,.0f} us, ratio {m.ratio(g, s):.1f}; storescu sending: "
            f"{scp.cpu_us['storescu']:,.0f} us)", g, s, m.ratio(g, s)))
    if (row := results.get("large")) and "gateway@baseline" in row:
        new, old = row["gateway"].cpu_us["gateway"], row["gateway@baseline"].cpu_us["gateway"]
        targets.append(Target(
            f"gateway CPU per instance received ({args.large_kib} KiB): this checkout vs --baseline",
            f"{new:,.0f} us vs {old:,.0f} us ({m.ratio(new - old, old):+.0%}); rate {row['gateway'].rate:,.0f}/s vs "
            f"{row['gateway@baseline'].rate:,.0f}/s", new, old, m.ratio(new, old)))
    if found := pair("multi"):
        gw, scp = found
        targets.append(Target(
            f"{args.senders} associations ({args.large_kib} KiB, TCP_NODELAY=1)",
            f"{gw.rate:,.0f}/s vs storescp --fork {scp.rate:,.0f}/s = {m.ratio(gw.rate, scp.rate):.2f}; CPU per "
            f"instance gateway {gw.cpu_us['gateway']:,.0f} us, storescp --fork {scp.cpu_us['storescp']:,.0f} us",
            gw.rate, scp.rate, m.ratio(gw.rate, scp.rate), ">= 0.5", m.ratio(gw.rate, scp.rate) >= 0.5))
    if found := pair("small"):
        gw, scp = found
        targets.append(Target(
            f"{args.small_kib} KiB single association (TCP_NODELAY=1)",
            f"{gw.rate:,.0f}/s (storescp {scp.rate:,.0f}/s); CPU per instance gateway "
            f"{gw.cpu_us['gateway']:,.0f} us, storescp {scp.cpu_us['storescp']:,.0f} us",
            gw.rate, scp.rate, m.ratio(gw.rate, scp.rate)))
    for key, label in (("nagle-large", args.large_kib), ("nagle-small", args.small_kib)):
        if found := pair(key):
            gw, scp = found
            targets.append(Target(
                f"as shipped (Nagle on) receive, {label} KiB",
                f"{gw.rate:,.0f}/s vs direct {scp.rate:,.0f}/s = {m.ratio(gw.rate, scp.rate):.1f}x "
                f"(the end-to-end target is bench/forward.py's)", gw.rate, scp.rate, m.ratio(gw.rate, scp.rate)))
    for route, count in flushes.items():
        n = args.count
        kinds = ", ".join(f"{kind} {value / n:.2f}" for kind, value in sorted(count.by_kind.items()))
        targets.append(Target(
            f"device flushes per instance on the receive path (strace -f, route {route})",
            f"{count.flushes / n:.2f} ({kinds}); sync_file_range {count.sync_file_range / n:.2f} per instance",
            count.flushes / n, None, None, "<= 2", count.flushes / n <= 2))
    if rss:
        growth = (rss["gateway_peak_kib"] - rss["gateway_idle_kib"]) / 1024
        targets.append(Target(
            f"peak RSS for a {rss['megabytes']} MB instance",
            f"gateway {rss['gateway_peak_kib'] / 1024:.1f} MiB, {growth:+.1f} MiB over idle "
            f"(storescp {rss['storescp_peak_kib'] / 1024:.1f} MiB)",
            rss["gateway_peak_kib"] / 1024, None, None, "flat (growth < 64 MiB)", growth < 64))
    return targets


if __name__ == "__main__":
    sys.exit(main())
