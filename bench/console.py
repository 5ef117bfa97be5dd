"""Benchmark the console's reads with a million journal entries (issue 18: "pages render in under one second").

Builds a SQLite journal of ``--entries`` entries (default 1,000,000) in
realistic states, written by bulk INSERT through the store's own schema (a
:class:`~gateway.queue.sqlite.SqliteQueueStore` creates the file, so every
index of schema 9 is there; rows go in by ``executemany`` in one
transaction with fsync off: set-up only, not a production path):

* ``--entries / 2`` instances in studies of 50, each with two entries
  (``pacs`` and one of ``archive``/``research``/``ris-hook``), received over
  the last ``--days`` days;
* about 94 % delivered (the last hour's deliveries included, for the chart),
  5 % dead with reasons of every kind, 1 % queued;

and an audit trail of ``--audit`` records (a live file and one rotated).
Then it times each read the console's pages make, through
:class:`~gateway.console.backend.ServiceConsoleData` (store and file work run
inline: ``SynchronousRunner``), ``--runs`` times each: the overview (cache
defeated), the first dead-letter page with no filter and with each filter,
page 100 by keyset, the count behind a bulk action with a filter, find by
study/patient/accession/SOP, and the audit page (no filter, a rare AE).
Each line gives the median and p95 wall time and the median CPU time
(``time.process_time``) per call.

Usage::

    .venv/bin/python bench/console.py                 # 1,000,000 entries
    .venv/bin/python bench/console.py --entries 100000 --runs 5

With ``--http`` it then renders every console page over real HTTP: a
server process (this script with ``--serve``) opens the same journal and
serves the gateway's HTTP site as :func:`gateway.http.http_service` wires it
(:func:`~gateway.http.build_site` with :func:`~gateway.http.console_resource`
over a :class:`~gateway.httpbackend.ServiceBackend`, the store called on a
dedicated thread pool as :class:`~gateway.service.GatewayService` does),
with a console users file made by :func:`~gateway.console.users.format_user`.
This process signs in once (the login form's CSRF token, an ``Origin``
header) and times each GET (and the confirmation page of a bulk retry by
filter, a POST not confirmed) over one keep-alive connection: the median and
p95 wall time as the client sees it, and the server process's CPU per
request (``utime + stime`` from ``/proc/<pid>/stat`` around the runs,
divided by their number: the clock ticks are 10 ms, too coarse per call),
and on PostgreSQL also the CPU of the database's server processes serving
the gateway's connections (``pg_stat_activity`` of the bench database).
The overview's one-second cache is defeated (the server's wall clock steps
two seconds per read), as in the reads above.

    .venv/bin/python bench/console.py --http --db /tmp/console.sqlite
    .venv/bin/python bench/console.py --http --postgres
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from gateway.blocking import SynchronousRunner  # noqa: E402
from gateway.config.load import load_config_text  # noqa: E402
from gateway.console.backend import ServiceConsoleData  # noqa: E402
from gateway.console.data import DeadFilter  # noqa: E402
from gateway.queue.rows import INSTANCE_COLUMNS  # noqa: E402
from gateway.queue.sqlite import SqliteQueueStore, study_hash  # noqa: E402

#: Dead-letter reasons, one of each kind (and a few of "other").
REASONS = (
    "refused (status 0xa700): out of resources",
    "refused (status 0xc000): cannot understand",
    "no accepted presentation context for 1.2.840.10008.5.1.4.1.1.2",
    "unreadable Part 10 file: truncated",
    "morph: template {PatientID} failed",
    "unsafe path: '../x'",
    "cannot convert to 1.2.840.10008.1.2.4.50",
    "association aborted; gave up after 10 attempts",
    "HTTP 400 Bad Request",
)

CONFIG = """\
ae_title: GW
node: bench-1
listen: [{{host: 127.0.0.1, port: 11112, name: main}}]
spool: {root}/spool
audit: {{file: {root}/audit.jsonl}}
destinations:
  pacs: {{ae_title: PACS, host: 127.0.0.1, port: 104}}
  archive: {{folder: {root}/archive}}
  research: {{folder: {root}/research}}
  ris-hook: {{folder: {root}/ris}}
