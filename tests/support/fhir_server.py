"""A FHIR server stand-in (twisted.web) for the FHIR sink's tests (issue 18).

:class:`FhirResource` serves, under any base path (``http://host:port/fhir``):

- ``PUT /ImagingStudy?identifier=system|value``: the conditional update of
  FHIR R4 http.html#cond-update: no stored ImagingStudy has that identifier: create it
  (``201`` with ``Location: .../ImagingStudy/<id>/_history/1``); one has:
  replace it (``200``, ``meta.versionId`` one more); several: ``412``;
- ``GET /Patient?identifier=system|value``: a ``searchset`` Bundle of the
  Patients (:meth:`FhirResource.add_patient`) with that identifier;
- ``GET /metadata``: a small CapabilityStatement (the circuit probe);
- ``POST /token``: an OAuth2 token endpoint (RFC 6749 4.4, client
  credentials) whose tokens the other paths may require (``Script.token``),
  or a static bearer token they require (``Script.bearer``).

Every ImagingStudy body is validated with the ``fhir.resources`` package
(test-only). Its default models (6.5.0) are FHIR **R4B** (4.3.0), not R4:
the ImagingStudy resource is the same in R4 and R4B (R4B changed no element
of it), so a resource valid here is a valid R4 ImagingStudy. An invalid body
is answered ``400`` with an OperationOutcome naming the problems, and kept in
:attr:`FhirResource.invalid`.

The script (:class:`Script`) makes faults on demand: per request number
(token requests excluded) ``{"status": 500}``, ``{"status": 429,
"retry_after": "2"}``, ``{"status": 401}``, ``{"delay": 5}`` (answer late),
each answered with an OperationOutcome. Every request is recorded
(:class:`Received`).

It runs in the test's reactor (adapter tests) or as a process of its own
(:class:`FhirServerProcess`, ``python -m tests.support.fhir_server
CONFIG.json``, interop tests), which appends each request to a JSON-lines
file and rewrites a snapshot of the stored ImagingStudy resources after each
change.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

__all__ = [
    "FhirResource",
    "FhirServerProcess",
    "Received",
    "Script",
    "operation_outcome",
    "site_for",
    "validate_imaging_study",
]


def validate_imaging_study(body: dict[str, Any]) -> str:
    """The problems of an ImagingStudy (R4B models, the same ImagingStudy as R4), empty when valid."""
    from fhir.resources.imagingstudy import ImagingStudy

    try:
        ImagingStudy.parse_obj(body)
    except Exception as e:  # pydantic's ValidationError, a wrong resourceType
        return str(e)
    return ""


def operation_outcome(code: str, text: str, severity: str = "error") -> bytes:
    """An OperationOutcome with one issue (FHIR R4 OperationOutcome)."""
    return json.dumps(
        {"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": code, "diagnostics": text}]}
    ).encode("utf-8")


@dataclass
class Script:
    """Faults on demand (see the module docstring).

    :ivar steps: request number (0-based, ``/token`` excluded) -> what to do instead.
    :ivar token: ``{"client_id", "secret", "expires_in"}``: requests need a token ``/token`` issued.
    :ivar bearer: a static token requests need.
    """

    steps: dict[int, dict[str, Any]] = field(default_factory=dict)
    token: dict[str, Any] = field(default_factory=dict)
    bearer: str = ""

    def to_json(self) -> dict[str, Any]:
        """The script as a JSON object (step keys become strings)."""
        return {"steps": {str(k): v for k, v in self.steps.items()}, "token": self.token, "bearer": self.bearer}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Script":
        """The script of :meth:`to_json`'s object."""
        return cls({int(k): v for k, v in data.get("steps", {}).items()}, data.get("token", {}), data.get("bearer", ""))


@dataclass
class Received:
    """One request as the server saw it."""

    number: int
    method: str
    path: str
    query: dict[str, list[str]]
    status: int
    content_type: str = ""
    authorization: str = ""
    if_match: str = ""
    body: Any = None
    #: For a PUT of an ImagingStudy: what validation found ("" when valid), whatever the answer.
    problems: str = ""


@dataclass
class Stored:
    """A stored resource and its version."""

    id: str
    version: int
    resource: dict[str, Any]


