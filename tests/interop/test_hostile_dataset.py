"""HARDENING section B (D01-D22): bad data sets sent by pynetdicom to a real gateway process.

pynetdicom (test-only) is the SCU: it negotiates the association and carries
the bytes, but the command and data sets are written byte by byte by
:mod:`tests.support.dataset_bytes` and handed to its DUL as P-DATA
primitives, because pydicom will not encode most of these inputs. The
response is read back through pynetdicom's DIMSE provider, so every status
asserted here is what a real SCU sees.

The two invariants of section B are checked on every row: after a status
response the association is still usable (the next valid instance gets
0x0000 on it), and a non-success status leaves nothing in the spool.

Rows D11, D12 (injected ENOSPC/EIO) and D15 (morph failures) need a fault
layer or routes and are covered elsewhere (see the closing report of the
session that wrote this file).
"""

from __future__ import annotations

import os
import stat
import struct
import time
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.pdu_primitives import P_DATA
from twisted.trial.unittest import TestCase

from tests.support import dataset_bytes as raw
from tests.support.datasets import dataset_bytes, write_instance
from tests.support.gateway_process import dicom_destination, wait_until
from tests.support.interop import GatewayTestMixin
from tests.support.ports import free_port

#: PS3.4 B.5: MR Image Storage (a second accepted SOP class, for D07).
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
#: The instance size cap the gateway runs with here (D09, D10).
MAX_INSTANCE = 4 * 1024 * 1024
#: D22's instance count in CI (decision 12); ``HOSTILE_D22_COUNT`` for the full 10,000.
D22_COUNT = int(os.environ.get("HOSTILE_D22_COUNT", "1500"))
#: Statuses that PS3.4 Table B.2-1 calls "Cannot understand" (0xC000-0xCFFF).
CANNOT_UNDERSTAND = range(0xC000, 0xD000)


def _uid() -> str:
    """A fresh UID under pydicom's root.

    :returns: the UID.
    """
    return str(generate_uid())


def _command_elements(data: bytes) -> dict[int, int]:
    """Read the US elements of a one-fragment command set (Implicit VR LE, PS3.7 6.3.1).

    :param data: the command bytes.
    :returns: tag to value, for 2-byte values only.
    """
    out: dict[int, int] = {}
    pos = 0
    while pos + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHI", data, pos)
        if length == 2:
            out[(group << 16) | element] = struct.unpack_from("<H", data, pos + 8)[0]
        pos += 8 + length
    return out


