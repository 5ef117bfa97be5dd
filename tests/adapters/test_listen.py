"""The acceptor adapter driven with bytes through StringTransport and a fake clock.

Each test plays the modality's part with PDUs built by our codec, feeds them
to :class:`~gateway.listen.AcceptorProtocol`, and reads back what the gateway
wrote. The spool runs through a :class:`~gateway.blocking.SynchronousRunner`,
so a C-STORE-RSP is written within the same ``dataReceived`` call that
delivered the last fragment.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pydicom

from pydicom.data import get_testdata_file
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.access import AccessPolicy
from gateway.blocking import SynchronousRunner
from gateway.dimse import commands as dimse
from gateway.dimse.pdv import fragment
from gateway.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from gateway.listen import AcceptorFactory, AcceptorLimits, AcceptorProtocol
from gateway.service import acceptor_settings
from gateway.config.schema import AcceptConfig, GatewayConfig, LimitsConfig, ListenerConfig, SpoolConfig
from gateway.spool import FileOps, Spool
from gateway.ul import pdu
from gateway.ul.framing import PDUBuffer
from gateway.ul.items import UserInformation

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


def ct_small() -> tuple[str, bytes]:
    """CT_small.dcm's SOP instance UID and its data set bytes (Explicit VR LE), after the file meta."""
    path = get_testdata_file("CT_small.dcm", download=False)
    with open(path, "rb") as f:
        raw = f.read()
    group_length = int.from_bytes(raw[140:144], "little")
    offset = 144 + group_length
    return str(pydicom.dcmread(path).SOPInstanceUID), raw[offset:]


class Modality:
    """The peer side: builds PDUs and parses what the gateway answers."""

    def __init__(self, called: str = "DICOMGW", calling: str = "CT01", max_pdu: int = 16384) -> None:
        self.called = called
        self.calling = calling
        self.max_pdu = max_pdu
        self.buffer = PDUBuffer(max_pdata_length=0)

    def associate_rq(self, contexts: tuple[tuple[int, str, tuple[str, ...]], ...] | None = None) -> bytes:
        contexts = contexts or ((1, VERIFICATION, (IMPLICIT_LE,)), (3, CT_IMAGE, (EXPLICIT_LE, IMPLICIT_LE)))
        return pdu.encode(
            pdu.AAssociateRQ(
                called_ae_title=self.called,
                calling_ae_title=self.calling,
                presentation_contexts=tuple(pdu.PresentationContextRQ(i, a, t) for i, a, t in contexts),
                user_information=UserInformation(max_length=self.max_pdu, implementation_class_uid="1.2.3"),
            )
        )

    def command(self, context_id: int, command: object) -> bytes:
        data = dimse.encode_command(command)  # type: ignore[arg-type]
        return b"".join(pdu.encode(pdu.PDataTF((p,))) for p in fragment(context_id, data, 1024, command=True))

    def dataset(self, context_id: int, data: bytes, size: int) -> bytes:
        return b"".join(pdu.encode(pdu.PDataTF((p,))) for p in fragment(context_id, data, size, command=False))

    def read(self, transport: StringTransport) -> list[object]:
        data = transport.value()
        transport.clear()
        return list(self.buffer.feed(data))

    def responses(self, transport: StringTransport) -> list[object]:
        """Decode every DIMSE command the gateway sent since the last read."""
        out: list[object] = []
        parts: list[bytes] = []
        for item in self.read(transport):
            if isinstance(item, pdu.PDataTF):
                for p in item.pdvs:
                    parts.append(p.data)
                    if p.is_last:
                        out.append(dimse.decode_command(b"".join(parts)))
                        parts = []
            else:
                out.append(item)
        return out


