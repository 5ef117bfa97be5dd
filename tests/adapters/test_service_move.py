"""``GatewayService`` and C-MOVE destinations (issue 16): a ``move.<name>`` worker per ``modalities`` entry.

The service of :mod:`tests.adapters.test_service` (memory store, synchronous
runners, listener on port 0). ``retrieve`` is set on the loaded configuration
directly, so these tests do not depend on the loader's keys.
"""

from __future__ import annotations

import dataclasses

from gateway.config.schema import GatewayConfig, RetrieveConfig
from tests.adapters.test_service import ServiceTestCase

TEXT = """\
ae_title: GW
listen:
  - host: 127.0.0.1
    port: 0
spool: {path: spool, min_free: 0, resume_margin: 0}
destinations:
  pacs: {ae_title: PACS, host: 127.0.0.1, port: 1}
routes:
  - {name: r1, forward: [pacs]}
modalities:
  ws1: {ae_title: WS1, host: 127.0.0.1, port: 2}
"""


class MoveWorkerServiceTests(ServiceTestCase):
    """The ``move.<name>`` workers, as the service builds and reloads them."""

    def config(self, text: str, retrieve: bool = True, port: int = 2) -> GatewayConfig:  # type: ignore[override]
        """The loaded configuration with a top-level ``retrieve`` (unless ``retrieve`` is false), ws1 on ``port``."""
        config = super().config(text.replace("port: 2}", f"port: {port}}}"))
        return dataclasses.replace(config, retrieve=RetrieveConfig(sources=("pacs",)) if retrieve else None)

    def test_a_running_worker_per_modality(self) -> None:
        """Retrieve configured: ws1's worker move.ws1 runs, sending to WS1 as GW."""
        service = self.start(TEXT)
        worker = service.workers["move.ws1"]
        self.assertTrue(worker.running)
        self.assertEqual((worker.config.ae_title, worker.config.port, worker.config.calling_ae_title), ("WS1", 2, "GW"))

    def test_reload_replaces_a_changed_modality_and_removes_when_retrieve_goes(self) -> None:
        """A reload moving ws1 to another port replaces its worker; one removing retrieve stops it."""
        service = self.start(TEXT)
        first = service.workers["move.ws1"]
        self.assertIs(self.successResultOf(service.reload(lambda source: self.config(TEXT, port=3))), True)
        second = service.workers["move.ws1"]
        self.assertIsNot(second, first)
        self.assertEqual(second.config.port, 3)
        self.assertTrue(second.running)
        self.assertIs(self.successResultOf(service.reload(lambda source: self.config(TEXT, retrieve=False, port=3))), True)
        self.assertNotIn("move.ws1", service.workers)
        self.assertFalse(second.running)
