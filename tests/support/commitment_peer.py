"""A scriptable pynetdicom Storage Commitment peer, run as its own process (issue 15).

The gateway's Storage Commitment SCP (PS3.4 Annex J, Push Model) is proven
against peers we did not write: Orthanc, and this program, which plays the
parts Orthanc cannot be scripted into.  pynetdicom is a test-only peer, never
used inside ``gateway/``; running it in its own process keeps its threads out
of the trial process and lets a test take the "modality" down and bring it
back on the same port (the requester down when the report is due).

Three commands, ``python -m tests.support.commitment_peer serve|request|report``:

- ``serve``: an AE on a loopback port that

  * receives N-EVENT-REPORT-RQ for the Storage Commitment Push Model SOP Class
    (1.2.840.10008.1.20.1) on associations the SCP opens to it, accepting the
    SCP/SCU Role Selection item with SCU-role 0 and SCP-role 1 (PS3.4 J.3.3.1.3,
    PS3.7 D.3.3.4), and appends each report, with the roles the requestor
    proposed, the transfer syntax and the status answered, to a JSON-lines
    file (appended, so reports survive a restart of the peer);
  * answers each report with a scripted status (``--report-status``: the
    statuses of the 1st, 2nd... report, then 0x0000);
  * with ``--scp``, is itself a Storage Commitment SCP: answers N-ACTION-RQ
    (action type 1) at once, then sends the report on a new association to
    the requester (its address from ``--peer AET=host:port``), proposing the
    role selection; instances named by ``--fail`` fail with 0x0112 (no such
    object instance, PS3.3 C.14.1.1), the others are committed;
  * accepts C-ECHO (Verification).

- ``request``: one association to an SCP, one N-ACTION-RQ (action type 1,
  the well-known SOP Instance 1.2.840.10008.1.20.1.1, PS3.4 J.3.2.1.2) with
  the Transaction UID and the Referenced SOP Sequence; prints a JSON outcome
  (established, the N-ACTION-RSP status); with ``--wait-report`` keeps the
  association open that many seconds for a report sent on it.

- ``report``: one N-EVENT-REPORT-RQ on a new association proposing the role
  selection, as an archive's SCP reporting to the gateway; prints the
  N-EVENT-REPORT-RSP status.

:class:`CommitmentPeer` runs ``serve`` as a :class:`PeerProcess`;
:func:`request_commitment` runs ``request`` and :func:`send_archive_report`
``report``, each parsing the outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.peerprocess import PeerProcess
from tests.support.ports import free_port, port_is_open

__all__ = [
    "STORAGE_COMMITMENT_PUSH",
    "STORAGE_COMMITMENT_INSTANCE",
    "CommitmentPeer",
    "ReceivedReport",
    "RequestOutcome",
    "request_commitment",
    "send_archive_report",
]

#: Storage Commitment Push Model SOP Class (PS3.4 J.3).
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
#: Its well-known SOP Instance (PS3.4 J.3.2.1.2).
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
#: The Verification SOP Class (PS3.4 Annex A).
_VERIFICATION = "1.2.840.10008.1.1"
_IMPLICIT = "1.2.840.10008.1.2"
_EXPLICIT = "1.2.840.10008.1.2.1"

#: The repository root (the working directory of the peer process).
_REPO_ROOT = Path(__file__).resolve().parents[2]


# -- the test side -------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedReport:
    """One N-EVENT-REPORT-RQ the peer received, as it recorded it.

    :param transaction_uid: (0008,1195) of the Event Information.
    :param event_type: Event Type ID (1: all committed, 2: failures exist; PS3.4 Table J.3-2).
    :param committed: ``(SOP Class UID, SOP Instance UID)`` of the Referenced SOP Sequence.
    :param failed: ``(SOP Class UID, SOP Instance UID, Failure Reason)`` of the Failed SOP Sequence.
    :param calling_ae: the AE title of the association requestor (the reporting SCP).
    :param called_ae: the AE title it called.
    :param roles: the SCP/SCU Role Selection items the requestor proposed:
        ``(SOP Class UID, SCU-role, SCP-role)``.
    :param transfer_syntax: the presentation context's transfer syntax.
    :param affected_sop_class_uid: (0000,0002) of the request.
    :param affected_sop_instance_uid: (0000,1000) of the request.
    :param status: the status the peer answered.
    :param channel: ``new`` (an association the SCP opened) or ``open``
        (the requester's own association).
    :param received_at: ``time.time()`` when it arrived.
    """

    transaction_uid: str
    event_type: int
    committed: tuple[tuple[str, str], ...]
    failed: tuple[tuple[str, str, int], ...]
    calling_ae: str
    called_ae: str
    roles: tuple[tuple[str, bool | None, bool | None], ...]
    transfer_syntax: str
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    status: int
    channel: str
    received_at: float

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReceivedReport:
        """Read one line of the reports file.

        :param data: the parsed line.
        :returns: the report.
        """
        return cls(
            transaction_uid=str(data["transaction_uid"]),
            event_type=int(data["event_type"]),
            committed=tuple((str(c), str(i)) for c, i in data["committed"]),
            failed=tuple((str(c), str(i), int(r)) for c, i, r in data["failed"]),
            calling_ae=str(data["calling_ae"]),
            called_ae=str(data["called_ae"]),
            roles=tuple((str(u), s, p) for u, s, p in data["roles"]),
            transfer_syntax=str(data["transfer_syntax"]),
            affected_sop_class_uid=str(data["affected_sop_class_uid"]),
            affected_sop_instance_uid=str(data["affected_sop_instance_uid"]),
            status=int(data["status"]),
            channel=str(data["channel"]),
            received_at=float(data["received_at"]),
        )

    @property
    def committed_uids(self) -> set[str]:
        """The SOP Instance UIDs reported committed.

        :returns: the set.
        """
        return {uid for _cls, uid in self.committed}

    @property
    def failures(self) -> dict[str, int]:
        """The SOP Instance UIDs reported failed, with their reasons.

        :returns: ``{uid: Failure Reason}``.
        """
        return {uid: reason for _cls, uid, reason in self.failed}


@dataclass(frozen=True)
class RequestOutcome:
    """What one ``request`` run saw.

    :param established: the association was accepted.
    :param status: the N-ACTION-RSP Status, ``None`` when no response came.
    :param report: the report received on the same association (``--wait-report``).
    :param detail: pynetdicom's explanation when not established (reject reason...).
    :param accepted_contexts: ``(abstract syntax, transfer syntax)`` the SCP accepted.
    :param sent_at: ``time.time()`` just before the N-ACTION-RQ was sent (0 when not sent).
    :param answered_at: ``time.time()`` when its response came (0 when none).
    """

    established: bool
    status: int | None
    report: ReceivedReport | None = None
    detail: str = ""
    accepted_contexts: tuple[tuple[str, str], ...] = field(default=())
    sent_at: float = 0.0
    answered_at: float = 0.0


def _argv(*args: str) -> list[str]:
    """The command running this module in a fresh interpreter.

    :param args: the command and its options.
    :returns: the argv.
    """
    return [sys.executable, "-m", "tests.support.commitment_peer", *args]


def _env() -> dict[str, str]:
    """The environment of a peer process: this checkout first on ``PYTHONPATH``.

    :returns: the environment.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def request_commitment(
    port: int,
    transaction_uid: str,
    references: Iterable[tuple[str, str]],
    *,
    called_ae: str = "DICOMGW",
    calling_ae: str = "MODALITY",
    host: str = "127.0.0.1",
    wait_report: float = 0.0,
    transfer_syntaxes: Sequence[str] = (_EXPLICIT, _IMPLICIT),
    timeout: float = 120.0,
    action_type: int = 1,
    requested_instance: str = STORAGE_COMMITMENT_INSTANCE,
    omit_transaction: bool = False,
) -> RequestOutcome:
    """Send one N-ACTION-RQ (Request Storage Commitment) from a separate process.

    :param port: the SCP's port.
    :param transaction_uid: the Transaction UID (0008,1195).
    :param references: ``(SOP Class UID, SOP Instance UID)`` for the Referenced SOP Sequence.
    :param called_ae: the SCP's AE title.
    :param calling_ae: our AE title (the requester the report goes to).
    :param host: the SCP's address.
    :param wait_report: seconds to keep the association open for a report on it.
    :param transfer_syntaxes: those proposed for the Storage Commitment context.
    :param timeout: seconds before the process is killed.
    :param action_type: the Action Type ID (1 is the only one, PS3.4 Table J.3-1).
    :param requested_instance: the Requested SOP Instance UID (the well-known one).
    :param omit_transaction: leave the Transaction UID out of the data set (malformed).
    :returns: the outcome.
    :raises AssertionError: if the process failed or printed no outcome.
    """
    refs = json.dumps([[c, i] for c, i in references])
    if len(refs) > 60000:  # one argument may hold at most 128 KiB (execve(2)): pass a file
        handle, name = tempfile.mkstemp(suffix=".json", prefix="commitment-refs-")
        with os.fdopen(handle, "w") as out:
            out.write(refs)
        refs = "@" + name
    argv = _argv("request", "--host", host, "--port", str(port), "--called", called_ae,
                 "--calling", calling_ae, "--transaction", transaction_uid, "--refs", refs,
                 "--wait-report", str(wait_report), "--syntaxes", ",".join(transfer_syntaxes),
                 "--action-type", str(action_type), "--instance", requested_instance,
                 *(["--omit-transaction"] if omit_transaction else []))
    try:
        proc = subprocess.run(argv, cwd=_REPO_ROOT, env=_env(), capture_output=True, text=True,
                              timeout=timeout, check=False)
    finally:
        if refs.startswith("@"):
            os.unlink(refs[1:])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"commitment request failed (exit {proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr[-4000:]}")
    data = json.loads(lines[-1])
    report = data.get("report")
    return RequestOutcome(
        established=bool(data["established"]),
        status=data.get("status"),
        report=ReceivedReport.from_json(report) if report else None,
        detail=str(data.get("detail", "")),
        accepted_contexts=tuple((str(a), str(t)) for a, t in data.get("accepted", [])),
        sent_at=float(data.get("sent_at", 0.0)),
        answered_at=float(data.get("answered_at", 0.0)),
    )