class AcceptorTestsMixin:
    """Builds a factory over a temporary spool and connects protocols to StringTransports."""

    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.clock = Clock()
        self.factory = self.make_factory()

    def make_factory(self, **limits: object) -> AcceptorFactory:
        config = GatewayConfig(
            source="test.yaml",
            ae_title="DICOMGW",
            listen=(ListenerConfig("127.0.0.1", 0),),
            accept=AcceptConfig(calling_ae_titles=("CT*", "MR*")),
            limits=LimitsConfig(),
            spool=SpoolConfig(self.tmp),
        )
        self.spool = Spool(
            self.tmp,
            SynchronousRunner(),
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            max_instance_size=int(limits.pop("max_instance_size", 1 << 30)),  # type: ignore[call-overload]
        )
        return AcceptorFactory(
            name="test",
            acceptor_settings=acceptor_settings(config),
            access=AccessPolicy("DICOMGW", ("CT*", "MR*")),
            spool=self.spool,
            clock=self.clock,
            limits=AcceptorLimits(**limits),  # type: ignore[arg-type]
        )

    def connect(self) -> tuple[AcceptorProtocol, StringTransport]:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        proto.makeConnection(transport)
        return proto, transport

    def establish(self, modality: Modality) -> tuple[AcceptorProtocol, StringTransport]:
        proto, transport = self.connect()
        proto.dataReceived(modality.associate_rq())
        (ac,) = modality.read(transport)
        assert isinstance(ac, pdu.AAssociateAC), ac
        return proto, transport

    def committed(self) -> list[str]:
        """The instance files in the spool (unused slot files, empty, are not instances)."""
        folder = os.path.join(self.tmp, "instances")
        if not os.path.isdir(folder):
            return []
        return sorted(n for n in os.listdir(folder) if os.path.getsize(os.path.join(folder, n)))


