"""Storage Commitment benchmark: N-ACTION to report latency, gateway vs Orthanc as the SCP, interleaved (issue 15).

A study of ``--count`` (500) instances of about ``--kib`` (10) KiB is sent
with DCMTK ``storescu`` in one association (not timed), then the requester
(:mod:`tests.support.commitment_peer`, pynetdicom in its own process) asks
about all of them in one N-ACTION-RQ and the report arrives at the receiver
(the same program's ``serve``, on a new association: PS3.4 J.3.3.1.3).  The
time measured is from just before the N-ACTION-RQ was sent to the moment
the receiver recorded the N-EVENT-REPORT-RQ (both ``time.time()`` on this
machine).  The sides, run in turn round after round (the first round
discarded, then ``--runs`` kept; fresh processes and folders every run):

- ``orthanc``: Orthanc 1.10 (Debian) as the SCP, answering from its own index
  (its default lookup: each instance read back from its storage);
- ``gw received``: the gateway, ``commitment.policy: received``, routing to
  one ``storescp``; asked right after ``storescu`` exits;
- ``gw delivered``: ``policy: delivered``, asked once the last file landed at
  ``storescp`` (what the decision and report cost, forwarding done);
- ``gw delivered@once``: ``policy: delivered``, asked right after ``storescu``
  exits: the latency then includes forwarding the rest of the study.

Each run line prints instances/s (``count / latency``) and the CPU time per
instance, in microseconds, of the SCP process between the N-ACTION and the
report (``/proc/PID/stat`` until it went quiet; see ``bench/_measure.py``).

A run on this machine (2 vCPUs, shared; 2026-12-02 10:06 UTC, commit 506112b,
500 instances of 10 KiB, medians of 3 kept runs, N-ACTION -> report)::

    orthanc             0.74 s   678/s   CPU orthanc 1,220 us/inst
    gw received         0.09 s  5345/s   CPU gateway   100 us/inst   7.9x Orthanc
    gw delivered        0.10 s  4833/s   CPU gateway   100 us/inst   7.1x
    gw delivered@once   0.12 s  4089/s   CPU gateway   120 us/inst   6.0x

The same on the merged main (341b025, 10:51 UTC, nothing else running)::

    orthanc             1.07 s   469/s   CPU orthanc 1,760 us/inst
    gw received         0.15 s  3238/s   CPU gateway   140 us/inst   6.9x Orthanc
    gw delivered        0.16 s  3140/s   CPU gateway   120 us/inst   6.7x
    gw delivered@once   0.20 s  2463/s   CPU gateway   140 us/inst   5.3x

(CPU is read in clock ticks of 10 ms: 100 us/inst is 5 ticks for 500 instances.)

Usage::

    .venv/bin/python bench/commitment.py                     # 500 instances, 3 runs kept
    .venv/bin/python bench/commitment.py --count 50 --runs 1  # quick run
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _measure as m  # noqa: E402  (bench/_measure.py, same folder)
from _measure import Run, Side  # noqa: E402
from receive import make_series  # noqa: E402  (bench/receive.py, same folder)

import pydicom  # noqa: E402

from tests.support import dcmtk  # noqa: E402
from tests.support.commitment_peer import CommitmentPeer, ReceivedReport, request_commitment  # noqa: E402
from tests.support.gateway_process import dicom_destination  # noqa: E402
from tests.support.orthanc import Orthanc  # noqa: E402


def references(files: Sequence[Path]) -> list[tuple[str, str]]:
    """Read each file's SOP Class and Instance UIDs, in order.

    :param files: the study's files.
    :returns: ``[(SOP Class UID, SOP Instance UID), ...]``.
    """
    refs = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        refs.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return refs


def _wait_report(receiver: CommitmentPeer, transaction: str, timeout: float) -> ReceivedReport | None:
    """Poll the receiver's file until the report for ``transaction`` is there.

    :param receiver: the report receiver.
    :param transaction: the Transaction UID.
    :param timeout: seconds.
    :returns: the report, or ``None`` on timeout.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reports = receiver.reports_for(transaction)
        if reports:
            return reports[0]
        time.sleep(0.02)
    return None


