"""An HL7 v2 receiver over MLLP for tests (issue 18): parses with hl7apy, answers on demand.

The framing here is written independently of :mod:`gateway.notify.mllp` (a
few lines over a byte buffer), so a framing bug in the gateway cannot hide
behind the same bug in its test peer.

Every message received is parsed by hl7apy (validation level strict when it
is an ORU^R01, then its structure validated; tolerant otherwise, as a
template's message may be anything; values over HL7's maximum lengths are
accepted, as the gateway sends them uncut) and recorded in order (:class:`Received`), with the
connection it came on. What the receiver answers to the n-th message is the
n-th step of its *script* (then ``AA`` for ever):

============  ==================================================================
step          answer
============  ==================================================================
``AA``        an ACK with MSA-1 AA (also ``AE``, ``AR``, ``CA``, ``CE``, ``CR``)
``hold``      nothing: the ACK is held until :meth:`Receiver.release` (or never)
``close``     the connection is closed without an answer
``partial``   half an ACK frame, then the connection is closed (closes mid-message)
``wrong-id``  an ACK AA whose MSA-2 names another message
``garbage``   bytes outside any MLLP frame
============  ==================================================================

A message hl7apy cannot parse or validate is answered ``AE`` with the error
and recorded with it (:attr:`Received.problem`); tests assert there is none.

In-process: ``Receiver(script)`` gives a factory to listen with in the
test's reactor. Standalone (for interop tests)::

    python -m tests.support.mllp_receiver --port 0 --script AA,AR,AA --record messages.jsonl

prints ``listening on <port>`` once ready and appends one JSON line per
message to ``--record`` (``{"control_id", "type", "message", "problem",
"connection", "answer"}``). :class:`ReceiverProcess` runs it that way for a
test (a free port, the record file in the test's folder, stopped by pid).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from tests.support.peerprocess import PeerProcess

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"
ACK_CODES = ("AA", "AE", "AR", "CA", "CE", "CR")
STEPS = ACK_CODES + ("hold", "close", "partial", "wrong-id", "garbage")


@dataclass
class Received:
    """One message as received.

    :ivar text: the message (segments separated by CR).
    :ivar connection: which connection (1, 2, ...) it came on.
    :ivar control_id: its MSH-10.
    :ivar message_type: MSH-9 as sent (``ORU^R01^ORU_R01``).
    :ivar parsed: the hl7apy message (``None`` when it did not parse).
    :ivar problem: why hl7apy refused it, else "".
    :ivar answer: the script step that answered it.
    """

    text: str
    connection: int
    control_id: str = ""
    message_type: str = ""
    parsed: Any = None
    problem: str = ""
    answer: str = ""

    def field(self, segment: str, number: int) -> str:
        """Field ``number`` of the first ``segment`` segment, as ER7 text ("" when absent)."""
        for line in self.text.split("\r"):
            parts = line.split("|")
            if parts[0] == segment:
                index = number - 1 if segment == "MSH" else number
                return parts[index] if index < len(parts) else ""
        return ""

    def segments(self, name: str) -> list[str]:
        """Every ``name`` segment's text."""
        return [line for line in self.text.split("\r") if line.split("|")[0] == name]