class AssociationTests(AcceptorTestsMixin, SynchronousTestCase):
    """Association establishment, release and the timers around them."""

    def test_accepts_and_answers_echo_then_releases(self) -> None:
        """An A-ASSOCIATE-RQ is accepted, a C-ECHO answered 0x0000, and A-RELEASE-RQ answered with RP."""
        modality = Modality()
        proto, transport = self.establish(modality)
        proto.dataReceived(modality.command(1, dimse.CEchoRQ(7, VERIFICATION)))
        (rsp,) = modality.responses(transport)
        self.assertIsInstance(rsp, dimse.CEchoRSP)
        self.assertEqual((rsp.message_id_being_responded_to, rsp.status), (7, 0))
        proto.dataReceived(pdu.encode(pdu.AReleaseRQ()))
        self.assertEqual(modality.read(transport), [pdu.AReleaseRP()])

    def test_ac_carries_our_identity_and_max_length(self) -> None:
        """The AC names our Implementation Class UID, version name and maximum length (PS3.7 D.3.3.2)."""
        modality = Modality()
        proto, transport = self.connect()
        proto.dataReceived(modality.associate_rq())
        (ac,) = modality.read(transport)
        self.assertEqual(ac.user_information.implementation_class_uid, IMPLEMENTATION_CLASS_UID)
        self.assertEqual(ac.user_information.implementation_version_name, IMPLEMENTATION_VERSION_NAME)
        self.assertEqual(ac.user_information.max_length, 262144)

    def test_wrong_called_ae_is_rejected_with_reason_7(self) -> None:
        """A called AE title that is not ours gets RJ(1,1,7)."""
        modality = Modality(called="OTHER")
        proto, transport = self.connect()
        proto.dataReceived(modality.associate_rq())
        self.assertEqual(modality.read(transport), [pdu.AAssociateRJ(1, 1, 7)])

    def test_disallowed_calling_ae_is_rejected_with_reason_3(self) -> None:
        """A calling AE title matching no allowlist glob gets RJ(1,1,3)."""
        modality = Modality(calling="US01")
        proto, transport = self.connect()
        proto.dataReceived(modality.associate_rq())
        self.assertEqual(modality.read(transport), [pdu.AAssociateRJ(1, 1, 3)])

    def test_association_over_the_limit_gets_transient_rj(self) -> None:
        """The association beyond max_associations gets RJ(2,3,2), not a reset (HARDENING P16)."""
        self.factory = self.make_factory(max_associations=1)
        first, _ = self.establish(Modality())
        proto, transport = self.connect()
        proto.dataReceived(Modality().associate_rq())
        self.assertEqual(Modality().read(transport), [pdu.AAssociateRJ(2, 3, 2)])
        self.assertFalse(transport.disconnecting)

    def test_rejections_are_counted_by_reason(self) -> None:
        """Each RJ counts under its reason: limit (2,3,2), space (2,3,1), acse (1,2,2), access (1,1,7) (HARDENING P16)."""
        from prometheus_client import CollectorRegistry

        from gateway.observe import GatewayMetrics

        registry = CollectorRegistry()
        low = [False]
        self.factory = self.make_factory(max_associations=1)
        self.factory.observer = GatewayMetrics(registry, [])
        self.factory.space_low = lambda: low[0]
        self.establish(Modality())
        proto, transport = self.connect()
        proto.dataReceived(Modality().associate_rq())
        self.assertEqual(Modality().read(transport), [pdu.AAssociateRJ(2, 3, 2)])
        # ACSE rules come first (PS3.8 9.3.2: protocol version without bit 0).
        rq = bytearray(Modality().associate_rq())
        rq[6:8] = b"\x00\x02"
        proto, transport = self.connect()
        proto.dataReceived(bytes(rq))
        self.assertEqual(Modality().read(transport), [pdu.AAssociateRJ(1, 2, 2)])
        low[0] = True
        proto, transport = self.connect()
        proto.dataReceived(Modality().associate_rq())
        self.assertEqual(Modality().read(transport), [pdu.AAssociateRJ(2, 3, 1)])
        self.factory.limits = AcceptorLimits(max_associations=10)
        low[0] = False
        proto, transport = self.connect()
        proto.dataReceived(Modality(called="OTHER").associate_rq())
        self.assertEqual(Modality().read(transport), [pdu.AAssociateRJ(1, 1, 7)])
        counts = {reason: registry.get_sample_value("dicom_gateway_associations_rejected_total",
                                                    {"listener": "test", "reason": reason})
                  for reason in ("limit", "space", "acse", "access", "identity")}
        self.assertEqual(counts, {"limit": 1, "space": 1, "acse": 1, "access": 1, "identity": None})

    def test_silent_connection_closes_at_artim(self) -> None:
        """A connection that sends nothing is closed when ARTIM expires, with nothing written (HARDENING P01)."""
        proto, transport = self.connect()
        self.clock.advance(29.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.factory.artim_expired, 1)

    def test_garbage_before_an_association_is_counted(self) -> None:
        """An HTTP request on the DICOM port is aborted (2,1) and counted in pdu_protocol_errors (HARDENING P37)."""
        from prometheus_client import CollectorRegistry

        from gateway.observe import GatewayMetrics

        registry = CollectorRegistry()
        self.factory.observer = GatewayMetrics(registry, [])
        proto, transport = self.connect()
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(Modality().read(transport), [pdu.AAbort(2, 1)])
        self.assertEqual(
            registry.get_sample_value(
                "dicom_gateway_pdu_protocol_errors_total", {"listener": "test", "reason": "unrecognized_pdu"}
            ),
            1,
        )

    def test_idle_association_is_aborted(self) -> None:
        """An association silent for the network timeout gets A-ABORT(0,0) and is closed (HARDENING P34)."""
        self.factory = self.make_factory(network_timeout=60.0)
        modality = Modality()
        proto, transport = self.establish(modality)
        self.clock.advance(61)
        self.assertEqual(modality.read(transport), [pdu.AAbort(0, 0)])
        self.assertTrue(transport.disconnecting)


