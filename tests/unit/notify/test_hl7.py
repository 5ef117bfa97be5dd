"""Tests for :mod:`gateway.notify.hl7`: the ORU^R01, templates and their escaping, ACK parsing and outcomes.

Every built message is parsed back with hl7apy (strict) so a test checks
what a receiver would read, not our own string.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from twisted.trial.unittest import SynchronousTestCase

from gateway.config.schema import Hl7Sink
from gateway.notify.document import DestinationOutcome, SeriesSummary, StudyNotification
from gateway.notify.hl7 import (
    Ack,
    AckError,
    MessageError,
    Template,
    build_message,
    classify_ack,
    control_id,
    escape,
    parse_ack,
    pseudonym,
    unescape,
)
from gateway.queue.outcome import DeadLetter, DeadLetterKind, Delivered, Retry

NOW = 1_767_268_800.0  # 2026-01-01 12:00:00 UTC
KEY = "0123456789abcdef" * 4


def doc(**overrides: Any) -> StudyNotification:
    """A notification with a patient whose name and ID hold HL7 delimiters."""
    values: dict[str, Any] = dict(
        idempotency_key=KEY, event="complete", sequence=1, route="ct", sink="ris",
        study_instance_uid="1.2.826.0.1.3680043.2.1", accession_number="A|1", patient_id="P^42",
        patient_name="O|Brien^Mary~Ann", patient_birth_date="19700102", patient_sex="F",
        issuer_of_patient_id="HOSP&X", study_date="20260101", study_time="101112.5",
        study_description="CT HEAD\rOBX|99|inject", modalities=("CT", "SR"), instances=12,
        series=(SeriesSummary("1.2.3.1", 1, "CT", 11), SeriesSummary("1.2.3.2", 2, "SR", 1)),
        destinations=(DestinationOutcome("pacs", 12), DestinationOutcome("cloud", 10, 2, 0, "partial")),
        with_failures=True, completed_at=NOW - 60,
    )
    values.update(overrides)
    return StudyNotification(**values)


SINK = Hl7Sink(name="ris", host="127.0.0.1", port=2575, sending_application="GW", sending_facility="SITE",
               receiving_application="RIS", receiving_facility="HOSP")


def strict(data: bytes) -> Any:
    """hl7apy's strict parse of a built message, validated."""
    message = parse_message(data.decode("utf-8"), validation_level=VALIDATION_LEVEL.STRICT)
    message.validate()
    return message


def segments(data: bytes, name: str) -> list[list[str]]:
    """The fields of every ``name`` segment (index = field number; MSH shifted so index = MSH-n)."""
    found = []
    for line in data.decode("utf-8").split("\r"):
        parts = line.split("|")
        if parts[0] == name:
            found.append(([""] + parts) if name == "MSH" else parts)
    return found


class EscapeTests(SynchronousTestCase):
    """HL7 v2.5.1 2.7 escape sequences."""

    def test_every_delimiter_is_escaped(self) -> None:
        """| ^ & ~ and the escape character become \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ (the escape character first)."""
        self.assertEqual(escape("a|b^c&d~e\\f"), "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f")

    def test_control_characters_become_spaces(self) -> None:
        """CR (a segment end), <VT> and <FS> (MLLP blocks) cannot travel inside a value."""
        self.assertEqual(escape("a\rb\x0bc\x1cd"), "a b c d")

    def test_unescape_reverses_escape(self) -> None:
        """unescape(escape(x)) == x for delimiters."""
        text = "x|y^z&w~v\\u"
        self.assertEqual(unescape(escape(text)), text)


class ValueTests(SynchronousTestCase):
    """Control ids and pseudonyms."""

    def test_control_id_is_20_characters_and_stable(self) -> None:
        """MSH-10 is the key's first 20 characters; a key that is not hex is hashed to 20."""
        self.assertEqual(control_id(KEY), KEY[:20])
        self.assertEqual(len(control_id("not a hex key!")), 20)
        self.assertEqual(control_id("not a hex key!"), control_id("not a hex key!"))
        self.assertNotEqual(control_id("a" * 64), control_id("b" * 64))

    def test_pseudonym_depends_on_the_study_only(self) -> None:
        """The pseudonymous key is 20 hex characters, stable per study, different between studies."""
        self.assertRegex(pseudonym("1.2.3"), r"^[0-9a-f]{20}$")
        self.assertEqual(pseudonym("1.2.3"), pseudonym("1.2.3"))
        self.assertNotEqual(pseudonym("1.2.3"), pseudonym("1.2.4"))


