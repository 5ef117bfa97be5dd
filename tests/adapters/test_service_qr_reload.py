"""``GatewayService`` reloads and the Q/R SOP classes a listener negotiates (issue 16).

The Q/R SCP reads the configuration per request, so a reload that adds or
removes ``query`` / ``retrieve`` changes what new associations negotiate too
(the listener's address, AE title and syntaxes still need a restart).
"""

from __future__ import annotations

from gateway.sopclasses import QR_FIND_SOP_CLASSES, QR_GET_SOP_CLASSES, QR_MOVE_SOP_CLASSES, STORAGE_SOP_CLASSES
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
"""

WITH_QR = TEXT + "query: {sources: [pacs]}\nretrieve: {sources: [pacs]}\n"


class QRReloadNegotiationTests(ServiceTestCase):
    """What a listener accepts follows ``query`` / ``retrieve`` across reloads."""

    def test_reload_adds_then_removes_the_qr_classes(self) -> None:
        """Without the sections no Q/R class; a reload adding them offers all six and the Storage SCP role; removing them withdraws them."""
        service = self.start(TEXT)
        (listener,) = service.listeners
        qr = QR_FIND_SOP_CLASSES | QR_MOVE_SOP_CLASSES | QR_GET_SOP_CLASSES
        self.assertFalse(qr & listener.factory.acceptor_settings.abstract_syntaxes)
        before = listener.factory.acceptor_settings
        self.assertIs(self.successResultOf(service.reload(lambda source: self.config(WITH_QR))), True)
        settings = listener.factory.acceptor_settings
        self.assertTrue(qr <= settings.abstract_syntaxes)
        self.assertTrue(frozenset(STORAGE_SOP_CLASSES) <= settings.scp_role_abstract_syntaxes)
        self.assertEqual((settings.ae_title, settings.transfer_syntaxes), (before.ae_title, before.transfer_syntaxes))
        self.assertIs(self.successResultOf(service.reload(lambda source: self.config(TEXT))), True)
        self.assertEqual(listener.factory.acceptor_settings, before)
