"""Tests for :mod:`gateway.notify.fhir`: the ImagingStudy of a study notification.

Every resource built here is also validated with ``fhir.resources`` (R4B
models; ImagingStudy is the same in R4) through the stand-in's validator.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

from twisted.trial.unittest import SynchronousTestCase

from gateway.config.schema import FhirSink
from gateway.notify.document import DestinationOutcome, SeriesSummary, StudyNotification, idempotency_key
from gateway.notify.fhir import (
    ACSN_SYSTEM,
    DCM_SYSTEM,
    PSEUDONYM_SYSTEM,
    FhirBuildError,
    conditional_url,
    fhir_datetime,
    imaging_study,
    outcome_text,
    patient_reference,
    patient_search_url,
    pseudonymous_key,
)
from tests.support.fhir_server import validate_imaging_study

STUDY = "1.2.826.0.1.3680043.8.498.1"
PATIENT_ID = "PAT-7734-SECRET"
PATIENT_NAME = "Doe^Jane"


def notification(**overrides: object) -> StudyNotification:
    """A complete study of two series (CT 1 with 3 instances, SR 2 with 1), with patient data."""
    values: dict = dict(
        idempotency_key=idempotency_key("fhir", "ct", STUDY, 1),
        event="complete",
        sequence=1,
        route="ct",
        sink="fhir",
        study_instance_uid=STUDY,
        accession_number="ACC123",
        patient_id=PATIENT_ID,
        patient_name=PATIENT_NAME,
        patient_birth_date="19700101",
        patient_sex="F",
        issuer_of_patient_id="HOSP",
        study_description="CT chest",
        referring_physician_name="Who^Dr",
        modalities=("CT", "SR"),
        instances=4,
        series=(
            SeriesSummary("1.2.3.1", 1, "CT", 3),
            SeriesSummary("1.2.3.2", 2, "SR", 1),
        ),
        destinations=(DestinationOutcome("pacs", delivered=4),),
        first_received_at=1700000000.0,
        last_received_at=1700000100.0,
        completed_at=1700000200.0,
    )
    values.update(overrides)
    return StudyNotification(**values)


def sink(**overrides: object) -> FhirSink:
    """A sink at http://fhir.example/r4."""
    values: dict = dict(name="fhir", url="http://fhir.example/r4", patient_system="urn:oid:1.2.3.4")
    values.update(overrides)
    return FhirSink(**values)


