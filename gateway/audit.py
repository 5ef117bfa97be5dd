"""The audit trail: who sent what where, shaped after the PS3.15 A.5.3 audit messages.

Every association (accepted or rejected), every failed TLS handshake, every
user identity decision and every instance (received, forwarded, exported to
a folder, dead-lettered, dropped) produces one :class:`AuditRecord`. Records
are written as JSON lines to a file of their own, rotated by size like the
logs, and may also be sent as RFC 5424 syslog messages over TLS (RFC 5425,
the transport IHE ATNA uses); both sinks live in :mod:`gateway.sinks`, whose
names this module re-exports. The audit trail is the *only* place patient
identifiers go (DESIGN: no PHI in logs or metric labels), so its file is
created with mode 0600.

The trail cannot be flushed away nor quietly edited (HARDENING H11): a flood
of rejected associations from one address is written as its first record
and one summary a minute (:class:`AuditTrail`), and every line of the file
carries the SHA-256 of the line before it, across rotations, restarts and
concurrent writers (:class:`JsonLinesFile`), which ``dicom-gateway audit
verify`` checks (:func:`verify_chain`).

Record shape
------------
PS3.15 A.5.1 defines audit messages as RFC 3881 / DICOM XML: an *Event*
(EventID, EventActionCode, EventOutcomeIndicator, EventTypeCode), one or
more *ActiveParticipants* (UserID, AlternativeUserID, NetworkAccessPointID,
UserIsRequestor, RoleIDCode) and *ParticipantObjects* (studies, patients).
We keep those names in snake case in JSON, and the codes of PS3.16 CID 400-403:

=============================== ========= ===================================
record (PS3.15)                 event_id  used for
=============================== ========= ===================================
Application Activity (A.5.3.1)  110100    start, stop, reload
DICOM Instances Transferred     110104    received, forwarded, dead-lettered,
(A.5.3.7)                                 dropped instances
Data Export (A.5.3.5)           110106    an instance written to a folder
Security Alert (A.5.3.11)       110113    rejected associations, TLS failures,
                                          access-control denials
User Authentication (A.5.3.14)  110114    accepted associations (login of the
                                          calling AE), user identity checks
DICOM Instances Accessed        110103    a Storage Commitment request answered
(A.5.3.4)                                 (the records of the requested
                                          instances read; issue 15)
DICOM Instances Transferred     110104    a Storage Commitment report delivered
(A.5.3.7)                                 or given up (the responsibility for
                                          the instances passes), an archive's
                                          report received
Query (A.5.3.10)                110112    a C-FIND answered (issue 16), with
                                          its keys (the identifier, base64)
DICOM Instances Transferred     110104    a C-MOVE or C-GET answered (issue 16):
(A.5.3.7)                                 the requester's retrieve, with counts
=============================== ========= ===================================

Query/Retrieve (issue 16): a query is recorded as PS3.15 A.5.3.10 prescribes:
the requester (UserIsRequestor) and the gateway that answers it, and one
participant object, the SOP class queried (ParticipantObjectIDTypeCode
110181 "SOP Class UID"), whose ParticipantObjectQuery is the query identifier
base64-encoded and whose detail names its transfer syntax. The query keys are
PHI (Patient Name, Patient ID): they go to this trail, which is the only
place PHI goes, and never to a log line or a metric label. A retrieve is a
DICOM Instances Transferred record (action R): source the gateway, destination
the move destination (C-MOVE) or the requester (C-GET), the requester marked
as such, the studies as participant objects. A refused query or retrieve
(access, a move destination the caller may not name) is a Security Alert (Use
of Restricted Function), as a refused Storage Commitment request is.

Storage Commitment (PS3.4 Annex J) has no audit message of its own in
PS3.15 A.5.3. A request is the requester reading what the gateway holds of
its instances (DICOM Instances Accessed, action R); a report moves the
responsibility for them, which is how dcm4chee-arc audits IHE RAD-10
Storage Commitment (DICOM Instances Transferred, action R). A requester that
may not ask (0x0124) is an access-control denial: a Security Alert, as a
rejected association is.

Outcome indicators (A.5.1, RFC 3881): 0 success, 4 minor failure,
8 serious failure, 12 major failure.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import re
import socket
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import Any, Callable, Collection, Protocol, Sequence

from twisted.logger import Logger

# Re-exported: the sinks lived here, and callers import them from here.
from gateway.sinks import CHAIN_KEY as CHAIN_KEY
from gateway.sinks import CHAIN_START as CHAIN_START
from gateway.sinks import JsonLinesFile as JsonLinesFile
from gateway.sinks import SYSLOG_FACILITY as SYSLOG_FACILITY
from gateway.sinks import SYSLOG_MAX_PENDING as SYSLOG_MAX_PENDING
from gateway.sinks import SyslogTLSSink as SyslogTLSSink
from gateway.sinks import format_rfc5424 as format_rfc5424
from gateway.sinks import line_digest as line_digest
from gateway.sinks import lock_path as lock_path


class Outcome(IntEnum):
    """EventOutcomeIndicator (PS3.15 A.5.1; RFC 3881 5.1.4)."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


@dataclass(frozen=True)
class Code:
    """A coded value (code, scheme, meaning), as PS3.16 gives it.

    :ivar code: the code value.
    :ivar meaning: the code meaning.
    :ivar scheme: the coding scheme designator.
    """

    code: str
    meaning: str
    scheme: str = "DCM"