def _wait_files(folder: Path, count: int, timeout: float) -> int:
    """Poll until ``storescp`` wrote ``count`` files.

    :param folder: its output folder.
    :param count: files expected.
    :param timeout: seconds.
    :returns: the files found.
    """
    deadline = time.monotonic() + timeout
    while True:
        landed = sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0
        if landed >= count or time.monotonic() > deadline:
            return landed
        time.sleep(0.02)


def _ask(pid: int, receiver: CommitmentPeer, port: int, called: str, refs: list[tuple[str, str]],
         timeout: float) -> tuple[float, float, ReceivedReport | None]:
    """Send the N-ACTION and wait for the report, reading the SCP's CPU time around it.

    :param pid: the SCP process.
    :param receiver: the report receiver (the requester's AE title is its own).
    :param port: the SCP's port.
    :param called: its AE title.
    :param refs: what to ask about.
    :param timeout: seconds to wait for the report.
    :returns: (latency in seconds, CPU seconds of the SCP, the report or ``None``).
    """
    transaction = pydicom.uid.generate_uid()
    before = m.proc_cpu(pid)
    outcome = request_commitment(port, transaction, refs, called_ae=called,
                                 calling_ae=receiver.ae_title, timeout=timeout + 60)
    if outcome.status != 0:
        print(f"  N-ACTION answered {outcome}", file=sys.stderr)
        return float("nan"), 0.0, None
    report = _wait_report(receiver, transaction, timeout)
    cpu = m.settle(lambda: m.proc_cpu(pid)) - before
    latency = report.received_at - outcome.sent_at if report else float("nan")
    return latency, cpu, report


def _run(series: str, side: str, round_: int, refs: list[tuple[str, str]], total: int,
         latency: float, cpu: dict[str, float], report: ReceivedReport | None) -> Run:
    """Build the run line: OK when every instance was reported committed.

    :param series: the series.
    :param side: the side.
    :param round_: the round.
    :param refs: what was asked.
    :param total: bytes of the study.
    :param latency: N-ACTION to report, seconds.
    :param cpu: CPU seconds by role.
    :param report: the report, ``None`` when none came.
    :returns: the run.
    """
    committed = len(report.committed) if report else 0
    ok = report is not None and report.event_type == 1 and committed == len(refs)
    return Run(series, side, round_, len(refs), total, latency if latency == latency else 1e9,
               committed, cpu, ok)


def orthanc_side(work: Path, series: str, files: Sequence[Path], refs: list[tuple[str, str]],
                 total: int, timeout: float) -> Callable[[int], Run]:
    """Build the ``orthanc`` side: Orthanc stores the study, then answers the N-ACTION.

    :param work: scratch directory.
    :param series: the series' name.
    :param files: the study.
    :param refs: its references.
    :param total: its bytes.
    :param timeout: seconds to wait for a report.
    :returns: a function running one round.
    """
    def run(round_: int) -> Run:
        tag = time.monotonic_ns()
        receiver = CommitmentPeer(work / f"or{tag}-mod", "MODALITY")
        archive = Orthanc(work / f"or{tag}", aet="ORTHANC")
        latency, cpu, report = float("nan"), 0.0, None
        try:
            receiver.start()
            archive.start()
            archive.declare_modality("MOD", "MODALITY", receiver.port)
            _, senders = m.run_senders(archive.dicom_port, [files], called_ae="ORTHANC", env={},
                                       log_dir=work / f"or{tag}-logs")
            if any(s.returncode for s in senders):
                raise RuntimeError(f"storescu to Orthanc failed: {senders}")
            latency, cpu, report = _ask(archive.pid, receiver, archive.dicom_port, "ORTHANC", refs, timeout)
        finally:
            archive.stop()
            receiver.stop()
            m.remove(archive.dir)
            m.remove(receiver.dir)
        return _run(series, "orthanc", round_, refs, total, latency, {"orthanc": cpu}, report)

    return run


