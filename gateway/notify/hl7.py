"""The HL7 v2 message of a study notification, and the acknowledgement it gets back (issue 18).

Built and parsed with **hl7apy** (a maintained HL7 v2 library that knows
every version's message structures, segments and data types; python-hl7
parses but has no structure definitions to validate a message against).
The library is only used here; the MLLP framing is ours
(:mod:`gateway.notify.mllp`) and the transport Twisted's
(:mod:`gateway.send.hl7`).

Two ways to make the message:

- **built-in** (:func:`build_oru`): an ORU^R01 (HL7 v2.5.1 chapter 7),
  made with hl7apy at validation level **strict** (every required field and
  segment present, data types and maximum lengths checked; a value over a
  maximum length is sent whole at level tolerant, the structure still
  validated: :func:`build_oru`) and validated before it is sent::

      MSH  sending/receiving application and facility from the sink's configuration,
           MSH-7 now, MSH-9 ORU^R01^ORU_R01, MSH-10 the control id (:func:`control_id`),
           MSH-11 P, MSH-12 the configured version, MSH-18 UNICODE UTF-8
      PID  phi: PID-3 Patient ID^^^issuer, PID-5 the name, PID-7 birth date, PID-8 sex
           no phi: PID-3 the study's pseudonymous key (identifier type ANON, table 0203),
                   PID-5 the same key as a coded pseudo-name (name type S, table 0200; PID-5
                   is required), no birth date, no sex
      OBR  OBR-2/OBR-3 the accession number, OBR-4 ^study description, OBR-7 study date/time,
           OBR-22 completion time, OBR-25 F (complete) or C (amended; table 0123)
      OBX  one per fact, local codes (coding system 99DGW): the study UID, the event and
           its sequence, instance and series counts, modalities, one per destination with
           its outcome, forced and with-failures (Y/N)

- **template** (:class:`Template`): a text file, one segment per line, with
  ``{field}`` references to :data:`TEMPLATE_FIELDS` (str.format syntax, no
  attribute or index access, no conversions). Every substituted value is
  escaped (:func:`escape`), so a patient name holding ``|`` or ``^`` cannot
  add fields or components; every line must be a segment, and the result
  is parsed by hl7apy (validation level **tolerant**: a site's message may
  use Z-segments or another structure) and must have an MSH-10; the text is
  sent as rendered.

The acknowledgement (:func:`parse_ack`, HL7 v2.5.1 2.9 original and enhanced
acknowledgement, MSA segment) gives MSA-1 (table 0008: AA/AE/AR, CA/CE/CR),
MSA-2 (must be our control id) and MSA-3 (the text, kept for the entry's
history); :func:`classify_ack` turns it into the worker's outcome.
"""

from __future__ import annotations

import hashlib
import re
import string
import time
from dataclasses import dataclass, fields
from typing import Any, Final

from gateway.config.schema import Hl7Sink
from gateway.notify.document import StudyNotification
from gateway.queue.outcome import DeadLetter, DeadLetterKind, Delivered, Outcome, Retry

__all__ = [
    "Ack",
    "AckError",
    "MessageError",
    "Template",
    "TEMPLATE_FIELDS",
    "build_message",
    "build_oru",
    "classify_ack",
    "control_id",
    "escape",
    "parse_ack",
    "pseudonym",
    "unescape",
]

#: HL7 v2.5.1 2.15.9: MSH-10 Message Control ID is at most 20 characters.
CONTROL_ID_LENGTH: Final = 20
#: The local coding system of our OBX codes (HL7 table 0396: local systems start with 99).
CODING_SYSTEM: Final = "99DGW"
#: Characters of the receiver's MSA-3 text kept in an entry's reason.
ACK_TEXT_CHARS: Final = 200


class MessageError(ValueError):
    """The message could not be made (a template that does not render, or does not parse as HL7)."""


class AckError(ValueError):
    """The answer is not an acknowledgement we can read (no MSH, no MSA, not HL7)."""


# -- escaping -------------------------------------------------------------------------------

