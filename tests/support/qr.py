"""Query/Retrieve peers and requesters for the issue 16 interop tests (PS3.4 Annex C).

* :func:`findscu`, :func:`movescu`, :func:`getscu`: the DCMTK requesters
  (3.6.7). ``findscu`` defaults to the worklist model, so ``-S`` (Study Root)
  or ``-P`` (Patient Root) is always passed; its responses are extracted with
  ``-X`` into a folder and read back by :func:`read_responses`.
  ``movescu --port`` is its own storage SCP (the move destination is its own
  AE title, ``-aem``); it waits until the storing side releases the
  sub-operation association before it reads the final C-MOVE-RSP.
* :func:`preload`: an Orthanc loaded with known studies through its REST API
  (the "source preloaded with known studies").
* :class:`SyntheticQRScp`: a pynetdicom Q/R SCP (FIND, both root models) in its
  own process (:mod:`tests.support.qr_scp`) that either serves a fixed list of
  identifiers or *generates* N STUDY-level matches lazily (no list in memory),
  and records in a JSON-lines event file every query and every C-CANCEL it saw
  (so a test can say "the source was told").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from tests.support.dcmtk import Result, _run, require_tool
from tests.support.datasets import write_instance
from tests.support.orthanc import Orthanc
from tests.support.peerprocess import PeerProcess
from tests.support.ports import free_port, port_is_open

__all__ = [
    "Study",
    "SyntheticQRScp",
    "findscu",
    "getscu",
    "movescu",
    "preload",
    "qr_source",
    "read_responses",
]

#: Study Root Query/Retrieve Information Model - FIND (PS3.4 C.6.2.1).
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
#: Patient Root Query/Retrieve Information Model - FIND (PS3.4 C.6.1.1).
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"


def _model_flag(model: str) -> str:
    """Map ``"study"``/``"patient"`` to DCMTK's ``-S``/``-P``.

    :param model: the information model.
    :returns: the flag.
    :raises ValueError: for another model (worklist is out of scope).
    """
    flags = {"study": "-S", "patient": "-P"}
    if model not in flags:
        raise ValueError(f"model must be 'study' or 'patient', not {model!r}")
    return flags[model]


def _keys(keys: Iterable[str]) -> list[str]:
    """Expand ``["QueryRetrieveLevel=STUDY", ...]`` into ``-k`` pairs.

    :param keys: ``name=value`` or ``name`` (a return key).
    :returns: the arguments.
    """
    argv: list[str] = []
    for key in keys:
        argv += ["-k", key]
    return argv


def findscu(port: int, called_aet: str, keys: Sequence[str], *, outdir: Path,
            model: str = "study", calling_aet: str = "FINDSCU", extra: Sequence[str] = (),
            timeout: float = 120.0) -> Result:
    """Run ``findscu`` once, extracting each pending response into ``outdir`` (``-X``).

    :param port: the Q/R SCP's port on 127.0.0.1.
    :param called_aet: its AE title.
    :param keys: the identifier (``-k`` values), ``QueryRetrieveLevel`` included.
    :param outdir: folder for ``rsp0001.dcm``... (created).
    :param model: ``"study"`` (``-S``) or ``"patient"`` (``-P``).
    :param calling_aet: ``-aet``.
    :param extra: more options (e.g. ``--cancel 3``).
    :param timeout: seconds before the process is killed.
    :returns: exit status and output.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    argv = [require_tool("findscu"), "-v", _model_flag(model), "-aet", calling_aet,
            "-aec", called_aet, "-X", "-od", str(outdir), *_keys(keys), *extra,
            "127.0.0.1", str(port)]
    return _run(argv, timeout, None)


def read_responses(outdir: Path) -> list[Dataset]:
    """Read the identifiers ``findscu -X`` extracted, in arrival order.

    :param outdir: the ``-od`` folder.
    :returns: one data set per pending response.
    """
    return [dcmread(p, force=True) for p in sorted(outdir.glob("rsp*.dcm"))]


