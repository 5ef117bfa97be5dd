"""Receive benchmark: ``storescu -> gateway`` against ``storescu -> storescp``.

Prints, from one run on this machine:

1. instances/s and MB/s for one association carrying ``--count`` CT-sized
   instances of about 512 KiB, and ``--count`` of about 10 KiB, sent by
   DCMTK ``storescu`` to the gateway (a real ``python -m gateway run``
   process from this checkout) and to DCMTK ``storescp``; each twice: the
   DCMTK peers as shipped, and with ``TCP_NODELAY=1`` in their environment;
2. the gateway's peak RSS (``VmHWM`` from ``/proc/<pid>/status``) while it
   receives one multi-frame instance of ``--multiframe-mb`` MB (and, for
   reference, storescp's).

The spool and storescp's output live under one temporary directory
(``--tmpdir``), so both write to the same disk.  The gateway fsyncs each
instance before acknowledging it; ``storescp`` does not, which is part of
what the comparison shows.

Usage::

    .venv/bin/python bench/receive.py                 # full run (1,000 + 1,000, 500 MB)
    .venv/bin/python bench/receive.py --count 50 --multiframe-mb 50   # smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from tests.support import dcmtk  # noqa: E402
from tests.support.cputime import cpu_seconds  # noqa: E402
from tests.support.datasets import write_instance, write_multiframe  # noqa: E402
from tests.support.gateway_process import GatewayProcess  # noqa: E402


@dataclass(frozen=True)
class Measurement:
    """One timed send.

    :param target: ``gateway`` or ``storescp``.
    :param label: the data set series sent.
    :param nodelay: whether ``TCP_NODELAY=1`` was set for the DCMTK peers.
    :param count: instances sent.
    :param total_bytes: bytes of the files sent.
    :param seconds: wall time of the ``storescu`` process.
    :param received: instances found on disk afterwards.
    :param cpu: CPU seconds the receiver (gateway or storescp) used for the send.
    """

    target: str
    label: str
    nodelay: bool
    count: int
    total_bytes: int
    seconds: float
    received: int
    cpu: float = 0.0

    def row(self) -> str:
        """Format as a table row.

        :returns: one line.
        """
        rate = self.count / self.seconds
        mbs = self.total_bytes / self.seconds / 1e6
        return (f"{self.label:<14} {self.target:<9} {'yes' if self.nodelay else 'no':<11} "
                f"{self.count:>6} {self.seconds:>9.2f} {rate:>12.1f} {mbs:>9.1f}"
                f" {self.cpu / max(1, self.count) * 1e6:>10.0f}"
                f"{'' if self.received == self.count else f'  (only {self.received} received!)'}")


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


def send_to_gateway(work: Path, series: Path, nodelay: bool) -> tuple[float, int, float]:
    """Start a fresh gateway, send a series in one association, stop it.

    :param work: scratch directory for the gateway.
    :param series: directory of files.
    :param nodelay: set ``TCP_NODELAY=1`` for storescu.
    :returns: (seconds, instances spooled, the gateway's CPU seconds for the send).
    """
    env = {"TCP_NODELAY": "1"} if nodelay else {}
    gateway = GatewayProcess(work / f"gw-{time.monotonic_ns()}")
    gateway.start()
    try:
        cpu_before = cpu_seconds(gateway.pid)
        start = time.perf_counter()
        result = dcmtk.storescu(gateway.port, [series], extra=["+sd"], env=env, timeout=3600)
        seconds = time.perf_counter() - start
        cpu = cpu_seconds(gateway.pid) - cpu_before
        if result.returncode != 0:
            print(result.describe(), file=sys.stderr)
        received = len(gateway.instances())
    finally:
        gateway.stop()
        shutil.rmtree(gateway.dir, ignore_errors=True)
    return seconds, received, cpu


def send_to_storescp(work: Path, series: Path, nodelay: bool) -> tuple[float, int, float]:
    """Start a fresh storescp (defaults as shipped, plus ``-od``), send a series, stop it.

    :param work: scratch directory for storescp's output.
    :param series: directory of files.
    :param nodelay: set ``TCP_NODELAY=1`` for both DCMTK peers.
    :returns: (seconds, files written, storescp's CPU seconds for the send).
    """
    env = {"TCP_NODELAY": "1"} if nodelay else {}
    outdir = work / f"scp-{time.monotonic_ns()}"
    scp = dcmtk.Storescp(outdir, bit_preserving=False, accept_all=False, env=env)
    scp.start()
    try:
        cpu_before = cpu_seconds(scp.pid)
        start = time.perf_counter()
        result = dcmtk.storescu(scp.port, [series], called_ae=scp.ae_title, extra=["+sd"],
                                env=env, timeout=3600)
        seconds = time.perf_counter() - start
        cpu = cpu_seconds(scp.pid) - cpu_before
        if result.returncode != 0:
            print(result.describe(), file=sys.stderr)
        received = len(scp.files())
    finally:
        scp.stop()
        shutil.rmtree(outdir, ignore_errors=True)
    return seconds, received, cpu


def peak_rss(work: Path, megabytes: int) -> tuple[int, int, float]:
    """Measure peak RSS of the gateway and of storescp receiving one large instance.

    :param work: scratch directory.
    :param megabytes: size of the multi-frame instance in MB (10^6 bytes).
    :returns: (gateway VmHWM KiB, storescp VmHWM KiB, seconds for the gateway send).
    """
    source = work / "multiframe.dcm"
    write_multiframe(source, megabytes * 1_000_000)
    gateway = GatewayProcess(work / "gw-rss")
    gateway.start()
    try:
        idle = vm_hwm_kib(gateway.pid)
        start = time.perf_counter()
        result = dcmtk.storescu(gateway.port, [source], timeout=3600)
        seconds = time.perf_counter() - start
        if result.returncode != 0 or len(gateway.instances()) != 1:
            print(result.describe(), gateway.log_text()[-2000:], file=sys.stderr)
        gateway_peak = vm_hwm_kib(gateway.pid)
    finally:
        gateway.stop()
        shutil.rmtree(gateway.dir, ignore_errors=True)
    print(f"gateway VmHWM before the send: {idle / 1024:.1f} MiB")
    outdir = work / "scp-rss"
    scp = dcmtk.Storescp(outdir, bit_preserving=False, accept_all=False)
    scp.start()
    try:
        dcmtk.storescu(scp.port, [source], called_ae=scp.ae_title, timeout=3600)
        scp_peak = vm_hwm_kib(scp.pid)
    finally:
        scp.stop()
        shutil.rmtree(outdir, ignore_errors=True)
    source.unlink()
    return gateway_peak, scp_peak, seconds


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures.

    :param argv: command-line arguments.
    :returns: the exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="instances per series (1000)")
    parser.add_argument("--large-kib", type=int, default=512, help="size of large instances")
    parser.add_argument("--small-kib", type=int, default=10, help="size of small instances")
    parser.add_argument("--multiframe-mb", type=int, default=500,
                        help="size of the multi-frame instance for peak RSS (0 skips)")
    parser.add_argument("--tmpdir", default=None, help="scratch directory (default: system temp)")
    args = parser.parse_args(argv)

    reason = dcmtk.skip_reason("storescu", "storescp")
    if reason:
        print(reason, file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="gw-bench-", dir=args.tmpdir))
    try:
        print(f"scratch: {work}  cpus: {os.cpu_count()}  python: {sys.version.split()[0]}")
        series = {}
        for label, kib in ((f"{args.large_kib} KiB", args.large_kib),
                           (f"{args.small_kib} KiB", args.small_kib)):
            folder = work / f"series-{kib}"
            total = make_series(folder, args.count, kib * 1024)
            series[label] = (folder, total)
        print()
        print(f"{'series':<14} {'target':<9} {'TCP_NODELAY':<11} {'count':>6} {'seconds':>9} "
              f"{'instances/s':>12} {'MB/s':>9} {'CPU us/inst':>10}")
        for label, (folder, total) in series.items():
            for nodelay in (False, True):
                for target, send in (("gateway", send_to_gateway), ("storescp", send_to_storescp)):
                    seconds, received, cpu = send(work, folder, nodelay)
                    print(Measurement(target, label, nodelay, args.count, total, seconds,
                                      received, cpu).row(), flush=True)
        if args.multiframe_mb:
            gw_peak, scp_peak, seconds = peak_rss(work, args.multiframe_mb)
            print()
            print(f"multi-frame {args.multiframe_mb} MB: gateway received it in {seconds:.2f} s")
            print(f"peak RSS (VmHWM): gateway {gw_peak / 1024:.1f} MiB, "
                  f"storescp {scp_peak / 1024:.1f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
