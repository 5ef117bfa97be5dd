"""The STOW-RS inbound service: ``POST /studies`` into the spool, with the custody of a C-STORE (issue 17).

Theory of operation
-------------------
The service is a twisted.web site of its own (:class:`StowSite`), on its own
port(s) (``dicomweb.listen``), never the admin port. Its channel
(:class:`StowChannel`) is the admin port's :class:`~gateway.httpguard.GuardedChannel`
(connection cap, deadline, refusals that close) with two differences: the
deadline covers the request's *headers* only (``dicomweb.header_timeout``;
a large body then has the site's idle timeout between reads), and the body is
never stored by twisted.web. Instead :class:`StowRequest` decides at once,
when the headers are complete and before a ``100 Continue`` is sent, whether
the request can be taken (method and path, authentication, free space, media
type, announced size: 405/404, 401, 503, 415/400, 413, answered at once with
``Connection: close``), then streams each body chunk through the sans-IO
parser (:mod:`gateway.dicomweb.multipart_in`) into the spool.

Each part is one instance (PS3.18 10.5.1: a PS3.10 file). Its preamble,
``DICM`` and File Meta Information (PS3.10 7.1) are read first (bounded,
:data:`MAX_META_BYTES`), for the SOP Class, SOP Instance and Transfer Syntax
UIDs a C-STORE-RQ would have given; then the data set bytes go to a
:class:`~gateway.spool.SpoolWriter` exactly as a C-STORE's fragments do (the
same structure walk and limits), and at the part's end the gateway's
``admit`` (:meth:`gateway.intake.Intake.take`: durable write, routes, journal
commit, duplicate window) gives its :class:`~gateway.intake.Admission`. A part
that is not a PS3.10 file fails alone with 0xC000 (PS3.18 Table I.2-2
"Cannot understand"); an instance of another study than ``POST
/studies/{StudyInstanceUID}`` names fails alone with 0xA900 (PS3.18 Table
10.5.3-1 names "Study Instance UID mismatch" as a conflict; Table I.2-2's A9xx,
"Data Set does not match", is the class of failure reasons it belongs to) and
its sealed file is removed, never journaled.

When the spool's writes lag (:attr:`~gateway.spool.SpoolWriter.backlog`
above :data:`PAUSE_BACKLOG`), the client's transport is paused and resumed
once the lane has drained (TCP back-pressure): memory per request stays at
a few MiB whatever the body's size, and the body is never held whole in
memory or in a temporary file.

The response (:mod:`gateway.dicomweb.reply`) is written once every part's
admission has fired, i.e. once every accepted instance is durable and
journaled (HARDENING decision 10). A client that disconnects before then
gets nothing; what was admitted stays, and a re-post of the same instances
is accepted and not queued twice within the duplicate window.

Every request is audited (DICOM Instances Transferred, PS3.15 A.5.3.7, with
the client's name, address and certificate subject; a refused login is a
Security Alert) and counted (``dicom_gateway_dicomweb_*``).
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Callable, Final, Sequence
from urllib.parse import unquote

from prometheus_client import CollectorRegistry, Counter, Histogram
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from gateway.config.schema import DicomWebServiceConfig
from gateway.dicomweb.multipart_in import (
    BodyEnded,
    MultipartError,
    MultipartParser,
    PartData,
    PartEnded,
    PartStarted,
    parse_media_type,
)
from gateway.dicomweb.reply import InstanceOutcome, StoreReply, build_reply, wants_xml
from gateway.dicomweb.tokens import TokenStore
from gateway.dimse.status import Status
from gateway.httpguard import GatewaySite, GuardedChannel
from gateway.spool import InstanceMeta, SpoolError
from gateway.subject import CertificatePattern, NamePattern

__all__ = ["StowChannel", "StowHandler", "StowRequest", "StowService", "StowSite", "dicomweb_service"]

#: PS3.10 7.1: 128-byte preamble + "DICM".
_PREFIX_END: Final = 132

#: The most bytes of a part's File Meta Information group accepted (it is a few hundred in practice).
MAX_META_BYTES: Final = 64 * 1024

#: Pause reading the client when this many bytes wait for the spool's lane; resume at :data:`RESUME_BACKLOG`.
PAUSE_BACKLOG: Final = 4 * 1024 * 1024
RESUME_BACKLOG: Final = 1 * 1024 * 1024

#: Seconds a client is told to wait (``Retry-After``) while the spool is below its free-space floor.
RETRY_AFTER_SECONDS: Final = 60

#: The routing context's ``listener`` for instances that came by STOW-RS.
LISTENER_NAME: Final = "dicomweb"

_UID_META: Final = {0x00020002: "sop_class_uid", 0x00020003: "sop_instance_uid", 0x00020010: "transfer_syntax_uid"}

_REASONS: Final = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Client:
    """Who is posting.

    :ivar name: the authenticated client's name (token or certificate rule).
    :ivar address: the client's IP address.
    :ivar port: its TCP port.
    :ivar certificate_subject: its verified certificate's subject (TLS), or "".
    """

    name: str
    address: str
    port: int = 0
    certificate_subject: str = ""


class StowMetrics:
    """The service's metrics (``dicom_gateway_dicomweb_*``), in the gateway's registry.

    :param registry: where to register them.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "dicom_gateway_dicomweb_requests",
            "STOW-RS requests answered, by HTTP status code.",
            ["code"],
            registry=registry,
        )
        self.received_bytes = Counter(
            "dicom_gateway_dicomweb_received_bytes",
            "Request body bytes received by the STOW-RS service.",
            registry=registry,
        )
        self.instances = Counter(
            "dicom_gateway_dicomweb_instances",
            "Instances (parts) of STOW-RS requests, by outcome (stored or failed).",
            ["outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "dicom_gateway_dicomweb_request_seconds",
            "Seconds from a STOW-RS request's headers to its response.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=registry,
        )


def _meta_value(raw: bytes) -> str:
    return raw.decode("latin-1").rstrip("\x00 ")


def read_part10_prefix(data: bytes) -> tuple[dict[str, str], int] | None | str:
    """Read a PS3.10 file's preamble, ``DICM`` and File Meta Information from its first bytes.

    :param data: the bytes of the part received so far.
    :returns: ``None`` when more bytes are needed; a message when the bytes
        are not a PS3.10 file; else the meta's UIDs and the offset where the
        data set starts.
    """
    if len(data) < _PREFIX_END:
        return None
    if data[128:132] != b"DICM":
        return "not a DICOM PS3.10 file (no DICM prefix)"
    offset = _PREFIX_END
    values: dict[str, str] = {}
    # PS3.10 7.1: the group (0002,xxxx), Explicit VR Little Endian; it ends at the first other group.
    while True:
        if offset - _PREFIX_END > MAX_META_BYTES:
            return f"file meta information longer than {MAX_META_BYTES} bytes"
        if len(data) < offset + 8:
            return None
        group, element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            break
        vr = data[offset + 4 : offset + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"):
            if len(data) < offset + 12:
                return None
            (length,) = struct.unpack_from("<I", data, offset + 8)
            start = offset + 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            start = offset + 8
        if length == 0xFFFFFFFF or length > MAX_META_BYTES:
            return "file meta information element with an undefined or huge length"
        if len(data) < start + length:
            return None
        key = _UID_META.get(0x00020000 | element)
        if key is not None:
            values[key] = _meta_value(data[start : start + length])
        offset = start + length
    for key in ("sop_class_uid", "sop_instance_uid", "transfer_syntax_uid"):
        if not values.get(key):
            return f"file meta information without {key.replace('_', ' ')}"
    return values, offset


class _Part:
    """One part of a request: its head (PS3.10 prefix) read, then its data set streamed into the spool."""

    def __init__(self, ingest: "_Ingest", content_type: str | None) -> None:
        self._ingest = ingest
        self._head = bytearray()
        self._writer: Any = None
        self._failed: InstanceOutcome | None = None
        self._uids: dict[str, str] = {}
        if content_type is not None:
            try:
                media, _ = parse_media_type(content_type)
            except MultipartError:
                media = content_type
            if media != "application/dicom":
                self._failed = InstanceOutcome("", "", Status.CANNOT_UNDERSTAND, f"part of type {media[:60]!r} is not application/dicom")

    def data(self, chunk: bytes) -> None:
        """The next bytes of the part."""
        if self._failed is not None:
            return
        if self._writer is not None:
            self._writer.write(chunk)
            self._ingest.written(self._writer)
            return
        self._head += chunk
        found = read_part10_prefix(bytes(self._head))
        if found is None:
            if len(self._head) > MAX_META_BYTES + _PREFIX_END:
                self._fail("file meta information too long")
            return
        if isinstance(found, str):
            self._fail(found)
            return
        self._uids, offset = found
        try:
            self._writer = self._ingest.begin(self._uids)
        except SpoolError as error:
            self._failed = InstanceOutcome(
                self._uids["sop_class_uid"], self._uids["sop_instance_uid"], error.status, error.comment
            )
            self._head.clear()
            return
        rest = bytes(self._head[offset:])
        self._head.clear()
        if rest:
            self._writer.write(rest)
            self._ingest.written(self._writer)

    def _fail(self, message: str) -> None:
        # PS3.18 Table I.2-2: Cxxx "Cannot understand".
        self._failed = InstanceOutcome("", "", Status.CANNOT_UNDERSTAND, message)
        self._head.clear()

    def end(self) -> "Deferred[InstanceOutcome]":
        """The part is complete: its outcome, once the instance is durable and journaled (or refused)."""
        if self._failed is None and self._writer is None:
            found = read_part10_prefix(bytes(self._head))
            self._fail(found if isinstance(found, str) else "not a DICOM PS3.10 file (shorter than its preamble and meta)")
        if self._failed is not None:
            return succeed(self._failed)
        writer, self._writer = self._writer, None
        return self._ingest.admit(writer, self._uids)

    def abort(self) -> None:
        """The request was cut: the instance being received is discarded (never acknowledged)."""
        if self._writer is not None:
            self._writer.discard()
            self._writer = None


class _Ingest:
    """One request's body: parts into the spool, outcomes collected in order."""

    def __init__(self, handler: "StowHandler", request: "StowRequest", boundary: bytes | None, study: str, client: Client, info: Any) -> None:
        self._handler = handler
        self._request = request
        self._parser = MultipartParser(boundary) if boundary is not None else None
        self._study = study
        self.client = client
        self._info = info
        self._part: _Part | None = None if boundary is not None else _Part(self, None)
        self.outcomes: list["Deferred[InstanceOutcome]"] = []
        self._paused = False
        self.done_receiving = False

    @property
    def parts(self) -> int:
        """Parts started so far."""
        return self._parser.parts if self._parser is not None else 1

    def feed(self, data: bytes) -> None:
        """The next chunk of the body.

        :raises MultipartError: when the body is not valid multipart.
        """
        if self._parser is None:
            assert self._part is not None
            self._part.data(data)
            return
        for event in self._parser.feed(data):
            if isinstance(event, PartData):
                assert self._part is not None
                self._part.data(event.data)
            elif isinstance(event, PartStarted):
                self._part = _Part(self, event.header("content-type"))
            elif isinstance(event, PartEnded):
                assert self._part is not None
                part, self._part = self._part, None
                self.outcomes.append(part.end())
            elif isinstance(event, BodyEnded):
                pass

    def end(self) -> None:
        """The body is complete.

        :raises MultipartError: when it is not valid multipart, or has no part.
        """
        if self._parser is None:
            assert self._part is not None
            part, self._part = self._part, None
            self.outcomes.append(part.end())
            return
        self._parser.end()
        if not self._parser.parts:
            raise MultipartError("the body has no part")

    def abort(self) -> None:
        """Discard the part being received (the request was cut or refused)."""
        if self._part is not None:
            self._part.abort()
            self._part = None

    def begin(self, uids: dict[str, str]) -> Any:
        """Open a spool writer for an instance whose meta says ``uids``."""
        return self._handler.spool().begin(
            InstanceMeta(
                sop_class_uid=uids["sop_class_uid"],
                sop_instance_uid=uids["sop_instance_uid"],
                transfer_syntax_uid=uids["transfer_syntax_uid"],
                calling_ae_title="",
                called_ae_title=self._info.called_ae_title,
            )
        )

    def written(self, writer: Any) -> None:
        """Pause the client while the spool's lane lags (TCP back-pressure)."""
        if self._paused or writer.backlog <= PAUSE_BACKLOG:
            return
        transport = self._request.channel.transport if self._request.channel is not None else None
        if transport is None:
            return
        self._paused = True
        transport.pauseProducing()
        d = self._handler.blocking.run(writer.wait_drained, RESUME_BACKLOG)

        def resume(_: object) -> None:
            self._paused = False
            channel = self._request.channel
            if channel is not None and channel.transport is not None and not self.done_receiving:
                channel.transport.resumeProducing()

        d.addBoth(resume)

    def admit(self, writer: Any, uids: dict[str, str]) -> "Deferred[InstanceOutcome]":
        """Hand a complete instance to the intake; its outcome once durable and journaled (or refused)."""
        seen: dict[str, str] = {}
        study = self._study

        def refuse(summary: Any) -> Any:
            from gateway.intake import Admission

            seen["study"] = summary.study_instance_uid or ""
            seen["series"] = summary.series_instance_uid or ""
            if study and (summary.study_instance_uid or "") != study:
                # PS3.18 Table 10.5.3-1 names "Study Instance UID mismatch" a conflict (409) but
                # Table I.2-2 has no code of its own for it ("implementation specific ... codes shall
                # be defined in the conformance statement"): A900, its "Data Set does not match" class.
                return Admission(Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "Study Instance UID differs from the request's")
            return None

        d = self._handler.admit(writer, self._info, refuse)

        def outcome(admission: Any) -> InstanceOutcome:
            summary = admission.spooled.summary if admission.spooled is not None else None
            return InstanceOutcome(
                uids["sop_class_uid"],
                uids["sop_instance_uid"],
                int(admission.status),
                admission.comment,
                study_instance_uid=(summary.study_instance_uid if summary is not None else seen.get("study", "")) or "",
                series_instance_uid=(summary.series_instance_uid if summary is not None else seen.get("series", "")) or "",
            )

        def failed(failure: Failure) -> InstanceOutcome:
            self._handler.log.failure("admitting a STOW-RS instance failed unexpectedly", failure)
            return InstanceOutcome(uids["sop_class_uid"], uids["sop_instance_uid"], Status.OUT_OF_RESOURCES, "internal error")

        d.addCallbacks(outcome, failed)
        return d


def _split_path(raw: bytes) -> tuple[str, ...] | None:
    """The path's segments (query removed), ``None`` for a path that cannot be decoded."""
    path = raw.split(b"?", 1)[0]
    try:
        text = unquote(path.decode("ascii"), errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None
    return tuple(segment for segment in text.split("/") if segment)


class StowHandler:
    """What the requests of every address share: configuration, authentication, spool, intake, audit, metrics.

    :param config: returns the ``dicomweb`` section in force (it changes on reload).
    :param ae_title: returns the gateway's AE title (the instances' ``called_ae_title``).
    :param spool: returns the spool.
    :param admit: ``admit(writer, info, refuse)``: the intake's take (durable, routed, journaled).
    :param space_low: whether the spool is below its free-space floor.
    :param blocking: runs the back-pressure waits off the reactor.
    :param clock: the reactor (time for latency and the tokens file's re-reads).
    :param metrics: the service's metrics.
    :param audit: the gateway's audit trail (:class:`gateway.audit.Audit`), or ``None``.
    """

    log = Logger(namespace="gateway.dicomweb")

    def __init__(
        self,
        *,
        config: Callable[[], DicomWebServiceConfig],
        ae_title: Callable[[], str],
        spool: Callable[[], Any],
        admit: Callable[[Any, Any, Any], "Deferred[Any]"],
        space_low: Callable[[], bool],
        blocking: Any,
        clock: Any,
        metrics: StowMetrics,
        audit: Any = None,
    ) -> None:
        self.config = config
        self.ae_title = ae_title
        self.spool = spool
        self.admit = admit
        self.space_low = space_low
        self.blocking = blocking
        self.clock = clock
        self.metrics = metrics
        self.audit = audit
        self._store: TokenStore | None = None
        self._ids = itertools.count(1)

    # -- authentication ------------------------------------------------------------------

    def _tokens(self) -> TokenStore | None:
        auth = self.config().auth
        if not auth.tokens_file:
            return None
        if self._store is None or self._store.path != auth.tokens_file:
            self._store = TokenStore(auth.tokens_file, self.clock.seconds, auth.tokens)
        return self._store

    def authenticate(self, authorization: bytes | None, transport: Any) -> tuple[str | None, str]:
        """The client's name, or ``None``; and its certificate subject ("" without one).

        A bearer token (RFC 6750 2.1) names the client through the tokens
        file; a verified client certificate through ``auth.certificates``
        (the DICOM listeners' subject patterns, :mod:`gateway.subject`). With
        ``require: all`` both must name a client (the token's name is used).
        """
        from gateway.tls import transport_peer_identity

        auth = self.config().auth
        by_token: str | None = None
        if authorization is not None:
            scheme, _, credentials = authorization.strip().partition(b" ")
            store = self._tokens()
            if scheme.lower() == b"bearer" and store is not None and credentials.strip():
                try:
                    by_token = store.authenticate(credentials.strip().decode("ascii"))
                except UnicodeDecodeError:
                    by_token = None
        by_certificate: str | None = None
        subject = ""
        identity = transport_peer_identity(transport) if auth.certificates else None
        if identity is not None:
            subject = identity.subject
            for rule in auth.certificates:
                pattern = CertificatePattern(
                    NamePattern.parse(rule.subject), NamePattern.parse(rule.issuer) if rule.issuer else None
                )
                if pattern.matches(identity.subject, identity.issuer):
                    by_certificate = rule.name
                    break
        if auth.require == "all":
            return (by_token if by_token is not None and by_certificate is not None else None), subject
        return (by_token if by_token is not None else by_certificate), subject

    # -- the request's start ---------------------------------------------------------------

    def begin(self, request: "StowRequest", length: int | None) -> tuple[int, str, dict[bytes, bytes]] | _Ingest:
        """Take a request whose headers are complete, or say how to refuse it.

        :returns: the :class:`_Ingest` that will receive the body, or ``(status, message, headers)``.
        """
        from gateway.receive import AssociationInfo

        config = self.config()
        channel = request.channel
        command = getattr(channel, "_command", b"")
        segments = _split_path(getattr(channel, "_path", b"/"))
        if segments is None or not segments or segments[0] != "studies" or len(segments) > 2:
            return 404, "STOW-RS takes POST /studies and POST /studies/{StudyInstanceUID}", {}
        if command != b"POST":
            return 405, "STOW-RS takes POST only", {b"Allow": b"POST"}
        peer = channel.transport.getPeer() if channel.transport is not None else None
        address = str(getattr(peer, "host", ""))
        port = int(getattr(peer, "port", 0) or 0)
        name, subject = self.authenticate(request.getHeader(b"authorization"), channel.transport)
        if name is None:
            self._audit_refused(address, subject)
            return 401, "authentication required: a bearer token or a client certificate the service knows", {
                b"WWW-Authenticate": b'Bearer realm="dicom-gateway STOW-RS"'
            }
        if self.space_low():
            return 503, "the gateway's spool is below its free-space floor; retry later", {
                b"Retry-After": str(RETRY_AFTER_SECONDS).encode("ascii")
            }
        content_type = request.getHeader(b"content-type")
        if content_type is None:
            return 415, 'Content-Type is missing; expected multipart/related; type="application/dicom"', {}
        try:
            media, params = parse_media_type(content_type.decode("latin-1"))
        except MultipartError as error:
            return 415, str(error), {}
        boundary: bytes | None = None
        if media == "multipart/related":
            # PS3.18 10.5.1.2 / RFC 2387 3.1: type="application/dicom" (quoted or not).
            part_type = params.get("type", "application/dicom").lower()
            if part_type != "application/dicom":
                return 415, (
                    f'multipart/related of type {part_type[:60]!r} is not supported; only type="application/dicom" '
                    "(PS3.18 10.5.1.2); metadata with bulk data (application/dicom+json, +xml) is not implemented"
                ), {}
            if "boundary" not in params:
                return 400, "multipart/related without a boundary parameter", {}
            boundary = params["boundary"].encode("latin-1")
        elif media != "application/dicom":
            return 415, (
                f"media type {media[:60]!r} is not supported; send multipart/related; "
                'type="application/dicom" (or a single application/dicom instance)'
            ), {}
        if length is not None and length > config.max_request_size:
            return 413, f"request body larger than dicomweb.max_request_size ({config.max_request_size} bytes)", {}
        info = AssociationInfo(
            assoc_id=f"web{next(self._ids)}",
            peer_address=f"{address}:{port}",
            calling_ae_title=name,
            called_ae_title=self.ae_title(),
            listener=LISTENER_NAME,
            contexts={},
            listener_port=int(getattr(channel.transport.getHost(), "port", 0) or 0) if channel.transport else 0,
            tls_subject=subject,
            origin="dicomweb",
        )
        try:
            return _Ingest(
                self, request, boundary, segments[1] if len(segments) == 2 else "", Client(name, address, port, subject), info
            )
        except MultipartError as error:
            return 400, str(error), {}

    # -- the audit trail ---------------------------------------------------------------------

    def _audit_refused(self, address: str, subject: str) -> None:
        if self.audit is None:
            return
        from gateway.audit import SECURITY_ALERT, USE_OF_RESTRICTED_FUNCTION, Outcome, Participant

        self.audit.emit(
            SECURITY_ALERT,
            "E",
            Outcome.MINOR_FAILURE,
            event_type=USE_OF_RESTRICTED_FUNCTION,
            description="STOW-RS request without valid credentials (401)",
            disposition="dicomweb_unauthenticated",
            participants=(Participant(user_id="", network_access_point=address, requestor=True, certificate_subject=subject),),
            extra={"interface": "STOW-RS"},
        )

    def audit_request(self, client: Client, code: int, outcomes: Sequence[InstanceOutcome], received: int) -> None:
        """Record a request answered (DICOM Instances Transferred, PS3.15 A.5.3.7; action C, create)."""
        if self.audit is None:
            return
        from gateway.audit import DESTINATION, INSTANCES_TRANSFERRED, Outcome, Participant, ParticipantObject

        stored = [o for o in outcomes if o.stored]
        studies: dict[str, list[str]] = {}
        for outcome in stored:
            studies.setdefault(outcome.study_instance_uid, []).append(outcome.sop_instance_uid)
        result = Outcome.SUCCESS if code == 200 else (Outcome.MINOR_FAILURE if stored else Outcome.SERIOUS_FAILURE)
        self.audit.emit(
            INSTANCES_TRANSFERRED,
            "C",
            result,
            description=f"STOW-RS {code}: {len(stored)} stored, {len(outcomes) - len(stored)} failed",
            disposition="dicomweb_stored",
            participants=(
                Participant(
                    user_id=client.name,
                    network_access_point=client.address,
                    requestor=True,
                    certificate_subject=client.certificate_subject,
                ),
                self.audit.us("destination") if hasattr(self.audit, "us") else Participant(user_id=self.ae_title(), role=DESTINATION.meaning),
            ),
            objects=tuple(
                ParticipantObject(kind="study", id=study, sop_instance_uids=tuple(uids)) for study, uids in studies.items() if study
            ),
            extra={"interface": "STOW-RS", "http_status": str(code), "bytes": str(received)},
        )


class StowRequest(Request):
    """A STOW-RS request: taken or refused when its headers are complete; its body streamed, never stored."""

    _ingest: _Ingest | None = None
    _started: float = 0.0
    _received: int = 0
    _cut: bool = False

    @property
    def _handler(self) -> StowHandler:
        return self.channel.site.handler  # type: ignore[no-any-return]

    def gotLength(self, length: int | None) -> None:
        """The headers are complete: take the request (the ingest) or refuse it at once.

        :param length: the ``Content-Length``, or ``None`` (chunked).
        """
        self.content = BytesIO()  # twisted.web reads it in requestReceived; the body never goes there
        handler = self._handler
        self._started = handler.clock.seconds()
        try:
            taken = handler.begin(self, length)
        except Exception:
            handler.log.failure("taking a STOW-RS request failed unexpectedly")
            taken = (503, "internal error", {})
        if isinstance(taken, _Ingest):
            self._ingest = taken
            return
        code, message, headers = taken
        self._refuse(code, message, headers)

    def _refuse(self, code: int, message: str, headers: dict[bytes, bytes]) -> None:
        """Answer ``code`` at once and close (the rest of the body is not read)."""
        handler = self._handler
        handler.metrics.requests.labels(code=str(code)).inc()
        handler.metrics.latency.observe(max(0.0, handler.clock.seconds() - self._started))
        peer = self.channel.transport.getPeer() if self.channel is not None and self.channel.transport is not None else None
        handler.log.info(
            "STOW-RS request from {peer} refused {code}: {message}", peer=getattr(peer, "host", "?"), code=code, message=message
        )
        if self._ingest is not None:
            self._ingest.abort()
            self._ingest = None
        channel = self.channel
        if isinstance(channel, StowChannel):
            channel.refuse_with(code, _REASONS.get(code, "Error"), message, headers)

    def handleContentChunk(self, data: bytes) -> None:
        """Stream a piece of the body into the parser and the spool (413 past ``max_request_size``)."""
        ingest = self._ingest
        if ingest is None:
            return
        self._received += len(data)
        handler = self._handler
        handler.metrics.received_bytes.inc(len(data))
        limit = handler.config().max_request_size
        if self._received > limit:
            self._refuse(413, f"request body larger than dicomweb.max_request_size ({limit} bytes)", {})
            return
        try:
            ingest.feed(data)
        except MultipartError as error:
            self._refuse(400, f"not a valid multipart body: {error}", {})

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The whole body has arrived (twisted.web then calls :meth:`process`)."""
        if self._ingest is not None:
            self._ingest.done_receiving = True
        super().requestReceived(command, path, version)

    def process(self) -> None:
        """Wait for every part's admission, then answer (PS3.18 10.5.3)."""
        self.site = self.channel.site
        ingest = self._ingest
        if ingest is None:
            return
        try:
            ingest.end()
        except MultipartError as error:
            self._refuse(400, f"not a valid multipart body: {error}", {})
            return
        d = DeferredList(list(ingest.outcomes), consumeErrors=True)
        d.addCallback(lambda results: [outcome for ok, outcome in results if ok])
        d.addCallback(self._answer, ingest)
        d.addErrback(lambda failure: self._handler.log.failure("answering a STOW-RS request failed", failure))

    def _answer(self, outcomes: list[InstanceOutcome], ingest: _Ingest) -> None:
        handler = self._handler
        config = handler.config()
        segments = _split_path(self.path) or ()
        study = segments[1] if len(segments) == 2 else ""
        reply: StoreReply = build_reply(
            outcomes, xml=wants_xml(_text(self.getHeader(b"accept"))), retrieve_url=config.retrieve_url, study=study
        )
        handler.metrics.requests.labels(code=str(reply.code)).inc()
        handler.metrics.latency.observe(max(0.0, handler.clock.seconds() - self._started))
        for outcome in outcomes:
            handler.metrics.instances.labels(outcome="stored" if outcome.stored else "failed").inc()
            if not outcome.stored:
                handler.log.info(
                    "STOW-RS from {client}: instance {uid} failed 0x{status:04X}: {comment}",
                    client=ingest.client.name,
                    uid=outcome.sop_instance_uid or "(unknown)",
                    status=outcome.status,
                    comment=outcome.comment,
                )
        handler.audit_request(ingest.client, reply.code, outcomes, self._received)
        if self._disconnected or self.channel is None:
            return  # the client left: nobody is answered (what was admitted stays)
        self.setResponseCode(reply.code)
        self.setHeader(b"Content-Type", reply.content_type.encode("ascii"))
        self.setHeader(b"Content-Length", str(len(reply.body)).encode("ascii"))
        self.setHeader(b"Cache-Control", b"no-store")
        self.write(reply.body)
        self.finish()

    def connectionLost(self, reason: Failure) -> None:
        """The client left mid-request: discard the instance being received (earlier ones stay)."""
        if self._ingest is not None and not self._ingest.done_receiving:
            self._ingest.abort()
        super().connectionLost(reason)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


class StowChannel(GuardedChannel):
    """The admin port's guarded channel, for bodies of any size streamed to the request.

    The deadline covers the headers (``dicomweb.header_timeout``); the body
    is bounded by ``dicomweb.max_request_size`` (the request checks it) and
    the site's idle timeout between reads.
    """

    site: "StowSite"

    def allHeadersReceived(self) -> None:
        """Headers complete: stop the deadline, let the request decide, then ``100 Continue`` only if it was taken."""
        self._cancel_deadline()
        req = self.requests[-1]
        req.parseCookies()
        self.persistent = self.checkPersistence(req, self._version)
        req.gotLength(self.length)
        if self._refused:
            return
        expect = req.requestHeaders.getRawHeaders(b"Expect")
        if expect and expect[0].lower() == b"100-continue" and self._version == b"HTTP/1.1":
            self._send100Continue()

    def refuse_with(self, code: int, reason: str, message: str, headers: dict[bytes, bytes]) -> None:
        """Like :meth:`refuse`, with further response headers (``WWW-Authenticate``, ``Retry-After``, ``Allow``)."""
        if self._refused:
            return
        self._refused = True
        self._cancel_deadline()
        if self.transport is None:
            return
        import json

        body = json.dumps({"error": message}).encode("utf-8") + b"\n"
        head = [f"HTTP/1.1 {code} {reason}".encode("ascii"), b"Content-Type: application/json", b"Cache-Control: no-store"]
        head += [name + b": " + value for name, value in headers.items()]
        head += [f"Content-Length: {len(body)}".encode("ascii"), b"Connection: close"]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.loseConnection()


class StowSite(GatewaySite):
    """The STOW-RS site: :class:`StowChannel` connections making :class:`StowRequest` requests.

    :param handler: what the requests share.
    :param reactor: time.
    :param max_connections: connections open at once.
    :param header_timeout: seconds a request's headers may take.
    """

    protocol = StowChannel  # type: ignore[assignment]
    requestFactory = StowRequest  # type: ignore[assignment]

    def __init__(self, handler: StowHandler, reactor: Any, max_connections: int, header_timeout: float) -> None:
        super().__init__(Resource(), reactor=reactor, max_connections=max_connections, request_deadline=header_timeout)
        self.handler = handler
        self.noisy = False


class StowService(Service):
    """Listens on every ``dicomweb.listen`` address (over TLS where configured).

    :param reactor: the reactor.
    :param config: the section at start (the addresses are bound once; a change needs a restart).
    :param handler: what the requests share.
    :param tls: one :class:`gateway.tls.ServerTLS` or ``None`` per address.
    """

    log = Logger(namespace="gateway.dicomweb")

    def __init__(self, reactor: Any, config: DicomWebServiceConfig, handler: StowHandler, tls: Sequence[Any]) -> None:
        self._reactor = reactor
        self.config = config
        self.handler = handler
        self.tls = list(tls)
        self.site = StowSite(handler, reactor, config.max_connections, config.header_timeout)
        self.ports: list[IListeningPort] = []
        self.setName("dicomweb")

    def startService(self) -> None:
        """Bind every address; a failure is logged."""
        super().startService()
        for address, tls in zip(self.config.listen, self.tls):
            cls = TCP6ServerEndpoint if ":" in address.host else TCP4ServerEndpoint
            endpoint = cls(self._reactor, address.port, interface=address.host)
            factory: Any = self.site
            if tls is not None:
                from gateway.tls import TLSListenerFactory

                factory = TLSListenerFactory(tls, self.site, self._reactor, address.tls.handshake_timeout if address.tls else 10.0)
            elif address.host not in ("127.0.0.1", "::1", "localhost"):
                self.log.warn(
                    "the STOW-RS service listens on {host} WITHOUT TLS: tokens and patient data cross the network in clear",
                    host=address.host,
                )
            d = endpoint.listen(factory)
            d.addCallbacks(self._bound, self._failed, errbackArgs=(address,), callbackArgs=(tls is not None,))

    def _bound(self, port: IListeningPort, tls: bool) -> None:
        self.ports.append(port)
        host = port.getHost()
        self.log.info(
            "STOW-RS on {scheme}://{host}:{port}/studies", scheme="https" if tls else "http", host=host.host, port=host.port
        )

    def _failed(self, failure: Failure, address: Any) -> None:
        self.log.error(
            "cannot serve STOW-RS on {host}:{port}: {error}", host=address.host, port=address.port, error=failure.getErrorMessage()
        )

    def reload_tls(self, config: DicomWebServiceConfig | None) -> None:
        """Re-read each HTTPS address's certificate, key and CA (SIGHUP, HARDENING T16), by position.

        New handshakes get the new files; a pair that cannot be used is logged and the old one stays.
        """
        if config is None:
            return
        from gateway.security import server_tls_settings

        for tls, address in zip(self.tls, config.listen):
            if tls is None or address.tls is None:
                continue
            error = tls.reload(server_tls_settings(address.tls))
            if error is None:
                self.log.info("dicomweb {host}:{port}: TLS certificate and key reloaded", host=address.host, port=address.port)
            else:
                self.log.error("dicomweb {host}:{port}: TLS reload refused: {error}", host=address.host, port=address.port, error=error)

    def stopService(self) -> "Deferred[None]":
        """Stop listening (requests in progress finish on their open connections)."""
        super().stopService()
        ports, self.ports = self.ports, []
        return DeferredList([maybeDeferred(p.stopListening) for p in ports]).addCallback(lambda _: None)


def dicomweb_service(reactor: Any, gateway: Any) -> StowService:
    """The STOW-RS service of a :class:`~gateway.service.GatewayService` (``config.dicomweb`` set).

    :param reactor: the reactor.
    :param gateway: the gateway service (its configuration is read per request, so a reload applies).
    :raises gateway.tls.TLSConfigError: an address's ``tls`` names unusable files.
    """
    from gateway.security import server_tls_settings
    from gateway.tls import ServerTLS, key_mode_problem

    config = gateway.config.dicomweb
    assert config is not None
    handler = StowHandler(
        config=lambda: gateway.config.dicomweb or config,
        ae_title=lambda: gateway.config.ae_title,
        spool=lambda: gateway.spool,
        admit=lambda writer, info, refuse: gateway._admit(writer, info, refuse=refuse),
        space_low=gateway.space.low,
        blocking=gateway.blocking,
        clock=reactor,
        metrics=StowMetrics(gateway.metrics.registry),
        audit=gateway.audit,
    )
    tls = []
    for address in config.listen:
        if address.tls is None:
            tls.append(None)
            continue
        problem = key_mode_problem(address.tls.private_key)
        if problem is not None:
            StowService.log.warn("dicomweb: {problem}", problem=problem)
        tls.append(ServerTLS(server_tls_settings(address.tls)))
    return StowService(reactor, config, handler, tls)
