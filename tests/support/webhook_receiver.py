"""A webhook receiver for the notification tests (issue 18; twisted.web, a process of its own).

It checks each POST's ``X-Gateway-Signature`` against the shared secret
(:func:`gateway.notify.webhook.verify`), records every request in order
(one JSON line each: index, signature valid, idempotency key, event, the
parsed body) and answers as its script says, per request number (0-based):
``{"status": 500}``, ``{"status": 429, "retry_after": "1"}``, or
``{"hold": true}`` (never answer: the test kills the gateway meanwhile);
any other request gets 204.

``python -m tests.support.webhook_receiver CONFIG.json`` with
``{"port", "log", "secret", "steps"}``; :class:`WebhookReceiverProcess`
starts it on a free port, reads its log and stops it by pid.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

__all__ = ["Received", "WebhookResource", "WebhookReceiverProcess"]


@dataclass(frozen=True)
class Received:
    """One POST as the receiver saw it."""

    index: int
    signature_ok: bool
    key: str
    event: str
    body: dict[str, Any]
    answered: int


class WebhookResource(Resource):
    """Answers POSTs as scripted and appends each to a JSON-lines log."""

    isLeaf = True

    def __init__(self, secret: bytes, steps: dict[int, dict[str, Any]], log: str) -> None:
        super().__init__()
        self.secret = secret
        self.steps = steps
        self.log = log
        self.count = 0
        #: Held requests (never answered).
        self.held: list[Request] = []

    def render_HEAD(self, request: Request) -> bytes:
        """The circuit probe: 200."""
        return b""

    def render_POST(self, request: Request) -> Any:
        """Check the signature, record, answer per the script."""
        from gateway.notify.webhook import verify

        data = request.content.read()
        signature = request.getHeader("x-gateway-signature") or ""
        index, self.count = self.count, self.count + 1
        step = self.steps.get(index, {})
        status = 0 if step.get("hold") else int(step.get("status", 204))
        try:
            body = json.loads(data)
        except ValueError:
            body = {}
        record = Received(
            index, verify(self.secret, data, signature.encode("latin-1")), request.getHeader("idempotency-key") or "",
            request.getHeader("x-gateway-event") or "", body, status,
        )
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(json.dumps(record.__dict__) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if step.get("hold"):
            self.held.append(request)
            return NOT_DONE_YET
        request.setResponseCode(status)
        if "retry_after" in step:
            request.setHeader("Retry-After", str(step["retry_after"]))
        return b"" if status == 204 else b"scripted answer"


def main(argv: list[str]) -> None:
    """Serve until SIGTERM."""
    from twisted.internet import reactor

    with open(argv[1], encoding="utf-8") as f:
        config = json.load(f)
    resource = WebhookResource(
        config["secret"].encode(), {int(k): v for k, v in config.get("steps", {}).items()}, config["log"]
    )
    reactor.listenTCP(config["port"], Site(resource), interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


class WebhookReceiverProcess:
    """The receiver as a process: ``start``, ``received``, ``stop`` (by pid).

    :param folder: where its configuration, secret file, log and output go.
    :param steps: its script, by request number.
    """

    def __init__(self, folder: str, steps: dict[int, dict[str, Any]] | None = None, secret: str = "hook-secret") -> None:
        from tests.support.peerprocess import PeerProcess
        from tests.support.ports import free_port

        folder = os.path.abspath(folder)
        os.makedirs(folder, exist_ok=True)
        self.port = free_port()
        self.log = os.path.join(folder, "received.jsonl")
        self.secret_file = os.path.join(folder, "hook.key")
        with open(self.secret_file, "w", encoding="utf-8") as f:
            f.write(secret + "\n")
        self.config = os.path.join(folder, "receiver.json")
        with open(self.config, "w", encoding="utf-8") as f:
            json.dump({"port": self.port, "log": self.log, "secret": secret,
                       "steps": {str(k): v for k, v in (steps or {}).items()}}, f)
        self.process = PeerProcess("webhook_receiver", os.path.join(folder, "receiver.log"))
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> "WebhookReceiverProcess":
        """Start it and wait until its port answers."""
        self.process.spawn_module("tests.support.webhook_receiver", self.config, self.port)
        return self

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 10 s), by its pid."""
        self.process.stop()

    def received(self) -> list[Received]:
        """The POSTs so far, in order."""
        try:
            with open(self.log, encoding="utf-8") as f:
                return [Received(**json.loads(line)) for line in f if line.strip()]
        except FileNotFoundError:
            return []


if __name__ == "__main__":
    main(sys.argv)
