"""A relayed C-MOVE through a real gateway service, between real pynetdicom peers (issue 16).

Three pynetdicom AEs (test-only, in their own threads, on loopback): the
*source*, a Study Root Q/R SCP that answers the gateway's locating C-FIND at
IMAGE level and performs C-MOVE by sending its instances to the address the
Move Destination names (the gateway's own listener for ``GW``); the *move
destination* ``WS1`` (:class:`tests.support.scp.RecordingScp`), an entry of
the gateway's ``modalities`` table; and the *requester*, which sends the
C-MOVE-RQ to the gateway. The gateway is a :class:`GatewayService` over the
memory store on the global reactor (as :mod:`tests.adapters.test_service`).
"""

from __future__ import annotations

import copy
import hashlib
import threading
from typing import Any

from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.adapters.test_service import ServiceTestCase
from tests.support.ports import free_port
from tests.support.scp import RecordingScp

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_UID = "1.2.826.0.1.3680043.8.498.16"
#: Instances in the study (small: the interop suite moves 200 with DCMTK).
COUNT = 12


def study() -> list[Dataset]:
    """COUNT CT instances of one study (pydicom's CT_small.dcm with new UIDs)."""
    base = dcmread(get_testdata_file("CT_small.dcm", download=False))
    instances = []
    for i in range(COUNT):
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID = STUDY_UID
        ds.SeriesInstanceUID = STUDY_UID + ".1"
        ds.SOPInstanceUID = f"{STUDY_UID}.1.{i + 1}"
        ds.file_meta = copy.deepcopy(base.file_meta)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        instances.append(ds)
    return instances


class QRSource:
    """A pynetdicom Study Root Q/R SCP (FIND at IMAGE level, MOVE to the AE titles it knows)."""

    def __init__(self, instances: list[Dataset], known: dict[str, tuple[str, int]]) -> None:
        from pynetdicom import AE, evt

        self.instances = instances
        self.known = known
        self.port = free_port("127.0.0.1")
        self.moves: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        #: After this many sub-operations the archive holds until C-CANCEL arrives (or ``go`` is set).
        self.hold_after: int | None = None
        self.go = threading.Event()
        self.cancelled = threading.Event()
        ae = AE("ARCHIVE")
        ae.add_supported_context(STUDY_ROOT_FIND)
        ae.add_supported_context(STUDY_ROOT_MOVE)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False,
            evt_handlers=[(evt.EVT_C_FIND, self.on_find), (evt.EVT_C_MOVE, self.on_move)],
        )

    def stop(self) -> None:
        """Shut the server down."""
        self.server.shutdown()

    def matching(self, query: Dataset) -> list[Dataset]:
        """The instances of the queried study."""
        wanted = str(query.get("StudyInstanceUID", "") or "")
        return [ds for ds in self.instances if not wanted or ds.StudyInstanceUID == wanted]

    def on_find(self, event: Any) -> Any:
        """IMAGE-level matches with the UIDs asked for (pynetdicom thread)."""
        query = event.identifier
        for ds in self.matching(query):
            match = Dataset()
            match.QueryRetrieveLevel = "IMAGE"
            match.StudyInstanceUID = ds.StudyInstanceUID
            match.SeriesInstanceUID = ds.SeriesInstanceUID
            match.SOPInstanceUID = ds.SOPInstanceUID
            match.SOPClassUID = ds.SOPClassUID
            yield 0xFF00, match

    def on_move(self, event: Any) -> Any:
        """Send the study to the Move Destination's address (pynetdicom thread)."""
        destination = event.move_destination
        name = destination.decode().strip() if isinstance(destination, bytes) else str(destination).strip()
        with self.lock:
            self.moves.append((name, int(event.request.MessageID)))
        if name not in self.known:
            yield None, None
            return
        host, port = self.known[name]
        yield host, port
        matches = self.matching(event.identifier)
        yield len(matches)
        for sent, ds in enumerate(matches):
            # pynetdicom's is_cancelled consumes the C-CANCEL it reports: read it once per turn.
            cancelled = event.is_cancelled
            if self.hold_after is not None and sent >= self.hold_after:
                # A slow archive: wait for the C-CANCEL (pynetdicom records it from its DIMSE thread).
                while not cancelled and not self.go.wait(0.05):
                    cancelled = event.is_cancelled
            if cancelled:
                self.cancelled.set()
                yield 0xFE00, None
                return
            yield 0xFF00, ds


def digest(ds: Dataset) -> str:
    """SHA-256 of the data set as the source encodes it (Explicit VR Little Endian)."""
    from pynetdicom.dsutils import encode

    return hashlib.sha256(encode(ds, False, True)).hexdigest()


def request_move(port: int, destination: str, cancel_after: int | None = None) -> list[tuple[int, Any]]:
    """The requester: a Study Root C-MOVE of the study to ``destination`` through the gateway (blocking).

    :param cancel_after: send C-CANCEL-RQ after this many pending responses.
    """
    from pynetdicom import AE

    ae = AE("VIEWER")
    ae.add_requested_context(STUDY_ROOT_MOVE, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="GW")
    if not assoc.is_established:
        raise RuntimeError("the gateway refused the requester's association")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = STUDY_UID
    responses = []
    try:
        for status, identifier in assoc.send_c_move(query, destination, STUDY_ROOT_MOVE, msg_id=5):
            if status is not None:
                responses.append((int(status.Status), status))
                if cancel_after is not None and len(responses) == cancel_after:
                    assoc.send_c_cancel(5, query_model=STUDY_ROOT_MOVE)
    finally:
        assoc.release()
    return responses


