"""A synthetic Q/R FIND SCP (pynetdicom, test-only), run as ``python -m tests.support.qr_scp``.

It answers Patient Root and Study Root C-FIND (PS3.4 C.4.1) either from a fixed
list of identifiers or with ``--generate N`` STUDY-level matches produced one at
a time by a generator (memory stays flat however large N is: the 100k-match
query of issue 16 against the gateway's ``max_results``). Each response
carries the query's keys, filled from the record where it has them.

Every query, C-CANCEL (PS3.7 9.3.2.3) and end is appended to ``--events`` as a
JSON line, flushed at once, so the test process can see that a cancel reached
this source.

``--relational`` answers relational-queries 1 to a requester asking it in the
SOP Class Extended Negotiation (PS3.4 C.5.1.1; without it pynetdicom sends no
reply, which means not supported); every extended negotiation asked is
recorded (``{"event": "extended", ...}``). ``--pending-status 0xFF01`` sends
matches with "Matches are continuing - Warning that one or more Optional
Keys were not supported" (PS3.4 C.4.1.1.4).
With ``--instances DIR`` it is also an archive *without C-GET* (issue 16): it
answers IMAGE-level C-FIND from the Part 10 files of ``DIR`` and C-MOVE
(Patient and Study Root) by sending the matching files to the move
destination named by ``--move-destination AET=HOST:PORT`` (repeatable; an
unknown one gets 0xA801), and accepts no GET context. ``--move-delay`` sleeps
before each sub-operation (a kill during the move).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from typing import Any, TextIO

from pydicom.dataset import Dataset

#: Root for the generated UIDs (a fixed, test-only prefix).
UID_ROOT = "1.2.826.0.1.3680043.10.543.16"


def generated(count: int) -> Iterator[dict[str, Any]]:
    """Yield ``count`` STUDY-level records, one at a time.

    :param count: how many.
    :returns: an iterator of ``{keyword: value}``.
    """
    for i in range(count):
        yield {
            "QueryRetrieveLevel": "STUDY",
            "PatientID": f"SYN{i % 1000:04d}",
            "PatientName": f"SYNTH^{i % 1000:04d}",
            "StudyInstanceUID": f"{UID_ROOT}.{i + 1}",
            "StudyDate": "20240101",
            "StudyID": str(i + 1),
            "AccessionNumber": f"A{i + 1}",
            "StudyDescription": "GENERATED",
        }


def matches(record: dict[str, Any], query: Dataset) -> bool:
    """Single-value matching on the query's non-empty keys (PS3.4 C.2.2.2.1), ``*`` universal.

    :param record: a record.
    :param query: the identifier.
    :returns: whether it matches.
    """
    if record.get("QueryRetrieveLevel") != query.get("QueryRetrieveLevel"):
        return False
    for elem in query:
        if elem.keyword in ("QueryRetrieveLevel", "SpecificCharacterSet") or not elem.keyword:
            continue
        value = str(elem.value or "")
        if value in ("", "*") or elem.keyword not in record:
            continue
        if str(record[elem.keyword]) != value:
            return False
    return True


def response(record: dict[str, Any], query: Dataset) -> Dataset:
    """Build the response identifier: the query's keys, filled from the record.

    :param record: the matching record.
    :param query: the identifier.
    :returns: the response identifier.
    """
    ds = Dataset()
    for elem in query:
        if elem.keyword:
            setattr(ds, elem.keyword, record.get(elem.keyword, elem.value))
    ds.QueryRetrieveLevel = record["QueryRetrieveLevel"]
    ds.RetrieveAETitle = record.get("RetrieveAETitle", "SYNTH")
    return ds


def image_records(folder: str) -> list[tuple[dict[str, Any], str]]:
    """IMAGE-level records of the Part 10 files in ``folder``, with their paths (sorted by name)."""
    import os

    from pydicom import dcmread

    records: list[tuple[dict[str, Any], str]] = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        ds = dcmread(path, stop_before_pixels=True)
        records.append(({
            "QueryRetrieveLevel": "IMAGE",
            "PatientID": str(ds.get("PatientID", "")),
            "StudyInstanceUID": str(ds.StudyInstanceUID),
            "SeriesInstanceUID": str(ds.SeriesInstanceUID),
            "SOPInstanceUID": str(ds.SOPInstanceUID),
            "SOPClassUID": str(ds.SOPClassUID),
        }, path))
    return records


def move_matches(record: dict[str, Any], query: Dataset) -> bool:
    """A C-MOVE identifier names the record: its unique keys (at any level) equal the record's."""
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        value = str(query.get(keyword, "") or "")
        if value and value != record.get(keyword):
            return False
    return True


