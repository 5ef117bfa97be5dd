"""Forward benchmark: ``storescu -> gateway -> storescp`` against ``storescu -> storescp``.

Prints, from one run on this machine, for ``--count`` CT-sized instances of
about 512 KiB and ``--count`` small ones of about 10 KiB:

- ``direct``: DCMTK ``storescu`` sending the series in one association to
  ``storescp``; timed until ``storescu`` exits and every file is there;
- ``gateway``: ``storescu`` sending to the gateway (a real ``python -m gateway
  run`` process from this checkout) that forwards to one ``storescp``; timed
  from the start of ``storescu`` until the last file lands at ``storescp``;
- ``fan-out 3``: the same with one route to three ``storescp``; timed until
  the last file lands at all three;

each with instances/s and the ratio to ``direct`` of the same series; the
whole table twice: every DCMTK process with ``TCP_NODELAY=1`` in its
environment, and DCMTK as shipped (Nagle's algorithm on).  Every measurement
uses fresh processes and a fresh spool.

Usage::

    .venv/bin/python bench/forward.py               # full run (1,000 + 1,000)
    .venv/bin/python bench/forward.py --count 50    # smoke run
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from receive import make_series  # noqa: E402  (bench/receive.py, same folder)

from tests.support import dcmtk  # noqa: E402
from tests.support.cputime import cpu_seconds  # noqa: E402
from tests.support.gateway_process import (  # noqa: E402
    GatewayProcess,
    dicom_destination,
)


@dataclass(frozen=True)
class Measurement:
    """One timed end-to-end transfer.

    :param label: the series sent.
    :param path: ``direct``, ``gateway`` or ``fan-out 3``.
    :param nodelay: whether ``TCP_NODELAY=1`` was set for the DCMTK peers.
    :param count: instances sent.
    :param seconds: until the last file landed (at every destination).
    :param landed: the fewest files found at a destination.
    """

    label: str
    path: str
    nodelay: bool
    count: int
    seconds: float
    landed: int
    cpu: float = 0.0

    @property
    def rate(self) -> float:
        """Instances per second, end to end.

        :returns: the rate.
        """
        return self.count / self.seconds

    def row(self, direct: Measurement | None) -> str:
        """Format as a table row, with the ratio to the direct rate.

        :param direct: the direct measurement of the same series and setting.
        :returns: one line.
        """
        ratio = f"{self.rate / direct.rate:>6.2f}x" if direct else f"{'':>7}"
        missing = "" if self.landed == self.count else f"  (only {self.landed} landed!)"
        return (f"{'yes' if self.nodelay else 'no':<11} {self.label:<9} {self.path:<10} "
                f"{self.count:>6} {self.seconds:>9.2f} {self.rate:>12.1f} {ratio}"
                f" {self.cpu / max(1, self.count) * 1e6:>11.0f}{missing}")


def _wait_files(scps: list[dcmtk.Storescp], count: int, timeout: float) -> int:
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


def _children_cpu() -> float:
    """CPU seconds used so far by this process's waited-for children (storescu runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_direct(work: Path, series: Path, count: int, nodelay: bool) -> tuple[float, int, float]:
    """Time ``storescu -> storescp``.

    :param work: scratch directory.
    :param series: directory of files.
    :param count: instances in it.
    :param nodelay: set ``TCP_NODELAY=1`` for both DCMTK peers.
    :returns: (seconds, files landed, CPU seconds of storescp and storescu together).
    """
    env = {"TCP_NODELAY": "1"} if nodelay else {}
    scp = dcmtk.Storescp(work / f"direct-{time.monotonic_ns()}", bit_preserving=False,
                         accept_all=False, env=env)
    scp.start()
    try:
        scp_before, children_before = cpu_seconds(scp.pid), _children_cpu()
        start = time.perf_counter()
        result = dcmtk.storescu(scp.port, [series], called_ae=scp.ae_title, extra=["+sd"],
                                env=env, timeout=3600)
        landed = _wait_files([scp], count, 60)
        seconds = time.perf_counter() - start
        cpu = cpu_seconds(scp.pid) - scp_before + _children_cpu() - children_before
        if result.returncode != 0:
            print(result.describe(), file=sys.stderr)
    finally:
        scp.stop()
        shutil.rmtree(scp.outdir, ignore_errors=True)
    return seconds, landed, cpu


