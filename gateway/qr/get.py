"""C-GET through the gateway: retrieve from a source, C-STORE sub-operations back on the requester's association (PS3.4 C.4.3).

Theory of operation. The requester sends a C-GET-RQ (Patient Root or Study
Root, PS3.4 C.6.1.1.1 / C.6.2.1.1) on an association where it also accepted
storage SOP classes in the SCP role (SCP/SCU Role Selection, PS3.7 D.3.3.4,
PS3.4 C.4.3.3). The gateway asks the sources of ``retrieve.sources`` in
order, each with its own C-GET (the gateway proposes the storage classes in
the SCP role on that association, so the source's sub-operations come back
to it); the first source that has matching instances is the one used, the
others are not asked (PS3.4 C.4.3.2: a C-GET SCP retrieves what matches from
its own store; ours is the first archive that holds it).

Every instance the source sends is written to a scratch file (the source
module's adapter does that), then stored on the requester's association with
:meth:`~gateway.qr.context.IResponder.store`, one at a time (streaming: at
most one instance in flight, the source's next C-STORE waits for our answer).
The source is answered Success once the instance is in the gateway's
scratch: the gateway counts the requester's outcome itself, so that a
sub-operation is never counted twice (once by the source, once here).

Counting (PS3.4 C.4.3.1.3, the (0000,1020)-(0000,1023) elements):

* *completed*: the requester answered Success;
* *warning*: it answered a warning (0xBxxx, PS3.4 B.2.3);
* *failed*: it answered a failure, or it accepted no presentation context
  for that SOP class and transfer syntax, so no sub-operation could be
  issued (PS3.4 C.4.3.3.1: such an instance is a failed sub-operation; never
  silently dropped), plus what the source itself reports failed (instances
  it could not send);
* *remaining*: the source's own Number of Remaining Sub-operations, from its
  latest pending response.

The final status (PS3.4 C.4.3.1.4, Table C.4-3): 0x0000 when every
sub-operation completed; 0xB000 (Warning: Sub-operations Complete - One or
more Failures or Warnings) with the Failed SOP Instance UID List (0008,0058)
(PS3.4 C.4.3.1.3.1) when any failed or had a warning; 0xFE00 (Cancel:
Sub-operations terminated due to Cancel Indication) after a C-CANCEL-RQ,
which also reaches the source (PS3.7 9.3.3.3); 0xA702 (Refused: Out of
Resources - Unable to perform sub-operations) when no source could be
retrieved from, with an Error Comment (0000,0902) naming them; a source's
own failure status (e.g. 0xA900, Identifier does not match SOP Class) is
relayed as it is.

Not done here (yet): when no source accepts a C-GET context, the C-MOVE to
the gateway itself (the relay leg through
:class:`~gateway.queue.retrieves.IRetrieveJournal` correlation); such a
source is counted unavailable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from twisted.internet.defer import Deferred, ensureDeferred

from gateway.dimse.status import Status, StatusCategory, category
from gateway.qr.context import IResponder, QRContext, SubOperations

log = logging.getLogger(__name__)

#: PS3.4 C.4.3.1.4, Table C.4-3: Refused: Out of Resources - Unable to perform sub-operations.
UNABLE_TO_PERFORM_SUB_OPERATIONS = 0xA702
#: PS3.4 C.4.3.1.4, Table C.4-3: Warning: Sub-operations Complete - One or more Failures or Warnings.
SUB_OPERATIONS_WITH_FAILURES = 0xB000
#: PS3.4 C.4.3.1.4, Table C.4-3: Failed: Unable to process.
UNABLE_TO_PROCESS = 0xC000


@dataclass(frozen=True)
class ReceivedInstance:
    """One C-STORE sub-operation the source sent the gateway, held in a scratch file.

    :ivar path: the file; its data set starts at ``dataset_offset``.
    :ivar sop_class_uid: the Affected SOP Class UID of the source's C-STORE-RQ.
    :ivar sop_instance_uid: its Affected SOP Instance UID.
    :ivar transfer_syntax_uid: the transfer syntax the data set is encoded in
        (the source's presentation context).
    :ivar dataset_offset: where the data set starts in ``path`` (0: a bare data set).
    """

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset_offset: int = 0


@dataclass(frozen=True)
class SourceOutcome:
    """A source's final C-GET-RSP.

    :ivar status: its (0000,0900).
    :ivar counts: its sub-operation counts (``failed`` counts only what it could
        not send: the gateway answers every sub-operation it receives Success).
    :ivar failed_uids: its Failed SOP Instance UID List (0008,0058).
    :ivar error_comment: its Error Comment (0000,0902).
    """

    status: int
    counts: SubOperations = SubOperations()
    failed_uids: tuple[str, ...] = ()
    error_comment: str = ""


class SourceUnavailable(Exception):
    """The source could not be asked: no association, or no C-GET context accepted for the request's SOP class."""


OnInstance = Callable[[ReceivedInstance], "Deferred[int]"]
OnPending = Callable[[SubOperations], None]


class ISource(Protocol):
    """One source's C-GET as :func:`retrieve` drives it (the adapter over ``ClientAssociation.get``)."""

    name: str

    def get(self, sop_class_uid: str, identifier: bytes, on_instance: OnInstance, on_pending: OnPending) -> "Deferred[SourceOutcome]":
        """Send the C-GET-RQ and run it to its final response.

        ``on_instance`` is called for each sub-operation C-STORE the source
        sends; its result is the status the source is answered with.
        ``on_pending`` is called with each pending response's counts.

        :raises SourceUnavailable: (as a failed Deferred) before anything was sent.
        """

    def cancel(self) -> None:
        """Send C-CANCEL-RQ for the C-GET under way (PS3.7 9.3.3.3); the final response still follows."""

    def close(self) -> "Deferred[None]":
        """Release the association (abort it when it cannot be released)."""


OpenSource = Callable[[str, str], ISource]
"""``open_source(source_name, get_sop_class_uid)``: a not-yet-associated source."""


@dataclass
class _Tally:
    """The counts of one C-GET as the requester sees them."""

    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    #: the source's own counts, from its latest (pending or final) response
    source: SubOperations = SubOperations()
    #: what the source reported failed (its final Failed SOP Instance UID List)
    source_failed_uids: tuple[str, ...] = ()

    def counts(self, remaining: int | None) -> SubOperations:
        """The requester's counts, with the source's failures and warnings added."""
        return SubOperations(
            remaining=remaining,
            completed=self.completed,
            failed=self.failed + self.source.failed,
            warning=self.warning + self.source.warning,
        )

    def all_failed_uids(self) -> tuple[str, ...]:
        """Ours, then the source's, each once (PS3.4 C.4.3.1.3.1)."""
        seen: dict[str, None] = dict.fromkeys(self.failed_uids)
        seen.update(dict.fromkeys(self.source_failed_uids))
        return tuple(seen)


def _store_outcome(status: int) -> str:
    """``completed``, ``warning`` or ``failed`` for a requester's C-STORE-RSP status (PS3.4 B.2.3)."""
    kind = category(status)
    if kind is StatusCategory.SUCCESS:
        return "completed"
    if kind is StatusCategory.WARNING:
        return "warning"
    return "failed"


async def retrieve(
    sop_class_uid: str,
    identifier: bytes,
    responder: IResponder,
    sources: Sequence[str],
    open_source: OpenSource,
    remove: Callable[[str], None],
) -> None:
    """Run one C-GET: ask the sources in order, store what the first that has matches sends, answer the requester.

    Ends with exactly one :meth:`IResponder.final`; never raises.

    :param sop_class_uid: the request's Affected SOP Class UID (a GET class).
    :param identifier: the request's identifier, encoded in the request's
        transfer syntax (already morphed and checked by the caller).
    :param responder: the requester's side.
    :param sources: the source names (``retrieve.sources``), in order.
    :param open_source: makes a source's adapter.
    :param remove: deletes a scratch file once it was stored (or failed).
    """
    tally = _Tally()
    cancelled = False
    current: list[ISource] = []

    def on_cancel(_: object) -> None:
        nonlocal cancelled
        cancelled = True
        for source in current:
            source.cancel()

    responder.cancelled.addCallback(on_cancel)

    async def on_instance(instance: ReceivedInstance) -> int:
        try:
            if cancelled:
                # PS3.4 C.4.3.3.1: after a cancel no further sub-operation is
                # started; the source hears "out of resources" and counts it.
                return int(Status.OUT_OF_RESOURCES)
            try:
                status = await responder.store(
                    instance.path,
                    instance.sop_class_uid,
                    instance.sop_instance_uid,
                    instance.transfer_syntax_uid,
                    instance.dataset_offset,
                )
            except Exception as error:  # noqa: BLE001 - every error is a failed sub-operation
                # NoPresentationContext: the requester accepted no context (SCP
                # role) for this class and syntax (PS3.4 C.4.3.3.1): a failed
                # sub-operation, listed, never silently dropped.
                log.info("C-GET sub-operation %s not stored on the requester: %s", instance.sop_instance_uid, error)
                status = -1
            outcome = _store_outcome(status) if status >= 0 else "failed"
            if outcome == "completed":
                tally.completed += 1
            elif outcome == "warning":
                tally.warning += 1
            else:
                tally.failed += 1
                tally.failed_uids.append(instance.sop_instance_uid)
            return int(Status.SUCCESS)
        finally:
            remove(instance.path)

    def on_pending(counts: SubOperations) -> None:
        tally.source = counts
        if not cancelled:
            responder.pending(Status.PENDING, counts=tally.counts(counts.remaining))

    unavailable: list[str] = []
    outcome: SourceOutcome | None = None
    for name in sources:
        if cancelled:
            break
        source = open_source(name, sop_class_uid)
        current[:] = [source]
        try:
            outcome = await source.get(
                sop_class_uid, identifier, lambda i: ensureDeferred(on_instance(i)), on_pending
            )
        except Exception as error:  # noqa: BLE001 - a source that fails is left out
            log.warning("C-GET source %s unavailable: %s", name, error)
            unavailable.append(f"{name}: {error}" if str(error) else name)
            outcome = None
            continue
        finally:
            current.clear()
            close = source.close()
            close.addErrback(lambda f: None)
            await close
        tally.source = SubOperations(
            remaining=outcome.counts.remaining,
            completed=outcome.counts.completed,
            failed=outcome.counts.failed,
            warning=outcome.counts.warning,
        )
        tally.source_failed_uids = outcome.failed_uids
        received = tally.completed + tally.failed + tally.warning
        kind = category(outcome.status)
        if received or outcome.counts.failed or outcome.counts.warning or cancelled:
            break
        if kind is StatusCategory.FAILURE:
            # A refusal with nothing done (no matches it can send, out of
            # resources): the next source may have them.
            unavailable.append(f"{name}: status 0x{outcome.status:04X} {outcome.error_comment}".rstrip())
            continue
        # Success with no sub-operation: no match here, ask the next.
    _answer(responder, tally, outcome, cancelled, unavailable, received_any=tally.completed + tally.failed + tally.warning > 0)


def _answer(
    responder: IResponder,
    tally: _Tally,
    last: SourceOutcome | None,
    cancelled: bool,
    unavailable: Sequence[str],
    received_any: bool,
) -> None:
    """The final C-GET-RSP (PS3.4 C.4.3.1.4)."""
    failed_uids = tally.all_failed_uids()
    if cancelled:
        remaining = last.counts.remaining if last is not None else None
        responder.final(Status.CANCEL, tally.counts(remaining), failed_uids=failed_uids)
        return
    if not received_any and last is not None and category(last.status) is StatusCategory.FAILURE:
        # The last source asked refused it (every source refused or was down).
        comment = "; ".join(unavailable)
        status = last.status if len(unavailable) == 1 else UNABLE_TO_PERFORM_SUB_OPERATIONS
        responder.final(status, tally.counts(0), error_comment=comment[:64], failed_uids=failed_uids)
        return
    if last is None:
        comment = "no source could be retrieved from: " + "; ".join(unavailable) if unavailable else "no retrieve sources configured"
        # (0000,0902) Error Comment is LO: at most 64 characters (PS3.7 E.1).
        responder.final(UNABLE_TO_PERFORM_SUB_OPERATIONS, tally.counts(0), error_comment=comment[:64])
        return
    counts = tally.counts(0)
    if counts.failed or counts.warning:
        responder.final(SUB_OPERATIONS_WITH_FAILURES, counts, failed_uids=failed_uids)
    else:
        responder.final(Status.SUCCESS, counts)