def send_archive_report(port: int, transaction_uid: str, references: Iterable[tuple[str, str]], *,
                        called_ae: str = "DICOMGW", calling_ae: str = "ARCHIVE", host: str = "127.0.0.1",
                        fail: Iterable[str] = (), timeout: float = 120.0) -> RequestOutcome:
    """Send one N-EVENT-REPORT-RQ as an archive's Storage Commitment SCP, from a separate process.

    A new association proposing the SCP/SCU Role Selection item (SCU-role 0,
    SCP-role 1; PS3.4 J.3.3.1.3), as an archive reporting to the gateway does.

    :param port: the gateway's port.
    :param transaction_uid: the Transaction UID reported on.
    :param references: the instances reported (committed unless in ``fail``).
    :param called_ae: the gateway's AE title.
    :param calling_ae: our AE title (the archive's).
    :param host: the gateway's address.
    :param fail: SOP Instance UIDs reported failed (0x0112).
    :param timeout: seconds before the process is killed.
    :returns: the outcome: ``status`` is the N-EVENT-REPORT-RSP's.
    :raises AssertionError: if the process failed or printed no outcome.
    """
    argv = _argv("report", "--host", host, "--port", str(port), "--called", called_ae, "--calling", calling_ae,
                 "--transaction", transaction_uid, "--refs", json.dumps([[c, i] for c, i in references]),
                 *[f"--fail={uid}" for uid in fail])
    proc = subprocess.run(argv, cwd=_REPO_ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"archive report failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    data = json.loads(lines[-1])
    return RequestOutcome(established=bool(data["established"]), status=data.get("status"),
                          accepted_contexts=tuple((str(a), str(t)) for a, t in data.get("accepted", [])))


class CommitmentPeer(PeerProcess):
    """The ``serve`` command as a background process on a fixed loopback port.

    The port is chosen once, so :meth:`stop` then :meth:`start` brings the
    "modality" back where the gateway's ``modalities`` table says it is, and
    the reports file is kept across restarts.

    :param workdir: a folder for its log and reports file (created).
    :param ae_title: its AE title.
    :param report_statuses: the N-EVENT-REPORT-RSP statuses of its 1st, 2nd...
        report of each run (then 0x0000).
    :param scp: also act as a Storage Commitment SCP (answer N-ACTION, report later).
    :param peers: for ``scp``: ``{AE title: (host, port)}`` where reports go.
    :param fail: for ``scp``: SOP Instance UIDs reported failed (0x0112).
    :param report_delay: for ``scp``: seconds between the N-ACTION-RSP and the report.
    :param implicit_only: accept only Implicit VR Little Endian (some modalities do).
    :param port: the port (a free one by default).
    """

    def __init__(self, workdir: str | os.PathLike[str], ae_title: str = "MODALITY", *,
                 report_statuses: Sequence[int] = (), scp: bool = False,
                 peers: dict[str, tuple[str, int]] | None = None, fail: Iterable[str] = (),
                 report_delay: float = 0.0, implicit_only: bool = False,
                 port: int | None = None) -> None:
        self.dir = Path(workdir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.reports_path = self.dir / "reports.jsonl"
        self.actions_path = self.dir / "actions.jsonl"
        self.report_statuses = tuple(report_statuses)
        self.scp = scp
        self.peers = dict(peers or {})
        self.fail = tuple(fail)
        self.report_delay = report_delay
        self.implicit_only = implicit_only
        super().__init__(f"commitment peer {ae_title}", self.dir / "peer.log")

    def start(self, timeout: float = 30.0) -> CommitmentPeer:
        """Start the process and wait until its port accepts connections.

        :param timeout: seconds to wait.
        :returns: this object.
        """
        args = ["serve", "--port", str(self.port), "--aet", self.ae_title,
                "--reports", str(self.reports_path), "--actions", str(self.actions_path),
                "--report-status", ",".join(hex(s) for s in self.report_statuses),
                "--report-delay", str(self.report_delay)]
        if self.scp:
            args.append("--scp")
        if self.implicit_only:
            args.append("--implicit-only")
        for aet, (host, port) in self.peers.items():
            args += ["--peer", f"{aet}={host}:{port}"]
        for uid in self.fail:
            args += ["--fail", uid]
        self.spawn(_argv(*args), lambda: port_is_open(self.host, self.port), timeout,
                   env=_env(), cwd=_REPO_ROOT, what=f"listen on {self.port}")
        return self

    def reports(self) -> list[ReceivedReport]:
        """Every report received so far (all runs), in arrival order.

        :returns: the reports.
        """
        return [ReceivedReport.from_json(d) for d in _read_jsonl(self.reports_path)]

    def reports_for(self, transaction_uid: str) -> list[ReceivedReport]:
        """The reports received for one Transaction UID.

        :param transaction_uid: the UID.
        :returns: those reports, in arrival order.
        """
        return [r for r in self.reports() if r.transaction_uid == transaction_uid]

    def actions(self) -> list[dict[str, Any]]:
        """The N-ACTION-RQs the peer answered as SCP (``scp``): transaction, references, caller.

        :returns: one dict per request.
        """
        return _read_jsonl(self.actions_path)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file (missing: empty; a partial last line is skipped).

    :param path: the file.
    :returns: the parsed lines.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


# -- the process side ----------------------------------------------------------


def _append_jsonl(path: Path, lock: threading.Lock, record: dict[str, Any]) -> None:
    """Append one record as a line, flushed to the file.

    :param path: the file.
    :param lock: serialises writers of this process.
    :param record: the record.
    """
    with lock, open(path, "a") as out:
        out.write(json.dumps(record) + "\n")
        out.flush()
        os.fsync(out.fileno())


def _report_record(event: Any, status: int, channel: str) -> dict[str, Any]:
    """Turn pynetdicom's ``EVT_N_EVENT_REPORT`` into a reports-file record.

    :param event: the event.
    :param status: the status answered.
    :param channel: ``new`` or ``open``.
    :returns: the record.
    """
    request = event.request
    info = event.event_information
    committed = [[str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)]
                 for i in info.get("ReferencedSOPSequence", [])]
    failed = [[str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID), int(i.FailureReason)]
              for i in info.get("FailedSOPSequence", [])]
    roles = []
    for item in event.assoc.requestor.user_information:
        if type(item).__name__ == "SCP_SCU_RoleSelectionNegotiation":
            roles.append([str(item.sop_class_uid), item.scu_role, item.scp_role])
    return {
        "transaction_uid": str(info.get("TransactionUID", "")),
        "event_type": int(request.EventTypeID),
        "committed": committed,
        "failed": failed,
        "calling_ae": str(event.assoc.requestor.ae_title).strip(),
        "called_ae": str(event.assoc.acceptor.ae_title).strip(),
        "roles": roles,
        "transfer_syntax": str(event.context.transfer_syntax),
        "affected_sop_class_uid": str(request.AffectedSOPClassUID),
        "affected_sop_instance_uid": str(request.AffectedSOPInstanceUID),
        "status": status,
        "channel": channel,
        "received_at": time.time(),
    }


