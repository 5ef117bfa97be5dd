"""Data at rest and logs, against the real gateway process (HARDENING H08, H09).

* Started with umask 022 (the default of a login shell), the gateway still
  writes everything that can hold patient data owner-only: after a store and
  a morph, the spool tree, the journal and its WAL files, the log files, the
  audit files and the folder export below its root are walked.
* A peer's calling AE title and SOP Instance UID carrying a line feed, an
  ANSI escape sequence (ESC [ 31 m) and a C1 control (NEL, 0x85) cannot
  forge a log line or reach a terminal: the text log has one line per event
  and no raw control character; the JSON log has one valid object per line
  holding the exact value.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from twisted.trial.unittest import TestCase

from gateway.audit import rotation_order, verify_chain
from gateway.ul.pdu import AAssociateAC, AAssociateRJ, AReleaseRP, PDataTF
from tests.support import dcmtk
from tests.support.datasets import write_instance
from tests.support.gateway_process import GatewayProcess, folder_destination, wait_until
from tests.support.rawpeer import (
    APPLICATION_CONTEXT_ITEM,
    CT_IMAGE_STORAGE,
    EXPLICIT_VR_LE,
    RawPeer,
    command_pdata,
    pdata,
    pdv,
    raw_associate_rq,
    raw_context,
    raw_user_information,
    release_rq,
    store_rq_command,
    tiny_dataset,
)


class UmaskGateway(GatewayProcess):
    """A gateway process started under ``umask 022`` (through ``sh -c 'umask 022; exec ...'``)."""

    def command(self) -> list[str]:
        """The usual command, behind a shell that sets the umask first.

        :returns: the argv.
        """
        return ["/bin/sh", "-c", 'umask 022; exec "$0" "$@"', *super().command()]


def modes_below(root: Path) -> dict[str, int]:
    """The permission bits of every folder and file below ``root`` (not ``root`` itself).

    :param root: a folder.
    :returns: ``{relative path: mode}``, folders with a trailing ``/``.
    """
    found: dict[str, int] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            path = Path(folder, name)
            found[str(path.relative_to(root)) + "/"] = stat.S_IMODE(path.lstat().st_mode)
        for name in files:
            path = Path(folder, name)
            found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def too_open(modes: dict[str, int]) -> dict[str, str]:
    """The entries of ``modes`` that are not 0700 (folders) or 0600 (files).

    :param modes: from :func:`modes_below`.
    :returns: ``{path: mode in octal}``.
    """
    return {path: f"{mode:04o}" for path, mode in modes.items() if mode != (0o700 if path.endswith("/") else 0o600)}


class UmaskTests(TestCase):
    """Everything the gateway creates that can hold patient data is private under umask 022."""

    timeout = 180

    def test_spool_journal_logs_audit_and_export_are_owner_only(self) -> None:
        """After a store, a morph and an export, every folder is 0700 and every file 0600 (journal -wal/-shm included)."""
        base = Path(self.mktemp()).resolve()
        base.mkdir()
        export = base / "export"
        export.mkdir()
        source = base / "source"
        source.mkdir()
        files = [write_instance(source / f"ct{n}.dcm", ExplicitVRLittleEndian, 16 * 1024, seed=n) for n in range(2)]
        gateway = UmaskGateway(
            base / "gw",
            log={"file": str(base / "logs" / "gateway.log"), "level": "debug", "rotate": {"size": 1024, "keep": 3}},
            audit={"file": str(base / "audit" / "audit.jsonl"), "rotate": {"size": 4000, "keep": 5}},
            destinations={"export": folder_destination(export)},
            routes=[{"name": "deid", "morph": [{"deidentify": "basic"}], "forward": ["export"]}],
        )
        self.addCleanup(gateway.stop, 15)
        gateway.start()
        sent = dcmtk.storescu(gateway.port, files)
        self.assertEqual(sent.returncode, 0, sent.describe())

        def exported() -> bool:
            return len([p for p in export.rglob("*.dcm")]) == 2

        wait_until(exported, 60, lambda: "the export has not received both files\n" + gateway.log_text()[-3000:])
        # The deliveries are journaled (and audited) with the worker's next write, not at once (issue 13).
        wait_until(lambda: gateway.queue_rows()["export"]["delivered"] == 2, 30, "both deliveries journaled")
        spool = modes_below(gateway.spool)
        # The walk saw what the issue names: the journal with its WAL files,
        # stored instances and morphed copies.
        for name in ("queue.sqlite", "queue.sqlite-wal", "queue.sqlite-shm"):
            self.assertIn(name, spool)
        self.assertTrue(any(p.startswith("instances/") and not p.endswith("/") for p in spool), spool)
        self.assertTrue(any(p.startswith("morphed/") and not p.endswith("/") for p in spool), spool)
        self.assertEqual(stat.S_IMODE(gateway.spool.stat().st_mode), 0o700)
        self.assertEqual(too_open(spool), {})
        logs, audit = modes_below(base / "logs"), modes_below(base / "audit")
        self.assertGreater(len([p for p in logs if p.startswith("gateway.log.")]), 0, logs)
        self.assertGreater(len([p for p in audit if p.startswith("audit.jsonl.")]), 0, audit)
        self.assertEqual(too_open(logs), {})
        self.assertEqual(too_open(audit), {})
        for folder in (base / "logs", base / "audit"):
            self.assertEqual(stat.S_IMODE(folder.stat().st_mode), 0o700, folder)
        self.assertEqual(too_open(modes_below(export)), {})
        # And the audit trail the process wrote, rotated, still verifies.
        audit_files = rotation_order([str(p) for p in (base / "audit").glob("audit.jsonl*")])
        report = verify_chain(audit_files)
        self.assertTrue(report.ok, str(report))


#: The hostile bytes: a line feed then a forged line, ESC [ 31 m, NEL (0x85).
FORGED = b"FORGED [gateway.listen#info] ok"
#: A calling AE title of 16 bytes with LF, ESC [ 31 m and 0x85.
HOSTILE_AE = b"CT\n\x1b[31m\x85EVIL  "
#: A SOP Instance UID carrying the same (UI values are padded to even length).
HOSTILE_UID = b"1.2.3\n" + FORGED + b"\x1b[31m\x85\x9b2J"


def hostile_rq(calling: bytes) -> bytes:
    """An A-ASSOCIATE-RQ for CT Image Storage with the raw calling AE title field ``calling``.

    :param calling: up to 16 bytes (NUL-padded).
    :returns: the PDU.
    """
    items = APPLICATION_CONTEXT_ITEM + raw_context(1, CT_IMAGE_STORAGE, (EXPLICIT_VR_LE,)) + raw_user_information()
    return raw_associate_rq(items, calling=calling.ljust(16))


def hostile_store_pdus() -> tuple[bytes, bytes]:
    """The C-STORE-RQ command and data set P-DATA-TFs of the hostile peer.

    The command is encoded with a placeholder UID of the same length whose
    bytes are then replaced, so the gateway receives exactly the hostile
    bytes (our encoder would refuse them).

    :returns: the two PDUs.
    """
    uid = HOSTILE_UID + (b"\x00" if len(HOSTILE_UID) % 2 else b"")
    placeholder = "9" * len(uid)
    command = store_rq_command(placeholder)
    command = command.replace(placeholder.encode(), uid)
    dataset = tiny_dataset(generate_uid())
    return command_pdata(1, command), pdata(pdv(1, 0x02, dataset))


def raw_controls(data: bytes) -> list[bytes]:
    """The raw control bytes of a log (C0 but LF and TAB, DEL, and the UTF-8 of C1 characters).

    :param data: the log file's bytes.
    :returns: the offending sequences found.
    """
    return re.findall(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]|\x85|\x9b", data)


class LogEscapingTests(TestCase):
    """A hostile calling AE title and SOP Instance UID over a real association cannot forge a log line."""

    timeout = 120

    def run_hostile_peer(self, log_format: str) -> tuple[GatewayProcess, bytes]:
        """Start a gateway logging in ``log_format`` to a file, play the hostile peer, stop, read the log.

        :param log_format: ``text`` or ``json``.
        :returns: the stopped gateway and its log file's bytes.
        """
        base = Path(self.mktemp()).resolve()
        log_file = base / "gateway.log"
        gateway = GatewayProcess(base / "gw", log={"format": log_format, "file": str(log_file), "level": "debug"})
        self.addCleanup(gateway.stop, 15)
        gateway.start()
        # The hostile calling AE title is refused (it is not a valid AE
        # title), and logged; the hostile UID arrives on an accepted association.
        with RawPeer(gateway.host, gateway.port) as peer:
            self.assertIsInstance(peer.associate(hostile_rq(HOSTILE_AE), timeout=10), AAssociateRJ)
        command, dataset = hostile_store_pdus()
        with RawPeer(gateway.host, gateway.port) as peer:
            self.assertIsInstance(peer.associate(hostile_rq(b"RAWPEER"), timeout=10), AAssociateAC)
            peer.send(command)
            peer.send(dataset)
            peer.wait_pdu(PDataTF, 10)  # the C-STORE-RSP
            peer.send(release_rq())
            peer.wait_pdu(AReleaseRP, 10)
        wait_until(lambda: log_file.exists() and b"C-STORE" in log_file.read_bytes(), 30,
                   lambda: "no C-STORE line in the log\n" + gateway.log_text()[-3000:])
        gateway.stop(15)
        return gateway, log_file.read_bytes()

    def test_text_log_has_one_line_per_event_and_no_control_character(self) -> None:
        """Text log: no raw ESC, NEL, CSI, CR or NUL; no line starts with the forged text; the escapes are visible."""
        _, data = self.run_hostile_peer("text")
        self.assertEqual(raw_controls(data), [], data.decode("utf-8", "replace")[-3000:])
        lines = data.decode("utf-8").split("\n")
        forged = [line for line in lines if line.startswith(FORGED.decode()) or line.startswith("FORGED")]
        self.assertEqual(forged, [])
        event_start = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d \[")
        strays = [line for line in lines if line and not line.startswith("\t") and not event_start.match(line)]
        self.assertEqual(strays, [])
        store = [line for line in lines if "C-STORE" in line]
        self.assertEqual(len(store), 1, store)
        self.assertIn("1.2.3\\nFORGED [gateway.listen#info] ok\\x1b[31m", store[0])

    def test_json_log_is_one_valid_object_per_line_with_the_exact_values(self) -> None:
        """JSON log: every line parses, no raw control byte, and the C-STORE event holds the UID as received."""
        _, data = self.run_hostile_peer("json")
        self.assertEqual(raw_controls(data), [])
        records = [json.loads(line) for line in data.decode("utf-8").splitlines() if line]
        store = [r for r in records if "C-STORE" in r["message"]]
        self.assertEqual(len(store), 1)
        self.assertIn("\n" + FORGED.decode() + "\x1b[31m", store[0]["sop_instance_uid"])