routes:
  - name: ct
    forward: [pacs, archive]
  - name: research
    forward: [research]
"""


ENTRY_INSERT_COLUMNS = ("instance_id", "route", "destination", "state", "attempts", "enqueued_at", "next_attempt_at",
                        "last_error", "delivered_at", "dead_reason", "history", "study_hash")


def rows(entries: int, now: float, days: float, picked: dict[str, Any], seed: int = 18) -> Any:
    """Batches of (instance rows, entry rows): ``entries`` entries, two per instance, in realistic states."""
    rng = random.Random(seed)
    instances = entries // 2
    span = days * 86400.0
    others = ("archive", "research", "ris-hook")
    batch_i: list[tuple[Any, ...]] = []
    batch_e: list[tuple[Any, ...]] = []
    for n in range(instances):
        received = now - span + span * n / instances
        study = f"1.2.826.0.1.3680043.8.498.{n // 50}"
        iid = f"i{n:08d}"
        sop = f"{study}.{n}"
        patient, accession = f"P{n // 500:06d}", f"A{n // 50:07d}"
        batch_i.append((iid, f"/spool/{iid}.dcm", "1.2.840.10008.5.1.4.1.1.2", sop, "1.2.840.10008.1.2.1", 524288,
                        f"{n:064x}", received, f"c{n}", study, study + ".1", patient, accession, "CT", "CT1", "GW",
                        "10.0.0.7", 332, "bench-1"))
        if n == instances // 3:
            picked.update(study=study, sop=sop, patient=patient, accession=accession)
        h = study_hash(study)
        for destination, route in (("pacs", "ct"), (others[n % 3], "ct" if n % 3 == 0 else "research")):
            roll = rng.random()
            if roll < 0.05:
                reason = REASONS[rng.randrange(len(REASONS))]
                history = json.dumps([{"at": received + 5, "error": reason, "counted": False}])
                batch_e.append((iid, route, destination, "dead", 1, received, received, reason, None, reason, history, h))
            elif roll < 0.06 and received > now - 7200:
                batch_e.append((iid, route, destination, "queued", 0, received, received, "", None, "", "[]", h))
            else:
                batch_e.append((iid, route, destination, "delivered", 1, received, received, "", received + 2, "", "[]", h))
        if len(batch_i) >= 10000:
            yield batch_i, batch_e
            batch_i, batch_e = [], []
    if batch_i:
        yield batch_i, batch_e


def fill(store: SqliteQueueStore, entries: int, now: float, days: float) -> dict[str, Any]:
    """Write the journal into a SQLite store by ``executemany`` in one transaction (fsync off: set-up only)."""
    conn = store._conn
    picked: dict[str, Any] = {}
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN IMMEDIATE")
    for batch_i, batch_e in rows(entries, now, days, picked):
        conn.executemany(f"INSERT INTO instances ({', '.join(INSTANCE_COLUMNS)}) VALUES ({', '.join('?' * len(INSTANCE_COLUMNS))})", batch_i)
        conn.executemany(
            f"INSERT INTO entries ({', '.join(ENTRY_INSERT_COLUMNS)}) VALUES ({', '.join('?' * len(ENTRY_INSERT_COLUMNS))})",
            batch_e,
        )
    conn.execute("COMMIT")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("ANALYZE")
    return picked


def fill_postgres(dsn: str, password: str, entries: int, now: float, days: float) -> dict[str, Any]:
    """Write the journal into a migrated PostgreSQL database by COPY (set-up only), then ANALYZE."""
    import psycopg

    picked: dict[str, Any] = {}
    with psycopg.connect(dsn, password=password) as conn:
        with conn.cursor() as cur:
            for batch_i, batch_e in rows(entries, now, days, picked):
                with cur.copy(f"COPY instances ({', '.join(INSTANCE_COLUMNS)}) FROM STDIN") as copy:
                    for row in batch_i:
                        copy.write_row(row)
                with cur.copy(f"COPY entries ({', '.join(ENTRY_INSERT_COLUMNS)}) FROM STDIN") as copy:
                    for row in batch_e:
                        copy.write_row(row)
        conn.commit()
        conn.autocommit = True
        # The steady state autovacuum keeps: right after a bulk load the visibility map is empty and the
        # per-destination counts fetch every heap row (the overview took 4 s until autovacuum ran).
        conn.execute("VACUUM ANALYZE")
    return picked


def write_audit(path: str, records: int) -> None:
    """``records`` audit lines split over a rotated file and the live one."""
    line = {"time": "2026-12-02T10:00:00.000Z", "event": "DICOM Instances Transferred", "event_id": "110104", "action": "R",
            "outcome": 0, "disposition": "received", "participants": [{"user_id": "CT1"}, {"user_id": "GW"}],
            "objects": [{"kind": "study", "id": "1.2.3.4.5.6.7.8.9"}], "prev_sha256": "0" * 64}
    rare = dict(line, participants=[{"user_id": "RARE"}])
    for name, count in ((path + ".1", records // 2), (path, records - records // 2)):
        with open(name, "w") as f:
            for n in range(count):
                f.write(json.dumps(rare if n == 0 and name.endswith(".1") else line) + "\n")


class _Service:
    """What ServiceConsoleData reads of a GatewayService (no listeners or workers: reads only)."""

    def __init__(self, root: str, store: Any, console: str = "") -> None:
        text = CONFIG.format(root=root) + (f"console: {{users_file: {console}}}\n" if console else "")
        self.config = load_config_text(text, "bench.yaml", root)
        self.store = store
        self.store_runner = SynchronousRunner()
        self.blocking = SynchronousRunner()
        self.listeners: list[Any] = []
        self.workers: dict[str, Any] = {}


def measure(label: str, runs: int, f: Callable[[], Any]) -> Any:
    """Call ``f`` ``runs`` times (after one warm-up call); print median/p95 wall ms and median CPU ms."""
    result = f()
    walls, cpus = [], []
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        result = f()
        walls.append((time.perf_counter() - w0) * 1000)
        cpus.append((time.process_time() - c0) * 1000)
    walls.sort()
    p95 = walls[min(len(walls) - 1, int(round(0.95 * (len(walls) - 1))))]
    print(f"{label:<58} {statistics.median(walls):>9.2f} {p95:>9.2f} {statistics.median(cpus):>9.2f}")
    return result


def value(d: Any) -> Any:
    """The result of an already-fired Deferred (SynchronousRunner)."""
    box: list[Any] = []
    d.addBoth(box.append)
    if not box:
        raise RuntimeError("not fired")
    if hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


USERS_PASSWORD = "bench-password"


def serve(spec_json: str) -> None:
    """The server process of ``--http``: the gateway's HTTP site over the generated journal; prints its port."""
    from twisted.internet import reactor

    from gateway.blocking import ThreadPoolRunner
    from gateway.http import build_site, console_resource
    from gateway.httpbackend import ServiceBackend
    from gateway.httpresources import LOCAL_HOSTS
    from prometheus_client import CollectorRegistry

    spec = json.loads(spec_json)
    root = spec["root"]
    if spec["kind"] == "postgresql":
        from gateway.queue.postgres import PostgresQueueStore

        store: Any = PostgresQueueStore(spec["dsn"], "bench-1", password=spec["password"])
    else:
        store = SqliteQueueStore(spec["path"], node="bench-1")
    os.makedirs(os.path.join(root, "spool"), exist_ok=True)
    service = _Service(root, store, console=spec["users"])
    # As GatewayService: the store on a dedicated pool (one thread for SQLite), files on another.
    service.store_runner = ThreadPoolRunner.dedicated(reactor, name="queue", maxthreads=1 if spec["kind"] == "sqlite" else 4)
    service.blocking = ThreadPoolRunner.dedicated(reactor, name="spool", minthreads=1, maxthreads=4)
    backend = ServiceBackend(service, lambda path: service.config, clock=reactor)
    console = console_resource(service, backend, LOCAL_HOSTS)
    clock = [time.time()]

    def wall() -> float:
        clock[0] = max(clock[0] + 2.0, time.time())  # past the overview's 1 s cache: every request reads
        return clock[0]

    console.data._wall = wall  # type: ignore[union-attr]
    site = build_site(CollectorRegistry(), backend, [], LOCAL_HOSTS, reactor=reactor, console=console)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    print(f"PORT {port.getHost().port}", flush=True)
    reactor.run()