def _send_report(ae_title: str, host: str, port: int, called: str, transaction_uid: str,
                 references: list[tuple[str, str]], fail: frozenset[str]) -> dict[str, Any]:
    """Send a Storage Commitment report as SCP on a new association (PS3.4 J.3.3.1.3).

    :param ae_title: our AE title (calling).
    :param host: the requester's address.
    :param port: its port.
    :param called: its AE title.
    :param transaction_uid: the request's Transaction UID.
    :param references: what it asked about.
    :param fail: SOP Instance UIDs to report failed with 0x0112.
    :returns: ``{"established", "status", "accepted"}`` (status ``None`` when no response came).
    """
    from pydicom.dataset import Dataset
    from pynetdicom import AE, build_role

    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH, [_EXPLICIT, _IMPLICIT])
    role = build_role(STORAGE_COMMITMENT_PUSH, scu_role=False, scp_role=True)
    info = Dataset()
    info.TransactionUID = transaction_uid
    ok, bad = [], []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        if sop_instance in fail:
            item.FailureReason = 0x0112
            bad.append(item)
        else:
            ok.append(item)
    if ok:
        info.ReferencedSOPSequence = ok
    if bad:
        info.FailedSOPSequence = bad
    assoc = ae.associate(host, port, ae_title=called, ext_neg=[role])
    if not assoc.is_established:
        print(f"report {transaction_uid}: association to {called}@{host}:{port} refused", flush=True)
        return {"established": False, "status": None, "accepted": []}
    accepted = [[str(c.abstract_syntax), str(c.transfer_syntax[0])] for c in assoc.accepted_contexts]
    status: int | None = None
    try:
        if accepted:
            rsp, _reply = assoc.send_n_event_report(info, 2 if bad else 1, STORAGE_COMMITMENT_PUSH,
                                                    STORAGE_COMMITMENT_INSTANCE)
            status = int(rsp.Status) if "Status" in rsp else None
        print(f"report {transaction_uid}: status {status}", flush=True)
    finally:
        if assoc.is_established:
            assoc.release()
    return {"established": True, "status": status, "accepted": accepted}


