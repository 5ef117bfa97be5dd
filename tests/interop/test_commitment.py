"""Storage Commitment through the gateway, against real peers (issue 15).

The peers:

- Orthanc (Debian ``orthanc``), which implements the Storage Commitment Push
  Model (PS3.4 Annex J) in both roles: as the requesting modality (REST
  ``POST /modalities/{id}/storage-commitment`` sends the N-ACTION, ``GET
  /storage-commitment/{transaction}`` shows the report it received) and as an
  archive that commits (its SCP answers from its own index);
- :mod:`tests.support.commitment_peer`, a pynetdicom requester and report
  receiver run as its own process, scripted where Orthanc cannot be (taken
  down and brought back on the same port, reports counted per Transaction UID).

:class:`HarnessTests` proves the harness itself against Orthanc, before any
gateway is involved: the peer's N-ACTION is answered by Orthanc, whose report
arrives on a new association with the SCP/SCU Role Selection item
(SCU-role 0, SCP-role 1: PS3.4 J.3.3.1.3, PS3.7 D.3.3.4); Orthanc's N-ACTION is
answered by the peer as SCP, whose report Orthanc reads back.  Were the peer
to misread a report (sequences, reason, roles), the gateway tests below
would prove nothing.

Against the real gateway process (short ``deadline`` and ``retry`` timings,
all configurable; every wait polls a condition with a bound):

- :class:`GatewayReportTests`: the report on a new association (event 1, both
  sequences, role selection, the well-known instance), to an Implicit-only
  requester, on the requester's open association (``report_association:
  open``), an instance never received (0x0112), a destination down past the
  deadline and a dead-lettered instance (0x0110), an unrouted instance
  (0x0110, or committed with ``unrouted: success``);
- :class:`GatewayRequestTests`: an AE not in ``modalities`` (0x0124), the same
  Transaction UID twice (same references: one report; other references: a
  failure status);
- :class:`GatewayOutageTests`: the requester down when the report is due, a
  report answered with a failure status, ``kill -9`` right after the
  N-ACTION-RSP, while a destination is pending, and after the report was
  acknowledged: each report arrives exactly once per Transaction UID;
- :class:`OrthancModalityTests`: Orthanc pushes a study to the gateway and asks
  it; ``GET /storage-commitment/{id}`` shows Success, or Failure naming the
  instance a destination dead-lettered (0x0110);
- :class:`OrthancArchiveTests`: the ``committed`` policy with Orthanc behind the
  gateway as the archive that commits.

"Exactly once" is checked after a *fence*: a later transaction asked and
reported on the same gateway, then a state snapshot taken after that report
showing no report owed (``dicom_gateway_commitment_reports_owed`` 0): the
journal has nothing left to send, so the count is final.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from twisted.trial.unittest import TestCase

from tests.support import orthanc
from tests.support.commitment_peer import (
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH,
    CommitmentPeer,
    ReceivedReport,
    RequestOutcome,
    request_commitment,
    send_archive_report,
)
from tests.support.datasets import ct_dataset
from tests.support.gateway_process import GatewayProcess, dicom_destination, folder_destination, wait_until
from tests.support.interop import ForwardTestMixin, pynetdicom_store
from tests.support.metrics import metrics_text, sample
from tests.support.orthanc import Orthanc
from tests.support.ports import free_port

#: CT Image Storage (PS3.4 Annex B): the SOP class of the instances sent.
CT = "1.2.840.10008.5.1.4.1.1.2"
#: Failure Reasons (PS3.3 C.14.1.1).
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112


class PeerMixin:
    """Start peers in a fresh folder of the test, stopped in cleanups."""

    def peer(self, ae_title: str = "MODALITY", **kwargs: object) -> CommitmentPeer:
        """Start a :class:`CommitmentPeer`, stopped in a cleanup.

        :param ae_title: its AE title.
        :param kwargs: more constructor arguments.
        :returns: the running peer.
        """
        peer = CommitmentPeer(Path(self.mktemp()).resolve() / ae_title.lower(),  # type: ignore[attr-defined]
                              ae_title, **kwargs)  # type: ignore[arg-type]
        self.addCleanup(peer.stop)  # type: ignore[attr-defined]
        return peer.start()

    def orthanc(self, aet: str = "ORTHANC") -> Orthanc:
        """Start a private Orthanc, stopped in a cleanup.

        :param aet: its AE title.
        :returns: the running Orthanc.
        """
        archive = Orthanc(Path(self.mktemp()).resolve() / aet.lower(), aet=aet)  # type: ignore[attr-defined]
        self.addCleanup(archive.stop)  # type: ignore[attr-defined]
        return archive.start()


def upload_new_ct(archive: Orthanc, folder: Path) -> tuple[str, str]:
    """Store one CT instance with fresh UIDs in Orthanc through its REST API.

    :param archive: the Orthanc process.
    :param folder: a scratch folder (created).
    :returns: ``(SOP Class UID, SOP Instance UID)``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ds = ct_dataset(64, 64)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    archive.upload(path.read_bytes())
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID)


