"""User-information sub-items of A-ASSOCIATE-RQ/AC (PS3.8 Annex D, PS3.7 Annex D.3.3).

The dataclasses below are the decoded form; the codec lives beside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SCPSCURoleSelection:
    """SCP/SCU role selection sub-item 0x54 (PS3.7 D.3.3.4)."""

    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(frozen=True)
class SOPClassExtendedNegotiation:
    """SOP class extended negotiation sub-item 0x56 (PS3.7 D.3.3.5)."""

    sop_class_uid: str
    application_information: bytes


@dataclass(frozen=True)
class SOPClassCommonExtendedNegotiation:
    """SOP class common extended negotiation sub-item 0x57 (PS3.7 D.3.3.6)."""

    sop_class_uid: str
    service_class_uid: str
    related_general_sop_classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class UserIdentityRQ:
    """User identity negotiation sub-item 0x58 in an RQ (PS3.7 D.3.3.7.1).

    :ivar identity_type: 1 username, 2 username+passcode, 3 Kerberos,
        4 SAML, 5 JWT.
    """

    identity_type: int
    positive_response_requested: bool
    primary_field: bytes
    secondary_field: bytes = b""


@dataclass(frozen=True)
class UserIdentityAC:
    """User identity negotiation sub-item 0x59 in an AC (PS3.7 D.3.3.7.2)."""

    server_response: bytes


@dataclass(frozen=True)
class UnknownItem:
    """A sub-item whose type we do not know; kept so it can be logged, then ignored (PS3.8 9.3)."""

    item_type: int
    data: bytes


@dataclass(frozen=True)
class UserInformation:
    """User information item 0x50 (PS3.8 9.3.2.3 and Annex D).

    :ivar max_length: maximum length received (sub-item 0x51, PS3.8 D.1);
        ``None`` when the sub-item is absent, 0 means no limit.
    :ivar async_ops: (max operations invoked, max operations performed) from
        sub-item 0x53 (PS3.7 D.3.3.3), or ``None``.
    """

    max_length: int | None = None
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    async_ops: tuple[int, int] | None = None
    role_selections: tuple[SCPSCURoleSelection, ...] = ()
    extended_negotiations: tuple[SOPClassExtendedNegotiation, ...] = ()
    common_extended_negotiations: tuple[SOPClassCommonExtendedNegotiation, ...] = ()
    user_identity_rq: UserIdentityRQ | None = None
    user_identity_ac: UserIdentityAC | None = None
    unknown_items: tuple[UnknownItem, ...] = ()
