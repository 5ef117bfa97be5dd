"""Tests for :mod:`gateway.dimse.commitment` (PS3.4 Tables J.3-1, J.3-2; PS3.5 7.1, 7.5).

pydicom (test-only) is the independent encoder and decoder: our bytes must
read the same in it, and its bytes (defined and undefined lengths, both
transfer syntaxes) must decode to the same request or report with ours.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from twisted.trial.unittest import SynchronousTestCase

from gateway.commitment.model import ActionRequest, CommitmentReport, FailedReference, Reference
from gateway.dimse import commitment
from gateway.dimse.commitment import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    CommitmentDataSetError,
    decode_action_request,
    decode_event_report,
    encode_action_request,
    encode_event_report,
)
from gateway.dimse.status import Status
from tests.unit.fuzz import mutate

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
TRANSACTION = "1.2.826.0.1.3680043.8.498.1"  # odd length: NUL padding
BOTH = (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN)

REQUEST = ActionRequest(
    TRANSACTION,
    (Reference(CT, "1.2.3.4.5"), Reference(MR, "1.2.3.4.66"), Reference(CT, "1.2.3.4.5")),
    storage_media_file_set_id="FS1",
    storage_media_file_set_uid="1.2.3.9",
)
REPORT = CommitmentReport(
    TRANSACTION,
    committed=(Reference(CT, "1.2.3.4.5"),),
    failed=(FailedReference(Reference(MR, "1.2.3.4.66"), 0x0110), FailedReference(Reference(CT, "1.2.3.7"), 0x0112)),
    retrieve_ae_title="ARCHIVE",
)


def pydicom_encode(ds: Dataset, transfer_syntax: str) -> bytes:
    """Encode a data set with pydicom in Implicit or Explicit VR Little Endian."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN
    write_dataset(fp, ds)
    return fp.getvalue()


def pydicom_decode(data: bytes, transfer_syntax: str) -> Dataset:
    """Decode a data set with pydicom."""
    return read_dataset(DicomBytesIO(data), transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN, True)


def item(sop_class: str, instance: str, reason: int | None = None) -> Dataset:
    """A Referenced/Failed SOP Sequence item built with pydicom."""
    ds = Dataset()
    ds.ReferencedSOPClassUID = sop_class
    ds.ReferencedSOPInstanceUID = instance
    if reason is not None:
        ds.FailureReason = reason
    return ds


def pydicom_request(undefined_lengths: bool = False) -> Dataset:
    """REQUEST as a pydicom Dataset, with a Referenced PPS Sequence to be skipped."""
    ds = Dataset()
    ds.TransactionUID = TRANSACTION
    ds.ReferencedSOPSequence = Sequence([item(r.sop_class_uid, r.sop_instance_uid) for r in REQUEST.references])
    pps = Dataset()
    pps.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.3"
    pps.ReferencedSOPInstanceUID = "1.2.3.8"
    ds.ReferencedPerformedProcedureStepSequence = Sequence([pps])
    ds.StorageMediaFileSetID = "FS1"
    ds.StorageMediaFileSetUID = "1.2.3.9"
    if undefined_lengths:
        for seq in (ds["ReferencedSOPSequence"], ds["ReferencedPerformedProcedureStepSequence"]):
            seq.is_undefined_length = True
            for it in seq.value:
                it.is_undefined_length_sequence_item = True
    return ds


# Hand-made element encoders, for inputs pydicom would refuse to write.


def implicit(tag: int, value: bytes, length: int | None = None) -> bytes:
    """One Implicit VR LE element (PS3.5 7.1.2); ``length`` overrides the length field."""
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value) if length is None else length) + value


def item_bytes(content: bytes, undefined: bool = False) -> bytes:
    """An item (PS3.5 7.5), of defined or undefined length."""
    if undefined:
        return implicit(0xFFFEE000, b"", 0xFFFFFFFF) + content + implicit(0xFFFEE00D, b"")
    return implicit(0xFFFEE000, content)


def sequence_bytes(tag: int, items: list[bytes], undefined: bool = False) -> bytes:
    """An Implicit VR sequence of the given items."""
    body = b"".join(items)
    if undefined:
        return implicit(tag, b"", 0xFFFFFFFF) + body + implicit(0xFFFEE0DD, b"")
    return implicit(tag, body)


def ref_item(instance: bytes = b"1.2.3.4.5\x00", sop_class: bytes = b"1.2.840.10008.5.1.4.1.1.2\x00") -> bytes:
    """The content of one Referenced SOP Sequence item."""
    return implicit(0x00081150, sop_class) + implicit(0x00081155, instance)