class HarnessTests(PeerMixin, TestCase):
    """The pynetdicom peer and Orthanc understand each other in both roles (no gateway)."""

    skip = orthanc.skip_reason()
    timeout = 120

    def test_peer_request_to_orthanc_report_on_new_association_with_role_selection(self) -> None:
        """Peer asks Orthanc about one stored and one unknown instance: N-ACTION 0x0000, then event 2 with 0x0112 on a new association proposing SCU 0 / SCP 1."""
        archive = self.orthanc()
        receiver = self.peer("MODALITY")
        archive.declare_modality("MOD", "MODALITY", receiver.port)
        stored = upload_new_ct(archive, Path(self.mktemp()))
        missing = (CT, generate_uid())
        transaction = generate_uid()

        outcome = request_commitment(archive.dicom_port, transaction, [stored, missing],
                                     called_ae="ORTHANC", calling_ae="MODALITY")

        self.assertTrue(outcome.established)
        self.assertEqual(outcome.status, 0x0000)
        reports = wait_until(lambda: receiver.reports_for(transaction), 60,
                             lambda: f"Orthanc's report\n{archive.log_text()[-3000:]}")
        self.assertEqual(len(reports), 1)
        report = reports[0]
        self.assertEqual(report.event_type, 2)
        self.assertEqual(report.committed, (stored,))
        self.assertEqual(report.failed, ((*missing, NO_SUCH_OBJECT_INSTANCE),))
        self.assertEqual((report.calling_ae, report.called_ae, report.channel), ("ORTHANC", "MODALITY", "new"))
        self.assertEqual((report.affected_sop_class_uid, report.affected_sop_instance_uid),
                         (STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE))
        self.assertIn((STORAGE_COMMITMENT_PUSH, False, True), report.roles)

    def test_orthanc_request_to_peer_scp_reads_back_the_report(self) -> None:
        """Orthanc asks the peer (as SCP) about two instances; the peer fails one (0x0112); Orthanc's REST shows Failure with that one."""
        archive = self.orthanc()
        ok, bad = (CT, generate_uid()), (CT, generate_uid())
        scp = self.peer("PEERSCP", scp=True, peers={"ORTHANC": ("127.0.0.1", archive.dicom_port)},
                        fail=[bad[1]])
        archive.declare_modality("PEERSCP", "PEERSCP", scp.port)

        transaction = archive.request_commitment("PEERSCP", [ok, bad])
        result = archive.wait_commitment(transaction, 60)

        self.assertEqual(result["Status"], "Failure")
        self.assertEqual([(s["SOPClassUID"], s["SOPInstanceUID"]) for s in result["Success"]], [ok])
        self.assertEqual([(f["SOPClassUID"], f["SOPInstanceUID"], f["FailureReason"]) for f in result["Failures"]],
                         [(*bad, NO_SUCH_OBJECT_INSTANCE)])
        actions = scp.actions()
        self.assertEqual([(a["transaction_uid"], a["calling_ae"], a["action_type"]) for a in actions],
                         [(transaction, "ORTHANC", 1)])
        self.assertEqual([tuple(r) for r in actions[0]["references"]], [ok, bad])


# -- the gateway as Storage Commitment SCP ---------------------------------------------------------

#: The Storage Commitment settings of the tests: short deadlines and retries
#: (all configurable), so every wait below is bounded by seconds.
FAST_RETRY = {"initial": "300ms", "max": "1s"}


def new_cts(count: int) -> list[Dataset]:
    """Build small CT data sets with fresh UIDs (one study).

    :param count: how many.
    :returns: the data sets.
    """
    study = generate_uid()
    return [ct_dataset(32, 32, study_instance_uid=study, seed=i) for i in range(count)]


def refs_of(datasets: list[Dataset]) -> list[tuple[str, str]]:
    """The Referenced SOP Sequence items naming ``datasets``.

    :param datasets: data sets.
    :returns: ``[(SOP Class UID, SOP Instance UID), ...]``.
    """
    return [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in datasets]


