"""The validated configuration, as frozen dataclasses.

These classes are what the rest of the gateway codes against: the loader
(:mod:`gateway.config.load`) is the only place that builds them from YAML, and
it guarantees the invariants stated here (ranges checked, paths absolute,
durations in seconds, sizes in bytes). Being frozen and comparable, two loads
can be compared section by section on reload, as Buildbot's ``compare_attrs``
does, so only changed parts are restarted.

Names and fields here are a contract; new fields must come with defaults.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Union

from gateway.codecs import PRESERVE, TransferSyntaxPolicy


#: A node's name (key ``node``): it is written into leases, file names and
#: metric labels, so it is kept to a safe alphabet.
NODE_NAME_PATTERN: str = r"[A-Za-z0-9._-]{1,64}"


def default_node_name() -> str:
    """The default ``node``: the host name, made safe (other characters become ``-``, at most 64).

    :returns: A name matching :data:`NODE_NAME_PATTERN`.
    """
    # os.uname() rather than socket.gethostname(): the same kernel host name,
    # and configuration stays clear of the network modules (test_arrows).
    name = re.sub(r"[^A-Za-z0-9._-]", "-", os.uname().nodename)[:64]
    return name or "gateway"


#: The TLS profiles a listener or destination may name (PS3.15 Annex B):
#: the Non-Downgrading BCP 195 profile (B.10, the default) and the Extended
#: BCP 195 profile (B.11). See :mod:`gateway.tls`.
TLS_PROFILES: tuple[str, ...] = ("bcp195-nd", "bcp195-extended")


@dataclass(frozen=True)
class ListenerTLSConfig:
    """TLS on a listener (key ``listen[i].tls``).

    :param certificate: PEM file with the gateway's certificate (and chain), absolute.
    :param private_key: PEM file with its private key, absolute.
    :param ca: PEM file of the CAs client certificates must chain to;
        empty means clients are not asked for a certificate.
    :param require_client_certificate: Fail the handshake of a client
        without a certificate signed by ``ca`` (needs ``ca``).
    :param profile: One of :data:`TLS_PROFILES`.
    :param handshake_timeout: Seconds a TLS handshake may take before the
        connection is closed (never more than the ARTIM timer).
    :param crl: PEM file of certificate revocation lists of the CAs in
        ``ca``, absolute; client certificates they list are refused
        (RFC 5280); empty means no revocation check. Re-read on SIGHUP.
    """

    certificate: str
    private_key: str
    ca: str = ""
    require_client_certificate: bool = False
    profile: str = "bcp195-nd"
    handshake_timeout: float = 10.0
    crl: str = ""


@dataclass(frozen=True)
class CertificateBinding:
    """One entry of ``listen[i].access.certificates``.

    :param subject: The subject pattern (:mod:`gateway.subject`: attribute
        by attribute, a glob per value), e.g. ``CN=mr*,O=Radiology``.
    :param ae_titles: Glob patterns of the calling AE titles a certificate
        matching ``subject`` may use.
    :param issuer: A pattern the certificate's issuer must match too (which
        CA's certificates the entry accepts); empty accepts any CA the
        listener's ``ca`` trusts.
    """

    subject: str
    ae_titles: tuple[str, ...]
    issuer: str = ""


@dataclass(frozen=True)
class ListenerAccessConfig:
    """Per-listener access rules, on top of the global ``accept`` block (key ``listen[i].access``).

    :param calling_ae_titles: Glob patterns of calling AE titles allowed on
        this listener; empty means the global list alone decides.
    :param networks: Source address networks (CIDR, ``10.1.0.0/16``,
        ``::1/128``) allowed; empty allows any address.
    :param certificates: On TLS listeners, the subject patterns (and
        optional issuer patterns) with the calling AE titles each may use: a
        peer must present a certificate that matches an entry, and may then
        only use the calling AE titles listed for it. Empty disables the check.
    """

    calling_ae_titles: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    certificates: tuple[CertificateBinding, ...] = ()


#: User identity policies (PS3.7 D.3.3.7): see :mod:`gateway.identity_check`.
USER_IDENTITY_POLICIES: tuple[str, ...] = ("off", "optional", "required")


@dataclass(frozen=True)
class UserIdentityConfig:
    """User identity negotiation on a listener (key ``listen[i].user_identity``).

    :param policy: ``off`` (ignored), ``optional`` (checked when given) or
        ``required``.
    :param users_file: Absolute path of a ``user:scrypt$...`` file for user
        name and user name + passcode identities (types 1 and 2).
    :param verifiers: ``(identity type, plugin name)`` pairs for Kerberos
        (3), SAML (4) and JWT (5) assertions.
    """

    policy: str = "off"
    users_file: str = ""
    verifiers: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class ProxyProtocolConfig:
    """PROXY protocol v1/v2 on a listener (key ``listen[i].proxy_protocol``; issue 14, :mod:`gateway.proxyproto`).

    :param trusted: Networks (CIDR) of the proxies allowed to connect; a
        connection from anywhere else is refused before a byte is read.
    :param timeout: Seconds a trusted proxy has to send the complete header.
    """

    trusted: tuple[str, ...]
    timeout: float = 5.0


#: ``commitment.policy`` values (issue 15): what "committed" means in a Storage
#: Commitment report the gateway sends (see :mod:`gateway.commitment`).
COMMITMENT_POLICIES: tuple[str, ...] = ("received", "delivered", "committed")

#: ``commitment.unrouted`` values: how an instance a rule dropped, or kept as
#: unrouted, is reported (``fail``: 0x0110, the safe side; ``success``).
COMMITMENT_UNROUTED: tuple[str, ...] = ("fail", "success")

#: ``commitment.report_association`` values: ``new`` opens a new association
#: to the requester for the report (every vendor supports it); ``open`` sends it
#: on the requester's association when that is still open, else a new one.
COMMITMENT_REPORT_ASSOCIATIONS: tuple[str, ...] = ("new", "open")


@dataclass(frozen=True)
class ModalityConfig:
    """A remote AE the gateway may call back (key ``modalities.<name>``, issue 15).

    Storage Commitment reports go to it (the requester's address), and the
    query/retrieve issue uses the same table for move destinations.

    :param name: The table key (``[A-Za-z0-9_.-]``, 1 to 64 characters).
    :param ae_title: Its AE title (PS3.5 VR AE; unique in the table).
    :param host: Its host name or address.
    :param port: Its TCP port, 1 to 65535.
    :param tls: TLS towards it, as on a DICOM destination; ``None`` for plain TCP.
    :param connect_timeout: Seconds to wait for the TCP connection.
    :param acse_timeout: Seconds to wait for the A-ASSOCIATE answer and release.
    :param dimse_timeout: Seconds to wait for each DIMSE response.
    :param max_pdu_length: The Maximum Length we advertise (PS3.8 D.1).
    """

    name: str
    ae_title: str
    host: str
    port: int
    tls: "DestinationTLSConfig | None" = None
    connect_timeout: float = 10.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    max_pdu_length: int = 262144


@dataclass(frozen=True)
class CommitmentConfig:
    """The Storage Commitment SCP (key ``commitment``, top level or ``listen[i].commitment``; issue 15).

    Without it (``None`` on the configuration and the listener) the Storage
    Commitment Push Model SOP Class is not accepted.

    :param policy: One of :data:`COMMITMENT_POLICIES`.
    :param deadline: Seconds from the N-ACTION after which the report is sent
        with what is known (instances still undecided fail: 0x0110, or 0x0112
        when never received). The loader's default: 3600 for ``received`` and
        ``delivered``, 86400 for ``committed``.
    :param report_deadline: Seconds from the N-ACTION after which a report
        that could not be delivered becomes a dead letter (kept, replayable).
    :param lookback: Seconds back from the N-ACTION in which received
        instances are searched for the requested UIDs.
    :param allowed_ae_titles: Glob patterns (``fnmatch``) of the calling AE
        titles allowed to ask; empty allows every AE of the ``modalities``
        table (an AE not in the table can never be answered, so is refused).
    :param unrouted: One of :data:`COMMITMENT_UNROUTED`.
    :param report_association: One of :data:`COMMITMENT_REPORT_ASSOCIATIONS`.
    :param retry_initial: Seconds before the first retry of a report delivery
        (doubling up to ``retry_max``).
    :param retry_max: The longest wait between report delivery attempts.
    """

    policy: str = "delivered"
    deadline: float = 3600.0
    report_deadline: float = 86400.0
    lookback: float = 7 * 86400.0
    allowed_ae_titles: tuple[str, ...] = ()
    unrouted: str = "fail"
    report_association: str = "new"
    retry_initial: float = 10.0
    retry_max: float = 600.0


#: ``query.mode`` values (issue 16): ``merge`` asks every source in parallel and
#: removes duplicates by the level's unique key (the first source listed wins);
#: ``first`` asks the sources in order and stops at the first with matches.
QUERY_MODES: tuple[str, ...] = ("merge", "first")

#: ``retrieve.mode`` values (issue 16): ``relay`` has the source move to the
#: gateway, which takes custody and sends on; ``pass_through`` asks the source
#: to move straight to the destination (the source must know it).
RETRIEVE_MODES: tuple[str, ...] = ("relay", "pass_through")


@dataclass(frozen=True)
class QueryConfig:
    """The Query/Retrieve SCP's C-FIND side (key ``query``, top level or ``listen[i].query``; issue 16).

    :param sources: Names of DICOM destinations asked, in order of precedence.
    :param mode: One of :data:`QUERY_MODES`.
    :param timeout: Seconds a source may take to answer a whole query; a slower
        one is cancelled and left out (or fails the query when ``strict``).
    :param strict: A failed or slow source fails the whole query (0xA700-class
        failure) instead of being left out.
    :param max_results: The most pending responses relayed for one query; then
        the sources are cancelled and the query ends 0xA700 with an Error Comment.
    :param query_morph: The compiled morph plan applied to each query
        identifier before it goes to the sources (``None``: unchanged).
    :param response_morph: The compiled morph plan applied to each response
        identifier before it goes to the requester (``None``: unchanged).
    """

    sources: tuple[str, ...]
    mode: str = "merge"
    timeout: float = 30.0
    strict: bool = False
    max_results: int = 10000
    query_morph: Any = None
    response_morph: Any = None
    #: Globs over the requester's calling AE title allowed to query, within the
    #: listener's own access policy; empty allows every AE the listener accepts.
    allowed_ae_titles: tuple[str, ...] = ()
    #: Relational queries (PS3.4 C.4.1.2.2): granted to requesters that ask in
    #: the SOP Class Extended Negotiation (PS3.4 C.5.1.1) and proposed to every
    #: source; a relational query goes only to the sources that granted it.
    relational: bool = False


@dataclass(frozen=True)
class RetrieveConfig:
    """The Query/Retrieve SCP's C-MOVE and C-GET side (key ``retrieve``, top level or per listener; issue 16).

    :param sources: Names of DICOM destinations retrieved from, in order.
    :param mode: One of :data:`RETRIEVE_MODES` (C-MOVE only; C-GET always relays).
    :param allowed_destinations: Glob patterns of ``modalities`` names a
        requester may name as move destination; empty allows every entry.
    :param timeout: Seconds a retrieve may take, from the request to its last
        sub-operation; then it ends with what was done (failures counted).
    """

    sources: tuple[str, ...]
    mode: str = "relay"
    allowed_destinations: tuple[str, ...] = ()
    timeout: float = 3600.0
    #: Globs over the requester's calling AE title allowed to retrieve, within
    #: the listener's own access policy; empty allows every AE the listener accepts.
    allowed_ae_titles: tuple[str, ...] = ()
    #: The name of a route (``routes``) whose morph plan is applied to relayed
    #: instances (to ``move.<name>`` entries and to C-GET sub-operations); ``""``: sent as received.
    route: str = ""


@dataclass(frozen=True)
class ListenerConfig:
    """One address the gateway accepts associations on.

    :param host: The interface to bind (``"0.0.0.0"``, ``"::"``, a name).
    :param port: The TCP port; 0 means any free port (for tests).
    :param name: A label for logs and metrics; the loader defaults it to
        ``f"{host}:{port}"`` and keeps names unique.
    :param tls: TLS settings; ``None`` for plain TCP.
    :param access: Per-listener access rules.
    :param user_identity: User identity negotiation.
    :param proxy_protocol: When set, every connection must start with a
        PROXY protocol header from a trusted proxy (HAProxy ``send-proxy-v2``),
        whose source address then stands for the peer's.
    """

    host: str
    port: int
    name: str = ""
    tls: ListenerTLSConfig | None = None
    access: ListenerAccessConfig = field(default_factory=ListenerAccessConfig)
    user_identity: UserIdentityConfig = field(default_factory=UserIdentityConfig)
    proxy_protocol: ProxyProtocolConfig | None = None
    #: Storage Commitment on this listener (issue 15); ``None`` uses the top-level
    #: ``commitment`` (``GatewayConfig.commitment``), which may itself be ``None``.
    commitment: CommitmentConfig | None = None
    #: Query (C-FIND) on this listener (issue 16); ``None`` uses the top-level ``query``.
    query: QueryConfig | None = None
    #: Retrieve (C-MOVE, C-GET) on this listener (issue 16); ``None`` uses the top-level ``retrieve``.
    retrieve: RetrieveConfig | None = None

    def __post_init__(self) -> None:
        """Fill in the default name when none was given."""
        if not self.name:
            object.__setattr__(self, "name", f"{self.host}:{self.port}")


@dataclass(frozen=True)
class AcceptConfig:
    """Which associations and instances the listeners accept.

    :param calling_ae_titles: Glob patterns (``fnmatch`` syntax) of the
        calling AE titles allowed to associate; ``("*",)`` allows any.
    :param unknown_sop_classes: Whether to accept presentation contexts for
        SOP classes the gateway does not know (stored as-is when accepted).
    """

    calling_ae_titles: tuple[str, ...] = ("*",)
    unknown_sop_classes: bool = False


@dataclass(frozen=True)
class LimitsConfig:
    """Resource limits and timers.

    :param max_associations: Concurrent inbound associations; the next one is
        rejected transient, provider-presentation, local limit (PS3.8 9.3.4).
    :param max_pdu_length: The Maximum Length we advertise and accept
        (PS3.8 D.1), 4096 to 16777216.
    :param acse_timeout: The ARTIM timer in seconds (PS3.8 9.1.5).
    :param dimse_timeout: Seconds to wait for a DIMSE response.
    :param network_timeout: Seconds an association may stay idle.
    :param max_instance_size: The largest instance, in bytes, accepted on
        receive; larger ones get a permanent failure status.
    """

    max_associations: int = 64
    max_pdu_length: int = 262144
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 120.0
    max_instance_size: int = 4 * 1024**3


@dataclass(frozen=True)
class SpoolConfig:
    """Where received instances are written before they are acknowledged.

    :param path: An absolute directory path (relative paths in the file are
        resolved against the configuration file's folder).
    :param min_free_bytes: The free-space floor of the spool's filesystem.
        Below it, C-STORE requests on open associations are answered 0xA700
        (out of resources, PS3.4 Table B.2-1) and new associations are
        rejected transient, reason 1 of source 3, temporary congestion
        (PS3.8 9.3.4), so modalities keep their copies and retry.
    :param resume_margin_bytes: Hysteresis: accepting resumes only once free
        space is back above ``min_free_bytes + resume_margin_bytes``.
    :param clean_interval: Seconds between two runs of the spool clean-up
        (delivered files past ``retention.keep_delivered``, records past the
        duplicate window); read at start.
    :param shared: Every node of a cluster sees this same folder (NFS or any
        POSIX filesystem with atomic rename and working fsync, issue 14), so
        any node may send any entry; file names then carry the node's name
        (their owner). Needs the PostgreSQL queue (SQLite on a network
        filesystem is not safe). ``False``: the spool is the node's own and
        only this node sends the instances it received.
    """

    path: str
    min_free_bytes: int = 512 * 1024**2
    resume_margin_bytes: int = 256 * 1024**2
    clean_interval: float = 30.0
    shared: bool = False


#: The queue stores a configuration may choose (key ``queue.backend``).
QUEUE_BACKENDS: tuple[str, ...] = ("sqlite", "postgresql")


@dataclass(frozen=True)
class QueueConfig:
    """The queue journal's store (key ``queue``, issue 14).

    :param backend: ``sqlite`` (the embedded default: one node) or
        ``postgresql`` (one queue shared by several nodes).
    :param path: SQLite only: the journal file, absolute; empty means
        ``<spool path>/queue.sqlite`` (filled in by :class:`GatewayConfig`).
    :param dsn: PostgreSQL only: a libpq connection string or URI
        (``host=db1 dbname=gateway user=gw sslmode=verify-full``); ``sslmode``
        and the other libpq parameters pass through. Never a password.
    :param password_file: PostgreSQL only: a file (absolute, mode 0600 or
        stricter) whose first line is the password; read at load.
    :param password: The password read from ``password_file``; never in
        ``repr``, logs or ``check`` output.
    :param pool_min: Connections the pool keeps open (key ``pool.min``).
    :param pool_max: The most connections the pool opens (key ``pool.max``).
    :param connect_timeout: Seconds to wait for a connection (key
        ``timeouts.connect``); past it the store is unavailable: new C-STOREs
        get 0xA700 and new associations are rejected.
    :param statement_timeout: Seconds one statement may run (key
        ``timeouts.statement``; PostgreSQL's ``statement_timeout``).
    """

    backend: str = "sqlite"
    path: str = ""
    dsn: str = ""
    password_file: str = ""
    password: str = field(default="", repr=False)
    pool_min: int = 1
    pool_max: int = 4
    connect_timeout: float = 5.0
    statement_timeout: float = 10.0


@dataclass(frozen=True)
class ClusterConfig:
    """How the nodes sharing a queue watch each other (key ``cluster``, issue 14).

    A node kill -9'd leaves its leases to expire: its backlog flows again
    after at most ``lease + heartbeat`` seconds (25 s with the defaults).

    :param lease: Seconds a leased entry (and an association slot) stays
        a node's without renewal; renewed every ``heartbeat`` while a send
        is in flight. More than twice ``heartbeat``.
    :param heartbeat: Seconds between two heartbeats of this node (its row in
        the store's node table, lease renewals, the housekeeping singleton).
    """

    lease: float = 20.0
    heartbeat: float = 5.0


@dataclass(frozen=True)
class RetryConfig:
    """How a destination retries an instance before giving up on it.

    The delay before attempt *n* is ``initial_delay * multiplier**(n-1)``,
    capped at ``max_delay``, then moved by up to ``jitter`` of itself either
    way so that many queued items do not retry in lockstep.

    :param initial_delay: The first delay, in seconds.
    :param max_delay: The largest delay, in seconds; at least
        ``initial_delay``.
    :param multiplier: The growth factor between delays, at least 1.
    :param jitter: The +/- fraction of each delay drawn at random, 0 to 1.
    :param max_attempts: Real send attempts (circuit probes excluded) before
        the instance is dead-lettered.
    :param max_age: Seconds since the instance was queued before it is
        dead-lettered; days by default, so a weekend outage never
        dead-letters a backlog.
    :param unknown_status_attempts: Attempts for a C-STORE status outside
        the known classes before the instance is dead-lettered with it.
    """

    initial_delay: float = 1.0
    max_delay: float = 300.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_attempts: int = 50
    max_age: float = 7 * 86400.0
    unknown_status_attempts: int = 3


@dataclass(frozen=True)
class CircuitConfig:
    """When a destination is considered down as a whole.

    :param failures: Consecutive destination-wide failures (connection
        refused, timeouts, association rejected) that open the circuit; the
        destination is then probed with C-ECHO at the backoff interval.
    """

    failures: int = 3


@dataclass(frozen=True)
class DestinationTLSConfig:
    """TLS to a destination (key ``destinations.<name>.tls``); never a plain-TCP fallback.

    :param ca: PEM file of the CAs the server's certificate must chain to, absolute.
    :param server_name: The name the server's certificate must carry
        (RFC 6125); the destination's ``host`` when empty.
    :param certificate: Our client certificate (PEM), for mutual authentication.
    :param private_key: Its private key (PEM).
    :param profile: One of :data:`TLS_PROFILES`.
    """

    ca: str
    server_name: str = ""
    certificate: str = ""
    private_key: str = ""
    profile: str = "bcp195-nd"


@dataclass(frozen=True)
class DicomDestination:
    """A DICOM AE the gateway forwards to as a C-STORE SCU.

    :param name: The destination's name: 1 to 64 characters of
        ``[A-Za-z0-9_.-]`` (it labels metrics and is a CLI argument).
    :param ae_title: The called AE title (PS3.5 6.2, VR AE).
    :param host: The peer's host name or address.
    :param port: The peer's TCP port, 1 to 65535.
    :param calling_ae_title: The calling AE title we present; the loader
        defaults it to the gateway's own ``ae_title``.
    :param max_associations: Concurrent associations to this peer, 1 to 64.
    :param batch_size: Instances sent on one association before it is
        released and reopened, 1 to 10000.
    :param idle_release: Seconds an association may stay idle before it is
        released.
    :param max_pdu_length: The Maximum Length we advertise (PS3.8 D.1).
    :param connect_timeout: Seconds to wait for the TCP connection.
    :param acse_timeout: Seconds to wait for the A-ASSOCIATE-AC or -RJ and
        for the A-RELEASE-RP (the ARTIM timer, PS3.8 9.1.5).
    :param dimse_timeout: Seconds to wait for each C-STORE response.
    :param retry: The retry policy.
    :param circuit: The circuit breaker.
    :param tls: TLS settings; ``None`` for plain TCP.
    """

    name: str
    ae_title: str
    host: str
    port: int
    calling_ae_title: str
    max_associations: int = 1
    batch_size: int = 50
    #: As a Q/R source, how a C-GET retrieves from it (issue 16): ``auto`` (its
    #: C-GET when it accepts a GET context, else a C-MOVE to the gateway),
    #: ``get`` (C-GET only) or ``move`` (always a C-MOVE to the gateway: an
    #: archive that accepts the GET context but refuses C-GETs).
    retrieve_by: str = "auto"
    idle_release: float = 5.0
    max_pdu_length: int = 262144
    connect_timeout: float = 10.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    retry: RetryConfig = field(default_factory=RetryConfig)
    circuit: CircuitConfig = field(default_factory=CircuitConfig)
    tls: DestinationTLSConfig | None = None
    #: The archive confirms what it stores through Storage Commitment (issue 15):
    #: under the ``committed`` policy the gateway asks it (N-ACTION) for every
    #: delivered copy and waits for its N-EVENT-REPORT.
    storage_commitment: bool = False
    #: Seconds to wait for the archive's report before asking again (new Transaction UID).
    commitment_timeout: float = 600.0
    #: Issue 17: the transfer syntax this destination gets (keys ``transfer_syntax``
    #: and ``lossy``); ``preserve`` sends as received.
    policy: TransferSyntaxPolicy = PRESERVE


#: The values of a DICOM destination's ``retrieve_by`` (issue 16).
RETRIEVE_BY: tuple[str, ...] = ("auto", "get", "move")


#: The fields a folder destination's ``pattern`` may use. The UIDs and IDs
#: are taken from the instance's header and validated by the folder writer
#: before use, so no value can name a path outside the folder.
FOLDER_PATTERN_FIELDS: tuple[str, ...] = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "PatientID",
    "AccessionNumber",
    "Modality",
    "StudyDate",
    "calling_ae_title",
)


@dataclass(frozen=True)
class FolderDestination:
    """A folder the gateway writes Part 10 files into, atomically.

    :param name: The destination's name, as for :class:`DicomDestination`.
    :param path: The folder, absolute.
    :param pattern: The relative file path of each instance, a template of
        ``{Field}`` references to :data:`FOLDER_PATTERN_FIELDS`; never
        absolute and never containing ``..``.
    :param retry: The retry policy.
    :param circuit: The circuit breaker (a full or read-only disk is a
        destination-wide failure).
    """

    name: str
    path: str
    pattern: str = "{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"
    retry: RetryConfig = field(default_factory=RetryConfig)
    circuit: CircuitConfig = field(default_factory=CircuitConfig)


@dataclass(frozen=True)
class DicomWebAuth:
    """How the gateway authenticates to a STOW-RS destination (key ``destinations.<name>.dicomweb.auth``).

    Only file paths are kept here, never a secret: the sender reads the
    files when it needs them (and again when they change), so a dump of the
    configuration, ``check`` output or the API can show this object as it is.

    :param kind: ``none``, ``basic``, ``bearer`` or ``oauth2``.
    :param username: HTTP basic user name (RFC 7617).
    :param password_file: HTTP basic password, in a file, absolute.
    :param token_file: bearer token (RFC 6750), in a file, absolute; re-read when it changes.
    :param token_url: OAuth2 token endpoint (RFC 6749 4.4, client credentials).
    :param client_id: OAuth2 client id.
    :param client_secret_file: OAuth2 client secret, in a file, absolute.
    :param scope: OAuth2 scope, empty for none.
    """

    kind: str = "none"
    username: str = ""
    password_file: str = ""
    token_file: str = ""
    token_url: str = ""
    client_id: str = ""
    client_secret_file: str = ""
    scope: str = ""


@dataclass(frozen=True)
class DicomWebBatch:
    """How many instances go in one STOW-RS request (key ``dicomweb.batch``).

    :param max_instances: instances per request, 1 to 10000.
    :param max_bytes: bytes of instances per request (an instance larger
        than this goes alone).
    """

    max_instances: int = 50
    max_bytes: int = 100 * 1000 * 1000


@dataclass(frozen=True)
class DicomWebTLSConfig:
    """TLS to a STOW-RS destination (key ``dicomweb.tls``), for ``https`` URLs.

    :param ca: PEM file of the CAs the server must chain to; empty: the system's trust store.
    :param certificate: our client certificate (PEM), for mutual TLS.
    :param private_key: its private key (PEM).
    """

    ca: str = ""
    certificate: str = ""
    private_key: str = ""


@dataclass(frozen=True)
class DicomWebDestination:
    """A DICOMweb server the gateway forwards to with STOW-RS (PS3.18 10.5; issue 17).

    :param name: The destination's name, as for :class:`DicomDestination`.
    :param url: The service's base URL (``http`` or ``https``, no user
        information); requests go to ``{url}/studies``.
    :param auth: How to authenticate.
    :param batch: Instances per request.
    :param timeout: Seconds a request (connect, send, answer) may take.
    :param connections: Requests in flight at once (the worker's slots).
    :param tls: TLS settings for an ``https`` URL.
    :param probe_url: The circuit probe's URL; empty: ``{url}/studies?limit=1`` (QIDO-RS, PS3.18 10.6).
    :param retry: The retry policy.
    :param circuit: The circuit breaker.
    :param policy: The transfer-syntax policy (keys ``transfer_syntax`` and ``lossy``).
    """

    name: str
    url: str
    auth: DicomWebAuth = field(default_factory=DicomWebAuth)
    batch: DicomWebBatch = field(default_factory=DicomWebBatch)
    timeout: float = 120.0
    connections: int = 1
    tls: DicomWebTLSConfig = field(default_factory=DicomWebTLSConfig)
    probe_url: str = ""
    retry: RetryConfig = field(default_factory=RetryConfig)
    circuit: CircuitConfig = field(default_factory=CircuitConfig)
    policy: TransferSyntaxPolicy = PRESERVE


@dataclass(frozen=True)
class WebhookSink:
    """A notification sink that receives an HTTP POST of a JSON document per completed study (issue 18).

    Key ``destinations.<name>.webhook``. The POST carries the study's
    notification (:class:`gateway.notify.document.StudyNotification`, shaped
    for the web by :mod:`gateway.notify.webhook`), signed with HMAC-SHA256 of
    the body in ``X-Gateway-Signature: sha256=<hex>`` and carrying
    ``Idempotency-Key``. 2xx: delivered; 408, 429 and 5xx: retried; any
    other 4xx: dead letter.

    :param name: The sink's name (a destination name).
    :param url: ``http`` or ``https`` URL, no user information.
    :param secret_file: The HMAC key, in a file, absolute (re-read when it changes).
    :param phi: Whether the document may carry Patient ID and Patient's Name.
    :param timeout: Seconds a request may take.
    :param tls: TLS settings for an ``https`` URL.
    :param auth: Optional authentication (bearer or OAuth2, as STOW-RS destinations).
    :param retry: The retry policy.
    :param circuit: The circuit breaker.
    """

    name: str
    url: str
    secret_file: str
    phi: bool = False
    timeout: float = 30.0
    tls: DicomWebTLSConfig = field(default_factory=DicomWebTLSConfig)
    auth: DicomWebAuth = field(default_factory=DicomWebAuth)
    retry: RetryConfig = field(default_factory=RetryConfig)
    circuit: CircuitConfig = field(default_factory=CircuitConfig)


@dataclass(frozen=True)
class Hl7Sink:
    """A notification sink that receives an HL7 v2 message over MLLP per completed study (issue 18).

    Key ``destinations.<name>.hl7``.

    :param name: The sink's name.
    :param host: The receiver's host.
    :param port: Its TCP port.
    :param tls: TLS to the receiver (``None``: plain TCP); the DICOM destinations' TLS settings.
    :param template: Absolute path of a message template (``{field}`` references
        to the notification's fields, :mod:`gateway.notify.hl7`), or empty for the built-in ORU^R01.
    :param sending_application: MSH-3.
    :param sending_facility: MSH-4.
    :param receiving_application: MSH-5.
    :param receiving_facility: MSH-6.
    :param version: MSH-12, ``2.5.1`` by default.
    :param phi: Whether PID carries Patient ID and name (else the study's pseudonymous key).
    :param on_error: What an ``AE`` acknowledgement does: ``dead`` (default) or ``retry``.
    :param on_reject: What an ``AR`` acknowledgement does: ``retry`` (default) or ``dead``.
    :param reject_retries: How many ``AR`` answers are retried before the message is a dead letter.
    :param timeout: Seconds to wait for the connection and for the ACK.
    :param retry: The retry policy.
    :param circuit: The circuit breaker.
    """

    name: str
    host: str
    port: int
    tls: DestinationTLSConfig | None = None
    template: str = ""
    sending_application: str = "DICOM-GATEWAY"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    version: str = "2.5.1"
    phi: bool = True
    on_error: str = "dead"
    on_reject: str = "retry"
    reject_retries: int = 5
    timeout: float = 30.0
    retry: RetryConfig = field(default_factory=RetryConfig)
    circuit: CircuitConfig = field(default_factory=CircuitConfig)


@dataclass(frozen=True)
class FhirSink:
    """A notification sink that keeps an ImagingStudy R4 resource per study (issue 18).

    Key ``destinations.<name>.fhir``. Each notification is a conditional
    update ``PUT {url}/ImagingStudy?identifier=urn:dicom:uid|urn:oid:<StudyInstanceUID>``
    (FHIR R4 3.1.0.5.1 conditional update).

    :param name: The sink's name.
    :param url: The FHIR base URL.
    :param auth: none, bearer or oauth2 (as STOW-RS destinations).
    :param tls: TLS settings for an ``https`` URL.
    :param subject: How ``ImagingStudy.subject`` (1..1) names the patient:
        ``search`` (a ``GET Patient?identifier=`` finds the Patient; none found:
        retried, then a dead letter) or ``identifier`` (a logical reference
        ``{"identifier": {...}}``, no lookup).
    :param patient_system: The identifier system of Patient IDs (e.g. ``urn:oid:1.2.3``).
    :param phi: Whether the resource may carry the Patient ID; without it the
        subject is a logical reference to the study's pseudonymous key and the
        resource names no patient data.
    :param endpoint: The reference put in ``ImagingStudy.endpoint`` (e.g. ``Endpoint/pacs``), or empty.
    :param timeout: Seconds a request may take.
    :param retry: The retry policy.
    :param circuit: The circuit breaker.
    """

    name: str
    url: str
    auth: DicomWebAuth = field(default_factory=DicomWebAuth)
    tls: DicomWebTLSConfig = field(default_factory=DicomWebTLSConfig)
    subject: str = "identifier"
    patient_system: str = ""
    phi: bool = False
    endpoint: str = ""
    timeout: float = 30.0
    retry: RetryConfig = field(default_factory=RetryConfig)
    circuit: CircuitConfig = field(default_factory=CircuitConfig)


#: The notification sinks (issue 18): destinations a route's ``notify.sinks`` names,
#: never its ``destinations`` (they get study notifications, not instances).
NotificationSink = Union[WebhookSink, Hl7Sink, FhirSink]
NOTIFICATION_SINKS: tuple[type, ...] = (WebhookSink, Hl7Sink, FhirSink)

#: Any kind of destination; tell them apart with ``isinstance``.
Destination = Union[DicomDestination, FolderDestination, DicomWebDestination, WebhookSink, Hl7Sink, FhirSink]


@dataclass(frozen=True)
class ExpectSeries:
    """One series a study must hold before it is complete (key ``notify.expect_series`` items).

    :param series_number: The Series Number (0020,0011) that must have arrived, or ``None``.
    :param modality: The Modality (0008,0060) that must have arrived, or empty.
    :param instances: How many instances of that series must have arrived (0: at least one).
    """

    series_number: int | None = None
    modality: str = ""
    instances: int = 0


@dataclass(frozen=True)
class NotifyConfig:
    """When a route tells its sinks that a study reached its destinations (key ``routes.<name>.notify``, issue 18).

    A study is complete at the route's destinations when every instance the
    route queued for it was delivered (or dead-lettered: ``complete with
    failures``), nothing new arrived for ``quiet_period`` seconds, and what it
    expects arrived (``expect_series``; ``expect_count``: the Number of Study
    Related Instances (0020,1208) the instances carry); ``max_wait`` seconds
    after its first instance it is complete whatever is missing (flag ``forced``).

    :param sinks: The sink destinations notified, in order.
    :param quiet_period: Seconds without a new instance of the study.
    :param max_wait: Seconds after the study's first instance (of this opening) when completion is forced.
    :param expect_series: Series that must have arrived.
    :param expect_count: Wait for (0020,1208) Number of Study Related Instances when the instances carry it.
    """

    sinks: tuple[str, ...]
    quiet_period: float = 60.0
    max_wait: float = 6 * 3600.0
    expect_series: tuple[ExpectSeries, ...] = ()
    expect_count: bool = False


@dataclass(frozen=True)
class ConsoleUser:
    """One console user, from the users file (issue 18).

    :param name: The user name.
    :param role: ``viewer``, ``operator`` or ``admin``.
    :param password_hash: ``scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>`` (never logged).
    :param show_phi: Whether list pages show Patient names and IDs unmasked.
    """

    name: str
    role: str
    password_hash: str = field(repr=False)
    show_phi: bool = False


@dataclass(frozen=True)
class ConsoleConfig:
    """The operator console under ``/console`` of the HTTP service (key ``console``, issue 18).

    :param enabled: Whether ``/console`` is served.
    :param users_file: The users file (``name:role:scrypt$...[:phi]`` lines, made
        by ``dicom-gateway console-user``), absolute; re-read when it changes.
    :param session_key_file: The key sessions and CSRF tokens are signed with
        (shared by every node behind one load balancer), absolute; empty: a
        key generated at first start in ``<spool>/console-key`` (one node).
    :param session_timeout: Seconds a session lasts without a request.
    :param session_lifetime: Seconds a session lasts at most.
    :param upload_limit: Bytes the rule tester accepts in one upload.
    :param refresh: Seconds between the overview's refreshes.
    """

    enabled: bool = True
    users_file: str = ""
    session_key_file: str = ""
    session_timeout: float = 8 * 3600.0
    session_lifetime: float = 24 * 3600.0
    upload_limit: int = 64 * 1024 * 1024
    refresh: float = 5.0


@dataclass(frozen=True)
class RouteConfig:
    """A route: which destinations receive which instances.

    At this stage a route matches every instance; a later issue adds
    ``match``, ``morph``, ``final``, ``drop`` and ``reject``.

    :param name: The route's name, unique across the configuration file and
        every route file.
    :param forward: The names of the destinations, all configured, each
        listed once.
    :param origin: ``"file:line"`` where the route was defined, for messages.
    :param match: The compiled condition (:mod:`gateway.match`), or ``None``
        for every instance.
    :param morph: The compiled :class:`~gateway.morph.MorphPlan`, or ``None``.
    :param final: Stop evaluating routes after this one when it matches.
    :param drop: Discard matching instances explicitly (acknowledged, not kept).
    :param reject: Answer matching instances with this C-STORE failure status.
    """

    name: str
    forward: tuple[str, ...]
    origin: str = ""
    match: Any = None
    morph: Any = None
    final: bool = False
    drop: bool = False
    reject: int | None = None
    #: Issue 18: notify sinks when a study has reached this route's destinations; ``None``: no notification.
    notify: NotifyConfig | None = None


@dataclass(frozen=True)
class ApiToken:
    """One bearer token of the admin API, with the name audit records give its holder.

    :param name: Who holds it (``alice``, ``ris-integration``); written to
        the audit trail for every action taken with it.
    :param token: The secret itself; never logged (left out of ``repr``).
    """

    name: str
    token: str = field(repr=False)


@dataclass(frozen=True)
class HttpConfig:
    """The HTTP endpoint: metrics, health and the admin API.

    ``/api`` is never open: with neither ``token`` nor ``token_file``, the
    gateway generates a token at first start into ``<spool>/http-token``
    (mode 0600) and the ``dicom-gateway`` commands that call the API read it
    from there.

    :param enabled: Whether to serve it at all.
    :param host: The interface to bind; loopback by default.
    :param port: The TCP port; 0 means any free port (tests).
    :param token: One bearer token for ``/api`` (its holder is named
        ``http.token`` in the audit trail); ``/metrics`` and the health
        endpoints stay open.
    :param token_file: A file of ``NAME:TOKEN`` lines (absolute), read at
        load and on reload; each name is what the audit trail records.
    :param tokens: The tokens of ``token`` or ``token_file``, as loaded.
    :param allowed_hosts: Further ``Host`` header names ``/api`` answers
        (besides the listen address, ``localhost``, ``127.0.0.1`` and
        ``::1``); any other is refused with 403 (DNS rebinding).
    :param tls: Serve HTTPS with the same settings as a DICOM listener's ``tls``.
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9102
    token: str = field(default="", repr=False)
    token_file: str = ""
    tokens: tuple[ApiToken, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    tls: ListenerTLSConfig | None = None


@dataclass(frozen=True)
class DicomWebListenConfig:
    """One address of the STOW-RS service (key ``dicomweb.listen[i]``, issue 17).

    :param host: The interface to bind.
    :param port: The TCP port; 0 means any free port (tests).
    :param tls: Serve HTTPS with the same settings as a DICOM listener's ``tls``.
    """

    port: int
    host: str = "127.0.0.1"
    tls: ListenerTLSConfig | None = None


@dataclass(frozen=True)
class DicomWebClientCertificate:
    """One entry of ``dicomweb.auth.certificates``: a client certificate and the client's name.

    :param subject: The subject pattern (:mod:`gateway.subject`), as in ``access.certificates``.
    :param name: The client's name (audit trail; routes' ``calling_ae_title``).
    :param issuer: A pattern the certificate's issuer must match too; empty: any CA the listener trusts.
    """

    subject: str
    name: str
    issuer: str = ""


#: ``dicomweb.auth.require``: ``any`` accepts a valid token or a matching certificate; ``all`` needs each configured one.
DICOMWEB_AUTH_REQUIREMENTS: tuple[str, ...] = ("any", "all")


@dataclass(frozen=True)
class DicomWebAuthConfig:
    """How STOW-RS clients authenticate (key ``dicomweb.auth``).

    :param tokens_file: A file of ``NAME:TOKEN`` or ``NAME:sha256$<hex>``
        lines (absolute), re-read when it changes (:mod:`gateway.dicomweb.tokens`).
    :param certificates: Client certificate subjects and the names they give.
    :param require: ``any`` or ``all`` (:data:`DICOMWEB_AUTH_REQUIREMENTS`).
    :param tokens: The tokens of ``tokens_file`` as read at load (digests only).
    """

    tokens_file: str = ""
    certificates: tuple[DicomWebClientCertificate, ...] = ()
    require: str = "any"
    tokens: tuple[Any, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class DicomWebServiceConfig:
    """The STOW-RS inbound service (top-level key ``dicomweb``, issue 17).

    :param listen: Its addresses (its own HTTP port(s), never the admin port).
    :param auth: Client authentication.
    :param max_request_size: Request bodies above this are refused with 413.
    :param max_connections: Connections open at once per address; more are answered 503 and closed.
    :param header_timeout: Seconds a request's headers may take to arrive.
    :param retrieve_url: Base URL written as the Retrieve URLs of the response
        (``<retrieve_url>/studies/<uid>``); empty: none written.
    """

    listen: tuple[DicomWebListenConfig, ...]
    auth: DicomWebAuthConfig
    max_request_size: int = 4 * 1024**3
    max_connections: int = 64
    header_timeout: float = 30.0
    retrieve_url: str = ""


@dataclass(frozen=True)
class RotateConfig:
    """Size-based rotation of a log or audit file.

    :param size: Bytes after which the file is rotated.
    :param keep: How many rotated files are kept.
    """

    size: int = 100 * 1024**2
    keep: int = 10


@dataclass(frozen=True)
class LogConfig:
    """Where and how the gateway logs.

    :param format: ``text`` (one line per event) or ``json`` (one JSON object per line).
    :param file: A file to log to (absolute); empty means standard output.
    :param level: The lowest level logged: debug, info, warn, error.
    :param rotate: Rotation of ``file``.
    """

    format: str = "text"
    file: str = ""
    level: str = "info"
    rotate: RotateConfig = field(default_factory=RotateConfig)


@dataclass(frozen=True)
class MetricsConfig:
    """Metric label policy.

    :param calling_ae_titles: Calling AE titles that get their own label
        value; every other title is counted as ``other`` (bounded cardinality,
        whatever a peer sends). Literal entries of ``accept.calling_ae_titles``
        are added to these.
    """

    calling_ae_titles: tuple[str, ...] = ()


@dataclass(frozen=True)
class SyslogConfig:
    """Audit records sent as RFC 5424 syslog over TLS (RFC 5425; key ``audit.syslog``).

    :param host: The collector's host; empty disables syslog.
    :param port: Its port (6514 is the RFC 5425 port).
    :param ca: PEM file of the CAs the collector's certificate must chain to.
    :param server_name: The name its certificate must carry; ``host`` when empty.
    :param certificate: Our client certificate (PEM), if the collector wants one.
    :param private_key: Its private key.
    """

    host: str = ""
    port: int = 6514
    ca: str = ""
    server_name: str = ""
    certificate: str = ""
    private_key: str = ""


@dataclass(frozen=True)
class AuditConfig:
    """The audit trail (key ``audit``): PS3.15 A.5.3-shaped JSON lines.

    :param file: The JSON-lines file (absolute); empty disables the file.
    :param rotate: Its rotation.
    :param syslog: Optional syslog over TLS.
    """

    file: str = ""
    rotate: RotateConfig = field(default_factory=lambda: RotateConfig())
    syslog: SyslogConfig = field(default_factory=SyslogConfig)


@dataclass(frozen=True)
class DrainConfig:
    """How the node drains (key ``drain``; issue 14, :mod:`gateway.drain`).

    :param grace: Seconds new associations are still accepted after
        ``dicom-gateway drain`` made ``/readyz`` fail; keep it at least the
        load balancer's ``fall x inter`` (6 s in the shipped HAProxy file), so
        associations it still routes here meanwhile are served. After it, new
        associations are rejected with A-ASSOCIATE-RJ (2,3,2).
    """

    grace: float = 10.0


@dataclass(frozen=True)
class GatewayConfig:
    """The whole validated configuration.

    :param source: The configuration file's absolute path (or, for
        configurations loaded from text, the name given for it).
    :param ae_title: Our AE title, leading and trailing spaces removed
        (they are not significant, PS3.5 Table 6.2-1).
    :param listen: The listeners, at least one, with unique names.
    :param accept: The acceptance policy.
    :param limits: Resource limits and timers.
    :param spool: The spool location and free-space floor.
    :param destinations: The destinations, in file order, with unique names.
    :param routes: The routes: those of the configuration file first, then
        those of each route file, in the order the files were loaded.
    :param duplicate_window: Seconds during which a byte-identical re-send
        of an instance a destination already has is not forwarded again
        (key ``duplicates: {window: ...}``); 0 disables duplicate control.
    :param keep_delivered: Seconds delivered spool files are kept for
        replays (key ``retention: {keep_delivered: ...}``); 0 deletes them
        once every destination has them.
    :param retrieve_retention: Seconds a finished retrieve (C-MOVE/C-GET,
        issue 16) and its items stay in the journal for operators (key
        ``retention: {retrieves: ...}``, default 7 days); 0 keeps them forever.
    :param remap_retention: Seconds a remapped UID (``uid_remap``'s table
        remapped -> original) is kept after its last use, a write or a lookup
        (key ``retention: {remapped_uids: ...}``, default 365 days); 0 keeps
        them forever.
    :param queue_path: The SQLite queue journal's absolute path (key
        ``queue: {path: ...}``); when empty it defaults to
        ``<spool path>/queue.sqlite``. Always equal to ``queue.path``.
    :param node: This process's node name (key ``node``; default: the host
        name): it appears in leases, logs, ``queue list`` and ``/readyz``.
        Two processes sharing a queue must have different names.
    :param queue: The queue store (SQLite or PostgreSQL).
    :param cluster: Lease and heartbeat periods.
    :param http: The metrics, health and admin API endpoint.
    :param log: Logging.
    :param metrics: Metric label policy.
    :param plugin_folders: Folders searched for drop-in plugins (absolute;
        key ``plugins: {folders: [...]}``, default ``../plugins`` beside the
        configuration file when it exists).
    :param audit: The audit trail.
    :param drain: Draining (``dicom-gateway drain``).
    :param morph_plugins: The morph plugins found in ``plugin_folders`` at
        load, by name (not compared: a reload always finds new objects);
        queued copies rebuild their journaled plans with these.
    """

    source: str
    ae_title: str
    listen: tuple[ListenerConfig, ...]
    accept: AcceptConfig
    limits: LimitsConfig
    spool: SpoolConfig
    destinations: tuple[Destination, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    duplicate_window: float = 3600.0
    keep_delivered: float = 0.0
    retrieve_retention: float = 7 * 86400.0
    remap_retention: float = 365 * 86400.0
    #: Seconds a completed study's row (issue 18, ``studies``) is kept after its
    #: completion (key ``retention: {studies: ...}``, default 30 days); an instance
    #: arriving later starts a new study row (notified ``complete``, not ``amended``).
    study_retention: float = 30 * 86400.0
    queue_path: str = ""
    node: str = ""
    queue: QueueConfig = field(default_factory=QueueConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    plugin_folders: tuple[str, ...] = ()
    audit: AuditConfig = field(default_factory=AuditConfig)
    drain: DrainConfig = field(default_factory=DrainConfig)
    #: Remote AEs the gateway may call back (issue 15), by name, in file order.
    modalities: tuple[ModalityConfig, ...] = ()
    #: The top-level Storage Commitment SCP; ``None``: not offered (unless a listener has its own).
    commitment: CommitmentConfig | None = None
    #: The top-level Query/Retrieve SCP (issue 16); ``None``: the Q/R SOP classes are not accepted.
    query: QueryConfig | None = None
    retrieve: RetrieveConfig | None = None
    #: The STOW-RS inbound service (issue 17); ``None``: not served.
    dicomweb: DicomWebServiceConfig | None = None
    #: The operator console (issue 18).
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    morph_plugins: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Fill in the default queue path and node name when none was given."""
        if not self.queue_path:
            object.__setattr__(
                self, "queue_path", self.queue.path or os.path.join(self.spool.path, "queue.sqlite")
            )
        if self.queue.path != self.queue_path:
            object.__setattr__(self, "queue", replace(self.queue, path=self.queue_path))
        if not self.node:
            object.__setattr__(self, "node", default_node_name())

    def destination(self, name: str) -> Destination:
        """Find a destination by name.

        :param name: The destination's name.
        :returns: The destination.
        :raises KeyError: If no destination has that name.
        """
        for destination in self.destinations:
            if destination.name == name:
                return destination
        raise KeyError(name)

    def modality(self, name: str) -> ModalityConfig:
        """Find an entry of the ``modalities`` table by name.

        :raises KeyError: If no entry has that name.
        """
        for modality in self.modalities:
            if modality.name == name:
                return modality
        raise KeyError(name)

    def commitment_for(self, listener: ListenerConfig) -> CommitmentConfig | None:
        """The Storage Commitment settings that apply on ``listener`` (its own, else the top level)."""
        return listener.commitment if listener.commitment is not None else self.commitment

    def query_for(self, listener: ListenerConfig) -> QueryConfig | None:
        """The C-FIND settings that apply on ``listener`` (its own, else the top level)."""
        return listener.query if listener.query is not None else self.query

    def retrieve_for(self, listener: ListenerConfig) -> RetrieveConfig | None:
        """The C-MOVE/C-GET settings that apply on ``listener`` (its own, else the top level)."""
        return listener.retrieve if listener.retrieve is not None else self.retrieve

    def unused_destinations(self) -> tuple[str, ...]:
        """Name the destinations no route forwards to (worth a log line, not an error).

        :returns: Their names, in file order.
        """
        used = {name for route in self.routes for name in route.forward}
        # Issue 18 (notify): a sink is used when a route's notify names it.
        used |= {name for route in self.routes if route.notify is not None for name in route.notify.sinks}
        return tuple(d.name for d in self.destinations if d.name not in used)