def request_bytes(*, transaction: bytes | None = b"1.2.3\x00", items: list[bytes] | None = None) -> bytes:
    """A hand-made Implicit VR N-ACTION data set."""
    parts = []
    if transaction is not None:
        parts.append(implicit(0x00081195, transaction))
    if items is not None:
        parts.append(sequence_bytes(0x00081199, items))
    return b"".join(parts)


class RoundTripTests(SynchronousTestCase):
    """Our encoders and decoders are inverses in both transfer syntaxes."""

    def test_action_request_round_trip(self) -> None:
        """A request with repeats and file-set fields survives encode and decode in both syntaxes."""
        for ts in BOTH:
            self.assertEqual(decode_action_request(encode_action_request(REQUEST, ts), ts), REQUEST, ts)

    def test_event_report_round_trip(self) -> None:
        """A report with committed and failed instances survives encode and decode in both syntaxes."""
        for ts in BOTH:
            self.assertEqual(decode_event_report(encode_event_report(REPORT, ts), ts), REPORT, ts)

    def test_all_committed_report_has_no_failed_sequence(self) -> None:
        """An event type 1 report carries no Failed SOP Sequence (PS3.4 Table J.3-2)."""
        report = CommitmentReport(TRANSACTION, committed=(Reference(CT, "1.2.3"),))
        ds = pydicom_decode(encode_event_report(report, IMPLICIT_VR_LITTLE_ENDIAN), IMPLICIT_VR_LITTLE_ENDIAN)
        self.assertNotIn("FailedSOPSequence", ds)
        self.assertNotIn("RetrieveAETitle", ds)
        self.assertEqual(len(ds.ReferencedSOPSequence), 1)

    def test_all_failed_report_has_no_referenced_sequence(self) -> None:
        """A report where everything failed carries only the Failed SOP Sequence."""
        report = CommitmentReport(TRANSACTION, failed=(FailedReference(Reference(CT, "1.2.3"), 0x0112),))
        ds = pydicom_decode(encode_event_report(report, EXPLICIT_VR_LITTLE_ENDIAN), EXPLICIT_VR_LITTLE_ENDIAN)
        self.assertNotIn("ReferencedSOPSequence", ds)
        self.assertEqual(ds.FailedSOPSequence[0].FailureReason, 0x0112)

    def test_encoding_is_even_and_ascending(self) -> None:
        """Values are padded to even length and top-level tags ascend (PS3.5 7.1)."""
        for ts in BOTH:
            data = encode_event_report(REPORT, ts)
            self.assertEqual(len(data) % 2, 0)
            ds = pydicom_decode(data, ts)
            tags = [int(e.tag) for e in ds]
            self.assertEqual(tags, sorted(tags))

    def test_encode_refuses_unsupported_transfer_syntax(self) -> None:
        """Encoding in a transfer syntax other than Implicit/Explicit VR LE names it in a ValueError."""
        exc = self.assertRaises(ValueError, encode_action_request, REQUEST, "1.2.840.10008.1.2.2")
        self.assertIn("1.2.840.10008.1.2.2", str(exc))
        self.assertRaises(ValueError, encode_event_report, REPORT, "1.2.840.10008.1.2.1.99")

    def test_encode_refuses_empty_request_and_report(self) -> None:
        """A request or report that names no instance is a caller error."""
        self.assertRaises(ValueError, encode_action_request, ActionRequest(TRANSACTION, ()), IMPLICIT_VR_LITTLE_ENDIAN)
        self.assertRaises(ValueError, encode_event_report, CommitmentReport(TRANSACTION), IMPLICIT_VR_LITTLE_ENDIAN)

    def test_encode_refuses_overlong_uid(self) -> None:
        """A UID over 64 bytes cannot be encoded."""
        request = ActionRequest("1." * 40, (Reference(CT, "1.2"),))
        self.assertRaises(ValueError, encode_action_request, request, IMPLICIT_VR_LITTLE_ENDIAN)


