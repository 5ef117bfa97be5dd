"""A paced C-STORE sender that times every C-STORE-RQ -> C-STORE-RSP (HARDENING L3).

One blocking socket per association, in its own process, with PDUs built by
the gateway's own encoder through :mod:`tests.support.rawpeer`. Used by the
L3 test in ``tests/interop/test_load.py`` and by ``bench/load.py l3``.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

__all__ = ["read_pdu", "paced_sender", "paced_latencies"]


def read_pdu(sock: Any) -> tuple[int, bytes]:
    """Read one whole PDU (PS3.8 9.3.1: type, reserved, 4-byte big-endian length).

    :param sock: a blocking socket.
    :returns: (PDU type, body).
    :raises ConnectionError: if the peer closed.
    """
    def exactly(n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            chunk = sock.recv(min(n - got, 1 << 20))
            if not chunk:
                raise ConnectionError("closed by the peer")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    header = exactly(6)
    return header[0], exactly(int.from_bytes(header[2:6], "big"))


def paced_sender(port: int, called_ae: str, files: list[str], rate: float, start_at: float) -> list[float]:
    """Send files in one association at a fixed rate; time each C-STORE-RQ -> C-STORE-RSP.

    Runs in its own process (one per association, so senders do not share a
    GIL).  A plain blocking socket with ``TCP_NODELAY``, the PDUs built by the
    gateway's own encoder (:mod:`tests.support.rawpeer`): pynetdicom was the
    first choice, but at about 300/s some of its associations stalled against
    both receivers until its DIMSE timeout, which measured pynetdicom.  Sends
    are scheduled at ``start_at + k / rate`` (wall clock, shared by the
    processes); one that falls behind goes at once, its latency counted from
    its own start.  Each data set is read before its clock starts.

    :param port: the receiver's port.
    :param called_ae: its AE title.
    :param files: Part 10 files of CT Image Storage in Explicit VR Little Endian.
    :param rate: instances per second for this association.
    :param start_at: ``time.time()`` of the first send.
    :returns: latencies in seconds (``-1`` for a failure status or no response).
    """
    import socket

    from gateway.dimse.commands import decode_command
    from gateway.ul import pdu as _pdu
    from tests.support.datasets import dataset_bytes
    from tests.support.interop import sop_instance_uid
    from tests.support.rawpeer import CT_IMAGE_STORAGE, EXPLICIT_VR_LE, associate_rq, command_pdata, \
        pdata, pdv, release_rq, store_rq_command

    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    latencies: list[float] = []
    try:
        sock.sendall(associate_rq(called=called_ae, calling="PACED",
                                  contexts=((1, CT_IMAGE_STORAGE, (EXPLICIT_VR_LE,)),), max_length=65536))
        kind, body = read_pdu(sock)
        ac = _pdu.decode(kind, body)
        if not isinstance(ac, _pdu.AAssociateAC) or ac.presentation_contexts[0].result != 0:
            return [-1.0] * len(files)
        peer_max = (ac.user_information.max_length if ac.user_information else 0) or (1 << 20)
        # PS3.8 9.3.5: a PDV item (4-byte length, context ID, control header) must fit the peer's maximum.
        step = min(peer_max, 1 << 20) - 6
        for k, path in enumerate(files):
            data = dataset_bytes(path)
            uid = sop_instance_uid(path)
            fragments = [data[i:i + step] for i in range(0, len(data), step)]
            message = command_pdata(1, store_rq_command(uid, k + 1)) + b"".join(
                # PS3.8 E.2: bit 0 clear (data set), bit 1 set on the last fragment.
                pdata(pdv(1, 0x02 if i == len(fragments) - 1 else 0x00, f)) for i, f in enumerate(fragments))
            delay = start_at + k / rate - time.time()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            try:
                sock.sendall(message)
                command = b""
                while True:
                    kind, body = read_pdu(sock)
                    if kind != 0x04:
                        raise ConnectionError(f"PDU type {kind:#x} instead of a C-STORE-RSP")
                    pdus = _pdu.decode_pdata(body).pdvs
                    command += b"".join(item.data for item in pdus)
                    if pdus[-1].control & 0x02:
                        break
            except (OSError, ConnectionError):
                latencies.extend([-1.0] * (len(files) - k))
                return latencies
            took = time.perf_counter() - sent
            status = getattr(decode_command(command), "status", None)
            latencies.append(took if status == 0 else -1.0)
        sock.sendall(release_rq())
        read_pdu(sock)
    finally:
        sock.close()
    return latencies


def paced_latencies(port: int, called_ae: str, folders: list[Path], rate: float) -> list[float]:
    """Run one paced sender process per folder, ``rate`` instances/s in total.

    :param port: the receiver's port.
    :param called_ae: its AE title.
    :param folders: one folder per association.
    :param rate: total instances per second.
    :returns: every latency (``-1`` for failures).
    """
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0  # after every process has started and associated
    with context.Pool(len(folders)) as pool:
        jobs = [pool.apply_async(paced_sender, (port, called_ae, sorted(map(str, f.iterdir())),
                                                 rate / len(folders), start_at)) for f in folders]
        results = [job.get(3600) for job in jobs]
    return [x for result in results for x in result]
