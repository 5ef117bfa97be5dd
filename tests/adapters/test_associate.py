"""Our requestor against our acceptor, joined in memory, with a fake clock.

These tests check the SCU side (:mod:`gateway.associate`) end to end without
a socket: negotiation, C-ECHO, C-STORE streamed from a file at several peer
maximum PDU lengths, rejection, and the DIMSE timeout. Real-peer checks
against DCMTK and pynetdicom are in ``tests/interop``.
"""

from __future__ import annotations

import dataclasses
import os

from pydicom.data import get_testdata_file
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from gateway.associate import (
    AssociationAborted,
    AssociationRejected,
    NoPresentationContext,
    RequestorProtocol,
    proposals_for_files,
    read_part10_header,
)
from gateway.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from gateway.sopclasses import IMPLICIT_VR_LE, VERIFICATION_SOP_CLASS
from gateway.ul.negotiate import build_request
from tests.adapters.loopback import Loopback
from tests.adapters.test_listen import AcceptorTestsMixin

CT_SMALL = get_testdata_file("CT_small.dcm", download=False)
MR_SMALL = get_testdata_file("MR_small.dcm", download=False)


class RequestorTests(AcceptorTestsMixin, SynchronousTestCase):
    """The requestor adapter, driven through a loopback to the acceptor adapter."""

    def connect_client(
        self, files: list[str], *, calling: str = "CT01", called: str = "DICOMGW", max_pdu: int = 16384
    ) -> tuple[Loopback, RequestorProtocol]:
        proposals = [(VERIFICATION_SOP_CLASS, [IMPLICIT_VR_LE])] + [
            (sop, list(ts)) for sop, ts in proposals_for_files(files)
        ]
        request = build_request(
            calling,
            called,
            proposals,
            max_pdu_length=max_pdu,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        )
        client = RequestorProtocol(request, self.clock, 30.0, max_pdu)
        server = self.factory.buildProtocol(None)
        loop = Loopback(server, client)
        loop.pump()
        return loop, client

    def test_echo_and_release(self) -> None:
        """C-ECHO over an established association returns 0x0000 and release completes."""
        loop, client = self.connect_client([])
        assoc = self.successResultOf(client.established)
        d = Deferred.fromCoroutine(assoc.echo())
        loop.pump()
        self.assertEqual(self.successResultOf(d), 0)
        released = assoc.release()
        loop.pump()
        self.successResultOf(released)
        self.assertTrue(loop.closed)

    def test_store_streams_files_at_several_peer_maximums(self) -> None:
        """Files stored at peer maximums of 4 KiB, 16 KiB and 1 MiB arrive byte-identical in the spool."""
        for max_pdu in (4096, 16384, 1048576):
            self.factory = self.make_factory()
            self.factory.acceptor_settings = dataclasses.replace(
                self.factory.acceptor_settings, max_pdu_length=max_pdu
            )
            self.factory.ul_settings = dataclasses.replace(
                self.factory.ul_settings, max_pdu_length=max_pdu
            )
            before = set(self.committed())
            loop, client = self.connect_client([CT_SMALL, MR_SMALL])
            assoc = self.successResultOf(client.established)
            self.assertEqual(assoc.peer_max_pdu, max_pdu)
            for path in (CT_SMALL, MR_SMALL):
                d = Deferred.fromCoroutine(assoc.store(path))
                loop.pump()
                result = self.successResultOf(d)
                self.assertEqual(result.status, 0, (max_pdu, path))
            new = set(self.committed()) - before
            self.assertEqual(len(new), 2)
            stored = []
            for name in new:
                with open(os.path.join(self.tmp, "instances", name), "rb") as f:
                    stored.append(f.read())
            for path in (CT_SMALL, MR_SMALL):
                header = read_part10_header(path)
                with open(path, "rb") as f:
                    f.seek(header.dataset_offset)
                    dataset = f.read()
                self.assertEqual(sum(s.endswith(dataset) for s in stored), 1, (max_pdu, path))

    def test_rejected_association_fails_with_the_rejection(self) -> None:
        """A wrong called AE title fails ``established`` with AssociationRejected(1,1,7)."""
        loop, client = self.connect_client([], called="NOBODY")
        failure = self.failureResultOf(client.established, AssociationRejected)
        rejection = failure.value.rejection
        self.assertEqual((rejection.result, rejection.source, rejection.reason), (1, 1, 7))

    def test_store_without_a_matching_context_raises(self) -> None:
        """Storing a SOP class that was not negotiated raises NoPresentationContext and sends nothing."""
        loop, client = self.connect_client([CT_SMALL])
        assoc = self.successResultOf(client.established)
        d = Deferred.fromCoroutine(assoc.store(MR_SMALL))
        self.failureResultOf(d, NoPresentationContext)

    def test_dimse_timeout_aborts_the_association(self) -> None:
        """No C-ECHO-RSP within the DIMSE timeout fails the request and aborts (A-ABORT is sent)."""
        loop, client = self.connect_client([])
        assoc = self.successResultOf(client.established)
        d = Deferred.fromCoroutine(assoc.echo())
        # Do not pump: the acceptor never sees the request, so no response comes.
        self.clock.advance(31)
        self.failureResultOf(d, AssociationAborted)
        self.assertIn(b"\x07\x00\x00\x00\x00\x04", loop.client_transport.value())
