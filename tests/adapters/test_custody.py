"""The custody order end to end in-process: bytes in, durable file, journal commit, then the answer.

An :class:`~gateway.listen.AcceptorFactory` is wired as the service wires it:
a real :class:`~gateway.spool.Spool` (on a
:class:`~gateway.blocking.SynchronousRunner`, with a :class:`FileOps` that
records its system calls) and an :class:`~gateway.intake.Intake` over a
queue store that records when ``add_instance`` committed. The transport
records when the gateway wrote. All three write into one event list, so a
test reads the order HARDENING decision 10 (F12) demands:
fsync(file) -> rename -> fsync(dir) -> journal commit -> C-STORE-RSP.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Sequence

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.access import AccessPolicy
from gateway.blocking import SynchronousRunner
from gateway.config.schema import AcceptConfig, GatewayConfig, LimitsConfig, ListenerConfig, RouteConfig, SpoolConfig
from gateway.dimse import commands as dimse
from gateway.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from gateway.intake import Intake
from gateway.space import SpaceGuard
from gateway.listen import AcceptorFactory, AcceptorLimits, AcceptorProtocol
from gateway.queue.interfaces import AddResult, EntryState, InstanceRecord, NewEntry
from gateway.queue.memory import MemoryQueueStore
from gateway.service import acceptor_settings
from gateway.spool import FileOps, Spool
from gateway.ul import pdu
from tests.adapters.test_listen import CT_IMAGE, Modality, ct_small


class _RecordingFileOps(FileOps):
    """The spool's system calls, recorded as ``fsync(file)``, ``fsync(dir)``, ``rename``, ``fdatasync(file)`` and ``writeback``."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self._dirs: set[int] = set()

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        fd = super().open(path, flags, mode)
        if os.path.isdir(path):
            self._dirs.add(fd)
        else:
            self._dirs.discard(fd)
        return fd

    def fsync(self, fd: int) -> None:
        self.events.append("fsync(dir)" if fd in self._dirs else "fsync(file)")
        super().fsync(fd)

    def rename(self, src: str, dst: str) -> None:
        self.events.append("rename")
        super().rename(src, dst)

    def fdatasync(self, fd: int) -> None:
        self.events.append("fdatasync(file)")
        super().fdatasync(fd)

    def start_writeback(self, fd: int, offset: int, length: int) -> None:
        self.events.append("writeback")
        super().start_writeback(fd, offset, length)


