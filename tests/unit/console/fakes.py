"""A fake :class:`~gateway.console.data.ConsoleData` for the console's page tests (issue 18).

It answers from canned records and records every call, so a test can
check what a page asked for and what an action did, with which operator.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet.defer import Deferred, fail, succeed

from gateway.admin import Operator
from gateway.config.schema import RouteConfig
from gateway.console.data import (
    ActionResult,
    AuditPage,
    AuditRecordView,
    DeadFilter,
    DeadPage,
    DestinationView,
    FoundInstance,
    ListenerView,
    NodeView,
    Overview,
    RuleCheck,
)
from gateway.queue.interfaces import Attempt, Entry, EntryState, InstanceRecord

NOW = 1_800_000_000.0


def instance(n: int, patient_id: str = "PAT12345") -> InstanceRecord:
    """A spooled instance with a Patient ID (PHI the list pages mask)."""
    return InstanceRecord(
        instance_id=f"i{n}", path=f"/spool/i{n}.dcm", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=f"1.2.3.{n}", transfer_syntax_uid="1.2.840.10008.1.2.1", size=100, sha256="00",
        received_at=NOW - 3600, correlation_id=f"c{n}", study_instance_uid="1.2.3", patient_id=patient_id,
        accession_number="ACC1", modality="CT",
    )


def dead_entry(n: int, destination: str = "pacs", error: str = "refused: 0xA700") -> Entry:
    """A dead letter with two attempts."""
    return Entry(
        entry_id=n, instance=instance(n), route="ct", destination=destination, path=f"/spool/i{n}.dcm",
        state=EntryState.DEAD, attempts=2, enqueued_at=NOW - 7200, next_attempt_at=NOW, last_error=error,
        dead_reason="refused", history=(Attempt(NOW - 7000, "timeout"), Attempt(NOW - 6000, error)),
    )


class FakeConsoleData:
    """Canned answers; ``calls`` lists what was asked, with the operator of each action."""

    node = "node-a"

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.last_error = "association refused"
        self.dead = [dead_entry(n) for n in range(60, 0, -1)]
        self.paused: set[str] = set()
        self.checked: list[tuple[str, bytes]] = []
        self.spooled = {"i7": "/nonexistent/i7.dcm"}
        self.report: dict[str, Any] = {
            "file": "x", "sop_instance_uid": "1.2.3.4", "modality": "CT",
            "routes": [{"route": "ct", "destinations": ["pacs"], "changes": [
                {"path": "(0010,0010) PatientName", "old": "DOE^JOHN", "new": "ANON"}]}],
            "rejected": None, "dropped": False, "unrouted": False, "errors": [],
        }

    def overview(self) -> Deferred[Overview]:
        self.calls.append(("overview",))
        return succeed(Overview(
            node=self.node,
            destinations=(
                DestinationView("pacs", "dicom", "paused" if "pacs" in self.paused else "down", queued=12, in_flight=1,
                                dead=3, oldest_age=90.0, last_error=self.last_error, rate=tuple(range(60))),
                DestinationView("archive", "dicom", "up", queued=0, rate=(0,) * 60),
            ),
            listeners=(ListenerView("main", "0.0.0.0:11112", False, 2),),
            nodes=(NodeView("node-a", 1.0, 3, this_node=True), NodeView("node-b", 4.0, 0)),
            spool_free_bytes=10 * 2**30, spool_floor_bytes=2**30, generated_at=NOW,
        ))

    def find(self, by: str, value: str, limit: int = 500) -> Deferred[tuple[FoundInstance, ...]]:
        self.calls.append(("find", by, value))
        return succeed((FoundInstance(instance(1), (dead_entry(1),)),))

    def _match(self, where: DeadFilter | None) -> list[Entry]:
        where = where or DeadFilter()
        return [
            e for e in self.dead
            if (where.destination is None or e.destination == where.destination)
            and (where.route is None or e.route == where.route)
            and (where.reason is None or e.dead_reason == where.reason)
            and (where.enqueued_before is None or e.enqueued_at < where.enqueued_before)
        ]

    def dead_letters(self, where: DeadFilter, before: int | None, limit: int = 50) -> Deferred[DeadPage]:
        self.calls.append(("dead_letters", where, before))
        rows = [e for e in self._match(where) if before is None or e.entry_id < before]
        page = tuple(rows[:limit])
        return succeed(DeadPage(page, page[-1].entry_id if len(rows) > limit else None))

    def count_dead(self, where: DeadFilter) -> Deferred[int]:
        self.calls.append(("count_dead", where))
        return succeed(len(self._match(where)))

    def dead_letter(self, entry_id: int) -> Deferred[Entry]:
        for entry in self.dead:
            if entry.entry_id == entry_id:
                return succeed(entry)
        return fail(KeyError(entry_id))

    def retry(
        self, ids: Sequence[int] | None, where: DeadFilter | None, to: str | None, operator: Operator, force: bool = False
    ) -> Deferred[ActionResult]:
        self.calls.append(("retry", None if ids is None else tuple(ids), where, to, operator, force))
        chosen = self._match(where) if ids is None else [e for e in self.dead if e.entry_id in ids]
        return succeed(ActionResult(changed=tuple(e.entry_id for e in chosen)))

    def purge(self, ids: Sequence[int] | None, where: DeadFilter | None, operator: Operator) -> Deferred[ActionResult]:
        self.calls.append(("purge", None if ids is None else tuple(ids), where, operator))
        chosen = self._match(where) if ids is None else [e for e in self.dead if e.entry_id in ids]
        return succeed(ActionResult(changed=tuple(e.entry_id for e in chosen)))

    def pause(self, destination: str, paused: bool, operator: Operator) -> Deferred[None]:
        self.calls.append(("pause", destination, paused, operator))
        (self.paused.add if paused else self.paused.discard)(destination)
        return succeed(None)

    def reload(self, operator: Operator) -> Deferred[bool]:
        self.calls.append(("reload", operator))
        return succeed(True)

    def audit(self, event: str | None, ae: str | None, before: str | None, limit: int = 100) -> Deferred[AuditPage]:
        self.calls.append(("audit", event, ae, before))
        record = AuditRecordView("2027-01-15T08:00:00Z", "User Authentication", "0", ("MODALITY",), "console sign-in accepted", {})
        return succeed(AuditPage(self.node, (record,), None))

    def check(self, path: str, calling_ae_title: str = "", called_ae_title: str = "") -> Deferred[RuleCheck]:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:
            data = b""
        self.checked.append((path, data))
        return succeed(RuleCheck(self.report))

    def spool_file(self, instance_id: str) -> Deferred[str]:
        if instance_id not in self.spooled:
            return fail(KeyError(instance_id))
        return succeed(self.spooled[instance_id])

    def destinations(self) -> tuple[str, ...]:
        return ("pacs", "archive")

    def routes(self) -> tuple[Any, ...]:
        return (RouteConfig("ct", ("pacs",), origin="gateway.yaml:12"), RouteConfig("all", ("archive",)))


# -- a small HTML reader and an in-memory client for the page tests -------------------------

from html.parser import HTMLParser  # noqa: E402
from urllib.parse import urlencode  # noqa: E402

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.internet.error import ConnectionDone  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

_VOID = {"input", "br", "meta", "link", "img", "hr", "col", "area", "base", "source", "wbr"}


class Node:
    """An element of a parsed page."""

    def __init__(self, tag: str, attrs: dict[str, str], parent: "Node | None") -> None:
        self.tag = tag
        self.attrs = attrs
        self.parent = parent
        self.children: list[Any] = []

    def text(self) -> str:
        """The element's text, whitespace collapsed."""
        parts: list[str] = []

        def walk(node: Node) -> None:
            for child in node.children:
                if isinstance(child, Node):
                    walk(child)
                else:
                    parts.append(child)

        walk(self)
        return " ".join("".join(parts).split())

    def all(self, tag: str | None = None, **attrs: str) -> list["Node"]:
        """Descendants with this tag and these attributes (``class_`` matches one class)."""
        found: list[Node] = []

        def walk(node: Node) -> None:
            for child in node.children:
                if isinstance(child, Node):
                    if _matches(child, tag, attrs):
                        found.append(child)
                    walk(child)

        walk(self)
        return found

    def one(self, tag: str | None = None, **attrs: str) -> "Node":
        """The only descendant matching (AssertionError otherwise)."""
        found = self.all(tag, **attrs)
        assert len(found) == 1, f"{len(found)} elements match {tag} {attrs}"
        return found[0]

    def by_id(self, ident: str) -> "Node | None":
        """The element with this id, or ``None``."""
        found = self.all(id=ident)
        return found[0] if found else None


