"""Which listeners accept the Query/Retrieve SOP classes (issue 16).

:func:`gateway.service.acceptor_settings` builds each listener's negotiation
settings; :func:`gateway.ul.negotiate.negotiate_acceptor` answers an
A-ASSOCIATE-RQ with them. The FIND classes are accepted where ``query``
applies, MOVE and GET where ``retrieve`` applies; elsewhere they are answered
result 3 (abstract syntax not supported), as before issue 16. For C-GET the
requester's SCP role of the Storage SOP classes is granted (PS3.7 D.3.3.4).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.config.schema import (
    AcceptConfig,
    DicomDestination,
    GatewayConfig,
    LimitsConfig,
    ListenerConfig,
    QueryConfig,
    RetrieveConfig,
    SpoolConfig,
)
from gateway.service import acceptor_settings
from gateway.ul import pdu
from gateway.ul.items import SCPSCURoleSelection, SOPClassExtendedNegotiation, UserInformation
from gateway.ul.negotiate import negotiate_acceptor, relational_granted

IMPLICIT_LE = "1.2.840.10008.1.2"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
PATIENT_FIND, STUDY_FIND = "1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_MOVE, STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.2.2"
PATIENT_GET, STUDY_GET = "1.2.840.10008.5.1.4.1.2.1.3", "1.2.840.10008.5.1.4.1.2.2.3"

#: Presentation context ID -> abstract syntax proposed by :func:`request`.
PROPOSED = {
    1: CT_IMAGE,
    3: PATIENT_FIND,
    5: STUDY_FIND,
    7: PATIENT_MOVE,
    9: STUDY_MOVE,
    11: PATIENT_GET,
    13: STUDY_GET,
}

QUERY = QueryConfig(sources=("archive",))
RETRIEVE = RetrieveConfig(sources=("archive",))
QUERYING = ListenerConfig("0.0.0.0", 11112, name="query", query=QUERY)
RETRIEVING = ListenerConfig("0.0.0.0", 11113, name="retrieve", retrieve=RETRIEVE)
PLAIN = ListenerConfig("0.0.0.0", 11114, name="plain")


def config(query: QueryConfig | None = None, retrieve: RetrieveConfig | None = None) -> GatewayConfig:
    """A gateway with the three listeners and optional top-level ``query`` / ``retrieve``."""
    return GatewayConfig(
        source="test.yaml",
        ae_title="DICOMGW",
        listen=(QUERYING, RETRIEVING, PLAIN),
        accept=AcceptConfig(),
        limits=LimitsConfig(),
        spool=SpoolConfig("/nonexistent"),
        destinations=(DicomDestination("archive", "ARC", "10.0.0.20", 104, "DICOMGW"),),
        query=query,
        retrieve=retrieve,
    )


def request(
    roles: tuple[SCPSCURoleSelection, ...] = (), extended: tuple[SOPClassExtendedNegotiation, ...] = ()
) -> pdu.AAssociateRQ:
    """An A-ASSOCIATE-RQ proposing CT Image Storage and the six Q/R classes."""
    return pdu.AAssociateRQ(
        called_ae_title="DICOMGW",
        calling_ae_title="WS1",
        presentation_contexts=tuple(
            pdu.PresentationContextRQ(context_id, abstract, (IMPLICIT_LE,)) for context_id, abstract in PROPOSED.items()
        ),
        user_information=UserInformation(
            max_length=16384, implementation_class_uid="1.2.3", role_selections=roles, extended_negotiations=extended
        ),
    )


def accepted(cfg: GatewayConfig, listener: ListenerConfig) -> set[str]:
    """The Q/R abstract syntaxes ``listener`` accepts (CT Image Storage left out)."""
    negotiation = negotiate_acceptor(request(), acceptor_settings(cfg, listener))
    return {
        PROPOSED[c.context_id]
        for c in negotiation.ac.presentation_contexts
        if c.result == pdu.ContextResult.ACCEPTANCE and c.context_id != 1
    }


class QRNegotiationTests(SynchronousTestCase):
    """The Q/R classes are offered only where query or retrieve is configured."""

    def test_without_sections_every_class_is_refused_as_before(self) -> None:
        """No query, no retrieve anywhere: the six classes are answered result 3."""
        negotiation = negotiate_acceptor(request(), acceptor_settings(config(), PLAIN))
        results = {c.context_id: c.result for c in negotiation.ac.presentation_contexts}
        self.assertEqual(results.pop(1), pdu.ContextResult.ACCEPTANCE)
        self.assertEqual(set(results.values()), {pdu.ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED})

    def test_listener_query_accepts_find_only(self) -> None:
        """``listen[i].query``: both FIND classes there, nothing of Q/R on the plain listener."""
        cfg = config()
        self.assertEqual(accepted(cfg, QUERYING), {PATIENT_FIND, STUDY_FIND})
        self.assertEqual(accepted(cfg, PLAIN), set())

    def test_listener_retrieve_accepts_move_and_get(self) -> None:
        """``listen[i].retrieve``: the MOVE and GET classes, not FIND."""
        self.assertEqual(accepted(config(), RETRIEVING), {PATIENT_MOVE, STUDY_MOVE, PATIENT_GET, STUDY_GET})

    def test_top_level_sections_apply_to_every_listener(self) -> None:
        """Top-level ``query`` and ``retrieve``: all six classes on a listener without its own."""
        self.assertEqual(accepted(config(QUERY, RETRIEVE), PLAIN), set(PROPOSED.values()) - {CT_IMAGE})

    def test_get_requester_gets_the_storage_scp_role(self) -> None:
        """Where retrieve applies, a proposed SCP role for a Storage class is granted (C-GET sub-operations)."""
        roles = (SCPSCURoleSelection(CT_IMAGE, scu_role=False, scp_role=True),)
        for listener, granted in ((RETRIEVING, True), (PLAIN, False)):
            negotiation = negotiate_acceptor(request(roles), acceptor_settings(config(), listener))
            assert negotiation.ac.user_information is not None
            [reply] = [r for r in negotiation.ac.user_information.role_selections if r.sop_class_uid == CT_IMAGE]
            self.assertEqual(reply.scp_role, granted, listener.name)


class RelationalNegotiationTests(SynchronousTestCase):
    """``query.relational`` answers relational-queries 1 in the FIND classes' extended negotiation (PS3.4 C.5.1.1)."""

    ASK = (
        SOPClassExtendedNegotiation(STUDY_FIND, b"\x01\x01"),
        SOPClassExtendedNegotiation(PATIENT_FIND, b"\x00"),
    )

    def replies(self, cfg: GatewayConfig, listener: ListenerConfig) -> dict[str, bytes]:
        negotiation = negotiate_acceptor(request(extended=self.ASK), acceptor_settings(cfg, listener))
        assert negotiation.ac.user_information is not None
        return {r.sop_class_uid: r.application_information for r in negotiation.ac.user_information.extended_negotiations}

    def test_relational_listener_grants_what_is_asked(self) -> None:
        """``relational: true``: byte 1 is 1 where the requester asked it, 0 where not; the other bytes 0."""
        cfg = config(query=QueryConfig(sources=("archive",), relational=True))
        self.assertEqual(self.replies(cfg, PLAIN), {STUDY_FIND: b"\x01\x00", PATIENT_FIND: b"\x00"})
        negotiation = negotiate_acceptor(request(extended=self.ASK), acceptor_settings(cfg, PLAIN))
        self.assertEqual(relational_granted(negotiation.ac), frozenset({STUDY_FIND}))

    def test_default_answers_not_supported(self) -> None:
        """Without ``relational`` (the default) the reply is 0: not supported, as before."""
        self.assertEqual(self.replies(config(), QUERYING), {STUDY_FIND: b"\x00\x00", PATIENT_FIND: b"\x00"})
        negotiation = negotiate_acceptor(request(extended=self.ASK), acceptor_settings(config(), QUERYING))
        self.assertEqual(relational_granted(negotiation.ac), frozenset())

    def test_listener_section_decides(self) -> None:
        """A listener's own ``query`` without ``relational`` refuses it even when the top level grants it."""
        cfg = config(query=QueryConfig(sources=("archive",), relational=True))
        self.assertEqual(self.replies(cfg, QUERYING)[STUDY_FIND][:1], b"\x00")
