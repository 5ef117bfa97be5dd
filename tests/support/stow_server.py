"""A scripted STOW-RS origin server (twisted.web) for the cases a real server will not produce on demand.

:class:`StowResource` answers ``POST /studies`` as a script says and records
every request (:class:`Received`); ``POST /token`` is an OAuth2 token
endpoint (RFC 6749 4.4, client credentials) whose tokens ``POST /studies``
may require; ``GET /studies`` answers the circuit probe. It runs in the test's
reactor (adapter tests) or as a process of its own (:class:`StowServerProcess`,
``python -m tests.support.stow_server CONFIG.json``, interop tests), which
appends each request to a JSON-lines file.

The script (:class:`Script`, JSON-able):

- ``steps``: per request number (0-based, token requests excluded), what
  to do instead of the normal answer: ``{"status": 429, "retry_after": "2"}``,
  ``{"status": 401}``, ``{"cut_after": 1000}`` (close the connection once that
  many body bytes came), ``{"delay": 5}`` (answer late);
- ``failures``: SOP Instance UID -> Failure Reasons per attempt of that
  instance (``null``: stored; ``"omit"``: not mentioned in the answer);
  the last one repeats;
- ``max_instances``: more parts than this get 413;
- ``token``: ``{"client_id", "secret", "expires_in"}``: ``/studies`` wants
  a bearer token this endpoint issued (401 otherwise);
- ``bearer``: a static token ``/studies`` wants.

The normal answer is PS3.18 10.5.3's: 200 when every instance is stored, 202
when some are, 409 when none, with ``application/dicom+json``.
"""

from __future__ import annotations

import base64
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

__all__ = ["Received", "Script", "StowResource", "parse_multipart", "site_for"]


@dataclass
class Script:
    """What the server does (see the module docstring)."""

    steps: dict[int, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, list[Any]] = field(default_factory=dict)
    max_instances: int = 0
    token: dict[str, Any] = field(default_factory=dict)
    bearer: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Script":
        """The script of a JSON object (step keys are strings there)."""
        return cls(
            steps={int(k): v for k, v in data.get("steps", {}).items()},
            failures=data.get("failures", {}),
            max_instances=data.get("max_instances", 0),
            token=data.get("token", {}),
            bearer=data.get("bearer", ""),
        )


@dataclass
class Received:
    """One request as the server saw it."""

    number: int
    path: str
    method: str
    status: int
    content_type: str = ""
    content_length: int = -1
    authorization: str = ""
    uids: list[str] = field(default_factory=list)
    body_size: int = 0
    reasons: dict[str, Any] = field(default_factory=dict)


def parse_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a ``multipart/related`` body (RFC 2046 5.1.1), strictly: a framing error raises ValueError."""
    params = dict(
        (k.strip().lower(), v.strip().strip('"'))
        for k, _, v in (p.partition("=") for p in content_type.split(";")[1:])
    )
    boundary = params.get("boundary")
    if not boundary:
        raise ValueError("no boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    if not body.startswith(delimiter + b"\r\n"):
        raise ValueError("the body does not start with the boundary")
    if not body.endswith(delimiter + b"--\r\n"):
        raise ValueError("the body does not end with the close delimiter")
    inner = body[len(delimiter) + 2 : -len(delimiter) - 4]
    parts = []
    for chunk in inner.split(b"\r\n" + delimiter + b"\r\n"):
        if chunk.endswith(b"\r\n"):
            chunk = chunk[:-2]
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("a part without a header block")
        headers = {}
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
        parts.append((headers, content))
    return parts


def _sop_instance_uid(data: bytes) -> str:
    """The SOP Instance UID of a Part 10 file's bytes."""
    from io import BytesIO

    from pydicom import dcmread

    return str(dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


def _item(uid: str, reason: int | None, failed: bool) -> dict[str, Any]:
    """A Referenced or Failed SOP Sequence item (PS3.18 F.2 JSON)."""
    item: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
        "00081155": {"vr": "UI", "Value": [uid]},
    }
    if failed:
        item["00081197"] = {"vr": "US", "Value": [reason]}
    return item


class _CuttingRequest(Request):
    """A request that may close its connection part-way through the body (``cut_after``)."""

    cut_after = -1

    def handleContentChunk(self, data: bytes) -> None:
        """Count the body's bytes; past the script's ``cut_after``, abort the connection."""
        resource: StowResource = self.channel.site.stow  # type: ignore[attr-defined]
        kind = (self.requestHeaders.getRawHeaders(b"content-type") or [b""])[0]
        cut = resource.cut_for_next() if kind.startswith(b"multipart/") else -1
        self.received_bytes = getattr(self, "received_bytes", 0) + len(data)
        if cut >= 0 and self.received_bytes >= cut:
            resource.record_cut(self)
            self.channel.transport.abortConnection()
            return
        Request.handleContentChunk(self, data)