class AcceptAndClose:
    """A TCP listener that accepts and closes at once, counting connections.

    It stands where a requester is down (the port answers, no DICOM), so a
    test can see the gateway's report attempts and their retries before the
    real requester comes back on the same port.

    :param port: the port to listen on.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """Accept and close until stopped."""
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def stop(self) -> None:
        """Stop listening (safe twice)."""
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


class CommitmentGatewayMixin(PeerMixin, ForwardTestMixin):
    """A gateway whose ``modalities`` table names the test's requester, with a commitment section."""

    def commitment_gateway(self, requester_port: int, *, policy: str = "delivered",
                           destinations: dict[str, Any] | None = None, forward: list[str] | None = None,
                           start: bool = True, modality_aet: str = "MODALITY",
                           more_modalities: dict[str, Any] | None = None,
                           **commitment: Any) -> GatewayProcess:
        """Configure (and start) a gateway with Storage Commitment.

        :param requester_port: the requester's port (its ``modalities`` entry ``MOD``).
        :param policy: ``commitment.policy``.
        :param destinations: the destinations (by default one folder: every instance
            routed somewhere, since an unrouted one fails with 0x0110 under any policy).
        :param forward: the route's destinations (all of ``destinations`` by default).
        :param start: start it now.
        :param modality_aet: the requester's AE title in the table.
        :param more_modalities: more ``modalities`` entries.
        :param commitment: more ``commitment`` keys (``deadline``, ``report_association``...).
        :returns: the gateway.
        """
        if destinations is None:
            destinations = {"folder": folder_destination(Path(self.mktemp()).resolve())}  # type: ignore[attr-defined]
        config: dict[str, Any] = {
            "destinations": destinations,
            "routes": [{"name": "all", "forward": forward if forward is not None else list(destinations)}],
            "modalities": {"MOD": {"ae_title": modality_aet, "host": "127.0.0.1", "port": requester_port},
                           **(more_modalities or {})},
            "commitment": {"policy": policy, "deadline": "60s", "report_deadline": "10m",
                           "retry": FAST_RETRY, **commitment},
        }
        gateway = GatewayProcess(self.mktemp(), http_port=free_port(), **config)  # type: ignore[attr-defined]
        self.addCleanup(self._stop_gateway, gateway)  # type: ignore[attr-defined]
        return gateway.start() if start else gateway

    def report_for(self, gateway: GatewayProcess, receiver: CommitmentPeer, transaction: str,
                   timeout: float = 60.0) -> ReceivedReport:
        """Wait for the first report of ``transaction`` at ``receiver``.

        :param gateway: the gateway (its log explains a timeout).
        :param receiver: the report receiver.
        :param transaction: the Transaction UID.
        :param timeout: seconds.
        :returns: the report.
        """
        reports: list[ReceivedReport] = self.wait_for(
            gateway, lambda: receiver.reports_for(transaction), timeout,
            f"the report of {transaction}\n--- receiver log ---\n{receiver.log_text()[-2000:]}")
        return reports[0]

    def ask(self, gateway: GatewayProcess, transaction: str, refs: list[tuple[str, str]], *,
            calling_ae: str = "MODALITY", **kwargs: Any) -> RequestOutcome:
        """Send an N-ACTION-RQ to the gateway from the requester's process; expect it answered.

        :param gateway: the gateway.
        :param transaction: the Transaction UID.
        :param refs: what to ask about.
        :param calling_ae: the requester's AE title.
        :param kwargs: more :func:`request_commitment` options.
        :returns: the outcome (the association was established).
        """
        outcome = request_commitment(gateway.port, transaction, refs, calling_ae=calling_ae, **kwargs)
        self.assertTrue(outcome.established, f"{outcome}\n{gateway.log_text()[-3000:]}")  # type: ignore[attr-defined]
        return outcome

    def assert_reports(self, gateway: GatewayProcess, receiver: CommitmentPeer, transaction: str,
                       count: int) -> None:
        """Assert how many reports of ``transaction`` the receiver got, explaining a mismatch.

        :param gateway: the gateway (its log goes in the message).
        :param receiver: the report receiver.
        :param transaction: the Transaction UID.
        :param count: the reports expected.
        """
        reports = receiver.reports_for(transaction)
        self.assertEqual(len(reports), count,  # type: ignore[attr-defined]
                         "\n".join(map(str, reports)) + "\n--- gateway log ---\n" + gateway.log_text()[-6000:])

    def fence(self, gateway: GatewayProcess, receiver: CommitmentPeer) -> None:
        """Ask about one new instance, wait for its report, then for the journal to owe nothing.

        Once a later transaction was reported and a state snapshot taken
        after that shows no report owed (``commitment_reports_owed`` 0), the
        gateway has nothing left to send: a report counted now is final.

        :param gateway: the gateway (with a fixed ``http.port``).
        :param receiver: the report receiver.
        """
        [ds] = new_cts(1)
        self.assertEqual(pynetdicom_store(gateway.port, [ds], calling_ae="MODALITY"), [0])  # type: ignore[attr-defined]
        transaction = generate_uid()
        self.ask(gateway, transaction, refs_of([ds]))
        report = self.report_for(gateway, receiver, transaction)
        self.wait_for(gateway, lambda: nothing_owed_since(gateway, report.received_at), 60,  # type: ignore[attr-defined]
                      "no report owed after the fence")


