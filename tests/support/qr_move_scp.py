"""A synthetic Q/R FIND and MOVE SCP over a folder of Part 10 files (pynetdicom, test-only).

Run as ``python -m tests.support.qr_move_scp``; :class:`SyntheticMoveScp`
starts it. It is the second kind of source of the issue 16 multi-source
tests, next to Orthanc: it answers IMAGE-level C-FIND (Study Root and Patient
Root, PS3.4 C.4.1) from the files' headers and C-MOVE (PS3.4 C.4.2) by
sending the matching files to the Move Destination (looked up in
``--destination AET=HOST:PORT``), one sub-operation every ``--delay``
seconds, so a test can cancel a move while it runs.

Every query, move, C-CANCEL (PS3.7 9.3.2.3) and end is appended to
``--events`` as a JSON line with the wall-clock time it happened
(``time.time()``, the same clock as the test process on this machine),
flushed at once: "the source saw its C-CANCEL at T".

It reuses the matching of :mod:`tests.support.qr_scp` (kept a separate module
so the two can grow apart without touching each other).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.support.peerprocess import PeerProcess
from tests.support.ports import free_port, port_is_open
from tests.support.qr_scp import matches, response

#: The header fields indexed per file (the IMAGE level's keys and those above it).
INDEXED = ("PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
           "Modality", "InstanceNumber")


def index_folder(folder: Path) -> list[dict[str, Any]]:
    """One IMAGE-level record per Part 10 file of ``folder`` (sorted by name), with its path.

    :param folder: the folder.
    :returns: ``{keyword: value, "path": str}`` records.
    """
    records: list[dict[str, Any]] = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        ds = dcmread(path, stop_before_pixels=True)
        record: dict[str, Any] = {"QueryRetrieveLevel": "IMAGE", "path": str(path)}
        for keyword in INDEXED:
            if keyword in ds:
                record[keyword] = str(ds.get(keyword))
        records.append(record)
    return records


def values(element_value: Any) -> list[str]:
    """A query key's value(s) as strings (a List of UID is several, PS3.4 C.2.2.2.2)."""
    if element_value is None or element_value == "":
        return []
    if isinstance(element_value, (str, bytes)):
        return [v for v in str(element_value).split("\\") if v]
    return [str(v) for v in element_value]


