"""Run a private Orthanc (Debian ``orthanc``) as an interop peer and drive it through its REST API.

Orthanc is a DICOM archive we did not write: the interoperability matrix of
issue 7 uses it both as a destination (the gateway's C-STORE SCU stores into
it; the test reads back what it kept through ``GET /instances``) and as a
source (the test uploads a file with ``POST /instances`` and has Orthanc push it
to the gateway with ``POST /modalities/GW/store``).

:class:`Orthanc` starts one ``Orthanc`` process with a generated JSON
configuration in its own folder: free DICOM and HTTP ports, its own storage
and index folders, no plugins, no authentication, ``RemoteAccessAllowed``
false (the tests talk to it over 127.0.0.1 only) and no saved jobs.  Readiness
is its REST API answering ``GET /system``.  REST calls use ``urllib`` only.

Notes on the Debian build (Orthanc 1.10.1), found by trying:

- DICOM TLS (``DicomTlsEnabled``, new in 1.9.0) is compiled in.  With it, the
  DICOM port speaks TLS only (a plain ``echoscu`` is refused), so a test that
  needs a plain and a TLS archive starts two processes.  ``DicomTlsCertificate``
  and ``DicomTlsPrivateKey`` are also the client certificate Orthanc presents
  when it is the SCU towards a modality declared with ``"UseDicomTls": true``,
  and ``DicomTlsTrustedCertificates`` is what it trusts in both roles.
- Orthanc 1.10.1 has no option to bind its DICOM or HTTP server to one address:
  both listen on every interface; only loopback traffic is ever sent.
- Storage Commitment (PS3.4 Annex J, issue 15): as SCP, Orthanc answers an
  N-ACTION from a declared modality only (it looks the report's destination
  up by the caller's AE title) and checks each instance in its own index
  (0x0112 when missing, 0x0119 on a SOP class mismatch); the report goes on a
  new association.  As SCU, ``POST /modalities/{id}/storage-commitment``
  sends the N-ACTION and ``GET /storage-commitment/{transaction}`` shows the
  report once it came (``Status``: ``Pending``, ``Success`` or ``Failure``);
  Orthanc keeps those results in memory only (``StorageCommitmentReportsSize``).
- As an SCU, Orthanc keeps an association open ``DicomAssociationCloseDelay``
  seconds (default 5) after a store; it is set to 0 here so associations to the
  gateway end with the job.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.peerprocess import PeerProcess
from tests.support.ports import free_port

__all__ = ["ORTHANC", "Orthanc", "OrthancError", "OrthancTLS", "skip_reason"]

#: The Orthanc server binary of the Debian package (``/usr/sbin`` is not always on ``PATH``).
ORTHANC: str | None = shutil.which("Orthanc") or (
    "/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None)


#: The DICOMweb plugin of Debian's ``orthanc-dicomweb`` package.
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def dicomweb_skip_reason() -> str | None:
    """Why the Orthanc DICOMweb tests cannot run here (``None`` when they can).

    :returns: a reason, or ``None``.
    """
    return skip_reason() or (None if os.path.exists(DICOMWEB_PLUGIN) else
                             f"the Orthanc DICOMweb plugin ({DICOMWEB_PLUGIN}, Debian orthanc-dicomweb) is not installed")


def skip_reason() -> str | None:
    """Explain why Orthanc tests cannot run here, for a class's ``skip``.

    :returns: a reason, or ``None`` when the binary is installed.
    """
    if ORTHANC is None:
        return "Orthanc is not installed (run `make test`, or `apt-get install orthanc`)"
    return None


class OrthancError(AssertionError):
    """A REST call failed or Orthanc did not reach the expected state."""


@dataclass(frozen=True)
class OrthancTLS:
    """DICOM TLS settings of an Orthanc process (PS3.15 Annex B, Orthanc >= 1.9.0).

    :param certificate: PEM certificate Orthanc presents (as SCP and as SCU).
    :param private_key: its PEM private key.
    :param trusted: PEM file of the CA certificates Orthanc trusts.
    :param require_client_certificate: ``DicomTlsRemoteCertificateRequired``.
    """

    certificate: str
    private_key: str
    trusted: str
    require_client_certificate: bool = True


class Orthanc(PeerProcess):
    """One private Orthanc process on free loopback ports, as a context manager.

    :param workdir: a folder for the configuration, storage, index and log (created).
    :param aet: Orthanc's own AE title (``DicomAet``): the called AE title of
        stores into it and the calling AE title of its pushes.
    :param tls: DICOM TLS settings; ``None`` for a plain DICOM port.
    :param extra: more configuration keys, overriding the defaults.
    :param dicomweb: load the DICOMweb plugin (Debian ``orthanc-dicomweb``), served under
        :attr:`dicomweb_url` (QIDO-RS, WADO-RS, STOW-RS; PS3.18).
    """

    def __init__(self, workdir: str | os.PathLike[str], *, aet: str = "ORTHANC",
                 tls: OrthancTLS | None = None, extra: dict[str, Any] | None = None,
                 dicomweb: bool = False) -> None:
        self.dir = Path(workdir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.tls = tls
        self.host = "127.0.0.1"
        self.dicom_port = free_port(self.host)
        self.http_port = free_port(self.host)
        while self.http_port == self.dicom_port:  # neither is bound yet
            self.http_port = free_port(self.host)
        storage = self.dir / "storage"
        storage.mkdir(exist_ok=True)
        config: dict[str, Any] = {
            "Name": f"dicom-gateway tests {aet}",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "StorageCompression": False,
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {},
            "DicomAssociationCloseDelay": 0,
            "DicomScuTimeout": 20,
            "UnknownSopClassAccepted": False,
            "SaveJobs": False,
            "ConcurrentJobs": 2,
            "LoadPrivateDictionary": False,
            "ExecuteLuaEnabled": False,
        }
        if tls is not None:
            config.update({
                "DicomTlsEnabled": True,
                "DicomTlsCertificate": tls.certificate,
                "DicomTlsPrivateKey": tls.private_key,
                "DicomTlsTrustedCertificates": tls.trusted,
                "DicomTlsRemoteCertificateRequired": tls.require_client_certificate,
            })
        if dicomweb:
            config["Plugins"] = [DICOMWEB_PLUGIN]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "Servers": {}}
        config.update(extra or {})
        self.config = config
        self.config_path = self.dir / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.base_url = f"http://{self.host}:{self.http_port}"
        #: The DICOMweb root (``/studies`` etc. under it), when the plugin is loaded.
        self.dicomweb_url = f"{self.base_url}/dicom-web"
        super().__init__("Orthanc", self.dir / "orthanc.log", stop_timeout=20.0)

    # -- process ---------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Orthanc:
        """Start Orthanc and wait until its REST API answers ``GET /system``.

        :param timeout: seconds to wait for readiness.
        :returns: this object.
        :raises RuntimeError: if it is not installed, exits or never answers.
        """
        if ORTHANC is None:
            raise RuntimeError(skip_reason())

        def ready() -> bool:
            try:
                return bool(self.get("/system", timeout=2).get("DicomPort") == self.dicom_port)
            except (OSError, OrthancError):
                return False

        self.spawn([ORTHANC, "--verbose", str(self.config_path)], ready, timeout, cwd=self.dir,
                   what=f"answer on its REST API (port {self.http_port})")
        return self

    # -- REST ------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, *, raw: bool = False,
                timeout: float = 30.0) -> Any:
        """Call the REST API.

        :param method: ``GET``, ``POST``, ``PUT`` or ``DELETE``.
        :param path: the path, e.g. ``/instances``.
        :param body: ``bytes`` sent as they are, anything else as JSON; ``None``
            for no body.
        :param raw: return the answer's bytes instead of parsing JSON.
        :param timeout: seconds for the whole call.
        :returns: the parsed JSON answer (or bytes with ``raw``).
        :raises OrthancError: on an HTTP error status, with Orthanc's explanation.
        """
        data: bytes | None
        if body is None:
            data = None
        elif isinstance(body, bytes):
            data = body
        else:
            data = json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type",
                           "application/dicom" if isinstance(body, bytes) else "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                payload: bytes = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            raise OrthancError(f"{method} {path}: HTTP {error.code}: {detail}") from None
        if raw:
            return payload
        return json.loads(payload) if payload.strip() else None

    def get(self, path: str, **kwargs: Any) -> Any:
        """``GET path`` (see :meth:`request`).

        :param path: the path.
        :param kwargs: :meth:`request` options.
        :returns: the parsed answer.
        """
        return self.request("GET", path, **kwargs)

    def instances(self) -> list[str]:
        """List the Orthanc identifiers of every stored instance (``GET /instances``).

        :returns: the identifiers.
        """
        result: list[str] = self.get("/instances")
        return result

    def instance_file(self, instance_id: str) -> bytes:
        """Download an instance as Orthanc stored it (``GET /instances/{id}/file``).

        :param instance_id: the Orthanc identifier.
        :returns: the Part 10 file's bytes.
        """
        data: bytes = self.get(f"/instances/{instance_id}/file", raw=True)
        return data

    def simplified_tags(self, instance_id: str) -> dict[str, Any]:
        """Read an instance's main tags by keyword (``GET /instances/{id}/simplified-tags``).

        :param instance_id: the Orthanc identifier.
        :returns: ``{keyword: value}``.
        """
        tags: dict[str, Any] = self.get(f"/instances/{instance_id}/simplified-tags")
        return tags

    def metadata(self, instance_id: str) -> dict[str, str]:
        """Read what Orthanc recorded about an instance's reception (``?expand``).

        :param instance_id: the Orthanc identifier.
        :returns: e.g. ``{"TransferSyntax": ..., "RemoteAET": ..., "CalledAET": ...}``.
        """
        values: dict[str, str] = self.get(f"/instances/{instance_id}/metadata?expand")
        return values

    def find_instance(self, sop_instance_uid: str) -> str | None:
        """Find an instance by SOP Instance UID (``POST /tools/lookup``).

        :param sop_instance_uid: the UID.
        :returns: its Orthanc identifier, or ``None`` when Orthanc does not have it.
        """
        for hit in self.request("POST", "/tools/lookup", sop_instance_uid.encode()):
            if hit.get("Type") == "Instance":
                return str(hit["ID"])
        return None

    def upload(self, data: bytes) -> str:
        """Store a Part 10 file through the REST API (``POST /instances``).

        :param data: the file's bytes.
        :returns: the new instance's Orthanc identifier.
        :raises OrthancError: if Orthanc did not store it.
        """
        answer = self.request("POST", "/instances", data)
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise OrthancError(f"upload refused: {answer}")
        return str(answer["ID"])

    def declare_modality(self, name: str, aet: str, port: int, *, host: str = "127.0.0.1",
                         use_tls: bool = False) -> None:
        """Declare a remote DICOM modality (``PUT /modalities/{name}``).

        :param name: Orthanc's name for it, used in ``/modalities/{name}/...``.
        :param aet: its AE title (the called AE title of Orthanc's associations).
        :param port: its DICOM port.
        :param host: its address.
        :param use_tls: ``UseDicomTls`` (new in 1.9.0): associate over TLS,
            presenting ``DicomTlsCertificate`` and trusting ``DicomTlsTrustedCertificates``.
        """
        self.request("PUT", f"/modalities/{name}", {
            "AET": aet, "Host": host, "Port": port, "UseDicomTls": use_tls,
            "AllowEcho": True, "AllowStore": True,
            # Storage Commitment in both roles (N-ACTION to it, N-EVENT-REPORT
            # from it): Orthanc's per-modality flag (1.6.0), on by default but
            # set here so the tests do not depend on that default.
            "AllowStorageCommitment": True,
        })

    def echo(self, modality: str, timeout: int = 10) -> None:
        """Have Orthanc send a C-ECHO to a declared modality (``POST /modalities/{name}/echo``).

        :param modality: the declared name.
        :param timeout: Orthanc's association timeout, in seconds.
        :raises OrthancError: if the echo failed (Orthanc answers an HTTP error).
        """
        self.request("POST", f"/modalities/{modality}/echo", {"Timeout": timeout},
                     timeout=timeout + 30)

    def request_commitment(self, modality: str, references: list[tuple[str, str]],
                           timeout: int = 20) -> str:
        """Have Orthanc ask a declared modality for Storage Commitment (N-ACTION, PS3.4 J.3.2).

        :param modality: the declared name (its ``AllowStorageCommitment`` on).
        :param references: ``(SOP Class UID, SOP Instance UID)`` asked about
            (they need not be stored in Orthanc: ``DicomInstances``).
        :param timeout: Orthanc's association timeout, in seconds.
        :returns: the Transaction UID Orthanc chose.
        :raises OrthancError: if the N-ACTION failed.
        """
        answer = self.request("POST", f"/modalities/{modality}/storage-commitment", {
            "DicomInstances": [{"SOPClassUID": c, "SOPInstanceUID": i} for c, i in references],
            "Timeout": timeout,
        }, timeout=timeout + 30)
        return str(answer["ID"])

    def commitment_result(self, transaction_uid: str) -> dict[str, Any]:
        """Read what Orthanc knows of a Storage Commitment it asked for (``GET /storage-commitment/{id}``).

        :param transaction_uid: the Transaction UID.
        :returns: ``{"Status": "Pending"|"Success"|"Failure", "Success": [...],
            "Failures": [{"SOPClassUID", "SOPInstanceUID", "FailureReason"}], "RemoteAET"...}``.
        """
        result: dict[str, Any] = self.get(f"/storage-commitment/{transaction_uid}")
        return result

    def wait_commitment(self, transaction_uid: str, timeout: float = 60.0) -> dict[str, Any]:
        """Poll :meth:`commitment_result` until the report came.

        :param transaction_uid: the Transaction UID.
        :param timeout: seconds to wait.
        :returns: the result, ``Status`` no longer ``Pending``.
        :raises OrthancError: if it is still pending after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = self.commitment_result(transaction_uid)
            if result.get("Status") != "Pending":
                return result
            if time.monotonic() >= deadline:
                raise OrthancError(f"storage commitment {transaction_uid} still pending after "
                                   f"{timeout}s: {result}\n{self.log_text()[-3000:]}")
            time.sleep(0.1)

    def store(self, modality: str, instance_ids: list[str], timeout: float = 60.0) -> dict[str, Any]:
        """Push instances to a declared modality as a job (``POST /modalities/{name}/store``).

        The job runs asynchronously; this polls ``GET /jobs/{id}`` until it ends.

        :param modality: the declared name.
        :param instance_ids: Orthanc identifiers of the instances to send.
        :param timeout: seconds to wait for the job to end.
        :returns: the finished job (``State`` is ``Success``; ``Content`` holds
            ``InstancesCount``, ``FailedInstancesCount``, ``RemoteAet``...).
        :raises OrthancError: if the job failed or did not end in time.
        """
        started = self.request("POST", f"/modalities/{modality}/store",
                               {"Resources": instance_ids, "Asynchronous": True, "Timeout": 20})
        job_id = started["ID"]
        deadline = time.monotonic() + timeout
        while True:
            job: dict[str, Any] = self.get(f"/jobs/{job_id}")
            if job.get("State") == "Success":
                return job
            if job.get("State") == "Failure":
                raise OrthancError(f"store job to {modality} failed: {job}\n{self.log_text()[-3000:]}")
            if time.monotonic() >= deadline:
                raise OrthancError(f"store job to {modality} still {job.get('State')} after {timeout}s")
            time.sleep(0.1)