# PS3.16 CID 400 Audit Event ID.
APPLICATION_ACTIVITY = Code("110100", "Application Activity")
INSTANCES_ACCESSED = Code("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = Code("110104", "DICOM Instances Transferred")
QUERY = Code("110112", "Query")
DATA_EXPORT = Code("110106", "Export")
SECURITY_ALERT = Code("110113", "Security Alert")
USER_AUTHENTICATION = Code("110114", "User Authentication")

# PS3.16 CID 401 Audit Event Type Code.
APPLICATION_START = Code("110120", "Application Start")
APPLICATION_STOP = Code("110121", "Application Stop")
LOGIN = Code("110122", "Login")
NODE_AUTHENTICATION = Code("110126", "Node Authentication")
SOFTWARE_CONFIGURATION = Code("110131", "Software Configuration")
USE_OF_RESTRICTED_FUNCTION = Code("110132", "Use of Restricted Function")

# PS3.16 CID 402 Audit Active Participant Role ID.
SOURCE = Code("110153", "Source Role ID")
DESTINATION = Code("110152", "Destination Role ID")
APPLICATION = Code("110150", "Application")
APPLICATION_LAUNCHER = Code("110151", "Application Launcher")


@dataclass(frozen=True)
class Participant:
    """An ActiveParticipant (PS3.15 A.5.2.2).

    :ivar user_id: the AE title (or process, or user name).
    :ivar role: the role code (source, destination, application).
    :ivar network_access_point: the peer's address, ``host:port`` or a path.
    :ivar requestor: whether this participant started the event (UserIsRequestor).
    :ivar certificate_subject: the verified TLS certificate subject, if any.
    :ivar alternative_user_id: e.g. the user identity user name.
    """

    user_id: str
    role: str = ""
    network_access_point: str = ""
    requestor: bool = False
    certificate_subject: str = ""
    alternative_user_id: str = ""


@dataclass(frozen=True)
class ParticipantObject:
    """A ParticipantObject (PS3.15 A.5.2.5): a study or a patient.

    :ivar kind: ``study``, ``patient`` or ``sop_class`` (a query's SOP class, A.5.3.10).
    :ivar id: the Study Instance UID or the Patient ID.
    :ivar sop_class_uid: the instance's SOP class (studies only).
    :ivar sop_instance_uids: the instances (studies only).
    """

    kind: str
    id: str
    sop_class_uid: str = ""
    sop_instance_uids: tuple[str, ...] = ()
    #: ParticipantObjectQuery (A.5.3.10): the query identifier, base64 (``kind`` ``sop_class``).
    query: str = ""
    #: ParticipantObjectDetail "TransferSyntax" of ``query`` (A.5.3.10).
    transfer_syntax: str = ""


@dataclass(frozen=True)
class AuditRecord:
    """One audit message.

    :ivar time: the event time, ISO 8601 UTC (EventDateTime).
    :ivar event: the event ID's meaning (``"Security Alert"``).
    :ivar event_id: the event ID code (CID 400).
    :ivar action: EventActionCode: C, R, U, D or E.
    :ivar outcome: EventOutcomeIndicator.
    :ivar event_type: the event type code (CID 401), or ``""``.
    :ivar description: EventOutcomeDescription: what happened, why it failed.
    :ivar disposition: for instances: ``received``, ``forwarded``,
        ``exported``, ``dead_letter`` or ``dropped``; for associations
        ``accepted`` or ``rejected``; else ``""``.
    :ivar participants: the active participants.
    :ivar objects: the participant objects.
    :ivar source: the audit source (our AE title and host; A.5.2.3).
    :ivar extra: further fields (listener, destination name, reason label).
    """

    time: str
    event: str
    event_id: str
    action: str
    outcome: int
    event_type: str = ""
    description: str = ""
    disposition: str = ""
    participants: tuple[Participant, ...] = ()
    objects: tuple[ParticipantObject, ...] = ()
    source: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        """One JSON line, keys in a stable order, empty fields left out.

        :returns: the line, without its newline.
        """
        data = asdict(self)
        data["participants"] = [_compact(p) for p in data["participants"]]
        data["objects"] = [_compact(o) for o in data["objects"]]
        return json.dumps(_compact(data), separators=(",", ":"), ensure_ascii=True)


def _compact(mapping: dict[str, Any]) -> dict[str, Any]:
    """Drop empty strings, empty collections, ``None`` and false flags (never a 0 outcome) from a mapping."""
    return {
        key: value
        for key, value in mapping.items()
        if not (value is None or value is False or (isinstance(value, (str, tuple, list, dict)) and not value))
    }


def _now(wall: Callable[[], float]) -> str:
    """``wall()`` as an ISO 8601 UTC time with milliseconds."""
    moment = datetime.datetime.fromtimestamp(wall(), tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class IAuditSink(Protocol):
    """Where records go (a file, syslog, a list in tests)."""

    def write(self, record: AuditRecord) -> None:
        """Store or send one record.

        :param record: the record.
        """


class MemorySink:
    """Keeps records in a list (tests)."""

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def write(self, record: AuditRecord) -> None:
        """Append the record.

        :param record: the record.
        """
        self.records.append(record)


#: Seconds over which repeated refusals of one kind from one address are summed (HARDENING H11).
AGGREGATION_WINDOW = 60.0

#: Summary windows open at once. Beyond, refusals from further addresses
#: share one window (address ``*``), so a flood from many addresses cannot
#: grow this table or write a full record per address.
MAX_WINDOWS = 1024


@dataclass
class _Window:
    """Refusals of one kind from one address, counted after the first was written."""

    what: str
    description: str
    event_type: Code
    disposition: str
    address: str
    extra: dict[str, str]
    started: str
    event: Code = SECURITY_ALERT
    certificate_subject: str = ""
    count: int = 0
    last: str = ""
    call: Any = None


def _address(peer: str) -> str:
    """The host of ``host:port`` (the port changes with every connection; the address does not)."""
    return peer.rsplit(":", 1)[0] if ":" in peer else peer


class AuditTrail:
    """Builds audit records and hands them to the sinks.

    Rejected associations are aggregated (HARDENING H11: 24,000 in 10 s from
    one client would otherwise rotate the retained history away): per source
    address and reason, the first rejection in a window of
    :data:`AGGREGATION_WINDOW` seconds is written as it happens; the next
    ones in that window are only counted, and one summary record with the
    count is written when the window ends (on ``clock``), or at stop.
    Accepted associations, admissions, transfers and exports are never
    aggregated. Without a ``clock`` nothing is aggregated.

    Failed TLS handshakes (``"tls"``) and refused user identities
    (``"user"``) can be aggregated the same way through ``aggregate``; they
    are not by default, as operators (and the TLS tests) read one record per
    failed handshake and per identity check. An association refused for its
    identity or certificate subject still yields an aggregated rejection.

    :param sinks: where records go; none means records are only counted.
    :param ae_title: our AE title, the audit source and our participant ID.
    :param wall: wall-clock time.
    :param hostname: our host name, for the audit source.
    :param clock: ends aggregation windows (the reactor; a ``task.Clock`` in tests).
    :param window: the aggregation window, seconds.
    :param aggregate: what is aggregated: ``"rejected"`` (associations),
        ``"proxy"`` (refused PROXY protocol connections), ``"tls"``, ``"user"``.
    """

    log = Logger(namespace="gateway.audit")

    def __init__(
        self,
        sinks: list[IAuditSink] | None = None,
        ae_title: str = "",
        wall: Callable[[], float] | None = None,
        hostname: str | None = None,
        clock: Any = None,
        window: float = AGGREGATION_WINDOW,
        aggregate: Collection[str] = ("rejected", "proxy"),
    ) -> None:
        import time

        self.sinks = list(sinks or [])
        self.ae_title = ae_title
        self._wall = wall or time.time
        self.hostname = hostname if hostname is not None else socket.gethostname()
        self._clock = clock
        self._window = window
        self._aggregate = frozenset(aggregate)
        self._windows: dict[tuple[str, ...], _Window] = {}
        #: Records emitted, by event.
        self.counts: dict[str, int] = {}
        #: Refusals counted into summaries instead of written, in total.
        self.aggregated = 0

    # -- aggregation of refusals (HARDENING H11) ---------------------------------------------

    def _counted(self, key: tuple[str, ...], window: _Window) -> bool:
        """Whether this refusal only counts towards its window's summary (else: write it, open the window).

        :param key: (kind, address, reason...).
        :param window: the window to open if none is: what the summary will say.
        :returns: ``True`` when the record must not be written now.
        """
        if self._clock is None or key[0] not in self._aggregate:
            return False
        if key not in self._windows and len(self._windows) >= MAX_WINDOWS:
            key = (key[0], "*", *key[2:])
            window = dataclasses.replace(window, address="*")
        open_window = self._windows.get(key)
        if open_window is None:
            window.call = self._clock.callLater(self._window, self._close, key)
            self._windows[key] = window
            return False
        open_window.count += 1
        open_window.last = _now(self._wall)
        self.aggregated += 1
        return True

    def _close(self, key: tuple[str, ...]) -> None:
        """End a window: write its summary when anything was counted."""
        window = self._windows.pop(key)
        if window.call is not None and window.call.active():
            window.call.cancel()
        if not window.count:
            return
        self.emit(
            window.event,
            "E",
            Outcome.MINOR_FAILURE,
            event_type=window.event_type,
            description=(
                f"{window.count} more {window.what} from {window.address or 'an unknown address'} "
                f"({window.description}) in the {self._window:.0f} s after the first, "
                "summarised in this record"
            ),
            disposition=window.disposition,
            participants=(
                Participant(
                    user_id="",
                    role=SOURCE.meaning,
                    network_access_point=window.address,
                    requestor=True,
                    certificate_subject=window.certificate_subject,
                ),
                self._us(DESTINATION),
            ),
            extra={**window.extra, "aggregated": str(window.count), "first": window.started, "last": window.last},
        )

    def flush(self) -> None:
        """Write the summaries of every open window now (at stop)."""
        for key in list(self._windows):
            self._close(key)

    def emit(
        self,
        event_id: Code,
        action: str,
        outcome: Outcome,
        *,
        event_type: Code | None = None,
        description: str = "",
        disposition: str = "",
        participants: tuple[Participant, ...] = (),
        objects: tuple[ParticipantObject, ...] = (),
        extra: dict[str, str] | None = None,
    ) -> AuditRecord:
        """Build one record and write it to every sink (a failing sink does not stop the others).

        :returns: the record.
        """
        record = AuditRecord(
            time=_now(self._wall),
            event=event_id.meaning,
            event_id=event_id.code,
            action=action,
            outcome=int(outcome),
            event_type=event_type.meaning if event_type is not None else "",
            description=description,
            disposition=disposition,
            participants=participants,
            objects=objects,
            source=f"{self.ae_title}@{self.hostname}",
            extra=dict(extra or {}),
        )
        self.counts[record.event] = self.counts.get(record.event, 0) + 1
        for sink in self.sinks:
            try:
                sink.write(record)
            except Exception as error:  # noqa: BLE001 - the audit trail must not stop the gateway
                self.log.error("audit sink {sink} failed: {error}", sink=type(sink).__name__, error=error)
        return record

    def _us(self, role: Code = APPLICATION, requestor: bool = False) -> Participant:
        return Participant(user_id=self.ae_title, role=role.meaning, network_access_point=self.hostname, requestor=requestor)

    # -- Application Activity (A.5.3.1) ---------------------------------------------------------

    def application_activity(self, what: str, description: str = "", outcome: Outcome = Outcome.SUCCESS) -> AuditRecord:
        """The gateway started, stopped or reloaded its configuration (PS3.15 A.5.3.1).

        :param what: ``start``, ``stop`` or ``reload``.
        :param description: details (the version, what changed, why a reload was refused).
        :param outcome: the outcome (a refused reload is a minor failure).
        :returns: the record.
        """
        event_type = {"start": APPLICATION_START, "stop": APPLICATION_STOP}.get(what, SOFTWARE_CONFIGURATION)
        if what == "stop":
            self.flush()  # the counted refusals are written before the stop record
        return self.emit(
            APPLICATION_ACTIVITY,
            "E",
            outcome,
            event_type=event_type,
            description=description,
            disposition=what,
            participants=(self._us(APPLICATION, requestor=True),),
        )

    # -- associations ------------------------------------------------------------------------

    def association_accepted(
        self,
        *,
        peer: str,
        calling_ae_title: str,
        called_ae_title: str,
        listener: str,
        certificate_subject: str = "",
        username: str = "",
    ) -> AuditRecord:
        """An association was accepted: the calling AE authenticated (User Authentication, Login; A.5.3.14).

        :returns: the record.
        """
        return self.emit(
            USER_AUTHENTICATION,
            "E",
            Outcome.SUCCESS,
            event_type=LOGIN,
            description="association accepted",
            disposition="accepted",
            participants=(
                Participant(
                    user_id=calling_ae_title,
                    role=SOURCE.meaning,
                    network_access_point=peer,
                    requestor=True,
                    certificate_subject=certificate_subject,
                    alternative_user_id=username,
                ),
                Participant(user_id=called_ae_title, role=DESTINATION.meaning, network_access_point=self.hostname),
            ),
            extra={"listener": listener},
        )

    def association_rejected(
        self,
        *,
        peer: str,
        calling_ae_title: str,
        called_ae_title: str,
        listener: str,
        reason: str,
        rejection: tuple[int, int, int] | None = None,
        certificate_subject: str = "",
    ) -> AuditRecord | None:
        """An association was rejected by the access policy or the provider (Security Alert; A.5.3.11).

        Aggregated per address, listener, A-ASSOCIATE-RJ and verified
        certificate subject (the calling AE title a flooding peer sends may
        change with each attempt, the rejection does not; a new certificate
        subject needs a certificate from a trusted CA, so each is kept apart).

        :param reason: why, in words ("calling AE title not allowed from 10.0.0.5").
        :param rejection: the A-ASSOCIATE-RJ (result, source, reason).
        :returns: the record, or ``None`` when it was counted into a summary.
        """
        extra = {"listener": listener}
        if rejection is not None:
            extra["rejection"] = "{},{},{}".format(*rejection)
        event_type = NODE_AUTHENTICATION if certificate_subject else USE_OF_RESTRICTED_FUNCTION
        label = f"A-ASSOCIATE-RJ {extra['rejection']}" if rejection is not None else reason
        window = _Window(
            "rejected associations", label, event_type, "rejected", _address(peer), extra, _now(self._wall),
            certificate_subject=certificate_subject,
        )
        if self._counted(("rejected", _address(peer), listener, label, certificate_subject), window):
            return None
        return self.emit(
            SECURITY_ALERT,
            "E",
            Outcome.MINOR_FAILURE,
            event_type=event_type,
            description=reason,
            disposition="rejected",
            participants=(
                Participant(
                    user_id=calling_ae_title,
                    role=SOURCE.meaning,
                    network_access_point=peer,
                    requestor=True,
                    certificate_subject=certificate_subject,
                ),
                Participant(user_id=called_ae_title, role=DESTINATION.meaning, network_access_point=self.hostname),
            ),
            extra=extra,
        )

    def tls_failure(self, *, peer: str, listener: str, reason: str, detail: str = "") -> AuditRecord | None:
        """A TLS handshake failed (Security Alert, Node Authentication; A.5.3.11).

        Aggregated per address, listener and reason label.

        :param reason: the reason label (``unknown_ca``, ``expired``...).
        :param detail: OpenSSL's words.
        :returns: the record, or ``None`` when it was counted into a summary.
        """
        return self._node_authentication_alert(
            "tls", "failed TLS handshakes", "TLS handshake failed", "tls_failure", peer, listener, reason, detail
        )

    def proxy_refused(self, *, peer: str, listener: str, reason: str, detail: str = "") -> AuditRecord | None:
        """A ``proxy_protocol`` listener refused a connection (Security Alert, Node Authentication; A.5.3.11; issue 14).

        A PROXY header from an address outside ``trusted``, a missing,
        malformed or late one: a node that is not the trusted proxy talked to
        a listener only the proxy may use. Aggregated per address, listener
        and reason label, as failed TLS handshakes are.

        :param peer: the connection's real ``host:port``.
        :param reason: the label (``untrusted``, ``missing``, ``malformed``, ``timeout``).
        :param detail: why, in words.
        :returns: the record, or ``None`` when it was counted into a summary.
        """
        return self._node_authentication_alert(
            "proxy", "refused PROXY protocol connections", "PROXY protocol connection refused", "proxy_refused",
            peer, listener, reason, detail,
        )

    def _node_authentication_alert(
        self, kind: str, what: str, words: str, disposition: str, peer: str, listener: str, reason: str, detail: str
    ) -> AuditRecord | None:
        """A connection refused before any association (Security Alert, Node Authentication; A.5.3.11).

        Aggregated per ``kind``, address, listener and reason label: the
        first of a window is a record, the rest are counted into its summary.

        :param what: the summary's words for the refused connections.
        :param words: the record's description, before the reason.
        """
        extra = {"listener": listener, "reason": reason}
        window = _Window(what, reason, NODE_AUTHENTICATION, disposition, _address(peer), extra, _now(self._wall))
        if self._counted((kind, _address(peer), listener, reason), window):
            return None
        return self.emit(
            SECURITY_ALERT,
            "E",
            Outcome.MINOR_FAILURE,
            event_type=NODE_AUTHENTICATION,
            description=f"{words}: {reason}" + (f" ({detail})" if detail else ""),
            disposition=disposition,
            participants=(
                Participant(user_id="", role=SOURCE.meaning, network_access_point=peer, requestor=True),
                self._us(DESTINATION),
            ),
            extra=dict(extra),
        )

    def tls_destination_failure(
        self, *, destination: str, ae_title: str, address: str, reason: str, detail: str = ""
    ) -> AuditRecord:
        """A TLS destination failed authentication: our handshake with it failed (Security Alert, Node Authentication; A.5.3.11).

        Written for each failed attempt (HARDENING F20): an expired or
        untrusted certificate, or one for another name (RFC 6125). The
        destination's entries stay queued; nothing went out in clear.

        :param destination: the destination's configured name.
        :param ae_title: its AE title.
        :param address: ``host:port``.
        :param reason: a short label (``wrong_name``, ``expired``, ``unknown_ca``, ``verify_failed``...).
        :param detail: the failure as the queue records it.
        :returns: the record.
        """
        return self.emit(
            SECURITY_ALERT,
            "E",
            Outcome.MINOR_FAILURE,
            event_type=NODE_AUTHENTICATION,
            description=f"TLS handshake with destination {destination} failed: {reason}" + (f" ({detail})" if detail else ""),
            disposition="tls_failure",
            participants=(
                self._us(SOURCE, requestor=True),
                Participant(user_id=ae_title, role=DESTINATION.meaning, network_access_point=address),
            ),
            extra={"destination": destination, "reason": reason},
        )

    def user_authentication(
        self,
        *,
        peer: str,
        calling_ae_title: str,
        username: str,
        identity_type: int,
        success: bool,
        description: str,
        listener: str,
    ) -> AuditRecord | None:
        """A user identity (PS3.7 D.3.3.7) was checked (User Authentication, Login; A.5.3.14; HARDENING decision 7).

        :param username: the user name given (never the passcode or token).
        :param identity_type: 1 username, 2 username+passcode, 3 Kerberos, 4 SAML, 5 JWT.
        :param success: whether it was accepted.
        :param description: why it was refused, or ``"accepted"``.
        :returns: the record, or ``None`` when a refusal was counted into a
            summary (aggregated per address, listener and identity type,
            never per user name, which the peer chooses).
        """
        if not success:
            extra = {"listener": listener, "identity_type": str(identity_type)}
            label = f"user identity type {identity_type} refused"
            window = _Window(
                "refused user identities", label, LOGIN, "user_identity", _address(peer), extra, _now(self._wall),
                event=USER_AUTHENTICATION,
            )
            if self._counted(("user", _address(peer), listener, str(identity_type)), window):
                return None
        return self.emit(
            USER_AUTHENTICATION,
            "E",
            Outcome.SUCCESS if success else Outcome.MINOR_FAILURE,
            event_type=LOGIN,
            description=description,
            disposition="user_identity",
            participants=(
                Participant(
                    user_id=calling_ae_title,
                    role=SOURCE.meaning,
                    network_access_point=peer,
                    requestor=True,
                    alternative_user_id=username,
                ),
                self._us(DESTINATION),
            ),
            extra={"listener": listener, "identity_type": str(identity_type)},
        )

    # -- instances ---------------------------------------------------------------------------

    def instance(
        self,
        disposition: str,
        *,
        sop_instance_uid: str,
        sop_class_uid: str = "",
        study_uid: str = "",
        patient_id: str = "",
        source: Participant,
        destination: Participant,
        outcome: Outcome = Outcome.SUCCESS,
        description: str = "",
        extra: dict[str, str] | None = None,
    ) -> AuditRecord:
        """One instance moved, or failed to (DICOM Instances Transferred, A.5.3.7; Data Export, A.5.3.5).

        :param disposition: ``received`` (action C, we are the destination),
            ``forwarded`` (action R, we are the source), ``exported`` (to a
            folder: Data Export), ``dead_letter`` or ``dropped``.
        :returns: the record.
        """
        event = DATA_EXPORT if disposition == "exported" else INSTANCES_TRANSFERRED
        action = "C" if disposition == "received" else "R"
        objects = [
            ParticipantObject(
                kind="study",
                id=study_uid,
                sop_class_uid=sop_class_uid,
                sop_instance_uids=(sop_instance_uid,),
            )
        ]
        if patient_id:
            objects.append(ParticipantObject(kind="patient", id=patient_id))
        return self.emit(
            event,
            action,
            outcome,
            description=description,
            disposition=disposition,
            participants=(source, destination),
            objects=tuple(objects),
            extra=extra,
        )

    # -- Query/Retrieve (issue 16) ------------------------------------------------------------

    def query(
        self,
        *,
        peer: str,
        calling_ae_title: str,
        listener: str,
        sop_class_uid: str,
        identifier: bytes,
        transfer_syntax: str,
        level: str,
        outcome: str,
        status: int,
        results: int,
        failed_sources: Sequence[str] = (),
        reason: str = "",
    ) -> AuditRecord:
        """A C-FIND was answered (Query, PS3.15 A.5.3.10; or a Security Alert when ``refused``).

        Outcome: success for ``success``, ``cancelled`` and ``limited`` (the
        requester got what it asked for, or the limit the operator set);
        minor failure for ``partial`` (a source left out) and ``invalid``;
        serious failure for ``failed``.

        :param identifier: the query identifier as received (base64 in the record).
        :param outcome: one of :data:`gateway.events.QUERY_OUTCOMES`.
        :param status: the final C-FIND-RSP status sent.
        :param results: pending responses relayed.
        :param failed_sources: the sources left out.
        :returns: the record.
        """
        extra = {
            "listener": listener,
            "level": level,
            "outcome": outcome,
            "status": f"0x{status:04X}",
            "results": str(results),
        }
        if failed_sources:
            extra["failed_sources"] = ",".join(failed_sources)
        requester = Participant(user_id=calling_ae_title, role=SOURCE.meaning, network_access_point=peer, requestor=True)
        words = f"C-FIND {outcome} (0x{status:04X}), {results} result(s)" + (f": {reason}" if reason else "")
        if outcome == "refused":
            return self.emit(
                SECURITY_ALERT,
                "E",
                Outcome.MINOR_FAILURE,
                event_type=USE_OF_RESTRICTED_FUNCTION,
                description=words,
                disposition="query_refused",
                participants=(requester, self._us(DESTINATION)),
                extra=extra,
            )
        result = {
            "success": Outcome.SUCCESS,
            "cancelled": Outcome.SUCCESS,
            "limited": Outcome.SUCCESS,
            "failed": Outcome.SERIOUS_FAILURE,
        }.get(outcome, Outcome.MINOR_FAILURE)
        return self.emit(
            QUERY,
            "E",
            result,
            description=words,
            disposition="query",
            participants=(requester, self._us(DESTINATION)),
            objects=(
                ParticipantObject(
                    kind="sop_class",
                    id=sop_class_uid,
                    query=base64.b64encode(identifier).decode("ascii"),
                    transfer_syntax=transfer_syntax,
                ),
            ),
            extra=extra,
        )

    def retrieve(
        self,
        *,
        peer: str,
        calling_ae_title: str,
        listener: str,
        verb: str,
        sop_class_uid: str,
        outcome: str,
        status: int,
        completed: int,
        failed: int,
        warning: int,
        destination: Participant | None = None,
        study_uids: Sequence[str] = (),
        failed_uids: Sequence[str] = (),
        sources: Sequence[str] = (),
        reason: str = "",
    ) -> AuditRecord:
        """A C-MOVE or C-GET was answered (DICOM Instances Transferred, A.5.3.7; a Security Alert when ``refused``).

        We are the source (the gateway sends the instances on), the move
        destination (C-MOVE) or the requester (C-GET) the destination; the
        requester is UserIsRequestor. Outcome: success when every sub-operation
        completed, minor failure for ``warning``, ``cancelled`` and ``invalid``,
        serious failure for ``failed``.

        :param verb: ``move`` or ``get``.
        :param outcome: one of :data:`gateway.events.RETRIEVE_OUTCOMES`.
        :param destination: the move destination (C-MOVE); ``None``: the requester (C-GET).
        :param study_uids: the studies concerned (participant objects).
        :param failed_uids: the Failed SOP Instance UID List sent (counted in the record).
        :returns: the record.
        """
        extra = {
            "listener": listener,
            "verb": verb,
            "sop_class_uid": sop_class_uid,
            "outcome": outcome,
            "status": f"0x{status:04X}",
            "completed": str(completed),
            "failed": str(failed),
            "warning": str(warning),
        }
        if sources:
            extra["sources"] = ",".join(sources)
        if failed_uids:
            extra["failed_uids"] = str(len(failed_uids))
        requester = Participant(
            user_id=calling_ae_title,
            role="" if destination is not None else DESTINATION.meaning,
            network_access_point=peer,
            requestor=True,
        )
        words = (
            f"C-{verb.upper()} {outcome} (0x{status:04X}): {completed} completed, {failed} failed, {warning} warning"
            + (f": {reason}" if reason else "")
        )
        if outcome == "refused":
            return self.emit(
                SECURITY_ALERT,
                "E",
                Outcome.MINOR_FAILURE,
                event_type=USE_OF_RESTRICTED_FUNCTION,
                description=words,
                disposition="retrieve_refused",
                participants=(requester, self._us()) + ((destination,) if destination is not None else ()),
                extra=extra,
            )
        result = {"success": Outcome.SUCCESS, "failed": Outcome.SERIOUS_FAILURE}.get(outcome, Outcome.MINOR_FAILURE)
        participants = (self._us(SOURCE), requester) + ((destination,) if destination is not None else ())
        return self.emit(
            INSTANCES_TRANSFERRED,
            "R",
            result,
            description=words,
            disposition="retrieved" if verb == "get" else "moved",
            participants=participants,
            objects=tuple(ParticipantObject(kind="study", id=uid) for uid in study_uids),
            extra=extra,
        )

    # -- Storage Commitment (issue 15) ---------------------------------------------------------

    def commitment_request(
        self,
        *,
        peer: str,
        calling_ae_title: str,
        called_ae_title: str,
        listener: str,
        transaction_uid: str,
        outcome: str,
        status: int,
        instances: int,
        reason: str = "",
    ) -> AuditRecord:
        """A Storage Commitment N-ACTION-RQ was answered (PS3.4 J.3.2).

        ``refused`` (the requester may not ask: 0x0124) is a Security Alert
        (A.5.3.11, Use of Restricted Function); every other outcome a DICOM
        Instances Accessed record (A.5.3.4, action R): success for
        ``accepted`` and ``repeated``, minor failure for a malformed or
        conflicting request, serious failure when the journal could not
        take it.

        :param outcome: the outcome of :class:`gateway.events.CommitmentRequested`.
        :param status: the N-ACTION-RSP status sent.
        :param instances: how many instances it asked about.
        :param reason: why it failed, in words.
        :returns: the record.
        """
        extra = {
            "listener": listener,
            "transaction_uid": transaction_uid,
            "instances": str(instances),
            "status": f"0x{status:04X}",
            "outcome": outcome,
        }
        requester = Participant(user_id=calling_ae_title, role=SOURCE.meaning, network_access_point=peer, requestor=True)
        us = Participant(user_id=called_ae_title or self.ae_title, role=DESTINATION.meaning, network_access_point=self.hostname)
        words = f"Storage Commitment request {outcome} (0x{status:04X})" + (f": {reason}" if reason else "")
        if outcome == "refused":
            return self.emit(
                SECURITY_ALERT,
                "E",
                Outcome.MINOR_FAILURE,
                event_type=USE_OF_RESTRICTED_FUNCTION,
                description=words,
                disposition="commitment_refused",
                participants=(requester, us),
                extra=extra,
            )
        result = {
            "accepted": Outcome.SUCCESS,
            "repeated": Outcome.SUCCESS,
            "unavailable": Outcome.SERIOUS_FAILURE,
        }.get(outcome, Outcome.MINOR_FAILURE)
        return self.emit(
            INSTANCES_ACCESSED,
            "R",
            result,
            description=words,
            disposition="commitment_requested",
            participants=(requester, us),
            extra=extra,
        )

    def commitment_report(
        self,
        *,
        transaction_uid: str,
        modality: str,
        ae_title: str,
        address: str,
        policy: str,
        committed: int,
        failed: int,
        attempts: int,
        dead: bool = False,
        error: str = "",
    ) -> AuditRecord:
        """A Storage Commitment report was delivered to its requester, or given up (DICOM Instances Transferred, A.5.3.7).

        We are the source (the gateway reports the responsibility it took),
        the requester the destination. Outcome: success when every instance
        was committed (event type 1), minor failure when some failed (event
        type 2, PS3.4 J.3.3), serious failure when the report could not be
        delivered before ``report_deadline`` (``dead``).

        :param modality: the requester's name in the ``modalities`` table.
        :param ae_title: its AE title.
        :param address: its ``host:port``.
        :param attempts: delivery attempts made.
        :param error: the last delivery error (dead reports).
        :returns: the record.
        """
        if dead:
            outcome, disposition = Outcome.SERIOUS_FAILURE, "commitment_dead"
            words = f"Storage Commitment report not delivered after {attempts} attempt(s): {error}"
        else:
            outcome = Outcome.MINOR_FAILURE if failed else Outcome.SUCCESS
            disposition = "commitment_reported"
            words = f"Storage Commitment report delivered ({policy}): {committed} committed, {failed} failed"
        return self.emit(
            INSTANCES_TRANSFERRED,
            "R",
            outcome,
            description=words,
            disposition=disposition,
            participants=(
                self._us(SOURCE, requestor=True),
                Participant(
                    user_id=ae_title, role=DESTINATION.meaning, network_access_point=address, alternative_user_id=modality
                ),
            ),
            extra={
                "transaction_uid": transaction_uid,
                "modality": modality,
                "policy": policy,
                "committed": str(committed),
                "failed": str(failed),
                "attempts": str(attempts),
            },
        )

    def archive_commitment_report(
        self,
        *,
        destination: str,
        calling_ae_title: str,
        address: str,
        transaction_uid: str,
        committed: int,
        failed: int,
        status: int,
    ) -> AuditRecord:
        """An archive reported on a Storage Commitment request of ours (DICOM Instances Transferred, A.5.3.7).

        The archive is the source (it takes the responsibility), we are the
        destination. Outcome: success when all were committed, minor failure
        when some failed or the report could not be used (an unknown
        Transaction UID: ``destination`` empty, ``status`` not 0).

        :param destination: the destination's configured name, ``""`` when unknown.
        :param status: the N-EVENT-REPORT-RSP status we answered.
        :returns: the record.
        """
        outcome = Outcome.SUCCESS if status == 0 and not failed else Outcome.MINOR_FAILURE
        words = (
            f"Storage Commitment report from archive {destination}: {committed} committed, {failed} failed"
            if destination
            else f"Storage Commitment report for an unknown Transaction UID answered 0x{status:04X}"
        )
        return self.emit(
            INSTANCES_TRANSFERRED,
            "R",
            outcome,
            description=words,
            disposition="archive_commitment",
            participants=(
                Participant(
                    user_id=calling_ae_title, role=SOURCE.meaning, network_access_point=address, requestor=True,
                    alternative_user_id=destination,
                ),
                self._us(DESTINATION),
            ),
            extra={
                "destination": destination,
                "transaction_uid": transaction_uid,
                "committed": str(committed),
                "failed": str(failed),
                "status": f"0x{status:04X}",
            },
        )

    def us(self, role: str) -> Participant:
        """Ourselves as a participant.

        :param role: ``source`` or ``destination``.
        :returns: the participant.
        """
        return self._us(SOURCE if role == "source" else DESTINATION)


def read_records(path: str) -> list[dict[str, Any]]:
    """Read an audit file back (tests, tools).

    :param path: the JSON-lines file.
    :returns: one mapping per line.
    """
    with open(path, encoding="ascii") as stream:
        return [json.loads(line) for line in stream if line.strip()]


@dataclass(frozen=True)
class ChainReport:
    """What :func:`verify_chain` found.

    :ivar records: the records whose link was checked and held.
    :ivar files: the files read.
    :ivar broken_file: the file of the first broken link, ``""`` when none.
    :ivar broken_line: its line number (from 1).
    :ivar reason: why the link is broken.
    """

    records: int
    files: int
    broken_file: str = ""
    broken_line: int = 0
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Whether every link held."""
        return not self.broken_file

    def __str__(self) -> str:
        if self.ok:
            return f"OK: {self.records} record(s) in {self.files} file(s), the chain is unbroken"
        return f"{self.broken_file}:{self.broken_line}: broken link: {self.reason}"


def rotation_order(paths: Sequence[str]) -> list[str]:
    """Sort audit files oldest first: ``audit.jsonl.3``, ``.2``, ``.1``, then ``audit.jsonl``.

    :param paths: files as given (a shell glob sorts ``.10`` before ``.2``).
    :returns: the files, each rotation set by decreasing suffix, the live file last.
    """

    def key(path: str) -> tuple[str, int]:
        match = re.fullmatch(r"(.*)\.(\d+)", path)
        return (match.group(1), -int(match.group(2))) if match else (path, 0)

    return sorted(paths, key=key)


def verify_chain(paths: Sequence[str]) -> ChainReport:
    """Check the hash chain of audit files, oldest first, and report the first broken link.

    Each line's ``prev_sha256`` must be the SHA-256 of the line before it,
    the line before the first line of a file being the last line of the file
    before it in ``paths``. The first line of the first file is taken as it
    is: the lines it links to were rotated away.

    :param paths: the files, oldest first (see :func:`rotation_order`).
    :returns: the report.
    :raises OSError: when a file cannot be read.
    """
    expected: str | None = None
    records = 0
    for path in paths:
        with open(path, "rb") as stream:
            for number, line in enumerate(stream, start=1):
                try:
                    data = json.loads(line)
                    link = data[CHAIN_KEY] if isinstance(data, dict) else None
                except (ValueError, KeyError):
                    link = None
                if not isinstance(link, str):
                    reason = "not a chained audit record (torn, edited, or written before the chain existed)"
                    return ChainReport(records, len(paths), path, number, reason)
                if expected is not None and link != expected:
                    reason = f"{CHAIN_KEY} is {link[:16]}..., the line before it hashes to {expected[:16]}..."
                    return ChainReport(records, len(paths), path, number, reason)
                expected = line_digest(line)
                records += 1
    return ChainReport(records, len(paths))


def verify_command(paths: Sequence[str]) -> int:
    """``dicom-gateway audit verify FILE...``: print the report, return the exit status.

    :param paths: the files (put in rotation order first).
    :returns: 0 when the chain holds, 1 at the first broken link, 2 when a file cannot be read.
    """
    import sys

    try:
        report = verify_chain(rotation_order(paths))
    except OSError as error:
        print(f"cannot read {error.filename}: {error.strerror}", file=sys.stderr)
        return 2
    print(report, file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1
