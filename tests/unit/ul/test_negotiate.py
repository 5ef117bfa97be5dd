"""Tests for :mod:`gateway.ul.negotiate` (PS3.8 9.3.2-9.3.3, PS3.7 D.3.3; HARDENING P08-P15, P38)."""

from __future__ import annotations

from dataclasses import replace

from twisted.trial.unittest import SynchronousTestCase

from gateway.sopclasses import (
    ACCEPTED_TRANSFER_SYNTAXES,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    STORAGE_SOP_CLASSES,
    VERIFICATION_SOP_CLASS,
)
from gateway.ul.items import (
    SCPSCURoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UnknownItem,
    UserInformation,
)
from gateway.ul.negotiate import (
    DEFAULT_PEER_MAX_PDU,
    QR_FIND_SOP_CLASSES,
    QR_GET_SOP_CLASSES,
    QR_MOVE_SOP_CLASSES,
    AcceptedContext,
    AcceptorSettings,
    Negotiation,
    accepted_from_ac,
    build_request,
    check_acse,
    negotiate_acceptor,
)
from gateway.ul.pdu import (
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    ContextResult,
    PresentationContextAC,
    PresentationContextRQ,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
J2K = "1.2.840.10008.1.2.4.90"
PRIVATE_CLASS = "1.2.3.4.5.6.7.8"
PRIVATE_TS = "1.2.3.4.5.6.7.9"

SETTINGS = AcceptorSettings(
    ae_title="GATEWAY",
    max_pdu_length=65536,
    implementation_class_uid="1.2.826.0.1.3680043.10.1234.1",
    implementation_version_name="GATEWAY_1",
    abstract_syntaxes=frozenset(STORAGE_SOP_CLASSES) | {VERIFICATION_SOP_CLASS},
    transfer_syntaxes=ACCEPTED_TRANSFER_SYNTAXES,
)


def make_rq(
    contexts: tuple[PresentationContextRQ, ...] = (PresentationContextRQ(1, CT, (EXPLICIT_VR_LE, IMPLICIT_VR_LE)),),
    user_information: UserInformation | None = UserInformation(max_length=16384, implementation_class_uid="1.2.3"),
    **kwargs: object,
) -> AAssociateRQ:
    """An A-ASSOCIATE-RQ from MODALITY to GATEWAY with the given parts."""
    return AAssociateRQ("GATEWAY", "MODALITY", contexts, user_information, **kwargs)  # type: ignore[arg-type]


class CheckACSETests(SynchronousTestCase):
    """check_acse: rejections of the association as a whole."""

    def test_valid_request_passes(self) -> None:
        """A plain request is not rejected."""
        self.assertIsNone(check_acse(make_rq(), SETTINGS))

    def test_protocol_version_bit0_clear_rejected(self) -> None:
        """Protocol version 0x0002 is rejected RJ(1,2,2) (HARDENING P08)."""
        self.assertEqual(check_acse(make_rq(protocol_version=0x0002), SETTINGS), AAssociateRJ(1, 2, 2))

    def test_protocol_version_all_bits_accepted(self) -> None:
        """Protocol version 0xFFFF passes: only bit 0 is tested (PS3.8 9.3.2, HARDENING P08)."""
        self.assertIsNone(check_acse(make_rq(protocol_version=0xFFFF), SETTINGS))

    def test_foreign_application_context_rejected(self) -> None:
        """An application context other than DICOM's is rejected RJ(1,1,2) (HARDENING P09)."""
        rq = make_rq(application_context="1.2.840.10008.3.1.1.2")
        self.assertEqual(check_acse(rq, SETTINGS), AAssociateRJ(1, 1, 2))

    def test_protocol_version_checked_before_application_context(self) -> None:
        """With both faults, the ACSE protocol-version rejection wins."""
        rq = make_rq(protocol_version=0, application_context="1.2.3")
        self.assertEqual(check_acse(rq, SETTINGS), AAssociateRJ(1, 2, 2))

    def test_no_presentation_context_rejected(self) -> None:
        """A request without presentation contexts is rejected RJ(1,1,1) (HARDENING P11)."""
        self.assertEqual(check_acse(make_rq(contexts=()), SETTINGS), AAssociateRJ(1, 1, 1))

    def test_max_length_below_floor_rejected(self) -> None:
        """Maximum lengths 1, 7 and 1023 are below the floor and rejected RJ(1,1,1) (HARDENING P15)."""
        for value in (1, 7, 1023):
            rq = make_rq(user_information=UserInformation(max_length=value))
            self.assertEqual(check_acse(rq, SETTINGS), AAssociateRJ(1, 1, 1), value)

    def test_max_length_at_floor_zero_and_huge_accepted(self) -> None:
        """Maximum lengths 0 (unlimited), 1024, 4096 and 2**32-1 pass (HARDENING P15)."""
        for value in (0, 1024, 4096, 2**32 - 1):
            rq = make_rq(user_information=UserInformation(max_length=value))
            self.assertIsNone(check_acse(rq, SETTINGS), value)

    def test_no_user_information_or_max_length_accepted(self) -> None:
        """No user information item, or no Maximum Length sub-item, is accepted (HARDENING decision 2, P11)."""
        self.assertIsNone(check_acse(make_rq(user_information=None), SETTINGS))
        self.assertIsNone(check_acse(make_rq(user_information=UserInformation()), SETTINGS))

    def test_floor_is_configurable(self) -> None:
        """A stricter floor rejects 4096."""
        rq = make_rq(user_information=UserInformation(max_length=4096))
        self.assertEqual(check_acse(rq, replace(SETTINGS, min_peer_max_pdu=8192)), AAssociateRJ(1, 1, 1))


class NegotiateContextTests(SynchronousTestCase):
    """negotiate_acceptor: per-context results (PS3.8 Table 9-18)."""

    def test_first_proposed_accepted_transfer_syntax_is_chosen(self) -> None:
        """Of several proposed syntaxes, the first one we accept wins, keeping the sender's encoding."""
        rq = make_rq(contexts=(PresentationContextRQ(1, CT, (PRIVATE_TS, J2K, EXPLICIT_VR_LE, IMPLICIT_VR_LE)),))
        negotiation = negotiate_acceptor(rq, SETTINGS)
        self.assertEqual(negotiation.ac.presentation_contexts, (PresentationContextAC(1, 0, J2K),))
        self.assertEqual(negotiation.contexts[1], AcceptedContext(1, CT, J2K, True, False))

    def test_order_follows_proposal_not_our_list(self) -> None:
        """Big endian proposed before little endian is chosen, although our list has LE first."""
        rq = make_rq(contexts=(PresentationContextRQ(1, CT, (EXPLICIT_VR_BE, EXPLICIT_VR_LE)),))
        self.assertEqual(negotiate_acceptor(rq, SETTINGS).contexts[1].transfer_syntax, EXPLICIT_VR_BE)

    def test_unknown_abstract_syntax_result_3(self) -> None:
        """An abstract syntax we do not support gets result 3 (HARDENING P13)."""
        rq = make_rq(contexts=(PresentationContextRQ(1, PRIVATE_CLASS, (IMPLICIT_VR_LE,)),))
        negotiation = negotiate_acceptor(rq, SETTINGS)
        self.assertEqual(negotiation.ac.presentation_contexts, (PresentationContextAC(1, 3, None),))
        self.assertEqual(dict(negotiation.contexts), {})

    def test_unknown_abstract_syntax_accepted_when_allowed(self) -> None:
        """With accept_unknown_abstract_syntaxes, a private class is accepted."""
        rq = make_rq(contexts=(PresentationContextRQ(1, PRIVATE_CLASS, (IMPLICIT_VR_LE,)),))
        negotiation = negotiate_acceptor(rq, replace(SETTINGS, accept_unknown_abstract_syntaxes=True))
        self.assertEqual(negotiation.contexts[1].abstract_syntax, PRIVATE_CLASS)

    def test_no_acceptable_transfer_syntax_result_4(self) -> None:
        """Only unsupported transfer syntaxes give result 4 (HARDENING P13)."""
        rq = make_rq(contexts=(PresentationContextRQ(1, CT, (PRIVATE_TS,)),))
        negotiation = negotiate_acceptor(rq, SETTINGS)
        self.assertEqual(negotiation.ac.presentation_contexts, (PresentationContextAC(1, 4, None),))

    def test_association_with_no_acceptable_context_is_still_accepted(self) -> None:
        """No acceptable context still yields an AC, each result saying why (HARDENING decision 2)."""
        rq = make_rq(contexts=(
            PresentationContextRQ(1, PRIVATE_CLASS, (IMPLICIT_VR_LE,)),
            PresentationContextRQ(3, CT, (PRIVATE_TS,)),
        ))
        negotiation = negotiate_acceptor(rq, SETTINGS)
        self.assertEqual([c.result for c in negotiation.ac.presentation_contexts], [3, 4])
        self.assertEqual(len(negotiation.contexts), 0)

    def test_mixed_contexts_answered_in_order(self) -> None:
        """Each context is answered in request order; only accepted ones are in contexts."""
        rq = make_rq(contexts=(
            PresentationContextRQ(1, VERIFICATION_SOP_CLASS, (IMPLICIT_VR_LE,)),
            PresentationContextRQ(3, PRIVATE_CLASS, (IMPLICIT_VR_LE,)),
            PresentationContextRQ(5, MR, (JPEG_BASELINE,)),
        ))
        negotiation = negotiate_acceptor(rq, SETTINGS)
        self.assertEqual([c.context_id for c in negotiation.ac.presentation_contexts], [1, 3, 5])
        self.assertEqual(sorted(negotiation.contexts), [1, 5])

    def test_duplicate_context_id_answered_once(self) -> None:
        """A repeated context ID gets one answer, for its first occurrence."""
        rq = make_rq(contexts=(
            PresentationContextRQ(1, CT, (IMPLICIT_VR_LE,)),
            PresentationContextRQ(1, MR, (IMPLICIT_VR_LE,)),
        ))
        negotiation = negotiate_acceptor(rq, SETTINGS)
        self.assertEqual(len(negotiation.ac.presentation_contexts), 1)
        self.assertEqual(negotiation.contexts[1].abstract_syntax, CT)

    def test_ae_titles_echoed(self) -> None:
        """The AC echoes the RQ's AE titles (PS3.8 9.3.3)."""
        ac = negotiate_acceptor(make_rq(), SETTINGS).ac
        self.assertEqual((ac.called_ae_title, ac.calling_ae_title), ("GATEWAY", "MODALITY"))


class NegotiateUserInformationTests(SynchronousTestCase):
    """negotiate_acceptor: user information and peer maximum length."""

    def test_ac_user_information_always_carries_our_identity(self) -> None:
        """Max length, implementation class UID and version name are always sent."""
        ui = negotiate_acceptor(make_rq(user_information=None), SETTINGS).ac.user_information
        assert ui is not None
        self.assertEqual(
            (ui.max_length, ui.implementation_class_uid, ui.implementation_version_name),
            (65536, SETTINGS.implementation_class_uid, "GATEWAY_1"),
        )

    def test_peer_max_absent_means_16k(self) -> None:
        """Without a Maximum Length sub-item we send at most 16 KiB (HARDENING decision 2)."""
        self.assertEqual(negotiate_acceptor(make_rq(user_information=UserInformation()), SETTINGS).peer_max_pdu, 16384)
        self.assertEqual(negotiate_acceptor(make_rq(user_information=None), SETTINGS).peer_max_pdu, DEFAULT_PEER_MAX_PDU)

    def test_peer_max_zero_means_unlimited(self) -> None:
        """A Maximum Length of 0 is passed on as 0 (unlimited: the sender applies its cap)."""
        rq = make_rq(user_information=UserInformation(max_length=0))
        self.assertEqual(negotiate_acceptor(rq, SETTINGS).peer_max_pdu, 0)

    def test_peer_max_value_passed_on(self) -> None:
        """A Maximum Length of 4096 is what we may send."""
        rq = make_rq(user_information=UserInformation(max_length=4096))
        self.assertEqual(negotiate_acceptor(rq, SETTINGS).peer_max_pdu, 4096)

    def test_async_window_answered_1_1_only_when_proposed(self) -> None:
        """A proposed 10/10 window is answered 1/1; none proposed, none answered (HARDENING P38)."""
        proposed = make_rq(user_information=UserInformation(max_length=16384, async_ops=(10, 10)))
        ui = negotiate_acceptor(proposed, SETTINGS).ac.user_information
        assert ui is not None
        self.assertEqual(ui.async_ops, (1, 1))
        ui = negotiate_acceptor(make_rq(), SETTINGS).ac.user_information
        assert ui is not None
        self.assertIsNone(ui.async_ops)

    def test_unknown_sub_items_ignored(self) -> None:
        """Unknown user information sub-items (0x5F, 0xFF) do not prevent acceptance (HARDENING P14)."""
        ui = UserInformation(max_length=16384, unknown_items=(UnknownItem(0x5F, b"x"), UnknownItem(0xFF, b"")))
        rq = make_rq(user_information=ui)
        self.assertIsNone(check_acse(rq, SETTINGS))
        negotiation = negotiate_acceptor(rq, SETTINGS)
        self.assertIn(1, negotiation.contexts)
        assert negotiation.ac.user_information is not None
        self.assertEqual(negotiation.ac.user_information.unknown_items, ())


    def test_extended_negotiation_ignored(self) -> None:
        """Extended and common extended negotiation items are not answered and do not block (HARDENING P14)."""
        ui = UserInformation(
            max_length=16384,
            extended_negotiations=(SOPClassExtendedNegotiation(CT, b"\x01"),),
            common_extended_negotiations=(SOPClassCommonExtendedNegotiation(PRIVATE_CLASS, "1.2.840.10008.4.2"),),
        )
        negotiation = negotiate_acceptor(make_rq(user_information=ui), SETTINGS)
        self.assertIn(1, negotiation.contexts)
        assert negotiation.ac.user_information is not None
        self.assertEqual(negotiation.ac.user_information.extended_negotiations, ())
        self.assertEqual(negotiation.ac.user_information.common_extended_negotiations, ())


class RoleSelectionTests(SynchronousTestCase):
    """SCP/SCU role selection as acceptor (PS3.7 D.3.3.4; HARDENING P14)."""

    def negotiate(self, *roles: SCPSCURoleSelection, contexts: tuple[PresentationContextRQ, ...] | None = None):  # type: ignore[no-untyped-def]
        """Negotiate a CT context with the given role selection items."""
        rq = make_rq(
            contexts=contexts or (PresentationContextRQ(1, CT, (IMPLICIT_VR_LE,)),),
            user_information=UserInformation(max_length=16384, role_selections=roles),
        )
        return negotiate_acceptor(rq, SETTINGS)

    def test_no_items_means_default_roles_and_no_reply(self) -> None:
        """Without items the requestor is SCU, and the AC carries no role items."""
        negotiation = self.negotiate()
        self.assertEqual((negotiation.contexts[1].scu_role, negotiation.contexts[1].scp_role), (True, False))
        assert negotiation.ac.user_information is not None
        self.assertEqual(negotiation.ac.user_information.role_selections, ())

    def test_scu_and_scp_proposed_scu_echoed_scp_declined(self) -> None:
        """A (1,1) proposal is answered (1,0): the requestor stays SCU only."""
        negotiation = self.negotiate(SCPSCURoleSelection(CT, True, True))
        assert negotiation.ac.user_information is not None
        self.assertEqual(negotiation.ac.user_information.role_selections, (SCPSCURoleSelection(CT, True, False),))
        self.assertEqual((negotiation.contexts[1].scu_role, negotiation.contexts[1].scp_role), (True, False))

    def test_scu_only_proposed_is_echoed(self) -> None:
        """A (1,0) proposal is answered (1,0)."""
        negotiation = self.negotiate(SCPSCURoleSelection(CT, True, False))
        assert negotiation.ac.user_information is not None
        self.assertEqual(negotiation.ac.user_information.role_selections, (SCPSCURoleSelection(CT, True, False),))

    def test_scp_only_proposed_rejects_context(self) -> None:
        """A (0,1) proposal is answered (0,0) and the context rejected: no role would remain."""
        negotiation = self.negotiate(SCPSCURoleSelection(CT, False, True))
        self.assertEqual(negotiation.ac.presentation_contexts[0].result, ContextResult.USER_REJECTION)
        self.assertNotIn(1, negotiation.contexts)
        assert negotiation.ac.user_information is not None
        reply = negotiation.ac.user_information.role_selections
        self.assertEqual(reply, (SCPSCURoleSelection(CT, False, False),))

    def test_items_for_unaccepted_classes_ignored(self) -> None:
        """Role items for SOP classes without an accepted context are not answered (HARDENING P14)."""
        negotiation = self.negotiate(SCPSCURoleSelection(PRIVATE_CLASS, True, True))
        assert negotiation.ac.user_information is not None
        self.assertEqual(negotiation.ac.user_information.role_selections, ())
        self.assertIn(1, negotiation.contexts)

    def test_one_reply_per_sop_class(self) -> None:
        """Two contexts of one SOP class give one role reply."""
        negotiation = self.negotiate(
            SCPSCURoleSelection(CT, True, False),
            contexts=(PresentationContextRQ(1, CT, (IMPLICIT_VR_LE,)), PresentationContextRQ(3, CT, (EXPLICIT_VR_LE,))),
        )
        assert negotiation.ac.user_information is not None
        self.assertEqual(len(negotiation.ac.user_information.role_selections), 1)
        self.assertEqual(sorted(negotiation.contexts), [1, 3])


STGCMT = "1.2.840.10008.1.20.1"
#: A listener that takes Storage Commitment reports from archives (issue 15).
STGCMT_SETTINGS = replace(
    SETTINGS,
    abstract_syntaxes=SETTINGS.abstract_syntaxes | {STGCMT},
    scp_role_abstract_syntaxes=frozenset({STGCMT}),
)


def replies(negotiation: Negotiation) -> tuple[SCPSCURoleSelection, ...]:
    """The role selection replies of an AC."""
    assert negotiation.ac.user_information is not None
    return negotiation.ac.user_information.role_selections


class SCPRoleAcceptanceTests(SynchronousTestCase):
    """AcceptorSettings.scp_role_abstract_syntaxes: a requestor may be SCP for those classes (PS3.4 J.3.3.1.3)."""

    def negotiate(self, settings: AcceptorSettings, *roles: SCPSCURoleSelection) -> Negotiation:
        """Negotiate a Storage Commitment and a CT context with the given role items."""
        rq = make_rq(
            contexts=(PresentationContextRQ(1, STGCMT, (IMPLICIT_VR_LE,)), PresentationContextRQ(3, CT, (IMPLICIT_VR_LE,))),
            user_information=UserInformation(max_length=16384, role_selections=roles),
        )
        return negotiate_acceptor(rq, settings)

    def test_archive_reporting_as_scp_is_accepted(self) -> None:
        """An archive proposing SCU-role 0 / SCP-role 1 gets (0,1) back and an SCP-only context."""
        negotiation = self.negotiate(STGCMT_SETTINGS, SCPSCURoleSelection(STGCMT, False, True))
        self.assertEqual(negotiation.ac.presentation_contexts[0].result, ContextResult.ACCEPTANCE)
        self.assertEqual(replies(negotiation), (SCPSCURoleSelection(STGCMT, False, True),))
        self.assertEqual(negotiation.contexts[1], AcceptedContext(1, STGCMT, IMPLICIT_VR_LE, False, True))

    def test_both_roles_proposed_are_both_granted(self) -> None:
        """A (1,1) proposal for the class is answered (1,1): the peer may ask (N-ACTION) and report."""
        negotiation = self.negotiate(STGCMT_SETTINGS, SCPSCURoleSelection(STGCMT, True, True))
        self.assertEqual(replies(negotiation), (SCPSCURoleSelection(STGCMT, True, True),))
        self.assertEqual((negotiation.contexts[1].scu_role, negotiation.contexts[1].scp_role), (True, True))

    def test_other_classes_keep_the_scp_role_declined(self) -> None:
        """With the setting, a (0,1) proposal for CT is still answered (0,0) and its context rejected."""
        negotiation = self.negotiate(STGCMT_SETTINGS, SCPSCURoleSelection(CT, False, True))
        self.assertEqual(negotiation.ac.presentation_contexts[1].result, ContextResult.USER_REJECTION)
        self.assertEqual(replies(negotiation), (SCPSCURoleSelection(CT, False, False),))
        self.assertIn(1, negotiation.contexts)

    def test_without_the_setting_the_report_context_is_rejected(self) -> None:
        """Today's answer is kept by default: (0,1) for Storage Commitment is answered (0,0) and rejected."""
        settings = replace(STGCMT_SETTINGS, scp_role_abstract_syntaxes=frozenset())
        negotiation = self.negotiate(settings, SCPSCURoleSelection(STGCMT, False, True))
        self.assertEqual(negotiation.ac.presentation_contexts[0].result, ContextResult.USER_REJECTION)
        self.assertEqual(replies(negotiation), (SCPSCURoleSelection(STGCMT, False, False),))

    def test_no_role_item_keeps_defaults_for_the_class(self) -> None:
        """A modality sending N-ACTION without a role item stays SCU; no reply item is sent."""
        negotiation = self.negotiate(STGCMT_SETTINGS)
        self.assertEqual((negotiation.contexts[1].scu_role, negotiation.contexts[1].scp_role), (True, False))
        self.assertEqual(replies(negotiation), ())

    def test_nothing_proposed_is_rejected_even_for_the_class(self) -> None:
        """A (0,0) item leaves no role, even for a class in scp_role_abstract_syntaxes (Table D.3-12)."""
        negotiation = self.negotiate(STGCMT_SETTINGS, SCPSCURoleSelection(STGCMT, False, False))
        self.assertEqual(negotiation.ac.presentation_contexts[0].result, ContextResult.USER_REJECTION)

    def test_our_requestor_and_acceptor_agree_on_the_report_context(self) -> None:
        """Our report request (0,1) read back from our acceptor's AC gives an SCP-only usable context."""
        rq = build_request(
            "ARCHIVE", "GATEWAY", [(STGCMT, [IMPLICIT_VR_LE, EXPLICIT_VR_LE])],
            max_pdu_length=16384, implementation_class_uid="1.2.3", implementation_version_name="GW",
            role_selections=(SCPSCURoleSelection(STGCMT, False, True),),
        )
        negotiation = negotiate_acceptor(rq, STGCMT_SETTINGS)
        contexts = accepted_from_ac(rq, negotiation.ac).contexts
        self.assertEqual(contexts[1], AcceptedContext(1, STGCMT, IMPLICIT_VR_LE, False, True))


STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
#: A listener serving Q/R with C-GET (issue 16).
QR_SETTINGS = replace(
    SETTINGS,
    abstract_syntaxes=SETTINGS.abstract_syntaxes | QR_FIND_SOP_CLASSES | QR_MOVE_SOP_CLASSES | QR_GET_SOP_CLASSES,
    get_sub_operations=True,
)


class GetSubOperationRoleTests(SynchronousTestCase):
    """AcceptorSettings.get_sub_operations: a C-GET SCU may be SCP for storage classes (PS3.4 C.4.3.3, PS3.7 D.3.3.4)."""

    def negotiate(
        self, settings: AcceptorSettings, *roles: SCPSCURoleSelection, get: bool = True
    ) -> Negotiation:
        """Negotiate (Study Root GET if ``get``) and CT, MR contexts with the given role items (getscu's shape)."""
        contexts = [PresentationContextRQ(3, CT, (IMPLICIT_VR_LE,)), PresentationContextRQ(5, MR, (IMPLICIT_VR_LE,))]
        if get:
            contexts.insert(0, PresentationContextRQ(1, STUDY_GET, (IMPLICIT_VR_LE,)))
        rq = make_rq(contexts=tuple(contexts), user_information=UserInformation(max_length=16384, role_selections=roles))
        return negotiate_acceptor(rq, settings)

    def test_get_requester_gets_scp_role_for_storage(self) -> None:
        """With GET proposed, (0,1) for CT is answered (0,1) and CT accepted as an SCP-only context for sub-operations."""
        negotiation = self.negotiate(QR_SETTINGS, SCPSCURoleSelection(CT, False, True))
        self.assertEqual(negotiation.contexts[3], AcceptedContext(3, CT, IMPLICIT_VR_LE, False, True))
        self.assertEqual(replies(negotiation), (SCPSCURoleSelection(CT, False, True),))
        self.assertEqual(negotiation.contexts[1].abstract_syntax, STUDY_GET)

    def test_both_roles_for_storage_with_get(self) -> None:
        """A (1,1) item for MR with GET proposed is answered (1,1): the peer may store to us and receive."""
        negotiation = self.negotiate(QR_SETTINGS, SCPSCURoleSelection(MR, True, True))
        self.assertEqual(replies(negotiation), (SCPSCURoleSelection(MR, True, True),))

    def test_without_get_proposed_scp_role_stays_declined(self) -> None:
        """The same (0,1) item without a GET context is answered (0,0) and CT rejected, as before."""
        negotiation = self.negotiate(QR_SETTINGS, SCPSCURoleSelection(CT, False, True), get=False)
        self.assertNotIn(3, negotiation.contexts)
        self.assertEqual(replies(negotiation), (SCPSCURoleSelection(CT, False, False),))

    def test_without_the_setting_scp_role_stays_declined(self) -> None:
        """A listener not serving C-GET declines the storage SCP role even when GET is proposed."""
        negotiation = self.negotiate(replace(QR_SETTINGS, get_sub_operations=False), SCPSCURoleSelection(CT, False, True))
        self.assertNotIn(3, negotiation.contexts)

    def test_get_not_accepted_means_no_scp_role(self) -> None:
        """GET proposed but not among our abstract syntaxes (result 3) grants nothing."""
        settings = replace(QR_SETTINGS, abstract_syntaxes=SETTINGS.abstract_syntaxes)
        negotiation = self.negotiate(settings, SCPSCURoleSelection(CT, False, True))
        self.assertNotIn(1, negotiation.contexts)
        self.assertNotIn(3, negotiation.contexts)

    def test_q_r_classes_never_get_the_scp_role(self) -> None:
        """A (0,1) item for the GET class itself is declined: Q/R classes are not sub-operations."""
        negotiation = self.negotiate(QR_SETTINGS, SCPSCURoleSelection(STUDY_GET, False, True))
        self.assertNotIn(1, negotiation.contexts)


class FindExtendedNegotiationTests(SynchronousTestCase):
    """The C-FIND SOP Class Extended Negotiation reply (PS3.7 D.3.3.5, PS3.4 C.5.1.1)."""

    def negotiate(self, settings: AcceptorSettings, *items: SOPClassExtendedNegotiation) -> tuple[SOPClassExtendedNegotiation, ...]:
        """Negotiate Study Root FIND and CT with the given items; the AC's extended negotiation replies."""
        rq = make_rq(
            contexts=(PresentationContextRQ(1, STUDY_FIND, (IMPLICIT_VR_LE,)), PresentationContextRQ(3, CT, (IMPLICIT_VR_LE,))),
            user_information=UserInformation(max_length=16384, extended_negotiations=items),
        )
        ac_info = negotiate_acceptor(rq, settings).ac.user_information
        assert ac_info is not None
        return ac_info.extended_negotiations

    def test_relational_asked_answered_0_by_default(self) -> None:
        """findscu-style (1,1,1,1): every byte answered 0, relational included (the sources may not support it)."""
        self.assertEqual(
            self.negotiate(QR_SETTINGS, SOPClassExtendedNegotiation(STUDY_FIND, b"\x01\x01\x01\x01")),
            (SOPClassExtendedNegotiation(STUDY_FIND, b"\x00\x00\x00\x00"),),
        )

    def test_relational_answered_1_with_the_setting(self) -> None:
        """With relational_queries, relational asked is answered 1; the other bytes stay 0."""
        settings = replace(QR_SETTINGS, relational_queries=True)
        self.assertEqual(
            self.negotiate(settings, SOPClassExtendedNegotiation(STUDY_FIND, b"\x01\x01")),
            (SOPClassExtendedNegotiation(STUDY_FIND, b"\x01\x00"),),
        )
        self.assertEqual(
            self.negotiate(settings, SOPClassExtendedNegotiation(STUDY_FIND, b"\x00")),
            (SOPClassExtendedNegotiation(STUDY_FIND, b"\x00"),),
        )

    def test_reply_is_at_most_five_bytes(self) -> None:
        """A longer item is answered with the five bytes PS3.4 C.5.1.1 defines."""
        (reply,) = self.negotiate(QR_SETTINGS, SOPClassExtendedNegotiation(STUDY_FIND, b"\x01" * 9))
        self.assertEqual(reply.application_information, b"\x00" * 5)

    def test_items_for_other_or_unaccepted_classes_not_answered(self) -> None:
        """CT, an unproposed Patient Root FIND and an empty item get no reply; one reply per class."""
        self.assertEqual(
            self.negotiate(
                QR_SETTINGS,
                SOPClassExtendedNegotiation(CT, b"\x01"),
                SOPClassExtendedNegotiation(PATIENT_FIND, b"\x01"),
                SOPClassExtendedNegotiation(STUDY_FIND, b""),
            ),
            (),
        )
        self.assertEqual(
            len(self.negotiate(QR_SETTINGS, SOPClassExtendedNegotiation(STUDY_FIND, b"\x01"), SOPClassExtendedNegotiation(STUDY_FIND, b"\x00"))),
            1,
        )

    def test_reply_survives_the_pdu_codec(self) -> None:
        """The AC with the reply encodes and decodes back to the same item (sub-item 0x56)."""
        from gateway.ul.framing import PDUBuffer
        from gateway.ul.pdu import encode

        rq = make_rq(
            contexts=(PresentationContextRQ(1, STUDY_FIND, (IMPLICIT_VR_LE,)),),
            user_information=UserInformation(max_length=16384, extended_negotiations=(SOPClassExtendedNegotiation(STUDY_FIND, b"\x01"),)),
        )
        ac = negotiate_acceptor(rq, QR_SETTINGS).ac
        (decoded,) = PDUBuffer(0).feed(encode(ac))
        assert isinstance(decoded, AAssociateAC) and decoded.user_information is not None
        self.assertEqual(decoded.user_information.extended_negotiations, (SOPClassExtendedNegotiation(STUDY_FIND, b"\x00"),))


class RequestorTests(SynchronousTestCase):
    """build_request and accepted_from_ac."""

    def request(self, **kwargs: object) -> AAssociateRQ:
        """A request for verification and CT."""
        return build_request(
            "GATEWAY", "ARCHIVE",
            [(VERIFICATION_SOP_CLASS, [IMPLICIT_VR_LE]), (CT, [J2K, EXPLICIT_VR_LE])],
            max_pdu_length=65536,
            implementation_class_uid="1.2.3",
            implementation_version_name="GW",
            **kwargs,  # type: ignore[arg-type]
        )

    def test_build_request_numbers_contexts_odd(self) -> None:
        """Contexts are numbered 1, 3, ... and carry the proposals in order."""
        rq = self.request()
        self.assertEqual(rq.presentation_contexts, (
            PresentationContextRQ(1, VERIFICATION_SOP_CLASS, (IMPLICIT_VR_LE,)),
            PresentationContextRQ(3, CT, (J2K, EXPLICIT_VR_LE)),
        ))
        assert rq.user_information is not None
        self.assertEqual(rq.user_information.max_length, 65536)
        self.assertEqual((rq.called_ae_title, rq.calling_ae_title), ("ARCHIVE", "GATEWAY"))

    def test_build_request_limits(self) -> None:
        """No proposal, more than 128, or an empty syntax list is a caller error."""
        kw = dict(max_pdu_length=1, implementation_class_uid="1", implementation_version_name="x")
        self.assertRaises(ValueError, build_request, "A", "B", [], **kw)
        self.assertRaises(ValueError, build_request, "A", "B", [(CT, [IMPLICIT_VR_LE])] * 129, **kw)
        self.assertRaises(ValueError, build_request, "A", "B", [(CT, [])], **kw)
        self.assertEqual(len(build_request("A", "B", [(CT, [IMPLICIT_VR_LE])] * 128, **kw).presentation_contexts), 128)

    def test_round_trip_through_our_acceptor(self) -> None:
        """Our acceptor's AC, read back by accepted_from_ac, gives the same contexts."""
        rq = self.request()
        negotiation = negotiate_acceptor(rq, SETTINGS)
        result = accepted_from_ac(rq, negotiation.ac)
        self.assertEqual(dict(result.contexts), dict(negotiation.contexts))
        self.assertEqual(result.peer_max_pdu, 65536)

    def test_ac_without_max_length_means_16k(self) -> None:
        """An AC without Maximum Length lets us send 16 KiB; 0 means unlimited."""
        rq = self.request()
        ac = AAssociateAC("ARCHIVE", "GATEWAY", (PresentationContextAC(1, 0, IMPLICIT_VR_LE),), None)
        self.assertEqual(accepted_from_ac(rq, ac).peer_max_pdu, 16384)
        ac0 = replace(ac, user_information=UserInformation(max_length=0))
        self.assertEqual(accepted_from_ac(rq, ac0).peer_max_pdu, 0)

    def test_bogus_answers_left_out(self) -> None:
        """Rejected contexts, unknown IDs and syntaxes we never proposed are not usable."""
        rq = self.request()
        ac = AAssociateAC("ARCHIVE", "GATEWAY", (
            PresentationContextAC(1, 0, EXPLICIT_VR_BE),
            PresentationContextAC(3, 4, None),
            PresentationContextAC(5, 0, IMPLICIT_VR_LE),
        ), UserInformation(max_length=16384))
        self.assertEqual(dict(accepted_from_ac(rq, ac).contexts), {})

    def test_requestor_roles(self) -> None:
        """Proposed SCP role accepted by the peer makes us SCP; an unanswered item keeps defaults."""
        rq = self.request(role_selections=(SCPSCURoleSelection(CT, True, True),))
        ac = AAssociateAC("ARCHIVE", "GATEWAY", (
            PresentationContextAC(1, 0, IMPLICIT_VR_LE), PresentationContextAC(3, 0, J2K),
        ), UserInformation(max_length=16384, role_selections=(SCPSCURoleSelection(CT, False, True),)))
        contexts = accepted_from_ac(rq, ac).contexts
        self.assertEqual((contexts[3].scu_role, contexts[3].scp_role), (False, True))
        self.assertEqual((contexts[1].scu_role, contexts[1].scp_role), (True, False))

    def test_requestor_ignores_roles_it_did_not_propose(self) -> None:
        """A reply item for a class we proposed nothing for is ignored (PS3.7 D.3.3.4)."""
        rq = self.request()
        ac = AAssociateAC("ARCHIVE", "GATEWAY", (PresentationContextAC(3, 0, J2K),),
                          UserInformation(max_length=16384, role_selections=(SCPSCURoleSelection(CT, False, True),)))
        context = accepted_from_ac(rq, ac).contexts[3]
        self.assertEqual((context.scu_role, context.scp_role), (True, False))
