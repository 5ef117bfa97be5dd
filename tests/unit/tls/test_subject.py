"""Certificate name patterns matched attribute by attribute (issue 11; :mod:`gateway.subject`)."""

from __future__ import annotations

from fnmatch import fnmatchcase

from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from gateway.subject import CertificatePattern, NamePattern, PatternError, parse_dn


def dn(*attributes: tuple[x509.ObjectIdentifier, str]) -> str:
    """The RFC 4514 string ``cryptography`` (and so :func:`gateway.tls.peer_identity`) makes for a name."""
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes]).rfc4514_string()


CN, O, OU = NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME

#: The attack: one CN attribute whose value carries what looks like an O.
CRAFTED = dn((CN, "mr1,O=Radiology"))
#: The certificate the pattern is meant for.
RIGHT = dn((O, "Radiology"), (CN, "mr1"))


def matches(pattern: str, subject: str) -> bool:
    """Parse ``pattern`` and match it against ``subject``."""
    return NamePattern.parse(pattern).matches_text(subject)


class CommaInCommonNameTests(SynchronousTestCase):
    """The CN-with-comma attack of issue 11."""

    def test_crafted_cn_matched_the_old_string_glob(self) -> None:
        """Control: a glob over the RFC 4514 string (the old rule) lets the crafted CN in."""
        self.assertEqual(CRAFTED, "CN=mr1\\,O=Radiology")
        self.assertTrue(fnmatchcase(CRAFTED, "CN=mr*,O=Radiology"))

    def test_crafted_cn_does_not_match(self) -> None:
        """CN ``mr1,O=Radiology`` has no O attribute: ``CN=mr*,O=Radiology`` refuses it."""
        self.assertFalse(matches("CN=mr*,O=Radiology", CRAFTED))

    def test_right_certificate_matches(self) -> None:
        """CN mr1 with O Radiology matches, whatever the order of the attributes."""
        self.assertTrue(matches("CN=mr*,O=Radiology", RIGHT))
        self.assertTrue(matches("O=Radiology,CN=mr*", RIGHT))

    def test_the_crafted_value_is_one_attribute(self) -> None:
        """Parsing keeps the escaped comma inside the CN value."""
        self.assertEqual(parse_dn(CRAFTED), (("2.5.4.3", "mr1,O=Radiology"),))

    def test_escaped_comma_in_a_pattern_is_literal(self) -> None:
        """A pattern may name that CN exactly, with the comma escaped (or as hex \\2C)."""
        self.assertTrue(matches("CN=mr1\\,O=Radiology", CRAFTED))
        self.assertTrue(matches("CN=mr1\\2CO=Radiology", CRAFTED))
        self.assertFalse(matches("CN=mr1\\,O=Radiology", RIGHT))


class PatternSemanticsTests(SynchronousTestCase):
    """What a pattern demands of the other attributes."""

    def test_unnamed_attributes_are_ignored(self) -> None:
        """``CN=ct1`` accepts a subject that also has O and C."""
        self.assertTrue(matches("CN=ct1", dn((NameOID.COUNTRY_NAME, "NL"), (O, "Radiology"), (CN, "ct1"))))

    def test_named_attribute_must_be_present(self) -> None:
        """``CN=ct1,OU=*`` refuses a subject without an OU, though ``*`` would match any value."""
        self.assertFalse(matches("CN=ct1,OU=*", dn((CN, "ct1"))))

    def test_old_trailing_star_is_a_no_op(self) -> None:
        """``CN=modality1,*`` (older configurations) means CN modality1, anything else."""
        self.assertTrue(matches("CN=modality1,*", dn((O, "x"), (CN, "modality1"))))
        self.assertFalse(matches("CN=modality1,*", dn((O, "x"), (CN, "modality2"))))

    def test_star_alone_accepts_any_certificate_but_not_none(self) -> None:
        """``*`` accepts every subject; no certificate (an empty subject) matches nothing."""
        self.assertTrue(matches("*", dn((CN, "anything"))))
        self.assertFalse(matches("*", ""))

    def test_glob_stays_within_one_value(self) -> None:
        """``CN=*Radiology`` does not reach into the O attribute."""
        self.assertFalse(matches("CN=*Radiology", RIGHT))

    def test_values_are_case_sensitive_types_are_not(self) -> None:
        """``cn=MR1`` names the CN attribute, but its value must match with the same case."""
        self.assertTrue(matches("cn=mr1", RIGHT))
        self.assertFalse(matches("CN=MR1", RIGHT))

    def test_spaces_around_separators_are_ignored(self) -> None:
        """``CN = mr1 , O = Radiology`` is the same pattern."""
        self.assertTrue(matches("CN = mr1 , O = Radiology", RIGHT))

    def test_escaped_glob_characters_are_literal(self) -> None:
        """``\\*`` is a literal star, not a wildcard."""
        self.assertTrue(matches("CN=a\\*", dn((CN, "a*"))))
        self.assertFalse(matches("CN=a\\*", dn((CN, "ab"))))

    def test_dotted_oid_names_an_attribute(self) -> None:
        """``2.5.4.3`` is the CN."""
        self.assertTrue(matches("2.5.4.3=mr1", RIGHT))

    def test_plus_is_a_separator_like_comma(self) -> None:
        """A multi-valued RDN in the subject is matched as separate attributes; ``+`` in a pattern is ``,``."""
        subject = x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(CN, "ct1"), x509.NameAttribute(O, "R")])])
        text = subject.rfc4514_string()
        self.assertIn("+", text)
        self.assertTrue(matches("CN=ct1+O=R", text))
        self.assertTrue(matches("CN=ct1,O=R", text))


