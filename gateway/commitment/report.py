"""Send one Storage Commitment report to its requester (PS3.4 J.3.3; issue 15).

The report of a transaction goes on a new association from the gateway to
the requester, at its address in the ``modalities`` table (PS3.4 J.3.3.1.3:
the SCP, here the gateway, initiates it; every vendor supports that).
:class:`ReportSender`:

1. finds the requester's :class:`~gateway.config.schema.ModalityConfig` by
   name in the *current* configuration (an entry removed by a reload is a
   :class:`ModalityUnknown`, retried like any failed delivery: the
   operator may put it back);
2. opens an association, calling AE title the one the requester called
   (ours), called AE title the modality's, with its TLS settings (through
   :func:`gateway.send.dicom.connect_dicom`, the DICOM destination's
   opener, by a small adapter: :func:`modality_destination`), proposing
   Storage Commitment Push Model (1.2.840.10008.1.20.1) in Explicit and
   Implicit VR Little Endian (some requesters accept only Implicit) with
   the SCP/SCU Role Selection item SCU-role 0, SCP-role 1 (PS3.4
   J.3.3.1.3, PS3.7 D.3.3.4: the association requestor is the SCP);
3. sends the N-EVENT-REPORT-RQ (PS3.7 10.3.1): affected SOP class and
   instance the push class and its well-known instance (PS3.4 J.3.2.1.2),
   the report's event type (1 all committed, 2 failures exist), the data set
   encoded in the accepted context's transfer syntax;
4. reads the N-EVENT-REPORT-RSP: success or a warning is delivered
   (PS3.7 C.1, C.4); anything else is :class:`ReportRefused`; an
   association that cannot be opened, is refused, or ends before the answer
   is :class:`ReportNotDelivered`. The association is always released
   (aborted when the release is not answered within the ACSE timeout, or
   after a fault).

When the transaction asked for ``report_association: open``, an optional
``open_route(transaction, report)`` hook (the listener side's registry of
open requester associations) is tried first: ``None`` (no open
association) or a failed attempt falls back to a new association.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.associate import AssociationRejected, ClientAssociation
from gateway.commitment.model import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH, CommitmentReport
from gateway.config.schema import DicomDestination, GatewayConfig, ModalityConfig
from gateway.dimse.commitment import encode_event_report
from gateway.dimse.status import StatusCategory, category
from gateway.listen import printable
from gateway.queue.commitments import Transaction
from gateway.send.dicom import Proposals, connect_dicom
from gateway.sopclasses import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from gateway.ul.items import SCPSCURoleSelection

__all__ = [
    "REPORT_PROPOSALS",
    "REPORT_ROLES",
    "ReportError",
    "ModalityUnknown",
    "ReportNotDelivered",
    "ReportRefused",
    "ReportSender",
    "modality_destination",
]

#: The one presentation context of a report association: the push class in
#: Explicit, then Implicit VR Little Endian (the default syntax every AE accepts, PS3.5 10.1).
REPORT_PROPOSALS: Proposals = ((STORAGE_COMMITMENT_PUSH, (EXPLICIT_VR_LE, IMPLICIT_VR_LE)),)

#: PS3.4 J.3.3.1.3, PS3.7 D.3.3.4: as association requestor the gateway is the
#: Storage Commitment SCP: SCU-role 0, SCP-role 1.
REPORT_ROLES: tuple[SCPSCURoleSelection, ...] = (
    SCPSCURoleSelection(STORAGE_COMMITMENT_PUSH, scu_role=False, scp_role=True),
)

#: ``connect(destination, proposals, role_selections)``: opens the association.
Connect = Callable[[DicomDestination, Proposals, Sequence[SCPSCURoleSelection]], "Deferred[ClientAssociation]"]

#: ``open_route(transaction, report)``: sends on the requester's open association;
#: ``None`` when there is none.
OpenRoute = Callable[[Transaction, CommitmentReport], "Deferred[Any] | None"]


class ReportError(Exception):
    """A report was not delivered (the worker retries it until ``report_deadline``)."""


class ModalityUnknown(ReportError):
    """The transaction's requester is no longer in the ``modalities`` table."""


class ReportNotDelivered(ReportError):
    """No answer: the association could not be opened, was refused, or ended before the response."""


class ReportRefused(ReportError):
    """The requester answered the N-EVENT-REPORT-RQ with a failure status.

    :ivar status: the status (0000,0900).
    :ivar comment: its Error Comment (0000,0902), if any.
    """

    def __init__(self, status: int, comment: str = "") -> None:
        self.status = status
        self.comment = comment
        text = f"N-EVENT-REPORT-RSP status 0x{status:04X}"
        # The comment is the peer's: escaped (and bounded) before it reaches a log or the journal (HARDENING P10).
        super().__init__(f"{text}: {printable(comment[:256])}" if comment else text)


