"""Tests for :mod:`gateway.send.fhir` against the FHIR server stand-in over real loopback HTTP.

The server is :class:`tests.support.fhir_server.FhirResource` in the test's
reactor; the sender is the real one with its Agent and connection pool.
Each test sends notification entries and checks both sides: the outcomes
the worker would record and what the server received and stored. Every
ImagingStudy the sender PUT is validated by the server with ``fhir.resources``
(R4B models; ImagingStudy is the same in R4) and each test ends checking that
none was invalid (:meth:`SenderTestBase.check_every_resource_valid`).
:class:`FhirWorkerTests` runs the sender under the real destination worker
(memory store, clock, a scripted client): refused credentials open the circuit.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.blocking import SynchronousRunner
from gateway.config.schema import CircuitConfig, DicomWebAuth, DicomWebTLSConfig, FhirSink, RetryConfig
from gateway.dicomweb.client_auth import Answer
from gateway.notify.document import (
    NOTIFICATION_SOP_CLASS,
    DestinationOutcome,
    SeriesSummary,
    StudyNotification,
    idempotency_key,
    to_json,
)
from gateway.notify.fhir import PSEUDONYM_SYSTEM
from gateway.queue.interfaces import Entry, EntryState, InstanceRecord, NewEntry
from gateway.queue.outcome import DeadLetter, DeadLetterKind, Delivered, DestinationDown, Outcome, Retry
from gateway.send import SendContext
from gateway.send.fhir import FhirSender
from gateway.send.registry import SENDERS, register_sender
from tests.adapters.test_forward import WorkerTestsMixin
from tests.support.fhir_server import FhirResource, Script, site_for, validate_imaging_study
from tests.support.ports import free_port

PATIENT_ID = "MRN-552-SECRET"
PATIENT_NAME = "Roe^Richard"
PATIENT_SYSTEM = "urn:oid:1.2.3.4.5"
UID_SYSTEM = "urn:dicom:uid"


def notification(study: str, sequence: int = 1, instances: int = 3, **overrides: Any) -> StudyNotification:
    """A CT study with ``instances`` instances in one series (two series when amended)."""
    series = [SeriesSummary(study + ".1", 1, "CT", instances)]
    if sequence > 1:
        series.append(SeriesSummary(study + ".2", 2, "SR", 1))
    values: dict[str, Any] = dict(
        idempotency_key=idempotency_key("fhir", "ct", study, sequence),
        event="complete" if sequence == 1 else "amended",
        sequence=sequence,
        route="ct",
        sink="fhir",
        study_instance_uid=study,
        accession_number="ACC-" + study[-3:],
        patient_id=PATIENT_ID,
        patient_name=PATIENT_NAME,
        patient_birth_date="19650203",
        modalities=tuple(s.modality for s in series),
        instances=sum(s.instances for s in series),
        series=tuple(series),
        destinations=(DestinationOutcome("pacs", delivered=instances),),
        first_received_at=1700000000.0,
        last_received_at=1700000050.0,
        completed_at=1700000110.0,
    )
    values.update(overrides)
    return StudyNotification(**values)


class SenderTestBase(TestCase):
    """Serves the stand-in on a loopback port; writes notification files; makes senders."""

    timeout = 30

    def setUp(self) -> None:
        self.folder = self.mktemp()
        os.makedirs(self.folder)
        self.next_id = 1
        #: Whether the test sends an invalid resource on purpose (else every PUT body must validate).
        self.expect_invalid = False

    def serve(self, script: Script | None = None) -> FhirResource:
        """Serve the stand-in; its base URL is ``self.url``."""
        server = FhirResource(script, reactor)
        port = reactor.listenTCP(0, site_for(server), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.addCleanup(server.stop)
        self.addCleanup(self.check_every_resource_valid, server)
        self.url = f"http://127.0.0.1:{port.getHost().port}/fhir/r4"
        return server

    def check_every_resource_valid(self, server: FhirResource) -> None:
        """At the end of every test: each ImagingStudy the sender PUT (faults included) was valid."""
        if not self.expect_invalid:
            self.assertEqual(server.invalid, [])

    def sender(self, **overrides: Any) -> FhirSender:
        """The sender of a sink at ``self.url`` (its pool closed at the end)."""
        values: dict[str, Any] = dict(name="fhir", url=self.url, timeout=10.0, patient_system=PATIENT_SYSTEM,
                                      endpoint="Endpoint/pacs", retry=RetryConfig(max_delay=60.0))
        values.update(overrides)
        context = SendContext(SynchronousRunner(), reactor, reactor, scratch_dir=self.folder)
        sender = FhirSender(FhirSink(**values), context)
        self.addCleanup(sender.close, 0)
        return sender

    def entry(self, item: StudyNotification | bytes, attempts: int = 0) -> Entry:
        """A leased notification entry whose file holds ``item`` (a document, or raw bytes)."""
        entry_id = self.next_id
        self.next_id += 1
        path = os.path.join(self.folder, f"n{entry_id}.json")
        data = item if isinstance(item, bytes) else to_json(item)
        with open(path, "wb") as f:
            f.write(data)
        key = item.idempotency_key if isinstance(item, StudyNotification) else f"k{entry_id}"
        study = item.study_instance_uid if isinstance(item, StudyNotification) else "1.2"
        record = InstanceRecord(
            instance_id=f"i{entry_id}", path=path, sop_class_uid=NOTIFICATION_SOP_CLASS, sop_instance_uid=key,
            transfer_syntax_uid="", size=len(data), sha256="00", received_at=0.0, correlation_id=f"c{entry_id}",
            study_instance_uid=study,
        )
        return Entry(entry_id, record, "ct", "fhir", path, EntryState.LEASED, attempts, 0.0, 0.0)

    async def send(self, sender: FhirSender, batch: Sequence[Entry]) -> list[Outcome]:
        """Run one batch to the end and return the outcomes in order."""
        outcomes = []
        async for _entry, outcome in sender.send(0, batch):
            outcomes.append(outcome)
        return outcomes

    def assertAllValid(self, server: FhirResource, count: int) -> None:
        """The server validated ``count`` ImagingStudy bodies, none invalid; each validates again here."""
        self.assertEqual(server.invalid, [])
        puts = [r for r in server.received if r.method == "PUT"]
        self.assertEqual(len(server.valid), count)
        for request in puts:
            self.assertEqual(validate_imaging_study(request.body), "")

    def token_file(self, value: str) -> str:
        """A file holding ``value``."""
        path = os.path.join(self.folder, f"secret-{len(os.listdir(self.folder))}")
        with open(path, "w") as f:
            f.write(value + "\n")
        return path


class ConditionalUpdateTests(SenderTestBase):
    """The conditional update: create, then update the same resource."""

    async def test_create_then_update_on_amended(self) -> None:
        """complete -> 201 created (version 1); amended -> 200 the same resource (version 2) with the new counts."""
        server = self.serve()
        study = "1.2.826.0.1.3680043.8.498.101"
        sender = self.sender()
        first = await self.send(sender, [self.entry(notification(study))])
        self.assertEqual(first, [Delivered(0)])
        self.assertEqual(server.received[0].status, 201)
        amended = await self.send(sender, [self.entry(notification(study, sequence=2))])
        self.assertEqual(amended, [Delivered(0)])
        self.assertEqual(server.received[1].status, 200)
        (stored,) = server.study(UID_SYSTEM, "urn:oid:" + study)
        self.assertEqual(stored.version, 2)
        self.assertEqual(stored.resource["numberOfSeries"], 2)
        self.assertEqual(stored.resource["numberOfInstances"], 4)
        self.assertEqual(stored.resource["endpoint"], [{"reference": "Endpoint/pacs"}])
        self.assertIn("Amended", stored.resource["note"][0]["text"])
        for request in server.received:
            self.assertEqual(request.method, "PUT")
            self.assertEqual(request.path, "/fhir/r4/ImagingStudy")
            self.assertEqual(request.query, {"identifier": [f"{UID_SYSTEM}|urn:oid:{study}"]})
            self.assertTrue(request.content_type.startswith("application/fhir+json"))
            self.assertEqual(request.if_match, "")
        self.assertAllValid(server, 2)

    async def test_entries_go_in_order(self) -> None:
        """A batch of three studies reaches the server in entry order, each created."""
        server = self.serve()
        studies = [f"1.2.3.{n}" for n in (7, 3, 9)]
        outcomes = await self.send(self.sender(), [self.entry(notification(s)) for s in studies])
        self.assertEqual(outcomes, [Delivered(0)] * 3)
        self.assertEqual([r.query["identifier"][0].rpartition(":")[2] for r in server.received], studies)
        self.assertEqual(len(server.studies), 3)
        self.assertAllValid(server, 3)

    async def test_phi_false_sends_no_patient_data(self) -> None:
        """Without phi nothing the server receives (URL or body) names the patient; the subject is the pseudonym."""
        server = self.serve()
        self.assertEqual(await self.send(self.sender(phi=False), [self.entry(notification("1.2.3.50"))]), [Delivered(0)])
        (request,) = server.received
        text = json.dumps(request.body) + json.dumps(request.query)
        for phi in (PATIENT_ID, "Roe", "19650203"):
            self.assertNotIn(phi, text)
        self.assertEqual(request.body["subject"]["identifier"]["system"], PSEUDONYM_SYSTEM)
        self.assertAllValid(server, 1)

    async def test_phi_true_identifier_subject_names_the_patient(self) -> None:
        """With phi and subject identifier, the subject is the Patient ID in patient_system."""
        server = self.serve()
        await self.send(self.sender(phi=True), [self.entry(notification("1.2.3.51"))])
        self.assertEqual(server.received[0].body["subject"],
                         {"identifier": {"system": PATIENT_SYSTEM, "value": PATIENT_ID}})
        self.assertAllValid(server, 1)

    async def test_several_matches_is_a_dead_letter(self) -> None:
        """Two stored ImagingStudy resources with the identifier: 412, a dead letter (refused) saying so; the next entry still goes."""
        server = self.serve()
        study = "1.2.3.60"
        for _ in range(2):
            server.add_study({"resourceType": "ImagingStudy", "status": "available",
                              "identifier": [{"system": UID_SYSTEM, "value": "urn:oid:" + study}],
                              "subject": {"reference": "Patient/x"}})
        outcomes = await self.send(self.sender(), [self.entry(notification(study)), self.entry(notification("1.2.3.61"))])
        self.assertIsInstance(outcomes[0], DeadLetter)
        self.assertEqual(outcomes[0].kind, DeadLetterKind.REFUSED)
        self.assertIn("412", outcomes[0].reason)
        self.assertEqual(outcomes[1], Delivered(0))
        self.assertEqual([r.status for r in server.received], [412, 201])

    async def test_unreadable_and_missing_files(self) -> None:
        """A file that is not a notification is a dead letter (unreadable); a missing one a retry; nothing is sent for either."""
        server = self.serve()
        bad = self.entry(b"{not json")
        missing = self.entry(notification("1.2.3.70"))
        os.unlink(missing.path)
        outcomes = await self.send(self.sender(), [bad, missing])
        self.assertIsInstance(outcomes[0], DeadLetter)
        self.assertEqual(outcomes[0].kind, DeadLetterKind.UNREADABLE)
        self.assertIsInstance(outcomes[1], Retry)
        self.assertIn("missing", outcomes[1].reason)
        self.assertEqual(server.received, [])


class FaultTests(SenderTestBase):
    """The outcome rules of the CONTRACT: retry, dead letter, destination down."""

    async def test_429_honours_retry_after(self) -> None:
        """429 with Retry-After 7: a retry not before 7 s; the next send is delivered."""
        server = self.serve(Script(steps={0: {"status": 429, "retry_after": "7"}}))
        sender = self.sender()
        (outcome,) = await self.send(sender, [self.entry(notification("1.2.3.80"))])
        self.assertEqual(outcome, Retry("FHIR PUT ImagingStudy: HTTP 429, retry after 7s", after=7.0))
        self.assertEqual(await self.send(sender, [self.entry(notification("1.2.3.80"))]), [Delivered(0)])
        self.assertEqual([r.status for r in server.received], [429, 201])

    async def test_retry_after_is_capped_by_max_delay(self) -> None:
        """A Retry-After of a day waits no longer than retry.max_delay."""
        self.serve(Script(steps={0: {"status": 429, "retry_after": "86400"}}))
        (outcome,) = await self.send(self.sender(), [self.entry(notification("1.2.3.81"))])
        self.assertIsInstance(outcome, Retry)
        self.assertEqual(outcome.after, 60.0)

    async def test_503_is_the_destination_down_with_retry_after_and_stops_the_batch(self) -> None:
        """503 with Retry-After 30 (maintenance): DestinationDown waiting 30 s, no attempt spent, the next entry not tried."""
        server = self.serve(Script(steps={0: {"status": 503, "retry_after": "30"}}))
        outcomes = await self.send(self.sender(), [self.entry(notification("1.2.3.92")), self.entry(notification("1.2.3.93"))])
        self.assertEqual(outcomes, [DestinationDown("FHIR PUT ImagingStudy: HTTP 503, retry after 30s", after=30.0)])
        self.assertEqual(len(server.received), 1)

    async def test_502_and_504_are_the_destination_down(self) -> None:
        """A proxy's 502 or 504 before a down server: the destination is down, not the notification's fault."""
        self.serve(Script(steps={0: {"status": 502}, 1: {"status": 504}}))
        sender = self.sender()
        for study in ("1.2.3.94", "1.2.3.95"):
            (outcome,) = await self.send(sender, [self.entry(notification(study))])
            self.assertIsInstance(outcome, DestinationDown)

    async def test_500_is_retried_then_delivered(self) -> None:
        """500: a retry (no dead letter), and the following attempt creates the resource."""
        server = self.serve(Script(steps={0: {"status": 500}}))
        sender = self.sender()
        (outcome,) = await self.send(sender, [self.entry(notification("1.2.3.82"))])
        self.assertEqual(outcome, Retry("FHIR PUT ImagingStudy: HTTP 500"))
        self.assertEqual(await self.send(sender, [self.entry(notification("1.2.3.82"))]), [Delivered(0)])
        self.assertEqual(len(server.studies), 1)

    async def test_408_is_retried(self) -> None:
        """408 Request Timeout is a retry."""
        self.serve(Script(steps={0: {"status": 408}}))
        (outcome,) = await self.send(self.sender(), [self.entry(notification("1.2.3.83"))])
        self.assertIsInstance(outcome, Retry)

    async def test_other_4xx_is_a_dead_letter_with_the_outcome_text_redacted(self) -> None:
        """422 whose OperationOutcome echoes the bearer token and the Patient ID: dead letter with the text, neither secret in it."""
        token = "tok-" + "z" * 20
        message = f"bad subject {PATIENT_ID}; got Authorization: Bearer {token}"
        self.serve(Script(bearer=token, steps={0: {"status": 422, "message": message}}))
        sender = self.sender(phi=True, auth=DicomWebAuth(kind="bearer", token_file=self.token_file(token)))
        (outcome,) = await self.send(sender, [self.entry(notification("1.2.3.84"))])
        self.assertIsInstance(outcome, DeadLetter)
        self.assertEqual(outcome.kind, DeadLetterKind.REFUSED)
        self.assertIn("HTTP 422", outcome.reason)
        self.assertIn("bad subject", outcome.reason)
        self.assertNotIn(token, outcome.reason)
        self.assertNotIn(PATIENT_ID, outcome.reason)

    async def test_a_resource_the_server_finds_invalid_is_a_dead_letter(self) -> None:
        """The server's 400 (validation) is a dead letter carrying the OperationOutcome's words."""
        server = self.serve()
        self.expect_invalid = True
        # A series without a UID cannot be a valid ImagingStudy (series.uid is 1..1).
        bad = notification("1.2.3.85", series=(SeriesSummary("", 1, "CT", 3),))
        (outcome,) = await self.send(self.sender(), [self.entry(bad)])
        self.assertIsInstance(outcome, DeadLetter)
        self.assertIn("HTTP 400", outcome.reason)
        self.assertIn("invalid", outcome.reason)
        self.assertEqual(len(server.invalid), 1)

    async def test_401_is_the_destination_down_and_stops_the_batch(self) -> None:
        """A refused static token: one DestinationDown, no dead letter, the rest of the batch not tried."""
        server = self.serve(Script(bearer="right"))
        sender = self.sender(auth=DicomWebAuth(kind="bearer", token_file=self.token_file("wrong")))
        outcomes = await self.send(sender, [self.entry(notification("1.2.3.86")), self.entry(notification("1.2.3.87"))])
        self.assertEqual(len(outcomes), 1)
        self.assertIsInstance(outcomes[0], DestinationDown)
        self.assertIn("401", outcomes[0].reason)
        self.assertEqual(len(server.received), 1)

    async def test_403_is_the_destination_down(self) -> None:
        """403: the destination is down (credentials), not a dead letter."""
        self.serve(Script(steps={0: {"status": 403}}))
        (outcome,) = await self.send(self.sender(), [self.entry(notification("1.2.3.88"))])
        self.assertIsInstance(outcome, DestinationDown)

    async def test_connection_refused_is_the_destination_down(self) -> None:
        """Nothing listening: one DestinationDown for the batch."""
        self.url = f"http://127.0.0.1:{free_port()}/fhir"
        outcomes = await self.send(self.sender(), [self.entry(notification("1.2.3.89")), self.entry(notification("1.2.3.90"))])
        self.assertEqual(len(outcomes), 1)
        self.assertIsInstance(outcomes[0], DestinationDown)

    async def test_slow_server_is_an_ambiguous_retry(self) -> None:
        """No answer within the timeout: a retry, ambiguous (the update may have been applied)."""
        self.serve(Script(steps={0: {"delay": 20}}))
        (outcome,) = await self.send(self.sender(timeout=0.5), [self.entry(notification("1.2.3.91"))])
        self.assertIsInstance(outcome, Retry)
        self.assertTrue(outcome.ambiguous)


class AuthTests(SenderTestBase):
    """Bearer and OAuth2 client credentials, as DICOMweb destinations have."""

    async def test_bearer_token_is_sent(self) -> None:
        """The token file's value is the Authorization header; the server accepts it."""
        server = self.serve(Script(bearer="sesame"))
        sender = self.sender(auth=DicomWebAuth(kind="bearer", token_file=self.token_file("sesame")))
        self.assertEqual(await self.send(sender, [self.entry(notification("1.2.3.100"))]), [Delivered(0)])
        self.assertEqual(server.received[0].authorization, "Bearer sesame")
        self.assertAllValid(server, 1)

    async def test_oauth2_client_credentials_token_is_fetched_once_and_used(self) -> None:
        """The token endpoint is asked once; both PUTs carry the token it issued."""
        server = self.serve(Script(token={"client_id": "gw", "secret": "s3cret", "expires_in": 300}))
        sender = self.sender(auth=DicomWebAuth(kind="oauth2", token_url=self.url + "/token", client_id="gw",
                                               client_secret_file=self.token_file("s3cret")))
        outcomes = await self.send(sender, [self.entry(notification("1.2.3.101")), self.entry(notification("1.2.3.102"))])
        self.assertEqual(outcomes, [Delivered(0)] * 2)
        self.assertEqual(server.token_requests, 1)
        (token,) = server.tokens
        self.assertEqual({r.authorization for r in server.received}, {"Bearer " + token})
        self.assertAllValid(server, 2)

    async def test_oauth2_token_revoked_is_renewed_after_a_401(self) -> None:
        """The server forgets the token: the 401 makes the sender ask a new one and the PUT goes through."""
        server = self.serve(Script(token={"client_id": "gw", "secret": "s3cret"}))
        sender = self.sender(auth=DicomWebAuth(kind="oauth2", token_url=self.url + "/token", client_id="gw",
                                               client_secret_file=self.token_file("s3cret")))
        self.assertEqual(await self.send(sender, [self.entry(notification("1.2.3.103"))]), [Delivered(0)])
        server.tokens.clear()
        self.assertEqual(await self.send(sender, [self.entry(notification("1.2.3.104"))]), [Delivered(0)])
        self.assertEqual(server.token_requests, 2)
        self.assertEqual([r.status for r in server.received], [201, 401, 201])

    async def test_oauth2_wrong_secret_is_the_destination_down(self) -> None:
        """The token endpoint refuses the client: DestinationDown (credentials), nothing PUT."""
        server = self.serve(Script(token={"client_id": "gw", "secret": "s3cret"}))
        sender = self.sender(auth=DicomWebAuth(kind="oauth2", token_url=self.url + "/token", client_id="gw",
                                               client_secret_file=self.token_file("nope")))
        (outcome,) = await self.send(sender, [self.entry(notification("1.2.3.105"))])
        self.assertIsInstance(outcome, DestinationDown)
        self.assertIn("credentials", outcome.reason)
        self.assertEqual(server.received, [])