class ResourceTests(SynchronousTestCase):
    """The resource's elements."""

    def assertValid(self, resource: dict) -> None:
        """The resource is a valid ImagingStudy (fhir.resources)."""
        self.assertEqual(validate_imaging_study(resource), "")

    def test_identifiers_are_the_study_uid_and_the_accession_number_typed_acsn(self) -> None:
        """identifier[0] is urn:dicom:uid / urn:oid:<uid>; identifier[1] the accession with type ACSN of v2-0203."""
        resource = imaging_study(notification(), sink())
        self.assertEqual(resource["identifier"][0], {"system": "urn:dicom:uid", "value": "urn:oid:" + STUDY})
        self.assertEqual(
            resource["identifier"][1],
            {"type": {"coding": [{"system": ACSN_SYSTEM, "code": "ACSN"}]}, "value": "ACC123"},
        )
        self.assertEqual(resource["resourceType"], "ImagingStudy")
        self.assertEqual(resource["status"], "available")
        self.assertValid(resource)

    def test_no_accession_no_acsn_identifier(self) -> None:
        """Without an Accession Number only the study UID identifies the resource."""
        resource = imaging_study(notification(accession_number=""), sink())
        self.assertEqual(len(resource["identifier"]), 1)
        self.assertValid(resource)

    def test_counts_series_and_modalities(self) -> None:
        """numberOfSeries, numberOfInstances, modality codings, and each series' uid, number, modality and count."""
        resource = imaging_study(notification(), sink())
        self.assertEqual(resource["numberOfSeries"], 2)
        self.assertEqual(resource["numberOfInstances"], 4)
        self.assertEqual(resource["modality"], [{"system": DCM_SYSTEM, "code": "CT"}, {"system": DCM_SYSTEM, "code": "SR"}])
        self.assertEqual(
            resource["series"],
            [
                {"uid": "1.2.3.1", "number": 1, "modality": {"system": DCM_SYSTEM, "code": "CT"}, "numberOfInstances": 3},
                {"uid": "1.2.3.2", "number": 2, "modality": {"system": DCM_SYSTEM, "code": "SR"}, "numberOfInstances": 1},
            ],
        )
        self.assertEqual(resource["started"], "2023-11-14T22:13:20Z")
        self.assertEqual(resource["description"], "CT chest")
        self.assertValid(resource)

    def test_series_without_number_or_modality_is_still_valid(self) -> None:
        """A series with no number omits it and one with no modality is OT (series.modality is 1..1)."""
        resource = imaging_study(notification(series=(SeriesSummary("1.2.3.9", None, "", 2),), modalities=()), sink())
        self.assertEqual(resource["series"], [
            {"uid": "1.2.3.9", "modality": {"system": DCM_SYSTEM, "code": "OT"}, "numberOfInstances": 2}])
        self.assertNotIn("modality", resource)
        self.assertValid(resource)

    def test_endpoint_when_configured(self) -> None:
        """endpoint is [{reference: sink.endpoint}] when set, absent otherwise."""
        self.assertEqual(imaging_study(notification(), sink(endpoint="Endpoint/pacs"))["endpoint"], [{"reference": "Endpoint/pacs"}])
        self.assertNotIn("endpoint", imaging_study(notification(), sink()))
        self.assertValid(imaging_study(notification(), sink(endpoint="Endpoint/pacs")))

    def test_forced_and_failures_are_notes(self) -> None:
        """A forced completion with a failing destination gets two notes naming max_wait and the destination."""
        resource = imaging_study(
            notification(forced=True, with_failures=True,
                         destinations=(DestinationOutcome("pacs", 3, 1, 0, "partial"), DestinationOutcome("archive", 4))),
            sink(),
        )
        texts = [n["text"] for n in resource["note"]]
        self.assertEqual(len(texts), 2)
        self.assertIn("max_wait", texts[0])
        self.assertIn("pacs", texts[1])
        self.assertNotIn("archive", texts[1])
        self.assertNotIn("note", imaging_study(notification(), sink()))
        self.assertValid(resource)

    def test_amended_is_a_note(self) -> None:
        """An amended notification says so with its sequence."""
        resource = imaging_study(notification(event="amended", sequence=2), sink())
        self.assertIn("Amended (notification 2)", resource["note"][0]["text"])

    def test_padded_values_are_trimmed(self) -> None:
        """DICOM's padding never reaches the resource: accession, description and modality trimmed; blank ones omitted."""
        resource = imaging_study(notification(accession_number="A1 ", study_description=" ", modalities=("MR ",),
                                              series=(SeriesSummary("1.2.3.1", 1, "MR ", 1),)), sink())
        self.assertEqual(resource["identifier"][1]["value"], "A1")
        self.assertNotIn("description", resource)
        self.assertEqual(resource["modality"], [{"system": DCM_SYSTEM, "code": "MR"}])
        self.assertEqual(resource["series"][0]["modality"]["code"], "MR")
        self.assertEqual(len(imaging_study(notification(accession_number="  "), sink())["identifier"]), 1)

    def test_fhir_datetime_is_utc_with_zone(self) -> None:
        """dateTime with a time carries a zone (FHIR R4 datatypes.html#dateTime)."""
        self.assertEqual(fhir_datetime(0), "1970-01-01T00:00:00Z")


