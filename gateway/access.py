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

Per listener (issue 5), further rules of the same shape follow:

4. the listener's own calling AE title patterns, when it has any
   (:class:`CallingAETitleRule` again) -> RJ(1, 1, 3);
5. the peer's address must be in one of the listener's networks
   (:class:`NetworkRule`) -> RJ(1, 1, 1): the calling AE title may be
   fine, the place it calls from is not, and PS3.8 Table 9-21 has no reason
   code for addresses;
6. on TLS listeners with certificate rules, the peer's verified
   certificate must match a pattern (its subject parsed and matched attribute
   by attribute, and its issuer when the entry pins one: :mod:`gateway.subject`),
   and the calling AE title must be one that pattern may use (:class:`CertificateRule`; HARDENING T07: "policy
   binding of certificate to AE") -> RJ(1, 1, 3), so a stolen AE title alone
   does not get in.

Each rule also says why in words (:func:`explain`), for the log line and the
audit record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
import ipaddress
from typing import TYPE_CHECKING, Protocol

from gateway.subject import CertificatePattern, NamePattern
from gateway.ul.errors import RejectReasonUser, RejectResult, RejectSource
from gateway.ul.pdu import AAssociateRJ, AAssociateRQ

if TYPE_CHECKING:
    from gateway.config.schema import CertificateBinding


@dataclass(frozen=True)
class Peer:
    """What the transport knows about the peer, for rules beyond AE titles.

    :ivar address: the peer's IP address, if known.
    :ivar certificate_subject: the verified TLS client certificate subject (RFC 4514), if any.
    :ivar certificate_issuer: that certificate's issuer (RFC 4514), if known.
    """

    address: str | None = None
    certificate_subject: str | None = None
    certificate_issuer: str | None = None


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
        return self.judge(rq, peer)[0]

    def judge(self, rq: AAssociateRQ, peer: Peer | None = None) -> tuple[AAssociateRJ | None, str]:
        """Like :meth:`check`, and say why.

        :param rq: the A-ASSOCIATE-RQ received.
        :param peer: what the transport knows about the peer, if anything.
        :returns: ``(None, "")`` to go on, or the A-ASSOCIATE-RJ and the reason in words.
        """
        who = Peer() if peer is None else peer
        for rule in self.rules:
            rejection = rule(rq, who)
            if rejection is not None:
                return rejection, explain(rule, rq, who)
        return None, ""

    def with_rules(self, extra_rules: Sequence[AccessRule]) -> "AccessPolicy":
        """A policy with the same AE title rules and ``extra_rules`` after this one's.

        :param extra_rules: a listener's own rules.
        :returns: the new policy.
        """
        return AccessPolicy(self.ae_title, self.calling_ae_titles, (*self.rules[2:], *extra_rules))


@dataclass(frozen=True)
class NetworkRule:
    """Rule 5: the peer's address is in one of the allowed networks.

    An unknown address (no IP transport) never matches. IPv4-mapped IPv6
    addresses (``::ffff:10.0.0.1``) are compared as IPv4.

    :ivar networks: CIDR networks, e.g. ``("10.1.0.0/16", "::1/128")``.
    """

    networks: tuple[str, ...]

    def __call__(self, rq: AAssociateRQ, peer: Peer) -> AAssociateRJ | None:
        """Reject with RJ(1, 1, 1) a peer outside every network (PS3.8 Table 9-21, no reason given)."""
        if peer.address is None or not address_in_networks(peer.address, self.networks):
            return _reject_user(RejectReasonUser.NO_REASON)
        return None


def address_in_networks(address: str, networks: Sequence[str]) -> bool:
    """Whether an IP address lies in any of ``networks``.

    :param address: the address (``host`` or ``host:port`` for IPv4; IPv6 without brackets).
    :param networks: CIDR networks.
    :returns: ``False`` for an address that does not parse.
    """
    host = address
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for network in networks:
        net = ipaddress.ip_network(network, strict=False)
        if ip.version == net.version and ip in net:
            return True
    return False


@dataclass(frozen=True)
class CertificateRule:
    """Rule 6: the peer's certificate may use the calling AE title (HARDENING T07).

    :ivar bindings: ``(certificate pattern, (AE title patterns...))`` pairs.
        A certificate pattern (:class:`gateway.subject.CertificatePattern`)
        matches the parsed subject attribute by attribute, and the issuer
        when it pins one; the calling AE title must match a title pattern of
        *some* entry the certificate matches.
    """

    bindings: tuple[tuple[CertificatePattern, tuple[str, ...]], ...]

    @classmethod
    def from_config(cls, entries: Sequence[CertificateBinding]) -> "CertificateRule":
        """The rule of a listener's ``access.certificates`` (validated at load).

        :param entries: the configuration entries.
        :returns: the rule.
        :raises gateway.subject.PatternError: for a pattern the loader would have refused.
        """
        return cls(
            tuple(
                (
                    CertificatePattern(
                        NamePattern.parse(entry.subject), NamePattern.parse(entry.issuer) if entry.issuer else None
                    ),
                    entry.ae_titles,
                )
                for entry in entries
            )
        )

    def __call__(self, rq: AAssociateRQ, peer: Peer) -> AAssociateRJ | None:
        """Reject with RJ(1, 1, 3) a peer without a certificate, or whose certificate may not use this AE title."""
        subject = peer.certificate_subject
        if subject is None:
            return _reject_user(RejectReasonUser.CALLING_AE_TITLE_NOT_RECOGNIZED)
        calling = rq.calling_ae_title.strip(" ")
        for pattern, titles in self.bindings:
            if pattern.matches(subject, peer.certificate_issuer) and any(fnmatchcase(calling, t) for t in titles):
                return None
        return _reject_user(RejectReasonUser.CALLING_AE_TITLE_NOT_RECOGNIZED)


def explain(rule: AccessRule, rq: AAssociateRQ, peer: Peer) -> str:
    """Say in words why ``rule`` rejected a request (for the log and the audit trail; no raw peer bytes).

    :param rule: the rule that objected.
    :param rq: the request.
    :param peer: the peer.
    :returns: a short sentence.
    """
    calling = "".join(c if " " <= c <= "~" else "?" for c in rq.calling_ae_title.strip(" "))
    if isinstance(rule, CalledAETitleRule):
        return "called AE title is not ours"
    if isinstance(rule, CallingAETitleRule):
        return f"calling AE title {calling!r} is not allowed"
    if isinstance(rule, NetworkRule):
        return f"address {peer.address} is not in an allowed network"
    if isinstance(rule, CertificateRule):
        if peer.certificate_subject is None:
            return f"no client certificate for calling AE title {calling!r}"
        return f"certificate {peer.certificate_subject!r} may not use calling AE title {calling!r}"
    return f"rejected by {type(rule).__name__}"