def selected(records: Sequence[dict[str, Any]], identifier: Dataset) -> list[dict[str, Any]]:
    """The records a C-MOVE identifier asks for: every unique key it gives must match (lists allowed).

    :param records: the indexed records.
    :param identifier: the C-MOVE identifier (any level).
    :returns: the matching records, in folder order.
    """
    wanted = {k: values(identifier.get(k, None)) for k in
              ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
    return [r for r in records if all(not v or str(r.get(k, "")) in v for k, v in wanted.items())]


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the arguments and serve until killed."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        CTImageStorage,
        PatientRootQueryRetrieveInformationModelFind,
        PatientRootQueryRetrieveInformationModelMove,
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove,
        Verification,
    )

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--aet", default="SYNTHMOVE")
    parser.add_argument("--folder", required=True)
    parser.add_argument("--destination", action="append", default=[], help="AET=HOST:PORT")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--events", required=True)
    parser.add_argument("--refuse-uid-lists", action="store_true",
                        help="fail a C-MOVE naming several SOP Instance UIDs (0xC513), like archives without List of UID matching")
    args = parser.parse_args(argv)
    records = index_folder(Path(args.folder))
    destinations: dict[str, tuple[str, int]] = {}
    for item in args.destination:
        aet, _, address = item.partition("=")
        host, _, port = address.rpartition(":")
        destinations[aet] = (host, int(port))
    events: TextIO = open(args.events, "a")  # noqa: SIM115 - open for the process's life

    def record(**event: Any) -> None:
        events.write(json.dumps({"time": time.time(), **event}) + "\n")
        events.flush()

    def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        record(event="find", level=str(query.get("QueryRetrieveLevel", "")),
               keys={e.keyword: str(e.value) for e in query if e.keyword})
        sent = 0
        for rec in records:
            if event.is_cancelled:
                record(event="cancel", verb="find", sent=sent)
                yield 0xFE00, None
                return
            if matches(rec, query):
                sent += 1
                yield 0xFF00, response(rec, query)
        record(event="done", verb="find", sent=sent)
        yield 0x0000, None

    def on_move(event: Any) -> Iterator[Any]:
        identifier = event.identifier
        destination = str(event.move_destination.decode() if isinstance(event.move_destination, bytes)
                          else event.move_destination).strip()
        chosen = selected(records, identifier)
        record(event="move", message_id=int(event.request.MessageID), destination=destination,
               level=str(identifier.get("QueryRetrieveLevel", "")),
               uids=[r["SOPInstanceUID"] for r in chosen])
        if destination not in destinations:
            yield None, None  # pynetdicom answers 0xA801, Move Destination unknown
            return
        host, port = destinations[destination]
        yield host, port
        if args.refuse_uid_lists and len(values(identifier.get("SOPInstanceUID", None))) > 1:
            record(event="refused", message_id=int(event.request.MessageID))
            # pynetdicom answers a handler failing here 0xC513 (a 0xCxxx "unable to process").
            raise ValueError("this source takes no List of UID")
        yield len(chosen)
        sent = 0
        for rec in chosen:
            # The delay is slept in slices, looking for a C-CANCEL between them, so the
            # time recorded is when it arrived (give or take a slice), not the next
            # sub-operation. pynetdicom's is_cancelled consumes the C-CANCEL: read it once.
            until = time.monotonic() + args.delay
            cancelled = event.is_cancelled
            while not cancelled and time.monotonic() < until:
                time.sleep(min(0.02, max(0.0, until - time.monotonic())))
                cancelled = event.is_cancelled
            if cancelled:
                record(event="cancel", verb="move", message_id=int(event.request.MessageID), sent=sent)
                yield 0xFE00, None
                return
            sent += 1
            yield 0xFF00, dcmread(rec["path"])
        record(event="done", verb="move", message_id=int(event.request.MessageID), sent=sent)

    ae = AE(ae_title=args.aet)
    ae.maximum_pdu_size = 0
    for context in (StudyRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelFind,
                    StudyRootQueryRetrieveInformationModelMove, PatientRootQueryRetrieveInformationModelMove,
                    Verification):
        ae.add_supported_context(context)
    # The sub-operation association to the Move Destination proposes these.
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ae.start_server(("127.0.0.1", args.port), block=True,
                    evt_handlers=[(evt.EVT_C_FIND, on_find), (evt.EVT_C_MOVE, on_move)])


class SyntheticMoveScp(PeerProcess):
    """:mod:`tests.support.qr_move_scp` in its own process.

    :param workdir: folder for its log and event file (created).
    :param folder: the Part 10 files it holds.
    :param aet: its AE title.
    :param delay: seconds before each C-MOVE sub-operation.
    :param refuse_uid_lists: fail a C-MOVE naming several SOP Instance UIDs (0xC513).

    Set :attr:`destinations` (``{AET: (host, port)}``) before :meth:`start`.
    """

    def __init__(self, workdir: Path, folder: Path, *, aet: str = "SYNTHMOVE", delay: float = 0.0,
                 refuse_uid_lists: bool = False) -> None:
        self.dir = Path(workdir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.folder = Path(folder).resolve()
        self.aet = aet
        self.delay = delay
        self.refuse_uid_lists = refuse_uid_lists
        self.port = free_port()
        self.events_path = self.dir / "events.jsonl"
        self.destinations: dict[str, tuple[str, int]] = {}
        super().__init__("qr_move_scp", self.dir / "qr_move_scp.log")

    def start(self, timeout: float = 30.0) -> SyntheticMoveScp:
        """Start it and wait until its port accepts connections.

        :param timeout: seconds.
        :returns: this object.
        """
        argv = [sys.executable, "-m", "tests.support.qr_move_scp", "--port", str(self.port), "--aet", self.aet,
                "--folder", str(self.folder), "--delay", str(self.delay), "--events", str(self.events_path)]
        if self.refuse_uid_lists:
            argv.append("--refuse-uid-lists")
        for aet, (host, port) in self.destinations.items():
            argv += ["--destination", f"{aet}={host}:{port}"]
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self.spawn(argv, lambda: port_is_open("127.0.0.1", self.port), timeout, env=env, cwd=root,
                   what=f"listen on {self.port}")
        return self

    def events(self) -> list[dict[str, Any]]:
        """What it recorded, in order (``event``: find, move, cancel, done; ``time``).

        :returns: the events so far.
        """
        if not self.events_path.exists():
            return []
        return [json.loads(line) for line in self.events_path.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    main()
