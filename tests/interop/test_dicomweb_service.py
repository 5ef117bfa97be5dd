"""The STOW-RS inbound service against real senders (issue 17).

A real gateway process serves ``dicomweb``; the senders are the
``dicomweb-client`` library (PyPI), Orthanc's DICOMweb plugin
(``/dicom-web/servers/{name}/stow``) and ``curl`` with hand-made bodies for
the malformed cases. Instances go on to a ``storescp`` and are compared
byte for byte (the data set after the file meta).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid
from twisted.trial.unittest import TestCase

from tests.support.datasets import dataset_digest
from tests.support.gateway_process import GatewayProcess, dicom_destination, wait_until
from tests.support.interop import ForwardTestMixin, digests_by_sop_instance, make_series, sop_instance_uid
from tests.support.orthanc import Orthanc
from tests.support.ports import free_port

TOKEN = "interop-stow-token-0123456789"
BOUNDARY = "gw-interop-boundary"


def multipart(parts: list[bytes], boundary: str = BOUNDARY, *, close: bool = True) -> bytes:
    """A ``multipart/related`` body of ``parts``."""
    out = b""
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


class StowServiceTests(ForwardTestMixin, TestCase):
    """Real senders, a real gateway, a real destination."""

    timeout = 600

    def start_stow_gateway(self, *, start_scp: bool = True, **overrides: Any) -> tuple[GatewayProcess, Any]:
        """A gateway serving STOW-RS (token ``alice``) and forwarding everything to a storescp."""
        scp = self.storescp("dest", start=start_scp)
        tokens = Path(self.mktemp()).resolve()
        tokens.write_text(f"alice:{TOKEN}\n")
        self.web_port = free_port("127.0.0.1")
        settings: dict[str, Any] = {
            "dicomweb": {"listen": [{"host": "127.0.0.1", "port": self.web_port}], "auth": {"tokens_file": str(tokens)}},
            "destinations": {"pacs": dicom_destination(scp.port)},
            "routes": [{"name": "web", "match": {"origin": "dicomweb"}, "forward": ["pacs"]}],
        }
        settings.update(overrides)
        gateway = self.start_gateway(**settings)
        wait_until(lambda: _port_open(self.web_port), 20, lambda: gateway.log_text()[-3000:])
        return gateway, scp

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def curl(self, body: bytes, path: str = "/studies", *, token: str | None = TOKEN,
             content_type: str = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}') -> tuple[int, str]:
        """POST ``body`` with curl; the status and the response body."""
        body_file = Path(self.mktemp())
        body_file.write_bytes(body)
        argv = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "POST", "-H", f"Content-Type: {content_type}",
                "--data-binary", f"@{body_file}", self.url + path]
        if token is not None:
            argv[1:1] = ["-H", f"Authorization: Bearer {token}"]
        out = subprocess.run(argv, capture_output=True, timeout=300, check=True).stdout.decode()
        text, _, code = out.rpartition("\n")
        return int(code), text

    def series(self, count: int, size: int = 20_000, study: str | None = None) -> tuple[list[Path], str]:
        """``count`` CT instances of one study: their files and the study's UID."""
        folder = Path(self.mktemp())
        study_uid, _ = make_series(folder, count, size, study_instance_uid=study)
        return sorted(folder.iterdir()), study_uid

    def delivered(self, gateway: GatewayProcess, scp: Any, files: list[Path]) -> None:
        """Wait until ``files`` reached the storescp, then compare their data sets byte for byte."""
        want = digests_by_sop_instance(files)
        self.wait_for(gateway, lambda: set(want) <= {sop_instance_uid(p) for p in scp.files()}, 120, "instances at storescp")
        got = {sop_instance_uid(p): dataset_digest(p) for p in scp.files()}
        self.assertEqual({uid: got[uid] for uid in want}, want)

    # -- senders ---------------------------------------------------------------------------

    def test_dicomweb_client_store_reaches_the_destination_byte_identical(self) -> None:
        """dicomweb-client's store_instances: 200, every instance at storescp with the same data set bytes."""
        import pydicom
        from dicomweb_client.api import DICOMwebClient

        gateway, scp = self.start_stow_gateway()
        files, study = self.series(5)
        client = DICOMwebClient(url=self.url, headers={"Authorization": f"Bearer {TOKEN}"})
        reply = client.store_instances([pydicom.dcmread(f) for f in files], study_instance_uid=study)
        self.assertEqual(len(reply.ReferencedSOPSequence), 5)
        self.assertNotIn("FailedSOPSequence", reply)
        self.delivered(gateway, scp, files)

    def test_orthanc_dicomweb_client_stow_reaches_the_destination(self) -> None:
        """Orthanc's DICOMweb plugin STOWs a study it holds to the gateway; storescp gets it byte-identical."""
        gateway, scp = self.start_stow_gateway()
        files, _ = self.series(3)
        orthanc = Orthanc(Path(self.mktemp()), dicomweb=True, extra={
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": {
                "gateway": {"Url": self.url + "/", "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"}},
            }},
        })
        self.addCleanup(orthanc.stop)
        orthanc.start()
        ids = [orthanc.upload(f.read_bytes()) for f in files]
        try:
            answer = orthanc.request("POST", "/dicom-web/servers/gateway/stow", {"Resources": ids, "Synchronous": True}, timeout=120)
        except Exception as error:
            raise AssertionError(f"{error}\n--- orthanc ---\n{orthanc.log_text()[-4000:]}\n--- gateway ---\n{gateway.log_text()[-3000:]}") from None
        self.assertIsInstance(answer, dict)
        self.delivered(gateway, scp, files)

    def test_thousand_instances_in_one_post(self) -> None:
        """1,000 instances in one multipart body: 200 with 1,000 references; all delivered byte-identical."""
        gateway, scp = self.start_stow_gateway()
        files, _ = self.series(1000, size=4096)
        code, text = self.curl(multipart([f.read_bytes() for f in files]))
        self.assertEqual(code, 200, text[:500])
        self.assertEqual(len(json.loads(text)["00081199"]["Value"]), 1000)
        self.delivered(gateway, scp, files)

    # -- failures, per instance and per request --------------------------------------------------

    def test_non_dicom_part_fails_with_c000_the_others_are_stored(self) -> None:
        """A part that is not DICOM: 202, 0xC000 for it in the Failed SOP Sequence, the others delivered."""
        gateway, scp = self.start_stow_gateway()
        files, _ = self.series(2)
        code, text = self.curl(multipart([files[0].read_bytes(), b"%PDF-1.4 not DICOM", files[1].read_bytes()]))
        self.assertEqual(code, 202, text)
        reply = json.loads(text)
        self.assertEqual([i["00081197"]["Value"][0] for i in reply["00081198"]["Value"]], [0xC000])
        self.assertEqual(len(reply["00081199"]["Value"]), 2)
        self.delivered(gateway, scp, files)

    def test_study_mismatch_is_409_alone_and_202_mixed(self) -> None:
        """POST /studies/{uid}: an instance of another study alone is 409 (0xA900); with one that matches, 202."""
        gateway, scp = self.start_stow_gateway()
        mine, study = self.series(1)
        other, _ = self.series(1)
        code, text = self.curl(multipart([other[0].read_bytes()]), f"/studies/{study}")
        self.assertEqual(code, 409, text)
        self.assertEqual(json.loads(text)["00081198"]["Value"][0]["00081197"]["Value"], [0xA900])
        code, text = self.curl(multipart([mine[0].read_bytes(), other[0].read_bytes()]), f"/studies/{study}")
        self.assertEqual(code, 202, text)
        self.delivered(gateway, scp, mine)
        self.assertNotIn(sop_instance_uid(other[0]), {sop_instance_uid(p) for p in scp.files()})

    def test_unauthenticated_unsupported_and_malformed_requests(self) -> None:
        """401 without or with a wrong token; 415 for another media type; 400 without the close delimiter."""
        audit = Path(self.mktemp()).resolve()
        gateway, scp = self.start_stow_gateway(audit={"file": str(audit)})
        files, _ = self.series(1)
        body = multipart([files[0].read_bytes()])
        self.assertEqual(self.curl(body, token=None)[0], 401)
        self.assertEqual(self.curl(body, token="not-the-right-token-000")[0], 401)
        self.assertEqual(self.curl(b"{}", content_type="application/dicom+json")[0], 415)
        self.assertEqual(self.curl(multipart([files[0].read_bytes()], close=False))[0], 400)
        self.assertEqual(self.curl(b"no boundary anywhere")[0], 400)
        time.sleep(1)
        self.assertEqual(scp.files(), [])
        self.assertEqual(self.curl(body)[0], 200)
        # Audited: the two 401s as Security Alerts, the stored request with the client's name.
        wait_until(lambda: audit.exists() and "dicomweb_stored" in audit.read_text(), 30, lambda: gateway.log_text()[-2000:])
        records = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
        self.assertEqual(len([r for r in records if r.get("disposition") == "dicomweb_unauthenticated"]), 2)
        [stored] = [r for r in records if r.get("disposition") == "dicomweb_stored"]
        self.assertIn("alice", json.dumps(stored["participants"]))

    def test_mutual_tls_client_certificate_names_the_client(self) -> None:
        """HTTPS with client certificates: a certificate matching ``auth.certificates`` is let in (200) and
        audited under the rule's name; another certificate of the same CA without a token is 401."""
        from tests.support.certs import material

        m = material()
        audit = Path(self.mktemp()).resolve()
        gateway, scp = self.start_stow_gateway(audit={"file": str(audit)})
        gateway.stop()
        web = dict(gateway.config["dicomweb"])
        web["listen"] = [{"host": "127.0.0.1", "port": self.web_port,
                          "tls": {"certificate": m.server, "private_key": m.server_key, "ca": m.ca}}]
        web["auth"] = {**web["auth"], "certificates": {"CN=modality1": "uploader"}}
        gateway.rewrite_config(dicomweb=web)
        gateway.start()
        wait_until(lambda: _port_open(self.web_port), 20, lambda: gateway.log_text()[-3000:])
        files, _ = self.series(1)
        body_file = Path(self.mktemp())
        body_file.write_bytes(multipart([files[0].read_bytes()]))

        def post(cert: str, key: str) -> int:
            out = subprocess.run(
                ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", m.ca, "--cert", cert, "--key", key,
                 "-X", "POST", "-H", f'Content-Type: multipart/related; type="application/dicom"; boundary={BOUNDARY}',
                 "--data-binary", f"@{body_file}", f"https://127.0.0.1:{self.web_port}/studies"],
                capture_output=True, timeout=60, check=True,
            )
            return int(out.stdout.decode())

        self.assertEqual(post(m.client2, m.client2_key), 401)
        self.assertEqual(post(m.client, m.client_key), 200)
        self.delivered(gateway, scp, files)
        wait_until(lambda: audit.exists() and "dicomweb_stored" in audit.read_text(), 30, lambda: gateway.log_text()[-2000:])
        [stored] = [json.loads(line) for line in audit.read_text().splitlines() if "dicomweb_stored" in line]
        self.assertIn("uploader", json.dumps(stored["participants"]))
        self.assertIn("CN=modality1", json.dumps(stored["participants"]))

    def test_tokens_file_change_applies_without_a_restart(self) -> None:
        """A client added to the tokens file (as a hashed line) is let in once the file changed; a SIGHUP
        reload keeps the service answering."""
        from gateway.dicomweb.tokens import hash_line

        gateway, scp = self.start_stow_gateway()
        files, _ = self.series(1)
        body = multipart([files[0].read_bytes()])
        bob = "bobs-own-token-0123456789"
        self.assertEqual(self.curl(body, token=bob)[0], 401)
        tokens = Path(gateway.config["dicomweb"]["auth"]["tokens_file"])
        tokens.write_text(tokens.read_text() + hash_line("bob", bob) + "\n")
        wait_until(lambda: self.curl(body, token=bob)[0] == 200, 30, lambda: gateway.log_text()[-2000:])
        gateway.reload()
        self.assertEqual(self.curl(body)[0], 200)
        self.delivered(gateway, scp, files)

    def test_disk_floor_is_503_with_retry_after(self) -> None:
        """Below the spool's free-space floor: 503 with Retry-After, nothing stored."""
        gateway, scp = self.start_stow_gateway(spool={"path": str(Path(self.mktemp()).resolve() / "spool"), "min_free": "1000TB"})
        files, _ = self.series(1)
        out = subprocess.run(
            ["curl", "-sS", "-D", "-", "-o", "/dev/null", "-X", "POST", "-H", f"Authorization: Bearer {TOKEN}",
             "-H", f'Content-Type: multipart/related; type="application/dicom"; boundary={BOUNDARY}',
             "--data-binary", "@-", self.url + "/studies"],
            input=multipart([files[0].read_bytes()]), capture_output=True, timeout=60, check=True,
        ).stdout.decode()
        self.assertIn(" 503 ", out.splitlines()[0])
        self.assertIn("retry-after: 60", out.lower())

    def test_kill_during_a_post_keeps_answered_instances_and_a_repost_is_accepted(self) -> None:
        """kill -9 mid-POST: instances of an earlier answered request are kept and delivered; the cut request
        is answered by nobody; after the restart a re-post of it is accepted (200)."""
        # The destination is down until after the restart: the answered instances live only in the spool and journal.
        gateway, scp = self.start_stow_gateway(start_scp=False)
        first, _ = self.series(3)
        self.assertEqual(self.curl(multipart([f.read_bytes() for f in first]))[0], 200)
        second, _ = self.series(3, size=200_000)
        body = multipart([f.read_bytes() for f in second])
        sock = socket.create_connection(("127.0.0.1", self.web_port))
        self.addCleanup(sock.close)
        head = (f"POST /studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                f'Content-Type: multipart/related; type="application/dicom"; boundary={BOUNDARY}\r\n'
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        sock.sendall(head + body[: len(body) // 2])
        time.sleep(0.5)
        gateway.kill()
        sock.settimeout(10)
        try:
            answer = sock.recv(100)
        except OSError:
            answer = b""
        self.assertEqual(answer, b"")  # nobody answered the cut request
        gateway.start()
        wait_until(lambda: _port_open(self.web_port), 20, lambda: gateway.log_text()[-3000:])
        scp.start()
        self.delivered(gateway, scp, first)
        code, text = self.curl(body)
        self.assertEqual(code, 200, text)
        self.delivered(gateway, scp, second)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
