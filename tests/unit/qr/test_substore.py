"""Tests for :mod:`gateway.qr.substore`: C-GET sub-operation C-STORE-RQs on the requester's association, checked as bytes."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from gateway.associate import NoPresentationContext
from gateway.dimse import commands as dimse
from gateway.qr import substore
from gateway.ul.negotiate import AcceptedContext

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

CONTEXTS = {
    1: AcceptedContext(1, STUDY_GET, IMPLICIT_LE, True, False),
    # CT as the requester's own C-STOREs only (SCU role): not for sub-operations.
    3: AcceptedContext(3, CT, EXPLICIT_LE, True, False),
    # CT in the SCP role, explicit and implicit: the sub-operation contexts.
    7: AcceptedContext(7, CT, IMPLICIT_LE, False, True),
    5: AcceptedContext(5, CT, EXPLICIT_LE, False, True),
}


@dataclass
class FakePeer:
    """Records what is sent."""

    sent: list[tuple[str, int, bytes]] = field(default_factory=list)

    def send_command(self, context_id: int, command: bytes) -> None:
        """Record a command set."""
        self.sent.append(("command", context_id, command))

    def send_dataset(self, context_id: int, data: bytes) -> None:
        """Record a data set."""
        self.sent.append(("dataset", context_id, data))


@dataclass
class FakeInfo:
    """The association's accepted contexts."""

    contexts: dict[int, AcceptedContext]


class FakeChannel:
    """The service side :func:`substore.store` uses."""

    def __init__(self) -> None:
        self.peer = FakePeer()
        self.info = FakeInfo(CONTEXTS)
        self.waiting: dict[int, Deferred[int]] = {}
        self._next = 40

    def allocate_message_id(self) -> int:
        """Sequential IDs from 41."""
        self._next += 1
        return self._next

    def expect_store_response(self, message_id: int) -> Deferred[int]:
        """A Deferred the test fires as the C-STORE-RSP."""
        d: Deferred[int] = Deferred()
        self.waiting[message_id] = d
        return d


@dataclass
class FakeRequest:
    """A C-GET-RQ's priority."""

    priority: int = 1


@dataclass
class FakeResponder:
    """Holds the request."""

    rq: Any = field(default_factory=FakeRequest)


class StoreTests(SynchronousTestCase):
    """:func:`gateway.qr.substore.store`."""

    def setUp(self) -> None:
        """A file whose data set starts after a 10-byte prefix."""
        fd, self.path = tempfile.mkstemp()
        os.write(fd, b"PREFIX0123" + b"\x08\x00\x16\x00" + b"DATASET!")
        os.close(fd)
        self.addCleanup(os.unlink, self.path)

    def test_sends_c_store_rq_and_data_set_on_the_scp_role_context(self) -> None:
        """The C-STORE-RQ goes on the lowest SCP-role context of the class and syntax, with the data set from the offset, and fires with the requester's status."""
        channel = FakeChannel()
        d = substore.store(channel, FakeResponder(), self.path, CT, "1.2.3.4", EXPLICIT_LE, 10)
        [(kind, context_id, command), (kind2, context_id2, data)] = channel.peer.sent
        self.assertEqual((kind, context_id, kind2, context_id2), ("command", 5, "dataset", 5))
        rq = dimse.decode_command(command)
        self.assertEqual(rq, dimse.CStoreRQ(41, CT, "1.2.3.4", priority=1))
        self.assertEqual(data, b"\x08\x00\x16\x00DATASET!")
        self.assertNoResult(d)
        channel.waiting[41].callback(0xB000)
        self.assertEqual(self.successResultOf(d), 0xB000)

    def test_implicit_syntax_picks_its_own_context(self) -> None:
        """An Implicit VR instance goes on the Implicit VR SCP-role context."""
        channel = FakeChannel()
        substore.store(channel, FakeResponder(), self.path, CT, "1.2.3.4", IMPLICIT_LE, 0)
        self.assertEqual(channel.peer.sent[0][1], 7)

    def test_class_not_accepted_in_scp_role_fails_without_sending(self) -> None:
        """MR has no context: NoPresentationContext, nothing sent, no message ID used."""
        channel = FakeChannel()
        failure = self.failureResultOf(substore.store(channel, FakeResponder(), self.path, MR, "1.2.3.5", EXPLICIT_LE, 0))
        failure.trap(NoPresentationContext)
        self.assertEqual(channel.peer.sent, [])
        self.assertEqual(channel.waiting, {})

    def test_syntax_not_accepted_fails(self) -> None:
        """A CT in JPEG Baseline when only uncompressed was accepted fails: the gateway does not transcode here."""
        channel = FakeChannel()
        self.failureResultOf(
            substore.store(channel, FakeResponder(), self.path, CT, "1.2.3.5", "1.2.840.10008.1.2.4.50", 0), NoPresentationContext
        )

    def test_scu_role_only_context_is_not_used(self) -> None:
        """A context where the requester is only SCU does not carry sub-operations."""
        self.assertIsNone(
            substore.sub_operation_context({3: AcceptedContext(3, CT, EXPLICIT_LE, True, False)}, CT, EXPLICIT_LE)
        )

    def test_unreadable_file_fails(self) -> None:
        """A scratch file that is gone fails with OSError, nothing sent."""
        channel = FakeChannel()
        self.failureResultOf(substore.store(channel, FakeResponder(), self.path + ".gone", CT, "1.2.3.4", EXPLICIT_LE, 0), OSError)
        self.assertEqual(channel.peer.sent, [])
