"""The Storage Commitment SCP on an accepted association: N-ACTION in, inbound N-EVENT-REPORT (issue 15).

:class:`CommitmentSCP` is the collaborator :class:`gateway.receive.StorageService`
hands two kinds of messages to, once their (small, bounded) data set has
arrived on a context of the Storage Commitment Push Model SOP Class:

* an **N-ACTION-RQ** (PS3.4 J.3.2): a modality asks whether the gateway has
  taken responsibility for instances it sent. It is checked, journaled and
  answered at once; the outcome goes later in an N-EVENT-REPORT sent by
  :mod:`gateway.commitment.worker` (PS3.4 J.3.3);
* an **N-EVENT-REPORT-RQ** (PS3.4 J.3.3): an archive that commits
  (``storage_commitment: true``) reports on an N-ACTION of ours; it is
  decoded and handed to :class:`gateway.commitment.archive.ArchiveReports`.

Both answer ``(status, error comment)``; the service turns that into the
response, in request order with the C-STORE responses.

The N-ACTION checks, in order (the first failure answers; PS3.7 10.1.4.1.10
lists the statuses an N-ACTION-RSP may carry, PS3.7 Annex C.5 defines them,
and PS3.4 J.3.2.1.3 adds no Storage Commitment specific one):

1. Requested SOP Class UID not the Push Model class -> 0x0118 No such SOP
   Class (C.5: "the SOP Class was not recognized");
2. Requested SOP Instance UID not the well-known instance (PS3.4 J.3.2.1.2)
   -> 0x0112 No such SOP Instance; an empty or malformed UID -> 0x0117
   Invalid SOP Instance (C.5: it violates the UID construction rules,
   PS3.5 9.1);
3. Action Type ID not 1 (PS3.4 Table J.3-1) -> 0x0123 No such action;
4. the requester's access -> 0x0124 Refused: not authorized (the issue: only
   an AE with an entry in ``modalities`` can ever be answered, since the
   report needs its address, and ``allowed_ae_titles`` narrows that; a
   listener without ``commitment`` refuses every request the same way);
5. the data set (:func:`gateway.dimse.commitment.decode_action_request`):
   its errors carry the status to answer;
6. the journal (:meth:`ICommitmentJournal.add_transaction`): success is
   answered only after its commit, since the success promises a report
   that must survive a restart. A repeat with the same references answers
   success again (idempotent); the same Transaction UID with other
   references -> 0x0115 Invalid argument value (C.5: "the attribute value
   specified was out of range or otherwise inappropriate"): PS3.3 C.14.1.1
   makes a Transaction UID identify one request, and its Failure Reason
   0x0131 (duplicate transaction UID) belongs in a *report*, but the report
   of that UID is the first request's, so the refusal goes on this
   N-ACTION-RSP with an Error Comment naming 0x0131; the journal away
   (:class:`~gateway.queue.interfaces.StoreUnavailable`) -> 0x0213 Resource
   limitation (C.5: "the operation was not performed due to resource
   limitation": the requester may ask again later), nothing journaled.

Every answer is an :class:`~gateway.events.CommitmentRequested` event (audit,
``commitment_requests_total{outcome}``).

``report_association: open``: :class:`OpenAssociations` keeps this node's
associations that carry the Push Model context with the requester as SCU
(each :class:`~gateway.receive.StorageService` registers itself), so the
report sender can put a report on the requester's association while it is
open (PS3.4 J.3.3 allows the N-ACTION's association; no role selection is
needed there, the gateway is the SOP class's SCP already). Anything short of
a success falls back to a new association, the default.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import events
from gateway.blocking import IBlockingRunner
from gateway.commitment.model import (
    ACTION_REQUEST_COMMITMENT,
    EVENT_ALL_COMMITTED,
    EVENT_SOME_FAILED,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH,
    ActionRequest,
    CommitmentReport,
)
from gateway.config.schema import CommitmentConfig, GatewayConfig, ListenerConfig, ModalityConfig
from gateway.dimse import commands as dimse
from gateway.dimse import commitment as codec
from gateway.dimse.status import Status, StatusCategory, category
from gateway.queue.commitments import ICommitmentJournal, NewTransaction, Transaction, TransactionConflict
from gateway.queue.interfaces import StoreUnavailable
from gateway.receive import AssociationInfo
from gateway.ul.negotiate import AcceptedContext

__all__ = [
    "CommitmentSCP",
    "OpenAssociations",
    "ReportRefusedOnOpen",
    "IArchiveReports",
    "IReportChannel",
    "modality_for",
    "ActionStatus",
]

#: PS3.5 9.1: a UID is dot-separated components of digits, no leading zero
#: in a component of more than one digit, at most 64 characters.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")

#: ``(status, error comment)``: what the service puts in the response.
ActionStatus = tuple[int, str]


class IReportChannel(Protocol):
    """A requester's open association a report may go on (:class:`gateway.receive.StorageService`)."""

    @property
    def reporting(self) -> bool:
        """Whether a report sent there still awaits its response."""

    def report_context(self) -> AcceptedContext | None:
        """The accepted Push Model context, or ``None``."""

    def send_event_report(self, event_type_id: int, dataset: bytes) -> "Deferred[ActionStatus]":
        """Send an N-EVENT-REPORT-RQ there; fires with the response's ``(status, comment)``."""