class StoreTests(AcceptorTestsMixin, SynchronousTestCase):
    """C-STORE into the spool."""

    def store(self, fragment_size: int, max_pdu: int = 16384) -> tuple[list[object], bytes]:
        uid, data = ct_small()
        modality = Modality(max_pdu=max_pdu)
        proto, transport = self.establish(modality)
        proto.dataReceived(modality.command(3, dimse.CStoreRQ(1, CT_IMAGE, uid)))
        proto.dataReceived(modality.dataset(3, data, fragment_size))
        return modality.responses(transport), data

    def test_store_at_several_fragment_sizes_is_byte_identical(self) -> None:
        """At 4 KiB, 16 KiB and 256 KiB fragments the spooled data set equals the bytes sent."""
        for size in (4090, 16378, 262138):
            before = set(self.committed())
            responses, data = self.store(size)
            self.assertEqual([r.status for r in responses], [0], size)
            (new,) = set(self.committed()) - before
            with open(os.path.join(self.tmp, "instances", new), "rb") as f:
                self.assertTrue(f.read().endswith(data))

    def test_store_response_is_fragmented_to_the_peer_maximum(self) -> None:
        """Our C-STORE-RSP PDUs never exceed the peer's maximum length (PS3.8 D.1)."""
        uid, data = ct_small()
        modality = Modality(max_pdu=1024)
        proto, transport = self.establish(modality)
        proto.dataReceived(modality.command(3, dimse.CStoreRQ(1, CT_IMAGE, uid)))
        proto.dataReceived(modality.dataset(3, data, 1018))
        raw = transport.value()
        offset = 0
        while offset < len(raw):
            length = int.from_bytes(raw[offset + 2 : offset + 6], "big")
            self.assertLessEqual(length, 1024)
            offset += 6 + length
        self.assertEqual([r.status for r in modality.responses(transport)], [0])

    def test_sop_class_differing_from_context_gets_0122(self) -> None:
        """A C-STORE naming MR on the CT context is answered 0x0122 and nothing is spooled (HARDENING D07)."""
        uid, data = ct_small()
        modality = Modality()
        proto, transport = self.establish(modality)
        proto.dataReceived(modality.command(3, dimse.CStoreRQ(1, MR_IMAGE, uid)))
        proto.dataReceived(modality.dataset(3, data, 16378))
        self.assertEqual([r.status for r in modality.responses(transport)], [0x0122])
        self.assertEqual(self.committed(), [])

    def test_malformed_dataset_gets_c000(self) -> None:
        """A truncated data set is answered in the 0xC000 range and not kept (HARDENING D01)."""
        uid, data = ct_small()
        modality = Modality()
        proto, transport = self.establish(modality)
        proto.dataReceived(modality.command(3, dimse.CStoreRQ(1, CT_IMAGE, uid)))
        proto.dataReceived(modality.dataset(3, data[:1001] + b"\x00", 16378))
        (rsp,) = modality.responses(transport)
        self.assertEqual(rsp.status & 0xF000, 0xC000)
        self.assertEqual(self.committed(), [])

    def test_release_mid_dataset_aborts_and_keeps_nothing(self) -> None:
        """A-RELEASE-RQ before the last fragment aborts the association; nothing is spooled (HARDENING P29)."""
        uid, data = ct_small()
        modality = Modality()
        proto, transport = self.establish(modality)
        proto.dataReceived(modality.command(3, dimse.CStoreRQ(1, CT_IMAGE, uid)))
        proto.dataReceived(modality.dataset(3, data, 1000)[: 3 * 1012])
        proto.dataReceived(pdu.encode(pdu.AReleaseRQ()))
        self.assertEqual(modality.read(transport), [pdu.AAbort(0, 0)])
        self.assertEqual(self.committed(), [])
        self.assertEqual(os.listdir(os.path.join(self.tmp, "incoming")), [])

    def test_peer_abort_mid_dataset_discards_the_partial_file(self) -> None:
        """An A-ABORT mid data set leaves no temp file and no instance (HARDENING P32)."""
        uid, data = ct_small()
        modality = Modality()
        proto, transport = self.establish(modality)
        proto.dataReceived(modality.command(3, dimse.CStoreRQ(1, CT_IMAGE, uid)))
        proto.dataReceived(modality.dataset(3, data, 1000)[: 2 * 1012])
        proto.dataReceived(pdu.encode(pdu.AAbort(0, 0)))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.committed(), [])
        self.assertEqual(os.listdir(os.path.join(self.tmp, "incoming")), [])

    def test_unknown_command_gets_0211_and_association_continues(self) -> None:
        """An unimplemented request (C-FIND-RQ) is answered 0x0211 and a C-ECHO still works after it (HARDENING D21)."""
        modality = Modality()
        proto, transport = self.establish(modality)
        find = dimse.UnknownCommand(0x0020, 5, {0x00000002: b"1.2.840.10008.1.1\x00"}, has_dataset=False)
        proto.dataReceived(modality.command(1, find))
        proto.dataReceived(modality.command(1, dimse.CEchoRQ(6, VERIFICATION)))
        first, second = modality.responses(transport)
        self.assertIsInstance(first, dimse.CFindRSP)
        self.assertEqual((first.message_id_being_responded_to, first.status), (5, 0x0211))
        self.assertEqual(second.status, 0)