def run_gateway(work: Path, series: Path, count: int, nodelay: bool,
                destinations: int) -> tuple[float, int, float]:
    """Time ``storescu -> gateway -> storescp`` (x ``destinations``) until the last file lands.

    :param work: scratch directory.
    :param series: directory of files.
    :param count: instances in it.
    :param nodelay: set ``TCP_NODELAY=1`` for every DCMTK process.
    :param destinations: how many ``storescp`` one route forwards to.
    :returns: (seconds, fewest files landed at one destination, the gateway's CPU seconds).
    """
    env = {"TCP_NODELAY": "1"} if nodelay else {}
    tag = time.monotonic_ns()
    scps = [dcmtk.Storescp(work / f"gw{tag}-scp{i}", bit_preserving=False, accept_all=False,
                           env=env) for i in range(destinations)]
    names = [f"scp{i}" for i in range(destinations)]
    gateway = GatewayProcess(
        work / f"gw-{tag}",
        destinations={name: dicom_destination(scp.port, scp.ae_title)
                      for name, scp in zip(names, scps)},
        routes=[{"name": "all", "forward": names}],
        spool={"path": str(work / f"gw-{tag}" / "spool"), "min_free": "64MiB",
               "resume_margin": "32MiB"},
    )
    for scp in scps:
        scp.start()
    try:
        gateway.start()
        cpu_before = cpu_seconds(gateway.pid)
        start = time.perf_counter()
        result = dcmtk.storescu(gateway.port, [series], extra=["+sd"], env=env, timeout=3600)
        landed = _wait_files(scps, count, 600)
        seconds = time.perf_counter() - start
        cpu = cpu_seconds(gateway.pid) - cpu_before
        if result.returncode != 0 or landed < count:
            print(result.describe(), gateway.log_text()[-3000:], file=sys.stderr)
    finally:
        gateway.stop()
        for scp in scps:
            scp.stop()
            shutil.rmtree(scp.outdir, ignore_errors=True)
        shutil.rmtree(gateway.dir, ignore_errors=True)
    return seconds, landed, cpu


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table.

    :param argv: command-line arguments.
    :returns: the exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="instances per series (1000)")
    parser.add_argument("--large-kib", type=int, default=512, help="size of large instances")
    parser.add_argument("--small-kib", type=int, default=10, help="size of small instances")
    parser.add_argument("--tmpdir", default=None, help="scratch directory (default: system temp)")
    args = parser.parse_args(argv)

    reason = dcmtk.skip_reason("storescu", "storescp")
    if reason:
        print(reason, file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="gw-bench-forward-", dir=args.tmpdir)).resolve()
    try:
        print(f"scratch: {work}  cpus: {os.cpu_count()}  python: {sys.version.split()[0]}")
        series = []
        for kib in (args.large_kib, args.small_kib):
            folder = work / f"series-{kib}"
            make_series(folder, args.count, kib * 1024)
            series.append((f"{kib} KiB", folder))
        print()
        print(f"{'TCP_NODELAY':<11} {'series':<9} {'path':<10} {'count':>6} {'seconds':>9} "
              f"{'instances/s':>12} {'ratio':>7} {'CPU us/inst':>11}")
        print("(CPU: storescp + storescu on the direct rows, the gateway process on the others)")
        for nodelay in (True, False):
            for label, folder in series:
                seconds, landed, cpu = run_direct(work, folder, args.count, nodelay)
                direct = Measurement(label, "direct", nodelay, args.count, seconds, landed, cpu)
                print(direct.row(None), flush=True)
                for path, n in (("gateway", 1), ("fan-out 3", 3)):
                    seconds, landed, cpu = run_gateway(work, folder, args.count, nodelay, n)
                    print(Measurement(label, path, nodelay, args.count, seconds, landed, cpu)
                          .row(direct), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