class GatewayReportTests(CommitmentGatewayMixin, TestCase):
    """The pynetdicom requester against the gateway: what the report says and how it travels."""

    timeout = 180

    def test_delivered_report_on_new_association_event_1_with_role_selection(self) -> None:
        """Three CT delivered to the archive: N-ACTION 0x0000, then one event-1 report listing all three, on a new association proposing SCU 0 / SCP 1."""
        receiver = self.peer("MODALITY")
        archive = self.recorder()
        gateway = self.commitment_gateway(receiver.port, destinations={
            "archive": dicom_destination(archive.port, archive.ae_title)})
        datasets = new_cts(3)
        self.assertEqual(pynetdicom_store(gateway.port, datasets, calling_ae="MODALITY"), [0, 0, 0])
        transaction = generate_uid()

        outcome = self.ask(gateway, transaction, refs_of(datasets))

        self.assertEqual(outcome.status, 0x0000)
        report = self.report_for(gateway, receiver, transaction)
        self.assertEqual(report.event_type, 1)
        self.assertEqual(set(report.committed), set(refs_of(datasets)))
        self.assertEqual(report.failed, ())
        self.assertEqual((report.calling_ae, report.called_ae, report.channel), ("DICOMGW", "MODALITY", "new"))
        self.assertEqual((report.affected_sop_class_uid, report.affected_sop_instance_uid),
                         (STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE))
        self.assertIn((STORAGE_COMMITMENT_PUSH, False, True), report.roles)
        # "delivered" means the archive acknowledged each one, before the report.
        self.assertEqual(set(archive.successes()), {ds.SOPInstanceUID for ds in datasets})
        self.fence(gateway, receiver)
        self.assert_reports(gateway, receiver, transaction, 1)

    def test_report_to_an_implicit_only_requester(self) -> None:
        """A requester accepting only Implicit VR Little Endian still gets its report (the gateway proposes both)."""
        receiver = self.peer("MODALITY", implicit_only=True)
        gateway = self.commitment_gateway(receiver.port, policy="received")
        datasets = new_cts(1)
        self.assertEqual(pynetdicom_store(gateway.port, datasets, calling_ae="MODALITY"), [0])
        transaction = generate_uid()

        self.assertEqual(self.ask(gateway, transaction, refs_of(datasets)).status, 0x0000)

        report = self.report_for(gateway, receiver, transaction)
        self.assertEqual(report.transfer_syntax, "1.2.840.10008.1.2")
        self.assertEqual(report.event_type, 1)

    def test_report_on_the_open_association_when_configured(self) -> None:
        """With report_association: open and the requester waiting on its association, the report comes on it."""
        receiver = self.peer("MODALITY")
        gateway = self.commitment_gateway(receiver.port, policy="received", report_association="open")
        datasets = new_cts(2)
        self.assertEqual(pynetdicom_store(gateway.port, datasets, calling_ae="MODALITY"), [0, 0])
        transaction = generate_uid()

        outcome = self.ask(gateway, transaction, refs_of(datasets), wait_report=30)

        self.assertEqual(outcome.status, 0x0000)
        self.assertIsNotNone(outcome.report, gateway.log_text()[-3000:])
        assert outcome.report is not None
        self.assertEqual((outcome.report.transaction_uid, outcome.report.event_type, outcome.report.channel),
                         (transaction, 1, "open"))
        self.assertEqual(set(outcome.report.committed), set(refs_of(datasets)))
        self.fence(gateway, receiver)
        self.assertEqual(receiver.reports_for(transaction), [])

    def test_instance_never_received_fails_0x0112(self) -> None:
        """One received and one never sent: event 2, the missing one in the Failed SOP Sequence with 0x0112."""
        receiver = self.peer("MODALITY")
        gateway = self.commitment_gateway(receiver.port, policy="received")
        datasets = new_cts(1)
        self.assertEqual(pynetdicom_store(gateway.port, datasets, calling_ae="MODALITY"), [0])
        missing = (CT, generate_uid())
        transaction = generate_uid()

        self.assertEqual(self.ask(gateway, transaction, [*refs_of(datasets), missing]).status, 0x0000)

        report = self.report_for(gateway, receiver, transaction)
        self.assertEqual(report.event_type, 2)
        self.assertEqual(report.committed, tuple(refs_of(datasets)))
        self.assertEqual(report.failed, ((*missing, NO_SUCH_OBJECT_INSTANCE),))

    def test_destination_down_past_the_deadline_fails_0x0110(self) -> None:
        """delivered, the only destination never answers: at the deadline, event 2 with 0x0110 for each instance."""
        receiver = self.peer("MODALITY")
        down = self.recorder()
        down.stop()  # its port, closed
        gateway = self.commitment_gateway(receiver.port, deadline="3s", destinations={
            "archive": dicom_destination(down.port, down.ae_title)})
        datasets = new_cts(2)
        self.assertEqual(pynetdicom_store(gateway.port, datasets, calling_ae="MODALITY"), [0, 0])
        transaction = generate_uid()

        self.assertEqual(self.ask(gateway, transaction, refs_of(datasets)).status, 0x0000)

        report = self.report_for(gateway, receiver, transaction)
        self.assertEqual(report.event_type, 2)
        self.assertEqual(report.committed, ())
        self.assertEqual(report.failures, {ds.SOPInstanceUID: PROCESSING_FAILURE for ds in datasets})
        self.assert_reports(gateway, receiver, transaction, 1)

    def test_dead_lettered_instance_fails_0x0110_the_other_is_committed(self) -> None:
        """The archive refuses one instance's SOP class (0x0122, dead letter at once): event 2, that one 0x0110, the other committed."""
        receiver = self.peer("MODALITY")
        datasets = new_cts(2)
        refused = str(datasets[1].SOPInstanceUID)
        archive = self.recorder(status_for=lambda uid, _n: 0x0122 if uid == refused else 0x0000)
        gateway = self.commitment_gateway(receiver.port, destinations={
            "archive": dicom_destination(archive.port, archive.ae_title)})
        self.assertEqual(pynetdicom_store(gateway.port, datasets, calling_ae="MODALITY"), [0, 0])
        transaction = generate_uid()

        self.assertEqual(self.ask(gateway, transaction, refs_of(datasets)).status, 0x0000)

        report = self.report_for(gateway, receiver, transaction)
        self.assertEqual(report.event_type, 2)
        self.assertEqual(report.committed, tuple(refs_of(datasets[:1])))
        self.assertEqual(report.failures, {refused: PROCESSING_FAILURE})


    def test_unrouted_instance_fails_0x0110_and_with_unrouted_success_is_committed(self) -> None:
        """An instance no route takes: 0x0110 by default (the modality keeps its copy); committed with unrouted: success."""
        receiver = self.peer("MODALITY")
        for unrouted, expected in (("fail", 2), ("success", 1)):
            gateway = self.commitment_gateway(receiver.port, policy="received", unrouted=unrouted)
            gateway.rewrite_config(routes=[{"name": "other", "match": {"calling_ae_title": "OTHER"},
                                            "forward": ["folder"]}])
            gateway.stop()
            gateway.start()
            datasets = new_cts(1)
            self.assertEqual(pynetdicom_store(gateway.port, datasets, calling_ae="MODALITY"), [0])
            transaction = generate_uid()

            self.assertEqual(self.ask(gateway, transaction, refs_of(datasets)).status, 0x0000)

            report = self.report_for(gateway, receiver, transaction)
            self.assertEqual(report.event_type, expected, unrouted)
            if unrouted == "fail":
                self.assertEqual(report.failures, {datasets[0].SOPInstanceUID: PROCESSING_FAILURE})
            else:
                self.assertEqual(report.committed, tuple(refs_of(datasets)))
            gateway.stop()


