"""The admin API of a real gateway process, driven over real sockets (issue 11).

Each test starts ``python -m gateway run`` (:class:`~tests.support.gateway_process.GatewayProcess`)
and talks to its HTTP port with ``http.client``, ``ssl`` and raw sockets:
``/api`` is never open (a token is generated in the spool, 0600, and the
``dicom-gateway`` commands use it), a huge body is refused 413 before any of
it is stored (the gateway's ``$TMPDIR`` points at a folder of the test's and
its open files are read from ``/proc``), operator actions through the API and
the command line reach the audit file with who, where and which entries,
``pause``/``resume`` work through the API, HTTPS serves with ``http.tls``, a
non-loopback address without TLS is logged at critical level, and the
connection cap and request deadline close what they should.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import ssl
import stat
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from gateway.queue.interfaces import InstanceRecord, NewEntry
from gateway.queue.sqlite import SqliteQueueStore
from tests.support.certs import material
from tests.support.gateway_process import GatewayProcess, dicom_destination, wait_until
from tests.support.ports import free_port, wait_for_port

ALICE = "alice-token-0123456789abcdef"


class _Gateway(GatewayProcess):
    """A gateway process with extra environment variables (``TMPDIR``)."""

    def __init__(self, tmpdir: str | os.PathLike[str], env: dict[str, str] | None = None, **overrides: Any) -> None:
        self.extra_env = dict(env or {})
        super().__init__(tmpdir, **overrides)

    def _env(self) -> dict[str, str]:
        """The usual environment, plus :attr:`extra_env`."""
        env = super()._env()
        env.update(self.extra_env)
        return env


def call(
    port: int,
    method: str,
    path: str,
    token: str | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    json_body: bool = True,
) -> tuple[int, bytes]:
    """One HTTP request; returns (status, body) whatever the status."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    if json_body and method != "GET":
        sent.setdefault("Content-Type", "application/json")
    try:
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _dead_letters(gateway: GatewayProcess, count: int) -> list[int]:
    """Journal ``count`` instances for ``pacs`` and dead-letter them, before the gateway starts."""
    gateway.spool.mkdir(parents=True, exist_ok=True)
    store = SqliteQueueStore(str(gateway.spool / "queue.sqlite"))
    ids = []
    try:
        for index in range(count):
            record = InstanceRecord(
                instance_id=f"i{index}", path=str(gateway.dir / f"i{index}.dcm"),
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid=f"1.2.3.{index}",
                transfer_syntax_uid="1.2.840.10008.1.2.1", size=1, sha256=f"s{index}", received_at=time.time(),
                correlation_id="c", study_instance_uid="1.2.3", patient_id="P", accession_number="A",
                calling_ae_title="CT", source_address="10.0.0.1:1",
            )
            (entry_id,) = store.add_instance(record, [NewEntry("all", "pacs")], time.time(), 0).entry_ids
            store.lease("pacs", 10, time.time(), 60)
            store.dead_letter(entry_id, "0xA900 test", time.time())
            ids.append(entry_id)
    finally:
        store.close()
    return ids