def _matches(node: Node, tag: str | None, attrs: dict[str, str]) -> bool:
    if tag is not None and node.tag != tag:
        return False
    for key, value in attrs.items():
        if key == "class_":
            if value not in node.attrs.get("class", "").split():
                return False
        elif node.attrs.get(key.replace("_", "-")) != value:
            return False
    return True


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: (v if v is not None else "") for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in _VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Node(tag, {k: (v if v is not None else "") for k, v in attrs}, self.current))

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse_html(body: bytes) -> Node:
    """The document of a page."""
    builder = _Builder()
    builder.feed(body.decode("utf-8"))
    builder.close()
    return builder.root


class Response:
    """One answer: status, headers (lower-case names, lists), body."""

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers.setdefault(name.strip().lower(), []).append(value.strip())

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def page(self) -> Node:
        return parse_html(self.body)


from twisted.internet.interfaces import ISSLTransport  # noqa: E402
from zope.interface import implementer  # noqa: E402


@implementer(ISSLTransport)
class TLSStringTransport(StringTransport):
    """A StringTransport the channel takes for TLS (``request.isSecure()`` is true)."""

    def getPeerCertificate(self) -> None:
        return None

    def setTcpNoDelay(self, enabled: bool) -> None:
        """(ISSLTransport is an ITCPTransport; nothing to set in memory.)"""