class SearchTests(SenderTestBase):
    """subject: search, the Patient found by identifier."""

    def test_search_without_phi_is_refused_at_construction(self) -> None:
        """subject search with phi false is a configuration error naming both keys."""
        self.url = "http://127.0.0.1:1/fhir"
        with self.assertRaises(ValueError) as caught:
            self.sender(subject="search", phi=False)
        self.assertIn("phi", str(caught.exception))
        self.assertIn("search", str(caught.exception))

    async def test_found_patient_is_the_subject(self) -> None:
        """GET Patient?identifier=system|PatientID finds one Patient; the ImagingStudy's subject is Patient/<id>."""
        server = self.serve()
        patient = server.add_patient(PATIENT_SYSTEM, PATIENT_ID)
        server.add_patient(PATIENT_SYSTEM, "someone-else")
        outcomes = await self.send(self.sender(subject="search", phi=True), [self.entry(notification("1.2.3.110"))])
        self.assertEqual(outcomes, [Delivered(0)])
        search, put = server.received
        self.assertEqual((search.method, search.path), ("GET", "/fhir/r4/Patient"))
        self.assertEqual(search.query, {"identifier": [f"{PATIENT_SYSTEM}|{PATIENT_ID}"]})
        self.assertEqual(put.body["subject"], {"reference": "Patient/" + patient})
        self.assertAllValid(server, 1)

    async def test_no_patient_is_a_retry_and_nothing_is_put(self) -> None:
        """No Patient with the ID (yet): a retry without the ID in the reason; no ImagingStudy written."""
        server = self.serve()
        (outcome,) = await self.send(self.sender(subject="search", phi=True), [self.entry(notification("1.2.3.111"))])
        self.assertIsInstance(outcome, Retry)
        self.assertNotIn(PATIENT_ID, outcome.reason)
        self.assertEqual([r.method for r in server.received], ["GET"])

    async def test_several_patients_is_a_dead_letter(self) -> None:
        """Two Patients with the ID: a dead letter (which one is unknowable)."""
        server = self.serve()
        server.add_patient(PATIENT_SYSTEM, PATIENT_ID)
        server.add_patient(PATIENT_SYSTEM, PATIENT_ID)
        (outcome,) = await self.send(self.sender(subject="search", phi=True), [self.entry(notification("1.2.3.112"))])
        self.assertIsInstance(outcome, DeadLetter)
        self.assertIn("2 Patients", outcome.reason)