class StowResource(Resource):
    """``/studies`` (see the module docstring).

    :param script: what to do.
    :param clock: for delays.
    :param log_path: a JSON-lines file each request is appended to, or empty.
    """

    isLeaf = True

    def __init__(self, script: Script, clock: IReactorTime, log_path: str = "") -> None:
        super().__init__()
        self.script = script
        self.clock = clock
        self.log_path = log_path
        self.received: list[Received] = []
        #: The bodies of the requests, in order.
        self.bodies: list[bytes] = []
        self.attempts: dict[str, int] = {}
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.studies_requests = 0

    # -- cuts ----------------------------------------------------------------------------------

    def cut_for_next(self) -> int:
        """Body bytes after which the next ``/studies`` request's connection is cut (-1: never)."""
        return int(self.script.steps.get(self.studies_requests, {}).get("cut_after", -1))

    def record_cut(self, request: Request) -> None:
        """Record a request cut mid-body (status 0), once."""
        if getattr(request, "_recorded_cut", False):
            return
        request._recorded_cut = True  # type: ignore[attr-defined]
        self._record(Received(self.studies_requests, "/studies", "POST", 0, body_size=getattr(request, "received_bytes", 0)))
        self.studies_requests += 1

    def _record(self, item: Received) -> None:
        """Keep ``item`` and append it to the log file, if any."""
        self.received.append(item)
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as log:
                log.write(json.dumps(asdict(item)) + "\n")

    # -- answers -------------------------------------------------------------------------------

    def render_GET(self, request: Request) -> bytes:
        """The circuit probe (QIDO-RS): an empty result, or 401 without the wanted credentials."""
        request.setHeader(b"content-type", b"application/dicom+json")
        if not self._authorized(request):
            request.setResponseCode(401)
            return b""
        return b"[]"

    def render_POST(self, request: Request) -> Any:
        """``/token`` or a Store Instances request, answered as the script says."""
        if request.path.rstrip(b"/").endswith(b"/token"):
            return self._token(request)
        number = self.studies_requests
        self.studies_requests += 1
        body = request.content.read()
        self.bodies.append(body)
        head = Received(
            number, "/studies", "POST", 0,
            content_type=(request.getHeader(b"content-type") or b"").decode("latin-1"),
            content_length=int(request.getHeader(b"content-length") or -1),
            authorization=(request.getHeader(b"authorization") or b"").decode("latin-1"),
            body_size=len(body),
        )
        step = self.script.steps.get(number, {})
        if not self._authorized(request):
            return self._finish(request, head, 401, b'{"error": "unauthorized"}')
        if "status" in step:
            if "retry_after" in step:
                request.setHeader(b"retry-after", str(step["retry_after"]).encode("ascii"))
            return self._finish(request, head, int(step["status"]), str(step.get("message", "scripted")).encode("utf-8"))
        try:
            parts = parse_multipart(head.content_type, body)
            head.uids = [_sop_instance_uid(content) for _, content in parts]
        except Exception as e:
            return self._finish(request, head, 400, f"bad body: {e}".encode("utf-8"))
        if self.script.max_instances and len(parts) > self.script.max_instances:
            return self._finish(request, head, 413, b"too many instances")
        referenced, failed = [], []
        for uid in head.uids:
            attempt = self.attempts.get(uid, 0) + 1
            self.attempts[uid] = attempt
            plan = self.script.failures.get(uid, [None])
            reason = plan[min(attempt, len(plan)) - 1]
            head.reasons[uid] = reason
            if reason == "omit":
                continue
            if reason is None:
                referenced.append(_item(uid, None, False))
            else:
                failed.append(_item(uid, int(reason), True))
        status = 200 if not failed else (409 if not referenced else 202)
        answer: dict[str, Any] = {}
        if referenced:
            answer["00081199"] = {"vr": "SQ", "Value": referenced}
        if failed:
            answer["00081198"] = {"vr": "SQ", "Value": failed}
        request.setHeader(b"content-type", b"application/dicom+json")
        payload = json.dumps(answer).encode("utf-8")
        delay = float(step.get("delay", 0))
        if delay:
            call = self.clock.callLater(delay, self._late, request, head, status, payload)

            def gone(_: Any) -> None:
                # The client gave up first: record it, answer nobody.
                if call.active():
                    call.cancel()
                    head.status = -1
                    self._record(head)

            request.notifyFinish().addErrback(gone)
            return NOT_DONE_YET
        return self._finish(request, head, status, payload)

    def _late(self, request: Request, head: Received, status: int, payload: bytes) -> None:
        """Answer a delayed request."""
        request.write(self._finish(request, head, status, payload))
        request.finish()

    def _finish(self, request: Request, head: Received, status: int, payload: bytes) -> bytes:
        """Set the status, record the request, return the body."""
        head.status = status
        request.setResponseCode(status)
        self._record(head)
        return payload

    def _authorized(self, request: Request) -> bool:
        """Whether the request carries the credentials the script wants (none wanted: yes)."""
        given = (request.getHeader(b"authorization") or b"").decode("latin-1")
        if self.script.token:
            return given.startswith("Bearer ") and given[7:] in self.tokens
        if self.script.bearer:
            return given == "Bearer " + self.script.bearer
        return True

    def _token(self, request: Request) -> bytes:
        """RFC 6749 4.4.2/4.4.3: client credentials in HTTP Basic, form ``grant_type=client_credentials``."""
        self.token_requests += 1
        request.setHeader(b"content-type", b"application/json")
        expected = f"{self.script.token.get('client_id', '')}:{self.script.token.get('secret', '')}"
        given = (request.getHeader(b"authorization") or b"").decode("latin-1")
        form = request.content.read()
        ok = given == "Basic " + base64.b64encode(expected.encode()).decode() and b"grant_type=client_credentials" in form
        self._record(Received(-1, "/token", "POST", 200 if ok else 401, authorization="(basic)"))
        if not ok:
            request.setResponseCode(401)
            return b'{"error": "invalid_client"}'
        token = f"tok-{self.token_requests}"
        self.tokens.add(token)
        return json.dumps({"access_token": token, "token_type": "Bearer",
                           "expires_in": self.script.token.get("expires_in", 3600)}).encode()

    def revoke_tokens(self) -> None:
        """Every token issued so far is refused from now on (an expiry the client did not foresee)."""
        self.tokens.clear()


