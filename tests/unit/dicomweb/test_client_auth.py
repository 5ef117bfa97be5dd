"""Tests for :mod:`gateway.dicomweb.client_auth`: headers, file re-reads, OAuth2 caching and renewal on a Clock."""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from typing import Any, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.blocking import SynchronousRunner
from gateway.config.schema import DicomWebAuth
from gateway.dicomweb.client_auth import Answer, AuthError, NoAuth, authenticator_for


def header(auth: Any, test: SynchronousTestCase) -> Any:
    """Run ``auth.header()`` (everything synchronous) and return its result."""
    return test.successResultOf(Deferred.fromCoroutine(auth.header()))


class FileAuthTests(SynchronousTestCase):
    """Basic and bearer read their secret from a file, again when it changes."""

    def setUp(self) -> None:
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder)

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.folder, name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
        return path

    def test_none_gives_no_header(self) -> None:
        """kind none: no Authorization header, nothing to renew."""
        self.assertIsNone(header(NoAuth(), self))
        self.assertFalse(NoAuth().invalidate())

    def test_basic(self) -> None:
        """RFC 7617: Basic base64(user:password), the password's newline stripped."""
        path = self.write("pw", "p@ss\n")
        auth = authenticator_for(DicomWebAuth("basic", username="gw", password_file=path), None, Clock(), SynchronousRunner())  # type: ignore[arg-type]
        self.assertEqual(header(auth, self), b"Basic " + base64.b64encode(b"gw:p@ss"))

    def test_bearer_file_read_again_when_replaced(self) -> None:
        """The token file replaced: the next header carries the new token; invalidate says whether it changed."""
        path = self.write("tok", "one")
        auth = authenticator_for(DicomWebAuth("bearer", token_file=path), None, Clock(), SynchronousRunner())  # type: ignore[arg-type]
        self.assertEqual(header(auth, self), b"Bearer one")
        self.assertFalse(auth.invalidate())
        self.write("tok", "second-token")
        self.assertTrue(auth.invalidate())
        self.assertEqual(header(auth, self), b"Bearer second-token")

    def test_missing_or_empty_file_is_an_auth_error_naming_the_file(self) -> None:
        """No file, or an empty one: AuthError naming the path (no secret to show)."""
        auth = authenticator_for(DicomWebAuth("bearer", token_file=os.path.join(self.folder, "none")), None, Clock(), SynchronousRunner())  # type: ignore[arg-type]
        failure = self.failureResultOf(Deferred.fromCoroutine(auth.header()), AuthError)
        self.assertIn("none", str(failure.value))
        empty = authenticator_for(DicomWebAuth("bearer", token_file=self.write("e", "\n")), None, Clock(), SynchronousRunner())  # type: ignore[arg-type]
        self.failureResultOf(Deferred.fromCoroutine(empty.header()), AuthError)


class OAuth2Tests(SynchronousTestCase):
    """The client credentials grant (RFC 6749 4.4) against a fake token endpoint on a Clock."""

    def setUp(self) -> None:
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder)
        secret = os.path.join(self.folder, "secret")
        with open(secret, "w") as f:
            f.write("s3cret\n")
        self.clock = Clock()
        self.asked: list[tuple[bytes, str, Mapping[bytes, bytes], bytes]] = []
        self.answers: list[Answer] = []
        self.auth = authenticator_for(
            DicomWebAuth("oauth2", token_url="https://idp/token", client_id="gw id", client_secret_file=secret, scope="dicom"),
            self.fetch, self.clock, SynchronousRunner(),
        )

    async def fetch(self, method: bytes, url: str, headers: Mapping[bytes, bytes], body: bytes) -> Answer:
        self.asked.append((method, url, headers, body))
        return self.answers.pop(0)

    def token(self, value: str, expires_in: Any = 100) -> Answer:
        return Answer(200, {}, json.dumps({"access_token": value, "token_type": "Bearer", "expires_in": expires_in}).encode())

    def test_request_shape(self) -> None:
        """POST form grant_type=client_credentials&scope=dicom, client credentials form-encoded in HTTP Basic (RFC 6749 2.3.1)."""
        self.answers.append(self.token("t1"))
        self.assertEqual(header(self.auth, self), b"Bearer t1")
        ((method, url, headers, body),) = self.asked
        self.assertEqual((method, url), (b"POST", "https://idp/token"))
        self.assertEqual(body, b"grant_type=client_credentials&scope=dicom")
        self.assertEqual(headers[b"Authorization"], b"Basic " + base64.b64encode(b"gw+id:s3cret"))

    def test_cached_then_renewed_before_expiry(self) -> None:
        """expires_in 100: cached at 69 s, renewed at 71 s (30 s margin, at most half the lifetime)."""
        self.answers += [self.token("t1"), self.token("t2")]
        header(self.auth, self)
        self.clock.advance(69)
        self.assertEqual(header(self.auth, self), b"Bearer t1")
        self.assertEqual(len(self.asked), 1)
        self.clock.advance(2)
        self.assertEqual(header(self.auth, self), b"Bearer t2")
        self.assertEqual(len(self.asked), 2)

    def test_invalidate_asks_a_new_token(self) -> None:
        """After a 401 the sender invalidates: the next header asks the endpoint again."""
        self.answers += [self.token("t1", 3600), self.token("t2", 3600)]
        header(self.auth, self)
        self.assertTrue(self.auth.invalidate())
        self.assertEqual(header(self.auth, self), b"Bearer t2")

    def test_refusal_names_the_error_code_not_the_secret(self) -> None:
        """400 invalid_client: AuthError with the status and code; the secret appears nowhere."""
        self.answers.append(Answer(400, {}, b'{"error": "invalid_client", "error_description": "s3cret is wrong"}'))
        failure = self.failureResultOf(Deferred.fromCoroutine(self.auth.header()), AuthError)
        self.assertEqual(str(failure.value), "token endpoint answered 400 (invalid_client)")

    def test_answer_without_token_is_an_error(self) -> None:
        """200 without access_token: AuthError."""
        self.answers.append(Answer(200, {}, b"{}"))
        self.failureResultOf(Deferred.fromCoroutine(self.auth.header()), AuthError)