class OruTests(SynchronousTestCase):
    """The built-in ORU^R01."""

    def test_msh_fields(self) -> None:
        """MSH-3..6 from the sink, MSH-7 now, MSH-9 ORU^R01^ORU_R01, MSH-10 the control id, MSH-11 P, MSH-12 2.5.1."""
        data, ident = build_message(doc(), SINK, NOW)
        (msh,) = segments(data, "MSH")
        self.assertEqual(msh[3:8], ["GW", "SITE", "RIS", "HOSP", "20260101120000+0000"])
        self.assertEqual(msh[9:13], ["ORU^R01^ORU_R01", KEY[:20], "P", "2.5.1"])
        self.assertEqual(ident, KEY[:20])
        self.assertEqual(strict(data).msh.msh_10.value, KEY[:20])

    def test_pid_with_phi(self) -> None:
        """PID-3 Patient ID^^^issuer, PID-5 the name as XPN, PID-7 birth date, PID-8 sex; delimiters escaped."""
        data, _ = build_message(doc(), SINK, NOW)
        (pid,) = segments(data, "PID")
        self.assertEqual(pid[3], "P\\S\\42^^^HOSP\\T\\X")
        self.assertEqual(pid[5], "O\\F\\Brien^Mary\\R\\Ann")
        self.assertEqual(pid[7], "19700102")
        self.assertEqual(pid[8], "F")
        strict(data)

    def test_no_patient_data_anywhere_without_phi(self) -> None:
        """phi false: the sender's without_phi() document gives a message with no patient ID, name, birth date or issuer."""
        data, _ = build_message(doc().without_phi(), replace(SINK, phi=False), NOW)
        text = data.decode("utf-8")
        for secret in ("P\\S\\42", "42", "Brien", "Mary", "19700102", "HOSP\\T\\X"):
            self.assertNotIn(secret, text)
        (pid,) = segments(data, "PID")
        key = pseudonym(doc().study_instance_uid)
        self.assertEqual(pid[3], f"{key}^^^GW^ANON")
        self.assertEqual(pid[5], f"{key}^^^^^^S")
        self.assertEqual(len(pid), 6, "no PID-7, PID-8")
        strict(data)

    def test_phi_false_sink_leaves_a_full_document_unused(self) -> None:
        """Even given a document with PHI, a phi-false sink's PID carries only the pseudonym."""
        data, _ = build_message(doc(), replace(SINK, phi=False), NOW)
        self.assertNotIn("Brien", data.decode("utf-8"))
        self.assertNotIn("P\\S\\42", data.decode("utf-8"))

    def test_obr_fields(self) -> None:
        """OBR-2/3 the accession, OBR-4 the description (its CR cannot start a segment), OBR-7 the study time, OBR-25 F."""
        data, _ = build_message(doc(), SINK, NOW)
        (obr,) = segments(data, "OBR")
        self.assertEqual(obr[2], "A\\F\\1")
        self.assertEqual(obr[3], "A\\F\\1")
        self.assertEqual(obr[4], "^CT HEAD OBX\\F\\99\\F\\inject")
        self.assertEqual(obr[7], "20260101101112")
        self.assertEqual(obr[25], "F")
        self.assertEqual(len(segments(data, "OBX")), 10, "no injected OBX")

    def test_amended_is_result_status_c(self) -> None:
        """An amended notification has OBR-25 C and every OBX-11 C."""
        data, _ = build_message(doc(event="amended", sequence=2), SINK, NOW)
        (obr,) = segments(data, "OBR")
        self.assertEqual(obr[25], "C")
        self.assertEqual({obx[11] for obx in segments(data, "OBX")}, {"C"})
        strict(data)

    def test_obx_facts(self) -> None:
        """OBX lines carry the study UID, counts, each destination's outcome and the flags."""
        data, _ = build_message(doc(forced=True), SINK, NOW)
        facts = {obx[3].split("^")[0]: obx for obx in segments(data, "OBX")}
        self.assertEqual(facts["STUDYUID"][5], "1.2.826.0.1.3680043.2.1")
        self.assertEqual(facts["INSTANCES"][2:6], ["NM", facts["INSTANCES"][3], "", "12"])
        self.assertEqual(facts["SERIES"][5], "2")
        self.assertEqual(facts["MODALITIES"][5], "CT,SR")
        self.assertEqual(facts["FORCED"][5], "Y")
        self.assertEqual(facts["FAILURES"][5], "Y")
        destinations = [obx[5] for obx in segments(data, "OBX") if obx[3].startswith("DESTINATION")]
        self.assertEqual(len(destinations), 2)
        self.assertIn("cloud: partial (delivered 10, failed 2", destinations[1])
        self.assertEqual([int(obx[1]) for obx in segments(data, "OBX")], list(range(1, 11)))

    def test_bad_dates_are_left_out(self) -> None:
        """A birth date or study date that is no DICOM DA is left out instead of breaking the message."""
        data, _ = build_message(doc(patient_birth_date="1970-01-02", study_date="yesterday"), SINK, NOW)
        (pid,) = segments(data, "PID")
        (obr,) = segments(data, "OBR")
        self.assertEqual(pid[7], "")
        self.assertEqual(obr[7], "")
        strict(data)

    def test_unknown_version_is_a_message_error(self) -> None:
        """A version hl7apy does not know is refused with a MessageError (a dead letter), never a crash."""
        self.assertRaises(MessageError, build_message, doc(), replace(SINK, version="9.9"), NOW)