class SubjectTests(SynchronousTestCase):
    """subject (1..1) in each mode, and PHI."""

    def test_identifier_with_phi_names_the_patient_id(self) -> None:
        """phi: a logical reference by the Patient ID in patient_system."""
        resource = imaging_study(notification(), sink(phi=True))
        self.assertEqual(resource["subject"], {"identifier": {"system": "urn:oid:1.2.3.4", "value": PATIENT_ID}})
        self.assertEqual(validate_imaging_study(resource), "")

    def test_without_phi_no_patient_data_anywhere(self) -> None:
        """phi false: the subject is the study's SHA-256 under the pseudonym system, and no patient field appears anywhere."""
        resource = imaging_study(notification().without_phi(), sink(phi=False))
        expected_key = hashlib.sha256(STUDY.encode()).hexdigest()
        self.assertEqual(resource["subject"], {"identifier": {"system": PSEUDONYM_SYSTEM, "value": expected_key}})
        self.assertEqual(pseudonymous_key(STUDY), expected_key)
        text = json.dumps(resource)
        for phi in (PATIENT_ID, PATIENT_NAME, "Doe", "19700101", "HOSP", "Who^Dr"):
            self.assertNotIn(phi, text)
        self.assertNotIn("display", text)
        self.assertEqual(validate_imaging_study(resource), "")

    def test_phi_false_ignores_a_patient_id_even_if_present(self) -> None:
        """Even when handed a notification with PHI, a phi-false sink's subject is the pseudonym."""
        resource = imaging_study(notification(), sink(phi=False))
        self.assertEqual(resource["subject"]["identifier"]["system"], PSEUDONYM_SYSTEM)

    def test_phi_without_patient_id_falls_back_to_the_pseudonym(self) -> None:
        """No Patient ID in the study: the subject is still present (1..1), the pseudonym."""
        resource = imaging_study(notification(patient_id=""), sink(phi=True))
        self.assertEqual(resource["subject"]["identifier"]["system"], PSEUDONYM_SYSTEM)
        self.assertEqual(validate_imaging_study(resource), "")

    def test_search_result_is_a_literal_reference(self) -> None:
        """A Patient found by search is referenced as Patient/<id>."""
        resource = imaging_study(notification(), sink(phi=True, subject="search"), patient="Patient/p9")
        self.assertEqual(resource["subject"], {"reference": "Patient/p9"})
        self.assertEqual(validate_imaging_study(resource), "")

    def test_pseudonym_is_not_the_patient_id_hash(self) -> None:
        """The key depends on the study only: two studies of one patient get different keys."""
        self.assertNotEqual(pseudonymous_key(STUDY), pseudonymous_key(STUDY + ".2"))
        self.assertNotEqual(pseudonymous_key(STUDY), hashlib.sha256(PATIENT_ID.encode()).hexdigest())


class UrlTests(SynchronousTestCase):
    """The request URLs."""

    def test_conditional_url(self) -> None:
        """PUT target: ImagingStudy?identifier=urn:dicom:uid|urn:oid:<uid>, the bar percent-encoded."""
        self.assertEqual(
            conditional_url("http://fhir.example/r4/", STUDY),
            "http://fhir.example/r4/ImagingStudy?identifier=urn:dicom:uid%7Curn:oid:" + STUDY,
        )

    def test_conditional_url_keeps_the_base_query(self) -> None:
        """A base URL with a query (a key) keeps it and adds the identifier after the path."""
        self.assertEqual(
            conditional_url("http://fhir.example/r4?code=k", "1.2"),
            "http://fhir.example/r4/ImagingStudy?code=k&identifier=urn:dicom:uid%7Curn:oid:1.2",
        )

    def test_patient_search_url(self) -> None:
        """GET Patient?identifier=<system>|<id>, reserved characters of the ID encoded."""
        url = patient_search_url("http://f/r4", sink(phi=True), notification(patient_id="A&B 1"))
        self.assertEqual(url, "http://f/r4/Patient?identifier=urn:oid:1.2.3.4%7CA%26B%201")

    def test_patient_search_without_patient_id_refused(self) -> None:
        """No Patient ID: nothing to search for."""
        self.assertRaises(FhirBuildError, patient_search_url, "http://f", sink(phi=True), notification(patient_id=""))


class AnswerTests(SynchronousTestCase):
    """Reading the server's Bundles and OperationOutcomes."""

    def test_patient_reference_counts_matches_only(self) -> None:
        """Patients with search.mode match count; an included resource or an OperationOutcome does not."""
        bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": {"resourceType": "Patient", "id": "a"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "Patient", "id": "b"}, "search": {"mode": "include"}},
            {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}},
        ]}
        self.assertEqual(patient_reference(json.dumps(bundle).encode()), (["Patient/a"], ""))
        self.assertEqual(patient_reference(b'{"resourceType": "Bundle"}'), ([], ""))
        self.assertEqual(patient_reference(b"<html>")[0], [])
        self.assertIn("Bundle", patient_reference(b'{"resourceType": "Patient"}')[1])

    def test_outcome_text(self) -> None:
        """Issue severity, code, details.text and diagnostics joined; other bodies as text, cut."""
        body = json.dumps({"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "invalid", "details": {"text": "bad subject"}, "diagnostics": "line 3"},
            {"severity": "warning", "code": "business-rule"},
        ]}).encode()
        self.assertEqual(outcome_text(body), "error invalid: bad subject / line 3; warning business-rule")
        self.assertEqual(outcome_text(b"x" * 1000, 10), "x" * 10)

    def test_replace_keeps_builder_pure(self) -> None:
        """Building twice from the same notification gives equal resources (no hidden state)."""
        n = notification()
        self.assertEqual(imaging_study(n, sink()), imaging_study(replace(n), sink()))
