"""DICOMweb benchmark (issue 17): the gateway forwarding with STOW-RS to Orthanc, against Orthanc receiving it directly.

Forwarding part (this branch; the inbound STOW-RS ingest part is added
beside it as ``ingest_*`` functions). For one series of ``--count``
instances of about ``--kib`` KiB, interleaved round after round (the first
round discarded, then ``--runs`` kept, medians printed; see
``bench/README.md`` and ``bench/_measure.py`` for the method):

- ``direct``: a plain Python client (``http.client``) POSTs the series to
  Orthanc's STOW-RS (``/dicom-web/studies``) in requests of ``--batch``
  instances, the same ``multipart/related; type="application/dicom"`` body
  with a Content-Length, streamed from the files; timed until the last
  answer;
- ``gateway``: ``storescu`` sends the series to the gateway with its
  DICOMweb destination paused (so receiving is not timed); the queue is
  resumed and the run is timed until Orthanc holds every instance.

Each run starts a fresh Orthanc (with its DICOMweb plugin) and a fresh
gateway, removed afterwards; the files are generated once and read through
before the first run (same page-cache state for both sides). Printed:
instances/s, MB/s, and CPU microseconds per instance of each process
(``orthanc``, ``gateway`` from ``/proc``; ``client`` the benchmark's own
process time for the direct side).

Usage::

    .venv/bin/python bench/dicomweb.py                       # 300 x 256 KiB, 3 runs
    .venv/bin/python bench/dicomweb.py --count 30 --runs 1   # quick check of the script
"""

from __future__ import annotations

import argparse
import http.client
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _measure as m  # noqa: E402  (bench/_measure.py, same folder)
from _measure import Run, Side  # noqa: E402
from receive import make_series  # noqa: E402  (bench/receive.py, same folder)

from tests.support import dcmtk, orthanc  # noqa: E402

#: Bytes read from a file at once by the direct client (as the gateway's body does).
CHUNK = 256 * 1024


def _orthanc(work: Path) -> orthanc.Orthanc:
    """A fresh Orthanc with its DICOMweb plugin, started."""
    archive = orthanc.Orthanc(work / f"orthanc-{time.monotonic_ns()}", dicomweb=True)
    archive.start()
    return archive


def _count(archive: orthanc.Orthanc) -> int:
    """Instances Orthanc holds (``GET /statistics``)."""
    return int(archive.get("/statistics")["CountInstances"])


def _multipart(files: Sequence[Path], boundary: str) -> tuple[int, Iterator[bytes]]:
    """The STOW-RS body of ``files``: its length and its chunks, read as they are sent."""
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    close = f"--{boundary}--\r\n".encode()
    length = sum(len(head) + path.stat().st_size + 2 for path in files) + len(close)

    def chunks() -> Iterator[bytes]:
        for path in files:
            yield head
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk
            yield b"\r\n"
        yield close

    return length, chunks()


def forward_direct(work: Path, series: str, files: Sequence[Path], batch: int) -> Callable[[int], Run]:
    """Build the ``direct`` side: a plain client POSTing the series to Orthanc's STOW-RS.

    :param work: scratch directory.
    :param series: the series' name.
    :param files: the instances.
    :param batch: instances per request.
    :returns: a function running one round.
    """
    total = sum(path.stat().st_size for path in files)

    def run(round_: int) -> Run:
        archive = _orthanc(work)
        ok = True
        try:
            before, client_before = m.proc_cpu(archive.pid), time.process_time()
            start = time.perf_counter()
            connection = http.client.HTTPConnection("127.0.0.1", archive.http_port, timeout=600)
            for index in range(0, len(files), batch):
                boundary = "bench-" + secrets.token_hex(8)
                length, body = _multipart(files[index:index + batch], boundary)
                connection.putrequest("POST", "/dicom-web/studies")
                connection.putheader("Content-Type", f'multipart/related; type="application/dicom"; boundary="{boundary}"')
                connection.putheader("Content-Length", str(length))
                connection.putheader("Accept", "application/dicom+json")
                connection.endheaders()
                for chunk in body:
                    connection.send(chunk)
                response = connection.getresponse()
                response.read()
                ok = ok and response.status == 200
            connection.close()
            seconds = time.perf_counter() - start
            client = time.process_time() - client_before
            after = m.settle(lambda: m.proc_cpu(archive.pid))
            landed = _count(archive)
        finally:
            archive.stop()
            m.remove(archive.dir)
        cpu = {"orthanc": after - before, "client": client}
        return Run(series, "direct", round_, len(files), total, seconds, landed, cpu, ok and landed == len(files))

    return run


