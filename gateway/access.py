"""Who may associate: the access policy applied to each A-ASSOCIATE-RQ (PS3.8 9.3.4; HARDENING P10).

The policy is a short chain of rules, each returning either ``None`` (no
objection) or the A-ASSOCIATE-RJ to send. The first objection wins. Today's
rules look at AE titles only:

1. the called AE title must be ours, compared after removing leading and
   trailing spaces (PS3.8 9.3.2: they are not significant) and
   case-sensitively, as DCMTK does -> otherwise RJ(1, 1, 7);
2. the calling AE title must be a plausible AE value (PS3.5 6.2: the default
   character repertoire without backslash or control characters, not all
   spaces) -> otherwise RJ(1, 1, 3). Such titles are refused before any
   pattern sees them, so a log line or metric label never carries raw
   control bytes;
3. the calling AE title must match one of the configured glob patterns
   (:func:`fnmatch.fnmatchcase`, so case-sensitive, ``*`` allows everyone)
   -> otherwise RJ(1, 1, 3).

Issue 5 will add rules on the peer's network address (CIDR) and TLS
certificate subject. They will take the same shape, an :class:`AccessRule`
reading the request and a :class:`Peer`, so adding them does not change
:meth:`AccessPolicy.check`'s callers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Protocol

from gateway.ul.errors import RejectReasonUser, RejectResult, RejectSource
from gateway.ul.pdu import AAssociateRJ, AAssociateRQ


@dataclass(frozen=True)
class Peer:
    """What the transport knows about the peer, for rules beyond AE titles.

    :ivar address: the peer's IP address, if known.
    :ivar certificate_subject: the verified TLS client certificate subject, if any.
    """

    address: str | None = None
    certificate_subject: str | None = None


class AccessRule(Protocol):
    """One access rule: ``None`` means no objection, else the rejection to send."""

    def __call__(self, rq: AAssociateRQ, peer: Peer) -> AAssociateRJ | None:
        """Judge one request.

        :param rq: the A-ASSOCIATE-RQ.
        :param peer: what the transport knows about the peer.
        :returns: ``None`` or the A-ASSOCIATE-RJ.
        """


def _reject_user(reason: RejectReasonUser) -> AAssociateRJ:
    """A permanent rejection by the service-user (PS3.8 Table 9-21)."""
    return AAssociateRJ(int(RejectResult.PERMANENT), int(RejectSource.SERVICE_USER), int(reason))


def is_valid_ae_title(title: str) -> bool:
    """Whether ``title`` is a plausible AE title value (PS3.5 6.2, VR AE).

    :param title: the title with its leading and trailing spaces already
        removed (as :mod:`gateway.ul.pdu` decodes it).
    :returns: False when it is empty, contains a backslash, a control
        character (below 0x20, or 0x7F) or any non-ASCII character.
    """
    if not title.strip(" "):
        return False
    return all(" " <= ch <= "~" and ch != "\\" for ch in title)


@dataclass(frozen=True)
class CalledAETitleRule:
    """Rule 1: the called AE title is ours (PS3.8 9.3.4 reason 7).

    :ivar ae_title: our AE title.
    """

    ae_title: str

    def __call__(self, rq: AAssociateRQ, peer: Peer) -> AAssociateRJ | None:
        """Reject with RJ(1, 1, 7) unless the called title equals ours, spaces ignored."""
        if rq.called_ae_title.strip(" ") != self.ae_title.strip(" "):
            return _reject_user(RejectReasonUser.CALLED_AE_TITLE_NOT_RECOGNIZED)
        return None


@dataclass(frozen=True)
class CallingAETitleRule:
    """Rules 2 and 3: the calling AE title is well-formed and allow-listed (PS3.8 9.3.4 reason 3).

    :ivar patterns: glob patterns, case-sensitive; ``("*",)`` allows every
        well-formed title.
    """

    patterns: tuple[str, ...]

    def __call__(self, rq: AAssociateRQ, peer: Peer) -> AAssociateRJ | None:
        """Reject with RJ(1, 1, 3) a malformed or unlisted calling AE title."""
        calling = rq.calling_ae_title.strip(" ")
        if not is_valid_ae_title(calling):
            return _reject_user(RejectReasonUser.CALLING_AE_TITLE_NOT_RECOGNIZED)
        if not any(fnmatchcase(calling, pattern) for pattern in self.patterns):
            return _reject_user(RejectReasonUser.CALLING_AE_TITLE_NOT_RECOGNIZED)
        return None


class AccessPolicy:
    """The access policy of one listener.

    :param ae_title: our AE title.
    :param calling_ae_titles: glob patterns for allowed calling AE titles
        (leading and trailing spaces of each pattern are ignored).
    :param extra_rules: further rules, checked after the AE title rules
        (the extension point for CIDR and certificate rules).
    """

    def __init__(
        self,
        ae_title: str,
        calling_ae_titles: Sequence[str] = ("*",),
        extra_rules: Sequence[AccessRule] = (),
    ) -> None:
        self.ae_title = ae_title.strip(" ")
        self.calling_ae_titles = tuple(pattern.strip(" ") for pattern in calling_ae_titles)
        self.rules: tuple[AccessRule, ...] = (
            CalledAETitleRule(self.ae_title),
            CallingAETitleRule(self.calling_ae_titles),
            *extra_rules,
        )

    def check(self, rq: AAssociateRQ, peer: Peer | None = None) -> AAssociateRJ | None:
        """Apply every rule in order; the first objection wins.

        :param rq: the A-ASSOCIATE-RQ received.
        :param peer: what the transport knows about the peer, if anything.
        :returns: ``None`` to go on, or the A-ASSOCIATE-RJ to send.
        """
        who = Peer() if peer is None else peer
        for rule in self.rules:
            rejection = rule(rq, who)
            if rejection is not None:
                return rejection
        return None
