"""STOW-RS ingest: the gateway's service against Orthanc receiving the same requests (issue 17).

The ingest half of ``bench/dicomweb.py`` (i17-stowout writes the forwarding
half; the lead joins them): every function here is named ``ingest_*``.

What it prints, on the same run:

* **ingest**: one ``multipart/related`` body of ``--count`` instances of
  ``--size`` bytes (built once, read through once so both sides start with it
  in the page cache), POSTed with ``curl --data-binary @file`` to the gateway's
  ``POST /studies`` and to Orthanc's ``POST /dicom-web/studies`` (its DICOMweb
  plugin), interleaved round after round (round 0 discarded); per side the
  median instances/s, MB/s and the receiver's CPU milliseconds per instance
  (``/proc/PID/stat`` user+system, before and after the request);
* **large**: one instance of ``--large-mb`` MiB in one POST, streamed from a
  socket in 1 MiB pieces; the gateway's peak RSS (``VmHWM``) before and
  after, which stays flat (the body is never held in memory nor in a
  temporary file; the spool's lane holds at most a few MiB).

Run: ``python bench/dicomweb_ingest.py --count 500 --size 100000 --runs 3 --large-mb 2048``.
Only public interfaces are used (the gateway's configuration, its port, ``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.cputime import cpu_seconds  # noqa: E402
from tests.support.gateway_process import GatewayProcess, wait_until  # noqa: E402
from tests.support.interop import make_series  # noqa: E402
from tests.support.orthanc import Orthanc  # noqa: E402
from tests.support.ports import free_port, port_is_open  # noqa: E402
from tests.support.procstat import vm_hwm_kib  # noqa: E402

TOKEN = "bench-ingest-token-0123456789"
BOUNDARY = "bench-ingest-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def ingest_body(files: list[Path], target: Path) -> int:
    """Write the multipart body of ``files`` to ``target``; its size."""
    with open(target, "wb") as out:
        for path in files:
            out.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            out.write(path.read_bytes())
            out.write(b"\r\n")
        out.write(f"--{BOUNDARY}--\r\n".encode())
    return target.stat().st_size


def ingest_gateway(work: Path) -> tuple[GatewayProcess, int]:
    """A gateway serving STOW-RS with no route (instances kept in the spool, acknowledged once durable)."""
    tokens = work / "tokens"
    tokens.write_text(f"bench:{TOKEN}\n")
    port = free_port("127.0.0.1")
    gateway = GatewayProcess(
        work / "gateway",
        dicomweb={"listen": [{"host": "127.0.0.1", "port": port}], "auth": {"tokens_file": str(tokens)},
                  "max_request_size": "64GiB"},
    )
    gateway.start()
    wait_until(lambda: port_is_open("127.0.0.1", port), 30, lambda: gateway.log_text()[-2000:])
    return gateway, port


def ingest_post(url: str, body: Path, token: str | None) -> tuple[int, float]:
    """POST ``body`` with curl; the HTTP status and the wall seconds."""
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", f"Content-Type: {CONTENT_TYPE}",
            "-H", "Expect:", "--data-binary", f"@{body}", url]
    if token:
        argv[1:1] = ["-H", f"Authorization: Bearer {token}"]
    start = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, check=True, timeout=3600).stdout.decode()
    return int(out), time.perf_counter() - start


def ingest_run(side: str, work: Path, body: Path, count: int) -> dict[str, float]:
    """One fresh receiver (``gateway`` or ``orthanc``), one POST; rates and CPU per instance."""
    scratch = Path(tempfile.mkdtemp(dir=work))
    try:
        if side == "gateway":
            gateway, port = ingest_gateway(scratch)
            pid, url, token = gateway.pid, f"http://127.0.0.1:{port}/studies", TOKEN
            stop = gateway.stop
        else:
            orthanc = Orthanc(scratch / "orthanc", dicomweb=True).start()
            pid, url, token = orthanc.pid, orthanc.dicomweb_url + "/studies", None
            stop = orthanc.stop
        try:
            before = cpu_seconds(pid)
            code, seconds = ingest_post(url, body, token)
            after = cpu_seconds(pid)
        finally:
            stop()
        if code != 200:
            raise RuntimeError(f"{side}: HTTP {code}")
        size = body.stat().st_size
        return {"seconds": seconds, "instances_per_s": count / seconds, "mb_per_s": size / seconds / 1e6,
                "cpu_ms_per_instance": (after - before) * 1000 / count}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def ingest_interleaved(work: Path, files: list[Path], runs: int) -> dict[str, dict[str, float]]:
    """Gateway and Orthanc, interleaved ``runs`` rounds after a discarded round 0; medians per side."""
    body = work / "body.multipart"
    ingest_body(files, body)
    with open(body, "rb") as fp:  # read through once: both sides start with it cached
        while fp.read(1 << 20):
            pass
    results: dict[str, list[dict[str, float]]] = {"gateway": [], "orthanc": []}
    for round_ in range(runs + 1):
        for side in ("gateway", "orthanc"):
            run = ingest_run(side, work, body, len(files))
            if round_:
                results[side].append(run)
            print(f"  round {round_} {side}: {json.dumps({k: round(v, 3) for k, v in run.items()})}", flush=True)
    return {side: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for side, rs in results.items()}


def ingest_large(work: Path, megabytes: int) -> dict[str, Any]:
    """One instance of ``megabytes`` MiB in one POST; the gateway's peak RSS stays bounded."""
    from tests.support.datasets import write_multiframe

    instance = work / "large.dcm"
    write_multiframe(instance, megabytes * 1024 * 1024)
    scratch = Path(tempfile.mkdtemp(dir=work))
    gateway, port = ingest_gateway(scratch)
    try:
        time.sleep(1)
        idle_kib = vm_hwm_kib(gateway.pid)
        head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        length = len(head) + instance.stat().st_size + len(tail)
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                (f"POST /studies HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n"
                 f"Content-Type: {CONTENT_TYPE}\r\nContent-Length: {length}\r\n\r\n").encode() + head
            )
            with open(instance, "rb") as fp:
                while chunk := fp.read(1 << 20):
                    sock.sendall(chunk)
            sock.sendall(tail)
            answer = b""
            while b"\r\n\r\n" not in answer:
                piece = sock.recv(65536)
                if not piece:
                    break
                answer += piece
        seconds = time.perf_counter() - start
        peak_kib = vm_hwm_kib(gateway.pid)
        return {"megabytes": megabytes, "status": answer.split(b"\r\n", 1)[0].decode(errors="replace"),
                "seconds": round(seconds, 2), "mb_per_s": round(length / seconds / 1e6, 1),
                "peak_rss_before_mib": round(idle_kib / 1024, 1), "peak_rss_after_mib": round(peak_kib / 1024, 1)}
    finally:
        gateway.stop()
        shutil.rmtree(scratch, ignore_errors=True)
        instance.unlink(missing_ok=True)