class Client:
    """Sends HTTP/1.0 requests as bytes through a real site's channel (one connection each) and keeps cookies."""

    def __init__(self, site: Any, host: str = "127.0.0.1", peer: str = "127.0.0.1", secure: bool = False) -> None:
        self.site = site
        self.host = host
        self.peer = peer
        self.secure = secure
        self.cookies: dict[str, str] = {}

    def raw(self, data: bytes) -> Response:
        channel = self.site.buildProtocol(IPv4Address("TCP", self.peer, 40000))
        kind = TLSStringTransport if self.secure else StringTransport
        transport = kind(peerAddress=IPv4Address("TCP", self.peer, 40000))
        channel.makeConnection(transport)
        channel.dataReceived(data)
        response = Response(transport.value())
        # As a reactor does: a Failure (a request still waiting has notifyFinish Deferreds to errback).
        channel.connectionLost(Failure(ConnectionDone()))
        for value in response.headers.get("set-cookie", []):
            pair = value.split(";", 1)[0]
            name, _, cookie = pair.partition("=")
            if "max-age=0" in value.lower() or cookie == "deleted":
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = cookie
        return response

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Response:
        lines = [f"{method} {path} HTTP/1.0", f"Host: {self.host}"]
        if self.cookies:
            lines.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        return self.raw(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def get(self, path: str, **headers: str) -> Response:
        return self.request("GET", path, headers=headers)

    def post(self, path: str, fields: Any, headers: dict[str, str] | None = None) -> Response:
        body = urlencode(fields, doseq=True).encode("ascii")
        return self.request("POST", path, body, {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})

    def csrf(self, path: str = "/console/") -> str:
        """The CSRF token of a page's forms."""
        page = self.get(path).page
        return page.all("input", name="csrf")[0].attrs["value"]

    def sign_in(self, user: str, password: str) -> Response:
        token = self.get("/console/login").page.one("form", id="login").one("input", name="csrf").attrs["value"]
        return self.post("/console/login", {"user": user, "password": password, "csrf": token})


def multipart(fields: dict[str, str], file_data: bytes | None, boundary: str = "----gwtestboundary") -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type."""
    out = b""
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode("utf-8")
    if file_data is not None:
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.dcm"\r\n'
                "Content-Type: application/dicom\r\n\r\n").encode("ascii") + file_data + b"\r\n"
    out += f"--{boundary}--\r\n".encode("ascii")
    return out, f"multipart/form-data; boundary={boundary}"