class ReportRefusedOnOpen(Exception):
    """The requester answered the report on its open association with a failure status."""


class OpenAssociations:
    """This node's open requester associations with the Push Model context (``report_association: open``).

    The report sender (:mod:`gateway.commitment.report`) asks
    :meth:`open_route` first when a transaction wants its report on the
    requester's association; ``None`` (none open, or the one open is busy
    with another report) or a failed attempt means a new association, the
    default every vendor supports (PS3.4 J.3.3).

    :param clock: times an unanswered report out; ``None``: no timeout.
    :param timeout: seconds to wait for the N-EVENT-REPORT-RSP.
    """

    def __init__(self, clock: IReactorTime | None = None, timeout: float = 60.0) -> None:
        self._clock = clock
        self._timeout = timeout
        #: Open associations, oldest first: (calling AE title, channel).
        self._open: list[tuple[str, IReportChannel]] = []

    def opened(self, info: AssociationInfo, channel: IReportChannel) -> None:
        """Note an association with the Push Model context."""
        self._open.append((info.calling_ae_title.strip(), channel))

    def closed(self, channel: IReportChannel) -> None:
        """Forget an association that ended."""
        self._open = [(title, c) for title, c in self._open if c is not channel]

    def __len__(self) -> int:
        """How many are open."""
        return len(self._open)

    def open_route(self, transaction: Transaction, report: CommitmentReport) -> "Deferred[None] | None":
        """Send ``report`` on the requester's most recent open association, if it has one free.

        :param transaction: the journaled transaction (its calling AE title names the requester).
        :param report: the decided report.
        :returns: ``None`` when no association can take it; else a Deferred
            firing when the requester answered success or a warning (PS3.7
            C.1, C.4), failing otherwise (a failure status, the association
            ended, or no answer within the timeout).
        """
        calling = transaction.request.calling_ae_title.strip()
        for title, channel in reversed(self._open):
            context = channel.report_context()
            if title != calling or context is None or channel.reporting:
                continue
            try:
                dataset = codec.encode_event_report(report, context.transfer_syntax)
                d = channel.send_event_report(report.event_type, dataset)
            except ValueError:
                return None
            if self._clock is not None:
                d.addTimeout(self._timeout, self._clock)

            def answered(result: ActionStatus) -> None:
                status, comment = result
                if category(status) not in (StatusCategory.SUCCESS, StatusCategory.WARNING):
                    raise ReportRefusedOnOpen(f"status 0x{status:04X}" + (f" ({comment})" if comment else ""))

            return d.addCallback(answered)
        return None


class IArchiveReports(Protocol):
    """Where an archive's report goes (:class:`gateway.commitment.archive.ArchiveReports`)."""

    def record(self, calling_ae_title: str, report: CommitmentReport) -> "Deferred[ActionStatus]":
        """Record the report; fires with the N-EVENT-REPORT-RSP ``(status, comment)``."""


def _valid_uid(uid: str) -> bool:
    """Whether ``uid`` follows PS3.5 9.1 (components, no leading zeros, at most 64 characters)."""
    return 0 < len(uid) <= 64 and _UID.fullmatch(uid) is not None


def modality_for(config: GatewayConfig, calling_ae_title: str, peer_address: str) -> ModalityConfig | None:
    """The ``modalities`` entry a requester is, by AE title; ``None`` when it has none.

    Two entries with the same AE title (the loader normally refuses that):
    the one whose ``host`` is the peer's address wins, else the first in file
    order, so the answer is deterministic.

    :param config: the configuration in force.
    :param calling_ae_title: the requester's calling AE title.
    :param peer_address: ``host:port`` as the listener saw it.
    """
    calling = calling_ae_title.strip()
    matches = [m for m in config.modalities if m.ae_title.strip() == calling]
    if not matches:
        return None
    host = peer_address.rsplit(":", 1)[0]
    for modality in matches:
        if modality.host == host:
            return modality
    return matches[0]