def _identifier_matches(resource: dict[str, Any], system: str, value: str) -> bool:
    """Whether one of the resource's identifiers is ``system|value`` (FHIR R4 search.html#token; no system: any)."""
    for identifier in resource.get("identifier") or ():
        if identifier.get("value") == value and (not system or identifier.get("system") == system):
            return True
    return False


def _token(query: dict[str, list[str]]) -> tuple[str, str] | None:
    """``identifier=system|value`` of a query as ``(system, value)``; ``None`` when absent."""
    values = query.get("identifier")
    if not values:
        return None
    system, sep, value = values[0].partition("|")
    return (system, value) if sep else ("", system)


class FhirResource(Resource):
    """The stand-in (see the module docstring).

    :param script: the faults and the credentials wanted.
    :param clock: for delays.
    :param log_path: a JSON-lines file each request is appended to, or empty.
    :param state_path: a JSON file rewritten with the stored ImagingStudy resources after each change, or empty.
    """

    isLeaf = True

    def __init__(
        self, script: Script | None = None, clock: IReactorTime | None = None, log_path: str = "", state_path: str = ""
    ) -> None:
        super().__init__()
        self.script = script or Script()
        self.clock = clock
        self.log_path = log_path
        self.state_path = state_path
        self.received: list[Received] = []
        #: ImagingStudy resources by id.
        self.studies: dict[str, Stored] = {}
        #: Patients by id.
        self.patients: dict[str, dict[str, Any]] = {}
        #: Every ImagingStudy body PUT that failed validation, with the problems (whatever the answer).
        self.invalid: list[tuple[Any, str]] = []
        #: Every ImagingStudy body PUT that passed validation (whatever the answer).
        self.valid: list[dict[str, Any]] = []
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.requests = 0
        self._next_id = 1
        #: Delayed answers not yet given (cancelled by :meth:`stop`).
        self._pending: list[Any] = []

    # -- set-up --------------------------------------------------------------------------------

    def add_patient(self, system: str, value: str) -> str:
        """Store a Patient with the identifier ``system|value``; returns its id."""
        patient_id = f"pat{len(self.patients) + 1}"
        self.patients[patient_id] = {
            "resourceType": "Patient",
            "id": patient_id,
            "identifier": [{"system": system, "value": value}],
        }
        return patient_id

    def add_study(self, resource: dict[str, Any]) -> str:
        """Store an ImagingStudy as is (to make duplicates for a 412); returns its id."""
        study_id = self._new_id()
        self.studies[study_id] = Stored(study_id, 1, dict(resource, id=study_id))
        return study_id

    def _new_id(self) -> str:
        value = f"is{self._next_id}"
        self._next_id += 1
        return value

    # -- answers -------------------------------------------------------------------------------

    def render(self, request: Request) -> Any:
        """Route by method and the last path segment (the base path is anything)."""
        segments = [unquote(s.decode("utf-8")) for s in request.path.split(b"/") if s]
        last = segments[-1] if segments else ""
        if request.method == b"POST" and last == "token":
            return self._token_endpoint(request)
        number = self.requests
        self.requests += 1
        # twisted.web has percent-decoded the query already (request.args).
        query = {k.decode("utf-8"): [x.decode("utf-8") for x in v] for k, v in request.args.items()}
        body_bytes = request.content.read() if request.content is not None else b""
        head = Received(
            number,
            request.method.decode("ascii"),
            "/" + "/".join(segments),
            query,
            0,
            content_type=(request.getHeader(b"content-type") or b"").decode("latin-1"),
            authorization=(request.getHeader(b"authorization") or b"").decode("latin-1"),
            if_match=(request.getHeader(b"if-match") or b"").decode("latin-1"),
        )
        if body_bytes:
            try:
                head.body = json.loads(body_bytes)
            except ValueError:
                head.body = body_bytes
        if head.method == "PUT" and last == "ImagingStudy":
            # Every body is validated, also those answered by a scripted fault.
            body = head.body
            head.problems = validate_imaging_study(body) if isinstance(body, dict) else "the body is not a JSON object"
            if head.problems:
                self.invalid.append((body, head.problems))
            else:
                self.valid.append(body)
        step = self.script.steps.get(number, {})
        if "delay" in step and self.clock is not None:
            call = self.clock.callLater(float(step["delay"]), self._answer_later, request, head, step, last)
            self._pending.append(call)

            def gone(_: Any) -> None:
                # The client gave up first: record it (status -1), answer nobody.
                if call.active():
                    call.cancel()
                    head.status = -1
                    self._record(head)

            request.notifyFinish().addErrback(gone)
            return NOT_DONE_YET
        return self._answer(request, head, step, last)

    def _answer_later(self, request: Request, head: Received, step: dict[str, Any], last: str) -> None:
        """A delayed answer (``delay``)."""
        data = self._answer(request, head, step, last)
        request.write(data)
        request.finish()

    def _answer(self, request: Request, head: Received, step: dict[str, Any], last: str) -> bytes:
        request.setHeader(b"content-type", b"application/fhir+json")
        if not self._authorized(request):
            return self._finish(request, head, 401, operation_outcome("login", "unauthorized"))
        if "status" in step:
            if "retry_after" in step:
                request.setHeader(b"retry-after", str(step["retry_after"]).encode("ascii"))
            return self._finish(request, head, int(step["status"]), operation_outcome("transient", str(step.get("message", "scripted"))))
        if head.method == "GET" and last == "metadata":
            return self._finish(request, head, 200, json.dumps(
                {"resourceType": "CapabilityStatement", "status": "active", "kind": "instance", "fhirVersion": "4.0.1",
                 "format": ["json"], "date": "2026-01-01"}).encode("utf-8"))
        if head.method == "GET" and last == "Patient":
            return self._patient_search(request, head)
        if head.method == "PUT" and last == "ImagingStudy":
            return self._conditional_update(request, head)
        return self._finish(request, head, 404, operation_outcome("not-supported", f"{head.method} {head.path}"))

    def _patient_search(self, request: Request, head: Received) -> bytes:
        """``GET Patient?identifier=``: a searchset Bundle (FHIR R4 search.html)."""
        token = _token(head.query)
        if token is None:
            return self._finish(request, head, 400, operation_outcome("required", "identifier is required"))
        matches = [p for p in self.patients.values() if _identifier_matches(p, *token)]
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(matches),
            "entry": [{"resource": p, "search": {"mode": "match"}} for p in matches],
        }
        return self._finish(request, head, 200, json.dumps(bundle).encode("utf-8"))

    def _conditional_update(self, request: Request, head: Received) -> bytes:
        """FHIR R4 http.html#cond-update conditional update of an ImagingStudy."""
        token = _token(head.query)
        if token is None:
            return self._finish(request, head, 400, operation_outcome("required", "a conditional update needs a search"))
        if not head.content_type.startswith("application/fhir+json"):
            return self._finish(request, head, 415, operation_outcome("not-supported", f"content type {head.content_type!r}"))
        body = head.body
        if head.problems:
            return self._finish(request, head, 400, operation_outcome("invalid", head.problems))
        matches = [s for s in self.studies.values() if _identifier_matches(s.resource, *token)]
        if len(matches) > 1:
            return self._finish(
                request, head, 412, operation_outcome("multiple-matches", f"{len(matches)} ImagingStudy resources match")
            )
        if matches:
            stored = matches[0]
            stored.version += 1
            stored.resource = dict(body, id=stored.id, meta={"versionId": str(stored.version)})
            code = 200
        else:
            stored = Stored(self._new_id(), 1, {})
            stored.resource = dict(body, id=stored.id, meta={"versionId": "1"})
            self.studies[stored.id] = stored
            code = 201
        self._save_state()
        base = request.prePathURL().decode("utf-8").rstrip("/")
        request.setHeader(b"location", f"{base}/{stored.id}/_history/{stored.version}".encode("utf-8"))
        request.setHeader(b"etag", f'W/"{stored.version}"'.encode("ascii"))
        return self._finish(request, head, code, json.dumps(stored.resource).encode("utf-8"))

    def _authorized(self, request: Request) -> bool:
        """Whether the request carries the credentials the script wants (none wanted: yes)."""
        got = (request.getHeader(b"authorization") or b"").decode("latin-1")
        if self.script.bearer:
            return got == "Bearer " + self.script.bearer
        if self.script.token:
            return got.startswith("Bearer ") and got[7:] in self.tokens
        return True

    def _token_endpoint(self, request: Request) -> bytes:
        """RFC 6749 4.4 client credentials: HTTP Basic client authentication, a JSON token."""
        self.token_requests += 1
        request.setHeader(b"content-type", b"application/json")
        wanted = self.script.token
        got = (request.getHeader(b"authorization") or b"").decode("latin-1")
        expected = "Basic " + base64.b64encode(f"{wanted.get('client_id', '')}:{wanted.get('secret', '')}".encode()).decode()
        form = parse_qs(request.content.read().decode("ascii"))
        if not wanted or got != expected or form.get("grant_type") != ["client_credentials"]:
            request.setResponseCode(401)
            return b'{"error": "invalid_client"}'
        token = secrets.token_urlsafe(16)
        self.tokens.add(token)
        return json.dumps(
            {"access_token": token, "token_type": "Bearer", "expires_in": int(wanted.get("expires_in", 300))}
        ).encode("ascii")

    def _finish(self, request: Request, head: Received, code: int, body: bytes) -> bytes:
        """Record and answer."""
        head.status = code
        self._record(head)
        request.setResponseCode(code)
        return body

    def _record(self, head: Received) -> None:
        """Keep ``head`` and append it to the log file, if any."""
        self.received.append(head)
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as log:
                log.write(json.dumps(asdict(head), default=repr) + "\n")

    def _save_state(self) -> None:
        """Rewrite the snapshot of the stored studies (atomically), if asked."""
        if not self.state_path:
            return
        temporary = self.state_path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump([asdict(s) for s in self.studies.values()], f)
        os.replace(temporary, self.state_path)

    def stop(self) -> None:
        """Cancel the delayed answers not given yet (a test's cleanup)."""
        for call in self._pending:
            if call.active():
                call.cancel()

    # -- for assertions ------------------------------------------------------------------------

    def study(self, system: str, value: str) -> list[Stored]:
        """The stored ImagingStudy resources with the identifier ``system|value``."""
        return [s for s in self.studies.values() if _identifier_matches(s.resource, system, value)]