def _api_post(gateway: m.GatewayProcess, path: str) -> None:
    """POST to the gateway's admin API with the token it generated in its spool (a resume is then at once)."""
    import urllib.request

    token = (gateway.spool / "http-token").read_text().split(":")[-1].strip()
    request = urllib.request.Request(gateway.http_url(path), data=b"{}", method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def forward_via_gateway(work: Path, series: str, files: Sequence[Path], batch: int) -> Callable[[int], Run]:
    """Build the ``gateway`` side: the queued series forwarded by the gateway to Orthanc's STOW-RS.

    :param work: scratch directory.
    :param series: the series' name.
    :param files: the instances.
    :param batch: ``dicomweb.batch.max_instances``.
    :returns: a function running one round.
    """
    total = sum(path.stat().st_size for path in files)

    def run(round_: int) -> Run:
        archive = _orthanc(work)
        tag = time.monotonic_ns()
        gateway = m.gateway_process(
            work / f"gw-{tag}",
            destinations={"cloud": {"dicomweb": {"url": archive.dicomweb_url, "batch": {"max_instances": batch},
                                                 "timeout": "300s"}}},
            routes=[{"name": "all", "forward": ["cloud"]}],
            spool={"path": str(work / f"gw-{tag}" / "spool"), "min_free": "64MiB", "resume_margin": "32MiB"},
        )
        landed, senders = -1, []
        try:
            result = gateway.cli("queue", "pause", "cloud")
            if result.returncode != 0:
                raise RuntimeError(result.describe())
            gateway.start()
            _, senders = m.run_senders(gateway.port, [files], called_ae="DICOMGW", env=m.nodelay_env(True),
                                       log_dir=gateway.dir / "logs")
            gw_before, orthanc_before = m.settle(lambda: m.proc_cpu(gateway.pid)), m.proc_cpu(archive.pid)
            start = time.perf_counter()
            _api_post(gateway, "/api/v1/destinations/cloud/resume")
            deadline = time.monotonic() + 600
            while (landed := _count(archive)) < len(files) and time.monotonic() < deadline:
                time.sleep(0.02)
            seconds = time.perf_counter() - start
            gw_after = m.settle(lambda: m.proc_cpu(gateway.pid))
            orthanc_after = m.proc_cpu(archive.pid)
        finally:
            gateway.stop()
            archive.stop()
            if landed != len(files):
                print(gateway.log_text()[-3000:], file=sys.stderr)
            m.remove(gateway.dir)
            m.remove(archive.dir)
        cpu = {"gateway": gw_after - gw_before, "orthanc": orthanc_after - orthanc_before}
        return Run(series, "gateway", round_, len(files), total, seconds, landed, cpu,
                   landed == len(files) and all(s.returncode == 0 for s in senders))

    return run


def forward_series(work: Path, count: int, kib: int, batch: int, runs: int, all_runs: list[Run]) -> list[m.Median]:
    """Generate the series once, warm it, run both sides interleaved, print the medians.

    :returns: the medians (direct first).
    """
    folder = work / f"series-{count}x{kib}"
    make_series(folder, count, kib * 1024)
    files = sorted(folder.iterdir())
    m.warm(files)
    series = f"forward: {count} x {kib} KiB, STOW-RS batches of {batch}"
    kept = m.interleave(series, [Side("direct", forward_direct(work, series, files, batch)),
                                 Side("gateway", forward_via_gateway(work, series, files, batch))], runs, all_runs)
    medians = [m.median_runs(kept[name]) for name in ("direct", "gateway")]
    m.print_medians(medians, reference="direct")
    return medians


def main(argv: list[str] | None = None) -> int:
    """Run the forwarding part and print its tables.

    :param argv: command-line arguments.
    :returns: 1 if a run lost instances, 2 if a peer is missing.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300, help="instances (300)")
    parser.add_argument("--kib", type=int, default=256, help="approximate instance size in KiB (256)")
    parser.add_argument("--batch", type=int, default=50, help="instances per STOW-RS request (50)")
    parser.add_argument("--runs", type=int, default=3, help="kept runs per side, after one discarded (3)")
    parser.add_argument("--tmpdir", default=None, help="scratch folder parent (the system's by default)")
    parser.add_argument("--json", default=None, help="write every run and the medians to this file")
    parser.add_argument("--ingest-count", type=int, default=500,
                        help="instances in the one POST of the ingest part (500; 0 skips the ingest part)")
    parser.add_argument("--large-mb", type=int, default=0,
                        help="ingest part: also POST one instance of this many MB and report the gateway's RSS (0: skip)")
    args = parser.parse_args(argv)
    missing = orthanc.skip_reason() or orthanc.dicomweb_skip_reason() or dcmtk.skip_reason("storescu")
    if missing:
        print(missing, file=sys.stderr)
        return 2
    work = m.scratch("dicomweb-", args.tmpdir)
    all_runs: list[Run] = []
    try:
        print(f"load average {m.load_average()}, commit {m.git_commit()}")
        medians = forward_series(work, args.count, args.kib, args.batch, args.runs, all_runs)
        m.write_json(args.json, m.header("dicomweb.py", args), all_runs, medians, [])
    finally:
        m.remove(work)
    if args.ingest_count:
        # The inbound half, same run (issue 17): the gateway's STOW-RS ingest against Orthanc
        # receiving the same POST, interleaved (bench/dicomweb_ingest.py).
        from dicomweb_ingest import ingest_main

        ingest = ["--count", str(args.ingest_count), "--size", str(args.kib * 1024), "--runs", str(args.runs),
                  "--large-mb", str(args.large_mb)]
        if args.tmpdir:
            ingest += ["--tmpdir", args.tmpdir]
        ingest_main(ingest)
    return 0 if all(median.ok for median in medians) else 1


if __name__ == "__main__":
    raise SystemExit(main())
