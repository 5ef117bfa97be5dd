"""``GatewayService`` and Query/Retrieve (issue 16): every listener hands Q/R requests to the one SCP."""

from __future__ import annotations

from dataclasses import replace

from twisted.internet import reactor

from gateway.blocking import SynchronousRunner
from gateway.config.schema import QueryConfig
from gateway.qr.scp import QueryRetrieveSCP
from gateway.queue.memory import MemoryQueueStore
from gateway.service import GatewayService
from tests.adapters.test_service import ROUTES_ONE, ServiceTestCase


class QRWiringTests(ServiceTestCase):
    """The service's Q/R block."""

    def test_every_listener_factory_has_the_qr_scp_with_its_context(self) -> None:
        """The listeners' factories share one QueryRetrieveSCP whose context reads the configuration in force."""
        config = self.config(ROUTES_ONE)
        config = replace(config, query=QueryConfig(tuple(d.name for d in config.destinations)[:1]))
        store = MemoryQueueStore()
        service = GatewayService(reactor, config, blocking=SynchronousRunner(), store_runner=SynchronousRunner(), store=store)
        self.assertIsInstance(service.qr_scp, QueryRetrieveSCP)
        self.assertEqual({id(listener.factory.qr) for listener in service.listeners}, {id(service.qr_scp)})
        ctx = service.qr_scp.ctx
        self.assertIs(ctx.config(), service.config)
        self.assertIs(ctx.journal, store)
        self.assertEqual(ctx.ae_title, config.ae_title)
        self.assertIsNotNone(ctx.connect)