class _DiskFull(FileOps):
    """File operations whose writes fail with ENOSPC once ``budget`` bytes were written."""

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def write(self, fd: int, data: memoryview | bytes) -> int:
        if len(data) > self.budget:
            raise OSError(28, "No space left on device")
        self.budget -= len(data)
        return super().write(fd, data)


class DiskFullTests(AcceptorTestsMixin, SynchronousTestCase):
    """ENOSPC while spooling (HARDENING D11)."""

    def test_disk_full_mid_instance_answers_a700_and_leaves_nothing(self) -> None:
        """A write failing with ENOSPC gives 0xA700, no temp file, no instance, and the association stays usable."""
        self.spool.fs = _DiskFull(budget=20000)
        uid, data = ct_small()
        modality = Modality()
        proto, transport = self.establish(modality)
        proto.dataReceived(modality.command(3, dimse.CStoreRQ(1, CT_IMAGE, uid)))
        proto.dataReceived(modality.dataset(3, data, 4090))
        (rsp,) = modality.responses(transport)
        self.assertEqual(rsp.status, 0xA700)
        self.assertEqual(self.committed(), [])
        self.assertEqual(os.listdir(os.path.join(self.tmp, "incoming")), [])
        proto.dataReceived(modality.command(1, dimse.CEchoRQ(2, VERIFICATION)))
        self.assertEqual([r.status for r in modality.responses(transport)], [0])


class ShutdownTests(AcceptorTestsMixin, SynchronousTestCase):
    """A gateway stop lets the in-flight instance finish within the grace period (issue 3)."""

    def test_in_flight_instance_finishes_then_the_association_is_aborted(self) -> None:
        """Shutdown mid data set waits; the last fragment is stored and answered 0x0000, then A-ABORT."""
        uid, data = ct_small()
        modality = Modality()
        proto, transport = self.establish(modality)
        proto.dataReceived(modality.command(3, dimse.CStoreRQ(1, CT_IMAGE, uid)))
        fragments = modality.dataset(3, data, 1000)
        proto.dataReceived(fragments[: 3 * 1012])
        closed = proto.shutdown(grace=10.0)
        self.assertNoResult(closed)
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(fragments[3 * 1012 :])
        replies = modality.responses(transport)
        self.assertEqual([getattr(r, "status", None) for r in replies], [0, None])
        self.assertEqual(replies[1], pdu.AAbort(0, 0))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.committed()), 1)
        proto.connectionLost(None)
        self.successResultOf(closed)

    def test_grace_expiry_aborts_and_keeps_no_partial_file(self) -> None:
        """A sender that stalls past the grace period is aborted and its partial instance discarded."""
        uid, data = ct_small()
        modality = Modality()
        proto, transport = self.establish(modality)
        proto.dataReceived(modality.command(3, dimse.CStoreRQ(1, CT_IMAGE, uid)))
        proto.dataReceived(modality.dataset(3, data, 1000)[: 2 * 1012])
        proto.shutdown(grace=10.0)
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(modality.read(transport), [pdu.AAbort(0, 0)])
        self.assertEqual(self.committed(), [])
        self.assertEqual(os.listdir(os.path.join(self.tmp, "incoming")), [])

    def test_idle_association_is_aborted_at_once(self) -> None:
        """With nothing in progress the association is aborted immediately."""
        modality = Modality()
        proto, transport = self.establish(modality)
        proto.shutdown(grace=10.0)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(modality.read(transport), [pdu.AAbort(0, 0)])