#: HL7 v2.5.1 2.7 (escape sequences in text fields), with the default encoding
#: characters ``|^~\&``: \F\ field, \S\ component, \T\ subcomponent, \R\ repetition,
#: \E\ escape. The escape character itself goes first so nothing is escaped twice.
_ESCAPES: Final = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))
#: Control characters (CR would end the segment, <VT>/<FS> the MLLP frame) become
#: spaces: the hexadecimal escape (\Xhh\) is optional in HL7 v2.5.1 2.7 and hl7apy
#: escapes it again, and a line break means nothing in a name or a description.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def escape(text: str) -> str:
    """A value made safe to put inside one HL7 component (HL7 v2.5.1 2.7).

    :param text: any text (a patient name with ``|`` or ``^``, a description with a CR).
    :returns: the text with every delimiter escaped and every control character a space.
    """
    for raw, escaped in _ESCAPES:
        text = text.replace(raw, escaped)
    return _CONTROL.sub(" ", text)


_UNESCAPE: Final = re.compile(r"\\(F|S|T|R|E|X[0-9A-Fa-f]*|\.br)\\")


def unescape(text: str) -> str:
    """The text an escaped value stands for (the inverse of :func:`escape`; other sequences are kept).

    :param text: a value as it travels.
    :returns: the value.
    """

    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        simple = {"F": "|", "S": "^", "T": "&", "R": "~", "E": "\\", ".br": "\n"}
        if code in simple:
            return simple[code]
        digits = code[1:]
        try:
            return bytes.fromhex(digits).decode("latin-1")
        except ValueError:
            return match.group(0)

    return _UNESCAPE.sub(one, text)


# -- values -----------------------------------------------------------------------------------


def control_id(idempotency_key: str) -> str:
    """MSH-10 of a notification: the same at every re-send (receivers drop repeats), at most 20 characters.

    :param idempotency_key: the notification's key (a SHA-256 in hex).
    :returns: its first 20 characters, or those of its SHA-256 when it is not plain hex.
    """
    if re.fullmatch(r"[0-9a-f]{%d,}" % CONTROL_ID_LENGTH, idempotency_key):
        return idempotency_key[:CONTROL_ID_LENGTH]
    return hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:CONTROL_ID_LENGTH]


def pseudonym(study_instance_uid: str) -> str:
    """The study's pseudonymous key, PID-3 when the sink gets no PHI: 20 hex characters, no patient data.

    :param study_instance_uid: the study.
    """
    return hashlib.sha256(b"dicom-gateway pseudonym\x00" + study_instance_uid.encode("ascii", "replace")).hexdigest()[:20]


def hl7_time(seconds: float) -> str:
    """A wall-clock time as HL7 DTM in UTC, ``YYYYMMDDHHMMSS+0000`` (HL7 v2.5.1 2A.3.22)."""
    return time.strftime("%Y%m%d%H%M%S+0000", time.gmtime(seconds))


def _dicom_date(value: str) -> str:
    """A DICOM DA (PS3.5 6.2, ``YYYYMMDD``) as HL7 DT, or "" when it is not one."""
    value = value.strip()
    return value if re.fullmatch(r"\d{8}", value) else ""


def _dicom_datetime(date: str, clock: str) -> str:
    """DICOM DA + TM (``HHMMSS.FFFFFF``, any prefix) as HL7 DTM to the second, or the date alone."""
    day = _dicom_date(date)
    if not day:
        return ""
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.\d+)?", clock.strip())
    if not match:
        return day
    return day + "".join(part or "" for part in match.groups())


def _sex(value: str) -> str:
    """DICOM Patient's Sex (M, F, O) as HL7 table 0001 (M, F, O, U)."""
    value = value.strip().upper()
    return value if value in ("M", "F", "O") else ("U" if value else "")


