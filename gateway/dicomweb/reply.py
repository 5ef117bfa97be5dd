"""The STOW-RS response: its status code and its Store Instances Response Module (PS3.18 10.5.3, Annex I).

Pure functions: the service gives each part's :class:`InstanceOutcome` (in
the order of the request) and gets back the HTTP status and the body, in
``application/dicom+json`` (PS3.18 F.2, the DICOM JSON Model) or, when the
client asks for it, ``application/dicom+xml`` (PS3.19 A.1, the Native DICOM
Model).

Status (PS3.18 Table 10.5.3-1): 200 when every instance was stored, 202 when
some were and some were not, 409 when none was ("unable to store any
Instances due to a conflict in the request (e.g., unsupported SOP Class or
Study Instance UID mismatch)", also "for a mixture of reasons").

Body (PS3.18 Table I.1-1): Retrieve URL (0008,1190) of the study, Failed SOP
Sequence (0008,1198) with each failed instance's Referenced SOP Class and
Instance UIDs and Failure Reason (0008,1197), Referenced SOP Sequence
(0008,1199) with each stored instance's UIDs, its Retrieve URL, and a Warning
Reason (0008,1196) when it was accepted with a warning. The Retrieve URLs are
written only when ``dicomweb.retrieve_url`` is configured (the gateway does
not serve WADO-RS itself); Retrieve URL is type 2 at the top level, so it is
then present and empty.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, Sequence
from xml.sax.saxutils import escape, quoteattr

__all__ = [
    "DICOM_JSON",
    "DICOM_XML",
    "InstanceOutcome",
    "StoreReply",
    "build_reply",
    "choose_status",
    "wants_xml",
]

DICOM_JSON: Final = "application/dicom+json"
DICOM_XML: Final = "application/dicom+xml"

# PS3.6 tags of the Store Instances Response Module (PS3.18 Table I.1-1).
_RETRIEVE_URL: Final = "00081190"
_FAILED_SOP_SEQUENCE: Final = "00081198"
_REFERENCED_SOP_SEQUENCE: Final = "00081199"
_REFERENCED_SOP_CLASS_UID: Final = "00081150"
_REFERENCED_SOP_INSTANCE_UID: Final = "00081155"
_FAILURE_REASON: Final = "00081197"
_WARNING_REASON: Final = "00081196"

_KEYWORDS: Final = {
    _RETRIEVE_URL: "RetrieveURL",
    _FAILED_SOP_SEQUENCE: "FailedSOPSequence",
    _REFERENCED_SOP_SEQUENCE: "ReferencedSOPSequence",
    _REFERENCED_SOP_CLASS_UID: "ReferencedSOPClassUID",
    _REFERENCED_SOP_INSTANCE_UID: "ReferencedSOPInstanceUID",
    _FAILURE_REASON: "FailureReason",
    _WARNING_REASON: "WarningReason",
}


@dataclass(frozen=True)
class InstanceOutcome:
    """What became of one part of the request.

    :ivar sop_class_uid: its SOP Class UID ("" when it could not be read, e.g. not DICOM).
    :ivar sop_instance_uid: its SOP Instance UID (likewise).
    :ivar status: the DIMSE-style status: 0x0000 stored; 0xBxxx stored with a
        warning (PS3.18 I.2.1); anything else a failure, written as its
        Failure Reason (PS3.18 I.2.2).
    :ivar comment: why, for the log and the audit trail (never in the body).
    :ivar study_instance_uid: the instance's study (for its Retrieve URL), when known.
    :ivar series_instance_uid: its series, when known.
    """

    sop_class_uid: str
    sop_instance_uid: str
    status: int
    comment: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""

    @property
    def stored(self) -> bool:
        """Whether the gateway holds it (success or warning)."""
        return self.status == 0 or (self.status & 0xF000) == 0xB000


@dataclass(frozen=True)
class StoreReply:
    """An HTTP response: status, media type and body bytes."""

    code: int
    content_type: str
    body: bytes


def choose_status(outcomes: Sequence[InstanceOutcome]) -> int:
    """The HTTP status of a request whose parts had ``outcomes`` (PS3.18 Table 10.5.3-1).

    :param outcomes: one per part (at least one).
    :returns: 200 all stored, 202 some, 409 none.
    """
    stored = sum(1 for outcome in outcomes if outcome.stored)
    if outcomes and stored == len(outcomes):
        return 200
    return 202 if stored else 409


def wants_xml(accept: str | None) -> bool:
    """Whether the ``Accept`` header prefers ``application/dicom+xml`` to JSON.

    JSON is the default (PS3.18 10.5.2 lets the origin server choose when
    the client accepts either); XML only when the client lists it with a
    higher quality than ``application/dicom+json`` (or lists it and not JSON).

    :param accept: the header value, or ``None``.
    """
    if not accept:
        return False
    best: dict[str, float] = {}
    for item in accept.split(","):
        media, _, params = item.strip().partition(";")
        media = media.strip().lower()
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        best[media] = max(best.get(media, 0.0), quality)
    xml = best.get(DICOM_XML, 0.0)
    return xml > 0 and xml > best.get(DICOM_JSON, 0.0)


def _instance_url(base: str, outcome: InstanceOutcome) -> str:
    """The WADO-RS URL of an instance under ``base`` (PS3.18 10.4.1), "" when its study or series is unknown."""
    if not outcome.study_instance_uid or not outcome.series_instance_uid:
        return ""
    return (
        f"{base}/studies/{outcome.study_instance_uid}/series/{outcome.series_instance_uid}"
        f"/instances/{outcome.sop_instance_uid}"
    )


def _study_url(base: str, study: str) -> str:
    return f"{base}/studies/{study}" if study else ""


def _items(outcomes: Sequence[InstanceOutcome], retrieve_url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The Referenced and Failed SOP Sequence items, as ``{tag: (vr, value)}`` maps in request order."""
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for outcome in outcomes:
        item: dict[str, Any] = {
            _REFERENCED_SOP_CLASS_UID: ("UI", outcome.sop_class_uid),
            _REFERENCED_SOP_INSTANCE_UID: ("UI", outcome.sop_instance_uid),
        }
        if outcome.stored:
            if retrieve_url:
                item[_RETRIEVE_URL] = ("UR", _instance_url(retrieve_url, outcome))
            if outcome.status:
                item[_WARNING_REASON] = ("US", outcome.status)
            referenced.append(item)
        else:
            item[_FAILURE_REASON] = ("US", outcome.status)
            failed.append(item)
    return referenced, failed