class RelayedMoveTests(ServiceTestCase):
    """C-MOVE: ``relay`` (source -> gateway custody -> move destination) and ``pass_through``."""

    def setUp(self) -> None:
        """The move destination WS1 and the source; the gateway is started by each test."""
        super().setUp()
        self.instances = study()
        self.destination = RecordingScp("WS1", abstract_syntaxes=(CTImageStorage,)).start()
        self.addCleanup(self.destination.stop)
        self.source = QRSource(self.instances, {})
        self.addCleanup(self.source.stop)

    def text(self, mode: str = "relay") -> str:
        """The gateway's configuration file (``retrieve.mode`` ``mode``)."""
        return (
            "ae_title: GW\n"
            "listen:\n  - {host: 127.0.0.1, port: 0, name: qr}\n"
            "spool: {path: spool, min_free: 0, resume_margin: 0}\n"
            f"destinations:\n  archive: {{ae_title: ARCHIVE, host: 127.0.0.1, port: {self.source.port}}}\n"
            f"modalities:\n  ws1: {{ae_title: WS1, host: 127.0.0.1, port: {self.destination.port}}}\n"
            f"retrieve: {{sources: [archive], mode: {mode}, timeout: 60s}}\n"
        )

    async def test_relayed_move_delivers_every_instance_byte_identical(self) -> None:
        """Every instance reaches WS1 once, byte-identical; pendings add up; the final is success with all completed."""
        service = self.start(self.text())
        port = service.listeners[0].port.getHost().port
        self.source.known["GW"] = ("127.0.0.1", port)
        responses = await deferToThread(request_move, port, "WS1")
        *pendings, (final_status, final) = responses
        self.assertEqual(final_status, 0x0000, final)
        self.assertEqual((final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations), (COUNT, 0))
        for status, pending in pendings:
            self.assertEqual(status, 0xFF00)
            total = sum(int(getattr(pending, k, 0) or 0) for k in (
                "NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
                "NumberOfFailedSuboperations", "NumberOfWarningSuboperations"))
            self.assertEqual(total, COUNT)
        received = {r.sop_instance_uid: r.digest for r in self.destination.receipts}
        self.assertEqual(received, {ds.SOPInstanceUID: digest(ds) for ds in self.instances})
        self.assertEqual(len(self.destination.receipts), COUNT)
        # The source was asked to move to the gateway itself, with the journal's Message ID.
        [(moved_to, _)] = self.source.moves
        self.assertEqual(moved_to, "GW")

    async def test_unknown_move_destination_is_a801(self) -> None:
        """A Move Destination not in the modalities table: 0xA801, and the source is never asked to move."""
        service = self.start(self.text())
        port = service.listeners[0].port.getHost().port
        responses = await deferToThread(request_move, port, "NOBODY")
        self.assertEqual([status for status, _ in responses], [0xA801])
        self.assertEqual(self.source.moves, [])
        await deferLater(reactor, 0, lambda: None)

    async def test_pass_through_has_the_source_move_straight_to_the_destination(self) -> None:
        """``pass_through``: the source is asked to move to WS1 itself; the gateway relays its responses and holds nothing."""
        service = self.start(self.text("pass_through"))
        port = service.listeners[0].port.getHost().port
        self.source.known["WS1"] = (self.destination.host, self.destination.port)
        responses = await deferToThread(request_move, port, "WS1")
        final_status, final = responses[-1]
        self.assertEqual(final_status, 0x0000, final)
        self.assertEqual([moved_to for moved_to, _ in self.source.moves], ["WS1"])
        self.assertEqual(sorted(r.sop_instance_uid for r in self.destination.receipts), sorted(ds.SOPInstanceUID for ds in self.instances))
        self.assertEqual([e for e in self.store.entries()], [])

    async def test_cancel_reaches_the_source_and_ends_fe00(self) -> None:
        """C-CANCEL-RQ from the requester mid-move reaches the (slow) source; the final response is 0xFE00 with the counts so far."""
        service = self.start(self.text())
        port = service.listeners[0].port.getHost().port
        self.source.known["GW"] = ("127.0.0.1", port)
        self.source.hold_after = 2
        responses = await deferToThread(request_move, port, "WS1", 1)
        final_status, final = responses[-1]
        self.assertEqual(final_status, 0xFE00, final)
        self.assertLess(int(final.NumberOfCompletedSuboperations), COUNT)
        # The gateway's C-CANCEL reaches the source, which ends its move (within a second or two of pace).
        for _ in range(100):
            if self.source.cancelled.is_set():
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertTrue(self.source.cancelled.is_set())
        # Then the gateway releases its association to the source (nothing left open at the end of the test).
        for _ in range(100):
            if not self.source.server.active_associations:
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(self.source.server.active_associations, [])


class SqliteRelayedMoveTests(RelayedMoveTests):
    """The same C-MOVEs over the SQLite journal (correlation and counts in SQL, not only in the memory store)."""

    def start(self, text: str = "", store: Any = None) -> Any:  # type: ignore[override]
        """Start the service over a SQLite journal in the temporary folder."""
        import os

        from gateway.queue.sqlite import SqliteQueueStore

        sqlite = SqliteQueueStore(os.path.join(self.tmp, "queue.sqlite"))
        self.addCleanup(sqlite.close)
        return super().start(text, store=sqlite)  # type: ignore[arg-type]