def _name(dicom_name: str) -> str:
    """A DICOM PN (family^given^middle^prefix^suffix, PS3.5 6.2.1) as an HL7 XPN, each part escaped.

    XPN (HL7 v2.5.1 2A.3.88) is family^given^further given^suffix^prefix; only the
    alphabetic group (before any ``=``) is used.
    """
    parts = (dicom_name.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (escape(p.strip()) for p in parts)
    return "^".join((family, given, middle, suffix, prefix)).rstrip("^")


def _yes_no(flag: bool) -> str:
    """HL7 table 0136."""
    return "Y" if flag else "N"


# -- the built-in ORU^R01 -------------------------------------------------------------------


def _observations(doc: StudyNotification, status: str) -> list[tuple[str, str, str, str, str]]:
    """The OBX facts: (sub id, value type, code, text, escaped value)."""
    facts = [
        ("", "ST", "STUDYUID", "Study Instance UID", escape(doc.study_instance_uid)),
        ("", "ST", "EVENT", "Notification event", escape(doc.event)),
        ("", "NM", "SEQUENCE", "Notification sequence", str(doc.sequence)),
        ("", "NM", "INSTANCES", "Instances received", str(doc.instances)),
        ("", "NM", "SERIES", "Series received", str(len(doc.series))),
        ("", "ST", "MODALITIES", "Modalities", escape(",".join(doc.modalities))),
    ]
    for index, outcome in enumerate(doc.destinations, start=1):
        text = (
            f"{outcome.destination}: {outcome.outcome} (delivered {outcome.delivered}, "
            f"failed {outcome.failed}, duplicates {outcome.duplicates})"
        )
        facts.append((str(index), "ST", "DESTINATION", "Destination outcome", escape(text)))
    facts.append(("", "ID", "FORCED", "Completion forced by max_wait", _yes_no(doc.forced)))
    facts.append(("", "ID", "FAILURES", "Complete with failures", _yes_no(doc.with_failures)))
    return facts


def _result_status(doc: StudyNotification) -> str:
    """OBR-25 / OBX-11 (HL7 tables 0123 and 0085): C for an amended notification, else F."""
    return "C" if doc.event == "amended" else "F"


def _describe(error: Exception) -> str:
    """hl7apy's complaint without the values it may quote (a patient's name must not reach a reason).

    Structural errors (a missing segment or field, an unknown version) name
    elements only and are kept; a data type or length error quotes the value,
    so only its kind is kept.
    """
    from hl7apy.exceptions import ChildNotFound, UnsupportedVersion, ValidationError

    if isinstance(error, (ValidationError, UnsupportedVersion, ChildNotFound)):
        return f"{type(error).__name__}: {error}"
    return type(error).__name__


def build_oru(doc: StudyNotification, config: Hl7Sink, now: float) -> tuple[str, str]:
    """The built-in ORU^R01 of a notification (see the module docstring), validated by hl7apy.

    Validation level **strict** (data types and HL7 maximum lengths checked,
    then the structure). A value longer than HL7 v2.5.1 allows (a DICOM LO
    Patient ID of 64 characters in a 20-character component) is never cut,
    as a cut identifier may name another patient: the message is then made
    at level **tolerant** and its structure still validated
    (:meth:`hl7apy.core.Message.validate` checks required segments and
    fields at either level).

    :param doc: the notification, already without PHI when the sink allows none.
    :param config: the sink (applications, facilities, version, ``phi``).
    :param now: the wall-clock time (MSH-7).
    :returns: (the message in ER7, segments separated by CR; its control id).
    :raises MessageError: when hl7apy refuses the message (an unsupported version);
        the reason quotes no value.
    """
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.exceptions import MaxLengthReached

    try:
        try:
            return _build_oru(doc, config, now, VALIDATION_LEVEL.STRICT)
        except MaxLengthReached:
            return _build_oru(doc, config, now, VALIDATION_LEVEL.TOLERANT)
    except Exception as e:  # hl7apy's ValidationError, UnsupportedVersion, ValueError on a data type
        raise MessageError(f"hl7apy refused the ORU^R01: {_describe(e)}") from e


def _build_oru(doc: StudyNotification, config: Hl7Sink, now: float, level: Any) -> tuple[str, str]:
    """:func:`build_oru` at one hl7apy validation level (hl7apy's exceptions pass through)."""
    from hl7apy.core import Message

    ident = control_id(doc.idempotency_key)
    status = _result_status(doc)
    message = Message("ORU_R01", version=config.version, validation_level=level)
    msh = message.msh
    # HL7 v2.5.1 2.15.9 (MSH).
    msh.msh_3 = escape(config.sending_application)
    if config.sending_facility:
        msh.msh_4 = escape(config.sending_facility)
    if config.receiving_application:
        msh.msh_5 = escape(config.receiving_application)
    if config.receiving_facility:
        msh.msh_6 = escape(config.receiving_facility)
    msh.msh_7 = hl7_time(now)
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = ident
    msh.msh_11 = "P"  # table 0103: production
    msh.msh_12 = config.version
    msh.msh_18 = "UNICODE UTF-8"  # table 0211
    result = message.add_group("ORU_R01_PATIENT_RESULT")
    pid = result.add_group("ORU_R01_PATIENT").pid
    pid.pid_1 = "1"
    if config.phi and doc.patient_id:
        issuer = f"^^^{escape(doc.issuer_of_patient_id)}" if doc.issuer_of_patient_id else ""
        pid.pid_3 = escape(doc.patient_id) + issuer
        name = _name(doc.patient_name)
        pid.pid_5 = name or "^^^^^^U"  # table 0200 U: unspecified (PID-5 is required)
        if _dicom_date(doc.patient_birth_date):
            pid.pid_7 = _dicom_date(doc.patient_birth_date)
        if _sex(doc.patient_sex):
            pid.pid_8 = _sex(doc.patient_sex)
    else:
        key = pseudonym(doc.study_instance_uid)
        # Table 0203 ANON: anonymous identifier; table 0200 S: coded pseudo-name to assure anonymity.
        pid.pid_3 = f"{key}^^^{escape(config.sending_application)}^ANON"
        pid.pid_5 = f"{key}^^^^^^S"
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    obr = order.obr
    obr.obr_1 = "1"
    if doc.accession_number:
        obr.obr_2 = escape(doc.accession_number)
        obr.obr_3 = escape(doc.accession_number)
    obr.obr_4 = "^" + escape(doc.study_description or "Imaging study")
    observed = _dicom_datetime(doc.study_date, doc.study_time)
    if observed:
        obr.obr_7 = observed
    if doc.completed_at:
        obr.obr_22 = hl7_time(doc.completed_at)
    obr.obr_25 = status
    for number, (sub, kind, code, text, value) in enumerate(_observations(doc, status), start=1):
        obx = order.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1 = str(number)
        obx.obx_2 = kind
        obx.obx_3 = f"{code}^{text}^{CODING_SYSTEM}"
        if sub:
            obx.obx_4 = sub
        obx.obx_5 = value
        obx.obx_11 = status
    message.validate()
    return message.to_er7(), ident


# -- templates --------------------------------------------------------------------------------

#: The notification's own fields a template may name (lists are given as text).
_DOCUMENT_FIELDS: Final = tuple(f.name for f in fields(StudyNotification) if f.name not in ("extra",))
#: Fields made for templates: HL7-shaped values.
_DERIVED_FIELDS: Final = (
    "control_id",
    "message_time",
    "result_status",
    "patient_key",
    "patient_name_xpn",
    "study_datetime",
    "completed_time",
    "series_count",
    "sending_application",
    "sending_facility",
    "receiving_application",
    "receiving_facility",
    "version",
)
#: Every name a template may reference.
TEMPLATE_FIELDS: Final = frozenset(_DOCUMENT_FIELDS + _DERIVED_FIELDS)


def _template_values(doc: StudyNotification, config: Hl7Sink, now: float) -> dict[str, str]:
    """Every template field's value, escaped (HL7 v2.5.1 2.7)."""
    values: dict[str, str] = {}
    for name in _DOCUMENT_FIELDS:
        value: Any = getattr(doc, name)
        if isinstance(value, bool):
            text = _yes_no(value)
        elif name == "modalities":
            text = ",".join(value)
        elif name == "series":
            text = ",".join(s.series_instance_uid for s in value)
        elif name == "destinations":
            text = ",".join(f"{d.destination}:{d.outcome}" for d in value)
        elif name in ("first_received_at", "last_received_at", "completed_at"):
            text = hl7_time(value) if value else ""
        else:
            text = str(value)
        values[name] = escape(text)
    values.update(
        control_id=control_id(doc.idempotency_key),
        message_time=hl7_time(now),
        result_status=_result_status(doc),
        patient_key=pseudonym(doc.study_instance_uid),
        patient_name_xpn=_name(doc.patient_name),  # already escaped part by part
        study_datetime=_dicom_datetime(doc.study_date, doc.study_time),
        completed_time=hl7_time(doc.completed_at) if doc.completed_at else "",
        series_count=str(len(doc.series)),
        sending_application=escape(config.sending_application),
        sending_facility=escape(config.sending_facility),
        receiving_application=escape(config.receiving_application),
        receiving_facility=escape(config.receiving_facility),
        version=escape(config.version),
    )
    return values


#: A segment line: a segment ID (three characters, HL7 v2.5.1 2.5) then the field separator or the end.
_SEGMENT: Final = re.compile(r"[A-Z][A-Z0-9]{2}(\||$)")


@dataclass(frozen=True)
class Template:
    """A message template (``Hl7Sink.template``), checked when loaded.

    :ivar text: the template, segments separated by CR.
    """

    text: str

    @classmethod
    def parse(cls, text: str) -> "Template":
        """Check a template's text: known plain field names only, at least an MSH segment first.

        :param text: the file's text (LF, CRLF or CR line ends; blank lines ignored).
        :raises MessageError: naming the first problem.
        """
        lines = [line for line in re.split(r"\r\n|\r|\n", text) if line.strip()]
        if not lines or not lines[0].startswith("MSH"):
            raise MessageError("an HL7 template must start with an MSH segment")
        for number, line in enumerate(lines, start=1):
            # HL7 v2.5.1 2.5: a segment starts with its three-character segment ID.
            if not _SEGMENT.match(line):
                raise MessageError(f"template line {number} is not a segment (it must start with a segment ID such as PID|)")
        joined = "\r".join(lines)
        try:
            parsed = list(string.Formatter().parse(joined))
        except ValueError as e:
            raise MessageError(f"template: {e}") from e
        for _literal, name, spec, conversion in parsed:
            if name is None:
                continue
            if name not in TEMPLATE_FIELDS:
                raise MessageError(f"template: unknown field {{{name}}}; fields: {', '.join(sorted(TEMPLATE_FIELDS))}")
            if conversion or (spec and "{" in spec):
                raise MessageError(f"template: field {{{name}}} may not have a conversion or a nested field")
        template = cls(joined)
        # A format spec no value can take ({instances:d}: every value is text) fails here, at load.
        sample = StudyNotification(idempotency_key="0" * 64, event="complete", sequence=1, route="", sink="",
                                   study_instance_uid="1.2.3")
        try:
            joined.format_map(_template_values(sample, Hl7Sink(name="check", host="", port=0), 0.0))
        except (ValueError, KeyError, IndexError) as e:
            raise MessageError(f"template: {type(e).__name__}: {e}") from e
        return template

    @classmethod
    def load(cls, path: str) -> "Template":
        """Read and check a template file (UTF-8).

        :raises MessageError: unreadable, or not a valid template.
        """
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as e:
            raise MessageError(f"cannot read HL7 template {path}: {e}") from e
        return cls.parse(text)

    def render(self, doc: StudyNotification, config: Hl7Sink, now: float) -> tuple[str, str]:
        """The message for ``doc``: values substituted (escaped), parsed by hl7apy (tolerant).

        :returns: (the message in ER7; its MSH-10 control id).
        :raises MessageError: when the result is not an HL7 message with an MSH-10.
        """
        from hl7apy.consts import VALIDATION_LEVEL
        from hl7apy.parser import parse_message

        try:
            text = self.text.format_map(_template_values(doc, config, now))
        except (ValueError, KeyError, IndexError) as e:  # a format spec a text value cannot take ({instances:d})
            raise MessageError(f"template: {type(e).__name__}: {e}") from e
        try:
            message = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT)
            ident = message.msh.msh_10.value
        except Exception as e:
            raise MessageError(f"the template's message does not parse as HL7: {_describe(e)}") from e
        if not ident:
            raise MessageError("the template's message has no MSH-10 (use {control_id})")
        # The rendered text is sent as written: hl7apy only checks it (its ER7 output
        # leaves out segments it cannot place in the structure, a site's Z-segments).
        return text, unescape(ident)


