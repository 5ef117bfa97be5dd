"""C-GET sub-operations: a C-STORE-RQ from the gateway on the C-GET requester's own association (PS3.4 C.4.3.3).

A C-GET SCP sends the matching instances back on the association the C-GET
came on, as C-STORE sub-operations where the *requester* plays the Storage
SCP. The requester says which storage SOP classes it takes in that role with
SCP/SCU Role Selection (PS3.7 D.3.3.4): on our acceptor side
:class:`~gateway.ul.negotiate.AcceptedContext` keeps the requestor's roles,
so a context we may send a C-STORE-RQ on has ``scp_role`` true.

:func:`store` is what :meth:`gateway.receive.QRResponder.store` calls (the
``IResponder.store`` of :mod:`gateway.qr.context`): it picks the accepted
context for the instance's SOP class *and* transfer syntax (the gateway
forwards bytes unchanged and does not transcode here), sends the command and
the data set, and returns the requester's C-STORE-RSP status. No such
context: :class:`~gateway.associate.NoPresentationContext`, which
:mod:`gateway.qr.get` counts as a failed sub-operation (PS3.4 C.4.3.3.1,
never silently dropped).

The data set is read into memory and sent with the peer's ``send_dataset``
(fragmented to the requester's maximum PDU length); one sub-operation is in
flight at a time (:mod:`gateway.qr.get`), so memory is bounded by the largest
instance. Streaming from disk as ``ClientAssociation.store`` does is a
possible refinement.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail

from gateway.associate import NoPresentationContext
from gateway.dimse import commands as dimse
from gateway.ul.negotiate import AcceptedContext


class IStoreChannel(Protocol):
    """What :func:`store` needs from the association's service (:class:`gateway.receive.StorageService`)."""

    def allocate_message_id(self) -> int:
        """A Message ID for a request we send on this association."""

    def expect_store_response(self, message_id: int) -> "Deferred[int]":
        """Fires with the status of the C-STORE-RSP answering ``message_id``."""

    @property
    def peer(self) -> Any:
        """The adapter: ``send_command(context_id, bytes)``, ``send_dataset(context_id, bytes)``."""

    @property
    def info(self) -> Any:
        """The association (``contexts``: accepted presentation contexts by ID)."""


def sub_operation_context(contexts: Any, sop_class_uid: str, transfer_syntax_uid: str) -> AcceptedContext | None:
    """The context a C-STORE sub-operation of this class and syntax may go on (lowest ID first).

    The requester must have accepted the SCP role for it (PS3.7 D.3.3.4:
    ``scp_role`` is the requestor's); a context where it is only SCU carries
    its own C-STOREs to us, not ours to it.

    :param contexts: the accepted contexts by ID.
    :param sop_class_uid: the instance's SOP Class UID.
    :param transfer_syntax_uid: the syntax its data set is encoded in.
    :returns: the context, or ``None``.
    """
    fits = [
        c
        for c in contexts.values()
        if c.abstract_syntax == sop_class_uid and c.transfer_syntax == transfer_syntax_uid and c.scp_role
    ]
    return min(fits, key=lambda c: c.context_id) if fits else None


def store(
    service: IStoreChannel,
    responder: Any,
    path: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    dataset_offset: int,
) -> "Deferred[int]":
    """Send one C-STORE sub-operation on the requester's association; fires with its C-STORE-RSP status.

    :param service: the association's service.
    :param responder: the C-GET's responder (its ``rq.priority`` is reused,
        PS3.7 9.1.1.1.7; medium when absent).
    :param path: the file holding the data set.
    :param sop_class_uid: (0000,0002) Affected SOP Class UID.
    :param sop_instance_uid: (0000,1000) Affected SOP Instance UID.
    :param transfer_syntax_uid: the data set's transfer syntax.
    :param dataset_offset: where the data set starts in ``path``.
    :returns: a Deferred firing with the status; failing with
        :class:`NoPresentationContext` when no context fits (nothing sent),
        or with ``OSError`` when the file cannot be read.
    """
    context = sub_operation_context(service.info.contexts, sop_class_uid, transfer_syntax_uid)
    if context is None:
        return fail(
            NoPresentationContext(
                f"the C-GET requester accepted no SCP-role context for {sop_class_uid} in {transfer_syntax_uid}"
            )
        )
    try:
        with open(path, "rb") as f:
            f.seek(dataset_offset)
            data = f.read()
    except OSError as error:
        return fail(error)
    priority = getattr(getattr(responder, "rq", None), "priority", 0)
    message_id = service.allocate_message_id()
    rq = dimse.CStoreRQ(message_id, sop_class_uid, sop_instance_uid, priority if priority in (0, 1, 2) else 0)
    answered = service.expect_store_response(message_id)
    service.peer.send_command(context.context_id, dimse.encode_command(rq))
    service.peer.send_dataset(context.context_id, data)
    return answered
