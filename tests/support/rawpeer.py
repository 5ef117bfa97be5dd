"""A raw-PDU peer: send any bytes, at any pace, in any state, and record the answers.

The hostile-peer interop tests (HARDENING section A) need a client that does
what no DICOM toolkit will: announce a 4 GB PDU, trickle a valid
A-ASSOCIATE-RQ one byte a second, send P-DATA after its own release request,
or never read what the gateway answers.  :class:`RawPeer` is that client.  It
is a plain blocking socket with a background reader thread, because the
gateway under test runs as a separate process and the tests are sequential
scripts ("send this, then expect that within so long"):

- every chunk received is kept with its arrival time (seconds since the
  connection was made) and fed to a :class:`gateway.ul.framing.PDUBuffer`
  with no length cap, so :meth:`RawPeer.pdus` returns what the gateway sent
  as decoded PDUs;
- the moment the gateway closes (FIN) or resets (RST) the connection is
  recorded, so a test can compare it with the ARTIM timeout;
- ``read=False`` starts no reader at all and shrinks the receive buffer, the
  "peer never reads our responses" case (P35).

The module also builds the byte sequences the tests send: a valid
A-ASSOCIATE-RQ (:func:`associate_rq`) that can be mangled field by field,
DIMSE commands as PDVs (:func:`command_pdata`, :func:`store_rq_command`) and
the short PDUs.  Everything here is test support: it never runs inside the
gateway.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.dimse.commands import CEchoRQ, CStoreRQ, decode_command, encode_command
from gateway.ul import pdu as _pdu
from gateway.ul.errors import PDUDecodeError
from gateway.ul.framing import PDUBuffer
from gateway.ul.items import UserInformation

__all__ = [
    "CT_IMAGE_STORAGE",
    "EXPLICIT_VR_LE",
    "IMPLICIT_VR_LE",
    "VERIFICATION",
    "Closed",
    "RawPeer",
    "APPLICATION_CONTEXT_ITEM",
    "abort_pdu",
    "item",
    "raw_associate_rq",
    "raw_context",
    "raw_user_information",
    "response_commands",
    "associate_rq",
    "command_pdata",
    "echo_rq_command",
    "pdata",
    "pdv",
    "release_rp",
    "release_rq",
    "store_rq_command",
    "tiny_dataset",
]

#: Verification SOP class (PS3.4 A.4).
VERIFICATION = "1.2.840.10008.1.1"
#: CT Image Storage (PS3.4 B.5).
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Implicit VR Little Endian (PS3.5 10.1).
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
#: Explicit VR Little Endian (PS3.5 10.2).
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


@dataclass(frozen=True)
class Closed:
    """How and when the gateway ended the connection.

    :param at: seconds from connect to the end of the stream.
    :param reset: ``True`` for a TCP reset (ECONNRESET), ``False`` for a FIN.
    """

    at: float
    reset: bool


class RawPeer:
    """A TCP client that sends raw bytes and records every byte and the close.

    :param host: the gateway's address.
    :param port: its port.
    :param read: start the reader thread; ``False`` never reads (P35).
    :param rcvbuf: ``SO_RCVBUF`` to set before connecting (small values make
        a non-reading peer's TCP window close quickly).
    :param connect_timeout: seconds allowed for the TCP handshake.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        read: bool = True,
        rcvbuf: int | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(connect_timeout)
        self.sock.connect((host, port))
        self.sock.settimeout(None)
        #: ``time.monotonic()`` when the connection was established.
        self.connected_at = time.monotonic()
        #: (seconds since connect, bytes) for every chunk received.
        self.chunks: list[tuple[float, bytes]] = []
        #: Set once the stream has ended.
        self.closed: Closed | None = None
        self._framer = PDUBuffer(max_pdata_length=0, max_other_length=_pdu.MAX_PDU_LENGTH)
        self._pdus: list[tuple[float, _pdu.PDU | PDUDecodeError]] = []
        self._cond = threading.Condition()
        # PDUs already returned by recv_pdu; set when we close our own end.
        self._taken = 0
        self._closing = False
        self._reader: threading.Thread | None = None
        if read:
            self._reader = threading.Thread(target=self._read_loop, name="rawpeer", daemon=True)
            self._reader.start()

    # -- receiving ---------------------------------------------------------------------

    def elapsed(self) -> float:
        """Seconds since the connection was made.

        :returns: the elapsed time.
        """
        return time.monotonic() - self.connected_at

    def _read_loop(self) -> None:
        """Read until EOF or reset, recording chunks, decoded PDUs and the end."""
        reset = False
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                reset = True
                break
            except OSError:
                # Closed locally (our own close()): not the gateway's doing.
                break
            if not data or self._closing:
                break
            now = self.elapsed()
            with self._cond:
                self.chunks.append((now, data))
                for item in self._framer.feed(data):
                    self._pdus.append((now, item))
                self._cond.notify_all()
        with self._cond:
            if not self._closing:
                self.closed = Closed(self.elapsed(), reset)
            self._cond.notify_all()

    @property
    def received(self) -> bytes:
        """Every byte received so far.

        :returns: the concatenated chunks.
        """
        with self._cond:
            return b"".join(data for _, data in self.chunks)

    def pdus(self) -> list[_pdu.PDU]:
        """The PDUs decoded from what was received so far, in order.

        :returns: the PDUs.
        :raises AssertionError: if the gateway sent bytes that do not decode.
        """
        with self._cond:
            items = [item for _, item in self._pdus]
        for item in items:
            if isinstance(item, PDUDecodeError):
                raise AssertionError(f"the gateway sent an undecodable PDU: {item}")
        return items  # type: ignore[return-value]

    def pdu_times(self) -> list[tuple[float, _pdu.PDU | PDUDecodeError]]:
        """The decoded PDUs with their arrival times (seconds since connect).

        :returns: (time, PDU) pairs.
        """
        with self._cond:
            return list(self._pdus)

    def wait_pdu(self, kind: type | tuple[type, ...], timeout: float, start: int = 0) -> _pdu.PDU:
        """Wait for the first PDU of a given class at or after index ``start``.

        :param kind: a PDU dataclass (or a tuple of them).
        :param timeout: seconds to wait.
        :param start: skip the first ``start`` PDUs received.
        :returns: the PDU.
        :raises AssertionError: on timeout or if the stream ends first.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for _, item in self._pdus[start:]:
                    if isinstance(item, kind):
                        return item  # type: ignore[return-value]
                remaining = deadline - time.monotonic()
                if self.closed is not None or remaining <= 0:
                    got = [type(i).__name__ for _, i in self._pdus]
                    raise AssertionError(
                        f"no {kind} within {timeout}s (received {got}, closed={self.closed})"
                    )
                self._cond.wait(remaining)

    def wait_closed(self, timeout: float) -> Closed:
        """Wait for the gateway to end the connection.

        :param timeout: seconds to wait.
        :returns: how and when it ended.
        :raises AssertionError: if it is still open after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.closed is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"connection still open after {timeout}s")
                self._cond.wait(remaining)
            return self.closed

    # -- sending -----------------------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """Send bytes (all of them, blocking).

        :param data: anything.
        :returns: ``False`` if the connection was already closed or reset.
        """
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        except OSError as e:
            if e.errno in (errno.EPIPE, errno.ECONNRESET, errno.EBADF, errno.ENOTCONN):
                return False
            raise
        return True

    def trickle(self, data: bytes, interval: float, stop: Callable[[], bool] | None = None) -> int:
        """Send one byte every ``interval`` seconds until done or closed.

        :param data: the bytes.
        :param interval: the pause between bytes.
        :param stop: an extra condition to stop early.
        :returns: how many bytes were sent.
        """
        sent = 0
        for i in range(len(data)):
            if self.closed is not None or (stop is not None and stop()):
                break
            if not self.send(data[i:i + 1]):
                break
            sent += 1
            time.sleep(interval)
        return sent

    def associate(self, rq: bytes, timeout: float = 5.0) -> _pdu.PDU:
        """Send an A-ASSOCIATE-RQ (any bytes) and wait for the answer.

        :param rq: the request bytes.
        :param timeout: seconds to wait.
        :returns: the A-ASSOCIATE-AC, -RJ or A-ABORT received.
        :raises AssertionError: if none comes.
        """
        self.send(rq)
        return self.wait_pdu((_pdu.AAssociateAC, _pdu.AAssociateRJ, _pdu.AAbort), timeout)

    def recv_pdu(self, timeout: float = 5.0) -> _pdu.PDU:
        """Read one PDU synchronously, for a peer made with ``read=False``.

        :param timeout: seconds to wait.
        :returns: the PDU.
        :raises AssertionError: if the stream ends or does not decode.
        """
        assert self._reader is None, "recv_pdu is for peers without a reader thread"
        self.sock.settimeout(timeout)
        try:
            while True:
                with self._cond:
                    if len(self._pdus) > self._taken:
                        _, found = self._pdus[self._taken]
                        self._taken += 1
                        if isinstance(found, PDUDecodeError):
                            raise AssertionError(f"undecodable PDU: {found}")
                        return found
                # Read only what one PDU needs at most: the header, then its body.
                data = self.sock.recv(6 if self._framer.buffered == 0 else 65536)
                if not data:
                    raise AssertionError("the gateway closed before sending a PDU")
                with self._cond:
                    self.chunks.append((self.elapsed(), data))
                    for found in self._framer.feed(data):
                        self._pdus.append((self.elapsed(), found))
        finally:
            self.sock.settimeout(None)

    def close(self) -> None:
        """Close our end (idempotent); the reader thread is woken and joined."""
        self._closing = True
        try:
            # SHUT_RD wakes a recv() blocked in the reader without sending anything.
            self.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        if self._reader is not None:
            self._reader.join(2.0)

    def reset(self) -> None:
        """Close with a TCP reset (SO_LINGER 0), the "peer vanished" case (P33)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def __enter__(self) -> RawPeer:
        """Use as a context manager.

        :returns: this peer.
        """
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the connection.

        :param exc: unused.
        """
        self.close()


# -- byte builders ------------------------------------------------------------------------


def associate_rq(
    *,
    called: str = "DICOMGW",
    calling: str = "RAWPEER",
    contexts: Sequence[tuple[int, str, Sequence[str]]] = (
        (1, VERIFICATION, (IMPLICIT_VR_LE,)),
        (3, CT_IMAGE_STORAGE, (EXPLICIT_VR_LE, IMPLICIT_VR_LE)),
    ),
    max_length: int | None = 16384,
    user_information: UserInformation | None = None,
    with_user_information: bool = True,
    application_context: str = "1.2.840.10008.3.1.1.1",
    protocol_version: int = 1,
) -> bytes:
    """Build a valid A-ASSOCIATE-RQ with the gateway's own encoder (PS3.8 9.3.2).

    :param called: the called AE title.
    :param calling: the calling AE title.
    :param contexts: (ID, abstract syntax, transfer syntaxes) per context.
    :param max_length: Maximum Length sub-item (``None`` omits it).
    :param user_information: a whole user information item (overrides ``max_length``).
    :param with_user_information: ``False`` omits the user information item.
    :param application_context: the application context name.
    :param protocol_version: the protocol-version field.
    :returns: the PDU bytes.
    """
    info = user_information
    if info is None and with_user_information:
        info = UserInformation(max_length=max_length, implementation_class_uid="1.2.3.4.5.6")
    rq = _pdu.AAssociateRQ(
        called_ae_title=called,
        calling_ae_title=calling,
        presentation_contexts=tuple(
            _pdu.PresentationContextRQ(cid, abstract, tuple(ts)) for cid, abstract, ts in contexts
        ),
        user_information=info,
        application_context=application_context,
        protocol_version=protocol_version,
    )
    return _pdu.encode(rq)


def item(item_type: int, content: bytes, length: int | None = None) -> bytes:
    """Encode an item or sub-item (PS3.8 9.3.1: type, reserved, 2-byte length), lengths unchecked.

    :param item_type: the item type byte.
    :param content: the content.
    :param length: the length field to write (default: the true length).
    :returns: the item bytes.
    """
    return struct.pack(">BBH", item_type, 0, len(content) if length is None else length) + content


#: The DICOM application context item (PS3.8 9.3.2.1, PS3.7 A.2.1).
APPLICATION_CONTEXT_ITEM = item(0x10, b"1.2.840.10008.3.1.1.1")


def raw_context(context_id: int, abstract: str = VERIFICATION, syntaxes: Sequence[str] = (IMPLICIT_VR_LE,)) -> bytes:
    """Encode a presentation context item (0x20) without validating the ID (PS3.8 9.3.2.2).

    :param context_id: any byte, even 0 or an even number.
    :param abstract: the abstract syntax UID.
    :param syntaxes: the transfer syntax UIDs.
    :returns: the item bytes.
    """
    content = bytes([context_id, 0, 0, 0]) + item(0x30, abstract.encode())
    return item(0x20, content + b"".join(item(0x40, ts.encode()) for ts in syntaxes))


def raw_user_information(*sub_items: bytes, max_length: int | None = 16384) -> bytes:
    """Encode a user information item (0x50) from raw sub-items (PS3.8 9.3.2.3).

    :param sub_items: sub-item bytes, appended after the Maximum Length one.
    :param max_length: the Maximum Length sub-item (0x51) value, ``None`` omits it.
    :returns: the item bytes.
    """
    head = item(0x51, struct.pack(">I", max_length)) if max_length is not None else b""
    return item(0x50, head + b"".join(sub_items))


def raw_associate_rq(
    items: bytes,
    *,
    called: bytes = b"DICOMGW         ",
    calling: bytes = b"RAWPEER         ",
    version: int = 1,
    length: int | None = None,
) -> bytes:
    """Encode an A-ASSOCIATE-RQ from raw items, every field unchecked (PS3.8 Table 9-11).

    :param items: the variable items (application context, contexts, user information).
    :param called: the 16 raw bytes of the called AE title field.
    :param calling: the 16 raw bytes of the calling AE title field.
    :param version: the protocol-version field.
    :param length: the PDU-length field to write (default: the true length).
    :returns: the PDU bytes.
    """
    body = struct.pack(">HH16s16s32s", version, 0, called, calling, bytes(32)) + items
    return struct.pack(">BBI", 0x01, 0, len(body) if length is None else length) + body


def pdv(context_id: int, control: int, data: bytes) -> bytes:
    """Encode one PDV item (PS3.8 9.3.5.1) without any validation.

    :param context_id: the presentation context ID byte.
    :param control: the message control header (Annex E.2).
    :param data: the fragment.
    :returns: item-length, context ID, control, data.
    """
    return struct.pack(">IBB", len(data) + 2, context_id, control) + data


def pdata(*items: bytes) -> bytes:
    """Wrap already-encoded PDV items into a P-DATA-TF PDU (PS3.8 9.3.5).

    :param items: PDV item bytes (possibly none, possibly malformed).
    :returns: the PDU bytes.
    """
    body = b"".join(items)
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


def echo_rq_command(message_id: int = 1) -> bytes:
    """Encode a C-ECHO-RQ command set (PS3.7 9.3.5.1).

    :param message_id: its Message ID.
    :returns: the command bytes (Implicit VR LE).
    """
    return encode_command(CEchoRQ(message_id=message_id, affected_sop_class_uid=VERIFICATION))


def store_rq_command(sop_instance_uid: str, message_id: int = 1) -> bytes:
    """Encode a C-STORE-RQ command set for a CT image (PS3.7 9.3.1.1).

    :param sop_instance_uid: the Affected SOP Instance UID.
    :param message_id: its Message ID.
    :returns: the command bytes (Implicit VR LE).
    """
    return encode_command(CStoreRQ(message_id=message_id, affected_sop_class_uid=CT_IMAGE_STORAGE,
                                   affected_sop_instance_uid=sop_instance_uid))


def command_pdata(context_id: int, command: bytes, control_extra: int = 0) -> bytes:
    """A P-DATA-TF carrying a whole command set as one last fragment.

    :param context_id: the presentation context ID.
    :param command: command set bytes.
    :param control_extra: bits OR-ed into the control header (P25 sets 2-7).
    :returns: the PDU bytes.
    """
    return pdata(pdv(context_id, 0x03 | control_extra, command))


def tiny_dataset(sop_instance_uid: str) -> bytes:
    """Encode a minimal CT data set in Explicit VR Little Endian, no file meta.

    :param sop_instance_uid: its SOP Instance UID (also in the command).
    :returns: the data set bytes.
    """
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "RAW"
    ds.PatientName = "Raw^Peer"
    ds.Modality = "CT"
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = False
    write_dataset(buf, ds)
    return buf.getvalue()


def release_rq() -> bytes:
    """Encode A-RELEASE-RQ (PS3.8 9.3.6).

    :returns: the PDU bytes.
    """
    return _pdu.encode(_pdu.AReleaseRQ())


def release_rp() -> bytes:
    """Encode A-RELEASE-RP (PS3.8 9.3.7).

    :returns: the PDU bytes.
    """
    return _pdu.encode(_pdu.AReleaseRP())


def abort_pdu(source: int = 0, reason: int = 0) -> bytes:
    """Encode A-ABORT (PS3.8 9.3.8).

    :param source: the abort source.
    :param reason: the reason/diag.
    :returns: the PDU bytes.
    """
    return _pdu.encode(_pdu.AAbort(source, reason))


def response_commands(peer: RawPeer) -> list[object]:
    """Decode every command set the gateway sent as single last-fragment PDVs.

    :param peer: the peer.
    :returns: the decoded commands, in order.
    """
    out: list[object] = []
    buffer = b""
    for item in peer.pdus():
        if isinstance(item, _pdu.PDataTF):
            for v in item.pdvs:
                if v.is_command:
                    buffer += v.data
                    if v.is_last:
                        out.append(decode_command(buffer))
                        buffer = b""
    return out
