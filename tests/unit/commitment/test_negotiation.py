"""Which listeners accept the Storage Commitment Push Model SOP Class (issue 15).

:func:`gateway.service.acceptor_settings` builds each listener's negotiation
settings; :func:`gateway.ul.negotiate.negotiate_acceptor` answers an
A-ASSOCIATE-RQ with them. Without a ``commitment`` section and without a
destination that commits, nothing changes: the class is answered result 3
(abstract syntax not supported), as before issue 15.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.commitment.model import STORAGE_COMMITMENT_PUSH
from gateway.config.schema import (
    AcceptConfig,
    CommitmentConfig,
    DicomDestination,
    GatewayConfig,
    LimitsConfig,
    ListenerConfig,
    SpoolConfig,
)
from gateway.service import acceptor_settings
from gateway.ul import pdu
from gateway.ul.items import SCPSCURoleSelection, UserInformation
from gateway.ul.negotiate import negotiate_acceptor

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"

#: A listener with its own commitment settings and one without.
ASKING = ListenerConfig("0.0.0.0", 11112, name="modalities", commitment=CommitmentConfig())
PLAIN = ListenerConfig("0.0.0.0", 11113, name="plain")


def config(commitment: CommitmentConfig | None = None, committing_archive: bool = False) -> GatewayConfig:
    """A gateway with the two listeners, an optional top-level ``commitment`` and an optional committing archive."""
    return GatewayConfig(
        source="test.yaml",
        ae_title="DICOMGW",
        listen=(ASKING, PLAIN),
        accept=AcceptConfig(),
        limits=LimitsConfig(),
        spool=SpoolConfig("/nonexistent"),
        destinations=(
            DicomDestination("pacs", "PACS", "10.0.0.20", 104, "DICOMGW", storage_commitment=committing_archive),
        ),
        commitment=commitment,
    )


def request(*syntaxes: str, roles: tuple[SCPSCURoleSelection, ...] = ()) -> pdu.AAssociateRQ:
    """An A-ASSOCIATE-RQ proposing CT Image Storage and Storage Commitment Push in ``syntaxes``."""
    return pdu.AAssociateRQ(
        called_ae_title="DICOMGW",
        calling_ae_title="CT01",
        presentation_contexts=(
            pdu.PresentationContextRQ(1, CT_IMAGE, (EXPLICIT_LE,)),
            pdu.PresentationContextRQ(3, STORAGE_COMMITMENT_PUSH, syntaxes or (IMPLICIT_LE, EXPLICIT_LE)),
        ),
        user_information=UserInformation(max_length=16384, implementation_class_uid="1.2.3", role_selections=roles),
    )


def answer(cfg: GatewayConfig, listener: ListenerConfig, rq: pdu.AAssociateRQ | None = None) -> pdu.PresentationContextAC:
    """The A-ASSOCIATE-AC's answer to the Storage Commitment context on ``listener``."""
    negotiation = negotiate_acceptor(rq or request(), acceptor_settings(cfg, listener))
    [item] = [c for c in negotiation.ac.presentation_contexts if c.context_id == 3]
    return item


class PushClassNegotiationTests(SynchronousTestCase):
    """The Push Model class is offered only where Storage Commitment is configured."""

    def test_without_commitment_the_class_is_refused_as_before(self) -> None:
        """No top-level commitment, no listener's, no committing archive: result 3 on a plain listener."""
        item = answer(config(), PLAIN)
        self.assertEqual(item.result, pdu.ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED)

    def test_top_level_commitment_accepts_on_every_listener(self) -> None:
        """A top-level ``commitment`` section: accepted on a listener without its own."""
        item = answer(config(CommitmentConfig()), PLAIN)
        self.assertEqual((item.result, item.transfer_syntax), (pdu.ContextResult.ACCEPTANCE, IMPLICIT_LE))

    def test_listener_commitment_accepts_on_that_listener_only(self) -> None:
        """``listen[i].commitment`` alone: accepted there, result 3 on the other listener."""
        cfg = config()
        self.assertEqual(answer(cfg, ASKING).result, pdu.ContextResult.ACCEPTANCE)
        self.assertEqual(answer(cfg, PLAIN).result, pdu.ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED)

    def test_implicit_only_and_explicit_only_requesters_are_accepted(self) -> None:
        """Implicit VR LE alone and Explicit VR LE alone are each accepted (some requesters offer one)."""
        for syntax in (IMPLICIT_LE, EXPLICIT_LE):
            item = answer(config(CommitmentConfig()), PLAIN, request(syntax))
            self.assertEqual((item.result, item.transfer_syntax), (pdu.ContextResult.ACCEPTANCE, syntax))

    def test_committing_archive_makes_every_listener_accept(self) -> None:
        """A destination with ``storage_commitment: true`` reports to us: the class is accepted on every listener."""
        item = answer(config(committing_archive=True), PLAIN)
        self.assertEqual(item.result, pdu.ContextResult.ACCEPTANCE)

    def test_storage_contexts_are_unchanged(self) -> None:
        """CT Image Storage is accepted as before on every configuration."""
        for cfg in (config(), config(CommitmentConfig()), config(committing_archive=True)):
            negotiation = negotiate_acceptor(request(), acceptor_settings(cfg, PLAIN))
            [item] = [c for c in negotiation.ac.presentation_contexts if c.context_id == 1]
            self.assertEqual(item.result, pdu.ContextResult.ACCEPTANCE)


#: An archive reporting to us: association requestor and Storage Commitment SCP (PS3.4 J.3.3.1.3).
ARCHIVE_ROLE = (SCPSCURoleSelection(STORAGE_COMMITMENT_PUSH, scu_role=False, scp_role=True),)


class ArchiveRoleNegotiationTests(SynchronousTestCase):
    """An archive's report association (SCU-role 0, SCP-role 1) is accepted only when a destination commits."""

    def test_committing_archive_gets_the_scp_role(self) -> None:
        """With ``storage_commitment: true`` somewhere, the context is accepted and the reply grants SCP-role 1."""
        negotiation = negotiate_acceptor(request(roles=ARCHIVE_ROLE), acceptor_settings(config(committing_archive=True), PLAIN))
        [item] = [c for c in negotiation.ac.presentation_contexts if c.context_id == 3]
        self.assertEqual(item.result, pdu.ContextResult.ACCEPTANCE)
        assert negotiation.ac.user_information is not None
        [reply] = negotiation.ac.user_information.role_selections
        self.assertEqual((reply.sop_class_uid, reply.scu_role, reply.scp_role), (STORAGE_COMMITMENT_PUSH, False, True))
        self.assertEqual((negotiation.contexts[3].scu_role, negotiation.contexts[3].scp_role), (False, True))

    def test_without_committing_archive_the_scp_role_is_declined(self) -> None:
        """Commitment for modalities only: a requestor asking to be SCP only gets result 1, as before (PS3.7 D.3.3.4)."""
        item = answer(config(CommitmentConfig()), PLAIN, request(roles=ARCHIVE_ROLE))
        self.assertEqual(item.result, pdu.ContextResult.USER_REJECTION)

    def test_modality_role_item_keeps_the_scu_role(self) -> None:
        """A modality proposing SCU-role 1 and SCP-role 1 keeps SCU, and its SCP role is declined without an archive."""
        roles = (SCPSCURoleSelection(STORAGE_COMMITMENT_PUSH, scu_role=True, scp_role=True),)
        negotiation = negotiate_acceptor(request(roles=roles), acceptor_settings(config(CommitmentConfig()), PLAIN))
        self.assertEqual((negotiation.contexts[3].scu_role, negotiation.contexts[3].scp_role), (True, False))