class Client:
    """One keep-alive HTTP connection to the console, with its cookies."""

    def __init__(self, port: int) -> None:
        import http.client

        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, form: dict[str, Any] | None = None) -> tuple[int, str]:
        """Send one request; keep the cookies it sets; answer the status and the body."""
        from urllib.parse import urlencode

        headers = {"Host": f"127.0.0.1:{self.port}"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if method == "POST":
            headers["Origin"] = f"http://127.0.0.1:{self.port}"
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            body = urlencode(form or {}, doseq=True)
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        text = response.read().decode("utf-8", "replace")
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":
                k, _, v = value.split(";")[0].partition("=")
                self.cookies[k.strip()] = v.strip()
        return response.status, text


def _field(text: str, pattern: str) -> str:
    import html
    import re

    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"not in the page: {pattern}")
    return html.unescape(match.group(1))


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


def measure_http(spec: dict[str, Any], picked: dict[str, Any], runs: int) -> None:
    """Start the server process, sign in, time every page (see the module's docstring)."""
    import subprocess

    from gateway.console.users import format_user, hash_password

    users = os.path.join(spec["root"], "console-users")
    with open(users, "w") as f:
        f.write(format_user("bench", "admin", hash_password(USERS_PASSWORD), show_phi=True) + "\n")
    os.chmod(users, 0o600)
    spec = dict(spec, users=users)
    server = subprocess.Popen([sys.executable, __file__, "--serve", json.dumps(spec)], stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline() if server.stdout is not None else ""
        if not line.startswith("PORT "):
            raise RuntimeError(f"the server process did not start: {line!r}")
        client = Client(int(line.split()[1]))
        status, login = client.request("GET", "/console/login")
        csrf = _field(login, r'name="csrf" value="([^"]+)"')
        status, _ = client.request("POST", "/console/login", {"csrf": csrf, "user": "bench", "password": USERS_PASSWORD})
        if status != 303:
            raise RuntimeError(f"sign-in answered {status}")
        status, page = client.request("GET", "/console/dead-letters")
        csrf = _field(page, r'name="csrf" value="([^"]+)"')
        first_id = _field(page, r'name="ids" value="(\d+)"')
        path, pages = "/console/dead-letters", 1
        while pages < 100 and 'id="next-page"' in (text := client.request("GET", path)[1]):
            path, pages = _field(text, r'id="next-page" href="([^"]+)"'), pages + 1
        ticks = os.sysconf("SC_CLK_TCK")

        def backends() -> list[int]:
            """PostgreSQL's server processes of the gateway's connections (same machine: their CPU is readable)."""
            if spec["kind"] != "postgresql":
                return []
            import psycopg

            with psycopg.connect(spec["dsn"], password=spec["password"]) as conn:
                return [pid for (pid,) in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]

        def timed(label: str, method: str, path: str, form: dict[str, Any] | None = None, expect: str = "") -> None:
            status, text = client.request(method, path, form)  # warm-up
            if status != 200 or (expect and expect not in text):
                raise RuntimeError(f"{label}: {method} {path} answered {status}")
            walls = []
            database = backends()
            d0 = sum(_cpu_ticks(pid) for pid in database)
            c0 = _cpu_ticks(server.pid)
            for _ in range(runs):
                w0 = time.perf_counter()
                status, text = client.request(method, path, form)
                walls.append((time.perf_counter() - w0) * 1000)
                if status != 200:
                    raise RuntimeError(f"{label}: {method} {path} answered {status}")
            cpu = (_cpu_ticks(server.pid) - c0) * 1000 / ticks / runs
            db_cpu = (sum(_cpu_ticks(pid) for pid in database) - d0) * 1000 / ticks / runs
            walls.sort()
            p95 = walls[min(len(walls) - 1, int(round(0.95 * (len(walls) - 1))))]
            extra = f" {db_cpu:>9.2f}" if database else ""
            print(f"{label:<58} {statistics.median(walls):>9.2f} {p95:>9.2f} {cpu:>9.2f}{extra}  ({len(text) // 1024} KiB)")

        print(f"{'page over HTTP (ms per request)':<58} {'median':>9} {'p95':>9} {'srv cpu':>9}"
              + (f" {'pg cpu':>9}" if spec["kind"] == "postgresql" else ""))
        timed("GET /console/ (overview, cache defeated)", "GET", "/console/", expect="overview")
        timed("GET /console/overview.part", "GET", "/console/overview.part")
        for by, key in (("study", "study"), ("patient", "patient"), ("accession", "accession"), ("sop", "sop")):
            timed(f"GET /console/find?by={by}", "GET", f"/console/find?by={by}&q={picked[key]}", expect=picked[key])
        timed("GET /console/dead-letters (no filter)", "GET", "/console/dead-letters")
        timed("  ... destination=archive", "GET", "/console/dead-letters?destination=archive")
        timed("  ... reason=refused", "GET", "/console/dead-letters?reason=refused")
        timed("  ... reason=other", "GET", "/console/dead-letters?reason=other")
        timed("  ... route=research", "GET", "/console/dead-letters?route=research")
        timed("  ... older_than=1d", "GET", "/console/dead-letters?older_than=1d")
        timed("  ... destination=pacs, reason=gave_up, older_than=1d", "GET",
              "/console/dead-letters?destination=pacs&reason=gave_up&older_than=1d")
        timed(f"GET dead letters page {pages} (keyset cursor)", "GET", path)
        timed("GET /console/dead-letters/ID", "GET", f"/console/dead-letters/{first_id}")
        timed("GET /console/rules", "GET", "/console/rules")
        timed("GET /console/audit", "GET", "/console/audit")
        timed("GET /console/audit?ae=RARE", "GET", "/console/audit?ae=RARE")
        for label, where in (("no filter", {}), ("reason=refused", {"reason": "refused"}),
                             ("destination=research", {"destination": "research"})):
            timed(f"POST bulk retry by filter, confirm page ({label})", "POST", "/console/dead-letters/action",
                  {"csrf": csrf, "action": "retry", "scope": "filter", **where}, expect="confirm")
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    """Parse arguments, build the journal and the trail, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--audit", type=int, default=200_000, help="audit records (live + one rotated file)")
    parser.add_argument("--days", type=float, default=3.0, help="the journal's span")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--tmpdir", default=None)
    parser.add_argument("--postgres", action="store_true", help="the journal on PostgreSQL (tests/support/postgres.py starts a server)")
    parser.add_argument("--db", default=None, help="keep the journal here and reuse it when it exists (set-up once)")
    parser.add_argument("--http", action="store_true", help="also render every console page over real HTTP")
    parser.add_argument("--no-reads", action="store_true", help="skip the data-layer reads (with --http)")
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    now = time.time()

    with tempfile.TemporaryDirectory(dir=args.tmpdir) as root:
        if args.postgres:
            from gateway.queue.postgres import PostgresQueueStore
            from tests.support import postgres as pg

            database = pg.server().new_database(migrated=True)
            t = time.perf_counter()
            picked = fill_postgres(database.dsn, database.password, args.entries, now, args.days)
            print(f"journal: {args.entries} entries written to PostgreSQL (COPY) in {time.perf_counter() - t:.1f} s")
            store: Any = PostgresQueueStore(database.dsn, "bench-1", password=database.password)
            spec: dict[str, Any] = {"root": root, "kind": "postgresql", "dsn": database.dsn, "password": database.password}
        else:
            path = args.db or os.path.join(root, "queue.sqlite")
            spec = {"root": root, "kind": "sqlite", "path": path}
            meta = path + ".json"
            if args.db and os.path.exists(path) and os.path.exists(meta):
                with open(meta) as f:
                    now, picked = json.load(f)
                store = SqliteQueueStore(path, node="bench-1")
                print(f"journal: reusing {path} ({os.path.getsize(path) / 1e6:.0f} MB), made {time.time() - now:.0f} s ago")
            else:
                store = SqliteQueueStore(path, node="bench-1")
                t = time.perf_counter()
                picked = fill(store, args.entries, now, args.days)
                print(f"journal: {args.entries} entries written in {time.perf_counter() - t:.1f} s, "
                      f"{os.path.getsize(path) / 1e6:.0f} MB")
                with open(meta, "w") as f:
                    json.dump([now, picked], f)
        t = time.perf_counter()
        write_audit(os.path.join(root, "audit.jsonl"), args.audit)
        print(f"audit: {args.audit} records written in {time.perf_counter() - t:.1f} s, "
              f"{os.path.getsize(os.path.join(root, 'audit.jsonl')) * 2 / 1e6:.0f} MB")

        if not args.no_reads:
            service = _Service(root, store)
            clock = [now]

            def wall() -> float:
                clock[0] += 2.0  # past the overview's 1 s cache: every call reads
                return clock[0]

            data = ServiceConsoleData(service, backend=None, wall=wall)
            print(f"{'read (ms per call)':<58} {'median':>9} {'p95':>9} {'cpu':>9}")
            runs = args.runs
            measure("overview (cache defeated)", runs, lambda: value(data.overview()))
            first = measure("dead letters, first page (50), no filter", runs, lambda: value(data.dead_letters(DeadFilter(), None)))
            measure("  ... destination=archive", runs, lambda: value(data.dead_letters(DeadFilter(destination="archive"), None)))
            measure("  ... reason=refused", runs, lambda: value(data.dead_letters(DeadFilter(reason="refused"), None)))
            measure("  ... reason=other", runs, lambda: value(data.dead_letters(DeadFilter(reason="other"), None)))
            measure("  ... route=research", runs, lambda: value(data.dead_letters(DeadFilter(route="research"), None)))
            measure("  ... older than 1 day", runs, lambda: value(data.dead_letters(DeadFilter(enqueued_before=now - 86400), None)))
            measure("  ... destination=pacs, reason=gave_up, older than 1 day", runs,
                    lambda: value(data.dead_letters(DeadFilter(destination="pacs", reason="gave_up", enqueued_before=now - 86400), None)))
            cursor = first.next_before
            for _ in range(98):
                cursor = value(data.dead_letters(DeadFilter(), cursor)).next_before
            measure("dead letters, page 100 by keyset", runs, lambda: value(data.dead_letters(DeadFilter(), cursor)))
            measure("count for a bulk action, reason=refused (cap 10001)", runs, lambda: value(data.count_dead(DeadFilter(reason="refused"))))
            measure("count for a bulk action, destination=research", runs, lambda: value(data.count_dead(DeadFilter(destination="research"))))
            measure("count for a bulk action, no filter", runs, lambda: value(data.count_dead(DeadFilter())))
            measure("find by study (50 instances, 100 entries)", runs, lambda: value(data.find("study", picked["study"])))
            measure("find by patient (500 instances)", runs, lambda: value(data.find("patient", picked["patient"])))
            measure("find by accession", runs, lambda: value(data.find("accession", picked["accession"])))
            measure("find by sop", runs, lambda: value(data.find("sop", picked["sop"])))
            measure("dead letter detail", runs, lambda: value(data.dead_letter(first.entries[0].entry_id)))
            measure("audit, first page (100)", runs, lambda: value(data.audit(None, None, None)))
            measure("audit, event=110104", runs, lambda: value(data.audit("110104", None, None)))
            rare = measure("audit, ae=RARE (one match at the far end: one 8 MiB scan)", runs, lambda: value(data.audit(None, "RARE", None)))
            print(f"  (the rare-AE page found {len(rare.records)} and {'has' if rare.next_before else 'has no'} cursor)")
        store.close()
        if args.http:
            measure_http(spec, picked, runs=args.runs)


if __name__ == "__main__":
    main()