def site_for(resource: StowResource) -> Site:
    """A site serving ``resource`` at ``/dicom-web/studies`` and ``/dicom-web/token``."""
    root = Resource()
    web = Resource()
    root.putChild(b"dicom-web", web)
    web.putChild(b"studies", resource)
    web.putChild(b"token", resource)
    site = Site(root)
    site.requestFactory = _CuttingRequest
    # A cut happens before the resource is found: the request finds it here.
    site.stow = resource  # type: ignore[attr-defined]
    return site


def main(argv: list[str]) -> None:
    """``python -m tests.support.stow_server CONFIG.json``: ``{"port", "log", "script"}``; serves until SIGTERM."""
    from twisted.internet import reactor

    with open(argv[1], encoding="utf-8") as f:
        config = json.load(f)
    resource = StowResource(Script.from_json(config.get("script", {})), reactor, config["log"])
    reactor.listenTCP(config["port"], site_for(resource), interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv)


class StowServerProcess:
    """The scripted server as a process of its own (interop tests): ``start``, ``requests``, ``stop`` by pid.

    :param folder: where its configuration, request log and output go.
    :param script: what it does.
    """

    def __init__(self, folder: str, script: Script) -> None:
        import os

        from tests.support.peerprocess import PeerProcess
        from tests.support.ports import free_port

        folder = os.path.abspath(folder)
        os.makedirs(folder, exist_ok=True)
        self.port = free_port()
        self.log = os.path.join(folder, "requests.jsonl")
        self.config = os.path.join(folder, "stow-server.json")
        with open(self.config, "w", encoding="utf-8") as f:
            json.dump({"port": self.port, "log": self.log, "script": {
                "steps": {str(k): v for k, v in script.steps.items()}, "failures": script.failures,
                "max_instances": script.max_instances, "token": script.token, "bearer": script.bearer}}, f)
        self.process = PeerProcess("stow_server", os.path.join(folder, "stow-server.log"))
        self.url = f"http://127.0.0.1:{self.port}/dicom-web"

    def start(self) -> "StowServerProcess":
        """Start it and wait until its port answers."""
        self.process.spawn_module("tests.support.stow_server", self.config, self.port)
        return self

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 10 s), by its pid."""
        self.process.stop()

    def requests(self) -> list[Received]:
        """The requests so far, in order."""
        try:
            with open(self.log, encoding="utf-8") as f:
                return [Received(**json.loads(line)) for line in f if line.strip()]
        except FileNotFoundError:
            return []