class TemplateTests(SynchronousTestCase):
    """Template mode: fields, escaping, checks."""

    TEXT = (
        "MSH|^~\\&|{sending_application}||{receiving_application}||{message_time}||ORM^O01|{control_id}|P|2.5.1\n"
        "PID|||{patient_id}||{patient_name}\n"
        "ZDS|{study_instance_uid}|{result_status}|{with_failures}\n"
    )

    def test_values_are_escaped_so_nothing_is_injected(self) -> None:
        """A patient ID with ^ and a name with | stay one field each; the parsed message has three segments."""
        data, ident = build_message(doc(), SINK, NOW, Template.parse(self.TEXT))
        (pid,) = segments(data, "PID")
        self.assertEqual(pid[3], "P\\S\\42")
        self.assertEqual(pid[5], "O\\F\\Brien\\S\\Mary\\R\\Ann")
        self.assertEqual(len(pid), 6)
        self.assertEqual(ident, KEY[:20])
        (zds,) = segments(data, "ZDS")
        self.assertEqual(zds, ["ZDS", "1.2.826.0.1.3680043.2.1", "F", "Y"])
        self.assertEqual([line[:3] for line in data.decode().split("\r") if line], ["MSH", "PID", "ZDS"])

    def test_description_with_cr_cannot_add_a_segment(self) -> None:
        """A value holding CR and a segment's text stays inside its field."""
        template = Template.parse("MSH|^~\\&|A||||x||ORM^O01|{control_id}|P|2.5.1\nOBR|1|||^{study_description}\n")
        data, _ = build_message(doc(), SINK, NOW, template)
        self.assertEqual([line[:3] for line in data.decode().split("\r") if line], ["MSH", "OBR"])

    def test_amended_result_status(self) -> None:
        """{result_status} is C for an amended notification."""
        data, _ = build_message(doc(event="amended"), SINK, NOW, Template.parse(self.TEXT))
        self.assertEqual(segments(data, "ZDS")[0][2], "C")

    def test_unknown_field_is_refused_at_load(self) -> None:
        """A template naming an unknown field is refused with the field's name."""
        error = self.assertRaises(MessageError, Template.parse, "MSH|^~\\&|{nope}\n")
        self.assertIn("{nope}", str(error))

    def test_attribute_and_index_access_are_refused(self) -> None:
        """{patient_name.__class__} and {series[0]} are not plain field names: refused."""
        self.assertRaises(MessageError, Template.parse, "MSH|^~\\&|{patient_name.__class__}\n")
        self.assertRaises(MessageError, Template.parse, "MSH|^~\\&|{series[0]}\n")
        self.assertRaises(MessageError, Template.parse, "MSH|^~\\&|{patient_id!r}\n")

    def test_template_must_start_with_msh(self) -> None:
        """A template whose first segment is not MSH is refused."""
        self.assertRaises(MessageError, Template.parse, "PID|||{patient_id}\n")

    def test_template_without_control_id_is_refused_at_render(self) -> None:
        """A rendered message with an empty MSH-10 cannot be matched to its ACK: a MessageError."""
        template = Template.parse("MSH|^~\\&|A||||x||ORM^O01||P|2.5.1\n")
        self.assertRaises(MessageError, build_message, doc(), SINK, NOW, template)

    def test_load_reads_a_file(self) -> None:
        """Template.load reads the file; a missing file is a MessageError naming it."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.TEXT)
        self.assertEqual(Template.load(path), Template.parse(self.TEXT))
        error = self.assertRaises(MessageError, Template.load, os.path.join(path + "-missing"))
        self.assertIn("-missing", str(error))


class AckTests(SynchronousTestCase):
    """ACK parsing (MSA) and the outcome rules."""

    def ack(self, code: str, ident: str = "ctl1", text: str = "", version: str = "2.5.1") -> bytes:
        msa = f"MSA|{code}|{ident}" + (f"|{text}" if text else "")
        return f"MSH|^~\\&|RIS||GW||20260101||ACK^R01^ACK|x|P|{version}\r{msa}\r".encode()

    def test_parse_codes_id_and_text(self) -> None:
        """MSA-1, MSA-2 and MSA-3 (unescaped) are read."""
        self.assertEqual(parse_ack(self.ack("AA")), Ack("AA", "ctl1", ""))
        self.assertEqual(parse_ack(self.ack("AE", text="bad \\F\\ field")), Ack("AE", "ctl1", "bad | field"))
        self.assertEqual(parse_ack(self.ack("CR")).code, "CR")

    def test_parse_an_unknown_version(self) -> None:
        """An ACK of a version hl7apy does not know still gives its MSA fields."""
        self.assertEqual(parse_ack(self.ack("AR", version="2.9", text="busy")), Ack("AR", "ctl1", "busy"))

    def test_not_an_ack(self) -> None:
        """No MSH, or no MSA: AckError."""
        self.assertRaises(AckError, parse_ack, b"HTTP/1.1 200 OK\r\n")
        self.assertRaises(AckError, parse_ack, b"MSH|^~\\&|RIS||GW||20260101||ACK|x|P|2.5.1\r")
        self.assertRaises(AckError, parse_ack, b"")

    def test_outcomes(self) -> None:
        """AA/CA delivered; AE dead (kind refused); AR retried while attempts <= reject_retries then dead."""
        sink = replace(SINK, reject_retries=2)
        self.assertEqual(classify_ack(Ack("AA", "c"), "c", sink, 1), Delivered(0))
        self.assertEqual(classify_ack(Ack("CA", "c"), "c", sink, 1), Delivered(0))
        dead = classify_ack(Ack("AE", "c", "no"), "c", sink, 1)
        self.assertIsInstance(dead, DeadLetter)
        self.assertEqual(dead.kind, DeadLetterKind.REFUSED)  # type: ignore[union-attr]
        self.assertIsInstance(classify_ack(Ack("AR", "c"), "c", sink, 1), Retry)
        self.assertIsInstance(classify_ack(Ack("AR", "c"), "c", sink, 2), Retry)
        self.assertIsInstance(classify_ack(Ack("AR", "c"), "c", sink, 3), DeadLetter)
        self.assertIsInstance(classify_ack(Ack("CR", "c"), "c", sink, 3), DeadLetter)

    def test_configurable_outcomes(self) -> None:
        """on_error retry makes AE a retry; on_reject dead makes AR a dead letter at once."""
        sink = replace(SINK, on_error="retry", on_reject="dead")
        self.assertIsInstance(classify_ack(Ack("AE", "c"), "c", sink, 1), Retry)
        self.assertIsInstance(classify_ack(Ack("AR", "c"), "c", sink, 1), DeadLetter)

    def test_no_ack_and_wrong_id_are_ambiguous_retries(self) -> None:
        """No ACK, or an ACK for another control id: retry, ambiguous."""
        for outcome in (classify_ack(None, "c", SINK, 1, "timeout"), classify_ack(Ack("AA", "other"), "c", SINK, 1)):
            self.assertIsInstance(outcome, Retry)
            self.assertTrue(outcome.ambiguous)  # type: ignore[union-attr]

    def test_unknown_code_is_a_plain_retry(self) -> None:
        """A code outside table 0008 is retried (bounded by max_attempts), not ambiguous."""
        outcome = classify_ack(Ack("ZZ", "c"), "c", SINK, 1)
        self.assertIsInstance(outcome, Retry)
        self.assertFalse(outcome.ambiguous)  # type: ignore[union-attr]


class TemplateStructureTests(SynchronousTestCase):
    """What a template's lines may be."""

    def test_a_line_that_is_not_a_segment_is_refused(self) -> None:
        """Free text, a lowercase segment ID or a line starting with a field are refused at load, naming the line."""
        for bad in ("hello world", "pid|||1", "{patient_id}|x"):
            error = self.assertRaises(MessageError, Template.parse, "MSH|^~\\&|A||||x||ORM^O01|{control_id}|P|2.5.1\n" + bad)
            self.assertIn("line 2", str(error))

    def test_unsupported_version_in_a_template_is_refused_at_render(self) -> None:
        """hl7apy refuses a message of a version it does not know: a MessageError."""
        template = Template.parse("MSH|^~\\&|A||||x||ORM^O01|{control_id}|P|9.9\nPID|1\n")
        self.assertRaises(MessageError, build_message, doc(), SINK, NOW, template)


