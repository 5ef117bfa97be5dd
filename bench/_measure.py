"""Shared measuring helpers of ``bench/receive.py`` and ``bench/forward.py`` (issue 13).

Theory of operation
-------------------
On a shared 2-core VM a wall-clock rate says as much about the page cache
and the other work on the box as about the code measured: the direct
``storescu -> storescp`` rate moved 2.5x with the page cache's state.  These
helpers keep both sides of a comparison in the same state and report CPU
time beside every rate:

- the input files are generated once per series and read through once
  (:func:`warm`) before anything is timed;
- a series is a list of *sides* (``storescp``, ``gateway``...) run
  interleaved, round after round (direct, gateway, direct, gateway, ...) by
  :func:`interleave`; round 0 is run and discarded, then ``--runs`` rounds
  are kept and each side is summarised by the median of its runs;
- every run starts fresh processes with empty output folders (storescp's
  ``-od`` folder, the gateway's spool) and deletes them afterwards, so no
  run inherits another's files; nothing is dropped from the page cache
  globally (the machine is shared);
- CPU time is user + system from ``/proc/PID/stat`` (proc(5) fields 14-17):
  for a long-running receiver, its reading just before it is stopped
  (after it went quiet) minus its reading when the run started, so start-up
  does not count; for ``storescp --fork`` the parent's ``cutime + cstime``
  (children it has reaped) plus the ``/proc`` figures of children not yet
  reaped (zombies keep theirs), read until two readings agree
  (:func:`tree_cpu`); for the ``storescu`` processes we spawn, the rusage
  :func:`os.wait4` returns when we reap them.

Only the gateway's command line, configuration, ``/metrics`` and ``/proc``
are used, so the scripts measure any version of the receive path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support import dcmtk  # noqa: E402
from tests.support.gateway_process import CliResult, GatewayProcess  # noqa: E402
from tests.support.ports import free_port, port_is_open  # noqa: E402

__all__ = [
    "Run",
    "Side",
    "StraceCount",
    "Target",
    "gateway_process",
    "git_commit",
    "interleave",
    "load_average",
    "median_runs",
    "nodelay_env",
    "print_medians",
    "proc_cpu",
    "received_by_gateway",
    "ratio",
    "run_once",
    "run_senders",
    "settle",
    "split_files",
    "strace_command",
    "count_flushes",
    "tree_cpu",
    "warm",
    "write_json",
]

#: Clock ticks per second, the unit of the ``/proc/PID/stat`` times (proc(5)).
_TICKS: int = os.sysconf("SC_CLK_TCK")


# --- CPU time -----------------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str]:
    """Read ``/proc/PID/stat`` split after the command name.

    The command name (field 2) may hold spaces, so the line is split after
    its closing parenthesis: index 0 is then field 3 (``state``).

    :param pid: the process.
    :returns: fields 3 onwards.
    :raises OSError: if the process is gone.
    """
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def proc_cpu(pid: int, *, reaped_children: bool = False) -> float:
    """User + system CPU seconds of a process (all its threads).

    :param pid: the process.
    :param reaped_children: add ``cutime + cstime``, the CPU of children it has waited for.
    :returns: seconds.
    :raises OSError: if the process is gone.
    """
    fields = _stat_fields(pid)
    # utime, stime, cutime, cstime are fields 14-17, i.e. indexes 11-14 here.
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICKS


def _children(pid: int) -> list[int]:
    """List the processes whose parent is ``pid`` (zombies included).

    :param pid: the parent.
    :returns: child pids.
    """
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if int(_stat_fields(int(name))[1]) == pid:
                found.append(int(name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and of every child it forked (``storescp --fork``).

    The parent's own time plus ``cutime + cstime`` (children already reaped)
    plus each unreaped child's own and reaped time (a zombie keeps its
    ``/proc`` figures until it is reaped).  A child reaped between the two
    reads would be counted twice or not at all, so the sum is read until two
    consecutive readings agree.

    :param pid: the parent.
    :returns: seconds.
    """
    previous = -1.0
    for _ in range(50):
        total = proc_cpu(pid, reaped_children=True)
        for child in _children(pid):
            try:
                total += proc_cpu(child, reaped_children=True)
            except OSError:
                pass  # reaped meanwhile: the next reading sees it in cutime
        if total == previous:
            return total
        previous = total
        time.sleep(0.02)
    return previous