def ingest_main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the series, print the figures (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="instances per POST")
    parser.add_argument("--size", type=int, default=100_000, help="bytes per instance")
    parser.add_argument("--runs", type=int, default=3, help="kept rounds (round 0 is discarded)")
    parser.add_argument("--large-mb", type=int, default=2048, help="size of the single large instance (0: skip)")
    parser.add_argument("--tmpdir", default=None, help="where to work (a temporary folder under it, removed)")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-dicomweb-ingest-", dir=args.tmpdir))
    try:
        folder = work / "series"
        make_series(folder, args.count, args.size)
        files = sorted(folder.iterdir())
        print(f"STOW-RS ingest: {args.count} instances of {args.size} bytes in one POST, {args.runs} rounds", flush=True)
        medians = ingest_interleaved(work, files, args.runs)
        for side, figures in medians.items():
            print(f"{side:8s} {figures['instances_per_s']:8.1f} inst/s {figures['mb_per_s']:7.1f} MB/s "
                  f"{figures['cpu_ms_per_instance']:6.2f} ms CPU/instance")
        large = ingest_large(work, args.large_mb) if args.large_mb else {}
        if large:
            print(f"large: {json.dumps(large)}")
        if args.json:
            Path(args.json).write_text(json.dumps({"ingest": medians, "large": large}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(ingest_main())