class HostileDatasetTests(GatewayTestMixin, TestCase):
    """Each catalogue row's input gets exactly the status HARDENING section B pins."""

    timeout = 300

    def setUp(self) -> None:
        """Start a gateway with a 4 MiB instance cap and an unreachable destination.

        The destination ``hold`` has nothing listening, so forwarded copies
        stay queued (D13, D14, D17 count them); other instances are unrouted
        and kept.
        """
        self.root = Path(self.mktemp()).resolve()
        self.gateway = self.start_gateway(
            limits={"max_instance_size": MAX_INSTANCE},
            destinations={"hold": dicom_destination(free_port(), "HOLD")},
            routes=[{"name": "d17", "match": {"PatientID": "D17*"}, "forward": ["hold"]},
                    {"name": "dup", "match": {"PatientID": "DUP*"}, "forward": ["hold"]}],
        )

    # -- helpers -------------------------------------------------------------

    def associate(self, *, handlers: list[Any] | None = None, calling: str = "HOSTILE") -> Any:
        """Open an association proposing CT in four syntaxes and MR in one.

        Context IDs: CT implicit 1, CT explicit LE 3, CT explicit BE 5,
        CT deflated 7, MR explicit LE 9 (PS3.8 9.3.2.2: odd, in order).

        :param handlers: pynetdicom event handlers to bind.
        :param calling: the calling AE title.
        :returns: the established association, released in a cleanup.
        """
        ae = AE(ae_title=calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        for syntax in (raw.IMPLICIT_VR_LE, raw.EXPLICIT_VR_LE, raw.EXPLICIT_VR_BE, raw.DEFLATED):
            ae.add_requested_context(raw.CT_IMAGE_STORAGE, [syntax])
        ae.add_requested_context(MR_IMAGE_STORAGE, [raw.EXPLICIT_VR_LE])
        assoc = ae.associate("127.0.0.1", self.gateway.port, ae_title="DICOMGW",
                             max_pdu=65536, evt_handlers=handlers or [])
        self.assertTrue(assoc.is_established, self.gateway.log_text()[-3000:])
        self.addCleanup(lambda: assoc.release() if assoc.is_established else None)
        return assoc

    @staticmethod
    def context(assoc: Any, sop_class: str, syntax: str) -> int:
        """Find the accepted context for a SOP class and transfer syntax.

        :param assoc: the association.
        :param sop_class: the abstract syntax.
        :param syntax: the transfer syntax.
        :returns: its presentation context ID.
        :raises LookupError: if the gateway did not accept it.
        """
        for ctx in assoc.accepted_contexts:
            if ctx.abstract_syntax == sop_class and ctx.transfer_syntax[0] == syntax:
                return int(ctx.context_id)
        raise LookupError(f"{sop_class} in {syntax} not accepted")

    @staticmethod
    def send(assoc: Any, context_id: int, command: bytes, data: bytes | None) -> None:
        """Put a command set (and a data set) on the wire as PDVs (PS3.8 E.2).

        :param assoc: the association.
        :param context_id: the presentation context.
        :param command: the command set bytes.
        :param data: the data set bytes, or ``None`` to send none.
        """
        # pynetdicom's reactor thread serves messages off the DIMSE queue
        # unless paused, as its own send_*() methods do; resumed in response().
        assoc._reactor_checkpoint.clear()
        wait_until(lambda: assoc._is_paused or not assoc.is_alive(), 10, "pynetdicom reactor paused",
                   interval=0.001)
        size = int(assoc.acceptor.maximum_length or 16384) - 6
        pieces = list(raw.chunks(command, size))
        for i, piece in enumerate(pieces):
            pdata = P_DATA()
            pdata.presentation_data_value_list.append(
                (context_id, (b"\x03" if i == len(pieces) - 1 else b"\x01") + piece))
            assoc.dul.send_pdu(pdata)
        if data is None:
            return
        pieces = list(raw.chunks(data, size))
        for i, piece in enumerate(pieces):
            pdata = P_DATA()
            pdata.presentation_data_value_list.append(
                (context_id, (b"\x02" if i == len(pieces) - 1 else b"\x00") + piece))
            assoc.dul.send_pdu(pdata)

    @staticmethod
    def resume(assoc: Any) -> None:
        """Let pynetdicom's reactor run again, and wait until it has.

        Without the wait, the next :meth:`send` could see the stale paused
        flag, and the reactor would then take the next response off the queue.

        :param assoc: the association.
        """
        assoc._reactor_checkpoint.set()
        wait_until(lambda: not assoc._is_paused or not assoc.is_alive(), 10,
                   "pynetdicom reactor resumed", interval=0.0005)

    @staticmethod
    def response(assoc: Any) -> tuple[int, str] | None:
        """Wait for the next DIMSE response.

        :param assoc: the association.
        :returns: (Status, Error Comment), or ``None`` if the association ended.
        """
        try:
            _context, msg = assoc.dimse.get_msg(block=True)
        finally:
            HostileDatasetTests.resume(assoc)
        if msg is None:
            return None
        return int(msg.Status), str(getattr(msg, "ErrorComment", "") or "")

    def store(self, assoc: Any, data: bytes | None, sop_instance: str, *,
              syntax: str = raw.EXPLICIT_VR_LE, sop_class: str = raw.CT_IMAGE_STORAGE,
              context_class: str | None = None, **command: Any) -> tuple[int, str]:
        """Send one C-STORE-RQ with raw bytes and return its response.

        :param assoc: the association.
        :param data: the data set bytes (``None``: none).
        :param sop_instance: the command's Affected SOP Instance UID.
        :param syntax: the context's transfer syntax.
        :param sop_class: the command's Affected SOP Class UID.
        :param context_class: the context's abstract syntax (default ``sop_class``).
        :param command: more :func:`~tests.support.dataset_bytes.c_store_rq` switches.
        :returns: (Status, Error Comment).
        """
        context_id = self.context(assoc, context_class or sop_class, syntax)
        self.send(assoc, context_id, raw.c_store_rq(sop_instance, sop_class=sop_class, **command), data)
        answer = self.response(assoc)
        self.assertIsNotNone(answer, "association ended: " + self.gateway.log_text()[-3000:])
        assert answer is not None
        return answer

    def spooled_uids(self) -> list[str]:
        """SOP Instance UIDs of the instances in the spool, read from their meta.

        :returns: one UID per spooled file.
        """
        import pydicom
        return [str(pydicom.dcmread(p, stop_before_pixels=True, force=True).SOPInstanceUID)
                for p in self.gateway.instances()]

    def assert_refused(self, assoc: Any, data: bytes | None, statuses: Any, *,
                       uid: str | None = None, **kwargs: Any) -> tuple[int, str]:
        """Store ``data``; check the status, its comment, that nothing is spooled, and that the association still works.

        :param assoc: the association.
        :param data: the data set bytes.
        :param statuses: the allowed statuses (a container).
        :param uid: the command's SOP Instance UID (fresh by default).
        :param kwargs: more :meth:`store` arguments.
        :returns: (Status, Error Comment).
        """
        uid = uid or _uid()
        before = len(self.gateway.instances())
        status, comment = self.store(assoc, data, uid, **kwargs)
        self.assertIn(status, statuses, f"0x{status:04X} {comment!r}")
        self.assertTrue(comment, f"0x{status:04X} without an Error Comment")
        self.assertEqual(len(self.gateway.instances()), before, "a refused instance was spooled")
        self.assertNotIn(uid, self.spooled_uids())
        # Section B invariant: the association stays usable after a status.
        good = _uid()
        self.assertEqual(self.store(assoc, raw.minimal(good), good), (0x0000, ""))
        return status, comment

    # -- D01-D05 ------------------------------------------------------------

    def test_d01_structurally_broken_data_sets_get_c000_with_comment(self) -> None:
        """D01: truncation, lengths past the end, undefined length on LO, stray delimiters, bad VR bytes and odd lengths are each 0xC000-range."""
        assoc = self.associate()
        cases: dict[str, tuple[str, bytes]] = {}
        uid = _uid()
        whole = raw.minimal(uid)
        # (Cut by an even count: PS3.8 E.1 odd fragments are an abort, HARDENING P24.)
        cases["truncated"] = (uid, whole[:-6])
        uid = _uid()
        cases["length past end"] = (uid, raw.minimal(uid, extra=[raw.explicit(0x00200010, "SH", b"AB", length=200)]))
        uid = _uid()
        cases["undefined length on UT"] = (uid, raw.minimal(uid, extra=[raw.explicit(0x0040A160, "UT", b"AB", length=raw.UNDEFINED)]))
        uid = _uid()
        cases["item delimiter at top level"] = (uid, raw.minimal(uid) + raw.item_delimiter())
        uid = _uid()
        cases["sequence delimiter without sequence"] = (uid, raw.minimal(uid) + raw.sequence_delimiter())
        uid = _uid()
        bad_item = raw.explicit(0x00400275, "SQ", raw.item(b"", length=raw.UNDEFINED) + raw.sequence_delimiter(), length=raw.UNDEFINED)
        cases["item closed by a sequence delimiter"] = (uid, raw.minimal(uid, extra=[bad_item]))
        uid = _uid()
        cases["invalid VR bytes"] = (uid, raw.minimal(uid, extra=[raw.explicit(0x00200011, "Z\x01", b"12")]))
        uid = _uid()
        # Two odd lengths, so the data set (and its fragment) is still even.
        cases["odd length"] = (uid, raw.minimal(uid, extra=[raw.explicit(0x00200011, "IS", b"123"),
                                                            raw.explicit(0x00200012, "IS", b"456")]))
        for name, (uid, data) in cases.items():
            try:
                self.assert_refused(assoc, data, CANNOT_UNDERSTAND, uid=uid)
            except AssertionError as e:
                raise AssertionError(f"{name}: {e}") from None

    def test_d02_deep_nesting_and_the_ic_dcmtk_0003_shape_get_c000(self) -> None:
        """D02: 65 levels and the 1,100-level 35 KB proof of concept get 0xC000 and the gateway lives; 10 levels are fine."""
        assoc = self.associate()
        for depth in (65, 1100):
            uid = _uid()
            data = raw.minimal(uid, extra=[raw.nested_sequences(depth)])
            status, comment = self.assert_refused(assoc, data, CANNOT_UNDERSTAND, uid=uid)
            self.assertIn("deeper", comment)
        uid = _uid()
        self.assertEqual(self.store(assoc, raw.minimal(uid, extra=[raw.nested_sequences(10)]), uid)[0], 0x0000)

    def test_d03_huge_declared_lengths_are_not_preallocated_and_get_c000(self) -> None:
        """D03: 0xFFFFFFF0 declared on OB, OW, UN and UT with a few bytes behind it gets 0xC000 at once."""
        assoc = self.associate()
        for vr, tag in (("OB", 0x00091010), ("OW", 0x00091010), ("UN", 0x00091010), ("UT", 0x00091010)):
            uid = _uid()
            extra = raw.explicit(0x00090010, "LO", b"HOSTILE ") + raw.explicit(tag, vr, b"\x00" * 64, length=0xFFFFFFF0)
            started = time.monotonic()
            self.assert_refused(assoc, raw.minimal(uid, extra=[extra]), CANNOT_UNDERSTAND, uid=uid)
            self.assertLess(time.monotonic() - started, 10.0)

    def test_d04_uid_mismatch_between_command_and_data_set_gets_a900(self) -> None:
        """D04: a data set whose SOP Class or SOP Instance UID differs from the command's gets 0xA900."""
        assoc = self.associate()
        uid = _uid()
        data = raw.minimal(uid, sop_class=MR_IMAGE_STORAGE)
        self.assert_refused(assoc, data, {0xA900}, uid=uid)
        data = raw.minimal(_uid())
        self.assert_refused(assoc, data, {0xA900}, uid=_uid())

    def test_d05_missing_sop_class_or_instance_uid_gets_c000(self) -> None:
        """D05: a data set without SOP Class UID, or without SOP Instance UID, gets 0xC000."""
        assoc = self.associate()
        uid = _uid()
        self.assert_refused(assoc, raw.minimal(uid, sop_class=None), {0xC000}, uid=uid)
        self.assert_refused(assoc, raw.minimal(""), {0xC000}, uid=_uid())

    # -- D06-D10 ------------------------------------------------------------

    def test_d06_hostile_uids_and_ids_are_stored_under_internal_names(self) -> None:
        """D06: path-like, NUL-bearing, overlong and lettered UIDs and IDs get 0x0000 and nothing is written outside the spool."""
        # An AE title with path characters as well (PS3.5 allows "/" and ".").
        assoc = self.associate(calling="../../tmp/x")
        hostile = ["../../x", "/etc/cron.d/x", "..\\..\\x", "C:\\x", "1.2\x003.4",
                   "1." + "2" * 80, "1.2.ABC.def"]
        home = self.gateway.dir
        outside_before = {p for p in home.rglob("*") if self.gateway.spool not in p.parents}
        parent_before = set(os.listdir(home.parent))
        for value in hostile:
            data = raw.minimal(value, study=value, series=value,
                               patient_id=value.encode("latin-1"),
                               patient_name=value.encode("latin-1"))
            status, comment = self.store(assoc, data, value)
            self.assertEqual(status, 0x0000, f"{value!r}: {comment}")
        # Storage names are internal: hex digests or UUIDs, never peer data.
        for path in self.gateway.instances():
            stem = path.stem
            self.assertRegex(stem, r"^[0-9a-zA-Z_-]+$")
            self.assertEqual(path.resolve().parent.parent, self.gateway.spool.resolve())
        self.assertFalse(Path("/etc/cron.d/x").exists())
        self.assertFalse(Path("/tmp/x").exists())
        self.assertEqual({p for p in home.rglob("*") if self.gateway.spool not in p.parents},
                         outside_before)
        self.assertEqual(set(os.listdir(home.parent)), parent_before)
        self.assertEqual([p for p in self.gateway.spool.rglob("*") if p.name == "x"], [])
        stored = set(self.spooled_uids())
        for value in ("../../x", "/etc/cron.d/x", "1.2.ABC.def"):
            self.assertIn(value, stored)

    def test_d07_command_sop_class_not_the_context_abstract_syntax_gets_0122(self) -> None:
        """D07: a CT C-STORE on the MR presentation context gets 0x0122 and is not spooled."""
        assoc = self.associate()
        uid = _uid()
        before = len(self.gateway.instances())
        status, _comment = self.store(assoc, raw.minimal(uid), uid, context_class=MR_IMAGE_STORAGE)
        self.assertEqual(status, 0x0122)
        self.assertEqual(len(self.gateway.instances()), before)
        good = _uid()
        self.assertEqual(self.store(assoc, raw.minimal(good), good)[0], 0x0000)

    def test_d08_data_set_in_another_transfer_syntax_gets_c000(self) -> None:
        """D08: implicit bytes on an explicit context, explicit on implicit, big endian on little endian all get 0xC000."""
        assoc = self.associate()
        uid = _uid()
        self.assert_refused(assoc, raw.minimal(uid, syntax=raw.IMPLICIT_VR_LE), CANNOT_UNDERSTAND,
                            uid=uid, syntax=raw.EXPLICIT_VR_LE)
        uid = _uid()
        self.assert_refused(assoc, raw.minimal(uid, syntax=raw.EXPLICIT_VR_LE), CANNOT_UNDERSTAND,
                            uid=uid, syntax=raw.IMPLICIT_VR_LE)
        uid = _uid()
        self.assert_refused(assoc, raw.minimal(uid, syntax=raw.EXPLICIT_VR_BE), CANNOT_UNDERSTAND,
                            uid=uid, syntax=raw.EXPLICIT_VR_LE)

    def test_d09_deflate_bomb_is_stopped_at_the_cap_with_c000(self) -> None:
        """D09: a deflated data set of about 60 KB that inflates to 64 MiB (cap 4 MiB) gets 0xC000."""
        assoc = self.associate()
        uid = _uid()
        bomb = raw.deflate_bomb(uid, 64 * 1024 * 1024)
        self.assertLess(len(bomb), 200 * 1024)
        status, comment = self.assert_refused(assoc, bomb, CANNOT_UNDERSTAND, uid=uid, syntax=raw.DEFLATED)
        self.assertIn("inflat", comment)
        # Control: a small honest deflated data set is accepted.
        uid = _uid()
        self.assertEqual(self.store(assoc, raw.deflate_bomb(uid, 1024), uid, syntax=raw.DEFLATED)[0], 0x0000)

    def test_d10_instance_above_the_maximum_size_gets_a_permanent_c0xx(self) -> None:
        """D10: a well-formed instance one MiB over ``max_instance_size`` gets 0xC0xx with a comment."""
        assoc = self.associate()
        uid = _uid()
        pixels = raw.explicit(0x7FE00010, "OB", bytes(MAX_INSTANCE + 1024 * 1024))
        status, comment = self.assert_refused(assoc, raw.minimal(uid, extra=[pixels]),
                                              range(0xC000, 0xC100), uid=uid)
        self.assertIn("larger", comment)

    # -- D13, D14, D16-D19 ----------------------------------------------------

    def hold_row(self) -> dict[str, Any]:
        """The queue row of the unreachable destination.

        :returns: the ``queue list --json`` row of ``hold``.
        """
        return self.gateway.queue_rows()["hold"]

    def test_d13_identical_resend_is_acknowledged_and_counted_as_duplicate(self) -> None:
        """D13: the same SOP Instance UID with identical bytes gets 0x0000 twice, is queued once and counted once as a duplicate."""
        assoc = self.associate()
        uid = _uid()
        data = raw.minimal(uid, patient_id=b"DUP13")
        before = self.hold_row()
        self.assertEqual(self.store(assoc, data, uid)[0], 0x0000)
        self.assertEqual(self.store(assoc, data, uid)[0], 0x0000)
        after = self.hold_row()
        self.assertEqual(after["duplicates"] - before["duplicates"], 1)
        self.assertEqual((after["queued"] + after["in_flight"] + after["dead"])
                         - (before["queued"] + before["in_flight"] + before["dead"]), 1)

    def test_d14_same_uid_other_content_keeps_both_versions(self) -> None:
        """D14: the same SOP Instance UID with other bytes, and in another study, gets 0x0000 and all versions stay in the spool, queued."""
        assoc = self.associate()
        uid = _uid()
        first = raw.minimal(uid, patient_id=b"DUP14A")
        second = raw.minimal(uid, patient_id=b"DUP14B")
        third = raw.minimal(uid, patient_id=b"DUP14C", study="1.2.826.0.1.3680043.10.543.2")
        before = self.hold_row()
        for data in (first, second, third):
            self.assertEqual(self.store(assoc, data, uid)[0], 0x0000)
        after = self.hold_row()
        self.assertEqual(after["duplicates"], before["duplicates"])
        self.assertEqual((after["queued"] + after["in_flight"] + after["dead"])
                         - (before["queued"] + before["in_flight"] + before["dead"]), 3)
        versions = {dataset_bytes(p) for p in self.gateway.instances()
                    if uid in self.spooled_uids_of(p)}
        self.assertEqual(versions, {first, second, third})

    @staticmethod
    def spooled_uids_of(path: Path) -> str:
        """The SOP Instance UID of one spooled file.

        :param path: the file.
        :returns: its UID.
        """
        import pydicom
        return str(pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID)

    def test_d16_executable_preamble_is_not_stored_and_files_are_0600(self) -> None:
        """D16: a Part 10 file with an ``MZ`` preamble sent by ``send_c_store(path)`` is spooled with a zero preamble, mode 0600."""
        self.patch(_config, "STORE_SEND_CHUNKED_DATASET", True)
        folder = Path(self.mktemp())
        folder.mkdir()
        source = write_instance(folder / "mz.dcm", raw.EXPLICIT_VR_LE, 4096)
        with open(source, "r+b") as f:
            f.write(b"MZ\x90\x00" + b"\xcc" * 124)
        assoc = self.associate()
        status = assoc.send_c_store(source)
        self.assertEqual(status.Status, 0x0000)
        uid = self.spooled_uids_of(source)
        (path,) = [p for p in self.gateway.instances() if self.spooled_uids_of(p) == uid]
        self.assertEqual(path.read_bytes()[:128], bytes(128))
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(dataset_bytes(path), dataset_bytes(source))

    def test_d17_odd_character_sets_are_stored_unchanged_and_routed_deterministically(self) -> None:
        """D17: unknown, ISO 2022 with broken escapes and invalid UTF-8 names get 0x0000, bytes unchanged, each routed once."""
        assoc = self.associate()
        names = [
            (b"ISO_IR 999", b"ODD^NAME"),
            (b"ISO 2022 IR 87", b"\x1b$B\xff\xfe\x1b(Q^X"),
            (b"ISO_IR 192", b"\xc3\x28\xa0\xa1^\xf0\x28\x8c\x28"),
            (b"\\ISO 2022 IR 13", b"\x1b)I\x1b"),
        ]
        before = self.hold_row()
        sent: dict[str, bytes] = {}
        for charset, name in names:
            uid = _uid()
            charset = charset + b" " if len(charset) % 2 else charset
            name = name + b" " if len(name) % 2 else name
            data = raw.minimal(uid, patient_id=b"D17", patient_name=name,
                               extra=[raw.explicit(0x00080005, "CS", charset),
                                      raw.explicit(0x00081030, "LO", name)])
            self.assertEqual(self.store(assoc, data, uid)[0], 0x0000, charset)
            sent[uid] = data
        after = self.hold_row()
        self.assertEqual(after["queued"] + after["in_flight"] + after["dead"]
                         - before["queued"] - before["in_flight"] - before["dead"], len(names))
        stored = {self.spooled_uids_of(p): p for p in self.gateway.instances()}
        for uid, data in sent.items():
            self.assertEqual(dataset_bytes(stored[uid]), data)

    def test_d18_many_elements_and_long_sequences_stay_within_budget(self) -> None:
        """D18: 100,000 private elements and a 10,000-item sequence are answered (0x0000) within seconds each."""
        assoc = self.associate()
        # Private groups from 0x0021 up, so they follow every standard element of minimal().
        for extra in (raw.private_elements(100_000, group=0x0021), raw.long_sequence(10_000)):
            uid = _uid()
            started = time.monotonic()
            status, comment = self.store(assoc, raw.minimal(uid, extra=[extra]), uid)
            elapsed = time.monotonic() - started
            # Within the gateway's element budget (1,000,000 headers), so accepted.
            self.assertEqual(status, 0x0000, comment)
            self.assertLess(elapsed, 20.0)

    def test_d19_c_store_without_data_set_gets_c000_and_the_association_continues(self) -> None:
        """D19: a C-STORE-RQ whose Command Data Set Type is 0x0101 gets a 0xC000-range failure and the next store succeeds."""
        assoc = self.associate()
        self.assert_refused(assoc, None, CANNOT_UNDERSTAND, data_set_type=0x0101)

    # -- D20-D22 ------------------------------------------------------------

    def test_d20_uncorrelatable_command_sets_get_a_abort_0_0(self) -> None:
        """D20: no Message ID, no Affected SOP Instance UID, a duplicated element, or descending tags each end in A-ABORT(0,0)."""
        cases = {
            "no message id": {"message_id": None},
            "no affected sop instance": {"omit": (0x00001000,)},
            "duplicate element": {"duplicate": (0x00000100,)},
            "descending tags": {"sort": False},
        }
        for name, switches in cases.items():
            aborts: list[Any] = []

            def on_pdu(event: Any) -> None:
                if event.pdu.__class__.__name__ == "A_ABORT_RQ":
                    aborts.append(event.pdu)

            assoc = self.associate(handlers=[(evt.EVT_PDU_RECV, on_pdu)])
            uid = _uid()
            context_id = self.context(assoc, raw.CT_IMAGE_STORAGE, raw.EXPLICIT_VR_LE)
            self.send(assoc, context_id, raw.c_store_rq(uid, **switches), raw.minimal(uid))
            wait_until(lambda: aborts, 20, f"abort for {name}")
            self.resume(assoc)
            self.assertEqual(len(aborts), 1, name)
            self.assertEqual((aborts[0].source, aborts[0].reason_diagnostic), (0, 0), name)
            self.assertNotIn(uid, self.spooled_uids())

    def test_d21_unknown_command_field_gets_0211_and_the_association_continues(self) -> None:
        """D21: Command Field 0x0ABC, and C-FIND-RQ (not implemented), with and without a data set, get 0x0211."""
        received: list[Any] = []

        def on_pdu(event: Any) -> None:
            for item in getattr(event.pdu, "presentation_data_value_items", []):
                value = item.presentation_data_value
                if value[0] & 0x01:
                    received.append(_command_elements(value[1:]))

        # pynetdicom drops a response with Command Field 0x8ABC (it cannot
        # make a primitive of it), so that response is read from the raw PDU.
        for data in (None, raw.minimal(_uid())):
            assoc = self.associate(handlers=[(evt.EVT_PDU_RECV, on_pdu)])
            context_id = self.context(assoc, raw.CT_IMAGE_STORAGE, raw.EXPLICIT_VR_LE)
            received.clear()
            self.send(assoc, context_id, raw.c_store_rq(_uid(), command_field=0x0ABC,
                                                        data_set_type=0x0101 if data is None else 0),
                      data)
            wait_until(lambda: received, 20, "a response to command field 0x0ABC")
            self.resume(assoc)
            self.assertEqual((received[0][0x00000900], received[0][0x00000100]), (0x0211, 0x8ABC))
        # A command pynetdicom knows (C-FIND-RQ) shows the association continuing.
        assoc = self.associate()
        context_id = self.context(assoc, raw.CT_IMAGE_STORAGE, raw.EXPLICIT_VR_LE)
        for data in (None, raw.minimal(_uid())):
            self.send(assoc, context_id, raw.c_store_rq(_uid(), command_field=0x0020,
                                                        data_set_type=0x0101 if data is None else 0),
                      data)
            answer = self.response(assoc)
            self.assertIsNotNone(answer)
            assert answer is not None
            self.assertEqual(answer[0], 0x0211)
        good = _uid()
        self.assertEqual(self.store(assoc, raw.minimal(good), good)[0], 0x0000)

    def test_d22_many_one_kilobyte_instances_on_one_association(self) -> None:
        """D22: many 1 KB instances on one association all get 0x0000 and the gateway's open descriptors return to their count."""
        fd_dir = Path(f"/proc/{self.gateway.pid}/fd")
        assoc = self.associate()
        good = _uid()
        self.assertEqual(self.store(assoc, raw.minimal(good), good)[0], 0x0000)
        fds_before = len(os.listdir(fd_dir))
        padding = raw.explicit(0x00204000, "LT", b"x" * 700)
        started = time.monotonic()
        for i in range(D22_COUNT):
            uid = _uid()
            status, comment = self.store(assoc, raw.minimal(uid, extra=[padding]), uid)
            self.assertEqual(status, 0x0000, f"instance {i}: {comment}")
        elapsed = time.monotonic() - started
        fds_after = len(os.listdir(fd_dir))
        print(f"\nD22: {D22_COUNT} x 1 KB in {elapsed:.1f} s = {D22_COUNT / elapsed:.0f} instances/s; "
              f"fds {fds_before} -> {fds_after}")
        self.assertLessEqual(fds_after, fds_before + 2)