def machine_ticks() -> list[int]:
    """Read the machine-wide CPU tick counters (the ``cpu`` line of ``/proc/stat``).

    :returns: user, nice, system, idle, iowait, irq, softirq, steal ticks.
    """
    with open("/proc/stat") as stat:
        return [int(value) for value in stat.readline().split()[1:9]]


def machine_share(before: Sequence[int], after: Sequence[int]) -> tuple[float, float]:
    """How busy the whole machine was between two :func:`machine_ticks` readings.

    On a VM whose virtual CPUs wait for the host (``steal``), a process's
    CPU time can grow while it waits, so the figures are printed beside
    every run.

    :param before: the first reading.
    :param after: the second.
    :returns: (busy %, steal %) of all CPU time in between.
    """
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta) or 1
    idle = delta[3] + delta[4]
    return 100.0 * (total - idle) / total, 100.0 * delta[7] / total


def settle(read_cpu: Callable[[], float], *, quiet: float = 0.3, timeout: float = 10.0) -> float:
    """Wait until a process has stopped using CPU, then return its reading.

    After the last instance has been acknowledged (or has landed) a
    receiver may still close the association, commit a completion or write
    a log line; those are part of its cost per instance.

    :param read_cpu: reads the CPU seconds (e.g. ``lambda: proc_cpu(pid)``).
    :param quiet: seconds without a change that count as idle.
    :param timeout: the longest wait.
    :returns: the last reading.
    """
    deadline = time.monotonic() + timeout
    last = read_cpu()
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = read_cpu()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


# --- input files --------------------------------------------------------------------------------

def warm(paths: Iterable[Path]) -> int:
    """Read files through once so the first timed run does not pay for the disk.

    :param paths: the files.
    :returns: bytes read.
    """
    total = 0
    for path in paths:
        with open(path, "rb") as source:
            while chunk := source.read(1 << 20):
                total += len(chunk)
    return total


def split_files(paths: Sequence[Path], parts: int) -> list[list[Path]]:
    """Deal files round-robin into ``parts`` shares, one per concurrent sender.

    :param paths: the files.
    :param parts: number of shares.
    :returns: non-empty shares.
    """
    shares = [list(paths[i::parts]) for i in range(parts)]
    return [share for share in shares if share]


def nodelay_env(nodelay: bool) -> dict[str, str]:
    """The environment DCMTK reads to set ``TCP_NODELAY`` on its sockets.

    :param nodelay: like-for-like with the gateway (which always sets it).
    :returns: extra environment variables.
    """
    return {"TCP_NODELAY": "1"} if nodelay else {}


# --- storescu senders ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SenderResult:
    """One ``storescu`` process, reaped with :func:`os.wait4`.

    :param returncode: its exit status.
    :param cpu: user + system CPU seconds from its rusage.
    :param log: the file holding its output.
    """

    returncode: int
    cpu: float
    log: Path


def run_senders(port: int, shares: Sequence[Sequence[Path]], *, called_ae: str, env: dict[str, str],
                log_dir: Path, timeout: float = 3600.0) -> tuple[float, list[SenderResult]]:
    """Start one ``storescu`` per share at once (one association each) and reap them all.

    :param port: the receiver's port.
    :param shares: the files each sender sends.
    :param called_ae: the receiver's AE title.
    :param env: extra environment (``TCP_NODELAY``).
    :param log_dir: where each sender's output goes.
    :param timeout: seconds before the senders are killed.
    :returns: (seconds from the first start to the last exit, one result per sender).
    """
    full_env = {**os.environ, **env}
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    start = time.perf_counter()
    for index, share in enumerate(shares):
        argv = [dcmtk.require_tool("storescu"), "-aet", f"STORESCU{index}", "-aec", called_ae,
                "-to", "10", "-ta", "30", "127.0.0.1", str(port), *map(str, share)]
        log = log_dir / f"storescu-{index}.log"
        with open(log, "wb") as out:
            procs.append((subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, env=full_env), log))
    # Blocking waits (no polling: the bench's own CPU competes on 2 cores); a timer kills stragglers.
    timer = threading.Timer(timeout, lambda: [proc.kill() for proc, _ in procs if proc.returncode is None])
    timer.start()
    results = []
    try:
        for proc, log in procs:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            results.append(SenderResult(proc.returncode, usage.ru_utime + usage.ru_stime, log))
    finally:
        timer.cancel()
    return time.perf_counter() - start, results


