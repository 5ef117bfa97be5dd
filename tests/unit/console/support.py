"""The console's test site: the real :func:`gateway.http.build_site` with a fake ConsoleData (issue 18)."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import maybeDeferred
from twisted.internet.testing import MemoryReactorClock

from gateway.audit import AuditTrail, MemorySink
from gateway.console.session import SessionSigner
from gateway.console.site import ConsoleResource
from gateway.console.users import UsersFile, format_user, hash_password
from gateway.http import build_site
from tests.unit.console.fakes import NOW, Client, FakeConsoleData

PASSWORDS = {"vera": "viewer-pass-1", "otto": "operator-pass-2", "ada": "admin-pass-3", "phil": "phi-pass-4"}
ROLES = {"vera": "viewer", "otto": "operator", "ada": "admin", "phil": "viewer"}
# Hashed once per test process (scrypt costs ~50 ms a hash, by design).
_LINES = {
    name: format_user(name, ROLES[name], hash_password(password), show_phi=(name == "phil"))
    for name, password in PASSWORDS.items()
}


class ConsoleHarness:
    """A site with ``/console`` over a fake ConsoleData, a users file in ``folder``, an injectable clock."""

    def __init__(self, folder: str, users: bool = True, upload_limit: int = 64 * 1024 * 1024) -> None:
        self.folder = folder
        self.now = NOW
        self.data = FakeConsoleData()
        self.users_path = os.path.join(folder, "console-users")
        if users:
            self.write_users(_LINES.values())
        self.sink = MemorySink()
        self.trail = AuditTrail([self.sink], ae_title="GATEWAY", wall=lambda: self.now, hostname="gw")
        self.upload_folder = os.path.abspath(os.path.join(folder, "spool", "console-uploads"))
        self.console = ConsoleResource(
            self.data,
            UsersFile(self.users_path if users else ""),
            SessionSigner(b"k" * 32, timeout=600.0, lifetime=3600.0),
            frozenset({"127.0.0.1", "localhost", "gw.example"}),
            clock=lambda: self.now,
            trail=lambda: self.trail,
            refresh=3.0,
            upload_folder=self.upload_folder,
            upload_limit=upload_limit,
            run_blocking=maybeDeferred,
        )
        self.site = build_site(CollectorRegistry(), object(), (), reactor=MemoryReactorClock(), console=self.console)

    def write_users(self, lines: Any) -> None:
        with open(self.users_path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")

    def client(self, **kwargs: Any) -> Client:
        return Client(self.site, **kwargs)

    def signed_in(self, name: str) -> Client:
        client = self.client()
        response = client.sign_in(name, PASSWORDS[name])
        assert response.status == 303, response.status
        return client

    def records(self, event: str) -> list[Any]:
        """The audit records of one event (``"User Authentication"``, ``"Security Alert"``...)."""
        return [r for r in self.sink.records if r.event == event]
