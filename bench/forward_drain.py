"""Forward-only benchmark: the gateway's CPU per instance while it drains a queue to ``storescp``.

The receive side is left out: ``storescu`` sends ``--count`` instances of
about ``--kib`` KiB (512) to the gateway with its destination paused; once
all are queued, the destination is resumed and the gateway's CPU time
(user + system, ``/proc/PID/stat``) is counted until the last file lands at
``storescp``. DCMTK peers run with ``TCP_NODELAY=1``. The figure is what
forwarding costs per instance: journal bookkeeping, reading the file,
building and writing PDUs (issue 13).

Several checkouts can be compared in one run (``CHECKOUT ...``: each a
directory holding this repository's code, e.g. made with ``git archive``):
their runs are interleaved, round after round, on the same files, warmed
once, and the median of each is printed. The wall-clock rate printed with
each run includes up to ``poll_interval`` (1 s) before the gateway notices
the ``queue resume`` made by the CLI: read the CPU column.

Usage::

    .venv/bin/python bench/forward_drain.py                       # this checkout, 3 rounds
    .venv/bin/python bench/forward_drain.py --rounds 5 /tmp/old .  # old and new, interleaved
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def measure(series: Path, count: int, work: Path) -> tuple[float, int, float]:
    """One drain with the gateway of the checkout this module was imported from.

    :param series: the directory of instances.
    :param count: how many it holds.
    :param work: scratch directory.
    :returns: (seconds from resume to the last file, files landed, gateway CPU seconds).
    """
    from forward import _wait_files  # bench/forward.py of the same checkout

    from tests.support import dcmtk
    from tests.support.cputime import cpu_seconds
    from tests.support.gateway_process import GatewayProcess, dicom_destination

    env = {"TCP_NODELAY": "1"}
    tag = time.monotonic_ns()
    scp = dcmtk.Storescp(work / f"drain{tag}-scp", bit_preserving=False, accept_all=False, env=env)
    gateway = GatewayProcess(
        work / f"drain-{tag}",
        destinations={"pacs": dicom_destination(scp.port, scp.ae_title)},
        routes=[{"name": "all", "forward": ["pacs"]}],
        spool={"path": str(work / f"drain-{tag}" / "spool"), "min_free": "64MiB", "resume_margin": "32MiB"},
    )
    scp.start()
    try:
        gateway.start()
        if gateway.cli("queue", "pause", "pacs").returncode != 0:
            raise RuntimeError("queue pause failed")
        result = dcmtk.storescu(gateway.port, [series], extra=["+sd"], env=env, timeout=3600)
        if result.returncode != 0:
            raise RuntimeError(result.describe())
        deadline = time.monotonic() + 60
        while gateway.queue_rows()["pacs"]["queued"] < count and time.monotonic() < deadline:
            time.sleep(0.05)
        cpu_before, start = cpu_seconds(gateway.pid), time.perf_counter()
        if gateway.cli("queue", "resume", "pacs").returncode != 0:
            raise RuntimeError("queue resume failed")
        landed = _wait_files([scp], count, 600)
        return time.perf_counter() - start, landed, cpu_seconds(gateway.pid) - cpu_before
    finally:
        gateway.stop()
        scp.stop()
        shutil.rmtree(scp.outdir, ignore_errors=True)
        shutil.rmtree(gateway.dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--one``, one measurement for the parent process).

    :param argv: command-line arguments.
    :returns: the exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="*", help="checkouts to compare (default: this one)")
    parser.add_argument("--count", type=int, default=200, help="instances per run (200)")
    parser.add_argument("--kib", type=int, default=512, help="size of each instance (512)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each checkout (3)")
    parser.add_argument("--tmpdir", default=None, help="scratch directory (default: system temp)")
    parser.add_argument("--one", nargs=2, metavar=("SERIES", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        sys.path[:0] = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        seconds, landed, cpu = measure(Path(args.one[0]), args.count, Path(args.one[1]))
        print(f"{seconds} {landed} {cpu}")
        return 0
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    from receive import make_series  # bench/receive.py

    from tests.support import dcmtk

    reason = dcmtk.skip_reason("storescu", "storescp")
    if reason:
        print(reason, file=sys.stderr)
        return 2
    checkouts = [Path(c).resolve() for c in args.checkouts] or [REPO_ROOT]
    work = Path(tempfile.mkdtemp(prefix="gw-bench-drain-", dir=args.tmpdir)).resolve()
    try:
        series = work / "series"
        make_series(series, args.count, args.kib * 1024)
        for path in series.iterdir():
            path.read_bytes()  # warmed once, the same for every run
        cpu_us: dict[Path, list[float]] = {c: [] for c in checkouts}
        print(f"{'checkout':<40} {'seconds':>8} {'landed':>7} {'CPU us/inst':>12}")
        for _ in range(args.rounds):
            for checkout in checkouts:
                # This script, with the checkout's code first on the path: its
                # gateway process, test support and bench helpers are used.
                out = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--count", str(args.count),
                     "--one", str(series), str(work)],
                    cwd=checkout, env={**os.environ, "PYTHONPATH": f"{checkout}{os.pathsep}{checkout / 'bench'}"},
                    capture_output=True, text=True,
                )
                if out.returncode != 0:
                    print(out.stderr[-3000:], file=sys.stderr)
                    return 1
                seconds, landed, cpu = out.stdout.split()[-3:]
                per = float(cpu) / args.count * 1e6
                cpu_us[checkout].append(per)
                print(f"{str(checkout):<40} {float(seconds):>8.2f} {int(landed):>7} {per:>12.0f}", flush=True)
        for checkout, values in cpu_us.items():
            print(f"median {str(checkout):<33} {statistics.median(values):>12.0f} us CPU per instance forwarded")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
