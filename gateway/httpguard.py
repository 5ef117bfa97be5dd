"""The HTTP port's protections: limits enforced in the channel, before any resource runs (issue 11).

:class:`GuardedChannel` refuses a body above :data:`MAX_BODY_BYTES` with 413
from its ``Content-Length`` before one byte of it is read (and cuts a chunked
body at the same size); :class:`GuardedRequest` keeps bodies in memory,
never in a temporary file; :class:`GatewaySite` keeps at most
:data:`MAX_CONNECTIONS` connections open at once; a request that has not
arrived whole within :data:`REQUEST_DEADLINE` seconds is closed. Nothing
here knows the gateway: :mod:`gateway.http` builds the site over the
resources of :mod:`gateway.httpresources`.

One request is the exception to "bodies in memory" (issue 18): the
console's rule tester (``POST /console/rules``, :attr:`GatewaySite.upload_path`)
takes a DICOM file of up to :attr:`GatewaySite.upload_limit` bytes (64 MiB by
default), so its body is streamed to an unnamed temporary file under
:attr:`GatewaySite.upload_folder` (in the spool; the file disappears when
closed) and refused with 413 above that limit, from its ``Content-Length`` or
as it grows; twisted.web's own form parsing (which would read it whole into
memory) is turned off for it, :mod:`gateway.console.upload` reads it.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

__all__ = [
    "GuardedChannel",
    "GuardedRequest",
    "GatewaySite",
    "MAX_BODY_BYTES",
    "MAX_CONNECTIONS",
    "REQUEST_DEADLINE",
    "IDLE_TIMEOUT",
    "MAX_JSON_DEPTH",
    "UPLOAD_DEADLINE",
]

#: Request bodies above this are refused with 413 (the API's bodies are a few bytes).
MAX_BODY_BYTES = 64 * 1024

#: Connections open at once on the HTTP port; more are closed at once.
MAX_CONNECTIONS = 64

#: Seconds a request may take to arrive whole (its headers, then its body).
REQUEST_DEADLINE = 10.0

#: Seconds an open connection may sit idle between requests' bytes (twisted.web's default is 12 h).
IDLE_TIMEOUT = 60.0

#: Seconds the console's rule-tester upload may take to arrive (issue 18).
UPLOAD_DEADLINE = 300.0

#: JSON bodies nested deeper than this are refused before parsing (the parser recurses).
MAX_JSON_DEPTH = 32


def _json_bytes(code: int, reason: str, message: str) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response with a JSON error body."""
    body = json.dumps({"error": message}).encode("utf-8") + b"\n"
    head = (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedRequest(Request):
    """A request whose body is kept in memory and cut at :data:`MAX_BODY_BYTES`.

    twisted.web writes a body of 100 kB or more, or of unknown length, to a
    temporary file before any resource sees it; here the body always goes to
    memory, and the channel has refused it before it could grow past the limit.
    """

    _upload = False

    def gotLength(self, length: int | None) -> None:
        """Keep the body in memory, whatever its announced length (the channel refused a large one).

        The console's upload (:meth:`GuardedChannel.upload_limit`) goes to a
        temporary file under the spool instead.

        :param length: the ``Content-Length``, or ``None`` (chunked).
        """
        channel = self.channel
        if isinstance(channel, GuardedChannel) and channel.upload_limit() is not None:
            folder = channel.site.upload_folder
            os.makedirs(folder, mode=0o700, exist_ok=True)
            self.content = tempfile.TemporaryFile(dir=folder, prefix="console-body-")
            self._upload = True
            # twisted.web would read a multipart form whole into memory: gateway.console.upload streams it.
            self._parsePOSTFormSubmission = False
            return
        self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        """Store a piece of body; past the limit, the channel refuses the request (413).

        :param data: the piece.
        """
        if self.content is None:
            return  # refused at the headers: nothing is stored
        channel = self.channel
        limit = MAX_BODY_BYTES
        if self._upload and isinstance(channel, GuardedChannel):
            limit = channel.site.upload_limit
        if self.content.tell() + len(data) > limit:
            if isinstance(channel, GuardedChannel):
                channel.refuse(413, "Content Too Large", f"request body larger than {limit} bytes")
            self.content.close()
            self.content = None
            return
        self.content.write(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        """Close (and so delete) an upload's temporary file when the client goes away."""
        if self._upload and self.content is not None and not self.finished:
            self.content.close()
        super().connectionLost(reason)

    def finish(self) -> None:
        """Answered: an upload's temporary file is closed (an unnamed file: closing deletes it)."""
        super().finish()
        if self._upload and self.content is not None:
            self.content.close()


class GuardedChannel(HTTPChannel):
    """An HTTP/1.1 channel with the admin port's limits (issue 11).

    * a ``Content-Length`` above :data:`MAX_BODY_BYTES` is answered 413
      when the headers end, before any of the body is read or stored;
    * a chunked body is cut at the same size (:class:`GuardedRequest`);
    * past :attr:`GatewaySite.max_connections` open connections, a new
      one is answered 503 and closed at once;
    * a request that has not arrived whole within
      :attr:`GatewaySite.request_deadline` seconds is closed.

    A refused request never reaches a resource: once refused, the channel
    ignores everything the client still sends while the connection closes.
    """

    site: "GatewaySite"

    def __init__(self) -> None:
        super().__init__()
        self._refused = False
        self._deadline: IDelayedCall | None = None
        self._counted = False

    def connectionMade(self) -> None:
        """Count the connection (refusing it over the cap) and start the request deadline."""
        super().connectionMade()
        site = self.site
        if len(site.channels) >= site.max_connections:
            site.refused_connections += 1
            self.refuse(503, "Service Unavailable", "too many connections")
            return
        site.channels.add(self)
        self._counted = True
        self._start_deadline()

    def _start_deadline(self) -> None:
        self._cancel_deadline()
        if self.site.request_deadline > 0:
            self._deadline = self.callLater(self.site.request_deadline, self._deadline_passed)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.transport is not None:
            self._refused = True
            self.transport.abortConnection()

    def refuse(self, code: int, reason: str, message: str) -> None:
        """Answer ``code`` with a JSON error and close; ignore whatever the client still sends.

        :param code: the status.
        :param reason: its reason phrase.
        :param message: the error in the JSON body.
        """
        if self._refused:
            return
        self._refused = True
        self._cancel_deadline()
        if self.transport is not None:
            self.transport.write(_json_bytes(code, reason, message))
            self.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        """Parse, unless the request was refused."""
        if self._refused:
            return
        super().dataReceived(data)

    def upload_limit(self) -> int | None:
        """The body limit of the request being read when it is the console's upload, else ``None``.

        Read while its headers arrive (the request line is known, the body not yet).
        """
        site = self.site
        command = getattr(self, "_command", None)
        path = getattr(self, "_path", None)
        if not site.upload_path or command != b"POST" or path is None:
            return None
        if path.split(b"?", 1)[0].rstrip(b"/") != site.upload_path:
            return None
        return site.upload_limit

    def allHeadersReceived(self) -> None:
        """Refuse a body announced larger than the limit before reading any of it (413)."""
        upload = self.upload_limit()
        limit = upload if upload is not None else MAX_BODY_BYTES
        if self.length is not None and self.length > limit:
            self.refuse(413, "Content Too Large", f"request body larger than {limit} bytes")
            return
        if upload is not None:
            gate = self.site.upload_gate
            request = self.requests[-1]
            request.parseCookies()  # (twisted.web parses them next too; it only sets a dict's keys)
            verdict = gate(request) if gate is not None else True
            if isinstance(verdict, str):
                # Issue 18 (review): as many uploads as the console allows are arriving already (each may
                # take up to twice the limit in the spool): refused before one byte is written.
                self.refuse(503, "Service Unavailable", verdict)
                return
            if not verdict:
                # No signed-in console session: refused before one byte of the body is written to the spool.
                self.refuse(403, "Forbidden", "sign in to the console first")
                return
            # A file of up to the limit may take longer to arrive than a few-byte API request.
            if self.site.request_deadline > 0:
                self._cancel_deadline()
                self._deadline = self.callLater(max(self.site.request_deadline, UPLOAD_DEADLINE), self._deadline_passed)
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        """Hand the request to the site, unless it was refused; it has arrived, stop its deadline."""
        if self._refused:
            return
        self._cancel_deadline()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        """The response is sent; a kept-alive connection gets a new deadline for its next request.

        The deadline starts before the channel replays any pipelined bytes,
        so a next request already received whole cancels it at once.
        """
        if self.persistent and not self._refused:
            self._start_deadline()
        super().requestDone(request)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        """Forget the connection."""
        self._cancel_deadline()
        if self._counted:
            self.site.channels.discard(self)
            self._counted = False
        super().connectionLost(reason)


class GatewaySite(Site):
    """The HTTP site: :class:`GuardedChannel` connections, no access log.

    :param resource: the root resource.
    :param reactor: time for the deadlines and timeouts.
    :param max_connections: connections open at once.
    :param request_deadline: seconds a request may take to arrive.
    """

    protocol = GuardedChannel  # type: ignore[assignment]
    requestFactory = GuardedRequest

    def __init__(
        self,
        resource: Resource,
        reactor: Any = None,
        max_connections: int = MAX_CONNECTIONS,
        request_deadline: float = REQUEST_DEADLINE,
    ) -> None:
        super().__init__(resource, reactor=reactor, timeout=IDLE_TIMEOUT)
        self.max_connections = max_connections
        self.request_deadline = request_deadline
        self.channels: set[GuardedChannel] = set()
        #: The path whose POST body is streamed to a file (the console's rule tester; ``b""``: none).
        self.upload_path = b""
        #: The most bytes of that body.
        self.upload_limit = 0
        #: Where that body is written (under the spool).
        self.upload_folder = ""
        #: Whether the headers of an upload may send its body (a signed-in session); ``None``: any.
        #: It answers True, False (403) or the words of a 503 (too many uploads at once).
        self.upload_gate: Any = None
        #: Connections closed at once because :attr:`max_connections` were open.
        self.refused_connections = 0

    def log(self, request: Request) -> None:
        """No access log (a scrape every few seconds would flood the log)."""


# -- helpers -----------------------------------------------------------------------------