class ProbeTests(SenderTestBase):
    """The circuit probe: GET {url}/metadata."""

    async def test_probe_is_metadata_and_2xx_is_up(self) -> None:
        """A server that answers /metadata is up; the probe asked that path."""
        server = self.serve()
        self.assertIsNone(await self.sender().probe())
        self.assertEqual([(r.method, r.path) for r in server.received], [("GET", "/fhir/r4/metadata")])

    async def test_probe_with_refused_credentials_is_down(self) -> None:
        """Wrong token: down, naming 401."""
        self.serve(Script(bearer="right"))
        down = await self.sender(auth=DicomWebAuth(kind="bearer", token_file=self.token_file("wrong"))).probe()
        self.assertIsInstance(down, DestinationDown)
        self.assertIn("401", down.reason)

    async def test_probe_of_nothing_listening_is_down(self) -> None:
        """Connection refused: down."""
        self.url = f"http://127.0.0.1:{free_port()}/fhir"
        self.assertIsInstance(await self.sender().probe(), DestinationDown)

    async def test_probe_5xx_is_down(self) -> None:
        """A 503 from /metadata: down."""
        self.serve(Script(steps={0: {"status": 503}}))
        down = await self.sender().probe()
        self.assertIsInstance(down, DestinationDown)
        self.assertIn("503", down.reason)