class MultiValuedTests(SynchronousTestCase):
    """A type named N times needs exactly N values, matched one to one."""

    two_ous = dn((O, "H"), (OU, "Radiology"), (OU, "Staff"), (CN, "ct1"))

    def test_one_ou_pattern_refuses_two_ous(self) -> None:
        """``OU=Radiology`` does not accept a certificate that carries a second OU."""
        self.assertFalse(matches("OU=Radiology", self.two_ous))

    def test_both_ous_named_in_any_order(self) -> None:
        """Naming both OUs (or one and ``*``) accepts it, in any order."""
        self.assertTrue(matches("OU=Staff,OU=Radiology", self.two_ous))
        self.assertTrue(matches("OU=Radiology,OU=*", self.two_ous))

    def test_one_value_cannot_satisfy_two_globs(self) -> None:
        """``OU=R*,OU=*y`` needs two values; one OU matching both globs is not enough."""
        self.assertFalse(matches("OU=R*,OU=*y", dn((OU, "Radiology"))))

    def test_second_cn_cannot_ride_along(self) -> None:
        """A certificate with CN mr1 and a second CN admin does not match ``CN=mr*``."""
        self.assertFalse(matches("CN=mr*", dn((CN, "mr1"), (CN, "admin"))))


class PatternErrorTests(SynchronousTestCase):
    """Patterns that do not parse are refused, never silently matching nothing."""

    def test_whole_string_glob_is_refused(self) -> None:
        """``*Radiology*`` is not TYPE=VALUE."""
        self.assertRaises(PatternError, NamePattern.parse, "*Radiology*")

    def test_unknown_type_is_refused(self) -> None:
        """An attribute type that is neither a known name nor an OID."""
        self.assertRaises(PatternError, NamePattern.parse, "XX=1")

    def test_empty_value_and_empty_component_are_refused(self) -> None:
        """``CN=`` and ``CN=a,,O=b``."""
        self.assertRaises(PatternError, NamePattern.parse, "CN=")
        self.assertRaises(PatternError, NamePattern.parse, "CN=a,,O=b")

    def test_dangling_backslash_and_bad_utf8_are_refused(self) -> None:
        """A backslash at the end, and hex escapes that are not UTF-8."""
        self.assertRaises(PatternError, NamePattern.parse, "CN=a\\")
        self.assertRaises(PatternError, NamePattern.parse, "CN=\\ff")


class IssuerTests(SynchronousTestCase):
    """An issuer pattern pins which CA's certificates a pattern accepts."""

    pattern = CertificatePattern(NamePattern.parse("CN=mr*"), NamePattern.parse("CN=Radiology CA,O=Hospital"))

    def test_right_issuer_is_accepted(self) -> None:
        """The subject matches and the issuer is the pinned CA."""
        self.assertTrue(self.pattern.matches(RIGHT, dn((O, "Hospital"), (CN, "Radiology CA"))))

    def test_other_issuer_is_refused(self) -> None:
        """The same subject from another CA is refused."""
        self.assertFalse(self.pattern.matches(RIGHT, dn((O, "Elsewhere"), (CN, "Radiology CA"))))

    def test_unknown_issuer_is_refused(self) -> None:
        """No issuer known: an issuer pattern cannot hold."""
        self.assertFalse(self.pattern.matches(RIGHT, None))

    def test_no_issuer_pattern_accepts_any_ca(self) -> None:
        """Without ``issuer`` any CA the listener trusts will do."""
        self.assertTrue(CertificatePattern(NamePattern.parse("CN=mr*")).matches(RIGHT, None))
