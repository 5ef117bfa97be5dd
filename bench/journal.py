"""Benchmark the durable queue store: rates and restart time with a large backlog.

Prints, for :class:`~gateway.queue.sqlite.SqliteQueueStore` on a real file:

* ``add_instance`` rate with every commit fsynced (``synchronous=FULL``, the
  production setting: one transaction per acknowledged instance);
* the time to fill the backlog to ``--backlog`` entries (bulk, with fsync
  off: set-up only, not a production path);
* with the full backlog: ``lease`` + ``complete`` rate (batches of
  ``--batch``, fsynced), ``lease`` with a shard, ``stats``, ``next_due``,
  ``find`` by study, ``finished_instances``;
* restart: ``recover`` with ``--batch`` x 100 entries leased, then reopen +
  ``recover`` + ``stats`` (what the gateway does before it listens; HARDENING
  F18 asks for < 60 s with 100k entries).

Usage::

    .venv/bin/python bench/journal.py                  # 100k backlog
    .venv/bin/python bench/journal.py --backlog 10000  # quick run

``--tmpdir`` puts the database on the disk you want to measure (fsync cost
depends on it entirely).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from gateway.queue.interfaces import InstanceRecord, NewEntry  # noqa: E402
from gateway.queue.sqlite import SqliteQueueStore  # noqa: E402

T0 = 1_700_000_000.0


def record(n: int) -> InstanceRecord:
    """A plausible instance record number ``n`` (50 instances per study).

    :param n: the instance's sequence number.
    :returns: the record.
    """
    study = f"1.2.826.0.1.3680043.8.498.{n // 50}"
    return InstanceRecord(
        instance_id=f"i{n:08d}",
        path=f"/spool/i{n:08d}.dcm",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=f"{study}.{n}",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size=524288,
        sha256=f"{n:064x}",
        received_at=T0 + n * 0.01,
        correlation_id=f"c{n}",
        study_instance_uid=study,
        patient_id=f"P{n // 500}",
        accession_number=f"A{n // 50}",
    )


def timed(label: str, count: int, f: "object") -> float:
    """Run ``f()`` and print its duration and rate.

    :param label: what was measured.
    :param count: operations done by ``f`` (for the rate).
    :param f: a callable without arguments.
    :returns: the elapsed seconds.
    """
    start = time.perf_counter()
    f()  # type: ignore[operator]
    elapsed = time.perf_counter() - start
    rate = f"{count / elapsed:>12.0f} /s" if count else ""
    print(f"{label:<52} {elapsed * 1000:>10.1f} ms {rate}")
    return elapsed


def main() -> None:
    """Parse arguments, build the backlog and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backlog", type=int, default=100_000, help="entries queued for one destination")
    parser.add_argument("--fsynced", type=int, default=500, help="instances added one fsynced transaction each")
    parser.add_argument("--batch", type=int, default=10, help="lease/complete batch size")
    parser.add_argument("--tmpdir", default=None, help="directory for the database")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.tmpdir) as directory:
        path = os.path.join(directory, "queue.sqlite")
        store = SqliteQueueStore(path)
        entries = [NewEntry("default", "archive")]
        n = 0

        def add_fsynced() -> None:
            nonlocal n
            for _ in range(args.fsynced):
                store.add_instance(record(n), entries, T0 + n, 3600.0)
                n += 1

        timed(f"add_instance, fsynced, x{args.fsynced}", args.fsynced, add_fsynced)

        def fill() -> None:
            nonlocal n
            store._conn.execute("PRAGMA synchronous = OFF")  # set-up only
            while n < args.backlog:
                store.add_instance(record(n), entries, T0 + n, 3600.0)
                n += 1
            store._conn.execute("PRAGMA synchronous = FULL")

        timed(f"fill to {args.backlog} entries (fsync off, set-up)", args.backlog - args.fsynced, fill)
        now = T0 + args.backlog + 1

        rounds = 200

        def lease_complete() -> None:
            for _ in range(rounds):
                got = store.lease("archive", args.batch, now, 60.0)
                store.complete([e.entry_id for e in got], now)

        timed(f"lease+complete x{rounds} batches of {args.batch}", rounds * args.batch, lease_complete)

        def lease_shard() -> None:
            for k in range(4):
                got = store.lease("archive", args.batch, now, 60.0, shard=(k, 4))
                store.release([e.entry_id for e in got])

        timed("lease+release on each of 4 shards", 4 * args.batch, lease_shard)
        timed("stats", 1, lambda: store.stats(now))
        timed("next_due", 1, lambda: store.next_due("archive"))
        timed("find(study_instance_uid=...)", 1, lambda: store.find(study_instance_uid=record(args.backlog // 2).study_instance_uid))
        timed("finished_instances(limit=1000)", 1, lambda: store.finished_instances(now, 1000))
        timed("add_instance with duplicate lookup (fsynced)", 1, lambda: store.add_instance(record(n), entries, now, 3600.0))
        for _ in range(100):
            store.lease("archive", args.batch, now, 60.0)
        timed(f"recover ({100 * args.batch} leased)", 100 * args.batch, lambda: store.recover(now))
        for _ in range(100):
            store.lease("archive", args.batch, now, 60.0)
        store.close()
        print(f"database size: {os.path.getsize(path) / 1e6:.1f} MB (+ WAL)")

        def restart() -> None:
            again = SqliteQueueStore(path)
            again.recover(now)
            again.stats(now)
            again.lease("archive", args.batch, now, 60.0)
            again.close()

        timed(f"restart: open + recover + stats + first lease ({args.backlog} entries)", 0, restart)


if __name__ == "__main__":
    main()