def parse(text: str) -> tuple[Any, str]:
    """Parse ``text`` with hl7apy: (message, "") or (None-or-message, problem)."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    from hl7apy.exceptions import MaxLengthReached

    try:
        strict = "|ORU^R01" in text.split("\r", 1)[0]
        level = VALIDATION_LEVEL.STRICT if strict else VALIDATION_LEVEL.TOLERANT
        try:
            message = parse_message(text, validation_level=level)
        except MaxLengthReached:
            # Values longer than HL7's maximum lengths (DICOM allows 64 characters) are
            # accepted, as by the gateway; the structure is still validated below.
            message = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT)
        if strict:
            message.validate()
        return message, ""
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"


def ack(control_id: str, code: str, text: str = "") -> bytes:
    """An ACK (HL7 v2.5.1 original mode) for ``control_id``, framed."""
    msh = f"MSH|^~\\&|RECEIVER|TEST|||20260101000000||ACK^R01^ACK|ACK{control_id[:17]}|P|2.5.1"
    msa = f"MSA|{code}|{control_id}" + (f"|{text}" if text else "")
    return VT + (msh + "\r" + msa + "\r").encode("utf-8") + FS + CR


class _Connection(Protocol):
    """One connection to the receiver: deframe, parse, record, answer by script."""

    def __init__(self, receiver: "Receiver", number: int) -> None:
        self.receiver = receiver
        self.number = number
        self.buffer = b""

    def connectionMade(self) -> None:
        self.receiver.open.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while self.buffer:
            if not self.buffer.startswith(VT):
                self.receiver.framing_errors.append(f"byte {self.buffer[:1]!r} outside a frame")
                self.transport.loseConnection()  # type: ignore[union-attr]
                self.buffer = b""
                return
            end = self.buffer.find(FS + CR)
            if end < 0:
                return
            content, self.buffer = self.buffer[1:end], self.buffer[end + 2 :]
            self.receiver.handle(self, content.decode("utf-8", "replace"))

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        if self in self.receiver.open:
            self.receiver.open.remove(self)
        self.receiver.closed += 1
        if self.buffer:
            self.receiver.cut_messages += 1


class Receiver(Factory):
    """The receiver's state and factory (see the module docstring).

    :param script: the answers to the first messages, in order.
    :param on_message: called with each :class:`Received` (the standalone recorder).
    """

    def __init__(self, script: Sequence[str] = (), on_message: Callable[[Received], None] | None = None) -> None:
        for step in script:
            if step not in STEPS:
                raise ValueError(f"unknown script step {step!r}; steps: {', '.join(STEPS)}")
        self.script = list(script)
        self.on_message = on_message
        self.received: list[Received] = []
        self.connections = 0
        self.open: list[_Connection] = []
        self.closed = 0
        self.cut_messages = 0
        self.framing_errors: list[str] = []
        #: Held answers: (connection, control id).
        self.held: list[tuple[_Connection, str]] = []

    def buildProtocol(self, addr: Any) -> _Connection:
        self.connections += 1
        protocol = _Connection(self, self.connections)
        protocol.factory = self
        return protocol

    def handle(self, connection: _Connection, text: str) -> None:
        """Record one message and answer it by the script."""
        parsed, problem = parse(text)
        record = Received(text, connection.number, parsed=parsed, problem=problem)
        first = text.split("\r", 1)[0].split("|")
        record.control_id = first[9] if len(first) > 9 else ""
        record.message_type = first[8] if len(first) > 8 else ""
        step = self.script.pop(0) if self.script else "AA"
        record.answer = step
        self.received.append(record)
        if self.on_message is not None:
            self.on_message(record)
        transport: Any = connection.transport
        if problem and step in ACK_CODES:
            transport.write(ack(record.control_id, "AE", "invalid message"))
        elif step in ACK_CODES:
            transport.write(ack(record.control_id, step, f"scripted {step}"))
        elif step == "hold":
            self.held.append((connection, record.control_id))
        elif step == "close":
            transport.loseConnection()
        elif step == "partial":
            whole = ack(record.control_id, "AA")
            transport.write(whole[: len(whole) // 2])
            transport.loseConnection()
        elif step == "wrong-id":
            transport.write(ack("NOT" + record.control_id[:17], "AA"))
        elif step == "garbage":
            transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    def release(self, code: str = "AA") -> int:
        """Send the held acknowledgements (on connections still open).

        :returns: how many were sent.
        """
        sent = 0
        for connection, control_id in self.held:
            if connection in self.open:
                connection.transport.write(ack(control_id, code))  # type: ignore[union-attr]
                sent += 1
        self.held = []
        return sent

    def problems(self) -> list[str]:
        """Every parse/validation problem and framing error seen."""
        return [r.problem for r in self.received if r.problem] + self.framing_errors


class ReceiverProcess(PeerProcess):
    """The receiver as a process (``python -m tests.support.mllp_receiver``), for interop tests.

    :param folder: where its log and record file go.
    :param script: its script steps.
    :param tls_certificate: serve TLS with this certificate (its key in ``tls_key``).
    :param tls_key: the certificate's key.
    """

    def __init__(self, folder: str, script: Sequence[str] = (), tls_certificate: str = "", tls_key: str = "") -> None:
        folder = os.path.abspath(folder)
        super().__init__("mllp_receiver", os.path.join(folder, "mllp_receiver.log"))
        self.folder = folder
        self.script = list(script)
        self.tls_certificate = tls_certificate
        self.tls_key = tls_key
        self.record_path = os.path.join(folder, "mllp_messages.jsonl")
        self.port = 0

    def start(self) -> "ReceiverProcess":
        """Start it on a free loopback port and wait until it listens (at most 30 s)."""
        from tests.support.ports import free_port

        self.port = free_port()
        argv = [sys.executable, "-m", "tests.support.mllp_receiver", "--port", str(self.port),
                "--script", ",".join(self.script), "--record", self.record_path]
        if self.tls_certificate:
            argv += ["--tls-certificate", self.tls_certificate, "--tls-key", self.tls_key]
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH", "")])))
        self.spawn(argv, lambda: f"listening on {self.port}" in self.log_text(), 30.0, env=env, cwd=root)
        return self

    def messages(self) -> list[dict[str, Any]]:
        """The messages received so far, in order (one dict per JSON line)."""
        try:
            with open(self.record_path, encoding="utf-8") as handle:
                return [json.loads(line) for line in handle if line.strip()]
        except FileNotFoundError:
            return []


def main(argv: Sequence[str] | None = None) -> None:
    """Run the receiver as a process (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--script", default="", help="comma-separated steps: " + ", ".join(STEPS))
    parser.add_argument("--record", default="", help="append one JSON line per message to this file")
    parser.add_argument("--tls-certificate", default="")
    parser.add_argument("--tls-key", default="")
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    def record(item: Received) -> None:
        if args.record:
            line = {"control_id": item.control_id, "type": item.message_type, "message": item.text,
                    "problem": item.problem, "connection": item.connection, "answer": item.answer}
            with open(args.record, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")

    receiver = Receiver([s for s in args.script.split(",") if s], on_message=record)
    if args.tls_certificate:
        from twisted.internet import ssl

        with open(args.tls_certificate, "rb") as cert, open(args.tls_key or args.tls_certificate, "rb") as key:
            options = ssl.PrivateCertificate.loadPEM(key.read() + b"\n" + cert.read()).options()
        port = reactor.listenSSL(args.port, receiver, options, interface=args.host)  # type: ignore[attr-defined]
    else:
        port = reactor.listenTCP(args.port, receiver, interface=args.host)  # type: ignore[attr-defined]
    print(f"listening on {port.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1:])