class GatewayRequestTests(CommitmentGatewayMixin, TestCase):
    """Who may ask, and the same Transaction UID asked twice."""

    timeout = 180

    def test_ae_not_in_the_modalities_table_is_refused_0x0124(self) -> None:
        """A requester whose AE title is not in the table: N-ACTION-RSP 0x0124 (Refused: not authorized), and no report to anyone."""
        receiver = self.peer("MODALITY")
        gateway = self.commitment_gateway(receiver.port, policy="received")
        datasets = new_cts(1)
        self.assertEqual(pynetdicom_store(gateway.port, datasets, calling_ae="STRANGER"), [0])
        transaction = generate_uid()

        outcome = self.ask(gateway, transaction, refs_of(datasets), calling_ae="STRANGER")

        self.assertEqual(outcome.status, 0x0124)
        self.fence(gateway, receiver)
        self.assertEqual(receiver.reports_for(transaction), [])

    def test_ae_in_the_table_but_not_allowed_is_refused_0x0124(self) -> None:
        """allowed_ae_titles narrows the table: a listed AE that matches no pattern is refused 0x0124, an allowed one is answered."""
        receiver = self.peer("MODALITY")
        other = self.peer("CT2")
        gateway = self.commitment_gateway(receiver.port, policy="received", allowed_ae_titles=["MOD*"],
                                          more_modalities={"CT2": {"ae_title": "CT2", "host": "127.0.0.1",
                                                                   "port": other.port}})
        datasets = new_cts(1)
        self.assertEqual(pynetdicom_store(gateway.port, datasets, calling_ae="CT2"), [0])
        refused, allowed = generate_uid(), generate_uid()

        self.assertEqual(self.ask(gateway, refused, refs_of(datasets), calling_ae="CT2").status, 0x0124)
        self.assertEqual(self.ask(gateway, allowed, refs_of(datasets)).status, 0x0000)

        self.assertEqual(self.report_for(gateway, receiver, allowed).event_type, 1)
        self.fence(gateway, receiver)
        self.assertEqual(other.reports(), [])
        self.assert_reports(gateway, receiver, refused, 0)

    def test_malformed_requests_get_their_failure_status_and_no_report(self) -> None:
        """Action type 2 -> 0x0123, another Requested SOP Instance -> 0x0112, no Transaction UID or no references -> 0x0115 (PS3.7 10.1.4.1.10, C.5); none is reported."""
        receiver = self.peer("MODALITY")
        gateway = self.commitment_gateway(receiver.port, policy="received")
        datasets = new_cts(1)
        self.assertEqual(pynetdicom_store(gateway.port, datasets, calling_ae="MODALITY"), [0])
        cases: list[tuple[str, list[tuple[str, str]], dict[str, Any], int]] = [
            (generate_uid(), refs_of(datasets), {"action_type": 2}, 0x0123),
            (generate_uid(), refs_of(datasets), {"requested_instance": "1.2.3"}, 0x0112),
            (generate_uid(), refs_of(datasets), {"omit_transaction": True}, 0x0115),
            (generate_uid(), [], {}, 0x0115),
        ]

        statuses = [self.ask(gateway, transaction, refs, **kwargs).status
                    for transaction, refs, kwargs, _ in cases]

        self.assertEqual(statuses, [status for *_, status in cases])
        self.fence(gateway, receiver)
        for transaction, *_ in cases:
            self.assert_reports(gateway, receiver, transaction, 0)

    def test_duplicate_transaction_uid_same_references_one_report(self) -> None:
        """The same N-ACTION twice: both answered 0x0000, one report."""
        receiver = self.peer("MODALITY")
        gateway = self.commitment_gateway(receiver.port, policy="received")
        datasets = new_cts(2)
        self.assertEqual(pynetdicom_store(gateway.port, datasets, calling_ae="MODALITY"), [0, 0])
        transaction = generate_uid()

        first = self.ask(gateway, transaction, refs_of(datasets))
        second = self.ask(gateway, transaction, refs_of(datasets))

        self.assertEqual((first.status, second.status), (0x0000, 0x0000))
        self.report_for(gateway, receiver, transaction)
        self.fence(gateway, receiver)
        self.assert_reports(gateway, receiver, transaction, 1)

    def test_duplicate_transaction_uid_other_references_fails(self) -> None:
        """The same Transaction UID with other references: the second N-ACTION fails, the first one's report is unchanged."""
        receiver = self.peer("MODALITY")
        gateway = self.commitment_gateway(receiver.port, policy="received")
        datasets = new_cts(2)
        self.assertEqual(pynetdicom_store(gateway.port, datasets, calling_ae="MODALITY"), [0, 0])
        transaction = generate_uid()

        first = self.ask(gateway, transaction, refs_of(datasets[:1]))
        second = self.ask(gateway, transaction, refs_of(datasets))

        self.assertEqual(first.status, 0x0000)
        # PS3.3 C.14.1.1: a Transaction UID names one request; its reason 0x0131 belongs in a
        # report, and that UID's report is the first request's, so this N-ACTION is refused:
        # 0x0115 Invalid argument value (PS3.7 C.5), as gateway/commitment/scp.py decides.
        self.assertEqual(second.status, 0x0115)
        report = self.report_for(gateway, receiver, transaction)
        self.assertEqual(report.committed, tuple(refs_of(datasets[:1])))
        self.fence(gateway, receiver)
        self.assert_reports(gateway, receiver, transaction, 1)