def _audit(path: Path) -> list[dict[str, Any]]:
    """Every record of the audit file (each line must be whole JSON)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class HttpApiInteropTests(TestCase):
    """The HTTP admin API of the real process."""

    timeout = 180

    def gateway(self, env: dict[str, str] | None = None, start: bool = True, **overrides: Any) -> _Gateway:
        """A gateway with a fixed HTTP port (``self.http_port``), stopped in a cleanup."""
        self.http_port = free_port()
        http = {"host": "127.0.0.1", "port": self.http_port, **overrides.pop("http", {})}
        gateway = _Gateway(self.mktemp(), env, http=http, **overrides)
        self.addCleanup(gateway.stop, 15)
        if start:
            self.start(gateway)
        return gateway

    def start(self, gateway: GatewayProcess) -> None:
        """Start ``gateway`` and wait for its HTTP port."""
        gateway.start()
        wait_for_port("127.0.0.1", self.http_port)

    def test_no_token_configured_api_is_401_and_the_cli_uses_the_generated_token(self) -> None:
        """No token configured: /api is 401, a 0600 token file is in the spool (path logged, value not), the CLI works."""
        old = os.umask(0o022)
        try:
            gateway = self.gateway()
        finally:
            os.umask(old)
        status, _ = call(self.http_port, "GET", "/api/v1/queues")
        self.assertEqual(status, 401)
        self.assertEqual(call(self.http_port, "POST", "/api/v1/reload")[0], 401)
        path = gateway.spool / "http-token"
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        token = path.read_text().splitlines()[-1].partition(":")[2]
        self.assertGreaterEqual(len(token), 32)
        log = wait_until(lambda: str(path) in gateway.log_text() and gateway.log_text(), 10, "the token file's path in the log")
        self.assertNotIn(token, log)
        self.assertEqual(call(self.http_port, "GET", "/api/v1/queues", token=token)[0], 200)
        result = gateway.cli("api", "GET", "/api/v1/queues")
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertEqual([row["destination"] for row in result.json()["queues"]], [])
        result = gateway.cli("reload")
        self.assertEqual(result.returncode, 0, result.describe())
        for open_path in ("/metrics", "/healthz", "/readyz"):
            self.assertEqual(call(self.http_port, "GET", open_path)[0], 200, open_path)

    def test_large_body_is_413_and_nothing_is_stored_in_tmpdir(self) -> None:
        """A 200 MB Content-Length is answered 413 after the headers; the gateway opens nothing in $TMPDIR."""
        tmpdir = Path(self.mktemp()).resolve()
        tmpdir.mkdir()
        gateway = self.gateway(env={"TMPDIR": str(tmpdir)})
        with socket.create_connection(("127.0.0.1", self.http_port), timeout=30) as sock:
            sock.sendall(
                b"POST /api/v1/dead-letters/1/retry HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 200000000\r\n\r\n"
            )
            try:
                sock.sendall(b"[" * (256 * 1024))  # more than twisted.web's 100 kB spooling threshold
            except OSError:
                pass  # the gateway may already have closed: what it answered is what counts
            sock.settimeout(30)
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                answer = b""  # no answer while the body is "still coming": what was stored meanwhile?
            opened = [os.readlink(f"/proc/{gateway.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{gateway.pid}/fd")]
        # twisted.web's spool file is unlinked at once (TemporaryFile) but stays open: /proc shows it.
        self.assertEqual([target for target in opened if target.startswith(str(tmpdir))], [])
        self.assertEqual(os.listdir(tmpdir), [])
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:100])
        with socket.create_connection(("127.0.0.1", self.http_port), timeout=30) as sock:
            sock.sendall(b"POST /api/v1/reload HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n%s\r\n" % (32768, b" " * 32768)
            try:
                for _ in range(4):
                    sock.sendall(chunk)
            except OSError:
                pass
            answer = sock.recv(65536)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:100])
        self.assertEqual(os.listdir(tmpdir), [])
        self.assertEqual(call(self.http_port, "GET", "/healthz")[0], 200)

    def test_api_and_cli_actions_are_audited_with_who_where_and_ids(self) -> None:
        """A retry through the API names the token's holder and the client address; a CLI purge the OS user; both in one file."""
        import pwd

        gateway = self.gateway(
            start=False,
            destinations={"pacs": dicom_destination(free_port(), "NOBODY", initial_delay="60s", max_delay="60s")},
            routes=[{"name": "all", "forward": ["pacs"]}],
            audit={"file": "audit.jsonl"},
            http={"token_file": "tokens"},
        )
        tokens = gateway.dir / "tokens"
        tokens.write_text(f"alice:{ALICE}\n")
        tokens.chmod(0o600)
        first, second = _dead_letters(gateway, 2)
        self.start(gateway)
        audit_path = gateway.dir / "audit.jsonl"
        with socket.create_connection(("127.0.0.1", self.http_port), timeout=30) as sock:
            client_port = sock.getsockname()[1]
            sock.sendall(
                f"POST /api/v1/dead-letters/{first}/retry HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {ALICE}\r\n"
                "Content-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        result = gateway.cli("queue", "purge", str(second))
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertEqual(call(self.http_port, "POST", "/api/v1/destinations/pacs/pause", token=ALICE)[0], 200)
        self.assertEqual(call(self.http_port, "POST", "/api/v1/dead-letters/999/retry", token=ALICE)[0], 404)

        def operator_records() -> list[dict[str, Any]]:
            return [r for r in _audit(audit_path) if r.get("extra", {}).get("via")]

        wait_until(lambda: len(operator_records()) == 4, 10, "four operator records")
        records = operator_records()
        retry, purge, pause, refused = records
        self.assertEqual(retry["participants"][0],
                         {"user_id": "alice", "network_access_point": f"127.0.0.1:{client_port}", "requestor": True})
        self.assertEqual((retry["extra"]["action"], retry["extra"]["entry_ids"], retry["extra"]["via"]), ("retry", str(first), "api"))
        self.assertEqual(purge["participants"][0]["user_id"], pwd.getpwuid(os.getuid()).pw_name)
        self.assertEqual((purge["extra"]["action"], purge["extra"]["entry_ids"], purge["extra"]["via"]), ("purge", str(second), "cli"))
        self.assertEqual((pause["extra"]["action"], pause["extra"]["destination"]), ("pause", "pacs"))
        self.assertEqual((refused["outcome"], refused["extra"]["entry_ids"]), (4, "999"))
        # The gateway's own records (start, ...) and the command's share the file, line by line.
        self.assertTrue(any(r.get("disposition") == "start" for r in _audit(audit_path)))

    def test_pause_resume_and_request_checks_through_the_api(self) -> None:
        """Pause and resume act as the CLI's; a foreign Host is 403, a form post 415, /metrics answers any Host."""
        gateway = self.gateway(
            destinations={"pacs": dicom_destination(free_port(), "NOBODY")},
            routes=[{"name": "all", "forward": ["pacs"]}],
            http={"token": ALICE},
        )
        status, body = call(self.http_port, "POST", "/api/v1/destinations/pacs/pause", token=ALICE)
        self.assertEqual((status, json.loads(body)), (200, {"destination": "pacs", "paused": True}))
        self.assertTrue(gateway.queue_rows()["pacs"]["paused"])
        self.assertEqual(call(self.http_port, "POST", "/api/v1/destinations/pacs/resume", token=ALICE)[0], 200)
        self.assertFalse(gateway.queue_rows()["pacs"]["paused"])
        self.assertEqual(call(self.http_port, "POST", "/api/v1/destinations/nowhere/pause", token=ALICE)[0], 404)
        self.assertEqual(call(self.http_port, "GET", "/api/v1/queues", token=ALICE, headers={"Host": "rebound.example:80"})[0], 403)
        status, _ = call(self.http_port, "POST", "/api/v1/destinations/pacs/pause", token=ALICE, body=b"a=b",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(status, 415)
        self.assertFalse(gateway.queue_rows()["pacs"]["paused"])
        status, body = call(self.http_port, "POST", "/api/v1/destinations/pacs/pause", token=ALICE, body=b"[" * 50000)
        self.assertEqual((status, "error" in json.loads(body)), (400, True))
        self.assertEqual(call(self.http_port, "GET", "/metrics", headers={"Host": "rebound.example"})[0], 200)

    def test_https_with_http_tls_and_no_warning(self) -> None:
        """http.tls serves HTTPS (plain HTTP fails); the CLI verifies the gateway's own certificate; no clear-text warning."""
        m = material()
        gateway = self.gateway(http={"host": "0.0.0.0", "token": ALICE,
                                     "tls": {"certificate": m.server, "private_key": m.server_key}})
        context = ssl.create_default_context(cafile=m.ca)
        connection = http.client.HTTPSConnection("127.0.0.1", self.http_port, timeout=30, context=context)
        try:
            connection.request("GET", "/api/v1/queues", headers={"Authorization": f"Bearer {ALICE}"})
            response = connection.getresponse()
            self.assertEqual((response.status, "queues" in json.loads(response.read())), (200, True))
        finally:
            connection.close()
        self.assertRaises((OSError, http.client.HTTPException), call, self.http_port, "GET", "/healthz")
        result = gateway.cli("api", "GET", "/api/v1/queues")
        self.assertEqual(result.returncode, 0, result.describe())
        result = gateway.cli("api", "GET", "/api/v1/queues", "--ca", m.other_ca)
        self.assertNotEqual(result.returncode, 0, result.describe())
        self.assertIn("https://", gateway.log_text())
        self.assertNotIn("not a loopback address", gateway.log_text())

    def test_non_loopback_address_without_tls_is_logged_critical(self) -> None:
        """http.host 0.0.0.0 without http.tls: a critical line saying so and naming the fix."""
        gateway = self.gateway(http={"host": "0.0.0.0"})
        line = wait_until(
            lambda: next((l for l in gateway.log_text().splitlines() if "not a loopback address" in l), None),
            10, "the clear-text warning",
        )
        self.assertIn("#critical]", line)
        self.assertIn("http.tls", line)

    def test_connection_cap_and_request_deadline(self) -> None:
        """Of 70 idle connections, those past 64 are answered 503 at once; a request still incomplete is closed by the deadline."""
        self.gateway()
        sockets = [socket.create_connection(("127.0.0.1", self.http_port), timeout=30) for _ in range(70)]
        try:
            started = time.monotonic()
            refused: list[socket.socket] = []
            while time.monotonic() - started < 5 and len(refused) < len(sockets) - 64:
                readable, _, _ = select.select([s for s in sockets if s not in refused], [], [], 0.5)
                refused.extend(readable)
            time.sleep(0.5)
            readable, _, _ = select.select([s for s in sockets if s not in refused], [], [], 0)
            refused.extend(readable)
            # At most 64 open at once: ours, plus any readiness-check connection the gateway has not yet seen close.
            accepted = len(sockets) - len(refused)
            self.assertLessEqual(accepted, 64)
            self.assertGreaterEqual(accepted, 62)
            for sock in refused:
                self.assertTrue(sock.recv(4096).startswith(b"HTTP/1.1 503 "))
            survivor = next(s for s in sockets if s not in refused)
            survivor.sendall(b"GET /api/v1/queues HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
            survivor.settimeout(60)
            # The deadline (10 s from connecting) closes it; an idle timeout alone would wait for hours.
            try:
                closed = survivor.recv(4096) == b""
            except ConnectionResetError:
                closed = True  # aborted: a reset is a close too
            self.assertTrue(closed)
            self.assertLess(time.monotonic() - started, 45)
        finally:
            for sock in sockets:
                sock.close()
        wait_until(lambda: call(self.http_port, "GET", "/healthz")[0] == 200, 20, "/healthz after the flood")
