"""Tests for :mod:`gateway.access` (PS3.8 9.3.4; HARDENING P10)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.access import AccessPolicy, Peer, is_valid_ae_title
from gateway.ul.pdu import AAssociateRJ, AAssociateRQ, PresentationContextRQ

CALLED_NOT_RECOGNIZED = AAssociateRJ(1, 1, 7)
CALLING_NOT_RECOGNIZED = AAssociateRJ(1, 1, 3)


def rq(called: str = "GATEWAY", calling: str = "CT01") -> AAssociateRQ:
    """A request with the given AE titles (as the PDU decoder delivers them)."""
    return AAssociateRQ(called, calling, (PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),), None)


class CalledAETitleTests(SynchronousTestCase):
    """The called AE title must be ours."""

    def test_matching_called_title_accepted(self) -> None:
        """Our own title passes."""
        self.assertIsNone(AccessPolicy("GATEWAY").check(rq()))

    def test_spaces_are_not_significant(self) -> None:
        """Leading and trailing spaces on either side are ignored (PS3.8 9.3.2)."""
        self.assertIsNone(AccessPolicy(" GATEWAY ").check(rq(called="GATEWAY   ")))

    def test_other_called_title_rejected(self) -> None:
        """Another title is rejected RJ(1,1,7)."""
        self.assertEqual(AccessPolicy("GATEWAY").check(rq(called="ARCHIVE")), CALLED_NOT_RECOGNIZED)

    def test_comparison_is_case_sensitive(self) -> None:
        """"gateway" is not "GATEWAY", as in DCMTK."""
        self.assertEqual(AccessPolicy("GATEWAY").check(rq(called="gateway")), CALLED_NOT_RECOGNIZED)

    def test_all_spaces_called_title_rejected(self) -> None:
        """Sixteen spaces are not our title."""
        self.assertEqual(AccessPolicy("GATEWAY").check(rq(called=" " * 16)), CALLED_NOT_RECOGNIZED)

    def test_called_checked_before_calling(self) -> None:
        """With both titles wrong, the called-title rejection wins."""
        self.assertEqual(AccessPolicy("GATEWAY").check(rq(called="X", calling="")), CALLED_NOT_RECOGNIZED)


class CallingAETitleTests(SynchronousTestCase):
    """The calling AE title must be well-formed and allow-listed."""

    def test_star_allows_any_valid_title(self) -> None:
        """The default pattern allows any well-formed title, including embedded spaces."""
        policy = AccessPolicy("GATEWAY")
        for title in ("CT01", "a", "MR SCANNER 3", "X" * 16, "../", "%s%n"):
            self.assertIsNone(policy.check(rq(calling=title)), title)

    def test_malformed_titles_rejected(self) -> None:
        """Empty, all spaces, backslash, NUL, control, DEL and non-ASCII titles are rejected RJ(1,1,3)."""
        policy = AccessPolicy("GATEWAY")
        for title in ("", " " * 16, "A\\B", "A\x00B", "A\nB", "A\x1bB", "A\x7fB", "CT\xe9", "\u00c0"):
            self.assertEqual(policy.check(rq(calling=title)), CALLING_NOT_RECOGNIZED, repr(title))

    def test_glob_patterns(self) -> None:
        """Titles match glob patterns; others are rejected RJ(1,1,3)."""
        policy = AccessPolicy("GATEWAY", ["CT*", "MR0?", "US_ROOM_1"])
        for title in ("CT", "CT01", "MR01", "US_ROOM_1"):
            self.assertIsNone(policy.check(rq(calling=title)), title)
        for title in ("MR001", "XA01", "US_ROOM_12", "ct01"):
            self.assertEqual(policy.check(rq(calling=title)), CALLING_NOT_RECOGNIZED, title)

    def test_character_class_pattern(self) -> None:
        """fnmatch character classes work."""
        policy = AccessPolicy("GATEWAY", ["CT[0-9]"])
        self.assertIsNone(policy.check(rq(calling="CT7")))
        self.assertEqual(policy.check(rq(calling="CTX")), CALLING_NOT_RECOGNIZED)

    def test_empty_allow_list_rejects_everyone(self) -> None:
        """With no patterns, no calling title is allowed."""
        self.assertEqual(AccessPolicy("GATEWAY", []).check(rq()), CALLING_NOT_RECOGNIZED)

    def test_pattern_spaces_ignored(self) -> None:
        """A configured pattern with padding spaces still matches."""
        self.assertIsNone(AccessPolicy("GATEWAY", [" CT01 "]).check(rq(calling="CT01")))

    def test_star_does_not_admit_malformed_titles(self) -> None:
        """Even "*" does not let a backslash title through."""
        self.assertEqual(AccessPolicy("GATEWAY", ["*"]).check(rq(calling="A\\B")), CALLING_NOT_RECOGNIZED)

    def test_is_valid_ae_title(self) -> None:
        """The validity helper accepts printable ASCII and refuses the rest."""
        self.assertTrue(is_valid_ae_title("STORE SCP"))
        self.assertFalse(is_valid_ae_title("   "))
        self.assertFalse(is_valid_ae_title("A\tB"))


class ExtensionTests(SynchronousTestCase):
    """Extra rules run after the AE title rules."""

    def test_extra_rule_sees_peer_and_can_reject(self) -> None:
        """An extra rule receives the Peer and its rejection is returned."""
        seen: list[Peer] = []

        def only_loopback(request: AAssociateRQ, peer: Peer) -> AAssociateRJ | None:
            seen.append(peer)
            return None if peer.address == "127.0.0.1" else AAssociateRJ(1, 1, 3)

        policy = AccessPolicy("GATEWAY", extra_rules=[only_loopback])
        self.assertIsNone(policy.check(rq(), Peer(address="127.0.0.1")))
        self.assertEqual(policy.check(rq(), Peer(address="10.0.0.1")), CALLING_NOT_RECOGNIZED)
        self.assertEqual(policy.check(rq()), CALLING_NOT_RECOGNIZED)
        self.assertEqual([p.address for p in seen], ["127.0.0.1", "10.0.0.1", None])

    def test_extra_rule_not_reached_after_ae_rejection(self) -> None:
        """A request already rejected on AE titles never reaches the extra rules."""
        calls: list[int] = []

        def count(request: AAssociateRQ, peer: Peer) -> AAssociateRJ | None:
            calls.append(1)
            return None

        AccessPolicy("GATEWAY", extra_rules=[count]).check(rq(called="OTHER"))
        self.assertEqual(calls, [])
