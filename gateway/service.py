"""The running gateway: a Twisted MultiService built from a validated configuration.

:class:`GatewayService` is the one place that turns a
:class:`~gateway.config.schema.GatewayConfig` into live objects: the spool and
its free-space guard, the queue journal, the intake (route + journal before
the ack), one TCP listener per ``listen`` entry and one
:class:`~gateway.forward.DestinationWorker` per destination. Everything with
time or I/O is handed the reactor explicitly (DESIGN 1.2).

Start-up order matters for custody: the spool's leftover temp files are
removed, in-flight queue entries go back to the queue, spooled files the
journal does not know are removed (never acknowledged: the journal is the
record of custody, issue 13), a first batch of slot files is made; only then
do workers start sending and listeners accept. A heartbeat
(:mod:`gateway.heartbeat`) then tells the store every ``cluster.heartbeat``
that this node lives; while it fails, the journal is unavailable: ``/readyz``
fails, new associations are rejected (2,3,1) and new C-STOREs get 0xA700,
until a heartbeat succeeds again. Housekeeping that must run once in a cluster
(spool clean-up, retention, the files of dead nodes) runs only on the node
that holds the housekeeping singleton, checked every round. ``reload`` (SIGHUP) validates a new configuration and,
if it is valid, swaps routes and restarts the workers whose destination
changed; an invalid one is refused with a logged error and the running
configuration stays.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any, Callable, cast

from prometheus_client import CollectorRegistry
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway import __version__, events
from gateway.access import AccessPolicy
from gateway.audit import Outcome
from gateway.security import (
    AuditObserver,
    build_audit,
    listener_access,
    listener_identity,
    server_tls,
    server_tls_settings,
)
from gateway.blocking import IBlockingRunner, Lane, SynchronousLane, ThreadLane, ThreadPoolRunner
from gateway.identity_check import PasscodePool
from gateway.config.errors import ConfigErrors
from gateway.commitment.archive import INTERVAL
from gateway.config.schema import DicomDestination, FolderDestination, GatewayConfig, ListenerConfig
from gateway.drain import Drain
from gateway.forward import DestinationWorker
from gateway.heartbeat import HOUSEKEEPING, NodeHeartbeat, NodeNameInUse, check_node_name_free, node_detail
from gateway.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from gateway.commitment.model import STORAGE_COMMITMENT_PUSH
from gateway.commitment.scp import CommitmentSCP
from gateway.qr.context import QRContext
from gateway.qr.scp import QueryRetrieveSCP
from gateway.send.dicom import connect_dicom
from gateway.intake import Intake
from gateway.recovery import Recovery
from gateway.space import SpaceGuard
from gateway.prepare import CopyMaker, legacy_plans
from gateway.listen import AcceptorFactory, AcceptorLimits, printable
from gateway.observe import GatewayMetrics, NodeState, StateRefresher, allowlisted_titles
from gateway.queue.commitments import ICommitmentJournal
from gateway.queue.interfaces import IQueueStore, StoreUnavailable
from gateway.sopclasses import (
    ACCEPTED_TRANSFER_SYNTAXES,
    QR_FIND_SOP_CLASSES,
    QR_GET_SOP_CLASSES,
    QR_MOVE_SOP_CLASSES,
    STORAGE_SOP_CLASSES,
    VERIFICATION_SOP_CLASS,
)
from gateway.spool import Spool
from gateway.stores import stranded_after
from gateway.ul.negotiate import AcceptorSettings

#: Seconds an association may take to finish its in-flight instance when the gateway stops (SIGTERM).
SHUTDOWN_GRACE = 10.0

#: How often delivered spool files are cleaned up (the default of ``spool.clean_interval``).
CLEAN_INTERVAL = 30.0

#: A node whose heartbeat is older than this many leases is gone for good: the
#: housekeeping node removes its unjournaled files from a shared spool.
DEAD_NODE_LEASES = 10


def dead_node_after(config: GatewayConfig) -> float:
    """Seconds without a heartbeat (and without a change to the file) before a node's unjournaled files go.

    :param config: the configuration (``cluster.lease``).
    :returns: ``DEAD_NODE_LEASES`` leases (200 s with the defaults).
    """
    return DEAD_NODE_LEASES * config.cluster.lease


def acceptor_settings(config: GatewayConfig, listener: ListenerConfig | None = None) -> AcceptorSettings:
    """What a listener accepts, from the configuration.

    Storage Commitment (issue 15): the Push Model SOP Class is accepted on
    ``listener`` when Storage Commitment applies there
    (:meth:`GatewayConfig.commitment_for`: modalities ask), and on every
    listener when a DICOM destination has ``storage_commitment: true``
    (archives report to us; their role selection proposing the SCP role is
    then accepted, PS3.4 J.3.3.1.3, PS3.7 D.3.3.4). Otherwise it is answered
    result 3, as before.

    Query/Retrieve (issue 16): the Patient Root and Study Root FIND classes
    (PS3.4 C.6.1.1.1, C.6.2.1.1) are accepted where ``query`` applies
    (:meth:`GatewayConfig.query_for`), the MOVE and GET classes where
    ``retrieve`` applies (:meth:`GatewayConfig.retrieve_for`); elsewhere they
    are answered result 3 (abstract syntax not supported) as before. For
    C-GET the requester takes the SCP role of the Storage SOP classes the
    instances come back in (PS3.4 C.4.3.3, PS3.7 D.3.3.4), so where retrieve
    applies those roles are granted, on associations that propose a GET class. SOP Class Extended Negotiation (relational
    queries, PS3.4 C.5.1.1, PS3.7 D.3.3.5) is answered 1 for the FIND classes
    where that ``query`` has ``relational: true``, 0 (not supported) elsewhere.

    :param config: the validated configuration.
    :param listener: the listener; ``None`` for the top-level settings only.
    :returns: the negotiation settings of that listener.
    """
    abstract_syntaxes = frozenset(STORAGE_SOP_CLASSES) | {VERIFICATION_SOP_CLASS}
    archives_report = any(isinstance(d, DicomDestination) and d.storage_commitment for d in config.destinations)
    asks = (config.commitment_for(listener) if listener is not None else config.commitment) is not None
    if asks or archives_report:
        abstract_syntaxes |= {STORAGE_COMMITMENT_PUSH}
    scp_roles = frozenset({STORAGE_COMMITMENT_PUSH}) if archives_report else frozenset()
    query = config.query_for(listener) if listener is not None else config.query
    retrieve = config.retrieve_for(listener) if listener is not None else config.retrieve
    if query is not None:
        abstract_syntaxes |= QR_FIND_SOP_CLASSES
    if retrieve is not None:
        abstract_syntaxes |= QR_MOVE_SOP_CLASSES | QR_GET_SOP_CLASSES
    return AcceptorSettings(
        ae_title=config.ae_title,
        max_pdu_length=config.limits.max_pdu_length,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        abstract_syntaxes=abstract_syntaxes,
        transfer_syntaxes=tuple(ACCEPTED_TRANSFER_SYNTAXES),
        accept_unknown_abstract_syntaxes=config.accept.unknown_sop_classes,
        scp_role_abstract_syntaxes=scp_roles,
        # C-GET sub-operations are C-STOREs to the requester (PS3.4 C.4.3.3): the
        # storage SCP role is granted only on associations that also propose a
        # GET class we accept (a plain sender proposing it still gets it declined).
        get_sub_operations=retrieve is not None,
        relational_queries=query is not None and query.relational,
    )


class ListenerService(Service):
    """Listens on one address with an :class:`~gateway.listen.AcceptorFactory`."""

    log = Logger(namespace="gateway.service")

    def __init__(
        self,
        reactor: Any,
        listener: ListenerConfig,
        factory: AcceptorFactory,
        tls: Any = None,
        on_tls_failure: Callable[[str, str, str], None] | None = None,
        on_proxy_refused: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self._reactor = reactor
        self.listener = listener
        self.factory = factory
        self._on_proxy_refused = on_proxy_refused
        #: The PROXY protocol wrapper (:class:`gateway.proxyproto.ProxyProtocolFactory`), or ``None``.
        self.proxy_factory: Any = None
        #: The listener's reloadable TLS context (:class:`gateway.tls.ServerTLS`), or ``None``.
        self.tls = tls
        self._on_tls_failure = on_tls_failure
        self.tls_factory: Any = None
        self.port: IListeningPort | None = None
        self.setName(f"listen:{listener.name}")

    def startService(self) -> None:
        """Bind the port; a failure to bind is logged and stops the gateway."""
        super().startService()
        host = self.listener.host
        if ":" in host:
            endpoint = TCP6ServerEndpoint(self._reactor, self.listener.port, backlog=128, interface=host)
        else:
            endpoint = TCP4ServerEndpoint(self._reactor, self.listener.port, backlog=128, interface=host)
        factory: Any = self.factory
        if self.tls is not None and self.listener.tls is not None:
            from gateway.tls import TLSListenerFactory

            # PS3.15 Annex B: TLS under the DICOM acceptor; the handshake
            # deadline never exceeds ARTIM (HARDENING T13).
            deadline = min(self.listener.tls.handshake_timeout, self.factory.limits.acse_timeout)
            factory = self.tls_factory = TLSListenerFactory(
                self.tls, self.factory, self._reactor, deadline, self._on_tls_failure
            )
        proxy = self.listener.proxy_protocol
        if proxy is not None:
            from gateway.proxyproto import ProxyProtocolFactory, TrustedNetworks

            # Issue 14: the PROXY header comes first on the wire, so it is read
            # outside TLS; the handshake starts in the bytes after it.
            factory = self.proxy_factory = ProxyProtocolFactory(
                factory,
                TrustedNetworks(proxy.trusted),
                self._reactor,
                listener=self.listener.name,
                timeout=proxy.timeout,
                on_refused=self._on_proxy_refused,
            )
        self._listening = endpoint.listen(factory)
        self._listening.addCallbacks(self._bound, self._bind_failed)

    def _bound(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        address = port.getHost()
        self.log.info(
            "listening on {host}:{port} as {ae_title}{tls}",
            host=address.host,
            port=address.port,
            ae_title=self.factory.acceptor_settings.ae_title,
            tls=" (TLS)" if self.tls is not None else "",
        )
        if self.listener.proxy_protocol is not None:
            self.log.info(
                "listener {name}: PROXY protocol header required, from {trusted}",
                name=self.listener.name,
                trusted=", ".join(self.listener.proxy_protocol.trusted),
            )
        return port

    def _bind_failed(self, failure: Any) -> None:
        self.log.critical(
            "cannot listen on {host}:{port}: {error}; stopping",
            host=self.listener.host,
            port=self.listener.port,
            error=failure.getErrorMessage(),
        )
        if self._reactor.running:
            self._reactor.stop()

    def stopService(self) -> Deferred[None]:
        """Stop accepting; let each association finish its in-flight instance within the grace period, then abort it."""
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self.port is not None:
            await self.port.stopListening()
        closing = [protocol.shutdown(SHUTDOWN_GRACE) for protocol in list(self.factory.connections)]
        if closing:
            await DeferredList(closing, consumeErrors=True)


class GatewayService(MultiService):
    """The whole gateway: listeners, intake, queue journal and forwarding workers.

    :param reactor: the reactor (time, TCP, threads).
    :param config: the validated configuration.
    :param blocking: runner for fsync, file walks and folder writes; a dedicated pool by default.
    :param store_runner: the threads the queue store is called on; a dedicated pool by default
        (one thread for SQLite, ``queue.pool.max`` for PostgreSQL).
    :param store: the queue store; by default the one ``config.queue`` names
        (:func:`gateway.stores.open_store`: SQLite at ``config.queue_path``, or PostgreSQL).
    :param observer: a further sink of every event (:mod:`gateway.events`), after the metrics and the audit trail.
    :param metrics: the Prometheus metrics; by default a new set in a private registry.
    :param wall: wall-clock time for the journal.
    :param lanes: makes each received instance's :class:`~gateway.blocking.Lane`;
        by default lanes on a pool of their own, or on the caller's thread
        when ``blocking`` is given (tests with a synchronous runner).
    """

    log = Logger(namespace="gateway.service")

    def __init__(
        self,
        reactor: Any,
        config: GatewayConfig,
        blocking: IBlockingRunner | None = None,
        store_runner: IBlockingRunner | None = None,
        store: IQueueStore | None = None,
        observer: events.IGatewayObserver = events.NULL_OBSERVER,
        wall: Callable[[], float] = time.time,
        metrics: GatewayMetrics | None = None,
        lanes: Callable[[], Lane] | None = None,
    ) -> None:
        super().__init__()
        self._reactor = reactor
        self.config = config
        self._wall = wall
        self.metrics = metrics or GatewayMetrics(
            CollectorRegistry(),
            allowlisted_titles(config.accept.calling_ae_titles, config.metrics.calling_ae_titles),
            wall=wall,
        )
        # Issue 5: the audit trail, fed by listeners, intake and workers.
        self.audit = build_audit(config, wall, reactor=reactor, registry=self.metrics.registry)
        #: Every event of listeners, intake and workers goes here: metrics, audit, debug log (issue 12).
        self.observer = events.FanOutObserver(
            self.metrics,
            AuditObserver(
                self.audit,
                lambda: {d.name: d for d in self.config.destinations},
                lambda: {m.name: m for m in self.config.modalities},
            ),
            events.LogObserver(),
            observer,
        )
        self.blocking = blocking or ThreadPoolRunner.dedicated(reactor, name="spool", minthreads=1, maxthreads=4)
        # SQLite: one thread (its connection is not shared across threads). PostgreSQL: one
        # thread per pooled connection, so a heartbeat or a worker's turn never queues
        # behind a slow commit (issue 14).
        store_threads = config.queue.pool_max if config.queue.backend == "postgresql" else 1
        self.store_runner = store_runner or ThreadPoolRunner.dedicated(reactor, name="queue", maxthreads=store_threads)
        os.makedirs(config.spool.path, exist_ok=True)
        for destination in config.destinations:
            # A folder destination's root is created once here, so the example
            # configuration works on a fresh checkout; a root that disappears
            # later is a destination-wide fault the worker reports.
            if isinstance(destination, FolderDestination):
                os.makedirs(destination.path, exist_ok=True)
        if store is None:
            from gateway.stores import open_store

            store = open_store(config)
        self.store = store
        #: The node that owns the files this process makes, on a shared spool (issue 14); "" otherwise.
        self.owner = config.node if config.spool.shared else ""
        #: Node-local spools on one PostgreSQL queue: each node cleans (and alone sends) what it received.
        self.node_local = config.queue.backend == "postgresql" and not config.spool.shared
        self.started_at = wall()
        # Each instance's fragments are written and hashed on a lane (issue 13);
        # the lanes have threads of their own: a commit waits on self.blocking
        # for its lane, and must never wait for the thread the lane needs.
        if lanes is None:
            if blocking is not None:
                lanes = SynchronousLane
            else:
                pool = ThreadPoolRunner.dedicated(reactor, name="spool-lane", minthreads=1, maxthreads=4).threadpool
                lanes = lambda: ThreadLane(pool)  # noqa: E731
        self.spool = Spool(
            config.spool.path,
            self.blocking,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            max_instance_size=config.limits.max_instance_size,
            lanes=lanes,
            owner=self.owner,
        )
        self.space = SpaceGuard(
            self.spool.free_bytes, reactor, config.spool.min_free_bytes, config.spool.resume_margin_bytes
        )
        self.intake = Intake(
            store=store,
            store_runner=self.store_runner,
            file_runner=self.blocking,
            routes=lambda: self.config.routes,
            wall=wall,
            duplicate_window=config.duplicate_window,
            unrouted_dir=os.path.join(config.spool.path, "unrouted"),
            on_enqueued=self._poke,
            destinations=lambda: [d.name for d in self.config.destinations],
            node=config.node,
            # Issue 15: dropped and unrouted instances are noted for Storage Commitment.
            commitment=lambda: self.config.commitment is not None
            or any(listener.commitment is not None for listener in self.config.listen),
            # Issue 16: C-MOVE sub-operations of a relayed retrieve are matched in the journal.
            retrieve_ae_title=lambda: self.config.ae_title
            if self.config.retrieve is not None or any(listener.retrieve is not None for listener in self.config.listen)
            else None,
            # Issue 16: retrieve.route's morph plan goes with relayed C-MOVE instances.
            retrieve_route=self._retrieve_route,
        )
        self.recovery = Recovery(
            store=store,
            store_runner=self.store_runner,
            file_runner=self.blocking,
            instances_dir=self.spool.instances_dir,
            wall=wall,
            morphed_dir=os.path.join(config.spool.path, "morphed"),
            owner=self.owner,
        )
        self.heartbeat = NodeHeartbeat(
            store=store,
            store_runner=self.store_runner,
            clock=reactor,
            wall=wall,
            interval=config.cluster.heartbeat,
            started_at=self.started_at,
            detail=self._node_detail,
            on_change=self.metrics.store_available,
        )
        self.metrics.cluster_node(config.node, config.cluster.heartbeat)
        self.copies = CopyMaker(
            lambda digest: self.store_runner.run(self.store.plan, digest),
            lambda: self.config.morph_plugins,
            self.blocking,
            os.path.join(config.spool.path, "morphed"),
        )
        self.workers: dict[str, DestinationWorker] = {}
        for destination in config.destinations:
            self._add_worker(destination)
        self._add_move_workers(config)
        self.listeners: list[ListenerService] = []
        self.access = AccessPolicy(config.ae_title, config.accept.calling_ae_titles)
        limits = AcceptorLimits(
            max_associations=config.limits.max_associations,
            acse_timeout=config.limits.acse_timeout,
            network_timeout=config.limits.network_timeout,
        )
        # Issue 14: draining (dicom-gateway drain): /readyz, the listeners and the workers read it.
        self.drain = Drain(
            reactor,
            lambda: self.config.drain.grace,
            lambda: list(self.workers.values()),
            self.observer,
        )
        # Issue 15: the Storage Commitment SCP (N-ACTION, archives' N-EVENT-REPORT) every
        # listener hands its commitment messages to. The worker sets on_journaled
        # (its poke) and the archive committer sets archive_reports.
        self.commitment_scp = CommitmentSCP(
            journal=cast(ICommitmentJournal, store),
            run=self.store_runner,
            config=lambda: self.config,
            wall=wall,
            observer=self.observer,
            clock=reactor,
        )
        # Issue 16: the Query/Retrieve SCP every listener hands C-FIND/C-MOVE/C-GET to
        # (each request reads the configuration in force: a listener without
        # query/retrieve refuses them, and does not accept their classes).
        self.qr_scp = self._qr_scp(reactor, wall)
        # One pool for every listener's scrypt checks: max(1, cores - 1) at a time (issue 11).
        self.passcodes = PasscodePool.for_reactor(reactor)
        for listener in config.listen:
            factory = AcceptorFactory(
                name=listener.name,
                acceptor_settings=acceptor_settings(config, listener),
                access=listener_access(config, listener),
                spool=self.spool,
                clock=reactor,
                limits=limits,
                admit=self._admit,
                space_low=self.space.low,
                store_down=lambda: not self.heartbeat.available,
                observer=self.observer,
                user_identity=listener_identity(listener, passcodes=self.passcodes),
                refusing=self.drain.refusing,
                commitment=self.commitment_scp,
                qr=self.qr_scp,
            )
            service = ListenerService(
                reactor, listener, factory, server_tls(listener), self._tls_failure_hook(listener.name),
                self._proxy_refused_hook(listener.name),
            )
            service.setServiceParent(self)
            self.listeners.append(service)
        # Issue 17: the STOW-RS inbound service, on its own port(s); started with the listeners.
        self.dicomweb: Any = None
        if config.dicomweb is not None:
            from gateway.dicomweb.service import dicomweb_service

            self.dicomweb = dicomweb_service(reactor, self)
            self.dicomweb.setServiceParent(self)
        # Issue 15: committers of archives that commit, and where their reports go.
        self._add_archive_commitment()
        self._janitor = LoopingCall(self._clean)
        self._janitor.clock = reactor
        # Issue 18 (notify): the study tracker, run on the housekeeping node (started after recovery).
        self.tracker: Any = None
        self._tracker_call: Any = None
        if hasattr(store, "open_studies"):
            from gateway.notify.tracker import StudyTracker

            self.tracker = StudyTracker(
                store=store,
                store_runner=self.store_runner,
                file_runner=self.blocking,
                routes=lambda: {route.name: route for route in self.config.routes},
                instances_dir=self.spool.instances_dir,
                owner=self.owner,
                node=self.config.node,
                wall=wall,
                holds=self._holds_housekeeping,
                completed=self._study_completed,
            )
        self.ready: Deferred[None] = Deferred()
        # Scrape-time gauges read a snapshot renewed on the store's thread (never at scrape time).
        self.refresher = StateRefresher(
            metrics=self.metrics,
            store=store,
            store_runner=self.store_runner,
            file_runner=self.blocking,
            spool_root=config.spool.path,
            destinations=lambda: [d.name for d in self.config.destinations],
            down=lambda: [name for name, w in self.workers.items() if w.status().circuit == "open"],
            clock=reactor,
            wall=wall,
            stranded_after=stranded_after(config),
            own_node=self._own_node,
        )
        self._declare_metrics()
        self._add_commitment_worker()

    # -- Query/Retrieve (issue 16) -----------------------------------------------------------

    def _retrieve_route(self, listener_name: str) -> str:
        """``retrieve.route`` in force on the listener named ``listener_name`` (``""``: relayed as received)."""
        from gateway.qr.move import retrieve_config

        settings = retrieve_config(self.config, listener_name)
        return settings.route if settings is not None else ""

    def _qr_scp(self, reactor: Any, wall: Callable[[], float]) -> QueryRetrieveSCP:
        """The Q/R SCP with its :class:`~gateway.qr.context.QRContext` (sources opened with ``connect_dicom``)."""

        def connect(destination: Any, proposals: Any, role_selections: Any = (), extended_negotiations: Any = ()) -> "Deferred[Any]":
            return connect_dicom(
                reactor, destination, proposals, role_selections, verification=False, extended_negotiations=extended_negotiations
            )

        ctx = QRContext(
            config=lambda: self.config,
            journal=self.store,
            run=self.store_runner,
            reactor=reactor,
            wall=wall,
            observer=self.observer,
            connect=connect,
            ae_title=self.config.ae_title,
        )
        return QueryRetrieveSCP(ctx)

    # -- Storage Commitment (issue 15) -----------------------------------------------------

    def _add_commitment_worker(self) -> None:
        """The reports this node owes: leased, decided, sent and retried by one worker (:mod:`gateway.commitment.worker`).

        Made when Storage Commitment is configured at start (top level or a
        listener), or by the first reload that configures it (the SCP then
        accepts N-ACTIONs at once, so their reports need a worker). It starts
        with the other children, after recovery.
        """
        self.commitment_worker: Any = None  # a CommitmentWorker when configured
        if self.config.commitment is None and all(listener.commitment is None for listener in self.config.listen):
            return
        from gateway.commitment.report import ReportSender
        from gateway.commitment.worker import CommitmentWorker
        from gateway.queue.commitments import ICommitmentJournal

        if not ICommitmentJournal.providedBy(self.store):
            self.log.error("Storage Commitment is configured but the queue store keeps no commitment journal")
            return
        # The listener side (gateway.commitment.scp): its open requester associations
        # carry reports for ``report_association: open``, and each N-ACTION it
        # journals pokes the worker.
        scp = self.commitment_scp
        open_route = scp.open_associations.open_route
        self.commitment_worker = CommitmentWorker(
            self.store,
            self.store_runner,
            self._reactor,
            self._wall,
            lambda: self.config,
            ReportSender(lambda: self.config, self._reactor, reactor=self._reactor, open_route=open_route),
            observer=self.observer,
            lease_seconds=self.config.cluster.lease,
        )
        scp.on_journaled = self.commitment_worker.poke
        self.commitment_worker.setServiceParent(self)

    def poke_commitments(self) -> None:
        """An archive's report changed copies: the transactions waiting on them may be decided now."""
        if self.commitment_worker is not None:
            self.commitment_worker.poke()

    # -- C-MOVE destinations (issue 16) ----------------------------------------------------

    def _add_move_workers(self, config: GatewayConfig) -> None:
        """A worker per ``modalities`` entry, ``move.<name>``, when retrieve is configured (:func:`gateway.qr.move.move_destinations`).

        A relayed C-MOVE's instances are journaled to them by the intake;
        they are ordinary queue destinations (retries, dead letters, ``queue
        list``). Called again after a reload: a changed entry's worker is
        replaced, a removed one stopped (its entries wait, as a removed
        destination's do).
        """
        from gateway.qr.move import move_destinations

        wanted = {d.name: d for d in move_destinations(config)}
        current = getattr(self, "move_workers", {})
        for name, worker in list(current.items()):
            if wanted.get(name) != worker.config:
                self.workers.pop(name, None)
                del current[name]
                worker.disownServiceParent()
        for name, destination in wanted.items():
            if name not in current:
                current[name] = self._add_worker(destination)
                if self.running and not current[name].running:
                    current[name].startService()
        self.move_workers: dict[str, DestinationWorker] = current

    # -- workers ---------------------------------------------------------------------------

    def _add_worker(self, destination: Any) -> DestinationWorker:
        worker = DestinationWorker(
            destination,
            self.store,
            self.store_runner,
            self.blocking,
            self._reactor,
            observer=self.observer,
            wall=self._wall,
            reactor=self._reactor,
            scratch_dir=os.path.join(self.config.spool.path, "scratch"),
            prepare=self.copies,
            lease_seconds=self.config.cluster.lease,
            heartbeat_seconds=self.config.cluster.heartbeat,
        )
        self.workers[destination.name] = worker
        worker.setServiceParent(self)
        drain = getattr(self, "drain", None)
        if drain is not None and drain.draining:
            # A worker replaced by a reload during a drain drains too (issue 14).
            worker.set_draining(True)
        return worker

    # -- Storage Commitment towards archives (issue 15) -----------------------------------

    def _add_archive_commitment(self) -> None:
        """The gateway as Storage Commitment SCU towards destinations with ``storage_commitment: true``.

        One :class:`~gateway.commitment.archive.ArchiveCommitter` per such
        destination (a child service: started after recovery, stopped with
        the gateway), poked by its worker once delivered copies are noted;
        and :attr:`archive_reports`, which the listeners hand the archives'
        reports to (``None`` when the store keeps no commitment journal).
        Called again after a reload: a destination that now commits gets
        its committer; one that no longer does keeps an idle one (it reads
        the configuration in force at each look).
        """
        from gateway.commitment.archive import ArchiveCommitter, ArchiveReports, ask_archive
        from gateway.queue.commitments import ICommitmentJournal

        journal = ICommitmentJournal(self.store, None)
        if not hasattr(self, "committers"):
            self.committers: dict[str, ArchiveCommitter] = {}
            self.archive_reports: ArchiveReports | None = None
            if journal is not None:
                self.archive_reports = ArchiveReports(
                    self.store_runner,
                    journal,
                    lambda: self.config.destinations,
                    self.observer,
                    self._wall,
                    on_answered=self.poke_commitments,
                )
                # The listeners' Storage Commitment SCP hands archives' N-EVENT-REPORTs here.
                self.commitment_scp.archive_reports = self.archive_reports
        for destination in self.config.destinations:
            if not isinstance(destination, DicomDestination) or not destination.storage_commitment:
                continue
            name = destination.name
            if name not in self.committers:
                if journal is None:
                    self.log.error(
                        "destination {name} has storage_commitment, but the queue store keeps no commitment journal",
                        name=name,
                    )
                    continue
                committer = ArchiveCommitter(
                    name,
                    lambda name=name: self._dicom_destination(name),  # type: ignore[misc]
                    journal,
                    self.store,
                    self.store_runner,
                    self._reactor,
                    self._wall,
                    ask_archive(self._reactor, self.archive_reports),
                    observer=self.observer,
                    singleton_seconds=max(3 * INTERVAL, 3 * self.config.cluster.heartbeat),
                )
                self.committers[name] = committer
                committer.setServiceParent(self)
                if self.running and not committer.running:
                    committer.startService()
            worker = self.workers.get(name)
            if worker is not None:
                worker.on_noted = self.committers[name].poke

    def _dicom_destination(self, name: str) -> DicomDestination | None:
        """The DICOM destination ``name`` of the configuration in force, ``None`` if there is none."""
        for destination in self.config.destinations:
            if destination.name == name and isinstance(destination, DicomDestination):
                return destination
        return None

    def _admit(
        self, writer: Any, info: Any, sub_operation: tuple[str, int] | None = None, refuse: Any = None
    ) -> Deferred[Any]:
        """The intake's ``take``; its outcome goes to the observer (metrics: routes, unrouted, duplicates; audit: received, dropped).

        ``refuse`` is the STOW-RS service's check before routing (issue 17, :meth:`gateway.intake.Intake.take`).
        """
        d = self.intake.take(writer, info, sub_operation, refuse)
        d.addCallback(self._admitted, info)
        return d

    def _admitted(self, admission: Any, info: Any) -> Any:
        """Tell the observer of an admission of a sealed instance; pass it on unchanged."""
        if admission.spooled is not None:
            self.observer.observe(events.InstanceAdmitted(admission, admission.spooled, info))
        return admission

    def _own_node(self) -> NodeState | None:
        """This node as its own heartbeat knows it (metrics, for a store without a node table)."""
        last = self.heartbeat.last_beat
        return None if last is None else NodeState(self.config.node, last)

    def _node_detail(self, stopped: bool = False) -> str:
        """What this node says of itself in each heartbeat: its listeners, version, whether it drains (or stopped)."""
        addresses = []
        for service in self.listeners:
            if service.port is not None:
                try:
                    host = service.port.getHost()
                except OSError:
                    continue  # a port closed under us (stopping)
                addresses.append(f"{getattr(host, 'host', '')}:{getattr(host, 'port', '')}")
        # ``self.drain`` (gateway.drain.Drain, issue 14's front door) when merged; absent, never draining.
        drain = getattr(self, "drain", None)
        return node_detail(addresses, __version__, bool(getattr(drain, "draining", False)), stopped)

    def _declare_metrics(self) -> None:
        self.metrics.declare(
            [d.name for d in self.config.destinations],
            [r.name for r in self.config.routes],
            [listener.name for listener in self.config.listen],
            # Issue 15: archives asked for Storage Commitment get their series at 0.
            [d.name for d in self.config.destinations if getattr(d, "storage_commitment", False)],
            # Issue 16: the query sources get their failure and latency series at 0.
            query_sources=sorted(
                {
                    name
                    for section in [self.config.query, *(listener.query for listener in self.config.listen)]
                    if section is not None
                    for name in section.sources
                }
            ),
        )

    def _tls_failure_hook(self, listener: str) -> Callable[[str, str, str], None]:
        def failed(peer: str, reason: str, detail: str) -> None:
            self.observer.observe(events.TLSHandshakeFailed(listener, peer, reason, detail))

        return failed

    def _proxy_refused_hook(self, listener: str) -> Callable[[str, str, str], None]:
        def refused(peer: str, reason: str, detail: str) -> None:
            self.observer.observe(events.ProxyRefused(listener, peer, reason, detail))

        return refused

    def _poke(self, destinations: Any) -> None:
        for name in destinations:
            worker = self.workers.get(name)
            if worker is not None:
                worker.poke()

    # -- life cycle ------------------------------------------------------------------------

    def startService(self) -> None:
        """Recover the spool and the journal, then start workers and listeners."""
        Service.startService(self)
        from gateway.stores import describe_store

        self.log.info(
            "dicom-gateway {version} starting: node {node}, AE title {ae_title}, spool {spool}{shared}, queue {queue}, "
            "{n} destination(s), {r} route(s)",
            version=__version__,
            node=self.config.node,
            queue=describe_store(self.config),  # never the password
            shared=" (shared)" if self.config.spool.shared else "",
            ae_title=printable(self.config.ae_title),
            spool=self.config.spool.path,
            n=len(self.config.destinations),
            r=len(self.config.routes),
        )
        from gateway.config.schema import NOTIFICATION_SINKS

        for name in self.config.unused_destinations():
            if isinstance(self.config.destination(name), NOTIFICATION_SINKS):
                # Issue 18 (notify): a sink is used by a route's notify.sinks, not its forward list.
                self.log.warn("sink {name} is in no route's notify.sinks: it is never notified", name=name)
            else:
                self.log.warn("destination {name} is named by no route", name=name)
        from gateway.config.commitment import commitment_warnings
        from gateway.config.qr import qr_warnings

        # Issues 15 and 16: what `check` prints, in the log too.
        for warning in commitment_warnings(self.config) + qr_warnings(self.config):
            self.log.warn("{warning}", warning=warning)
        self.audit.application_activity("start", f"dicom-gateway {__version__}")
        d = Deferred.fromCoroutine(self._start())
        d.addErrback(self._start_failed)

    async def _start(self) -> None:
        if self.config.queue.backend == "postgresql":
            # Before anything is recovered or removed under this node's name (issue 14).
            await check_node_name_free(
                self.store, self.store_runner, self._reactor, self._wall, self.config.node, self.config.cluster.heartbeat
            )
        for path in self.spool.recover():
            self.log.warn("removed incomplete spool file {path} left by an earlier run", path=path)
        returned, removed = await self.recovery.recover()
        if removed:
            self.log.warn("{count} spooled file(s) without a journal record (never acknowledged) were removed", count=removed)
        # Slot files for the first instances, after recovery (which removes unused ones).
        await self.blocking.run(self.spool.prepare_slots)
        adopted = await self.store_runner.run(self.store.adopt_plans, legacy_plans(self.config.routes))
        if adopted:
            self.log.warn(
                "{count} entr(y/ies) queued before morph plans were journaled now carry their route's current plan",
                count=adopted,
            )
        # Issue 16: C-GET scratch files (sub-operations, hand-overs, morphed copies) a crash left behind.
        from gateway.qr.get import sweep_scratch

        older_than = None
        if self.config.spool.shared:
            # Other nodes' C-GETs may be using their files: only those older than any C-GET can live.
            sections = [self.config.retrieve, *(listener.retrieve for listener in self.config.listen)]
            older_than = max((section.timeout for section in sections if section is not None), default=0.0) + 60.0
        swept = await self.blocking.run(
            sweep_scratch, os.path.join(self.config.spool.path, "scratch"), older_than, self._wall()
        )
        if swept:
            self.log.warn("{count} C-GET scratch file(s) left by an earlier run were removed", count=swept)
        if hasattr(self.store, "retrieves"):
            # Issue 16: retrieves this node had open died with its requesters' associations.
            from gateway.qr.move import close_orphan_retrieves

            ended = await self.store_runner.run(close_orphan_retrieves, self.store, self.config.node, self._wall())
            if ended:
                self.log.warn("{count} retrieve(s) open when the gateway stopped were ended (failed)", count=ended)
        if not self.running:
            return
        # The first heartbeat before the listeners: other nodes see this one, and a
        # store that does not answer refuses associations from the start.
        await self.heartbeat.start()
        for service in list(self):
            if not service.running:
                service.startService()
        self._janitor.start(self.config.spool.clean_interval, now=False)
        self._schedule_tracker()
        self.refresher.start()
        self.ready.callback(None)

    def _start_failed(self, failure: Any) -> None:
        if failure.check(NodeNameInUse):
            self.log.critical("{error}; stopping", error=failure.getErrorMessage())
        else:
            self.log.failure("start-up recovery failed; stopping", failure)
        if self._reactor.running:
            self._reactor.stop()

    async def _clean_once(self) -> None:
        """One housekeeping round.

        On a shared spool it runs on one node at a time: the holder of the
        housekeeping singleton, asked again this round (a node that lost it
        while paused must not clean up behind the new holder). It removes
        delivered files past retention, forgets records past the duplicate
        window (or a commitment section's lookback and deadline, when
        longer), and removes the unjournaled files of nodes gone for good. With
        a spool of its own, each node cleans its own instances' files. The
        Query/Retrieve journal (issue 16) is cleaned by the singleton's holder
        in every case.
        """
        if not self.heartbeat.available:
            return  # the journal is away: nothing can be marked removed
        shared = bool(self.owner)  # as started: spool and queue changes need a restart
        if shared:
            now = self._wall()
            held = await self.store_runner.run(
                self.store.hold_singleton, HOUSEKEEPING, now, self.heartbeat.singleton_seconds
            )
            if not held:
                return
        # Node-local spools on one PostgreSQL queue: each node cleans its own files.
        # (SQLite is one node's: every record is its own, whatever node name it carries.)
        gone: list[str] = []
        if self.node_local:
            now = self._wall()
            bound = now - dead_node_after(self.config)
            gone = [status.node for status in await self.store_runner.run(self.store.nodes, now) if status.last_seen < bound]
        # Issue 15: a commitment request judges the records of what was received
        # since its lookback, until its deadline; they (not the files) are kept
        # that long, or every instance delivered before the duplicate window
        # ran out would be reported 0x0112 (never received).
        sections = [self.config.commitment, *(listener.commitment for listener in self.config.listen)]
        keep_records = max(
            [self.config.duplicate_window] + [c.lookback + c.deadline for c in sections if c is not None]
        )
        removed = await self.recovery.clean(
            self.config.keep_delivered,
            keep_records,
            node=self.store.node if self.node_local else "",
            gone=gone,
        )
        if removed:
            self.log.debug("removed {count} delivered instance(s) from the spool", count=removed)
        if shared:
            now = self._wall()
            nodes = await self.store_runner.run(self.store.nodes, now)
            swept = await self.recovery.sweep_dead_nodes(nodes, now - dead_node_after(self.config))
            if swept:
                self.log.warn("{count} unjournaled spool file(s) of nodes gone for good were removed", count=swept)
        # Issue 16: the Query/Retrieve journal's finished retrieves and unused remapped UIDs,
        # once per cluster: the housekeeping singleton's holder (asked above when shared).
        if shared or await self.store_runner.run(
            self.store.hold_singleton, HOUSEKEEPING, self._wall(), self.heartbeat.singleton_seconds
        ):
            cleaned = await self.recovery.clean_retrieves(self.config.retrieve_retention, self.config.remap_retention)
            if cleaned.retrieves or cleaned.items or cleaned.remapped_uids:
                self.log.info(
                    "journal clean-up: {retrieves} finished retrieve(s) ({items} instance row(s)) past"
                    " retention.retrieves, {remapped} remapped UID(s) past retention.remapped_uids deleted",
                    retrieves=cleaned.retrieves, items=cleaned.items, remapped=cleaned.remapped_uids,
                )
                self.observer.observe(
                    events.RetrieveJournalCleaned(cleaned.retrieves, cleaned.items, cleaned.remapped_uids)
                )
            # Issue 18 (studies): study rows completed before retention.studies.
            studies = await self.recovery.clean_studies(self.config.study_retention)
            if studies:
                self.log.info("journal clean-up: {count} study row(s) past retention.studies deleted", count=studies)

    # -- study notifications (issue 18) -----------------------------------------------------

    def _holds_housekeeping(self) -> Deferred[bool]:
        """Whether this node runs the housekeeping now (the singleton, asked every round; never while the journal is away)."""
        if not self.heartbeat.available:
            return succeed(False)
        return self.store_runner.run(self.store.hold_singleton, HOUSEKEEPING, self._wall(), self.heartbeat.singleton_seconds)

    def _schedule_tracker(self) -> None:
        """The next tracker round, a quarter of the shortest quiet period from now (the routes in force)."""
        from gateway.notify.tracker import tracker_interval

        if self.tracker is None or not self.running:
            return
        self._tracker_call = self._reactor.callLater(tracker_interval(self.config.routes), self._track)

    def _track(self) -> None:
        """One tracker round, then the next is scheduled (a failure is logged, not fatal)."""
        self._tracker_call = None
        d = Deferred.fromCoroutine(self.tracker.run_once())

        def failed(failure: Any) -> None:
            if failure.check(StoreUnavailable):
                self.log.warn("study tracking skipped: {error}", error=failure.getErrorMessage())
            else:
                self.log.failure("study tracking failed", failure)

        d.addErrback(failed)
        d.addBoth(lambda _: self._schedule_tracker())

    def _study_completed(self, completion: Any) -> None:
        """A completion was recorded: metrics and events, and the sinks' workers look at their queues now."""
        self.observer.observe(
            events.StudyCompleted(
                completion.route, completion.event, completion.forced, completion.with_failures,
                completion.sinks, completion.seconds,
            )
        )
        self._poke(completion.sinks)

    def _clean(self) -> Deferred[None]:
        d = Deferred.fromCoroutine(self._clean_once())

        def failed(failure: Any) -> None:
            if failure.check(StoreUnavailable):
                # An outage the heartbeat reports; the next round after it tries again.
                self.log.warn("spool clean-up skipped: {error}", error=failure.getErrorMessage())
            else:
                self.log.failure("spool clean-up failed", failure)

        d.addErrback(failed)
        return d

    def stopService(self) -> Deferred[Any]:
        """Stop listeners and workers (workers finish in-flight sends within their grace), close the journal."""
        self.log.info("dicom-gateway stopping")
        self.audit.application_activity("stop", f"dicom-gateway {__version__}")
        for sink in self.audit.sinks:
            close = getattr(sink, "close", None)
            if close is not None and not hasattr(sink, "path"):
                close()  # syslog; the audit file stays open for the last records
        if self._janitor.running:
            self._janitor.stop()
        if self._tracker_call is not None and self._tracker_call.active():
            self._tracker_call.cancel()
            self._tracker_call = None
        self.heartbeat.stop()
        self.drain.stop()
        self.refresher.stop()
        last_words = self._node_detail(stopped=True)  # while the listeners still have their addresses
        d = super().stopService()
        if self.heartbeat.last_beat is not None:
            # A clean stop says so, so the next process under this name starts without waiting.
            # (Never written by a process that did not beat: the name may be another's.)
            d.addBoth(lambda _: self.heartbeat.last_words(last_words))
        d.addBoth(lambda _: self.store_runner.run(self.store.close))
        d.addErrback(lambda f: self.log.failure("closing the queue journal failed", f))
        return d

    # -- reload ----------------------------------------------------------------------------

    def _reload_tls(self, new: GatewayConfig) -> None:
        """Re-read each TLS listener's certificate and key (HARDENING T16).

        New handshakes get the new pair; running associations keep theirs.
        A pair that cannot be used is refused with a logged error and the
        old one stays.
        """
        by_name = {listener.name: listener for listener in new.listen}
        for service in self.listeners:
            now = by_name.get(service.listener.name)
            if service.tls is None or now is None or now.tls is None:
                continue
            error = service.tls.reload(server_tls_settings(now.tls))
            if error is None:
                self.log.info("listener {name}: TLS certificate and key reloaded", name=now.name)
            else:
                self.log.error(
                    "listener {name}: new TLS certificate refused, keeping the running one: {error}",
                    name=now.name,
                    error=error,
                )
                self.audit.application_activity("reload", f"TLS certificate of {now.name} refused: {error}", Outcome.MINOR_FAILURE)

    def _reload_negotiation(self, new: GatewayConfig) -> None:
        """Give each listener the SOP classes the reloaded configuration offers there (issue 16).

        The Q/R SCP and the Storage Commitment SCP read the configuration per
        request, so a reload that adds or removes ``query``, ``retrieve`` or
        ``commitment`` must change what new associations may negotiate too;
        otherwise a new ``query`` section would be refused at negotiation
        until a restart, and a removed one still negotiated (then refused
        0x0122 per request). Running associations keep what they negotiated.
        A listener is matched by name; its own sections are those of the new
        file's listener of that name (the address needs a restart, not these).
        """
        by_name = {listener.name: listener for listener in new.listen}
        for service in self.listeners:
            listener = by_name.get(service.listener.name, service.listener)
            settings = acceptor_settings(new, listener)
            # The AE title, PDU size and syntaxes need a restart (reported above): keep them.
            current = service.factory.acceptor_settings
            service.factory.acceptor_settings = replace(
                current,
                abstract_syntaxes=settings.abstract_syntaxes,
                scp_role_abstract_syntaxes=settings.scp_role_abstract_syntaxes,
                get_sub_operations=settings.get_sub_operations,
                relational_queries=settings.relational_queries,
            )

    def _reload_ae_title(self, old: GatewayConfig, new: GatewayConfig) -> None:
        """A new ``ae_title`` applies at once where the gateway names itself to its peers (issue 16).

        Relayed C-MOVEs name it as Move Destination (:attr:`QRContext.ae_title`)
        and the intake matches their sub-operations by it, so the listeners
        must accept it as called AE title too (their other access rules stay
        those they started with). The audit trail's source ID keeps the old
        title until a restart.
        """
        self.qr_scp.ctx.ae_title = new.ae_title
        if old.ae_title == new.ae_title:
            return
        self.log.warn("configuration reload: ae_title is now {title}; the audit source ID changes at the next restart", title=new.ae_title)
        for service in self.listeners:
            service.factory.access = listener_access(replace(new, accept=old.accept), service.listener)

    def reload(self, load: Callable[[str], GatewayConfig]) -> Deferred[bool]:
        """Re-read the configuration (SIGHUP) and apply what can change while running.

        Routes, the duplicate window, retention and destinations are applied;
        a worker is replaced only when its destination's configuration
        changed (Buildbot's reconfigure by name). Listener, spool and limit
        changes need a restart and are reported. Associations in progress
        finish under the configuration they started with.

        :param load: the configuration loader (``load_config``).
        :returns: a Deferred firing with whether the new configuration was applied.
        """
        try:
            new = load(self.config.source)
        except ConfigErrors as errors:
            self.log.error("configuration reload refused; keeping the running one:\n{errors}", errors=str(errors))
            self.observer.observe(events.ConfigReloaded(False))
            self.audit.application_activity("reload", "configuration refused", Outcome.MINOR_FAILURE)
            return succeed(False)
        old = self.config
        self._reload_tls(new)
        if self.dicomweb is not None:
            self.dicomweb.reload_tls(new.dicomweb)  # issue 17: the STOW-RS addresses' certificates
        if (old.dicomweb is None) != (new.dicomweb is None) or (
            old.dicomweb is not None and new.dicomweb is not None and old.dicomweb.listen != new.dicomweb.listen
        ):
            # Issue 17: auth, limits and retrieve_url apply now (read per request); the addresses need a restart.
            self.log.warn("configuration reload: 'dicomweb' addresses changed; restart the gateway to apply them")
        for what in ("listen", "spool", "limits", "queue", "node", "cluster", "accept"):
            if getattr(old, what) != getattr(new, what):
                self.log.warn("configuration reload: '{what}' changed; restart the gateway to apply it", what=what)
        # The store, its node name and the heartbeat were built from these (issue 14): keep them
        # until a restart, so nothing reads a node name the store does not speak for.
        new = replace(new, node=old.node, queue=old.queue, queue_path=old.queue_path, cluster=old.cluster)
        # API tokens apply at once (read per request); the HTTP listener itself needs a restart.
        if replace(old.http, token="", token_file="", tokens=()) != replace(new.http, token="", token_file="", tokens=()):
            self.log.warn("configuration reload: 'http' changed; restart the gateway to apply it (tokens apply now)")
        self.config = new
        self.intake.duplicate_window = new.duplicate_window
        self._reload_negotiation(new)
        self._reload_ae_title(old, new)
        old_destinations = {d.name: d for d in old.destinations}
        new_destinations = {d.name: d for d in new.destinations}
        stopping = []
        for name, destination in old_destinations.items():
            if new_destinations.get(name) != destination:
                worker = self.workers.pop(name)
                stopping.append(worker.disownServiceParent() or succeed(None))
        done = DeferredList(stopping, consumeErrors=True)

        def start_new(_: object) -> bool:
            for name, destination in new_destinations.items():
                if name not in self.workers:
                    worker = self._add_worker(destination)
                    if self.running and not worker.running:
                        worker.startService()
            self._add_archive_commitment()  # issue 15: committers and their workers' pokes
            self._add_move_workers(new)  # issue 16: move.<name> destinations
            if self.commitment_worker is None:
                # Issue 15: commitment added by this reload. The listeners' SCP reads the
                # configuration per N-ACTION and accepts at once: its reports need a worker.
                self._add_commitment_worker()
                if self.commitment_worker is not None and self.running and not self.commitment_worker.running:
                    self.commitment_worker.startService()
            self.log.info(
                "configuration reloaded: {n} destination(s), {r} route(s)",
                n=len(new.destinations),
                r=len(new.routes),
            )
            self._declare_metrics()
            self.observer.observe(events.ConfigReloaded(True))
            self.audit.application_activity("reload", "configuration reloaded")
            return True

        done.addCallback(start_new)
        return done
