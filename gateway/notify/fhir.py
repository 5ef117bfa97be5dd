"""The ImagingStudy resource of a study notification, for a FHIR sink (issue 18).

Pure functions, no I/O: :func:`imaging_study` shapes a
:class:`~gateway.notify.document.StudyNotification` as a FHIR R4
ImagingStudy (a ``dict`` ready for ``json.dumps``) for one sink
(:class:`~gateway.config.schema.FhirSink`); :func:`conditional_url` and
:func:`patient_search_url` are the URLs the sender
(:mod:`gateway.send.fhir`) asks; :func:`patient_reference` reads a
Patient search's Bundle and :func:`outcome_text` an OperationOutcome.

The resource (FHIR R4 ImagingStudy, https://hl7.org/fhir/R4/imagingstudy.html):

- ``identifier``: the Study Instance UID as ``urn:dicom:uid`` /
  ``urn:oid:<uid>`` (FHIR R4 ImagingStudy, Implementation Notes, imagingstudy.html#notes), and
  the Accession Number with type ``ACSN`` (v2-0203) when there is one (R4
  ImagingStudy.identifier: "Accession Number should use ACSN Identifier type");
- ``status``: ``available``;
- ``subject`` (1..1): as the sink's ``subject`` says (:func:`subject`);
- ``started``, ``numberOfSeries``, ``numberOfInstances``, ``modality``,
  ``series[]`` (uid, number, modality, numberOfInstances), ``endpoint``,
  ``description``, and a ``note`` when the study was completed by
  ``max_wait`` (forced) or with dead letters.

Privacy: with ``phi: false`` the caller passes the notification through
:meth:`~StudyNotification.without_phi` and :func:`subject` refers to a
pseudonymous key (the SHA-256 of the Study Instance UID, nothing derived
from the patient), so the resource names no patient data.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Final
from urllib.parse import quote

from gateway.config.schema import FhirSink
from gateway.notify.document import StudyNotification

__all__ = [
    "ACSN_SYSTEM",
    "DCM_SYSTEM",
    "PSEUDONYM_SYSTEM",
    "STUDY_UID_SYSTEM",
    "FhirBuildError",
    "conditional_url",
    "fhir_datetime",
    "imaging_study",
    "outcome_text",
    "patient_reference",
    "patient_search_url",
    "pseudonymous_key",
    "study_identifier",
    "subject",
]

#: FHIR R4 ImagingStudy, Implementation Notes (imagingstudy.html#notes): a DICOM UID as an identifier is ``urn:dicom:uid`` with an ``urn:oid:`` value.
STUDY_UID_SYSTEM: Final = "urn:dicom:uid"
#: The code system of identifier types (HL7 v2 table 0203), for the Accession Number's type ``ACSN``.
ACSN_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"
#: The DICOM code system (R4 ImagingStudy.modality binding: DICOM CID 29, Acquisition Modality).
DCM_SYSTEM: Final = "http://dicom.nema.org/resources/ontology/DCM"
#: The identifier system of the pseudonymous subject (``phi: false``): the study's key, not a patient's.
PSEUDONYM_SYSTEM: Final = "urn:dicom-gateway:study"
#: The modality of a series that named none: DICOM's defined term ``OT`` (Other), since
#: R4 ImagingStudy.series.modality is 1..1.
UNKNOWN_MODALITY: Final = "OT"
#: Characters of an OperationOutcome's text kept.
OUTCOME_CHARS: Final = 400


class FhirBuildError(ValueError):
    """The notification cannot become the resource this sink wants (a search without a Patient ID, say)."""


def study_identifier(study_instance_uid: str) -> dict[str, str]:
    """The Study Instance UID as an Identifier (FHIR R4 imagingstudy.html#notes: system ``urn:dicom:uid``, value ``urn:oid:<uid>``)."""
    return {"system": STUDY_UID_SYSTEM, "value": "urn:oid:" + study_instance_uid}


def _with_path(base: str, path: str, query: str) -> str:
    """``base`` (no trailing slash) + ``path`` + ``?query`` (a base URL carrying a query keeps it first)."""
    head, sep, base_query = base.partition("?")
    joined = "&".join(q for q in (base_query, query) if q)
    return head.rstrip("/") + path + ("?" + joined if joined else "")


def _token_param(system: str, value: str) -> str:
    """A token search parameter ``system|value`` (FHIR R4 Search, token parameters, search.html#token), percent-encoded for a query."""
    text = f"{system}|{value}" if system else value
    return quote(text, safe=":/.")


def conditional_url(base: str, study_instance_uid: str) -> str:
    """``PUT`` target of the study's conditional update (FHIR R4 RESTful API, "Conditional update", http.html#cond-update).

    ``{base}/ImagingStudy?identifier=urn:dicom:uid|urn:oid:<uid>``: no match
    creates the resource, one match updates it, several are 412.
    """
    identifier = study_identifier(study_instance_uid)
    return _with_path(base, "/ImagingStudy", "identifier=" + _token_param(identifier["system"], identifier["value"]))


def patient_search_url(base: str, sink: FhirSink, notification: StudyNotification) -> str:
    """``GET {base}/Patient?identifier=<patient_system>|<PatientID>`` (FHIR R4 search.html#token).

    :raises FhirBuildError: the notification has no Patient ID (nothing to search for).
    """
    patient_id = notification.patient_id.strip()
    if not patient_id:
        raise FhirBuildError("the study has no Patient ID to search a Patient by")
    return _with_path(base, "/Patient", "identifier=" + _token_param(sink.patient_system, patient_id))


def pseudonymous_key(study_instance_uid: str) -> str:
    """The subject's key when the sink may not see PHI: the SHA-256 of the Study Instance UID.

    One-way and derived from the study only (never from the Patient ID or
    name): a receiver can group amendments of one study under it, nothing more.
    """
    return hashlib.sha256(study_instance_uid.encode("ascii", "replace")).hexdigest()


def subject(notification: StudyNotification, sink: FhirSink, patient: str | None = None) -> dict[str, Any]:
    """``ImagingStudy.subject`` (1..1 in FHIR R4 ImagingStudy: Reference(Patient | Device | Group)).

    - ``patient`` given (the sender found it with a search): ``{"reference": "Patient/<id>"}``;
    - ``phi`` and a Patient ID: a logical reference by identifier (FHIR R4
      references.html#logical, "Logical references"): ``{"identifier": {"system": patient_system, "value": PatientID}}``;
    - otherwise a logical reference to the pseudonymous key of the study
      (system :data:`PSEUDONYM_SYSTEM`), no display.

    :param notification: the notification (already without PHI when the sink has ``phi: false``).
    :param sink: the sink.
    :param patient: ``Patient/<id>`` found by search, or ``None``.
    """
    if patient:
        return {"reference": patient}
    if sink.phi and notification.patient_id.strip():
        identifier = {"value": notification.patient_id.strip()}
        if sink.patient_system:
            identifier = {"system": sink.patient_system, **identifier}
        return {"identifier": identifier}
    return {"identifier": {"system": PSEUDONYM_SYSTEM, "value": pseudonymous_key(notification.study_instance_uid)}}


def fhir_datetime(seconds: float) -> str:
    """An epoch time as a FHIR ``dateTime`` in UTC to the second (FHIR R4 datatypes.html#dateTime: a time zone is required with a time)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _modality(code: str) -> dict[str, str]:
    """A DICOM modality as a Coding (R4 ImagingStudy.modality / series.modality, DICOM CID 29)."""
    return {"system": DCM_SYSTEM, "code": code.strip() or UNKNOWN_MODALITY}


def _notes(notification: StudyNotification) -> list[dict[str, str]]:
    """``ImagingStudy.note`` (Annotation): why the study is not simply complete, in words (no PHI)."""
    notes = []
    if notification.forced:
        notes.append("Completed by max_wait: not every expected instance had arrived.")
    if notification.with_failures:
        failed = [d.destination for d in notification.destinations if d.failed or d.outcome != "delivered"]
        notes.append(
            "Completed with failures: some instances were dead-lettered"
            + (" at " + ", ".join(failed) if failed else "")
            + "."
        )
    if notification.event == "amended":
        notes.append(f"Amended (notification {notification.sequence}): instances arrived after completion.")
    return [{"text": text} for text in notes]


def imaging_study(notification: StudyNotification, sink: FhirSink, patient: str | None = None) -> dict[str, Any]:
    """The ImagingStudy (FHIR R4) of ``notification`` for ``sink`` (see the module docstring).

    :param notification: the notification; the caller applies
        :meth:`~StudyNotification.without_phi` when the sink's ``phi`` is false.
    :param sink: the sink (``subject``, ``patient_system``, ``phi``, ``endpoint``).
    :param patient: ``Patient/<id>`` when the sink's ``subject`` is ``search`` and the Patient was found.
    """
    identifiers: list[dict[str, Any]] = [study_identifier(notification.study_instance_uid)]
    accession = notification.accession_number.strip()
    if accession:
        # FHIR R4 ImagingStudy.identifier: the Accession Number is an identifier of type ACSN.
        identifiers.append({"type": {"coding": [{"system": ACSN_SYSTEM, "code": "ACSN"}]}, "value": accession})
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "identifier": identifiers,
        "status": "available",
    }
    modalities = list(dict.fromkeys(m.strip() for m in notification.modalities if m.strip()))
    if not modalities:
        modalities = list(dict.fromkeys(s.modality.strip() for s in notification.series if s.modality.strip()))
    if modalities:
        resource["modality"] = [_modality(m) for m in modalities]
    resource["subject"] = subject(notification, sink, patient)
    if notification.first_received_at:
        resource["started"] = fhir_datetime(notification.first_received_at)
    if sink.endpoint:
        resource["endpoint"] = [{"reference": sink.endpoint}]
    resource["numberOfSeries"] = len(notification.series)
    resource["numberOfInstances"] = notification.instances
    if notification.study_description.strip():
        # FHIR R4 datatypes.html#string: no leading or trailing whitespace is meant (DICOM pads values).
        resource["description"] = notification.study_description.strip()
    notes = _notes(notification)
    if notes:
        resource["note"] = notes
    series = []
    for item in notification.series:
        entry: dict[str, Any] = {"uid": item.series_instance_uid}
        if item.series_number is not None and item.series_number >= 0:
            entry["number"] = item.series_number  # unsignedInt
        entry["modality"] = _modality(item.modality)
        entry["numberOfInstances"] = item.instances
        series.append(entry)
    if series:
        resource["series"] = series
    return resource


def patient_reference(body: bytes) -> tuple[list[str], str]:
    """The Patients a search's Bundle matched (FHIR R4 search.html: a ``searchset`` Bundle; ``entry.search.mode`` ``match``).

    :returns: ``(["Patient/<id>", ...], "")``, or ``([], problem)`` when the body is not a searchset Bundle.
    """
    try:
        bundle = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return [], "the Patient search answered something other than JSON"
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return [], "the Patient search did not answer a Bundle"
    found = []
    for item in bundle.get("entry") or ():
        if not isinstance(item, dict):
            continue
        resource = item.get("resource")
        search = item.get("search")
        mode = search.get("mode", "match") if isinstance(search, dict) else "match"
        if mode != "match" or not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
            continue  # an included resource or an OperationOutcome (search.mode "include" / "outcome")
        if isinstance(resource.get("id"), str) and resource["id"]:
            found.append("Patient/" + resource["id"])
    return found, ""


def outcome_text(body: bytes, limit: int = OUTCOME_CHARS) -> str:
    """What an OperationOutcome (FHIR R4 OperationOutcome.issue) says, in one line; else the body's text.

    Each issue contributes ``severity code: details.text / diagnostics``.
    The caller redacts secrets and PHI from it (:mod:`gateway.send.fhir`).
    """
    try:
        document = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return body[:limit].decode("utf-8", "replace")
    if not isinstance(document, dict) or document.get("resourceType") != "OperationOutcome":
        return body[:limit].decode("utf-8", "replace")
    parts = []
    for issue in document.get("issue") or ():
        if not isinstance(issue, dict):
            continue
        words = [str(issue.get(k, "")) for k in ("severity", "code") if issue.get(k)]
        details = issue.get("details") if isinstance(issue.get("details"), dict) else {}
        said = [str(t) for t in (details.get("text"), issue.get("diagnostics")) if t]
        parts.append(" ".join(words) + (": " if words and said else "") + " / ".join(said))
    return "; ".join(p for p in parts if p)[:limit]

