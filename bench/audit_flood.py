"""Audit flood benchmark (HARDENING H11): rejected associations from one address for N seconds.

A gateway from this checkout (``accept.calling_ae_titles: [CT*]``, an audit
file) is sent raw A-ASSOCIATE-RQs with a calling AE title it refuses, by
``--clients`` threads for ``--seconds``, as fast as it answers. Then the
gateway is stopped (which writes the open summaries) and the script prints
the rejections answered, the audit records and bytes written for them, and
the result of the hash-chain check. Before aggregation every rejection was
one record (the issue measured 24,000 in 10 s from one client).

Usage::

    .venv/bin/python bench/audit_flood.py                    # 10 s, 4 clients
    .venv/bin/python bench/audit_flood.py --seconds 3        # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.audit import rotation_order, verify_chain  # noqa: E402
from gateway.ul.pdu import AAssociateRJ  # noqa: E402
from tests.support.cputime import cpu_seconds  # noqa: E402
from tests.support.gateway_process import GatewayProcess  # noqa: E402
from tests.support.rawpeer import RawPeer, associate_rq  # noqa: E402


def flood(host: str, port: int, seconds: float, counts: list[int], index: int) -> None:
    """Open associations with a refused calling AE title until ``seconds`` have passed.

    :param host: the gateway's address.
    :param port: its port.
    :param seconds: how long.
    :param counts: where this client adds its number of A-ASSOCIATE-RJ received.
    :param index: this client's slot in ``counts``.
    """
    rq = associate_rq(calling="FLOOD")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with RawPeer(host, port) as peer:
            if isinstance(peer.associate(rq, timeout=10), AAssociateRJ):
                counts[index] += 1


def main() -> None:
    """Run the flood and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        audit = Path(tmp, "audit", "audit.jsonl")
        gateway = GatewayProcess(Path(tmp, "gw"), accept={"calling_ae_titles": ["CT*"]},
                                 audit={"file": str(audit), "rotate": {"size": 100 * 1024 * 1024, "keep": 10}})
        gateway.start()
        try:
            counts = [0] * args.clients
            threads = [threading.Thread(target=flood, args=(gateway.host, gateway.port, args.seconds, counts, i))
                       for i in range(args.clients)]
            started = time.monotonic()
            cpu_before = cpu_seconds(gateway.pid)
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(gateway.pid) - cpu_before
        finally:
            gateway.stop(20)
        files = rotation_order([str(p) for p in audit.parent.glob("audit.jsonl*")])
        records = [json.loads(line) for f in files for line in Path(f).read_text().splitlines()]
        rejected = [r for r in records if r.get("disposition") == "rejected"]
        summarised = sum(int(r.get("extra", {}).get("aggregated", "0")) for r in rejected)
        size = sum(os.path.getsize(f) for f in files)
        print(f"rejected associations answered: {sum(counts)} in {elapsed:.1f} s "
              f"({sum(counts) / elapsed:.0f}/s, {args.clients} clients, one address; gateway "
              f"{cpu / max(1, sum(counts)) * 1e6:.0f} us CPU per rejection)")
        print(f"audit: {len(records)} records, {size} bytes in {len(files)} file(s); "
              f"{len(rejected)} rejection records, {summarised} rejections summarised")
        print(f"chain: {verify_chain(files)}")


if __name__ == "__main__":
    main()