class LongValueTests(SynchronousTestCase):
    """Values longer than HL7's maximum lengths, and what reasons may quote."""

    def test_long_identifiers_are_sent_whole_and_the_structure_validated(self) -> None:
        """A 64-character Patient ID and a long name are never cut (strict refuses their length; tolerant + structure check)."""
        long_id = "P" * 64
        data, _ = build_message(doc(patient_id=long_id, patient_name="Ö" * 64 + "^Ann"), SINK, NOW)
        (pid,) = segments(data, "PID")
        self.assertEqual(pid[3].split("^")[0], long_id)
        self.assertEqual(pid[5], "Ö" * 64 + "^Ann")
        message = parse_message(data.decode("utf-8"), validation_level=VALIDATION_LEVEL.TOLERANT)
        self.assertTrue(message.validate())

    def test_reasons_never_quote_a_value(self) -> None:
        """hl7apy's data type errors quote the value: only the error's kind is kept; structural errors are kept whole."""
        from hl7apy.exceptions import ValidationError

        from gateway.notify.hl7 import _describe

        self.assertEqual(_describe(ValueError("Doe^Jane is not an HL7 valid date value")), "ValueError")
        self.assertIn("PID.PID_5", _describe(ValidationError("Missing required child PID.PID_5")))

    def test_format_spec_for_a_number_is_refused_at_load(self) -> None:
        """Every value is text: {instances:d} cannot render, refused at load rather than at every send."""
        self.assertRaises(MessageError, Template.parse, "MSH|^~\\&|A||||x||ORM^O01|{control_id}|P|2.5.1\nZX|{instances:d}\n")


class FramingSafetyTests(SynchronousTestCase):
    """What MLLP cannot carry never reaches the wire."""

    def test_template_with_a_block_character_is_a_message_error(self) -> None:
        """A template whose literal text holds <FS> gives a MessageError (a dead letter), not a crash in the sender."""
        template = Template.parse("MSH|^~\\&|A||||x||ORM^O01|{control_id}|P|2.5.1\nZXX|a\x1cb\n")
        self.assertRaises(MessageError, build_message, doc(), SINK, NOW, template)

    def test_values_with_block_characters_are_neutralised(self) -> None:
        """A patient name holding <VT> and <FS> is sent (as spaces), never breaking the frame."""
        data, _ = build_message(doc(patient_name="A\x0bB\x1cC"), SINK, NOW)
        self.assertNotIn(b"\x0b", data)
        self.assertNotIn(b"\x1c", data)