def site_for(resource: FhirResource) -> Site:
    """A Site serving ``resource`` under every path."""
    root = resource
    site = Site(root)
    site.displayTracebacks = False
    return site


def main(argv: list[str]) -> None:
    """``python -m tests.support.fhir_server CONFIG.json``: ``{"port", "log", "state", "script", "patients"}``; serves until SIGTERM."""
    from twisted.internet import reactor

    with open(argv[1], encoding="utf-8") as f:
        config = json.load(f)
    resource = FhirResource(Script.from_json(config.get("script", {})), reactor, config["log"], config["state"])
    for system, value in config.get("patients", ()):
        resource.add_patient(system, value)
    reactor.listenTCP(config["port"], site_for(resource), interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


class FhirServerProcess:
    """The stand-in as a process of its own (interop tests): ``start``, ``requests``, ``studies``, ``stop`` by pid.

    :param folder: where its configuration, request log, state and output go.
    :param script: its faults and credentials.
    :param patients: ``(system, value)`` identifiers of the Patients it knows (``subject: search``).
    """

    def __init__(self, folder: str, script: Script | None = None, patients: tuple[tuple[str, str], ...] = ()) -> None:
        from tests.support.peerprocess import PeerProcess
        from tests.support.ports import free_port

        folder = os.path.abspath(folder)
        os.makedirs(folder, exist_ok=True)
        self.port = free_port()
        self.log = os.path.join(folder, "fhir-requests.jsonl")
        self.state = os.path.join(folder, "fhir-studies.json")
        self.config = os.path.join(folder, "fhir-server.json")
        with open(self.config, "w", encoding="utf-8") as f:
            json.dump({"port": self.port, "log": self.log, "state": self.state,
                       "script": (script or Script()).to_json(), "patients": [list(p) for p in patients]}, f)
        self.process = PeerProcess("fhir_server", os.path.join(folder, "fhir-server.log"))
        self.url = f"http://127.0.0.1:{self.port}/fhir/r4"

    def start(self) -> "FhirServerProcess":
        """Start it and wait until its port answers."""
        self.process.spawn_module("tests.support.fhir_server", self.config, self.port)
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

    def studies(self) -> list[Stored]:
        """The stored ImagingStudy resources now."""
        try:
            with open(self.state, encoding="utf-8") as f:
                return [Stored(**item) for item in json.load(f)]
        except FileNotFoundError:
            return []


if __name__ == "__main__":
    main(sys.argv)