def build_message(doc: StudyNotification, config: Hl7Sink, now: float, template: Template | None = None) -> tuple[bytes, str]:
    """The bytes to frame for one notification, and the control id its ACK must carry.

    :param doc: the notification (PHI already removed when the sink allows none).
    :param config: the sink.
    :param now: the wall-clock time.
    :param template: the sink's template, ``None`` for the built-in ORU^R01.
    :raises MessageError: when no message can be made.
    """
    text, ident = template.render(doc, config, now) if template is not None else build_oru(doc, config, now)
    data = text.encode("utf-8")
    if b"\x0b" in data or b"\x1c" in data:
        # HL7 v2.5.1 C.4.3: MLLP cannot carry <VT> or <FS> inside a message (a template's literal text).
        raise MessageError("the message holds <VT> or <FS>, which MLLP cannot carry")
    return data, ident


# -- the acknowledgement ----------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    """What the receiver answered (HL7 v2.5.1 MSA segment).

    :ivar code: MSA-1, table 0008 (AA, AE, AR, CA, CE, CR).
    :ivar control_id: MSA-2, the control id of the message acknowledged.
    :ivar text: MSA-3, unescaped and cut (may be empty).
    """

    code: str
    control_id: str
    text: str = ""


def _printable(text: str) -> str:
    """The receiver's words without control characters, cut to :data:`ACK_TEXT_CHARS`."""
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return text if len(text) <= ACK_TEXT_CHARS else text[: ACK_TEXT_CHARS - 3] + "..."


