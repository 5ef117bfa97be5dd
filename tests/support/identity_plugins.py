"""A user identity verifier plugin (JWT, type 5) written into a plugin folder, for the identity tests.

The plugin is a real drop-in: a module in a folder the configuration names
in ``plugins.folders``, found by :func:`gateway.plugins.discover` through
:mod:`gateway.dropins`, as an operator's would be.
"""

from __future__ import annotations

import os
import textwrap

#: The plugin's name, as ``user_identity.verifiers`` writes it.
NAME = "test_jwt"
#: The only token it accepts.
GOOD_TOKEN = b"eyJhbGciOiJub25lIn0.eyJzdWIiOiJqd3QtdXNlciJ9.good"
#: The 0x59 server response it returns on success.
SERVER_RESPONSE = b"jwt-server-response"

_MODULE = f'''
"""Test JWT verifier: accepts one token."""

from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.identity_check import Verdict
from gateway.interfaces import IUserIdentityVerifier


@implementer(IPlugin, IUserIdentityVerifier)
class TestJWT:
    """Accepts {GOOD_TOKEN!r} as user jwt-user."""

    name = {NAME!r}

    def verify(self, identity):
        """Accept the one good token."""
        if identity.identity_type == 5 and identity.primary_field == {GOOD_TOKEN!r}:
            return Verdict(True, "jwt-user", server_response={SERVER_RESPONSE!r})
        return Verdict(False, "", "token expired")


test_jwt_verifier = TestJWT()
'''


def write_jwt_verifier(folder: str) -> str:
    """Write the plugin module into ``folder`` (created, mode 0700).

    :param folder: the plugin folder.
    :returns: ``folder``.
    """
    os.makedirs(folder, mode=0o700, exist_ok=True)
    with open(os.path.join(folder, "test_jwt_verifier.py"), "w", encoding="utf-8") as stream:
        stream.write(textwrap.dedent(_MODULE))
    return folder