def _serve(args: argparse.Namespace) -> int:
    """The ``serve`` command: listen until SIGTERM.

    :param args: the parsed options.
    :returns: the exit status.
    """
    import logging
    import signal

    from pydicom.uid import UID
    from pynetdicom import AE, evt

    # pynetdicom's own log (associations, DIMSE messages) goes to the peer's log file.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    lock = threading.Lock()
    reports_path, actions_path = Path(args.reports), Path(args.actions)
    statuses = [int(s, 16) for s in args.report_status.split(",") if s]
    received = [0]
    peers = {}
    for entry in args.peer:
        aet, address = entry.split("=", 1)
        host, port = address.rsplit(":", 1)
        peers[aet] = (host, int(port))
    fail = frozenset(args.fail)
    syntaxes = [_IMPLICIT] if args.implicit_only else [_EXPLICIT, _IMPLICIT]

    def on_report(event: Any) -> tuple[int, None]:
        """Record a report on an association the SCP opened; answer the scripted status."""
        with lock:
            received[0] += 1
            n = received[0]
        status = statuses[n - 1] if n <= len(statuses) else 0x0000
        _append_jsonl(reports_path, lock, _report_record(event, status, "new"))
        return status, None  # (Status, Event Reply): pynetdicom's handler contract

    def on_action(event: Any) -> tuple[int, None]:
        """As SCP: record the N-ACTION, answer it, and report later on a new association."""
        info = event.action_information
        transaction_uid = str(info.get("TransactionUID", ""))
        references = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
                      for i in info.get("ReferencedSOPSequence", [])]
        requester = str(event.assoc.requestor.ae_title).strip()
        _append_jsonl(actions_path, lock, {"transaction_uid": transaction_uid,
                                           "references": references, "calling_ae": requester,
                                           "action_type": int(event.action_type)})
        if requester not in peers:
            return 0x0110, None
        host, port = peers[requester]
        timer = threading.Timer(args.report_delay, _send_report,
                                (args.aet, host, port, requester, transaction_uid, references, fail))
        timer.start()
        return 0x0000, None

    ae = AE(ae_title=args.aet)
    ae.require_called_aet = True
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_supported_context(_VERIFICATION, syntaxes)
    # As a report receiver: the SCP reporting to us proposes SCU-role 0 and
    # SCP-role 1 for itself (PS3.4 J.3.3.1.3); a context without role selection
    # is accepted too (default roles), as modalities do.
    if args.scp:
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH, syntaxes)
    else:
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH, syntaxes, scu_role=False, scp_role=True)
    handlers = [(evt.EVT_N_EVENT_REPORT, on_report)]
    if args.scp:
        handlers.append((evt.EVT_N_ACTION, on_action))
    server = ae.start_server(("127.0.0.1", args.port), block=False, evt_handlers=handlers)
    print(f"serving {args.aet} on {args.port} ({UID(STORAGE_COMMITMENT_PUSH).name})", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.2):
        pass
    for assoc in server.active_associations:
        assoc.abort()
    server.shutdown()
    return 0