class _RecordingStore(MemoryQueueStore):
    """A journal that records when ``add_instance`` has committed (or fails it on demand)."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events
        self.fail = False

    def add_instance(self, record: InstanceRecord, entries: Sequence[NewEntry], now: float, duplicate_window: float) -> AddResult:
        if self.fail:
            self.events.append("journal failed")
            raise OSError(28, "database or disk is full")
        result = super().add_instance(record, entries, now, duplicate_window)
        self.events.append("journal commit")
        return result


class _RecordingTransport(StringTransport):
    """A transport that notes each write in the shared event list."""

    def __init__(self, events: list[str]) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.events = events

    def write(self, data: bytes) -> None:
        self.events.append("write")
        super().write(data)


class CustodyTests(SynchronousTestCase):
    """C-STORE through the acceptor, the spool and the intake."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.events: list[str] = []
        self.clock = Clock()
        self.free = 10**12
        config = GatewayConfig(
            source="test.yaml",
            ae_title="DICOMGW",
            listen=(ListenerConfig("127.0.0.1", 0),),
            accept=AcceptConfig(),
            limits=LimitsConfig(),
            spool=SpoolConfig(self.tmp),
        )
        self.spool = Spool(
            self.tmp,
            SynchronousRunner(),
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            max_instance_size=1 << 30,
            fs=_RecordingFileOps(self.events),
        )
        self.spool.recover()
        self.spool.prepare_slots()
        self.store = _RecordingStore(self.events)
        self.intake = Intake(
            store=self.store,
            store_runner=SynchronousRunner(),
            file_runner=SynchronousRunner(),
            routes=lambda: [RouteConfig("everything", ("pacs",))],
            wall=lambda: 1_700_000_000.0,
            duplicate_window=3600.0,
            unrouted_dir=os.path.join(self.tmp, "unrouted"),
        )
        self.space = SpaceGuard(lambda: self.free, self.clock, min_free=1000, margin=500, interval=1.0)
        self.factory = AcceptorFactory(
            name="test",
            acceptor_settings=acceptor_settings(config),
            access=AccessPolicy("DICOMGW", ("*",)),
            spool=self.spool,
            clock=self.clock,
            limits=AcceptorLimits(),
            admit=self.intake.take,
            space_low=self.space.low,
        )

    def establish(self, modality: Modality) -> tuple[AcceptorProtocol, _RecordingTransport]:
        proto = self.factory.buildProtocol(None)
        transport = _RecordingTransport(self.events)
        proto.makeConnection(transport)
        proto.dataReceived(modality.associate_rq())
        (ac,) = modality.read(transport)
        self.assertIsInstance(ac, pdu.AAssociateAC)
        return proto, transport

    def store_ct(self) -> list[object]:
        """Send CT_small on a new association; the events list then holds only this C-STORE's events."""
        uid, data = ct_small()
        modality = Modality()
        proto, transport = self.establish(modality)
        proto.dataReceived(modality.command(3, dimse.CStoreRQ(1, CT_IMAGE, uid)))
        del self.events[:]
        proto.dataReceived(modality.dataset(3, data, 16378))
        return modality.responses(transport)

    def committed(self) -> list[str]:
        """The instance files in the spool (unused slot files, empty, are not instances)."""
        folder = os.path.join(self.tmp, "instances")
        if not os.path.isdir(folder):
            return []
        return sorted(n for n in os.listdir(folder) if os.path.getsize(os.path.join(folder, n)))

    def test_response_follows_fdatasync_and_journal_commit(self) -> None:
        """The C-STORE-RSP bytes are written only after the fragments' write-back, fdatasync(file) and the journal commit, in that order; no rename, no directory fsync (issue 13)."""
        responses = self.store_ct()
        self.assertEqual([r.status for r in responses], [0])  # type: ignore[attr-defined]
        fragments = self.events.count("writeback")
        self.assertGreaterEqual(fragments, 1)
        self.assertEqual(
            self.events,
            ["writeback"] * fragments + ["fdatasync(file)", "journal commit", "write"],
        )

    def test_success_means_the_instance_is_journaled(self) -> None:
        """After a 0x0000 answer the journal holds the instance with a queued entry for the routed destination."""
        self.store_ct()
        (name,) = self.committed()
        (entry,) = self.store.entries()
        self.assertEqual((entry.destination, entry.state), ("pacs", EntryState.QUEUED))
        self.assertEqual(entry.path, os.path.join(self.tmp, "instances", name))

    def test_journal_failure_answers_a700_and_leaves_no_instance(self) -> None:
        """When the journal cannot be written the modality gets 0xA700 and instances/ is empty."""
        self.store.fail = True
        responses = self.store_ct()
        self.assertEqual([r.status for r in responses], [0xA700])  # type: ignore[attr-defined]
        self.assertEqual(self.committed(), [])
        self.assertEqual(self.events[-2:], ["journal failed", "write"])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_spool_below_floor_answers_a700_on_an_open_association(self) -> None:
        """A C-STORE arriving while the spool is below its floor gets 0xA700 and nothing is spooled or journaled."""
        uid, data = ct_small()
        modality = Modality()
        proto, transport = self.establish(modality)
        self.free = 10
        self.clock.advance(1.0)
        proto.dataReceived(modality.command(3, dimse.CStoreRQ(1, CT_IMAGE, uid)))
        proto.dataReceived(modality.dataset(3, data, 16378))
        self.assertEqual([r.status for r in modality.responses(transport)], [0xA700])  # type: ignore[attr-defined]
        self.assertEqual(self.committed(), [])
        self.assertEqual(self.store.instance_ids(), set())

    def test_spool_below_floor_rejects_new_associations_transient_congestion(self) -> None:
        """A new association while the spool is below its floor gets A-ASSOCIATE-RJ (2, 3, 1)."""
        self.free = 10
        modality = Modality()
        proto = self.factory.buildProtocol(None)
        transport = _RecordingTransport(self.events)
        proto.makeConnection(transport)
        proto.dataReceived(modality.associate_rq())
        self.assertEqual(modality.read(transport), [pdu.AAssociateRJ(2, 3, 1)])

    def test_accepting_resumes_above_floor_plus_margin(self) -> None:
        """Once free space is back above floor + margin, a new association is accepted and a C-STORE succeeds."""
        self.free = 10
        self.assertTrue(self.space.low())
        self.free = 1400  # above the floor, not above floor + margin
        self.clock.advance(1.0)
        self.assertTrue(self.space.low())
        self.free = 1501
        self.clock.advance(1.0)
        self.assertEqual([r.status for r in self.store_ct()], [0])  # type: ignore[attr-defined]