class PydicomInteropTests(SynchronousTestCase):
    """Our codec agrees with pydicom on the same data sets, in both syntaxes."""

    def test_decode_pydicom_request_defined_lengths(self) -> None:
        """A request written by pydicom decodes to REQUEST; the PPS sequence is skipped."""
        for ts in BOTH:
            self.assertEqual(decode_action_request(pydicom_encode(pydicom_request(), ts), ts), REQUEST, ts)

    def test_decode_pydicom_request_undefined_lengths(self) -> None:
        """Sequences and items of undefined length, with delimiters, decode the same."""
        for ts in BOTH:
            data = pydicom_encode(pydicom_request(undefined_lengths=True), ts)
            self.assertIn(b"\xfe\xff\xdd\xe0", data)  # a sequence delimiter is really there
            self.assertEqual(decode_action_request(data, ts), REQUEST, ts)

    def test_pydicom_reads_our_request(self) -> None:
        """pydicom reads our N-ACTION data set with the values we put in."""
        for ts in BOTH:
            ds = pydicom_decode(encode_action_request(REQUEST, ts), ts)
            self.assertEqual(ds.TransactionUID, TRANSACTION)
            self.assertEqual(
                [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in ds.ReferencedSOPSequence],
                [(r.sop_class_uid, r.sop_instance_uid) for r in REQUEST.references],
            )
            self.assertEqual((ds.StorageMediaFileSetID, ds.StorageMediaFileSetUID), ("FS1", "1.2.3.9"))

    def test_pydicom_reads_our_report(self) -> None:
        """pydicom reads our N-EVENT-REPORT data set with the values we put in."""
        for ts in BOTH:
            ds = pydicom_decode(encode_event_report(REPORT, ts), ts)
            self.assertEqual(ds.TransactionUID, TRANSACTION)
            self.assertEqual(ds.RetrieveAETitle, "ARCHIVE")
            self.assertEqual(ds.ReferencedSOPSequence[0].ReferencedSOPInstanceUID, "1.2.3.4.5")
            self.assertEqual(
                [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in ds.FailedSOPSequence],
                [("1.2.3.4.66", 0x0110), ("1.2.3.7", 0x0112)],
            )

    def test_decode_pydicom_report(self) -> None:
        """A report written by pydicom (as Orthanc or DCMTK would send it) decodes to REPORT."""
        for ts in BOTH:
            ds = Dataset()
            ds.RetrieveAETitle = "ARCHIVE"
            ds.TransactionUID = TRANSACTION
            ds.FailedSOPSequence = Sequence([item(MR, "1.2.3.4.66", 0x0110), item(CT, "1.2.3.7", 0x0112)])
            ds.ReferencedSOPSequence = Sequence([item(CT, "1.2.3.4.5")])
            self.assertEqual(decode_event_report(pydicom_encode(ds, ts), ts), REPORT, ts)

    def test_known_sequence_sent_as_un_is_read_in_implicit_vr(self) -> None:
        """A Referenced SOP Sequence with VR UN in Explicit VR is read as Implicit VR items (PS3.5 6.2.2)."""
        body = item_bytes(ref_item())
        data = (
            struct.pack("<HH2sH", 0x0008, 0x1195, b"UI", 6) + b"1.2.3\x00"
            + struct.pack("<HH2s2xI", 0x0008, 0x1199, b"UN", len(body)) + body
        )
        request = decode_action_request(data, EXPLICIT_VR_LITTLE_ENDIAN)
        self.assertEqual(request.references, (Reference(CT, "1.2.3.4.5"),))


class ToleranceTests(SynchronousTestCase):
    """What the decoder deliberately accepts."""

    def test_unknown_elements_and_sequences_are_skipped(self) -> None:
        """Unknown elements, group lengths and an unknown undefined-length sequence are skipped."""
        nested = sequence_bytes(0x00400275, [item_bytes(implicit(0x00100010, b"X^Y "), undefined=True)], undefined=True)
        data = (
            implicit(0x00080000, struct.pack("<I", 0))
            + implicit(0x00080005, b"ISO_IR 100")
            + implicit(0x00081195, b"1.2.3\x00")
            + sequence_bytes(0x00081199, [item_bytes(ref_item() + implicit(0x00089999, b"zz"), undefined=True)])
            + nested
        )
        request = decode_action_request(data, IMPLICIT_VR_LITTLE_ENDIAN)
        self.assertEqual(request, ActionRequest("1.2.3", (Reference(CT, "1.2.3.4.5"),)))

    def test_non_conformant_but_echoable_uid_is_accepted(self) -> None:
        """A UID with leading zeros (HARDENING decision 3) decodes unchanged: the SCP answers about it."""
        data = request_bytes(items=[item_bytes(ref_item(instance=b"1.02.003"))])
        request = decode_action_request(data, IMPLICIT_VR_LITTLE_ENDIAN)
        self.assertEqual(request.references[0].sop_instance_uid, "1.02.003")

    def test_failed_item_without_reason_decodes_as_processing_failure(self) -> None:
        """A Failed SOP Sequence item with no Failure Reason still fails, with 0x0110."""
        data = implicit(0x00081195, b"1.2.3\x00") + sequence_bytes(0x00081198, [item_bytes(ref_item())])
        report = decode_event_report(data, IMPLICIT_VR_LITTLE_ENDIAN)
        self.assertEqual(report.failed, (FailedReference(Reference(CT, "1.2.3.4.5"), 0x0110),))
        self.assertEqual(report.event_type, 2)


