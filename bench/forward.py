"""Forward benchmark: ``storescu -> gateway -> storescp`` against ``storescu -> storescp``, interleaved.

Prints, from one run on this machine, for each series the runs of each
side in turn (``direct``, ``gateway``, [``fan-out N``], ``direct``,
``gateway``, ...: the first round discarded, then ``--runs`` kept) and their
medians:

- ``direct``: DCMTK ``storescu`` sending the series in one association to
  ``storescp``; timed until ``storescu`` exits and every file is there;
- ``gateway``: ``storescu`` sending to the gateway (a real ``python -m gateway
  run`` process from this checkout) that forwards to one ``storescp``; timed
  from the start of ``storescu`` until the last file lands at ``storescp``;
- ``fan-out N`` (``--fan-out``, 3; 0 skips; 512 KiB like-for-like series
  only): the same with one route to N ``storescp``, until the last file
  lands at all of them;

each with instances/s, the ratio to ``direct``, and CPU microseconds per
instance of every process of the run: the gateway (``/proc/PID/stat`` from
the start of the send until it went quiet after the last file landed),
``storescp`` (the same) and ``storescu`` (its rusage from ``os.wait4``).
The series: ``--count`` instances of about ``--large-kib`` (512 KiB) and of
about ``--small-kib`` (10 KiB) with every DCMTK process at ``TCP_NODELAY=1``
(like-for-like), then ``--nagle-count`` of each with DCMTK as shipped
(Nagle on).  ``--strace`` adds one 512 KiB run with the gateway under
``strace -f``, counting device flushes per forwarded instance.  A summary
block gives the issue 13 targets this script measures.  Fresh processes,
spool and storescp folders for every run; the input files are generated
once and read through before the first run.

Usage::

    .venv/bin/python bench/forward.py                          # full run
    .venv/bin/python bench/forward.py --count 50 --runs 1      # quick run
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
from receive import make_series  # noqa: E402  (bench/receive.py, same folder)

from tests.support import dcmtk  # noqa: E402
from tests.support.gateway_process import dicom_destination  # noqa: E402


def _wait_files(scps: Sequence[dcmtk.Storescp], count: int, timeout: float) -> int:
    """Poll until every ``storescp`` has written ``count`` files, or time out.

    :param scps: the destinations.
    :param count: files expected at each.
    :param timeout: seconds.
    :returns: the fewest files found at one destination.
    """
    deadline = time.monotonic() + timeout
    while True:
        landed = min(len(os.listdir(scp.outdir)) for scp in scps)
        if landed >= count or time.monotonic() > deadline:
            return landed
        time.sleep(0.01)


def direct(work: Path, series: str, files: Sequence[Path], nodelay: bool) -> Callable[[int], Run]:
    """Build the ``direct`` side: ``storescu -> storescp``.

    :param work: scratch directory.
    :param series: the series' name.
    :param files: the instances.
    :param nodelay: ``TCP_NODELAY=1`` for both DCMTK peers.
    :returns: a function running one round.
    """
    total = sum(path.stat().st_size for path in files)
    env = m.nodelay_env(nodelay)

    def run(round_: int) -> Run:
        scp = dcmtk.Storescp(work / f"direct-{time.monotonic_ns()}", bit_preserving=False,
                             accept_all=False, env=env)
        scp.start()
        try:
            before = m.tree_cpu(scp.pid)
            start = time.perf_counter()
            _, senders = m.run_senders(scp.port, [files], called_ae=scp.ae_title, env=env,
                                       log_dir=work / "logs")
            landed = _wait_files([scp], len(files), 60)
            seconds = time.perf_counter() - start
            after = m.settle(lambda: m.tree_cpu(scp.pid))
        finally:
            scp.stop()
            m.remove(scp.outdir)
        cpu = {"storescp": after - before, "storescu": senders[0].cpu}
        return Run(series, "direct", round_, len(files), total, seconds, landed, cpu,
                   landed == len(files) and senders[0].returncode == 0)

    return run


def via_gateway(work: Path, series: str, files: Sequence[Path], nodelay: bool, destinations: int,
                trace: Path | None = None, flushes: list[m.StraceCount] | None = None,
                root: Path | None = None, paused: bool = False) -> Callable[[int], Run]:
    """Build a gateway side: ``storescu -> gateway -> storescp`` (x ``destinations``).

    :param work: scratch directory.
    :param series: the series' name.
    :param files: the instances.
    :param nodelay: ``TCP_NODELAY=1`` for every DCMTK process.
    :param destinations: how many ``storescp`` one route forwards to.
    :param trace: run the gateway under ``strace`` writing this file.
    :param flushes: with ``trace``, each run's flush counts are appended here.
    :param root: run this checkout's gateway (``--baseline``), side ``gateway@baseline``.
    :param paused: pause the destinations (``queue pause``) before the gateway starts, so it
        only receives and journals (the intake's share of the strace counts); the run then
        ends when the sender exits.
    :returns: a function running one round.
    """
    total = sum(path.stat().st_size for path in files)
    env = m.nodelay_env(nodelay)
    side = "gateway" if destinations == 1 else f"fan-out {destinations}"
    if root:
        side += "@baseline"
    if paused:
        side += ", paused"
    if trace:
        side += " (strace)"

    def run(round_: int) -> Run:
        tag = time.monotonic_ns()
        scps = [dcmtk.Storescp(work / f"gw{tag}-scp{i}", bit_preserving=False, accept_all=False, env=env)
                for i in range(destinations)]
        names = [f"scp{i}" for i in range(destinations)]
        gateway = m.gateway_process(
            work / f"gw-{tag}", trace, root,
            destinations={name: dicom_destination(scp.port, scp.ae_title) for name, scp in zip(names, scps)},
            routes=[{"name": "all", "forward": names}],
            spool={"path": str(work / f"gw-{tag}" / "spool"), "min_free": "64MiB", "resume_margin": "32MiB"},
        )
        landed, senders = -1, []
        try:
            for scp in scps:
                scp.start()
            for name in names if paused else []:
                result = gateway.cli("queue", "pause", name)
                if result.returncode != 0:
                    raise RuntimeError(result.describe())
            gateway.start()
            pid = m.traced_pid(gateway) if trace else gateway.pid

            def scp_cpu() -> float:
                """CPU seconds of every destination storescp so far."""
                return sum(m.tree_cpu(scp.pid) for scp in scps)

            gw_before, scp_before = m.proc_cpu(pid), scp_cpu()
            epoch_start = time.time()
            start = time.perf_counter()
            _, senders = m.run_senders(gateway.port, [files], called_ae="DICOMGW", env=env,
                                       log_dir=gateway.dir / "logs")
            landed = len(files) if paused else _wait_files(scps, len(files), 600)
            if paused:
                landed = m.received_by_gateway(gateway)
            seconds = time.perf_counter() - start
            gw_after = m.settle(lambda: m.proc_cpu(pid))
            scp_after = scp_cpu()
            if trace is not None and flushes is not None:
                flushes.append(m.count_flushes(trace, epoch_start, time.time()))
        finally:
            if trace:
                m.stop_traced(gateway)
            else:
                gateway.stop()
            for scp in scps:
                scp.stop()
                m.remove(scp.outdir)
            if landed != len(files) or any(s.returncode for s in senders):
                print(gateway.log_text()[-3000:], file=sys.stderr)
            m.remove(gateway.dir)
        cpu = {"gateway": gw_after - gw_before, "storescp": scp_after - scp_before,
               "storescu": sum(s.cpu for s in senders)}
        return Run(series, side, round_, len(files), total, seconds, landed, cpu,
                   landed == len(files) and all(s.returncode == 0 for s in senders))

    return run


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the tables and the summary.

    :param argv: command-line arguments.
    :returns: the exit status (1 if a run lost instances).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="instances per series (1000)")
    parser.add_argument("--runs", type=int, default=3, help="kept runs per side, after one discarded (3)")
    parser.add_argument("--large-kib", type=int, default=512, help="size of large instances (512)")
    parser.add_argument("--small-kib", type=int, default=10, help="size of small instances (10)")
    parser.add_argument("--fan-out", type=int, default=3,
                        help="destinations of the fan-out side, 512 KiB like-for-like series only (3; 0 skips)")
    parser.add_argument("--nagle-count", type=int, default=200,
                        help="instances per as-shipped series, at most --count (200: DCMTK direct "
                             "runs at 10-20/s with Nagle on; 0 skips those series)")
    parser.add_argument("--only", default="large,small,nagle",
                        help="comma-separated series to run, of large,small,nagle (all)")
    parser.add_argument("--strace", action="store_true",
                        help="also run the large series once with the gateway under strace -f")
    parser.add_argument("--baseline", default=None, metavar="CHECKOUT",
                        help="also run the gateway of another checkout (e.g. a worktree of the commit "
                             "before a change) as another side, interleaved: direct, gateway, "
                             "gateway@baseline, ...")
    parser.add_argument("--json", default=None, metavar="FILE", help="write every figure to FILE")
    parser.add_argument("--tmpdir", default=None, help="scratch directory (default: system temp)")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    if only - {"large", "small", "nagle"} or args.runs < 1:
        parser.error("--only takes large,small,nagle; --runs at least 1")

    tools = ("storescu", "storescp", "strace") if args.strace else ("storescu", "storescp")
    missing = [tool for tool in tools if dcmtk.find_tool(tool) is None]
    if missing:
        print(f"{', '.join(missing)} not installed (run `make test`)", file=sys.stderr)
        return 2
    meta = m.header("bench/forward.py", args)
    work = m.scratch("gw-bench-forward-", args.tmpdir)
    runs: list[Run] = []
    medians: list[m.Median] = []
    extra: dict[str, Any] = {}
    results: dict[tuple[int, bool], dict[str, m.Median]] = {}
    flushes: list[m.StraceCount] = []
    try:
        files = {}
        for kib in (args.large_kib, args.small_kib):
            folder = work / f"series-{kib}"
            make_series(folder, args.count, kib * 1024)
            files[kib] = sorted(folder.iterdir())
            m.warm(files[kib])
        nagle = min(args.nagle_count, args.count)
        sizes = [kib for kib, key in ((args.large_kib, "large"), (args.small_kib, "small")) if key in only]
        plan = [(kib, True) for kib in sizes]
        if nagle > 0 and "nagle" in only:
            plan += [(kib, False) for kib in (args.large_kib, args.small_kib)]
        warmed: set[int] = set()  # file sets already sent through both sides
        for kib, nodelay in plan:
            chosen = files[kib] if nodelay else files[kib][:nagle]
            name = (f"{kib} KiB, 1 association in, "
                    + ("TCP_NODELAY=1" if nodelay else "DCMTK as shipped (Nagle on)"))
            sides = [Side("direct", direct(work, name, chosen, nodelay)),
                     Side("gateway", via_gateway(work, name, chosen, nodelay, 1))]
            if args.baseline:
                sides.append(Side("gateway@baseline", via_gateway(work, name, chosen, nodelay, 1,
                                                                  root=Path(args.baseline))))
            if args.fan_out > 1 and nodelay and kib == args.large_kib:
                sides.append(Side(f"fan-out {args.fan_out}",
                                  via_gateway(work, name, chosen, nodelay, args.fan_out)))
            kept = m.interleave(name, sides, args.runs, runs, discard=kib not in warmed)
            warmed.add(kib)
            row = {side: m.median_runs(side_runs) for side, side_runs in kept.items()}
            m.print_medians(list(row.values()), reference="direct")
            medians.extend(row.values())
            results[(kib, nodelay)] = row

        if args.strace:
            # Two traced runs: forwarding as usual, then the destination paused (intake only);
            # the difference in journal flushes is the forwarder's.
            for paused in (False, True):
                name = (f"{args.large_kib} KiB, 1 association in, TCP_NODELAY=1, gateway under strace -f"
                        + (", destination paused (receive and journal only)" if paused else ""))
                print(f"\n{name}")
                run = m.run_once(via_gateway(work, name, files[args.large_kib], True, 1,
                                             work / f"strace-{paused}.txt", flushes, paused=paused), 1)
                runs.append(run)
                print(run.line())
                count = flushes[-1]
                per = ", ".join(f"{k} {v / run.count:.2f}" for k, v in sorted(count.by_kind.items()))
                print(f"  flushes per instance (fsync+fdatasync+syncfs): {count.flushes / run.count:.2f}; "
                      f"by what: {per or 'none'}; calls {count.by_call}; sync_file_range per instance "
                      f"{count.sync_file_range / run.count:.2f}")
                extra.setdefault("strace", {})["paused" if paused else "forwarding"] = {
                    "count": run.count, "by_kind": count.by_kind, "by_call": count.by_call,
                    "sync_file_range": count.sync_file_range}

        targets = summary(results, flushes, args)
        m.print_summary(targets)
    finally:
        m.remove(work)
    m.write_json(args.json, meta, runs, medians, targets, extra)
    return 0 if all(run.ok for run in runs) else 1


def summary(results: dict[tuple[int, bool], dict[str, m.Median]], flushes: list[m.StraceCount],
            args: argparse.Namespace) -> list[Target]:
    """Build the summary lines of the targets this script measures.

    :param results: medians by (KiB, nodelay) and side.
    :param flushes: the strace counts (empty without ``--strace``).
    :param args: the arguments.
    :returns: the targets.
    """
    targets = []
    if row := results.get((args.large_kib, True)):
        gw, dr = row["gateway"], row["direct"]
        g = gw.cpu_us["gateway"]
        d = dr.cpu_us["storescp"] + dr.cpu_us["storescu"]
        targets.append(Target(
            f"gateway CPU per instance received+forwarded ({args.large_kib} KiB)",
            f"{g:,.0f} us (storescp+storescu direct: {d:,.0f} us, ratio {m.ratio(g, d):.1f}; on the gateway run "
            f"storescu {gw.cpu_us['storescu']:,.0f} + storescp {gw.cpu_us['storescp']:,.0f} us)",
            g, d, m.ratio(g, d), "<= 2,000 us, about <= 2.3x", g <= 2000))
        targets.append(Target(
            f"end-to-end to storescp ({args.large_kib} KiB, TCP_NODELAY=1)",
            f"{gw.rate:,.0f}/s (direct {dr.rate:,.0f}/s, ratio {m.ratio(gw.rate, dr.rate):.2f})",
            gw.rate, dr.rate, m.ratio(gw.rate, dr.rate), ">= 350/s", gw.rate >= 350))
        if old_row := row.get("gateway@baseline"):
            old = old_row.cpu_us["gateway"]
            targets.append(Target(
                f"gateway CPU per instance received+forwarded ({args.large_kib} KiB): this checkout vs --baseline",
                f"{g:,.0f} us vs {old:,.0f} us ({m.ratio(g - old, old):+.0%}); end to end {gw.rate:,.0f}/s vs "
                f"{old_row.rate:,.0f}/s", g, old, m.ratio(g, old)))
        if fan := row.get(f"fan-out {args.fan_out}"):
            targets.append(Target(
                f"fan-out to {args.fan_out} storescp ({args.large_kib} KiB, TCP_NODELAY=1)",
                f"{fan.rate:,.0f}/s, gateway CPU {fan.cpu_us['gateway']:,.0f} us per instance received",
                fan.rate))
    if row := results.get((args.small_kib, True)):
        gw, dr = row["gateway"], row["direct"]
        targets.append(Target(
            f"{args.small_kib} KiB end-to-end (TCP_NODELAY=1)",
            f"{gw.rate:,.0f}/s (direct {dr.rate:,.0f}/s); gateway CPU {gw.cpu_us['gateway']:,.0f} us per "
            f"instance (storescp+storescu direct {dr.cpu_us['storescp'] + dr.cpu_us['storescu']:,.0f} us)",
            gw.rate, dr.rate, m.ratio(gw.rate, dr.rate)))
    for kib in (args.large_kib, args.small_kib):
        if row := results.get((kib, False)):
            gw, dr = row["gateway"], row["direct"]
            goal = ">= 10x" if kib == args.large_kib else ""
            targets.append(Target(
                f"as shipped (Nagle on) end-to-end, {kib} KiB",
                f"{gw.rate:,.0f}/s vs direct {dr.rate:,.0f}/s = {m.ratio(gw.rate, dr.rate):.1f}x",
                gw.rate, dr.rate, m.ratio(gw.rate, dr.rate), goal, m.ratio(gw.rate, dr.rate) >= 10 if goal else None))
    if len(flushes) == 2:
        forwarding, intake = flushes
        n = args.count
        journal = forwarding.by_kind.get("journal", 0) / n
        intake_journal = intake.by_kind.get("journal", 0) / n
        targets.append(Target(
            "device flushes per forwarded instance, receive + forward (strace -f)",
            f"{forwarding.flushes / n:.2f}, of which journal {journal:.2f}; receive only (destination "
            f"paused): {intake.flushes / n:.2f}, journal {intake_journal:.2f}; sync_file_range "
            f"{forwarding.sync_file_range / n:.2f}", forwarding.flushes / n))
        targets.append(Target(
            "forwarder journal commits per forwarded instance (journal flushes forwarding - paused)",
            f"{journal - intake_journal:.2f}", journal - intake_journal, None, None, "<= 0.25",
            journal - intake_journal <= 0.25))
    return targets


if __name__ == "__main__":
    sys.exit(main())