def gateway_side(work: Path, series: str, files: Sequence[Path], refs: list[tuple[str, str]],
                 total: int, timeout: float, policy: str, after_landing: bool) -> Callable[[int], Run]:
    """Build a gateway side: the study through the gateway to ``storescp``, then the N-ACTION.

    :param work: scratch directory.
    :param series: the series' name.
    :param files: the study.
    :param refs: its references.
    :param total: its bytes.
    :param timeout: seconds to wait for a report.
    :param policy: ``received`` or ``delivered``.
    :param after_landing: ask once every file landed at ``storescp`` (else at once).
    :returns: a function running one round.
    """
    side = f"gw {policy}" + ("" if after_landing or policy == "received" else "@once")

    def run(round_: int) -> Run:
        tag = time.monotonic_ns()
        receiver = CommitmentPeer(work / f"gw{tag}-mod", "MODALITY")
        scp = dcmtk.Storescp(work / f"gw{tag}-scp", bit_preserving=False, accept_all=False)
        gateway = m.gateway_process(
            work / f"gw-{tag}",
            destinations={"scp": dicom_destination(scp.port, scp.ae_title)},
            routes=[{"name": "all", "forward": ["scp"]}],
            spool={"path": str(work / f"gw-{tag}" / "spool"), "min_free": "64MiB", "resume_margin": "32MiB"},
            modalities={"MOD": {"ae_title": "MODALITY", "host": "127.0.0.1", "port": receiver.port}},
            commitment={"policy": policy, "deadline": f"{int(timeout)}s",
                        "retry": {"initial": "1s", "max": "2s"}},
        )
        latency, cpu, report = float("nan"), 0.0, None
        try:
            receiver.start()
            scp.start()
            gateway.start()
            _, senders = m.run_senders(gateway.port, [files], called_ae="DICOMGW", env={},
                                       log_dir=gateway.dir / "logs")
            if any(s.returncode for s in senders):
                raise RuntimeError(f"storescu to the gateway failed: {senders}")
            if after_landing:
                _wait_files(scp.outdir, len(files), timeout)
                m.settle(lambda: m.proc_cpu(gateway.pid))
            latency, cpu, report = _ask(gateway.pid, receiver, gateway.port, "DICOMGW", refs, timeout)
        finally:
            gateway.stop()
            scp.stop()
            receiver.stop()
            if report is None:
                print(gateway.log_text()[-3000:], file=sys.stderr)
            m.remove(gateway.dir)
            m.remove(scp.outdir)
            m.remove(receiver.dir)
        return _run(series, side, round_, refs, total, latency, {"gateway": cpu}, report)

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Run the series and print the tables.

    :param argv: the arguments.
    :returns: 0, or 1 when some run was not OK.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=500, help="instances in the study (500)")
    parser.add_argument("--kib", type=int, default=10, help="approximate size of each instance (10 KiB)")
    parser.add_argument("--runs", type=int, default=3, help="rounds kept after the discarded one (3)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for a report (300)")
    parser.add_argument("--sides", default="orthanc,received,delivered,delivered@once",
                        help="sides to run, in this order (orthanc,received,delivered,delivered@once)")
    parser.add_argument("--tmpdir", help="parent of the scratch folder")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    meta = m.header("bench/commitment.py", args)
    work = m.scratch("bench-commitment-", args.tmpdir)
    try:
        study = work / "study"
        total = make_series(study, args.count, args.kib * 1024)
        files = sorted(study.iterdir())
        m.warm(files)
        refs = references(files)
        series = f"{args.count} instances of {args.kib} KiB, one N-ACTION"
        builders: dict[str, Callable[[], Callable[[int], Run]]] = {
            "orthanc": lambda: orthanc_side(work, series, files, refs, total, args.timeout),
            "received": lambda: gateway_side(work, series, files, refs, total, args.timeout, "received", False),
            "delivered": lambda: gateway_side(work, series, files, refs, total, args.timeout, "delivered", True),
            "delivered@once": lambda: gateway_side(work, series, files, refs, total, args.timeout,
                                                   "delivered", False),
        }
        sides = []
        for name in args.sides.split(","):
            run = builders[name]()
            sides.append(Side(name, run))
        all_runs: list[Run] = []
        kept = m.interleave(series, sides, args.runs, all_runs)
        medians = [m.median_runs(runs) for runs in kept.values() if runs]
        print("\n  (rate: instances / (N-ACTION sent -> report received); CPU: the SCP process in that window)")
        m.print_medians(medians, reference="orthanc" if "orthanc" in kept else None)
        extra: dict[str, Any] = {}
        m.write_json(args.json, meta, all_runs, medians, [], extra)
        return 0 if all(run.ok for run in all_runs) else 1
    finally:
        m.remove(work)


if __name__ == "__main__":
    sys.exit(main())
