"""What a Query/Retrieve handler is given: the requester's side (:class:`IResponder`) and the gateway's (:class:`QRContext`).

``scp.py`` decodes a C-FIND/C-MOVE/C-GET request on an accepted association
and calls the verb's handler (``find.py``, ``move.py``, ``get.py``) with the
request, its identifier, an :class:`IResponder` that sends responses on that
association in order, and the :class:`QRContext`. A handler ends by calling
:meth:`IResponder.final` exactly once (also after a cancel); it never raises
to ``scp.py`` (an unexpected error is answered 0xC000-class by ``scp.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from twisted.internet.defer import Deferred

from gateway import events


@dataclass(frozen=True)
class SubOperations:
    """C-MOVE/C-GET sub-operation counts (PS3.7 9.1.3.1, 9.1.4.1: (0000,1020)-(0000,1023))."""

    remaining: int | None = None
    completed: int = 0
    failed: int = 0
    warning: int = 0


class IResponder(Protocol):
    """Responses to one request, on the requester's association (sent in order, after earlier ones)."""

    def pending(self, status: int, identifier: bytes | None = None, counts: SubOperations | None = None) -> None:
        """A pending response (0xFF00/0xFF01): a C-FIND match (``identifier``) or C-MOVE/C-GET counts."""

    def final(
        self,
        status: int,
        counts: SubOperations | None = None,
        error_comment: str = "",
        failed_uids: Sequence[str] = (),
        identifier: bytes | None = None,
        offending: Sequence[int] = (),
    ) -> None:
        """The final response; ``failed_uids`` become the Failed SOP Instance UID List (0008,0058).

        ``offending``: the Offending Element (0000,0901) tags of a failure caused
        by the identifier (PS3.7 9.1.2.1.6, PS3.4 C.4.1.1.4), beside the Error Comment.
        """

    @property
    def transfer_syntax(self) -> str:
        """The request's presentation context transfer syntax (identifiers are encoded in it)."""

    @property
    def cancelled(self) -> "Deferred[None]":
        """Fires when the requester sends C-CANCEL-RQ for this request (PS3.7 9.3.2.3), or the association ends."""

    def store(self, path: str, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, dataset_offset: int) -> "Deferred[int]":
        """C-GET only: a C-STORE sub-operation of this Part 10 file on the requester's association (PS3.4 C.4.3.3).

        Fires with the requester's status; fails with
        :class:`~gateway.associate.NoPresentationContext` when the requester
        accepted no context (SCP role) for that SOP class and transfer syntax.
        """


@dataclass
class QRContext:
    """The gateway's side of every Query/Retrieve handler.

    :ivar config: the configuration in force (``GatewayConfig``; sources are DICOM destinations).
    :ivar journal: the store, as :class:`~gateway.queue.retrieves.IRetrieveJournal` (and IQueueStore).
    :ivar run: the store's blocking runner (``run.run(f, *args)`` -> Deferred), as the forwarder uses it.
    :ivar reactor: the reactor (IReactorTCP, IReactorTime).
    :ivar wall: wall-clock seconds.
    :ivar observer: where events go.
    :ivar connect: opens an association to a source:
        ``connect(destination, proposals, role_selections=()) -> Deferred[ClientAssociation]``
        (``gateway.send.dicom.connect_dicom`` with its reactor bound).
    :ivar ae_title: the gateway's own AE title (Move Destination of a relayed C-MOVE).
    """

    config: Callable[[], Any]
    journal: Any
    run: Any
    reactor: Any
    wall: Callable[[], float]
    observer: events.IGatewayObserver = events.NULL_OBSERVER
    connect: Callable[..., "Deferred[Any]"] | None = None
    ae_title: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