def movescu(port: int, called_aet: str, keys: Sequence[str], *, outdir: Path,
            listen_port: int, move_aet: str = "MOVESCU", model: str = "study",
            calling_aet: str = "MOVESCU", extra: Sequence[str] = (),
            timeout: float = 300.0) -> Result:
    """Run ``movescu`` as its own move destination (``--port``, ``-aem``), bit-preserving (``+B``).

    :param port: the Q/R SCP's port.
    :param called_aet: its AE title.
    :param keys: the identifier.
    :param outdir: where the received instances go (created).
    :param listen_port: ``--port``: movescu's storage SCP port.
    :param move_aet: the Move Destination (movescu's own AE title as destination).
    :param model: ``"study"`` or ``"patient"``.
    :param calling_aet: ``-aet``.
    :param extra: more options.
    :param timeout: seconds.
    :returns: exit status and output (``-v`` shows each pending response's counts).
    """
    outdir.mkdir(parents=True, exist_ok=True)
    argv = [require_tool("movescu"), "-v", _model_flag(model), "-aet", calling_aet,
            "-aec", called_aet, "-aem", move_aet, "--port", str(listen_port), "+B", "+xa",
            "-od", str(outdir), *_keys(keys), *extra, "127.0.0.1", str(port)]
    # movescu 3.6.7 writes +B files into its working directory whatever -od says.
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", timeout=timeout, cwd=outdir, check=False)
    return Result(proc.returncode, proc.stdout, tuple(argv))