class ErrorTests(SynchronousTestCase):
    """Unusable data sets raise CommitmentDataSetError with the status to answer."""

    def assert_error(self, data: bytes, status: int, fragment: str, decoder: object = decode_action_request,
                     transfer_syntax: str = IMPLICIT_VR_LITTLE_ENDIAN) -> CommitmentDataSetError:
        """Decoding ``data`` raises CommitmentDataSetError with ``status`` and ``fragment`` in its comment."""
        exc = self.assertRaises(CommitmentDataSetError, decoder, data, transfer_syntax)
        self.assertEqual(exc.status, status, exc.comment)
        self.assertIn(fragment, exc.comment)
        return exc

    def test_missing_transaction_uid(self) -> None:
        """No Transaction UID: 0x0115 naming (0008,1195) (PS3.7 10.1.4.1.10, PS3.4 J.3.2.1.1)."""
        exc = self.assert_error(request_bytes(transaction=None, items=[item_bytes(ref_item())]),
                                Status.INVALID_ARGUMENT_VALUE, "(0008,1195) missing")
        self.assertEqual(exc.tag, 0x00081195)

    def test_empty_transaction_uid(self) -> None:
        """A Transaction UID of only padding counts as empty: 0x0115."""
        self.assert_error(request_bytes(transaction=b"\x00\x00", items=[item_bytes(ref_item())]),
                          Status.INVALID_ARGUMENT_VALUE, "(0008,1195) empty")

    def test_missing_referenced_sop_sequence(self) -> None:
        """No Referenced SOP Sequence: 0x0115 naming (0008,1199)."""
        self.assert_error(request_bytes(), Status.INVALID_ARGUMENT_VALUE, "(0008,1199) missing")

    def test_empty_referenced_sop_sequence(self) -> None:
        """A Referenced SOP Sequence without items: 0x0115 (one or more items, PS3.4 Table J.3-1)."""
        self.assert_error(request_bytes(items=[]), Status.INVALID_ARGUMENT_VALUE, "no items")

    def test_item_without_instance_uid(self) -> None:
        """An item without Referenced SOP Instance UID: 0x0115 naming the item."""
        content = implicit(0x00081150, b"1.2.840.10008.5.1.4.1.1.2\x00")
        self.assert_error(request_bytes(items=[item_bytes(ref_item()), item_bytes(content)]),
                          Status.INVALID_ARGUMENT_VALUE, "item 2 of (0008,1199)")

    def test_invalid_uids(self) -> None:
        """UIDs that could not be echoed back (too long, two values, non-ASCII, spaces inside): 0x0115."""
        for bad in (b"1." * 40, b"1.2\\1.3\x00", b"1.2.\xe9", b"1.2 3."):
            self.assert_error(request_bytes(items=[item_bytes(ref_item(instance=bad))]),
                              Status.INVALID_ARGUMENT_VALUE, "is not a UID")

    def test_sequence_where_uid_expected(self) -> None:
        """A Transaction UID that is a sequence is a mistyped argument: 0x0212."""
        data = sequence_bytes(0x00081195, [], undefined=True) + sequence_bytes(0x00081199, [item_bytes(ref_item())])
        self.assert_error(data, Status.MISTYPED_ARGUMENT, "(0008,1195)")

    def test_unsupported_transfer_syntax_is_named(self) -> None:
        """Decoding in Big Endian or a compressed syntax fails with 0x0110 naming the syntax."""
        self.assert_error(request_bytes(items=[item_bytes(ref_item())]), Status.PROCESSING_FAILURE,
                          "1.2.840.10008.1.2.4.50", transfer_syntax="1.2.840.10008.1.2.4.50")

    def test_truncated_header(self) -> None:
        """Fewer than 8 bytes left for a header: 0x0110."""
        self.assert_error(request_bytes(items=[item_bytes(ref_item())]) + b"\x08\x00", Status.PROCESSING_FAILURE,
                          "element header needs 8")

    def test_huge_length_is_refused_before_slicing(self) -> None:
        """A length of 0xFFFFFFF0 past the end is refused (no allocation): 0x0110."""
        self.assert_error(implicit(0x00081195, b"1.2", 0xFFFFFFF0), Status.PROCESSING_FAILURE, "exceeds")

    def test_sequence_length_past_end(self) -> None:
        """A defined sequence length past the end of the data set: 0x0110."""
        data = implicit(0x00081195, b"1.2\x00") + implicit(0x00081199, b"", 1000)
        self.assert_error(data, Status.PROCESSING_FAILURE, "exceeds")

    def test_item_length_past_sequence_end(self) -> None:
        """An item longer than its defined-length sequence: 0x0110."""
        inner = implicit(0xFFFEE000, ref_item(), len(ref_item()) + 8)
        data = implicit(0x00081195, b"1.2\x00") + implicit(0x00081199, inner) + b"\x00" * 8
        self.assert_error(data, Status.PROCESSING_FAILURE, "exceeds")

    def test_element_overrunning_its_item(self) -> None:
        """An element whose length runs past the end of its defined-length item: 0x0110."""
        content = implicit(0x00081150, b"1.2.840.10008.5.1.4.1.1.2\x00", 40)
        data = request_bytes(items=[item_bytes(content)]) + b"\x00" * 40
        self.assert_error(data, Status.PROCESSING_FAILURE, "exceeds")

    def test_missing_sequence_delimiter(self) -> None:
        """A sequence of undefined length cut before its delimiter: 0x0110."""
        data = implicit(0x00081195, b"1.2\x00") + implicit(0x00081199, b"", 0xFFFFFFFF) + item_bytes(ref_item())
        self.assert_error(data, Status.PROCESSING_FAILURE, "")

    def test_missing_item_delimiter(self) -> None:
        """An item of undefined length that ends with its sequence: 0x0110."""
        inner = implicit(0xFFFEE000, b"", 0xFFFFFFFF) + ref_item()
        data = implicit(0x00081195, b"1.2\x00") + implicit(0x00081199, inner)
        self.assert_error(data, Status.PROCESSING_FAILURE, "without its delimiter")

    def test_delimiter_with_nonzero_length(self) -> None:
        """A sequence delimiter whose length is not 0: 0x0110 (PS3.5 7.5.2)."""
        data = (implicit(0x00081195, b"1.2\x00") + implicit(0x00081199, b"", 0xFFFFFFFF)
                + item_bytes(ref_item()) + implicit(0xFFFEE0DD, b"", 4) + b"\x00" * 4)
        self.assert_error(data, Status.PROCESSING_FAILURE, "requires 0")

    def test_stray_delimiters(self) -> None:
        """An item delimiter at the top level, or a non-item inside a sequence: 0x0110."""
        self.assert_error(implicit(0xFFFEE00D, b""), Status.PROCESSING_FAILURE, "outside an item")
        data = implicit(0x00081195, b"1.2\x00") + sequence_bytes(0x00081199, [implicit(0x00081150, b"1.2\x00")])
        self.assert_error(data, Status.PROCESSING_FAILURE, "where an item")

    def test_duplicate_and_unordered_tags(self) -> None:
        """A duplicate Transaction UID or tags out of order: 0x0110 (PS3.5 7.1)."""
        uid = implicit(0x00081195, b"1.2\x00")
        self.assert_error(uid + uid, Status.PROCESSING_FAILURE, "duplicate")
        seq = sequence_bytes(0x00081199, [item_bytes(ref_item())])
        self.assert_error(seq + uid, Status.PROCESSING_FAILURE, "ascending")

    def test_unknown_explicit_vr(self) -> None:
        """An Explicit VR header with a VR the standard does not define: 0x0110."""
        data = struct.pack("<HH2sH", 0x0008, 0x1195, b"ZZ", 4) + b"1.2\x00"
        self.assert_error(data, Status.PROCESSING_FAILURE, "unknown VR", transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN)

    def test_nesting_is_bounded(self) -> None:
        """Unknown sequences nested past MAX_DEPTH fail with 0x0110, not a RecursionError."""
        inner = b""
        for _ in range(commitment.MAX_DEPTH + 2):
            inner = sequence_bytes(0x00400275, [item_bytes(inner, undefined=True)], undefined=True)
        data = request_bytes(items=[item_bytes(ref_item())]) + inner
        self.assert_error(data, Status.PROCESSING_FAILURE, "nested deeper")

    def test_deep_nesting_of_a_thousand_levels(self) -> None:
        """A thousand nested levels (a hostile peer) still end in 0x0110."""
        inner = b""
        for _ in range(1000):
            inner = sequence_bytes(0x00400275, [item_bytes(inner, undefined=True)], undefined=True)
        self.assert_error(implicit(0x00081195, b"1.2\x00") + inner, Status.PROCESSING_FAILURE, "nested deeper")

    def test_too_many_references(self) -> None:
        """More instances than MAX_REFERENCES: 0x0213 resource limitation."""
        self.patch(commitment, "MAX_REFERENCES", 3)
        data = request_bytes(items=[item_bytes(ref_item())] * 4)
        self.assert_error(data, Status.RESOURCE_LIMITATION, "more than 3 instances")
        self.assertEqual(len(decode_action_request(request_bytes(items=[item_bytes(ref_item())] * 3),
                                                   IMPLICIT_VR_LITTLE_ENDIAN).references), 3)

    def test_too_many_items_in_unknown_sequences(self) -> None:
        """Items past MAX_ITEMS, even in an unknown (undefined-length, hence walked) sequence: 0x0213."""
        self.patch(commitment, "MAX_ITEMS", 5)
        unknown = sequence_bytes(0x00400275, [item_bytes(b"")] * 5, undefined=True)
        data = request_bytes(items=[item_bytes(ref_item())]) + unknown
        self.assert_error(data, Status.RESOURCE_LIMITATION, "more than 5 items")

    def test_report_without_transaction_uid(self) -> None:
        """An inbound report without Transaction UID: 0x0115 for the N-EVENT-REPORT-RSP."""
        data = sequence_bytes(0x00081199, [item_bytes(ref_item())])
        self.assert_error(data, Status.INVALID_ARGUMENT_VALUE, "(0008,1195) missing", decoder=decode_event_report)

    def test_report_without_any_instance(self) -> None:
        """A report with neither sequence (or only empty ones): 0x0115."""
        data = implicit(0x00081195, b"1.2\x00") + sequence_bytes(0x00081199, [])
        self.assert_error(data, Status.INVALID_ARGUMENT_VALUE, "has an item", decoder=decode_event_report)

    def test_report_failure_reason_not_a_us(self) -> None:
        """A Failure Reason of 4 bytes is a mistyped argument: 0x0212."""
        content = ref_item() + implicit(0x00081197, b"\x10\x01\x00\x00")
        data = implicit(0x00081195, b"1.2\x00") + sequence_bytes(0x00081198, [item_bytes(content)])
        self.assert_error(data, Status.MISTYPED_ARGUMENT, "(0008,1197)", decoder=decode_event_report)


