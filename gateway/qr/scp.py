"""The Query/Retrieve SCP: the requests of one accepted association, checked and dispatched (issue 16).

:mod:`gateway.receive` buffers a C-FIND/C-MOVE/C-GET-RQ's identifier and
calls :meth:`QueryRetrieveSCP.handle` with a responder
(:class:`gateway.qr.context.IResponder`). Here the request meets the
configuration in force: the listener's ``query``/``retrieve`` settings must
apply (else the verb is refused 0x0122, SOP class not supported: the listener
should not have accepted its class), the caller must be allowed
(:func:`gateway.qr.access.allowed`, refused 0x0124, PS3.7 C.5, "Refused: Not
authorized", with an Error Comment), then the verb's handler runs:
:func:`gateway.qr.find.find`, :func:`gateway.qr.move.move`,
:func:`gateway.qr.get.get`. A handler ends with ``responder.final``; an
unexpected error (raised, or a failed Deferred) is answered here, 0xC000-class
(PS3.4 C.4.1.1.4 "Failed: Unable to process", C.4.2.1.5, C.4.3.1.4), unless
the handler had answered already.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import events
from gateway.dimse.status import Status
from gateway.qr.access import allowed
from gateway.qr.context import QRContext

#: "Failed: Unable to process" (PS3.4 C.4.1.1.4; C-MOVE and C-GET use the same 0xC000-class range).
UNABLE_TO_PROCESS = 0xC000
#: "Refused: SOP class not supported" (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).
SOP_CLASS_NOT_SUPPORTED = 0x0122
#: "Refused: Not authorized" (PS3.7 C.5 general status 0x0124).
NOT_AUTHORIZED = 0x0124

#: A verb's handler: ``handler(info, rq, identifier, responder, ctx)``.
Handler = Callable[[Any, Any, bytes, Any, QRContext], Any]


def listener_config(config: Any, name: str) -> Any:
    """The ``ListenerConfig`` named ``name`` (``None`` when there is none: a listener removed by a reload)."""
    for listener in getattr(config, "listen", ()):
        if listener.name == name:
            return listener
    return None


def settings_for(config: Any, listener_name: str, verb: str) -> Any:
    """The ``QueryConfig`` (find) or ``RetrieveConfig`` (move, get) in force on that listener, or ``None``."""
    listener = listener_config(config, listener_name)
    if verb == "find":
        return config.query_for(listener) if listener is not None else getattr(config, "query", None)
    return config.retrieve_for(listener) if listener is not None else getattr(config, "retrieve", None)


def _handler(verb: str) -> Handler | None:
    """The verb's handler function, or ``None`` while its module is not there yet."""
    try:
        module = importlib.import_module(f"gateway.qr.{verb}")
    except ImportError:
        return None
    handler: Handler | None = getattr(module, verb, None)
    return handler


class QueryRetrieveSCP:
    """Serves C-FIND, C-MOVE and C-GET requests for every listener (:class:`gateway.receive.IQueryRetrieveSCP`).

    :param ctx: the gateway's side handed to each handler.
    :param handlers: verb -> handler, replacing the modules' own (tests).
    """

    log = Logger(namespace="gateway.qr.scp")

    def __init__(self, ctx: QRContext, handlers: dict[str, Handler] | None = None) -> None:
        self.ctx = ctx
        self._handlers = handlers

    def handle(self, verb: str, info: Any, rq: Any, identifier: bytes, responder: Any) -> None:
        """Check and dispatch one request; it is always answered (here or by its handler)."""
        config = self.ctx.config()
        if settings_for(config, info.listener, verb) is None:
            comment = f"{'Query' if verb == 'find' else 'Retrieve'} is not offered here"
            responder.final(SOP_CLASS_NOT_SUPPORTED, error_comment=comment)
            self._refused(verb, info, rq, identifier, responder, SOP_CLASS_NOT_SUPPORTED, comment)
            return
        ok, reason = allowed(config, info, verb)
        if not ok:
            self.log.info(
                "{assoc_id} C-{verb} from {calling} refused: {reason}",
                assoc_id=info.assoc_id, verb=verb.upper(), calling=info.calling_ae_title, reason=reason,
            )
            responder.final(NOT_AUTHORIZED, error_comment=reason or "Not authorized")
            self._refused(verb, info, rq, identifier, responder, NOT_AUTHORIZED, reason or "Not authorized")
            return
        handler = self._handlers.get(verb) if self._handlers is not None else _handler(verb)
        if handler is None:
            responder.final(SOP_CLASS_NOT_SUPPORTED, error_comment=f"C-{verb.upper()} is not implemented")
            return
        d: Deferred[Any] = maybeDeferred(handler, info, rq, identifier, responder, self.ctx)

        def unexpected(failure: Failure) -> None:
            self.log.failure("{assoc_id} C-{verb} handler failed", failure, assoc_id=info.assoc_id, verb=verb.upper())
            if not getattr(responder, "finished", False):
                status = Status.CANNOT_UNDERSTAND
                responder.final(status, error_comment="Unable to process")

        d.addErrback(unexpected)

    def _refused(self, verb: str, info: Any, rq: Any, identifier: bytes, responder: Any, status: int, reason: str) -> None:
        """Tell the observer (audit, metrics) of a request refused here, before any handler saw it."""
        sop_class = str(getattr(rq, "affected_sop_class_uid", "") or "")
        if verb == "find":
            self.ctx.observer.observe(
                events.QueryAnswered(
                    info.listener, info.calling_ae_title, info.peer_address, sop_class, "", identifier,
                    responder.transfer_syntax, "refused", status, 0, reason=reason,
                )
            )
        else:
            self.ctx.observer.observe(
                events.RetrieveAnswered(
                    info.listener, info.calling_ae_title, info.peer_address, verb, sop_class, "", "refused", status,
                    move_destination=str(getattr(rq, "move_destination", "") or ""), reason=reason,
                )
            )
