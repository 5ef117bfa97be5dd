"""Tests for :mod:`gateway.qr.scp`: settings in force, access, dispatch and unexpected errors."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import fail
from twisted.trial.unittest import SynchronousTestCase

from gateway.config.schema import QueryConfig, RetrieveConfig
from gateway.qr.context import QRContext
from gateway.qr.scp import QueryRetrieveSCP, settings_for


class _Listener:
    """A listener's Q/R overrides."""

    def __init__(self, name: str, query: Any = None, retrieve: Any = None) -> None:
        self.name, self.query, self.retrieve = name, query, retrieve


class _Config:
    """The parts of GatewayConfig the SCP reads."""

    def __init__(self, query: Any = None, retrieve: Any = None, listen: tuple[Any, ...] = ()) -> None:
        self.query, self.retrieve, self.listen = query, retrieve, listen

    def query_for(self, listener: Any) -> Any:
        return listener.query if listener.query is not None else self.query

    def retrieve_for(self, listener: Any) -> Any:
        return listener.retrieve if listener.retrieve is not None else self.retrieve


class _Info:
    """An association's identity."""

    assoc_id = "A1"
    peer_address = "10.0.0.7:40000"
    calling_ae_title = "WS01"
    listener = "dicom"


class _Responder:
    """Keeps the final response."""

    transfer_syntax = "1.2.840.10008.1.2"

    def __init__(self) -> None:
        self.finals: list[tuple[int, str]] = []
        self.finished = False

    def final(self, status: int, counts: Any = None, error_comment: str = "", failed_uids: Any = (), identifier: Any = None) -> None:
        self.finals.append((status, error_comment))
        self.finished = True


class _Observer:
    """Keeps the events."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def observe(self, event: Any) -> None:
        self.seen.append(event)


def make_scp(config: _Config, handlers: dict[str, Any] | None, observer: Any = None) -> QueryRetrieveSCP:
    """An SCP over ``config``."""
    ctx = QRContext(config=lambda: config, journal=None, run=None, reactor=None, wall=lambda: 0.0, observer=observer or _Observer())
    return QueryRetrieveSCP(ctx, handlers)


class SCPTests(SynchronousTestCase):
    """Every request is answered: by its handler, or here."""

    def test_listener_override_wins_over_the_top_level(self) -> None:
        """A listener's own ``query`` applies there; another listener falls back to the top level."""
        top, own = QueryConfig(("a",)), QueryConfig(("b",))
        config = _Config(query=top, listen=(_Listener("dicom", query=own), _Listener("other")))
        self.assertIs(settings_for(config, "dicom", "find"), own)
        self.assertIs(settings_for(config, "other", "find"), top)
        self.assertIsNone(settings_for(config, "dicom", "move"))

    def test_verb_not_configured_is_refused_sop_class_not_supported(self) -> None:
        """A C-MOVE where no ``retrieve`` applies is refused 0x0122, its handler never called."""
        called: list[Any] = []
        scp = make_scp(_Config(query=QueryConfig(("a",)), listen=(_Listener("dicom"),)), {"move": lambda *a: called.append(a)})
        responder = _Responder()
        scp.handle("move", _Info(), None, b"", responder)
        self.assertEqual([s for s, _ in responder.finals], [0x0122])
        self.assertEqual(called, [])
        [event] = scp.ctx.observer.seen  # type: ignore[attr-defined]
        self.assertEqual((type(event).__name__, event.outcome, event.status), ("RetrieveAnswered", "refused", 0x0122))

    def test_caller_not_allowed_is_refused_and_audited(self) -> None:
        """A calling AE outside ``query.allowed_ae_titles`` gets 0x0124 with the reason, and a ``refused`` QueryAnswered."""
        called: list[Any] = []
        config = _Config(query=QueryConfig(("a",), allowed_ae_titles=("CT*",)), listen=(_Listener("dicom"),))
        scp = make_scp(config, {"find": lambda *a: called.append(a)})
        responder = _Responder()
        scp.handle("find", _Info(), None, b"", responder)
        self.assertEqual([s for s, _ in responder.finals], [0x0124])
        self.assertEqual(called, [])
        [event] = scp.ctx.observer.seen  # type: ignore[attr-defined]
        self.assertEqual((type(event).__name__, event.outcome), ("QueryAnswered", "refused"))

    def test_handler_gets_the_request_and_the_context(self) -> None:
        """The verb's handler is called with info, request, identifier, responder and the context."""
        called: list[Any] = []
        scp = make_scp(_Config(query=QueryConfig(("a",)), listen=(_Listener("dicom"),)), {"find": lambda *a: called.append(a)})
        responder = _Responder()
        scp.handle("find", _Info(), "rq", b"id", responder)
        [(info, rq, identifier, got, ctx)] = called
        self.assertEqual((rq, identifier, got, ctx), ("rq", b"id", responder, scp.ctx))

    def test_handler_error_is_answered_unable_to_process(self) -> None:
        """A handler that raises or fails is answered 0xC000 with an Error Comment (PS3.4 C.4.1.1.4)."""
        config = _Config(retrieve=RetrieveConfig(("a",)), listen=(_Listener("dicom"),))

        def boom(*args: Any) -> None:
            raise RuntimeError("boom")

        for handler in (boom, lambda *a: fail(RuntimeError("late"))):
            responder = _Responder()
            make_scp(config, {"get": handler}).handle("get", _Info(), None, b"", responder)
            self.assertEqual(responder.finals, [(0xC000, "Unable to process")])
        self.flushLoggedErrors(RuntimeError)

    def test_unimplemented_verb_is_refused(self) -> None:
        """A configured verb whose handler does not exist (yet) is refused 0x0122, never left unanswered."""
        scp = make_scp(_Config(retrieve=RetrieveConfig(("a",)), listen=(_Listener("dicom"),)), {})
        responder = _Responder()
        scp.handle("move", _Info(), None, b"", responder)
        self.assertEqual([s for s, _ in responder.finals], [0x0122])
