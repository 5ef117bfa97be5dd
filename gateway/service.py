"""The running gateway: a Twisted MultiService built once from a validated configuration.

:func:`build_service` is the one place that turns a
:class:`~gateway.config.schema.GatewayConfig` into live objects: the spool,
its blocking runner, the acceptance settings and access policy, and one TCP
listener per ``listen`` entry. Everything with time or I/O is handed the
reactor explicitly (DESIGN 1.2).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from gateway import __version__
from gateway.access import AccessPolicy
from gateway.blocking import IBlockingRunner, ThreadPoolRunner
from gateway.config.schema import GatewayConfig, ListenerConfig
from gateway.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from gateway.listen import AcceptorFactory, AcceptorLimits, printable
from gateway.sopclasses import ACCEPTED_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES, VERIFICATION_SOP_CLASS
from gateway.spool import Spool
from gateway.ul.negotiate import AcceptorSettings


def acceptor_settings(config: GatewayConfig) -> AcceptorSettings:
    """What the listeners accept, from the configuration.

    :param config: the validated configuration.
    :returns: the negotiation settings shared by every listener.
    """
    return AcceptorSettings(
        ae_title=config.ae_title,
        max_pdu_length=config.limits.max_pdu_length,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        abstract_syntaxes=frozenset(STORAGE_SOP_CLASSES) | {VERIFICATION_SOP_CLASS},
        transfer_syntaxes=tuple(ACCEPTED_TRANSFER_SYNTAXES),
        accept_unknown_abstract_syntaxes=config.accept.unknown_sop_classes,
    )


class ListenerService(Service):
    """Listens on one address with an :class:`~gateway.listen.AcceptorFactory`."""

    log = Logger(namespace="gateway.service")

    def __init__(self, reactor: Any, listener: ListenerConfig, factory: AcceptorFactory) -> None:
        self._reactor = reactor
        self.listener = listener
        self.factory = factory
        self.port: IListeningPort | None = None
        self.setName(f"listen:{listener.name}")

    def startService(self) -> None:
        """Bind the port; a failure to bind stops the gateway with the reason."""
        super().startService()
        host = self.listener.host
        if ":" in host:
            endpoint = TCP6ServerEndpoint(self._reactor, self.listener.port, backlog=128, interface=host)
        else:
            endpoint = TCP4ServerEndpoint(self._reactor, self.listener.port, backlog=128, interface=host)
        self._listening = endpoint.listen(self.factory)
        self._listening.addCallback(self._bound)

    def _bound(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        address = port.getHost()
        self.log.info(
            "listening on {host}:{port} as {ae_title}",
            host=address.host,
            port=address.port,
            ae_title=self.factory.acceptor_settings.ae_title,
        )
        return port

    def stopService(self) -> Deferred[None]:
        """Stop accepting, then abort open associations (partial instances are discarded)."""
        super().stopService()
        for protocol in list(self.factory.connections):
            protocol.shutdown()
        if self.port is not None:
            return Deferred.fromCoroutine(self._stop_listening())  # type: ignore[return-value]
        return succeed(None)

    async def _stop_listening(self) -> None:
        assert self.port is not None
        await self.port.stopListening()


class GatewayService(MultiService):
    """The whole gateway: its listeners (and, later, forwarders and HTTP).

    :param reactor: the reactor (time, TCP, threads).
    :param config: the validated configuration.
    :param blocking: the runner for fsync and file walks; a dedicated thread pool by default.
    """

    log = Logger(namespace="gateway.service")

    def __init__(self, reactor: Any, config: GatewayConfig, blocking: IBlockingRunner | None = None) -> None:
        super().__init__()
        self.config = config
        if blocking is None:
            blocking = ThreadPoolRunner.dedicated(reactor, name="spool", minthreads=1, maxthreads=4)
        self.spool = Spool(
            config.spool.path,
            blocking,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            max_instance_size=config.limits.max_instance_size,
        )
        settings = acceptor_settings(config)
        access = AccessPolicy(config.ae_title, config.accept.calling_ae_titles)
        limits = AcceptorLimits(
            max_associations=config.limits.max_associations,
            acse_timeout=config.limits.acse_timeout,
            network_timeout=config.limits.network_timeout,
        )
        self.listeners: list[ListenerService] = []
        for listener in config.listen:
            factory = AcceptorFactory(
                name=listener.name,
                acceptor_settings=settings,
                access=access,
                spool=self.spool,
                clock=reactor,
                limits=limits,
            )
            service = ListenerService(reactor, listener, factory)
            service.setServiceParent(self)
            self.listeners.append(service)

    def startService(self) -> None:
        """Recover the spool, then start listening."""
        os.makedirs(self.config.spool.path, exist_ok=True)
        removed = self.spool.recover()
        for path in removed:
            self.log.warn("removed incomplete spool file {path} left by an earlier run", path=path)
        self.log.info(
            "dicom-gateway {version} starting: AE title {ae_title}, spool {spool}",
            version=__version__,
            ae_title=printable(self.config.ae_title),
            spool=self.config.spool.path,
        )
        super().startService()

    def stopService(self) -> Deferred[Any]:
        """Stop every listener and wait for them."""
        self.log.info("dicom-gateway stopping")
        return super().stopService()