def _listener(config: GatewayConfig, name: str) -> ListenerConfig | None:
    """The listener called ``name`` in ``config`` (``None`` after a reload removed it)."""
    for listener in config.listen:
        if listener.name == name:
            return listener
    return None


class _Refusal(Exception):
    """A check failed: answer ``status`` with ``comment``; ``outcome`` is the event's label."""

    def __init__(self, status: int, comment: str, outcome: str = "invalid") -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment
        self.outcome = outcome


class CommitmentSCP:
    """Storage Commitment Push Model SCP (PS3.4 J.3): checks, journals and answers N-ACTIONs; takes archives' reports.

    One per process, shared by every association.

    :param journal: the commitment journal (the queue store), called only through ``run``.
    :param run: the store's blocking runner (the single store thread).
    :param config: returns the configuration in force (``modalities``,
        ``commitment`` and the listeners change on reload).
    :param wall: wall-clock seconds since the epoch (the journal's times).
    :param observer: told of every answer (:class:`~gateway.events.CommitmentRequested`).
    :param on_journaled: called after a new transaction was journaled (the
        commitment worker's ``poke``); may be set later.
    :param archive_reports: where archives' reports go; ``None`` when no
        destination commits (a report is then answered 0x0110). May be set later.
    :param clock: times reports sent on a requester's open association out.
    """

    log = Logger(namespace="gateway.commitment.scp")

    def __init__(
        self,
        *,
        journal: ICommitmentJournal,
        run: IBlockingRunner,
        config: Callable[[], GatewayConfig],
        wall: Callable[[], float],
        observer: events.IGatewayObserver = events.NULL_OBSERVER,
        on_journaled: Callable[[], None] = lambda: None,
        archive_reports: IArchiveReports | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self._journal = journal
        self._run = run
        self._config = config
        self._wall = wall
        self._observer = observer
        self.on_journaled = on_journaled
        self.archive_reports = archive_reports
        #: The requesters' open associations (``report_association: open``): give
        #: ``open_associations.open_route`` to the report sender.
        self.open_associations = OpenAssociations(clock)

    def association_opened(self, info: AssociationInfo, channel: IReportChannel) -> None:
        """An association with the Push Model context began (:class:`OpenAssociations`)."""
        self.open_associations.opened(info, channel)

    def association_closed(self, channel: IReportChannel) -> None:
        """That association ended."""
        self.open_associations.closed(channel)

    # -- N-ACTION: a requester asks (PS3.4 J.3.2) --------------------------------------

    def action(
        self, info: AssociationInfo, rq: dimse.NActionRQ, dataset: bytes, transfer_syntax: str
    ) -> "Deferred[ActionStatus]":
        """Check, journal and answer one N-ACTION-RQ (the module docstring lists the checks).

        :param info: the association it came on.
        :param rq: the decoded command.
        :param dataset: its Action Information, as received (``b""`` when none came).
        :param transfer_syntax: the presentation context's transfer syntax.
        :returns: a Deferred firing with ``(status, error comment)``; it never fails.
        """
        config = self._config()
        try:
            commitment, modality = self._check_action(config, info, rq)
            request = self._decode_action(dataset, transfer_syntax)
        except _Refusal as refusal:
            return succeed(self._answer(info, "", refusal.outcome, refusal.status, refusal.comment, 0))
        new = self._new_transaction(info, request, commitment, modality)
        d: Deferred[Any] = self._run.run(self._journal.add_transaction, new, self._wall())

        def journaled(result: tuple[Any, bool]) -> ActionStatus:
            _, created = result
            if created:
                try:
                    self.on_journaled()
                except Exception:
                    # Journaled already: the worker finds it at its next look.
                    self.log.failure("could not wake the commitment worker")
            outcome = "accepted" if created else "repeated"
            return self._answer(info, new.transaction_uid, outcome, Status.SUCCESS, "", len(new.references))

        def refused(failure: Failure) -> ActionStatus:
            if failure.check(TransactionConflict):
                return self._answer(
                    info, new.transaction_uid, "conflict", Status.INVALID_ARGUMENT_VALUE,
                    "Transaction UID already used with other references (PS3.3 C.14.1.1, 0x0131)",
                    len(new.references), reason=failure.getErrorMessage(),
                )
            if failure.check(StoreUnavailable):
                self.log.error(
                    "{assoc_id} could not journal commitment request {uid}: queue store unreachable ({error})",
                    assoc_id=info.assoc_id, uid=new.transaction_uid, error=failure.getErrorMessage(),
                )
                return self._answer(
                    info, new.transaction_uid, "unavailable", Status.RESOURCE_LIMITATION,
                    "Resource limitation: commitment journal unreachable", len(new.references),
                    reason=failure.getErrorMessage(),
                )
            self.log.failure("{assoc_id} journaling a commitment request failed", failure, assoc_id=info.assoc_id)
            return self._answer(
                info, new.transaction_uid, "unavailable", Status.PROCESSING_FAILURE,
                "Processing failure: commitment request not journaled", len(new.references),
                reason=failure.getErrorMessage(),
            )

        d.addCallbacks(journaled, refused)
        return d

    def _check_action(
        self, config: GatewayConfig, info: AssociationInfo, rq: dimse.NActionRQ
    ) -> tuple[CommitmentConfig, ModalityConfig]:
        """Checks 1 to 4 (module docstring); the listener's commitment settings and the requester's entry.

        :raises _Refusal: the first check that fails.
        """
        # 1. PS3.7 10.1.4.1.10 / C.5: the SOP Class was not recognized (0x0118).
        if rq.requested_sop_class_uid != STORAGE_COMMITMENT_PUSH:
            raise _Refusal(Status.NO_SUCH_SOP_CLASS, "Requested SOP Class is not Storage Commitment Push Model")
        # 2. PS3.4 J.3.2.1.2: the well-known instance; PS3.7 C.5: 0x0117 for a
        #    UID that breaks PS3.5 9.1, 0x0112 for one that is simply not ours.
        instance = rq.requested_sop_instance_uid
        if not _valid_uid(instance):
            raise _Refusal(Status.INVALID_OBJECT_INSTANCE, "Requested SOP Instance UID is not a valid UID")
        if instance != STORAGE_COMMITMENT_INSTANCE:
            raise _Refusal(Status.NO_SUCH_OBJECT_INSTANCE, "Requested SOP Instance is not 1.2.840.10008.1.20.1.1")
        # 3. PS3.4 Table J.3-1: Action Type ID 1 is the only action (0x0123 otherwise).
        if rq.action_type_id != ACTION_REQUEST_COMMITMENT:
            raise _Refusal(Status.NO_SUCH_ACTION, f"No such action: Action Type ID {rq.action_type_id}")
        # 4. Access (the issue; PS3.7 C.5 0x0124 Refused: not authorized).
        listener = _listener(config, info.listener)
        commitment = config.commitment_for(listener) if listener is not None else None
        if commitment is None:
            raise _Refusal(Status.NOT_AUTHORIZED, "Storage Commitment is not offered on this listener", "refused")
        modality = modality_for(config, info.calling_ae_title, info.peer_address)
        if modality is None:
            # The report needs the requester's address: an AE not in the table could never be answered.
            raise _Refusal(Status.NOT_AUTHORIZED, "Calling AE title has no entry in modalities", "refused")
        if commitment.allowed_ae_titles and not any(
            fnmatchcase(info.calling_ae_title.strip(), pattern) for pattern in commitment.allowed_ae_titles
        ):
            raise _Refusal(Status.NOT_AUTHORIZED, "Calling AE title not in commitment.allowed_ae_titles", "refused")
        return commitment, modality

    def _decode_action(self, dataset: bytes, transfer_syntax: str) -> ActionRequest:
        """Check 5: the Action Information (PS3.4 Table J.3-1), whose errors carry their status.

        :raises _Refusal: the data set cannot be taken.
        """
        try:
            return codec.decode_action_request(dataset, transfer_syntax)
        except codec.CommitmentDataSetError as e:
            raise _Refusal(e.status, e.comment) from e

    def _new_transaction(
        self, info: AssociationInfo, request: ActionRequest, commitment: CommitmentConfig, modality: ModalityConfig
    ) -> NewTransaction:
        """The journal's record of an accepted request (times from the listener's commitment settings)."""
        now = self._wall()
        return NewTransaction(
            transaction_uid=request.transaction_uid,
            calling_ae_title=info.calling_ae_title.strip(),
            called_ae_title=info.called_ae_title.strip(),
            modality=modality.name,
            listener=info.listener,
            policy=commitment.policy,
            # The journal compares references as a set; repeats go, request order stays.
            references=tuple(dict.fromkeys(request.references)),
            deadline=now + commitment.deadline,
            report_deadline=now + commitment.report_deadline,
            lookback_from=now - commitment.lookback,
            unrouted=commitment.unrouted,
            report_association=commitment.report_association,
            source_address=info.peer_address,
        )

    def _answer(
        self, info: AssociationInfo, uid: str, outcome: str, status: int, comment: str, instances: int, reason: str = ""
    ) -> ActionStatus:
        """Log and tell the observer of one N-ACTION answer; return it."""
        self.log.info(
            "{assoc_id} N-ACTION storage commitment {uid} from {calling}: {outcome}, status 0x{status:04X}{comment}",
            assoc_id=info.assoc_id,
            uid=uid or "(none)",
            calling=info.calling_ae_title,
            outcome=outcome,
            status=status,
            comment=f" ({comment})" if comment else "",
        )
        self._observer.observe(
            events.CommitmentRequested(
                listener=info.listener,
                calling_ae_title=info.calling_ae_title,
                peer=info.peer_address,
                transaction_uid=uid,
                outcome=outcome,
                status=status,
                instances=instances,
                reason=reason or comment,
            )
        )
        return status, comment

    # -- N-EVENT-REPORT: an archive reports on our request (PS3.4 J.3.3) ---------------

    def event_report(
        self, info: AssociationInfo, rq: dimse.NEventReportRQ, dataset: bytes, transfer_syntax: str
    ) -> "Deferred[ActionStatus]":
        """Take an archive's N-EVENT-REPORT-RQ on an N-ACTION of ours; every one is answered.

        Checks (PS3.7 10.1.1.1.8 lists the statuses of an N-EVENT-REPORT-RSP):
        Affected SOP Class not the Push Model class -> 0x0118 No such SOP
        Class; Affected SOP Instance not the well-known one (PS3.4 J.3.2.1.2)
        -> 0x0112 No such SOP Instance; Event Type ID not 1 or 2 (PS3.4
        Table J.3-2) -> 0x0113 No such event type; a data set that cannot be
        decoded, or no archive that commits -> 0x0110 Processing failure.
        Otherwise :class:`IArchiveReports` answers.

        :param info: the association it came on (the archive is the requestor).
        :param rq: the decoded command.
        :param dataset: its Event Information, as received.
        :param transfer_syntax: the presentation context's transfer syntax.
        :returns: a Deferred firing with ``(status, error comment)``; it never fails.
        """
        refusal: _Refusal | None = None
        report: CommitmentReport | None = None
        if rq.affected_sop_class_uid != STORAGE_COMMITMENT_PUSH:
            refusal = _Refusal(Status.NO_SUCH_SOP_CLASS, "Affected SOP Class is not Storage Commitment Push Model")
        elif rq.affected_sop_instance_uid != STORAGE_COMMITMENT_INSTANCE:
            refusal = _Refusal(Status.NO_SUCH_OBJECT_INSTANCE, "Affected SOP Instance is not 1.2.840.10008.1.20.1.1")
        elif rq.event_type_id not in (EVENT_ALL_COMMITTED, EVENT_SOME_FAILED):
            refusal = _Refusal(Status.NO_SUCH_EVENT_TYPE, f"No such event type: Event Type ID {rq.event_type_id}")
        elif self.archive_reports is None:
            refusal = _Refusal(Status.PROCESSING_FAILURE, "No Storage Commitment request of ours is awaiting reports")
        else:
            try:
                report = codec.decode_event_report(dataset, transfer_syntax)
            except codec.CommitmentDataSetError as e:
                refusal = _Refusal(Status.PROCESSING_FAILURE, f"Processing failure: {e.comment}")
        if refusal is not None or report is None or self.archive_reports is None:
            assert refusal is not None
            return succeed(self._report_refused(info, rq, refusal))
        try:
            d = self.archive_reports.record(info.calling_ae_title.strip(), report)
        except Exception:
            self.log.failure("{assoc_id} recording an archive's commitment report failed", assoc_id=info.assoc_id)
            return succeed((Status.PROCESSING_FAILURE, "Processing failure: report not recorded"))

        def failed(failure: Failure) -> ActionStatus:
            self.log.failure(
                "{assoc_id} recording an archive's commitment report failed", failure, assoc_id=info.assoc_id
            )
            return Status.PROCESSING_FAILURE, "Processing failure: report not recorded"

        d.addErrback(failed)
        return d

    def _report_refused(self, info: AssociationInfo, rq: dimse.NEventReportRQ, refusal: _Refusal) -> ActionStatus:
        """Log and tell the observer of a report answered here (never handed on)."""
        self.log.warn(
            "{assoc_id} N-EVENT-REPORT from {calling}: status 0x{status:04X} ({comment})",
            assoc_id=info.assoc_id,
            calling=info.calling_ae_title,
            status=refusal.status,
            comment=refusal.comment,
        )
        self._observer.observe(
            events.ArchiveCommitmentReported(
                destination="",
                calling_ae_title=info.calling_ae_title,
                transaction_uid="",
                committed=0,
                failed=0,
                status=refusal.status,
            )
        )
        return refusal.status, refusal.comment
