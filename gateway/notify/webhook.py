"""The webhook's request: the JSON body, its signature and headers (issue 18; sans-IO).

:func:`body` shapes a :class:`~gateway.notify.document.StudyNotification`
for the web (the sender has already applied
:meth:`~gateway.notify.document.StudyNotification.without_phi` when the
sink's ``phi`` is false: then no patient field appears in the body at all,
not even empty). :func:`headers` adds what the receiver checks:

``X-Gateway-Signature: sha256=<hex>``
    HMAC-SHA256 (RFC 2104, FIPS 180-4) of the exact body bytes with the
    sink's secret; the receiver recomputes it over the bytes it received and
    compares in constant time (:func:`verify`).
``Idempotency-Key: <key>``
    The same for every delivery of one notification to one sink, so a
    receiver drops repeats (a re-send after a crash, a retry after an
    ambiguous timeout).
``X-Gateway-Event: complete|amended``
    The event, for routing without parsing the body.

This module does no I/O; :class:`gateway.send.webhook.WebhookSender` sends.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Final

from gateway.notify.document import StudyNotification

__all__ = ["SIGNATURE_HEADER", "CONTENT_TYPE", "body", "sign", "verify", "headers"]

#: The signature's header name.
SIGNATURE_HEADER: Final = b"X-Gateway-Signature"
#: The body's media type.
CONTENT_TYPE: Final = b"application/json"

#: The patient fields the body carries only for a sink that allows PHI.
_PATIENT_FIELDS: Final = (
    "patient_id",
    "patient_name",
    "patient_birth_date",
    "patient_sex",
    "issuer_of_patient_id",
    "referring_physician_name",
)


def body(notification: StudyNotification, phi: bool) -> bytes:
    """The JSON body of the POST (UTF-8, sorted keys: the same notification gives the same bytes).

    :param notification: the notification (already without PHI when ``phi`` is false).
    :param phi: whether the sink allows the patient's fields; when false they are left out entirely.
    """
    document: dict[str, Any] = {
        "event": notification.event,
        "sequence": notification.sequence,
        "idempotency_key": notification.idempotency_key,
        "route": notification.route,
        "sink": notification.sink,
        "study_instance_uid": notification.study_instance_uid,
        "accession_number": notification.accession_number,
        "study_id": notification.study_id,
        "study_date": notification.study_date,
        "study_time": notification.study_time,
        "study_description": notification.study_description,
        "modalities": list(notification.modalities),
        "counts": {"instances": notification.instances, "series": len(notification.series)},
        "series": [
            {
                "series_instance_uid": s.series_instance_uid,
                "series_number": s.series_number,
                "modality": s.modality,
                "instances": s.instances,
            }
            for s in notification.series
        ],
        "destinations": [
            {
                "destination": d.destination,
                "outcome": d.outcome,
                "delivered": d.delivered,
                "failed": d.failed,
                "duplicates": d.duplicates,
            }
            for d in notification.destinations
        ],
        "forced": notification.forced,
        "with_failures": notification.with_failures,
        "times": {
            "first_received_at": notification.first_received_at,
            "last_received_at": notification.last_received_at,
            "completed_at": notification.completed_at,
        },
        "node": notification.node,
    }
    if notification.extra:
        document["extra"] = notification.extra
    if phi:
        document["patient"] = {name: getattr(notification, name) for name in _PATIENT_FIELDS}
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")


def sign(secret: bytes, data: bytes) -> bytes:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of ``data`` with ``secret`` (RFC 2104)."""
    return b"sha256=" + hmac.new(secret, data, hashlib.sha256).hexdigest().encode("ascii")


def verify(secret: bytes, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is :func:`sign` of ``data`` (compared in constant time; for receivers and tests)."""
    return hmac.compare_digest(sign(secret, data), signature.strip())


def headers(notification: StudyNotification, secret: bytes, data: bytes) -> dict[bytes, bytes]:
    """The request headers of one POST of ``data`` (the body of ``notification``).

    :param notification: the notification (its key and event).
    :param secret: the sink's HMAC key.
    :param data: the body bytes exactly as sent.
    """
    return {
        b"Content-Type": CONTENT_TYPE,
        SIGNATURE_HEADER: sign(secret, data),
        b"Idempotency-Key": notification.idempotency_key.encode("ascii"),
        b"X-Gateway-Event": notification.event.encode("ascii"),
    }