def modality_destination(modality: ModalityConfig, calling_ae_title: str) -> DicomDestination:
    """The modality's address as a DICOM destination, so the destination's opener serves it (TLS, timeouts).

    :param modality: the ``modalities`` entry.
    :param calling_ae_title: the AE title we present (the one the requester called).
    :returns: a destination with the modality's AE title, address, TLS, timeouts and PDU length.
    """
    return DicomDestination(
        name=f"modality {modality.name}",
        ae_title=modality.ae_title,
        host=modality.host,
        port=modality.port,
        calling_ae_title=calling_ae_title,
        max_pdu_length=modality.max_pdu_length,
        connect_timeout=modality.connect_timeout,
        acse_timeout=modality.acse_timeout,
        dimse_timeout=modality.dimse_timeout,
        tls=modality.tls,
    )


def _delivered(status: int) -> bool:
    """Success or a warning (PS3.7 C.1, C.4) means the requester took the report."""
    return category(status) in (StatusCategory.SUCCESS, StatusCategory.WARNING)


class ReportSender:
    """Delivers reports (see the module docstring).

    :param config: the current configuration (the ``modalities`` table).
    :param clock: times the release (abort if unanswered).
    :param reactor: opens connections when ``connect`` is not given.
    :param connect: opens an association (tests inject one).
    :param open_route: sends on the requester's open association, when
        the transaction asked for it (``report_association: open``).
    """

    log = Logger(namespace="gateway.commitment.report")

    def __init__(
        self,
        config: Callable[[], GatewayConfig],
        clock: IReactorTime,
        reactor: Any = None,
        connect: Connect | None = None,
        open_route: OpenRoute | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        if connect is None:
            if reactor is None:
                raise TypeError("ReportSender needs a reactor or a connect function")

            def connect(
                destination: DicomDestination, proposals: Proposals, roles: Sequence[SCPSCURoleSelection]
            ) -> "Deferred[ClientAssociation]":
                return connect_dicom(reactor, destination, proposals, role_selections=roles, verification=False)

        self.connect: Connect = connect
        self.open_route = open_route

    def send(self, transaction: Transaction, report: CommitmentReport) -> "Deferred[None]":
        """Deliver ``report`` to the transaction's requester.

        :returns: a Deferred firing when the requester acknowledged it, or
            failing with a :class:`ReportError`.
        """
        return Deferred.fromCoroutine(self._send(transaction, report))

    async def _send(self, transaction: Transaction, report: CommitmentReport) -> None:
        request = transaction.request
        if request.report_association == "open" and self.open_route is not None:
            attempt = self.open_route(transaction, report)
            if attempt is not None:
                try:
                    await attempt
                    return
                except Exception as e:
                    self.log.info(
                        "commitment report {uid} on the open association failed ({error}); a new association instead",
                        uid=transaction.transaction_uid,
                        error=str(e),
                    )
        try:
            modality = self.config().modality(request.modality)
        except KeyError:
            raise ModalityUnknown(f"modality {request.modality!r} is not in the modalities table") from None
        destination = modality_destination(modality, request.called_ae_title)
        try:
            association = await self.connect(destination, REPORT_PROPOSALS, REPORT_ROLES)
        except AssociationRejected as e:
            raise ReportNotDelivered(f"{modality.name} ({modality.host}:{modality.port}) rejected the association: {e}") from e
        except Exception as e:
            raise ReportNotDelivered(
                f"cannot open an association to {modality.name} ({modality.host}:{modality.port}): {type(e).__name__}: {e}"
            ) from e
        try:
            status, comment = await self._report(association, report)
        except ReportError:
            association.abort()
            raise
        except Exception as e:
            if association.is_open:
                association.abort()
            raise ReportNotDelivered(f"no N-EVENT-REPORT-RSP from {modality.name}: {type(e).__name__}: {e}") from e
        await self._release(association, modality.acse_timeout)
        if not _delivered(status):
            raise ReportRefused(status, comment)

    async def _report(self, association: ClientAssociation, report: CommitmentReport) -> tuple[int, str]:
        """N-EVENT-REPORT-RQ on the accepted push context; the response's status and comment."""
        context = association.context_for_class(STORAGE_COMMITMENT_PUSH)
        if context is None:
            # PS3.7 D.3.3.4, Table D.3-12: refused, or our SCP role declined.
            raise ReportNotDelivered("the requester did not accept Storage Commitment Push Model with the gateway as SCP")
        dataset = encode_event_report(report, context.transfer_syntax)
        response = await Deferred.fromCoroutine(
            association.n_event_report(STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, report.event_type, dataset)
        )
        return int(response.status), str(getattr(response, "error_comment", "") or "")

    async def _release(self, association: ClientAssociation, acse_timeout: float) -> None:
        """A-RELEASE; abort when the requester does not answer within the ACSE timeout."""
        if not association.is_open:
            return
        released = association.release()
        timer = self.clock.callLater(acse_timeout, association.abort)
        try:
            await released
        except Exception:
            pass  # the report was answered: a release fault changes nothing
        finally:
            if timer.active():
                timer.cancel()