class ArchiveReportInboundTests(CommitmentGatewayMixin, TestCase):
    """An archive's N-EVENT-REPORT the gateway cannot match gets the status PS3.7 names for it."""

    timeout = 120

    def test_unknown_transaction_uid_is_answered_0x0115(self) -> None:
        """An archive reports on a Transaction UID the gateway never used: the association (role selection SCU 0 / SCP 1) is accepted, the N-EVENT-REPORT-RSP is 0x0115."""
        receiver = self.peer("MODALITY")
        archive = self.recorder(ae_title="ARCHIVE")
        gateway = self.commitment_gateway(receiver.port, policy="committed", destinations={
            "archive": dicom_destination(archive.port, "ARCHIVE", storage_commitment=True)})

        outcome = send_archive_report(gateway.port, generate_uid(), [(CT, generate_uid())], calling_ae="ARCHIVE")

        self.assertTrue(outcome.established, gateway.log_text()[-3000:])
        self.assertIn(STORAGE_COMMITMENT_PUSH, [a for a, _ in outcome.accepted_contexts])
        # PS3.7 10.1.1.1.8 and C.5: 0x0115 Invalid argument value (the Transaction UID is not one
        # of ours; the issue: "0x0115 for an unknown Transaction UID").
        self.assertEqual(outcome.status, 0x0115, gateway.log_text()[-3000:])