# --- the gateway --------------------------------------------------------------------------------

class _Gateway(GatewayProcess):
    """A gateway run from a given checkout, optionally under ``strace``.

    :param directory: its config, spool and log.
    :param root: the checkout whose ``gateway`` package runs (its working directory and first
        ``PYTHONPATH`` entry); this checkout by default.
    :param trace: the strace output file, or ``None``.
    :param overrides: config keys.
    """

    def __init__(self, directory: Path, root: Path, trace: Path | None, **overrides: Any) -> None:
        self.root = root
        self.trace = trace
        super().__init__(directory, **overrides)

    def command(self) -> list[str]:
        """``python -m gateway run -c CONFIG``, prefixed with ``strace`` when tracing.

        :returns: the argv.
        """
        argv = [sys.executable, "-m", "gateway", "run", "-c", str(self.config_path)]
        return strace_command(argv, self.trace) if self.trace else argv

    def _env(self) -> dict[str, str]:
        """The environment, with the chosen checkout first on ``PYTHONPATH``.

        :returns: the environment.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.root), *filter(None, [env.get("PYTHONPATH")])])
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        """Start it from the chosen checkout and wait until its port accepts connections.

        :param timeout: seconds to wait.
        :returns: this object.
        """
        self.spawn(self.command(), lambda: port_is_open(self.host, self.port), timeout,
                   env=self._env(), cwd=self.root, what=f"listen on {self.port}")
        return self

    def cli(self, *args: str, timeout: float = 60.0) -> CliResult:
        """Run an administration command of the chosen checkout against this config.

        :param args: the command and its arguments (``-c CONFIG`` is appended).
        :param timeout: seconds before it is killed.
        :returns: its exit status and output.
        """
        argv = [sys.executable, "-m", "gateway", *args, "-c", str(self.config_path)]
        proc = subprocess.run(argv, cwd=self.root, env=self._env(), capture_output=True, text=True,
                              timeout=timeout, check=False)
        return CliResult(proc.returncode, proc.stdout, proc.stderr, tuple(argv))


def gateway_process(directory: Path, trace: Path | None = None, root: Path | None = None,
                    **overrides: Any) -> GatewayProcess:
    """Configure a gateway as the other bench scripts do, with ``/metrics`` on a known port.

    :param directory: its config, spool and log (created; delete it to empty the spool).
    :param trace: run it under ``strace`` writing this file (then use :func:`traced_pid`
        and :func:`stop_traced`).
    :param root: run the ``gateway`` package of this checkout (``--baseline``); this one by default.
    :param overrides: more config keys (``destinations``, ``routes``, ``spool``).
    :returns: the process, not started.
    """
    http = {"host": "127.0.0.1", "port": free_port()}
    return _Gateway(directory, (root or REPO_ROOT).resolve(), trace, http=http, **overrides)


def received_by_gateway(gateway: GatewayProcess) -> int:
    """Instances the gateway acknowledged, from ``dicom_gateway_instances_received_total``.

    Read from ``/metrics`` so the count does not depend on the spool's layout.

    :param gateway: a running gateway made by :func:`gateway_process`.
    :returns: the sum over all label values (-1 if ``/metrics`` did not answer).
    """
    port = gateway.config["http"]["port"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return -1
    total = 0.0
    for line in text.splitlines():
        if line.startswith("dicom_gateway_instances_received_total"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


# --- strace: device flushes ---------------------------------------------------------------------

#: The system calls counted: the three that flush, and ``sync_file_range`` (starts writeback only).
STRACE_CALLS: tuple[str, ...] = ("fsync", "fdatasync", "syncfs", "sync_file_range")

_STRACE_LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(fsync|fdatasync|syncfs|sync_file_range)\((\d+)(?:<([^>]*)>)?")


def strace_command(command: Sequence[str], output: Path) -> list[str]:
    """Prefix a command with ``strace`` recording the flush calls of every thread.

    :param command: the traced command.
    :param output: the trace file (one line per call, with epoch times and fd paths).
    :returns: the argv.
    """
    # --seccomp-bpf: only the traced calls stop the process, so the gateway runs at close to its
    # own speed (a slowed gateway forwards one instance per lease and would count more commits).
    return ["strace", "-f", "--seccomp-bpf", "-qq", "-ttt", "-y", "-e", f"trace={','.join(STRACE_CALLS)}",
            "-o", str(output), *command]


@dataclass(frozen=True)
class StraceCount:
    """Flush calls seen during one series, by what was flushed.

    :param by_kind: ``{"data"|"directory"|"journal"|"other": count}`` of fsync + fdatasync + syncfs.
    :param by_call: ``{syscall: count}`` (sync_file_range included).
    :param sync_file_range: ``sync_file_range`` calls (writeback started, not a flush).
    """

    by_kind: dict[str, int]
    by_call: dict[str, int]
    sync_file_range: int

    @property
    def flushes(self) -> int:
        """fsync + fdatasync + syncfs calls.

        :returns: the count.
        """
        return sum(self.by_kind.values())


def count_flushes(trace: Path, start: float, end: float) -> StraceCount:
    """Count the flush calls an ``strace -ttt -y`` file shows between two epoch times.

    A call is counted at its entry line (``<... resumed>`` lines are not
    entries).  The file flushed is classified while the spool still exists:
    the SQLite journal (``*.sqlite``, ``-wal``, ``-journal``), a directory,
    another file (instance data), or something else (no path).

    :param trace: the strace output.
    :param start: epoch seconds the series began.
    :param end: epoch seconds it ended.
    :returns: the counts.
    """
    by_kind: dict[str, int] = {}
    by_call: dict[str, int] = {}
    ranges = 0
    for line in trace.read_text(errors="replace").splitlines():
        match = _STRACE_LINE.match(line)
        if not match or not start <= float(match.group(2)) <= end:
            continue
        call, path = match.group(3), match.group(5) or ""
        by_call[call] = by_call.get(call, 0) + 1
        if call == "sync_file_range":
            ranges += 1
            continue
        if re.search(r"\.sqlite(-wal|-journal)?$|-wal$|-journal$", path):
            kind = "journal"
        elif path and os.path.isdir(path):
            kind = "directory"
        elif path:
            kind = "data"
        else:
            kind = "other"
        by_kind[kind] = by_kind.get(kind, 0) + 1
    return StraceCount(by_kind, by_call, ranges)


# --- runs, medians, summary ---------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """One timed run of one side of a series.

    :param series: e.g. ``"512 KiB, 1 assoc, TCP_NODELAY=1"``.
    :param side: ``storescp``, ``gateway``, ``direct``...
    :param round: the round (0 is the discarded warm-up).
    :param count: instances sent.
    :param total_bytes: bytes of the files sent.
    :param seconds: wall time (see the script for what it spans).
    :param delivered: instances the receiver(s) reported.
    :param cpu: CPU seconds by process role (``gateway``, ``storescp``, ``storescu``).
    :param ok: every sender exited 0 and every instance arrived.
    :param busy: share of the machine's CPU time, all processes, that was busy during the run (%).
    :param steal: share stolen by the hypervisor during the run (%): the vCPUs waited for the host.
    """

    series: str
    side: str
    round: int
    count: int
    total_bytes: int
    seconds: float
    delivered: int
    cpu: dict[str, float]
    ok: bool
    busy: float = float("nan")
    steal: float = float("nan")

    @property
    def rate(self) -> float:
        """Instances per second.

        :returns: the rate.
        """
        return self.count / self.seconds if self.seconds > 0 else 0.0

    def cpu_us(self, role: str) -> float:
        """CPU microseconds per instance of one role.

        :param role: ``gateway``, ``storescp``, ``storescu``.
        :returns: microseconds per instance (NaN if the role did not run).
        """
        return self.cpu[role] / self.count * 1e6 if role in self.cpu and self.count else float("nan")

    def line(self) -> str:
        """Format as a progress line.

        :returns: one line.
        """
        cpu = "  ".join(f"{role} {self.cpu_us(role):,.0f}" for role in sorted(self.cpu))
        flag = "" if self.ok else f"  (NOT OK: {self.delivered}/{self.count} arrived or a sender failed)"
        tag = "warm-up, discarded" if self.round == 0 else f"run {self.round}"
        return (f"  {tag:<18} {self.side:<16} {self.seconds:>7.2f} s {self.rate:>8.1f}/s"
                f"  CPU us/inst: {cpu}  (machine busy {self.busy:.0f}%, steal {self.steal:.0f}%){flag}")


@dataclass(frozen=True)
class Side:
    """One side of a series: a name and the function running it once.

    :param name: shown in the tables.
    :param run: called with the round number; returns the run.
    """

    name: str
    run: Callable[[int], Run]


def run_once(run: Callable[[int], Run], round_: int) -> Run:
    """Run one side once, noting how busy the machine was meanwhile.

    :param run: the side's function.
    :param round_: the round number.
    :returns: the run, with ``busy`` and ``steal`` filled in.
    """
    before = machine_ticks()
    result = run(round_)
    busy, steal = machine_share(before, machine_ticks())
    return replace(result, busy=busy, steal=steal)


def interleave(series: str, sides: Sequence[Side], runs: int, all_runs: list[Run], *,
               discard: bool = True) -> dict[str, list[Run]]:
    """Run the sides in turn, round after round; the first round is discarded.

    :param series: the series' name, for the heading.
    :param sides: the sides, in the order they run within a round (direct first).
    :param runs: rounds kept.
    :param all_runs: every run (the discarded ones too) is appended here, for ``--json``.
    :param discard: run a warm-up round first and discard it; the scripts pass ``False``
        when an earlier series of the same invocation already sent the same files through
        both sides (they are warm, and the runs start from the same state).
    :returns: the kept runs of each side.
    """
    print(f"\n{series}" + ("" if discard else "  (files already sent by an earlier series: no warm-up round)"),
          flush=True)
    kept: dict[str, list[Run]] = {side.name: [] for side in sides}
    for round_ in range(0 if discard else 1, runs + 1):
        for side in sides:
            result = run_once(side.run, round_)
            all_runs.append(result)
            print(result.line(), flush=True)
            if round_ > 0:
                kept[side.name].append(result)
    return kept


@dataclass(frozen=True)
class Median:
    """The median of a side's kept runs.

    :param series: the series.
    :param side: the side.
    :param runs: how many runs.
    :param rate: median instances/s.
    :param rate_min: slowest run's instances/s.
    :param rate_max: fastest run's instances/s.
    :param mb_s: median MB/s.
    :param cpu_us: median CPU µs per instance by role.
    :param ok: every run was OK.
    """

    series: str
    side: str
    runs: int
    rate: float
    rate_min: float
    rate_max: float
    mb_s: float
    cpu_us: dict[str, float]
    ok: bool


def median_runs(runs: Sequence[Run]) -> Median:
    """Summarise one side's runs by their medians.

    :param runs: at least one run of the same side.
    :returns: the medians.
    """
    rates = [run.rate for run in runs]
    roles = sorted({role for run in runs for role in run.cpu})
    return Median(
        series=runs[0].series,
        side=runs[0].side,
        runs=len(runs),
        rate=statistics.median(rates),
        rate_min=min(rates),
        rate_max=max(rates),
        mb_s=statistics.median(run.total_bytes / run.seconds / 1e6 for run in runs),
        cpu_us={role: statistics.median(run.cpu_us(role) for run in runs) for role in roles},
        ok=all(run.ok for run in runs),
    )


def print_medians(medians: Sequence[Median], reference: str | None = None) -> None:
    """Print the median table of a series, with each rate's ratio to ``reference``'s.

    :param medians: the sides of one series.
    :param reference: the side the ratios are taken against (the direct DCMTK path).
    """
    ref = next((m for m in medians if m.side == reference), None)
    print(f"  {'median of kept runs':<18} {'side':<16} {'inst/s':>8} {'(min-max)':>15} {'MB/s':>7} "
          f"{'ratio':>6}  CPU us/inst")
    for m in medians:
        ratio = f"{m.rate / ref.rate:.2f}x" if ref and ref.rate and m is not ref else ""
        cpu = "  ".join(f"{role} {value:,.0f}" for role, value in m.cpu_us.items())
        bad = "" if m.ok else "  (NOT OK in some run)"
        print(f"  {'':<18} {m.side:<16} {m.rate:>8.1f} {f'({m.rate_min:.0f}-{m.rate_max:.0f})':>15} "
              f"{m.mb_s:>7.1f} {ratio:>6}  {cpu}{bad}", flush=True)


@dataclass(frozen=True)
class Target:
    """One line of the final summary: an issue 13 target and what was measured.

    :param name: the target, as the issue words it.
    :param text: the measured figures, ready to print.
    :param value: the measured figure.
    :param reference: what it is compared with (DCMTK's figure), if any.
    :param ratio: value / reference where that means something.
    :param goal: the target, as text.
    :param met: whether the goal is met (``None`` when the issue asks for a figure only).
    """

    name: str
    text: str
    value: float
    reference: float | None = None
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None


def ratio(value: float, reference: float) -> float:
    """Divide for a summary line, without failing on a zero reference (a run too short to tick).

    :param value: the numerator.
    :param reference: the denominator.
    :returns: the ratio, or NaN.
    """
    return value / reference if reference else float("nan")


def print_summary(targets: Sequence[Target]) -> None:
    """Print the summary block, one target per line.

    :param targets: the targets measured by this script.
    """
    print("\nsummary (issue 13 targets; medians, 2 cores, loopback)")
    for target in targets:
        verdict = {True: "met", False: "NOT met", None: "figure"}[target.met]
        goal = f"  [target {target.goal}: {verdict}]" if target.goal else ""
        print(f"- {target.name}: {target.text}{goal}")


def load_average() -> str:
    """The 1/5/15-minute load averages, for the report.

    :returns: e.g. ``"0.42 1.01 1.23"``.
    """
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def git_commit() -> str:
    """The checkout's commit (with ``+dirty`` when the gateway's sources differ from it).

    :returns: a short hash, or ``unknown``.
    """
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "gateway"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def header(script: str, args: Any) -> dict[str, Any]:
    """Print and return what the run was: date, commit, load, arguments.

    :param script: the script's name.
    :param args: its parsed arguments.
    :returns: the metadata for ``--json``.
    """
    meta = {
        "script": script,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": git_commit(),
        "load_average_start": load_average(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "args": vars(args),
    }
    print(f"{script} {meta['date']} commit {meta['commit']}  cpus {meta['cpus']}  "
          f"load average {meta['load_average_start']}  runs kept {args.runs} (+1 discarded)")
    return meta


def write_json(path: str | None, meta: dict[str, Any], runs: Sequence[Run], medians: Sequence[Median],
               targets: Sequence[Target], extra: dict[str, Any] | None = None) -> None:
    """Write everything measured to ``--json FILE``.

    :param path: the file, or ``None`` to skip.
    :param meta: from :func:`header`.
    :param runs: every run, the discarded ones marked ``round`` 0.
    :param medians: the median rows.
    :param targets: the summary.
    :param extra: more sections (peak RSS, strace counts).
    """
    if not path:
        return
    meta = {**meta, "load_average_end": load_average()}
    document = {
        "meta": meta,
        "runs": [{**asdict(run), "rate": run.rate} for run in runs],
        "medians": [asdict(median) for median in medians],
        "summary": [asdict(target) for target in targets],
        **(extra or {}),
    }
    Path(path).write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")


def scratch(prefix: str, tmpdir: str | None) -> Path:
    """Make the scratch directory for a run of a script.

    :param prefix: its name prefix.
    :param tmpdir: the parent (``--tmpdir``), or the system's temporary directory.
    :returns: the new directory, absolute.
    """
    return Path(tempfile.mkdtemp(prefix=prefix, dir=tmpdir)).resolve()


def remove(path: Path) -> None:
    """Delete a run's output folder (storescp's files, a gateway's spool).

    :param path: the folder.
    """
    shutil.rmtree(path, ignore_errors=True)


def stop_traced(gateway: GatewayProcess) -> None:
    """Stop a gateway started under ``strace``: SIGTERM to the gateway, then wait for strace.

    :param gateway: a gateway whose command was wrapped by :func:`strace_command`.
    """
    for child in _children(gateway.pid):
        try:
            os.kill(child, signal.SIGTERM)
        except OSError:
            pass
    try:
        gateway._proc.wait(30)  # type: ignore[union-attr]
    except subprocess.TimeoutExpired:
        pass
    gateway.stop()


def traced_pid(gateway: GatewayProcess) -> int:
    """The gateway's own pid when it runs under ``strace`` (strace's child).

    :param gateway: a started gateway wrapped by :func:`strace_command`.
    :returns: the pid whose ``/proc`` figures are the gateway's.
    """
    children = _children(gateway.pid)
    return children[0] if children else gateway.pid
