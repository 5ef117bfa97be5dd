"""Association-limit benchmark: HARDENING L1 and P16 at ``--associations`` (128) concurrent associations.

One gateway process from this checkout with ``limits.max_associations`` set
to ``--associations``; raw-socket peers (:class:`tests.support.rawpeer.RawPeer`)
open that many associations and hold them.  Then ``--probes`` more
associations are requested, one started every ``--interval`` seconds, and
for each the script records:

- the RJ latency: from sending the A-ASSOCIATE-RQ to the first byte back;
- that those bytes are exactly A-ASSOCIATE-RJ (2,3,2) (PS3.8 9.1.4: transient,
  service-provider (presentation), local limit exceeded) and nothing else;
- how the connection ended: a FIN (orderly, at ARTIM after the RJ: AE-8,
  Sta13), a reset (ECONNRESET, the failure the row forbids), or nothing.

Two phases: with the held associations idle, then with each of them storing
``--instances`` small CT instances back to back (the probes run while they
store).  Printed per phase: RJ latency p50, p90 and max (target: < 100 ms),
counts of exact RJs, FINs, resets and silences, the stores acknowledged, and
the gateway's ``associations_rejected_total{reason="limit"}``, threads, fds
and peak RSS.

Usage::

    .venv/bin/python bench/associations.py                        # 128 associations, 20 probes per phase
    .venv/bin/python bench/associations.py --associations 64 --probes 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Scripts in bench/ run with bench/ first on sys.path; keep it off so no file there can shadow a module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO_ROOT / "bench"]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pydicom.uid import generate_uid  # noqa: E402

from tests.support.cputime import cpu_seconds  # noqa: E402

from gateway.ul import pdu as _pdu  # noqa: E402
from tests.support.gateway_process import GatewayProcess  # noqa: E402
from tests.support.metrics import metrics_text, sample  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.procstat import fd_count, thread_count, vm_hwm_kib  # noqa: E402
from tests.support.rawpeer import (  # noqa: E402
    RawPeer,
    associate_rq,
    command_pdata,
    pdata,
    pdv,
    release_rq,
    response_commands,
    store_rq_command,
    tiny_dataset,
)

#: The whole A-ASSOCIATE-RJ (2,3,2) PDU.
RJ_2_3_2 = bytes.fromhex("03 00 00000004 00 02 03 02")
#: The CT context of the default request.
CT_CONTEXT = 3


def probe(gateway: GatewayProcess, artim: float) -> tuple[float | None, bool, str]:
    """Request one association over the limit and watch what comes back.

    :param gateway: the gateway.
    :param artim: its ARTIM, seconds (the FIN is expected then).
    :returns: (seconds to the first byte or ``None``, whether the bytes are
        exactly RJ(2,3,2), how it ended: ``fin``, ``reset`` or ``nothing``).
    """
    peer = RawPeer(gateway.host, gateway.port)
    try:
        sent = time.monotonic()
        peer.send(associate_rq(calling="PROBE"))
        try:
            closed = peer.wait_closed(artim + 5)
            end = "reset" if closed.reset else "fin"
        except AssertionError:
            end = "nothing"
        first = peer.chunks[0][0] - (sent - peer.connected_at) if peer.chunks else None
        return first, peer.received == RJ_2_3_2, end
    finally:
        peer.close()


def probes(gateway: GatewayProcess, artim: float, count: int, interval: float) -> list[tuple[float | None, bool, str]]:
    """Run ``count`` probes, one started every ``interval`` seconds (each waits for its own FIN).

    :param gateway: the gateway.
    :param artim: its ARTIM, seconds.
    :param count: how many probes.
    :param interval: seconds between their starts.
    :returns: the probes' results, in start order.
    """
    results: list[tuple[float | None, bool, str] | None] = [None] * count

    def run(i: int) -> None:
        results[i] = probe(gateway, artim)

    threads = []
    for i in range(count):
        thread = threading.Thread(target=run, args=(i,), daemon=True)
        thread.start()
        threads.append(thread)
        time.sleep(interval)
    for thread in threads:
        thread.join(artim + 15)
    return [r if r is not None else (None, False, "nothing") for r in results]


def hold(gateway: GatewayProcess, count: int) -> list[RawPeer]:
    """Open ``count`` associations and keep them.

    :param gateway: the gateway.
    :param count: how many.
    :returns: the peers, each in Sta6.
    :raises SystemExit: if one is not accepted.
    """
    peers = []
    for n in range(count):
        peer = RawPeer(gateway.host, gateway.port)
        answer = peer.associate(associate_rq(calling=f"HELD{n:03d}"), timeout=30)
        if not isinstance(answer, _pdu.AAssociateAC):
            raise SystemExit(f"association {n} of {count} not accepted: {answer}")
        peers.append(peer)
    return peers


def store_loop(peer: RawPeer, instances: int, acknowledged: list[int], errors: list[str]) -> None:
    """Store ``instances`` tiny CT instances on a held association, one after the other.

    :param peer: the peer, in Sta6.
    :param instances: how many.
    :param acknowledged: gets one element per 0x0000 response.
    :param errors: gets a line per failure.
    """
    try:
        for i in range(instances):
            uid = generate_uid()
            peer.send(command_pdata(CT_CONTEXT, store_rq_command(uid, i + 1))
                      + pdata(pdv(CT_CONTEXT, 0x02, tiny_dataset(uid))))
            peer.wait_pdu(_pdu.PDataTF, 60, start=i + 1)
            rsp = response_commands(peer)[i]
            if getattr(rsp, "status", None) == 0:
                acknowledged.append(1)
            else:
                errors.append(f"status {rsp}")
    except AssertionError as e:
        errors.append(str(e))


def report(phase: str, results: list[tuple[float | None, bool, str]]) -> None:
    """Print one phase's probe figures.

    :param phase: its name.
    :param results: what :func:`probe` returned for each probe.
    """
    latencies = sorted(r[0] * 1000 for r in results if r[0] is not None)
    exact = sum(1 for r in results if r[1])
    ends = {kind: sum(1 for r in results if r[2] == kind) for kind in ("fin", "reset", "nothing")}
    if latencies:
        p90 = latencies[min(len(latencies) - 1, int(0.9 * len(latencies)))]
        figures = (f"RJ latency p50 {statistics.median(latencies):.1f} ms, p90 {p90:.1f} ms, "
                   f"max {latencies[-1]:.1f} ms (target < 100 ms)")
    else:
        figures = "no RJ received"
    print(f"   {phase}: {len(results)} probes; {figures}; exact RJ(2,3,2) {exact}/{len(results)}; "
          f"FIN {ends['fin']}, reset {ends['reset']}, nothing {ends['nothing']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run both phases and print their figures.

    :param argv: command-line arguments.
    :returns: 0 when every probe got the exact RJ then a FIN, else 1.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--associations", type=int, default=128, help="max_associations and held associations (128)")
    parser.add_argument("--probes", type=int, default=20, help="associations requested over the limit per phase (20)")
    parser.add_argument("--instances", type=int, default=20, help="instances each held association stores in phase 2 (20)")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between probe starts (0.25)")
    parser.add_argument("--artim", type=float, default=2.0, help="the gateway's acse_timeout, seconds (2)")
    parser.add_argument("--tmpdir", default=None, help="scratch directory (default: system temp)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="gw-bench-assoc-", dir=args.tmpdir)).resolve()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"== L1/P16: {args.associations} associations held, the next ones rejected\n"
          f"   load average {load}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}", flush=True)
    http_port = free_port()
    gateway = GatewayProcess(work / "gw", http={"host": "127.0.0.1", "port": http_port},
                             spool={"path": str(work / "gw" / "spool"), "min_free": "64MiB",
                                    "resume_margin": "16MiB"},
                             limits={"max_associations": args.associations, "acse_timeout": f"{args.artim:g}s",
                                     "network_timeout": "300s", "dimse_timeout": "300s"})
    failures = 0
    peers: list[RawPeer] = []
    try:
        gateway.start()
        started = time.monotonic()
        peers = hold(gateway, args.associations)
        print(f"   {args.associations} associations accepted in {time.monotonic() - started:.2f} s", flush=True)

        idle = probes(gateway, args.artim, args.probes, args.interval)
        report("idle", idle)

        acknowledged: list[int] = []
        errors: list[str] = []
        threads = [threading.Thread(target=store_loop, args=(p, args.instances, acknowledged, errors), daemon=True)
                   for p in peers]
        started = time.monotonic()
        cpu_before = cpu_seconds(gateway.pid)
        for thread in threads:
            thread.start()
        busy = probes(gateway, args.artim, args.probes, args.interval)
        for thread in threads:
            thread.join(300)
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(gateway.pid) - cpu_before
        report("storing", busy)
        per_instance = f"{cpu / len(acknowledged) * 1e6:.0f} us CPU per instance" if acknowledged else "no instance"
        print(f"   stores: {len(acknowledged)}/{args.associations * args.instances} acknowledged in {elapsed:.1f} s"
              f" ({len(acknowledged) / elapsed:.0f}/s, gateway {per_instance}), {len(errors)} errors"
              f"{': ' + errors[0] if errors else ''}",
              flush=True)
        text = metrics_text(http_port)
        limit = sample(text, "dicom_gateway_associations_rejected_total", reason="limit")
        print(f"   associations_rejected_total{{reason=\"limit\"}} {limit:.0f} (expected {2 * args.probes}); "
              f"gateway threads {thread_count(gateway.pid)}, fds {fd_count(gateway.pid)}, "
              f"peak RSS {vm_hwm_kib(gateway.pid) / 1024:.1f} MiB", flush=True)
        for results in (idle, busy):
            failures += sum(1 for r in results if not r[1] or r[2] != "fin")
        failures += len(errors) + (limit != 2 * args.probes)
    finally:
        for peer in peers:
            peer.send(release_rq())
            peer.close()
        gateway.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"   {'all probes: exact RJ(2,3,2) then FIN' if not failures else f'{failures} failure(s)'}")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
