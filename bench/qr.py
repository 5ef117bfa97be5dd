"""Query/Retrieve benchmark: C-FIND and C-MOVE through the gateway vs straight to the source, interleaved (issue 16).

One Orthanc 1.10 (Debian) is the source, preloaded through its REST API with
``--studies`` (200) one-instance studies for the query series and one study of
``--count`` (200) instances of about ``--kib`` (10) KiB for the move series.
One gateway (``query.sources`` and ``retrieve.sources``: that Orthanc, relay
mode; the move destination a ``storescp`` in its ``modalities`` table) stays
up for the whole run; the sides run in turn, round after round (the first
round discarded, then ``--runs`` kept):

- ``find direct`` / ``find gateway``: a STUDY-level universal C-FIND
  (Study Root) from a pynetdicom requester in this process; the time spans
  the C-FIND-RQ to the final response; the rate is results per second.
- ``move direct`` / ``move gateway``: ``movescu`` (DCMTK) asks for the study
  to be moved to the ``storescp``; the time spans the movescu process (its
  association to the final C-MOVE-RSP); OK when every instance landed.
  Through the gateway the instances go source -> gateway (custody, journal)
  -> ``move.dest`` queue -> ``storescp``.

CPU per result / instance is read from ``/proc/PID/stat`` of the gateway and
of Orthanc around each run (clock ticks of 10 ms; see ``bench/_measure.py``).

A run on this machine (2 vCPUs, shared with other jobs, load average ~5;
2026-12-02 11:16 UTC, commit 62a5ff7, defaults, medians of 3 kept runs)::

    C-FIND, STUDY level, 201 results        results/s   CPU us/result
      find direct                              1133       orthanc 100
      find gateway                              813       gateway 448  orthanc 100   0.72x
    C-MOVE, 200 instances of 10 KiB         inst/s      CPU us/inst
      move direct                              11.0       orthanc 950
      move gateway (relay)                     45.9       gateway 5,200  orthanc 950  4.17x

The direct C-MOVE is slow at ~90 ms per instance, steadily: Orthanc's own
C-STORE SCU to ``storescp``, not investigated here (a Nagle / delayed-ACK
interaction is the likely suspect); through the gateway Orthanc stores to the
gateway instead, which is faster, and the gateway forwards through its queue.

Usage::

    .venv/bin/python bench/qr.py                              # 200 studies, 200 instances, 3 runs
    .venv/bin/python bench/qr.py --studies 50 --count 50 --runs 1   # quick run
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _measure as m  # noqa: E402  (bench/_measure.py, same folder)
from _measure import Run, Side  # noqa: E402

from tests.support import dcmtk  # noqa: E402
from tests.support.gateway_process import dicom_destination  # noqa: E402
from tests.support.qr import STUDY_ROOT_FIND, preload, qr_source, write_study  # noqa: E402

#: AE titles of the source, the gateway and the move destination.
SOURCE_AET, GATEWAY_AET, DEST_AET = "SOURCE", "DICOMGW", "DEST"


def find_side(name: str, port: int, called: str, pids: dict[str, int], expected: int) -> Callable[[int], Run]:
    """Build a C-FIND side: one universal STUDY query, timed from the request to the final response.

    :param name: the side's name.
    :param port: the SCP's port.
    :param called: its AE title.
    :param pids: processes whose CPU time is read, by role.
    :param expected: how many results a complete answer has.
    :returns: a function running one round.
    """
    from pydicom.dataset import Dataset
    from pynetdicom import AE

    def run(round_: int) -> Run:
        ae = AE(ae_title="BENCHFIND")
        ae.add_requested_context(STUDY_ROOT_FIND)
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        query.PatientID = ""
        assoc = ae.associate("127.0.0.1", port, ae_title=called)
        if not assoc.is_established:
            raise RuntimeError(f"{name}: association refused")
        before = {role: m.proc_cpu(pid) for role, pid in pids.items()}
        results, final = 0, -1
        start = time.monotonic()
        for status, _identifier in assoc.send_c_find(query, STUDY_ROOT_FIND):
            if status is None or "Status" not in status:
                break
            if int(status.Status) in (0xFF00, 0xFF01):
                results += 1
            else:
                final = int(status.Status)
        seconds = time.monotonic() - start
        assoc.release()
        cpu = {role: m.settle(lambda p=pid: m.proc_cpu(p)) - before[role] for role, pid in pids.items()}
        return Run("C-FIND", name, round_, max(results, 1), 0, seconds, results, cpu,
                   final == 0 and results == expected)

    return run


def move_side(name: str, port: int, called: str, pids: dict[str, int], study_uid: str, dest: Path,
              count: int, total: int) -> Callable[[int], Run]:
    """Build a C-MOVE side: ``movescu`` moves the study to the ``storescp``, timed over the process.

    :param name: the side's name.
    :param port: the Q/R SCP's port.
    :param called: its AE title.
    :param pids: processes whose CPU time is read, by role.
    :param study_uid: the study.
    :param dest: the storescp's folder (emptied before each run).
    :param count: the study's instances.
    :param total: its bytes.
    :returns: a function running one round.
    """
    def run(round_: int) -> Run:
        for path in dest.iterdir():
            path.unlink()
        before = {role: m.proc_cpu(pid) for role, pid in pids.items()}
        argv = [dcmtk.require_tool("movescu"), "-S", "-aet", "BENCHMOVE", "-aec", called, "-aem", DEST_AET,
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
                "127.0.0.1", str(port)]
        start = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        deadline = time.monotonic() + 120
        while len(list(dest.iterdir())) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        seconds = time.monotonic() - start
        landed = len(list(dest.iterdir()))
        cpu = {role: m.settle(lambda p=pid: m.proc_cpu(p)) - before[role] for role, pid in pids.items()}
        return Run("C-MOVE", name, round_, count, total, seconds, landed, cpu,
                   proc.returncode == 0 and landed == count)

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Set up the source, the destination and the gateway, run the series, print the tables.

    :param argv: the arguments.
    :returns: 0, or 1 when some run was not OK.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=200, help="one-instance studies for C-FIND (200)")
    parser.add_argument("--count", type=int, default=200, help="instances of the moved study (200)")
    parser.add_argument("--kib", type=int, default=10, help="approximate size of each moved instance (10 KiB)")
    parser.add_argument("--runs", type=int, default=3, help="rounds kept after the discarded one (3)")
    parser.add_argument("--tmpdir", help="parent of the scratch folder")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    meta = m.header("bench/qr.py", args)
    work = m.scratch("bench-qr-", args.tmpdir)
    source = qr_source(work / "orthanc", SOURCE_AET)
    dest = dcmtk.Storescp(work / "dest", ae_title=DEST_AET, bit_preserving=False, accept_all=False)
    gateway: Any = None
    try:
        source.start()
        dest.start()
        print(f"preloading {args.studies} studies and one of {args.count} instances...", flush=True)
        preload(source, [write_study(work / f"s{i}", 1, size=1024) for i in range(args.studies)])
        moved = write_study(work / "moved", args.count, size=args.kib * 1024)
        preload(source, [moved])
        total = sum(p.stat().st_size for p in moved.files)
        gateway = m.gateway_process(
            work / "gw",
            destinations={"source": dicom_destination(source.dicom_port, SOURCE_AET)},
            routes=[],
            spool={"path": str(work / "gw" / "spool"), "min_free": "64MiB", "resume_margin": "32MiB"},
            modalities={"dest": {"ae_title": DEST_AET, "host": "127.0.0.1", "port": dest.port}},
            query={"sources": ["source"], "timeout": "120s", "max_results": 1_000_000},
            retrieve={"sources": ["source"], "timeout": "300s"},
        )
        gateway.start()
        source.declare_modality("GW", GATEWAY_AET, gateway.port)
        source.declare_modality("DEST", DEST_AET, dest.port)
        studies = args.studies + 1
        pids_direct = {"orthanc": source.pid}
        pids_gw = {"gateway": gateway.pid, "orthanc": source.pid}
        all_runs: list[Run] = []
        medians = []
        find_kept = m.interleave(f"C-FIND, STUDY level, {studies} results", [
            Side("find direct", find_side("find direct", source.dicom_port, SOURCE_AET, pids_direct, studies)),
            Side("find gateway", find_side("find gateway", gateway.port, GATEWAY_AET, pids_gw, studies)),
        ], args.runs, all_runs)
        medians_find = [m.median_runs(runs) for runs in find_kept.values() if runs]
        print("\n  (rate: results / (C-FIND-RQ -> final response); CPU: us per result)")
        m.print_medians(medians_find, reference="find direct")
        move_kept = m.interleave(f"C-MOVE, {args.count} instances of {args.kib} KiB", [
            Side("move direct", move_side("move direct", source.dicom_port, SOURCE_AET, pids_direct,
                                          moved.study_instance_uid, dest.outdir, args.count, total)),
            Side("move gateway", move_side("move gateway", gateway.port, GATEWAY_AET, pids_gw,
                                           moved.study_instance_uid, dest.outdir, args.count, total)),
        ], args.runs, all_runs)
        medians_move = [m.median_runs(runs) for runs in move_kept.values() if runs]
        print("\n  (rate: instances / movescu's run, until every file landed; CPU: us per instance)")
        m.print_medians(medians_move, reference="move direct")
        medians = medians_find + medians_move
        m.write_json(args.json, meta, all_runs, medians, [], {})
        return 0 if all(run.ok for run in all_runs) else 1
    finally:
        if gateway is not None:
            gateway.stop()
        dest.stop()
        source.stop()
        m.remove(work)


if __name__ == "__main__":
    sys.exit(main())
