"""Benchmark the Q/R wire layer: C-FIND responses through the requestor, and identifier decoding (issue 16).

Prints, for ``--count`` C-FIND matches (STUDY level, about 300 bytes each):

* ``requestor``: CPU microseconds per match (under ``tracemalloc``, which
  slows Python code several times: compare runs, not absolute values) to receive a C-FIND-RSP and its
  identifier through :class:`gateway.associate.RequestorProtocol` (bytes fed
  in 64 KiB reads, as a socket hands them over) and take it from the
  :class:`~gateway.associate.QRStream`, and the peak of traced Python
  memory (``tracemalloc``) while doing so: the stream must stay bounded
  whatever ``--count`` is, the consumer keeping up;
* ``decode``: CPU microseconds per :func:`gateway.dimse.identifier.decode_identifier`
  of one match (structural walk, then pydicom, every element converted);
* ``decode, not converted``: the same with ``convert=False`` (elements
  left to pydicom's lazy conversion);
* ``encode``: CPU microseconds per :func:`~gateway.dimse.identifier.encode_identifier`.

The median of ``--rounds`` rounds. Usage::

    .venv/bin/python bench/qr_wire.py                # 20,000 matches
    .venv/bin/python bench/qr_wire.py --count 100000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom.dataset import Dataset  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from gateway.associate import RequestorProtocol  # noqa: E402
from gateway.dimse import commands as dimse  # noqa: E402
from gateway.dimse.identifier import decode_identifier, encode_identifier  # noqa: E402
from gateway.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME  # noqa: E402
from gateway.sopclasses import IMPLICIT_VR_LE  # noqa: E402
from gateway.ul import pdu  # noqa: E402
from gateway.ul.items import UserInformation  # noqa: E402
from gateway.ul.negotiate import build_request  # noqa: E402

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def match(i: int) -> Dataset:
    """A STUDY-level match with the usual return keys."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyDate = "20240131"
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"ACC{i:08d}"
    ds.QueryRetrieveLevel = "STUDY"
    ds.ModalitiesInStudy = ["CT", "SR"]
    ds.ReferringPhysicianName = "WELBY^MARCUS"
    ds.StudyDescription = "CT CHEST WITHOUT CONTRAST"
    ds.PatientName = f"DOE^JOHN^{i}"
    ds.PatientID = f"PID{i:08d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.{i + 1}"
    ds.StudyID = str(i)
    ds.NumberOfStudyRelatedInstances = "200"
    return ds


def wire(count: int) -> bytes:
    """``count`` pending C-FIND-RSPs with their identifiers, then the final, as P-DATA-TF PDUs."""
    parts = []
    for i in range(count):
        rsp = dimse.encode_command(dimse.CFindRSP(1, 0xFF00, STUDY_FIND, has_dataset=True))
        data = encode_identifier(match(i), IMPLICIT_VR_LE)
        parts.append(pdu.encode(pdu.PDataTF((pdu.PDV(1, 0x03, rsp), pdu.PDV(1, 0x02, data)))))
    parts.append(pdu.encode(pdu.PDataTF((pdu.PDV(1, 0x03, dimse.encode_command(dimse.CFindRSP(1, 0, STUDY_FIND))),))))
    return b"".join(parts)


def requestor_round(data: bytes, count: int) -> tuple[float, int]:
    """Feed ``data`` to a requestor in 64 KiB reads, consuming each match; CPU s and peak traced bytes."""
    request = build_request(
        "GATEWAY", "ARCHIVE", [(STUDY_FIND, [IMPLICIT_VR_LE])], max_pdu_length=262144,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID, implementation_version_name=IMPLEMENTATION_VERSION_NAME,
    )
    protocol = RequestorProtocol(request, Clock(), 30.0, 262144)
    transport = StringTransport()
    protocol.makeConnection(transport)
    ac = pdu.AAssociateAC(
        called_ae_title="ARCHIVE", calling_ae_title="GATEWAY",
        presentation_contexts=(pdu.PresentationContextAC(1, pdu.ContextResult.ACCEPTANCE, IMPLICIT_VR_LE),),
        user_information=UserInformation(max_length=262144), application_context=pdu.DICOM_APPLICATION_CONTEXT,
        protocol_version=1,
    )
    protocol.dataReceived(pdu.encode(ac))
    assoc = protocol.client
    assert assoc is not None
    stream = assoc.find(STUDY_FIND, match(0))
    got = [0]

    async def consume() -> None:
        async for _ in stream:
            got[0] += 1

    done = Deferred.fromCoroutine(consume())
    tracemalloc.start()
    start = time.process_time()
    for offset in range(0, len(data), 65536):
        # Each response reaches the waiting consumer synchronously.
        protocol.dataReceived(data[offset : offset + 65536])
    cpu = time.process_time() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert done.called and got[0] == count + 1, got
    return cpu, peak


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    data = wire(args.count)
    one = encode_identifier(match(7), IMPLICIT_VR_LE)
    req: list[float] = []
    peaks: list[int] = []
    dec: list[float] = []
    lazy: list[float] = []
    enc: list[float] = []
    for _ in range(args.rounds):
        cpu, peak = requestor_round(data, args.count)
        req.append(cpu)
        peaks.append(peak)
        start = time.process_time()
        for _ in range(2000):
            decode_identifier(one, IMPLICIT_VR_LE)
        dec.append((time.process_time() - start) / 2000)
        start = time.process_time()
        for _ in range(2000):
            decode_identifier(one, IMPLICIT_VR_LE, convert=False)
        lazy.append((time.process_time() - start) / 2000)
        ds = decode_identifier(one, IMPLICIT_VR_LE)
        start = time.process_time()
        for _ in range(2000):
            encode_identifier(ds, IMPLICIT_VR_LE)
        enc.append((time.process_time() - start) / 2000)
    print(f"matches {args.count}, identifier {len(one)} bytes, wire {len(data) / 1e6:.1f} MB")
    print(f"requestor: {statistics.median(req) / args.count * 1e6:.1f} us CPU per match, "
          f"peak traced memory {max(peaks) / 1024:.0f} KiB")
    print(f"decode_identifier: {statistics.median(dec) * 1e6:.1f} us CPU")
    print(f"decode_identifier(convert=False): {statistics.median(lazy) * 1e6:.1f} us CPU")
    print(f"encode_identifier: {statistics.median(enc) * 1e6:.1f} us CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