def getscu(port: int, called_aet: str, keys: Sequence[str], *, outdir: Path,
           model: str = "study", calling_aet: str = "GETSCU", extra: Sequence[str] = (),
           timeout: float = 300.0) -> Result:
    """Run ``getscu`` (C-GET; it proposes DCMTK's fixed storage classes, uncompressed syntaxes).

    :param port: the Q/R SCP's port.
    :param called_aet: its AE title.
    :param keys: the identifier.
    :param outdir: where the instances go (created).
    :param model: ``"study"`` or ``"patient"``.
    :param calling_aet: ``-aet``.
    :param extra: more options.
    :param timeout: seconds.
    :returns: exit status and output.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    argv = [require_tool("getscu"), "-v", _model_flag(model), "-aet", calling_aet,
            "-aec", called_aet, "+B", "-od", str(outdir), *_keys(keys), *extra,
            "127.0.0.1", str(port)]
    return _run(argv, timeout, None)


@dataclass(frozen=True)
class Study:
    """A study written to disk for a source: its UIDs and files.

    :param study_instance_uid: Study Instance UID.
    :param series_instance_uid: its one series' UID.
    :param files: the Part 10 files, one per instance.
    """

    study_instance_uid: str
    series_instance_uid: str
    files: tuple[Path, ...] = field(default=())


def write_study(folder: Path, count: int, *, size: int = 4 * 1024, study_instance_uid: str | None = None,
                patient_id: str = "INTEROP-1", study_description: str = "") -> Study:
    """Write one study of ``count`` CT instances (one series) into ``folder``.

    :param folder: the folder (created).
    :param count: number of instances.
    :param size: approximate size of each.
    :param study_instance_uid: the study's UID (new by default).
    :param patient_id: Patient ID.
    :param study_description: Study Description (a conflict marker between sources).
    :returns: the study.
    """
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study = study_instance_uid or generate_uid()
    series = generate_uid()
    files: list[Path] = []
    for i in range(count):
        path = write_instance(folder / f"{i:05d}.dcm", ExplicitVRLittleEndian, size, seed=i,
                              study_instance_uid=study, series_instance_uid=series)
        if study_description or patient_id != "INTEROP-1":
            ds = dcmread(path)
            ds.PatientID = patient_id
            if study_description:
                ds.StudyDescription = study_description
            ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return Study(study, series, tuple(files))


#: Orthanc keys for a Q/R source: answer FIND, MOVE and GET from any AE title
#: (Orthanc 1.10 otherwise refuses requesters missing from ``DicomModalities``;
#: a move destination must still be declared there, by AE title).
QR_SOURCE_CONFIG: dict[str, Any] = {
    "DicomAlwaysAllowFind": True,
    "DicomAlwaysAllowMove": True,
    "DicomAlwaysAllowGet": True,
}


def qr_source(workdir: Path, aet: str, **extra: Any) -> Orthanc:
    """An Orthanc configured as a Q/R source (:data:`QR_SOURCE_CONFIG`), not started.

    :param workdir: its folder.
    :param aet: its AE title.
    :param extra: more configuration keys.
    :returns: the Orthanc.
    """
    return Orthanc(workdir, aet=aet, extra={**QR_SOURCE_CONFIG, **extra})


def preload(source: Orthanc, studies: Iterable[Study]) -> int:
    """Upload every file of ``studies`` into an Orthanc (``POST /instances``).

    :param source: a started Orthanc.
    :param studies: the studies.
    :returns: the number of instances uploaded.
    """
    count = 0
    for study in studies:
        for path in study.files:
            source.upload(path.read_bytes())
            count += 1
    return count


class SyntheticQRScp(PeerProcess):
    """A pynetdicom Q/R FIND SCP in its own process (:mod:`tests.support.qr_scp`).

    :param workdir: folder for its log and event file (created).
    :param aet: its AE title.
    :param generate: answer every query with this many generated STUDY-level
        matches, produced lazily (0: serve ``identifiers`` instead).
    :param identifiers: a fixed list of response identifiers (``{keyword: value}``),
        each returned when its ``QueryRetrieveLevel`` equals the query's.
    :param delay: seconds to sleep before each pending response (a slow source).
    :param relational: grant relational-queries when asked (PS3.4 C.5.1.1).
    :param pending_status: the status of each match (0xFF00, or 0xFF01, PS3.4 C.4.1.1.4).
    :param instances: a folder of Part 10 files: also answer IMAGE-level C-FIND
        and C-MOVE from them (no C-GET: an archive the gateway must C-MOVE from).
    :param move_destinations: AE title -> (host, port) of the move destinations it knows.
    :param move_delay: seconds to sleep before each C-MOVE sub-operation.
    :param port: its port (a free one by default), for a caller that must name it before it starts.
    """

    def __init__(self, workdir: Path, *, aet: str = "SYNTH", generate: int = 0,
                 identifiers: Sequence[dict[str, Any]] = (), delay: float = 0.0,
                 relational: bool = False, pending_status: int = 0xFF00,
                 instances: Path | None = None, move_destinations: dict[str, tuple[str, int]] | None = None,
                 move_delay: float = 0.0, port: int | None = None) -> None:
        self.dir = Path(workdir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.port = port if port is not None else free_port()
        self.events_path = self.dir / "events.jsonl"
        ids_path = self.dir / "identifiers.json"
        ids_path.write_text(json.dumps(list(identifiers)))
        self._argv = [sys.executable, "-m", "tests.support.qr_scp", "--port", str(self.port),
                      "--aet", aet, "--generate", str(generate), "--identifiers", str(ids_path),
                      "--delay", str(delay), "--events", str(self.events_path),
                      "--pending-status", hex(pending_status), *(["--relational"] if relational else [])]
        if instances is not None:
            # An archive without C-GET (issue 16): FIND and MOVE of these files only.
            self._argv += ["--instances", str(instances), "--move-delay", str(move_delay)]
            for aet_, (host, port) in (move_destinations or {}).items():
                self._argv += ["--move-destination", f"{aet_}={host}:{port}"]
        super().__init__("qr_scp", self.dir / "qr_scp.log")

    def start(self, timeout: float = 30.0) -> SyntheticQRScp:
        """Start it and wait until its port accepts connections.

        :param timeout: seconds.
        :returns: this object.
        """
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self.spawn(self._argv, lambda: port_is_open("127.0.0.1", self.port), timeout, env=env,
                   cwd=root, what=f"listen on {self.port}")
        return self

    def events(self) -> list[dict[str, Any]]:
        """Read what it recorded: ``{"event": "find"|"cancel"|"done", ...}`` in order.

        :returns: the events so far.
        """
        if not self.events_path.exists():
            return []
        return [json.loads(line) for line in self.events_path.read_text().splitlines() if line.strip()]
