"""A Storage Commitment request through the acceptor adapter, in bytes (issue 15).

The modality's part is played with PDUs built by our codec (as in
:mod:`tests.adapters.test_listen`); behind the
:class:`~gateway.listen.AcceptorFactory` are the listener's real negotiation
settings (:func:`gateway.service.acceptor_settings`) and a real
:class:`~gateway.commitment.scp.CommitmentSCP` over the in-memory journal, so
the test covers the path from the A-ASSOCIATE-RQ to the journaled transaction.
"""

from __future__ import annotations

import shutil
import tempfile

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.access import AccessPolicy
from gateway.blocking import SynchronousRunner
from gateway.commitment.model import (
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH,
    ActionRequest,
    CommitmentReport,
    Reference,
)
from gateway.commitment.scp import CommitmentSCP
from gateway.config.schema import (
    AcceptConfig,
    CommitmentConfig,
    GatewayConfig,
    LimitsConfig,
    ListenerConfig,
    ModalityConfig,
    SpoolConfig,
)
from gateway.dimse import commands as dimse
from gateway.dimse.commitment import decode_event_report, encode_action_request
from gateway.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from gateway.listen import AcceptorFactory, AcceptorLimits
from gateway.queue.commitments import NewTransaction, Transaction, TransactionState
from gateway.queue.memory import MemoryQueueStore
from gateway.service import acceptor_settings
from gateway.spool import Spool
from gateway.ul import pdu
from tests.adapters.test_listen import Modality

IMPLICIT_LE = "1.2.840.10008.1.2"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
T0 = 1_700_000_000.0


class CommitmentThroughTheAcceptorTests(SynchronousTestCase):
    """N-ACTION-RQ in, N-ACTION-RSP out, the transaction in the journal."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.store = MemoryQueueStore()
        self.config = GatewayConfig(
            source="test.yaml",
            ae_title="DICOMGW",
            listen=(ListenerConfig("127.0.0.1", 0, name="dicom"),),
            accept=AcceptConfig(calling_ae_titles=("CT*",)),
            limits=LimitsConfig(),
            spool=SpoolConfig(self.tmp),
            modalities=(ModalityConfig("ct1", "CT01", "127.0.0.1", 11112),),
            commitment=CommitmentConfig(policy="received", deadline=60.0),
        )
        self.poked = 0

        def poke() -> None:
            self.poked += 1

        scp = CommitmentSCP(
            journal=self.store, run=SynchronousRunner(), config=lambda: self.config, wall=lambda: T0, on_journaled=poke
        )
        self.factory = AcceptorFactory(
            name="dicom",
            acceptor_settings=acceptor_settings(self.config, self.config.listen[0]),
            access=AccessPolicy("DICOMGW", ("CT*",)),
            spool=Spool(
                self.tmp,
                SynchronousRunner(),
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION_NAME,
                max_instance_size=1 << 20,
            ),
            clock=Clock(),
            limits=AcceptorLimits(),
            commitment=scp,
        )

    def test_request_is_journaled_and_answered_success(self) -> None:
        """The Push Model context is accepted, the N-ACTION answered 0x0000 and its transaction journaled OPEN."""
        modality = Modality()
        proto = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        proto.makeConnection(transport)
        proto.dataReceived(modality.associate_rq(((1, STORAGE_COMMITMENT_PUSH, (IMPLICIT_LE,)),)))
        (ac,) = modality.read(transport)
        self.assertIsInstance(ac, pdu.AAssociateAC)
        self.assertEqual([c.result for c in ac.presentation_contexts], [pdu.ContextResult.ACCEPTANCE])

        request = ActionRequest("1.2.9.7", (Reference(CT_IMAGE, "1.2.3.1"), Reference(CT_IMAGE, "1.2.3.2")))
        rq = dimse.NActionRQ(3, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, 1, True)
        proto.dataReceived(modality.command(1, rq) + modality.dataset(1, encode_action_request(request, IMPLICIT_LE), 64))
        (rsp,) = modality.responses(transport)
        self.assertIsInstance(rsp, dimse.NActionRSP)
        self.assertEqual((rsp.message_id_being_responded_to, rsp.status, rsp.action_type_id), (3, 0, 1))
        [transaction] = self.store.transactions()
        self.assertEqual(
            (transaction.transaction_uid, transaction.request.modality, transaction.request.policy,
             transaction.request.deadline, len(transaction.request.references)),
            ("1.2.9.7", "ct1", "received", T0 + 60.0, 2),
        )
        self.assertEqual(self.poked, 1)

    def test_report_on_the_open_association(self) -> None:
        """``report_association: open``: the report goes out on the requester's association in PDVs; its RSP fires."""
        modality = Modality()
        proto = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        proto.makeConnection(transport)
        proto.dataReceived(modality.associate_rq(((1, STORAGE_COMMITMENT_PUSH, (IMPLICIT_LE,)),)))
        modality.read(transport)
        registry = self.factory.commitment.open_associations  # type: ignore[union-attr]
        self.assertEqual(len(registry), 1)
        new = NewTransaction(
            "1.2.9.7", "CT01", "DICOMGW", "ct1", "dicom", "received", (Reference(CT_IMAGE, "1.2.3.1"),),
            T0 + 60, T0 + 600, T0 - 60, report_association="open",
        )
        report = CommitmentReport("1.2.9.7", committed=(Reference(CT_IMAGE, "1.2.3.1"),))
        d = registry.open_route(Transaction(new, T0, "n1", TransactionState.OPEN), report)
        assert d is not None
        items = modality.read(transport)
        pdvs = [p for item in items if isinstance(item, pdu.PDataTF) for p in item.pdvs]
        rq = dimse.decode_command(b"".join(p.data for p in pdvs if p.is_command))
        self.assertIsInstance(rq, dimse.NEventReportRQ)
        self.assertEqual(decode_event_report(b"".join(p.data for p in pdvs if not p.is_command), IMPLICIT_LE), report)
        rsp = dimse.NEventReportRSP(rq.message_id, 0, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, 1)
        proto.dataReceived(modality.command(1, rsp))
        self.assertIsNone(self.successResultOf(d))
        proto.connectionLost(None)
        self.assertEqual(len(registry), 0)