class OrderTests(SenderTestBase):
    """A retried older notification never overwrites a newer one of the same study."""

    async def test_complete_retried_after_amended_is_not_sent(self) -> None:
        """complete meets a 500, amended is delivered, the complete's retry is delivered with a warning and not PUT."""
        server = self.serve(Script(steps={0: {"status": 500}}))
        sender = self.sender()
        study = "1.2.3.120"
        first, second = self.entry(notification(study)), self.entry(notification(study, sequence=2))
        outcomes = await self.send(sender, [first, second])
        self.assertIsInstance(outcomes[0], Retry)
        self.assertEqual(outcomes[1], Delivered(0))
        (retried,) = await self.send(sender, [self.entry(notification(study))])
        self.assertIsInstance(retried, Delivered)
        self.assertIn("superseded", retried.warning)
        self.assertEqual([r.status for r in server.received], [500, 201])
        (stored,) = server.study(UID_SYSTEM, "urn:oid:" + study)
        self.assertEqual(stored.resource["numberOfInstances"], 4)

    async def test_a_study_received_again_after_retention_is_sent(self) -> None:
        """Sequence 1 again but completed later (the study was purged and received anew): sent, not superseded."""
        server = self.serve()
        sender = self.sender()
        study = "1.2.3.122"
        self.assertEqual(await self.send(sender, [self.entry(notification(study, sequence=2))]), [Delivered(0)])
        later = notification(study, completed_at=1800000000.0, instances=9)
        self.assertEqual(await self.send(sender, [self.entry(later)]), [Delivered(0)])
        self.assertEqual([r.status for r in server.received], [201, 200])
        (stored,) = server.study(UID_SYSTEM, "urn:oid:" + study)
        self.assertEqual(stored.resource["numberOfInstances"], 9)

    async def test_same_sequence_again_is_sent(self) -> None:
        """A redelivery of the same notification (after a crash) is PUT again: the update is idempotent."""
        server = self.serve()
        sender = self.sender()
        for _ in range(2):
            self.assertEqual(await self.send(sender, [self.entry(notification("1.2.3.121"))]), [Delivered(0)])
        self.assertEqual([r.status for r in server.received], [201, 200])
        self.assertEqual(len(server.studies), 1)