class GatewayOutageTests(CommitmentGatewayMixin, TestCase):
    """The requester down when the report is due, and ``kill -9`` of the gateway at three points."""

    timeout = 240

    def test_requester_down_when_the_report_is_due_is_retried_and_delivered_once(self) -> None:
        """The requester's port accepts and closes: the gateway tries, retries; once the requester is back the report arrives, once."""
        receiver = CommitmentPeer(Path(self.mktemp()).resolve() / "modality", "MODALITY")
        self.addCleanup(receiver.stop)
        gateway = self.commitment_gateway(receiver.port, policy="received")
        datasets = new_cts(2)
        self.assertEqual(pynetdicom_store(gateway.port, datasets, calling_ae="MODALITY"), [0, 0])
        down = AcceptAndClose(receiver.port)
        self.addCleanup(down.stop)
        transaction = generate_uid()

        self.assertEqual(self.ask(gateway, transaction, refs_of(datasets)).status, 0x0000)

        self.wait_for(gateway, lambda: down.connections >= 2, 60, "a report attempt and a retry")
        down.stop()
        receiver.start()
        report = self.report_for(gateway, receiver, transaction)
        self.assertEqual((report.event_type, set(report.committed)), (1, set(refs_of(datasets))))
        self.fence(gateway, receiver)
        self.assert_reports(gateway, receiver, transaction, 1)

    def test_report_past_report_deadline_is_a_dead_letter_replayed_by_commitment_retry(self) -> None:
        """The requester stays down past report_deadline: the report is kept dead (show says so, the gauge counts it); 'commitment retry' with the requester back delivers it once."""
        receiver = CommitmentPeer(Path(self.mktemp()).resolve() / "modality", "MODALITY")
        self.addCleanup(receiver.stop)
        gateway = self.commitment_gateway(receiver.port, policy="received", deadline="2s", report_deadline="4s")
        datasets = new_cts(1)
        self.assertEqual(pynetdicom_store(gateway.port, datasets, calling_ae="MODALITY"), [0])
        transaction = generate_uid()
        asked_at = time.time()
        self.assertEqual(self.ask(gateway, transaction, refs_of(datasets)).status, 0x0000)

        def dead() -> bool:
            result = gateway.cli("commitment", "show", transaction, "--json")
            return result.returncode == 0 and result.json().get("state") == "dead"

        self.wait_for(gateway, dead, 60, f"{transaction} dead after report_deadline")
        self.wait_for(gateway, lambda: dead_counted_since(gateway, asked_at), 60, "reports_dead 1")
        receiver.start()
        result = gateway.cli("commitment", "retry", transaction)
        self.assertEqual(result.returncode, 0, result.describe())

        report = self.report_for(gateway, receiver, transaction)
        self.assertEqual((report.event_type, report.committed), (1, tuple(refs_of(datasets))))
        self.fence(gateway, receiver)
        self.assert_reports(gateway, receiver, transaction, 1)

    def test_report_answered_with_a_failure_status_is_sent_again_unchanged(self) -> None:
        """The requester answers the first N-EVENT-REPORT with 0x0110: the gateway sends the same report again, and stops once answered 0x0000."""
        receiver = self.peer("MODALITY", report_statuses=[PROCESSING_FAILURE])
        gateway = self.commitment_gateway(receiver.port, policy="received")
        datasets = new_cts(2)
        self.assertEqual(pynetdicom_store(gateway.port, datasets, calling_ae="MODALITY"), [0, 0])
        transaction = generate_uid()

        self.assertEqual(self.ask(gateway, transaction, refs_of(datasets)).status, 0x0000)

        reports = self.wait_for(gateway, lambda: len(r := receiver.reports_for(transaction)) >= 2 and r, 60,
                                "the report sent again")
        self.assertEqual([r.status for r in reports[:2]], [PROCESSING_FAILURE, 0x0000])
        self.assertEqual(reports[0].committed, reports[1].committed)
        self.assertEqual(reports[0].failed, reports[1].failed)
        self.fence(gateway, receiver)
        self.assert_reports(gateway, receiver, transaction, 2)

    def test_kill_9_right_after_the_n_action_rsp(self) -> None:
        """kill -9 as soon as the N-ACTION-RSP came (the requester down, so nothing was sent): after the restart the report arrives once."""
        receiver = CommitmentPeer(Path(self.mktemp()).resolve() / "modality", "MODALITY")
        self.addCleanup(receiver.stop)
        gateway = self.commitment_gateway(receiver.port, policy="received")
        datasets = new_cts(3)
        self.assertEqual(pynetdicom_store(gateway.port, datasets, calling_ae="MODALITY"), [0, 0, 0])
        transaction = generate_uid()

        self.assertEqual(self.ask(gateway, transaction, refs_of(datasets)).status, 0x0000)
        gateway.kill()
        receiver.start()
        gateway.start()

        report = self.report_for(gateway, receiver, transaction)
        self.assertEqual((report.event_type, set(report.committed)), (1, set(refs_of(datasets))))
        self.fence(gateway, receiver)
        self.assert_reports(gateway, receiver, transaction, 1)

    def test_kill_9_while_a_destination_is_pending(self) -> None:
        """delivered, the archive down: kill -9 after the N-ACTION; restart, archive back: one event-1 report."""
        receiver = self.peer("MODALITY")
        archive = self.recorder()
        archive.stop()
        gateway = self.commitment_gateway(receiver.port, destinations={
            "archive": dicom_destination(archive.port, archive.ae_title)})
        datasets = new_cts(3)
        self.assertEqual(pynetdicom_store(gateway.port, datasets, calling_ae="MODALITY"), [0, 0, 0])
        transaction = generate_uid()
        self.assertEqual(self.ask(gateway, transaction, refs_of(datasets)).status, 0x0000)

        gateway.kill()
        self.assertEqual(receiver.reports_for(transaction), [], "reported before the archive had anything")
        archive.start()
        gateway.start()

        report = self.report_for(gateway, receiver, transaction)
        self.assertEqual((report.event_type, set(report.committed)), (1, set(refs_of(datasets))))
        self.assertEqual(set(archive.successes()), {ds.SOPInstanceUID for ds in datasets})
        self.fence(gateway, receiver)
        self.assert_reports(gateway, receiver, transaction, 1)

    def test_kill_9_after_the_report_was_sent(self) -> None:
        """kill -9 once the report was received and acknowledged: after the restart it is not sent again."""
        receiver = self.peer("MODALITY")
        gateway = self.commitment_gateway(receiver.port, policy="received")
        datasets = new_cts(2)
        self.assertEqual(pynetdicom_store(gateway.port, datasets, calling_ae="MODALITY"), [0, 0])
        transaction = generate_uid()
        self.assertEqual(self.ask(gateway, transaction, refs_of(datasets)).status, 0x0000)
        report = self.report_for(gateway, receiver, transaction)
        # The acknowledgement is journaled just after the N-EVENT-REPORT-RSP: wait until
        # the journal shows nothing owed, so the kill falls after it (a kill in the
        # window before is the at-least-once case: the report may be sent again).
        self.wait_for(gateway, lambda: nothing_owed_since(gateway, report.received_at), 60,
                      f"{transaction} journaled as reported")

        gateway.kill()
        gateway.start()

        self.fence(gateway, receiver)
        self.assert_reports(gateway, receiver, transaction, 1)


def dead_counted_since(gateway: GatewayProcess, since: float) -> bool:
    """Tell whether a state snapshot taken after ``since`` counts one dead report.

    :param gateway: a gateway with a fixed ``http.port``.
    :param since: a ``time.time()``.
    :returns: ``True`` once ``dicom_gateway_commitment_reports_dead`` is 1 in a later snapshot.
    """
    try:
        text = metrics_text(int(gateway.config["http"]["port"]))
    except OSError:
        return False
    return (sample(text, "dicom_gateway_state_snapshot_timestamp_seconds") > since
            and sample(text, "dicom_gateway_commitment_reports_dead") == 1)


def nothing_owed_since(gateway: GatewayProcess, since: float) -> bool:
    """Tell whether a state snapshot taken after ``since`` shows no report owed.

    ``dicom_gateway_commitment_reports_owed`` counts the journal's open
    transactions at the snapshot's time
    (``dicom_gateway_state_snapshot_timestamp_seconds``); a snapshot older
    than ``since`` may predate the N-ACTION, so it does not count.

    :param gateway: a gateway with a fixed ``http.port``.
    :param since: a ``time.time()``.
    :returns: ``True`` once a later snapshot shows 0 owed.
    """
    try:
        text = metrics_text(int(gateway.config["http"]["port"]))
    except OSError:
        return False
    return (sample(text, "dicom_gateway_state_snapshot_timestamp_seconds") > since
            and "dicom_gateway_commitment_reports_owed" in text
            and sample(text, "dicom_gateway_commitment_reports_owed") == 0)


