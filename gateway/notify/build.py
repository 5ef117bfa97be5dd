"""Building a study's notifications from the journal and one header (issue 18; no I/O but :func:`read_study_header`).

The tracker (:mod:`gateway.notify.tracker`) decides that a study is
complete; this module says what its sinks are told:

* :func:`study_fields` reads the patient and study attributes of one instance
  of the study (the journal's ``sample``), header only (pydicom
  ``stop_before_pixels``, :func:`gateway.parse.read_header`), on the file runner;
* :func:`expectations_met` applies the route's ``expect_series`` and
  ``expect_count`` to the study's row;
* :func:`build_notifications` makes one
  :class:`~gateway.notify.document.StudyNotification` per sink: ``sequence``
  is the row's completions + 1 (``complete`` for the first, ``amended``
  after), ``with_failures`` when any destination dead-lettered an instance,
  and a forced notification lists in ``extra["outstanding"]`` the
  destinations that still had entries queued, with how many.
"""

from __future__ import annotations

from typing import Any, Mapping

from gateway.config.schema import NotifyConfig
from gateway.notify.document import DestinationOutcome, SeriesSummary, StudyNotification, idempotency_key
from gateway.queue.studies import StudyProgress, StudyRow

__all__ = ["HEADER_FIELDS", "study_fields", "expectations_met", "destination_outcome", "build_notifications"]

#: Document field -> the DICOM keyword read from the sample header (PS3.3 C.7.1.1 Patient,
#: C.7.2.1 General Study).
HEADER_FIELDS: Mapping[str, str] = {
    "accession_number": "AccessionNumber",
    "patient_id": "PatientID",
    "patient_name": "PatientName",
    "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex",
    "issuer_of_patient_id": "IssuerOfPatientID",
    "study_id": "StudyID",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
    "study_description": "StudyDescription",
    "referring_physician_name": "ReferringPhysicianName",
}


def study_fields(path: str) -> dict[str, str]:
    """The document's patient and study fields from one instance's header (blocking: on the file runner).

    :param path: the sample instance's spooled file.
    :returns: field -> text (absent attributes are left out).
    :raises ValueError: the file is not a readable Part 10 file.
    :raises OSError: it cannot be read.
    """
    from gateway.parse import read_header

    dataset = read_header(path).dataset
    fields = {}
    for name, keyword in HEADER_FIELDS.items():
        value = dataset.get(keyword)
        if value is not None and str(value):
            fields[name] = str(value)
    return fields


def expectations_met(row: StudyRow, notify: NotifyConfig) -> bool:
    """Whether what the route expects of the study has arrived.

    * each ``expect_series`` item: some series seen with that Series Number
      (0020,0011) and/or Modality (0008,0060) holding at least ``instances``
      instances (at least one when 0);
    * ``expect_count``: when the instances carried Number of Study Related
      Instances (0020,1208, PS3.3 C.7.2.3), at least that many arrived.

    :param row: the study's row.
    :param notify: the route's notification settings.
    """
    for expected in notify.expect_series:
        wanted = max(1, expected.instances)
        if not any(
            (expected.series_number is None or seen.series_number == expected.series_number)
            and (not expected.modality or seen.modality == expected.modality)
            and seen.instances >= wanted
            for seen in row.series.values()
        ):
            return False
    if notify.expect_count and row.expected_instances is not None:
        return row.instances >= row.expected_instances
    return True


def destination_outcome(delivered: int, duplicates: int, dead: int, outstanding: int) -> str:
    """``delivered`` (everything there), ``failed`` (nothing there) or ``partial``."""
    there = delivered + duplicates
    if dead == 0 and outstanding == 0:
        return "delivered"
    return "failed" if there == 0 else "partial"


def build_notifications(
    row: StudyRow,
    progress: StudyProgress,
    notify: NotifyConfig,
    fields: Mapping[str, str],
    *,
    now: float,
    forced: bool,
    node: str,
) -> list[StudyNotification]:
    """One notification per sink of the route, for the completion the tracker is about to record.

    :param row: the study's row as read (its ``completions`` so far).
    :param progress: where its instances stand at the route's destinations.
    :param notify: the route's notification settings (the sinks, in order).
    :param fields: :func:`study_fields` of the sample (empty when no file was left).
    :param now: the completion time.
    :param forced: completed by ``max_wait``.
    :param node: this node's name.
    """
    sequence = row.completions + 1
    destinations = tuple(
        DestinationOutcome(
            destination=d.destination,
            delivered=d.delivered,
            failed=d.dead,
            duplicates=d.duplicates,
            outcome=destination_outcome(d.delivered, d.duplicates, d.dead, d.outstanding),
        )
        for d in progress.destinations
    )
    series = tuple(
        SeriesSummary(s.series_instance_uid, s.series_number, s.modality, s.instances)
        for s in sorted(row.series.values(), key=lambda s: (s.series_number is None, s.series_number or 0, s.series_instance_uid))
    )
    modalities = tuple(sorted({s.modality for s in row.series.values() if s.modality}))
    extra: dict[str, Any] = {}
    outstanding = {d.destination: d.outstanding for d in progress.destinations if d.outstanding}
    if outstanding:
        extra["outstanding"] = outstanding
    if row.expected_instances is not None:
        extra["expected_instances"] = row.expected_instances
    result = []
    for sink in notify.sinks:
        result.append(
            StudyNotification(
                idempotency_key=idempotency_key(sink, row.route, row.study_instance_uid, sequence),
                event="complete" if row.completions == 0 else "amended",
                sequence=sequence,
                route=row.route,
                sink=sink,
                study_instance_uid=row.study_instance_uid,
                modalities=modalities,
                instances=progress.instances,
                series=series,
                destinations=destinations,
                forced=forced,
                with_failures=any(d.dead for d in progress.destinations),
                first_received_at=progress.first_received_at if progress.first_received_at is not None else row.opened_at,
                last_received_at=progress.last_received_at if progress.last_received_at is not None else row.last_instance_at,
                completed_at=now,
                node=node,
                extra=dict(extra),
                **_known(fields),
            )
        )
    return result


def _known(fields: Mapping[str, str]) -> dict[str, str]:
    """Only the header fields the document has (a reader never adds others)."""
    return {name: value for name, value in fields.items() if name in HEADER_FIELDS}