def _module(outcomes: Sequence[InstanceOutcome], retrieve_url: str, study: str) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 Table I.1-1) as ``{tag: (vr, value)}``, tags in order."""
    referenced, failed = _items(outcomes, retrieve_url)
    module: dict[str, Any] = {}
    if retrieve_url:
        if not study:
            studies = {o.study_instance_uid for o in outcomes if o.stored and o.study_instance_uid}
            study = studies.pop() if len(studies) == 1 else ""
        module[_RETRIEVE_URL] = ("UR", _study_url(retrieve_url, study))
    if failed:
        module[_FAILED_SOP_SEQUENCE] = ("SQ", failed)
    if referenced:
        module[_REFERENCED_SOP_SEQUENCE] = ("SQ", referenced)
    return module


def _json_value(vr: str, value: Any) -> dict[str, Any]:
    """One attribute in the DICOM JSON Model (PS3.18 F.2.2): empty values have no ``Value``."""
    if vr == "SQ":
        return {"vr": "SQ", "Value": [_json_dataset(item) for item in value]}
    if value == "" or value is None:
        return {"vr": vr}
    return {"vr": vr, "Value": [value]}


def _json_dataset(attributes: dict[str, Any]) -> dict[str, Any]:
    return {tag: _json_value(vr, value) for tag, (vr, value) in sorted(attributes.items())}


def _xml_attribute(tag: str, vr: str, value: Any) -> str:
    """One ``DicomAttribute`` of the Native DICOM Model (PS3.19 A.1)."""
    head = f"<DicomAttribute tag={quoteattr(tag)} vr={quoteattr(vr)} keyword={quoteattr(_KEYWORDS[tag])}>"
    if vr == "SQ":
        inner = "".join(
            f'<Item number="{n}">{_xml_dataset(item)}</Item>' for n, item in enumerate(value, start=1)
        )
    elif value == "" or value is None:
        inner = ""
    else:
        inner = f'<Value number="1">{escape(str(value))}</Value>'
    return head + inner + "</DicomAttribute>"


def _xml_dataset(attributes: dict[str, Any]) -> str:
    return "".join(_xml_attribute(tag, vr, value) for tag, (vr, value) in sorted(attributes.items()))


def build_reply(
    outcomes: Sequence[InstanceOutcome], *, xml: bool = False, retrieve_url: str = "", study: str = ""
) -> StoreReply:
    """The response to a request whose parts had ``outcomes`` (PS3.18 10.5.3).

    :param outcomes: one per part, in request order.
    :param xml: write ``application/dicom+xml`` instead of ``application/dicom+json``.
    :param retrieve_url: the configured base URL of the studies (``dicomweb.retrieve_url``), or "".
    :param study: the Study Instance UID of the request's URL (``POST /studies/{study}``), or "".
    :returns: the status, media type and body.
    """
    code = choose_status(outcomes)
    module = _module(outcomes, retrieve_url.rstrip("/"), study)
    if xml:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">'
            + _xml_dataset(module)
            + "</NativeDicomModel>\n"
        )
        return StoreReply(code, DICOM_XML, body.encode("utf-8"))
    return StoreReply(code, DICOM_JSON, json.dumps(_json_dataset(module), separators=(",", ":")).encode("utf-8"))