class OrthancModalityTests(CommitmentGatewayMixin, TestCase):
    """Orthanc as the requesting modality: C-STORE to the gateway, then its REST storage-commitment call."""

    skip = orthanc.skip_reason()
    timeout = 180

    def modality(self, archive_port: int, aet: str) -> tuple[Orthanc, GatewayProcess]:
        """Start Orthanc (AE ``ORTHANC``) and a gateway that knows it as a modality and forwards to ``archive_port``.

        :param archive_port: the destination's port.
        :param aet: the destination's AE title.
        :returns: (Orthanc, the gateway).
        """
        modality = self.orthanc("ORTHANC")
        gateway = self.commitment_gateway(modality.dicom_port, modality_aet="ORTHANC", destinations={
            "archive": dicom_destination(archive_port, aet)})
        modality.declare_modality("GW", "DICOMGW", gateway.port)
        return modality, gateway

    def send_from_orthanc(self, modality: Orthanc, datasets: list[Dataset]) -> None:
        """Upload ``datasets`` to Orthanc and have it C-STORE them to the gateway.

        :param modality: Orthanc.
        :param datasets: the instances.
        """
        folder = Path(self.mktemp())
        folder.mkdir()
        ids = []
        for ds in datasets:
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            ids.append(modality.upload(path.read_bytes()))
        job = modality.store("GW", ids)
        self.assertEqual(job["Content"].get("FailedInstancesCount", 0), 0, job)

    def test_orthanc_asks_the_gateway_and_reads_success(self) -> None:
        """delivered to a storescp: Orthanc's storage-commitment result is Success with every instance."""
        storescp = self.storescp("archive")
        modality, gateway = self.modality(storescp.port, storescp.ae_title)
        datasets = new_cts(3)
        self.send_from_orthanc(modality, datasets)

        transaction = modality.request_commitment("GW", refs_of(datasets))
        result = modality.wait_commitment(transaction, 90)

        self.assertEqual(result["Status"], "Success", f"{result}\n{gateway.log_text()[-3000:]}")
        self.assertEqual({(s["SOPClassUID"], s["SOPInstanceUID"]) for s in result["Success"]},
                         set(refs_of(datasets)))
        self.assertEqual(result["Failures"], [])
        self.assertEqual(result.get("RemoteAET"), "DICOMGW")

    def test_orthanc_reads_failure_for_an_instance_the_destination_dead_lettered(self) -> None:
        """The archive refuses one instance's SOP class (0x0122): Orthanc's result is Failure, that instance 0x0110, the others Success."""
        datasets = new_cts(3)
        refused = str(datasets[0].SOPInstanceUID)
        archive = self.recorder(status_for=lambda uid, _n: 0x0122 if uid == refused else 0x0000)
        modality, gateway = self.modality(archive.port, archive.ae_title)
        self.send_from_orthanc(modality, datasets)
        self.wait_for(gateway, lambda: len(gateway.dead_letters()) == 1, 60, "the refused instance's dead letter")

        transaction = modality.request_commitment("GW", refs_of(datasets))
        result = modality.wait_commitment(transaction, 90)

        self.assertEqual(result["Status"], "Failure", f"{result}\n{gateway.log_text()[-3000:]}")
        self.assertEqual([(f["SOPInstanceUID"], f["FailureReason"]) for f in result["Failures"]],
                         [(refused, PROCESSING_FAILURE)])
        self.assertEqual({s["SOPInstanceUID"] for s in result["Success"]},
                         {str(ds.SOPInstanceUID) for ds in datasets[1:]})


class OrthancArchiveTests(CommitmentGatewayMixin, TestCase):
    """Orthanc as a committing archive behind the gateway (``committed``): its report decides the modality's."""

    skip = orthanc.skip_reason()
    timeout = 180

    def test_committed_policy_waits_for_orthancs_commitment(self) -> None:
        """policy committed, Orthanc flagged storage_commitment: the gateway asks Orthanc, which reports to it; the modality's report is event 1."""
        receiver = self.peer("MODALITY")
        archive = self.orthanc("ARCHIVE")
        gateway = self.commitment_gateway(receiver.port, policy="committed", deadline="90s", destinations={
            "archive": dicom_destination(archive.dicom_port, "ARCHIVE", storage_commitment=True,
                                         commitment_timeout="60s")})
        # Orthanc sends its report to the requester it finds by AE title (on a new association).
        archive.declare_modality("GW", "DICOMGW", gateway.port)
        datasets = new_cts(3)
        self.assertEqual(pynetdicom_store(gateway.port, datasets, calling_ae="MODALITY"), [0, 0, 0])
        transaction = generate_uid()

        self.assertEqual(self.ask(gateway, transaction, refs_of(datasets)).status, 0x0000)

        report = self.report_for(gateway, receiver, transaction, timeout=120)
        self.assertEqual(report.event_type, 1, f"{report}\n{archive.log_text()[-3000:]}")
        self.assertEqual(set(report.committed), set(refs_of(datasets)))
        # Orthanc stored the instances, and was asked about them by the gateway.
        self.assertEqual({archive.find_instance(str(ds.SOPInstanceUID)) is not None for ds in datasets}, {True})
        self.assertIn("storage commitment", archive.log_text().lower())