def parse_ack(content: bytes) -> Ack:
    """Read an acknowledgement with hl7apy (tolerant: an ACK's structure varies between engines).

    :param content: one MLLP frame's content.
    :raises AckError: when it is not an HL7 message with an MSA segment.
    """
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.exceptions import UnsupportedVersion
    from hl7apy.parser import parse_message, parse_segment

    text = content.decode("utf-8", "replace").strip("\r\n")
    segments = [s for s in re.split(r"\r\n|\r|\n", text) if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
        raise AckError("the answer is not an HL7 message (no MSH segment)")
    try:
        message = parse_message("\r".join(segments), validation_level=VALIDATION_LEVEL.TOLERANT)
        msa = message.msa
        values = (msa.msa_1.value, msa.msa_2.value, msa.msa_3.value if msa.msa_3 else "")
    except UnsupportedVersion:
        # A version hl7apy does not know (MSH-12 2.9, say): read the MSA segment alone
        # with the 2.5.1 definition (its first three fields are the same in every version).
        msa_text = next((s for s in segments if s.startswith("MSA")), None)
        if msa_text is None:
            raise AckError("the answer has no MSA segment") from None
        field, encoding = segments[0][3], segments[0][4:8]
        chars = {"FIELD": field, "COMPONENT": encoding[0], "REPETITION": encoding[1], "ESCAPE": encoding[2],
                 "SUBCOMPONENT": encoding[3], "GROUP": "\r", "SEGMENT": "\r"}
        try:
            msa = parse_segment(msa_text, version="2.5.1", encoding_chars=chars)
            values = (msa.msa_1.value, msa.msa_2.value, msa.msa_3.value if msa.msa_3 else "")
        except Exception as e:
            raise AckError(f"unreadable MSA segment: {type(e).__name__}: {e}") from e
    except Exception as e:
        raise AckError(f"unreadable acknowledgement: {type(e).__name__}: {e}") from e
    code, ident, note = (str(v or "") for v in values)
    if not code:
        raise AckError("the answer has no MSA segment")
    return Ack(code.strip().upper(), unescape(ident.strip()), _printable(unescape(note)))


def classify_ack(ack: Ack | None, expected: str, config: Hl7Sink, attempts: int, problem: str = "") -> Outcome:
    """What an acknowledgement (or its absence) means for the entry (CONTRACT-18 outcome rules).

    ============================  ==========================================================
    answer                        outcome
    ============================  ==========================================================
    none, unreadable, MSA-2 not   retry, ambiguous (the receiver may have the message)
    our control id
    AA, CA                        delivered (table 0008: accepted)
    AE, CE                        ``on_error``: dead letter (kind refused) or retry
    AR, CR                        ``on_reject``: retry while ``attempts`` <= ``reject_retries``,
                                  then dead letter; or dead letter at once
    another code                  retry (bounded by ``retry.max_attempts``)
    ============================  ==========================================================

    :param ack: the parsed acknowledgement, ``None`` when there was none.
    :param expected: our message's control id (MSH-10).
    :param config: the sink (``on_error``, ``on_reject``, ``reject_retries``).
    :param attempts: real attempts of the entry, this one included.
    :param problem: why there is no acknowledgement (for the reason), when ``ack`` is ``None``.
    """
    if ack is None:
        return Retry(f"HL7: no acknowledgement ({problem or 'none'})", ambiguous=True)
    if ack.control_id != expected:
        # HL7 v2.5.1 MSA-2 identifies the message acknowledged: another one's ACK says nothing of ours.
        return Retry(f"HL7: acknowledgement for another message (MSA-2 {ack.control_id!r})", ambiguous=True)
    said = f"HL7 ACK {ack.code}" + (f": {ack.text}" if ack.text else "")
    if ack.code in ("AA", "CA"):
        return Delivered(0)
    if ack.code in ("AE", "CE"):
        if config.on_error == "retry":
            return Retry(said)
        return DeadLetter(said, DeadLetterKind.REFUSED)
    if ack.code in ("AR", "CR"):
        if config.on_reject == "retry" and attempts <= config.reject_retries:
            return Retry(said)
        suffix = f" (rejected {attempts} times)" if config.on_reject == "retry" else ""
        return DeadLetter(said + suffix, DeadLetterKind.REFUSED)
    return Retry(f"HL7: unknown acknowledgement code {ack.code!r}")

