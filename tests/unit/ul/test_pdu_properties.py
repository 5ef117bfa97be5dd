"""Property tests for the PDU codec and framing (hypothesis).

Two families: generated PDUs survive ``decode(encode(x)) == x``; and arbitrary
or mutated bytes make ``decode`` and ``PDUBuffer.feed`` fail only with
``PDUDecodeError`` (never IndexError, struct.error, UnicodeError, ValueError).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.ul.errors import AbortReason, PDUDecodeError
from gateway.ul.framing import PDUBuffer
from gateway.ul.items import (
    KNOWN_USER_INFORMATION_TYPES,
    SCPSCURoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UnknownItem,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
)
from gateway.ul.pdu import (
    PDU,
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AReleaseRP,
    AReleaseRQ,
    PDataTF,
    PresentationContextAC,
    PresentationContextRQ,
    decode,
    encode,
)
from tests.support.fixtures_pdu import ALL_FIXTURES

#: Fast enough for every run, as the brief for these tests asks.
#: Every class decode may return.
PDU_CLASSES = (AAssociateRQ, AAssociateAC, AAssociateRJ, PDataTF, AReleaseRQ, AReleaseRP, AAbort)

PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

byte = st.integers(0, 0xFF)
uids = st.text(alphabet="0123456789.", min_size=1, max_size=64)
short_bytes = st.binary(max_size=40)
latin1 = st.characters(min_codepoint=0, max_codepoint=0xFF)
# Titles as decode returns them: non-empty, no leading/trailing spaces, <= 16 bytes.
ae_titles = st.text(alphabet=latin1, min_size=1, max_size=16).filter(lambda t: t == t.strip(" ") and t != "")

user_information = st.builds(
    UserInformation,
    max_length=st.none() | st.integers(0, 0xFFFFFFFF),
    implementation_class_uid=st.none() | uids | st.just(""),
    implementation_version_name=st.none() | st.text(alphabet=latin1, max_size=16),
    async_ops=st.none() | st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
    role_selections=st.lists(st.builds(SCPSCURoleSelection, uids, st.booleans(), st.booleans()), max_size=3).map(tuple),
    extended_negotiations=st.lists(st.builds(SOPClassExtendedNegotiation, uids, short_bytes), max_size=3).map(tuple),
    common_extended_negotiations=st.lists(
        st.builds(SOPClassCommonExtendedNegotiation, uids, uids, st.lists(uids, max_size=3).map(tuple)), max_size=2
    ).map(tuple),
    user_identity_rq=st.none() | st.builds(UserIdentityRQ, byte, st.booleans(), short_bytes, short_bytes),
    user_identity_ac=st.none() | st.builds(UserIdentityAC, short_bytes),
    unknown_items=st.lists(
        st.builds(UnknownItem, byte.filter(lambda t: t not in KNOWN_USER_INFORMATION_TYPES), short_bytes), max_size=3
    ).map(tuple),
)

odd_ids = st.lists(st.integers(0, 127).map(lambda n: 2 * n + 1), unique=True, max_size=6)


@st.composite
def associate_rqs(draw: st.DrawFn) -> AAssociateRQ:
    """Generate A-ASSOCIATE-RQs with distinct odd context IDs."""
    contexts = tuple(
        PresentationContextRQ(context_id, draw(uids), tuple(draw(st.lists(uids, min_size=1, max_size=4))))
        for context_id in draw(odd_ids)
    )
    return AAssociateRQ(
        called_ae_title=draw(ae_titles),
        calling_ae_title=draw(ae_titles),
        presentation_contexts=contexts,
        user_information=draw(st.none() | user_information),
        application_context=draw(uids),
        protocol_version=draw(st.integers(0, 0xFFFF)),
    )


@st.composite
def associate_acs(draw: st.DrawFn) -> AAssociateAC:
    """Generate A-ASSOCIATE-ACs; only rejected contexts may lack a transfer syntax."""
    contexts = []
    for context_id in draw(odd_ids):
        result = draw(st.integers(0, 4) | byte)
        syntax = draw(uids) if result == 0 else draw(st.none() | uids)
        contexts.append(PresentationContextAC(context_id, result, syntax))
    return AAssociateAC(
        called_ae_title=draw(ae_titles),
        calling_ae_title=draw(ae_titles),
        presentation_contexts=tuple(contexts),
        user_information=draw(st.none() | user_information),
        application_context=draw(uids),
        protocol_version=draw(st.integers(0, 0xFFFF)),
    )


pdata = st.builds(
    PDataTF, st.lists(st.builds(PDV, byte, byte, st.binary(max_size=300)), min_size=1, max_size=5).map(tuple)
)
pdus: st.SearchStrategy[PDU] = st.one_of(
    associate_rqs(),
    associate_acs(),
    st.builds(AAssociateRJ, byte, byte, byte),
    pdata,
    st.just(AReleaseRQ()),
    st.just(AReleaseRP()),
    st.builds(AAbort, byte, byte),
)


@st.composite
def mutated_pdus(draw: st.DrawFn) -> bytes:
    """Take a valid encoded PDU (generated or a fixture) and damage it: flip, cut or insert bytes."""
    raw = bytearray(draw(pdus.map(encode) | st.sampled_from([raw for _, raw, _ in ALL_FIXTURES])))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        if kind == "flip" and raw:
            raw[draw(st.integers(0, len(raw) - 1))] = draw(byte)
        elif kind == "truncate":
            del raw[draw(st.integers(0, len(raw))) :]
        elif kind == "insert":
            position = draw(st.integers(0, len(raw)))
            raw[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and raw:
            position = draw(st.integers(0, len(raw) - 1))
            del raw[position : position + draw(st.integers(1, 8))]
    return bytes(raw)


class RoundTripProperties(SynchronousTestCase):
    """decode(encode(x)) == x for every PDU the strategies can build."""

    @PROPERTY_SETTINGS
    @given(pdus)
    def test_decode_inverts_encode(self, pdu: PDU) -> None:
        """Any generated PDU comes back equal after encoding and decoding its body."""
        raw = encode(pdu)
        self.assertEqual(int.from_bytes(raw[2:6], "big"), len(raw) - 6)
        self.assertEqual(decode(raw[0], raw[6:]), pdu)

    @PROPERTY_SETTINGS
    @given(st.lists(pdus, min_size=1, max_size=4), st.lists(st.integers(1, 400), min_size=1, max_size=20))
    def test_framing_any_split_yields_the_same_pdus(self, sequence: list[PDU], cuts: list[int]) -> None:
        """A stream of PDUs cut into arbitrary pieces frames back into the same PDUs."""
        stream = b"".join(encode(pdu) for pdu in sequence)
        buffer = PDUBuffer(max_pdata_length=0)
        out: list[object] = []
        position = 0
        index = 0
        while position < len(stream):
            size = cuts[index % len(cuts)]
            out.extend(buffer.feed(stream[position : position + size]))
            position += size
            index += 1
        self.assertEqual(out, sequence)
        self.assertEqual(buffer.buffered, 0)


class RobustnessProperties(SynchronousTestCase):
    """Hostile bytes produce PDUDecodeError or a PDU, never another exception (HARDENING P37)."""

    def assertDecodesOrFailsCleanly(self, pdu_type: int, body: bytes) -> None:
        """Assert that decode returns a PDU or raises PDUDecodeError with a known reason."""
        try:
            result = decode(pdu_type, body)
        except PDUDecodeError as error:
            self.assertIsInstance(error.reason, AbortReason)
        except Exception as error:  # noqa: BLE001 - the property under test
            self.fail(f"decode raised {error!r} instead of PDUDecodeError")
        else:
            self.assertIsInstance(result, PDU_CLASSES)

    @PROPERTY_SETTINGS
    @given(byte, st.binary(max_size=600))
    def test_decode_of_arbitrary_bytes_raises_only_pdu_decode_error(self, pdu_type: int, body: bytes) -> None:
        """Random type and body either decode or raise PDUDecodeError."""
        self.assertDecodesOrFailsCleanly(pdu_type, body)

    @PROPERTY_SETTINGS
    @given(st.sampled_from([1, 2]), st.binary(min_size=68, max_size=68), st.binary(max_size=400))
    def test_decode_of_random_items_after_a_valid_fixed_part_raises_only_pdu_decode_error(
        self, pdu_type: int, fixed: bytes, items: bytes
    ) -> None:
        """Random item bytes behind a 68-byte fixed part reach the item parsers and fail cleanly."""
        self.assertDecodesOrFailsCleanly(pdu_type, fixed + items)

    @PROPERTY_SETTINGS
    @given(mutated_pdus())
    def test_decode_of_mutated_pdus_raises_only_pdu_decode_error(self, raw: bytes) -> None:
        """Damaged real PDUs (flipped, cut, grown) decode or fail with PDUDecodeError."""
        if raw:
            self.assertDecodesOrFailsCleanly(raw[0], raw[6:])

    @PROPERTY_SETTINGS
    @given(st.lists(mutated_pdus() | st.binary(max_size=64), min_size=1, max_size=4), st.integers(1, 97))
    def test_framing_of_hostile_streams_puts_an_error_only_last(self, pieces: list[bytes], size: int) -> None:
        """Whatever arrives, feed returns PDUs and at most one error, last, then nothing more."""
        stream = b"".join(pieces)
        buffer = PDUBuffer(max_pdata_length=16384)
        outputs: list[object] = []
        for start in range(0, len(stream), size):
            outputs.extend(buffer.feed(stream[start : start + size]))
        errors = [index for index, item in enumerate(outputs) if isinstance(item, PDUDecodeError)]
        self.assertLessEqual(len(errors), 1)
        if errors:
            self.assertEqual(errors[0], len(outputs) - 1)
            self.assertTrue(buffer.dead)
            self.assertEqual(buffer.buffered, 0)
        else:
            self.assertFalse(buffer.dead)