def main() -> None:
    """Parse the arguments and serve until killed."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        CTImageStorage,
        MRImageStorage,
        PatientRootQueryRetrieveInformationModelFind,
        PatientRootQueryRetrieveInformationModelMove,
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove,
        Verification,
    )

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--aet", default="SYNTH")
    parser.add_argument("--generate", type=int, default=0)
    parser.add_argument("--identifiers", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--events", required=True)
    parser.add_argument("--relational", action="store_true")
    parser.add_argument("--pending-status", type=lambda text: int(text, 0), default=0xFF00)
    parser.add_argument("--instances", default="")
    parser.add_argument("--move-destination", action="append", default=[])
    parser.add_argument("--move-delay", type=float, default=0.0)
    args = parser.parse_args()
    with open(args.identifiers) as handle:
        fixed: list[dict[str, Any]] = json.load(handle)
    stored = image_records(args.instances) if args.instances else []
    fixed = fixed + [record for record, _ in stored]
    destinations: dict[str, tuple[str, int]] = {}
    for item in args.move_destination:
        aet, _, address = item.partition("=")
        host, _, port = address.rpartition(":")
        destinations[aet] = (host, int(port))
    events: TextIO = open(args.events, "a")  # noqa: SIM115 - open for the process's life

    def record(**event: Any) -> None:
        event["t"] = time.time()  # wall clock: the test compares it with when it sent its C-CANCEL
        events.write(json.dumps(event) + "\n")
        events.flush()

    def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        record(event="find", calling_aet=event.assoc.requestor.ae_title,
               level=str(query.get("QueryRetrieveLevel", "")),
               keys={e.keyword: str(e.value) for e in query if e.keyword})
        source = generated(args.generate) if args.generate else iter(fixed)
        sent = 0
        for rec in source:
            if event.is_cancelled:
                record(event="cancel", sent=sent)
                yield 0xFE00, None
                return
            if not matches(rec, query):
                continue
            if args.delay:
                time.sleep(args.delay)
            sent += 1
            yield args.pending_status, response(rec, query)
        record(event="done", sent=sent)
        yield 0x0000, None

    def on_move(event: Any) -> Iterator[Any]:
        from pydicom import dcmread

        query = event.identifier
        destination = event.move_destination
        if isinstance(destination, bytes):
            destination = destination.decode("ascii", "replace")
        destination = destination.strip()
        record(event="move", calling_aet=event.assoc.requestor.ae_title, destination=destination,
               message_id=event.request.MessageID)
        if destination not in destinations:
            yield None, None  # 0xA801, Move Destination unknown
            return
        host, port = destinations[destination]
        yield host, port
        paths = [path for rec, path in stored if move_matches(rec, query)]
        yield len(paths)
        sent = 0
        for path in paths:
            if event.is_cancelled:
                record(event="cancel", sent=sent)
                yield 0xFE00, None
                return
            if args.move_delay:
                time.sleep(args.move_delay)
            sent += 1
            yield 0xFF00, dcmread(path)
        record(event="moved", sent=sent)

    ae = AE(ae_title=args.aet)
    ae.maximum_pdu_size = 0
    contexts = [StudyRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelFind, Verification]
    handlers = [(evt.EVT_C_FIND, on_find)]
    if args.instances:
        # An archive without C-GET: MOVE only; the sub-operations propose these storage classes.
        contexts += [StudyRootQueryRetrieveInformationModelMove, PatientRootQueryRetrieveInformationModelMove]
        handlers.append((evt.EVT_C_MOVE, on_move))
        for storage in (CTImageStorage, MRImageStorage):
            ae.add_requested_context(storage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    for context in contexts:
        ae.add_supported_context(context)

    def on_extended(event: Any) -> dict[str, bytes]:
        asked = {str(uid): bytes(info).hex() for uid, info in event.app_info.items()}
        if asked:  # pynetdicom calls this handler for every association
            record(event="extended", asked=asked)
        if not args.relational:
            return {}
        return {uid: b"\x01" for uid, info in event.app_info.items() if bytes(info)[:1] == b"\x01"}

    handlers.append((evt.EVT_SOP_EXTENDED, on_extended))
    ae.start_server(("127.0.0.1", args.port), block=True, evt_handlers=handlers)


if __name__ == "__main__":
    main()