def _seeds() -> list[bytes]:
    """Valid data sets in both syntaxes, with defined and undefined lengths."""
    seeds = []
    for ts in BOTH:
        seeds.append(encode_action_request(REQUEST, ts))
        seeds.append(encode_event_report(REPORT, ts))
        seeds.append(pydicom_encode(pydicom_request(undefined_lengths=True), ts))
    return seeds


_SEEDS = _seeds()
_OPERATION = st.tuples(st.integers(0, 7), st.integers(0, 1 << 16), st.integers(0, 255))


class FuzzTests(SynchronousTestCase):
    """Mutated and arbitrary input raise nothing but CommitmentDataSetError (HARDENING R4)."""

    @settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(seed=st.sampled_from(range(len(_SEEDS))), operations=st.lists(_OPERATION, max_size=8),
           syntax=st.sampled_from(BOTH))
    def test_mutated_data_sets_raise_only_commitment_errors(
        self, seed: int, operations: list[tuple[int, int, int]], syntax: str
    ) -> None:
        """A mutated data set decodes both ways or raises CommitmentDataSetError only."""
        data = mutate(_SEEDS[seed], operations)
        for decoder in (decode_action_request, decode_event_report):
            try:
                decoder(data, syntax)
            except CommitmentDataSetError as e:
                self.assertIn(e.status, {0x0110, 0x0115, 0x0212, 0x0213})

    @settings(max_examples=500, deadline=None)
    @given(data=st.binary(max_size=512), syntax=st.sampled_from(BOTH))
    def test_arbitrary_bytes_raise_only_commitment_errors(self, data: bytes, syntax: str) -> None:
        """Arbitrary bytes decode or raise CommitmentDataSetError only."""
        try:
            decode_action_request(data, syntax)
        except CommitmentDataSetError:
            pass
