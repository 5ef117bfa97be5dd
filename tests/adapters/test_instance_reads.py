"""How often the instance file is opened for reading on its way from the modality to a destination.

One CT instance is received through the acceptor, the spool and the intake
(wired as the service wires them, as in :mod:`tests.adapters.test_custody`),
then forwarded by a :class:`~gateway.forward.DestinationWorker` with the
real requestor over an in-memory loopback to a second acceptor, the peer.
Every ``open`` (the builtin, which pydicom uses too) and ``os.open`` (the
spool's :class:`~gateway.durable.FileOps`) is counted by path while the
instance travels; the opens for reading of the spooled file are pinned.

Issue 12 (item 4): receiving opens the file for writing only (the spool
parses the data set as it streams in; the intake reads no file), so every
read is on the forward side. Before, the sender read the file's meta for the
batch, ``ClientAssociation.store`` read it again, then streamed the data
set: 3 opens. The sender now passes the header it read to ``store``: 2.

Issue 13: the receive side reads nothing back (the walk and the SHA-256 run
on the fragments as they arrive, routing parses the header the walk kept),
and the sender takes SOP class, transfer syntax and the data set's offset
from the journal record: the one read left is the stream itself.
"""

from __future__ import annotations

import builtins
import os
import shutil
import tempfile
from typing import Any
from unittest import mock

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.access import AccessPolicy
from gateway.associate import ClientAssociation, RequestorProtocol
from gateway.blocking import SynchronousRunner
from gateway.config.schema import (
    AcceptConfig,
    CircuitConfig,
    DicomDestination,
    GatewayConfig,
    LimitsConfig,
    ListenerConfig,
    RetryConfig,
    RouteConfig,
    SpoolConfig,
)
from gateway.dimse import commands as dimse
from gateway.forward import DestinationWorker, Proposals
from gateway.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from gateway.intake import Intake
from gateway.listen import AcceptorFactory, AcceptorLimits
from gateway.queue.interfaces import EntryState
from gateway.queue.memory import MemoryQueueStore
from gateway.service import acceptor_settings
from gateway.sopclasses import IMPLICIT_VR_LE, VERIFICATION_SOP_CLASS
from gateway.space import SpaceGuard
from gateway.spool import Spool
from gateway.ul import pdu
from gateway.ul.negotiate import build_request
from tests.adapters.loopback import Loopback
from tests.adapters.test_listen import CT_IMAGE, Modality, ct_small

#: Opens of the spooled instance file for reading, receive to delivered (issue 12: 3 before;
#: issue 13: 2 before, the send takes the file meta's facts from the journal).
READS_PER_INSTANCE = 1

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR


class _OpenCounter:
    """Records every path opened, and whether for reading, through ``open`` and ``os.open``."""

    def __init__(self) -> None:
        self.opens: list[tuple[str, bool]] = []
        self._open = builtins.open
        self._os_open = os.open

    def builtin_open(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        """``open``, recorded when given a path."""
        if isinstance(file, (str, os.PathLike)):
            self.opens.append((os.path.abspath(os.fspath(file)), not any(c in mode for c in "wax+")))
        return self._open(file, mode, *args, **kwargs)

    def os_open(self, path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        """``os.open``, recorded."""
        self.opens.append((os.path.abspath(os.fspath(path)), not flags & _WRITE_FLAGS))
        return self._os_open(path, flags, *args, **kwargs)

    def reads_of(self, path: str) -> int:
        """How many times ``path`` was opened for reading."""
        return sum(1 for opened, reading in self.opens if opened == os.path.abspath(path) and reading)


def _factory(folder: str, clock: Clock, routes: list[RouteConfig], store: MemoryQueueStore) -> AcceptorFactory:
    """An acceptor with a real spool and intake in ``folder``, as the service wires it."""
    config = GatewayConfig(
        source="test.yaml",
        ae_title="DICOMGW",
        listen=(ListenerConfig("127.0.0.1", 0),),
        accept=AcceptConfig(),
        limits=LimitsConfig(),
        spool=SpoolConfig(folder),
    )
    spool = Spool(
        folder,
        SynchronousRunner(),
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        max_instance_size=1 << 30,
    )
    intake = Intake(
        store=store,
        store_runner=SynchronousRunner(),
        file_runner=SynchronousRunner(),
        routes=lambda: routes,
        wall=clock.seconds,
        duplicate_window=3600.0,
        unrouted_dir=os.path.join(folder, "unrouted"),
    )
    space = SpaceGuard(lambda: 10**12, clock, min_free=1000, margin=500, interval=1.0)
    return AcceptorFactory(
        name="test",
        acceptor_settings=acceptor_settings(config),
        access=AccessPolicy("DICOMGW", ("*",)),
        spool=spool,
        clock=clock,
        limits=AcceptorLimits(),
        admit=intake.take,
        space_low=space.low,
    )


class InstanceReadsTests(SynchronousTestCase):
    """Receive one instance and forward it to a peer, counting the opens of its spooled file."""

    def setUp(self) -> None:
        """The gateway's spool and the peer's, in fresh folders."""
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.clock = Clock()
        self.store = MemoryQueueStore()
        gateway_dir, peer_dir = os.path.join(self.tmp, "gateway"), os.path.join(self.tmp, "peer")
        os.mkdir(gateway_dir)
        os.mkdir(peer_dir)
        self.gateway_dir, self.peer_dir = gateway_dir, peer_dir
        self.gateway = _factory(gateway_dir, self.clock, [RouteConfig("everything", ("pacs",))], self.store)
        self.peer = _factory(peer_dir, self.clock, [RouteConfig("everything", ("elsewhere",))], MemoryQueueStore())
        self.loops: list[Loopback] = []

    def connect(self, destination: DicomDestination, proposals: Proposals) -> "Deferred[ClientAssociation]":
        """The real requestor, joined to a fresh protocol of the peer."""
        wanted = [(VERIFICATION_SOP_CLASS, [IMPLICIT_VR_LE])] + [(sop, list(ts)) for sop, ts in proposals]
        request = build_request(
            destination.calling_ae_title,
            destination.ae_title,
            wanted,
            max_pdu_length=16384,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        )
        client = RequestorProtocol(request, self.clock, 30.0, 16384)
        loop = Loopback(self.peer.buildProtocol(None), client)
        self.loops.append(loop)
        loop.pump()
        return client.established

    def receive(self) -> None:
        """One CT instance from a modality, answered with success."""
        uid, data = ct_small()
        modality = Modality()
        proto = self.gateway.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(modality.associate_rq())
        (ac,) = modality.read(transport)
        self.assertIsInstance(ac, pdu.AAssociateAC)
        proto.dataReceived(modality.command(3, dimse.CStoreRQ(1, CT_IMAGE, uid)))
        proto.dataReceived(modality.dataset(3, data, 16378))
        (response,) = modality.responses(transport)
        self.assertEqual(response.status, 0)  # type: ignore[attr-defined]

    def forward(self) -> None:
        """The worker sends the journaled entry to the peer, to delivered."""
        destination = DicomDestination(
            name="pacs",
            ae_title="DICOMGW",
            host="127.0.0.1",
            port=11113,
            calling_ae_title="CT01",
            batch_size=10,
            retry=RetryConfig(initial_delay=1.0, max_delay=60.0, multiplier=2.0, jitter=0.2),
            circuit=CircuitConfig(failures=3),
        )
        worker = DestinationWorker(
            destination,
            self.store,
            SynchronousRunner(),
            SynchronousRunner(),
            self.clock,
            connect=self.connect,
            rand=lambda: 0.5,
            wall=self.clock.seconds,
            monotonic=self.clock.seconds,
        )
        worker.startService()
        for _ in range(20):
            for loop in self.loops:
                loop.pump()
        d = worker.stopService()
        for loop in self.loops:
            loop.pump()
        self.clock.advance(worker.grace)
        self.successResultOf(d)

    def test_reads_of_the_instance_file_from_receive_to_delivered(self) -> None:
        """The spooled file is opened for reading READS_PER_INSTANCE times: the stream only (its meta comes from the journal)."""
        counter = _OpenCounter()
        with mock.patch("builtins.open", counter.builtin_open), mock.patch("os.open", counter.os_open):
            self.receive()
            (entry,) = self.store.entries()
            self.forward()
        (entry,) = self.store.entries()
        self.assertEqual(entry.state, EntryState.DELIVERED)
        folder = os.path.join(self.peer_dir, "instances")
        self.assertEqual(len([n for n in os.listdir(folder) if os.path.getsize(os.path.join(folder, n))]), 1)
        self.assertEqual(counter.reads_of(entry.path), READS_PER_INSTANCE, [o for o in counter.opens if o[0] == entry.path])
