"""A reload of the gateway's configuration and the Query/Retrieve side (issue 16).

A :class:`gateway.service.GatewayService` on a ``MemoryReactorClock`` (never
started: nothing binds or connects) is reloaded with a new configuration
text: the AE title that relayed C-MOVEs name as Move Destination
(:attr:`QRContext.ae_title`) and the called AE title the listeners accept
follow it, and ``query.relational`` changes what new associations negotiate.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gateway.blocking import SynchronousRunner
from gateway.config.load import load_config_text
from gateway.queue.memory import MemoryQueueStore
from gateway.service import GatewayService
from gateway.ul import pdu
from gateway.ul.items import UserInformation

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"

TEXT = """\
ae_title: {title}
listen:
  - host: 127.0.0.1
    port: 0
spool: spool
destinations:
  archive1: {{ae_title: ARC1, host: 10.0.0.1, port: 104}}
query: {{sources: [archive1], relational: {relational}}}
retrieve: {{sources: [archive1]}}
modalities:
  ws1: {{ae_title: WS1, host: 10.0.0.9, port: 104}}
"""


def rq(called: str) -> pdu.AAssociateRQ:
    """An A-ASSOCIATE-RQ calling ``called`` (what a source sends for a relayed C-MOVE's sub-operations)."""
    return pdu.AAssociateRQ(
        called_ae_title=called,
        calling_ae_title="ARC1",
        presentation_contexts=(pdu.PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),),
        user_information=UserInformation(max_length=16384, implementation_class_uid="1.2.3"),
    )


class ReloadTests(SynchronousTestCase):
    """``dicom-gateway reload`` and the Q/R SCP."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        os.makedirs(os.path.join(self.tmp, "spool"))
        self.service = GatewayService(
            MemoryReactorClock(), self.load("GW_OLD", "false"),
            blocking=SynchronousRunner(), store_runner=SynchronousRunner(), store=MemoryQueueStore("gw-a"),
        )

    def load(self, title: str, relational: str) -> object:
        return load_config_text(TEXT.format(title=title, relational=relational), os.path.join(self.tmp, "gw.yaml"), self.tmp)

    def reload(self, title: str, relational: str) -> None:
        new = self.load(title, relational)
        self.assertTrue(self.successResultOf(self.service.reload(lambda source: new)))  # type: ignore[arg-type,return-value]

    def test_new_ae_title_is_named_by_relayed_moves_and_accepted_by_the_listeners(self) -> None:
        """After a reload changing ``ae_title``: QRContext.ae_title is the new one; the listener accepts it as called AE, not the old."""
        [listener] = self.service.listeners
        self.assertEqual(self.service.qr_scp.ctx.ae_title, "GW_OLD")
        self.assertIsNone(listener.factory.access.check(rq("GW_OLD")))
        self.reload("GW_NEW", "false")
        self.assertEqual(self.service.qr_scp.ctx.ae_title, "GW_NEW")
        self.assertIsNone(listener.factory.access.check(rq("GW_NEW")))
        refused = listener.factory.access.check(rq("GW_OLD"))
        assert refused is not None
        self.assertEqual(refused.reason, 7)  # PS3.8 9.3.4: called AE title not recognized

    def test_relational_follows_the_reload(self) -> None:
        """Turning ``query.relational`` on by reload makes new associations grant relational-queries."""
        [listener] = self.service.listeners
        self.assertFalse(listener.factory.acceptor_settings.relational_queries)
        self.reload("GW_OLD", "true")
        self.assertTrue(listener.factory.acceptor_settings.relational_queries)
        self.assertEqual(self.service.qr_scp.ctx.ae_title, "GW_OLD")
