"""The study notification: what every sink is told when a study completes (issue 18).

The tracker builds one :class:`StudyNotification` per (route, study,
completion) from the journal and one instance header, writes it as the
file of a notification entry (:func:`to_json`, canonical JSON) and every
sink's sender reads it back (:func:`from_json`) and shapes it for its
receiver. The document holds the patient fields; a sender whose sink does
not allow PHI (``phi: false``) leaves them out of what it sends
(:func:`StudyNotification.without_phi`).

``idempotency_key`` is the same for every delivery of one notification to
one sink (a re-send after a crash carries the same key, so the receiver
drops the repeat); an ``amended`` notification (an instance arrived after
completion) has a new key and a higher ``sequence``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = [
    "NOTIFICATION_SOP_CLASS",
    "SeriesSummary",
    "DestinationOutcome",
    "StudyNotification",
    "idempotency_key",
    "to_json",
    "from_json",
]

#: The ``sop_class_uid`` of a notification's record in the journal (not a UID:
#: no DICOM instance can carry it, so nothing confuses a notification with an instance).
NOTIFICATION_SOP_CLASS = "notification"

#: The document's format version (``version`` in the JSON).
VERSION = 1


@dataclass(frozen=True)
class SeriesSummary:
    """One series of the study, as received."""

    series_instance_uid: str
    series_number: int | None = None
    modality: str = ""
    instances: int = 0


@dataclass(frozen=True)
class DestinationOutcome:
    """What one destination of the route got of the study.

    :ivar outcome: ``delivered`` (every instance), ``failed`` (none) or ``partial``.
    """

    destination: str
    delivered: int = 0
    failed: int = 0
    duplicates: int = 0
    outcome: str = "delivered"


@dataclass(frozen=True)
class StudyNotification:
    """A study complete at a route's destinations.

    :ivar event: ``complete`` (first completion) or ``amended`` (after late instances).
    :ivar sequence: 1 for the first completion, then one more per amendment.
    :ivar forced: completed by ``max_wait`` while something was missing.
    :ivar with_failures: some instance was dead-lettered at some destination.
    """

    idempotency_key: str
    event: str
    sequence: int
    route: str
    sink: str
    study_instance_uid: str
    accession_number: str = ""
    patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    issuer_of_patient_id: str = ""
    study_id: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    referring_physician_name: str = ""
    modalities: tuple[str, ...] = ()
    instances: int = 0
    series: tuple[SeriesSummary, ...] = ()
    destinations: tuple[DestinationOutcome, ...] = ()
    forced: bool = False
    with_failures: bool = False
    first_received_at: float = 0.0
    last_received_at: float = 0.0
    completed_at: float = 0.0
    node: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def without_phi(self) -> "StudyNotification":
        """The same notification without the patient's identifying fields."""
        return replace(
            self,
            patient_id="",
            patient_name="",
            patient_birth_date="",
            patient_sex="",
            issuer_of_patient_id="",
            referring_physician_name="",
        )


def idempotency_key(sink: str, route: str, study_instance_uid: str, sequence: int) -> str:
    """The key of one notification to one sink: the same at every re-send, new at every amendment."""
    text = "\x00".join((sink, route, study_instance_uid, str(sequence)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def to_json(notification: StudyNotification) -> bytes:
    """The document as canonical JSON bytes (sorted keys, no spaces)."""
    body = asdict(notification)
    body["version"] = VERSION
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def from_json(data: bytes) -> StudyNotification:
    """Read a document written by :func:`to_json`.

    :raises ValueError: not a notification document of a version this code reads.
    """
    body = json.loads(data.decode("utf-8"))
    if not isinstance(body, dict) or body.get("version") != VERSION:
        raise ValueError("not a study notification of version %d" % VERSION)
    body.pop("version")
    body["modalities"] = tuple(body.get("modalities", ()))
    body["series"] = tuple(SeriesSummary(**item) for item in body.get("series", ()))
    body["destinations"] = tuple(DestinationOutcome(**item) for item in body.get("destinations", ()))
    return StudyNotification(**body)