class TLSTests(SenderTestBase):
    """https with the sink's CA and our client certificate (mutual TLS), and a server we must not trust."""

    def serve_tls(self) -> FhirResource:
        """Serve the stand-in over TLS (the test CA's server certificate; client certificates required)."""
        from twisted.internet import ssl

        from tests.support.certs import material

        m = material()
        with open(m.server_key, "rb") as key, open(m.server, "rb") as cert, open(m.ca, "rb") as ca:
            certificate = ssl.PrivateCertificate.loadPEM(key.read() + b"\n" + cert.read())
            options = certificate.options(ssl.Certificate.loadPEM(ca.read()))
        server = FhirResource(Script(), reactor)
        port = reactor.listenSSL(0, site_for(server), options, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.addCleanup(self.check_every_resource_valid, server)
        self.url = f"https://127.0.0.1:{port.getHost().port}/fhir/r4"
        self.material = m
        return server

    async def test_mutual_tls_with_the_sink_ca_delivers(self) -> None:
        """CA and client certificate configured: the server (which requires a client certificate) creates the resource."""
        server = self.serve_tls()
        m = self.material
        tls = DicomWebTLSConfig(ca=m.ca, certificate=m.client, private_key=m.client_key)
        self.assertEqual(await self.send(self.sender(tls=tls), [self.entry(notification("1.2.3.130"))]), [Delivered(0)])
        self.assertEqual([r.status for r in server.received], [201])
        self.assertAllValid(server, 1)

    async def test_a_server_of_another_ca_is_the_destination_down_with_its_tls_label(self) -> None:
        """Trusting another CA: nothing reaches the server; DestinationDown carries the TLS failure label."""
        server = self.serve_tls()
        m = self.material
        tls = DicomWebTLSConfig(ca=m.other_ca, certificate=m.client, private_key=m.client_key)
        (outcome,) = await self.send(self.sender(tls=tls), [self.entry(notification("1.2.3.131"))])
        self.assertIsInstance(outcome, DestinationDown)
        self.assertEqual(outcome.tls_failure, "unknown_ca", outcome)
        self.assertEqual(server.received, [])


class ServerProcessTests(SenderTestBase):
    """The stand-in as a process of its own (for interop tests): its request log and stored-studies snapshot."""

    async def test_process_records_requests_and_studies(self) -> None:
        """Search then create against the process; requests() and studies() show them, the resource valid."""
        from tests.support.fhir_server import FhirServerProcess

        server = FhirServerProcess(os.path.join(self.folder, "fhir"), Script(bearer="b"),
                                   patients=((PATIENT_SYSTEM, PATIENT_ID),)).start()
        self.addCleanup(server.stop)
        self.url = server.url
        sender = self.sender(subject="search", phi=True, auth=DicomWebAuth(kind="bearer", token_file=self.token_file("b")))
        self.assertEqual(await self.send(sender, [self.entry(notification("1.2.3.140"))]), [Delivered(0)])
        self.assertEqual([(r.method, r.status) for r in server.requests()], [("GET", 200), ("PUT", 201)])
        (stored,) = server.studies()
        self.assertEqual(stored.resource["subject"], {"reference": "Patient/pat1"})
        self.assertEqual(validate_imaging_study(stored.resource), "")


# -- under the real destination worker ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ScriptedFhirSink(FhirSink):
    """A FHIR sink of this test only: its sender gets the test's scripted client (the real FhirSink's registration is untouched)."""


class _ScriptedClient:
    """Answers every request with ``self.code`` (``/metadata`` with ``self.probe_code``) and records ``(method, url)``."""

    def __init__(self) -> None:
        self.code = 401
        self.probe_code = 401
        self.asked: list[tuple[str, str]] = []

    async def request(self, method: bytes, url: str, headers: Any, body: Any = None, limit: int = 0) -> Answer:
        self.asked.append((method.decode(), url))
        code = self.probe_code if url.endswith("/metadata") else self.code
        return Answer(code, {"content-type": "application/fhir+json"}, b"{}")

    def abort(self) -> None:
        """Nothing in flight."""

    def connections(self) -> int:
        return 0

    async def close(self) -> None:
        """Nothing held."""


class FhirWorkerTests(WorkerTestsMixin, SynchronousTestCase):
    """A FHIR sink refusing the gateway's credentials, then accepting them."""

    def setUp(self) -> None:
        WorkerTestsMixin.setUp(self)
        self.client = _ScriptedClient()

        def factory(config: FhirSink, context: SendContext) -> FhirSender:
            return FhirSender(config, context, client=self.client)  # type: ignore[arg-type]

        register_sender(_ScriptedFhirSink, factory)
        self.addCleanup(SENDERS.pop, _ScriptedFhirSink)

    def notification_entry(self, study: str) -> None:
        """Journal a notification record for the sink ``archive`` (its file holds the document)."""
        self.count += 1
        document = notification(study)
        path = os.path.join(self.tmp, f"n{self.count}.json")
        with open(path, "wb") as f:
            f.write(to_json(document))
        record = InstanceRecord(
            instance_id=f"n{self.count}", path=path, sop_class_uid=NOTIFICATION_SOP_CLASS,
            sop_instance_uid=document.idempotency_key, transfer_syntax_uid="", size=os.path.getsize(path),
            sha256=f"{self.count:064x}", received_at=self.clock.seconds(), correlation_id=f"c{self.count}",
            study_instance_uid=study,
        )
        self.store.add_instance(record, [NewEntry("everything", "archive")], self.clock.seconds(), 0.0)

    def test_401_opens_the_circuit_keeps_the_queue_and_probes_metadata(self) -> None:
        """Refused credentials: no attempt spent, nothing dead, the circuit open and probing /metadata; once accepted, all delivered in order."""
        for study in ("1.2.3.1", "1.2.3.2", "1.2.3.3"):
            self.notification_entry(study)
        sink = _ScriptedFhirSink(name="archive", url="http://fhir.example/r4",
                                 retry=RetryConfig(initial_delay=1.0, max_delay=10.0, jitter=0.0),
                                 circuit=CircuitConfig(failures=1))
        worker = self.worker(sink)  # type: ignore[arg-type]
        self.clock.advance(5)
        entries = self.store.entries("archive")
        self.assertEqual({e.state for e in entries}, {EntryState.QUEUED})
        self.assertEqual({e.attempts for e in entries}, {0})
        self.assertEqual(worker.status().circuit, "open")
        self.assertIn(("GET", "http://fhir.example/r4/metadata"), self.client.asked)
        self.client.code, self.client.probe_code = 201, 200
        for _ in range(30):
            self.clock.advance(5)
        self.assertEqual({e.state for e in self.store.entries("archive")}, {EntryState.DELIVERED})
        puts = [url for method, url in self.client.asked if method == "PUT"]
        delivered = [u.rpartition(":")[2] for u in puts[-3:]]
        self.assertEqual(delivered, ["1.2.3.1", "1.2.3.2", "1.2.3.3"])