def _request(args: argparse.Namespace) -> int:
    """The ``request`` command: one N-ACTION-RQ; print the outcome as one JSON line.

    :param args: the parsed options.
    :returns: the exit status (0 whatever the SCP answered).
    """
    from pydicom.dataset import Dataset
    from pynetdicom import AE, evt

    reports: list[dict[str, Any]] = []
    arrived = threading.Event()

    def on_report(event: Any) -> tuple[int, None]:
        """Record a report sent on our own association (``report_association: open``)."""
        reports.append(_report_record(event, 0x0000, "open"))
        arrived.set()
        return 0x0000, None

    ae = AE(ae_title=args.calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH, args.syntaxes.split(","))
    assoc = ae.associate(args.host, args.port, ae_title=args.called,
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    if not assoc.is_established:
        detail = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no association"
        print(json.dumps({"established": False, "status": None, "detail": detail}), flush=True)
        return 0
    accepted = [[str(c.abstract_syntax), str(c.transfer_syntax[0])] for c in assoc.accepted_contexts]
    if not any(a == STORAGE_COMMITMENT_PUSH for a, _ in accepted):
        # The SOP class refused (as by a gateway without a commitment section).
        assoc.release()
        print(json.dumps({"established": True, "status": None, "accepted": accepted,
                          "detail": "Storage Commitment Push Model not accepted"}), flush=True)
        return 0
    info = Dataset()
    if not args.omit_transaction:
        info.TransactionUID = args.transaction
    items = []
    refs = Path(args.refs[1:]).read_text() if args.refs.startswith("@") else args.refs
    for sop_class, sop_instance in json.loads(refs):
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    info.ReferencedSOPSequence = items
    sent_at = time.time()
    status_ds, _reply = assoc.send_n_action(info, args.action_type, STORAGE_COMMITMENT_PUSH, args.instance)
    answered_at = time.time()
    status = int(status_ds.Status) if "Status" in status_ds else None
    if args.wait_report > 0 and status == 0x0000:
        arrived.wait(args.wait_report)
    if assoc.is_established:
        assoc.release()
    print(json.dumps({"established": True, "status": status, "accepted": accepted,
                      "sent_at": sent_at, "answered_at": answered_at,
                      "report": reports[0] if reports else None}), flush=True)
    return 0


def _report(args: argparse.Namespace) -> int:
    """The ``report`` command: one N-EVENT-REPORT-RQ as an archive's SCP; print the outcome as one JSON line.

    :param args: the parsed options.
    :returns: 0 whatever the receiver answered.
    """
    refs = [(str(c), str(i)) for c, i in json.loads(args.refs)]
    outcome = _send_report(args.calling, args.host, args.port, args.called, args.transaction, refs,
                           frozenset(args.fail))
    print(json.dumps(outcome), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``serve`` or ``request``.

    :param argv: the arguments (``sys.argv[1:]`` by default).
    :returns: the exit status.
    """
    parser = argparse.ArgumentParser(prog="commitment_peer", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--aet", default="MODALITY")
    serve.add_argument("--reports", required=True)
    serve.add_argument("--actions", required=True)
    serve.add_argument("--report-status", default="")
    serve.add_argument("--report-delay", type=float, default=0.0)
    serve.add_argument("--scp", action="store_true")
    serve.add_argument("--peer", action="append", default=[])
    serve.add_argument("--fail", action="append", default=[])
    serve.add_argument("--implicit-only", action="store_true")
    request = commands.add_parser("request")
    request.add_argument("--host", default="127.0.0.1")
    request.add_argument("--port", type=int, required=True)
    request.add_argument("--called", default="DICOMGW")
    request.add_argument("--calling", default="MODALITY")
    request.add_argument("--transaction", required=True)
    request.add_argument("--refs", required=True, help="JSON [[class, instance], ...], or @FILE holding it")
    request.add_argument("--wait-report", type=float, default=0.0)
    request.add_argument("--syntaxes", default=f"{_EXPLICIT},{_IMPLICIT}")
    request.add_argument("--action-type", type=int, default=1)
    request.add_argument("--instance", default=STORAGE_COMMITMENT_INSTANCE)
    request.add_argument("--omit-transaction", action="store_true")
    report = commands.add_parser("report")
    report.add_argument("--host", default="127.0.0.1")
    report.add_argument("--port", type=int, required=True)
    report.add_argument("--called", default="DICOMGW")
    report.add_argument("--calling", default="ARCHIVE")
    report.add_argument("--transaction", required=True)
    report.add_argument("--refs", required=True)
    report.add_argument("--fail", action="append", default=[])
    args = parser.parse_args(argv)
    return {"serve": _serve, "request": _request, "report": _report}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
