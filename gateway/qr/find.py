"""C-FIND through the gateway: one query fanned out to the sources, the answers relayed as they come (issue 16).

Theory of operation
-------------------
:func:`find` is the C-FIND handler :mod:`gateway.qr.scp` calls. It

1. decodes and checks the identifier (:func:`gateway.dimse.identifier.check_query`;
   a malformed one is answered with the error's 0xC000-class or 0xA900
   status, an Error Comment and the Offending Element (0000,0901) naming
   the keys at fault, PS3.4 C.4.1.1.4, PS3.7 9.1.2.1.6); a relational query
   (a unique key above the level missing, PS3.4 C.4.1.2.2) from a requester
   that was not granted relational-queries for the SOP class is refused the
   same way (the hierarchical rule of PS3.4 C.4.1.2.1);
2. turns remapped UIDs in the keys back into the originals the journal
   recorded (``uid_remap`` is a one-way HMAC: :meth:`IRetrieveJournal.original_uids`),
   then applies ``query_morph``;
3. asks the sources (``query.sources``, DICOM destinations) through a
   :class:`SourceQuery` each: all at once in ``merge`` mode, one after the
   other in ``first`` mode (stopping after the first that returned matches);
4. relays each match as it arrives: ``response_morph`` (its remapped UIDs
   recorded with :meth:`IRetrieveJournal.remember_uids`), then
   :class:`gateway.qr.merge.Merge` (duplicates, source precedence,
   ``max_results``), then a pending response: 0xFF00, or 0xFF01 when the
   source sent 0xFF01 (optional keys not supported, PS3.4 C.4.1.1.4: the
   warning is the source's to give, so it is relayed as such). Nothing holds a whole
   result set: a match is in memory from its arrival to its relay (or, for a
   lower-precedence source, in the merge's bounded hold).

A source's query is a :class:`SourceQuery`, by default a
:class:`DicomSourceQuery` (an association proposing only the FIND class,
Explicit then Implicit VR LE, released before its part counts as over);
``ctx.extra["open_source"]`` replaces the opener (tests use fakes).

Relational queries (``query.relational: true``; PS3.4 C.4.1.2.2, C.4.1.3.2).
The listener then answers relational-queries 1 in the SOP Class Extended
Negotiation of the FIND classes (PS3.4 C.5.1.1, PS3.7 D.3.3.5) to a requester
that asks, and every source association proposes it too. A relational query
(:func:`gateway.dimse.identifier.relational_keys` non-empty) from a requester
granted it goes only to sources that granted it in their own negotiation; a
source that did not is a failed source for that query (left out with a
warning, or the query fails 0xC001 when ``strict``), after its association is
released and without the query being sent. Hierarchical queries go to every
source as before.

Each source has ``query.timeout`` to answer the whole query; a slower one is
cancelled (C-CANCEL-RQ) and treated as failed. A failed source fails the
whole query when ``strict`` (0xC001, "Failed: Unable to process", PS3.4
C.4.1.1.4 Cxxx, with an Error Comment naming the source); otherwise it is
left out: logged, told to the observer (:class:`~gateway.events.QuerySourceAnswered`,
counted and audited), and the final response is Success. C-FIND has no
warning status (PS3.4 C.4.1.1.4, Table C.4-1: Success carries no related
fields; the Error Comment, PS3.7 9.1.2.1.6, goes with a failure status), so a
partial answer cannot be flagged to the requester without turning it into a
failure; when every source failed the query fails (0xC001) with an Error
Comment naming them.

A C-CANCEL-RQ from the requester (``responder.cancelled``) is passed on at
once to every running source (each sends its own C-CANCEL-RQ, PS3.7 9.3.2.3)
and the final response is Cancel (0xFE00) straight away; the sources' late
answers are dropped. ``max_results`` reached: the sources are cancelled the
same way and the final is 0xA700 (Refused: Out of resources) with an Error
Comment naming the limit (C-FIND has no warning final status).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import events
from gateway.dimse import identifier as ident
from gateway.dimse.status import Status
from gateway.morph import MorphError, walk
from gateway.qr.context import QRContext
from gateway.qr.merge import Merge
from gateway.qr.scp import settings_for
from gateway.route import RoutingContext
from gateway.ul.items import SOPClassExtendedNegotiation

log = Logger(namespace="gateway.qr.find")

#: "Matches are continuing" (PS3.4 C.4.1.1.4).
PENDING = 0xFF00
#: "Matches are continuing - Warning that one or more Optional Keys were not
#: supported for existence for this Identifier" (PS3.4 C.4.1.1.4): a source's
#: warning, relayed as such.
PENDING_WARNING = 0xFF01
#: "Cancel: matching terminated due to Cancel request" (PS3.4 C.4.1.1.4).
CANCEL = 0xFE00
#: "Refused: Out of resources" (PS3.4 C.4.1.1.4): the ``max_results`` guard.
OUT_OF_RESOURCES = 0xA700
#: "Failed: Unable to process" (PS3.4 C.4.1.1.4, Cxxx): a source failed a
#: strict query, or every source failed (0xC000 stays for malformed identifiers).
SOURCES_FAILED = 0xC001

#: The transfer syntaxes proposed to a source for the FIND class.
SOURCE_SYNTAXES: tuple[str, ...] = (ident.EXPLICIT_VR_LE, ident.IMPLICIT_VR_LE)

#: The UID keys turned back from remapped to original before the query leaves (PS3.4 C.6.1.1, C.6.2.1).
UID_KEYS: tuple[int, ...] = (ident.STUDY_INSTANCE_UID, ident.SERIES_INSTANCE_UID, ident.SOP_INSTANCE_UID)


class SourceFailed(Exception):
    """A source could not answer (refused, unreachable, no FIND context, a failure status)."""


#: Called with each match and its pending status: ``on_match(identifier, status=0xFF00)``.
OnMatch = Callable[..., None]


def relational_item(sop_class_uid: str) -> SOPClassExtendedNegotiation:
    """The SOP Class Extended Negotiation sub-item asking relational queries for a FIND class.

    PS3.7 D.3.3.5 with the C-FIND Service-class-application-information of
    PS3.4 C.5.1.1 (Table C.5-1): byte 1 relational-queries = 1; the other
    bytes (date-time matching, fuzzy matching, timezone adjustment) are left
    out, which means not asked.
    """
    return SOPClassExtendedNegotiation(sop_class_uid, b"\x01")


class SourceQuery(Protocol):
    """One source's part of a query."""

    def start(self, on_match: OnMatch) -> "Deferred[int]":
        """Ask; call ``on_match(identifier, status)`` with each pending response; fire with the final status.

        ``status`` is the pending status the source sent (0xFF00 or 0xFF01);
        fails (:class:`SourceFailed` or another error) when the source could not answer.
        """

    def cancel(self) -> None:
        """Stop: C-CANCEL-RQ if the query is under way (its Deferred still fires, or fails)."""


#: Opens a source's query: ``open_source(ctx, destination, sop_class_uid, query)``.
SourceOpener = Callable[[QRContext, Any, str, Dataset], SourceQuery]


class DicomSourceQuery:
    """A :class:`SourceQuery` over an association to a DICOM destination (``ctx.connect``, ``ClientAssociation.find``)."""

    def __init__(self, ctx: QRContext, destination: Any, sop_class_uid: str, query: Dataset) -> None:
        self._ctx = ctx
        self._destination = destination
        self._sop_class_uid = sop_class_uid
        self._query = query
        self._connecting: Deferred[Any] | None = None
        self._stream: Any = None
        self._cancelled = False
        #: Set by the handler: fires when the requester can take more responses.
        self.writable: Callable[[], Deferred[None]] | None = None
        #: Set by the handler: propose relational queries (``query.relational``, PS3.4 C.5.1.1).
        self.propose_relational = False
        #: Set by the handler: the query is relational; a source that did not
        #: grant relational-queries fails without being asked (PS3.4 C.4.1.2.2).
        self.require_relational = False

    def start(self, on_match: OnMatch) -> "Deferred[int]":
        """Connect, send the C-FIND-RQ, hand over each match, release; fire with the final status."""
        return ensureDeferred(self._run(on_match))

    async def _run(self, on_match: OnMatch) -> int:
        connect = self._ctx.connect
        if connect is None:
            raise SourceFailed("no DICOM connector")
        proposals = [(self._sop_class_uid, list(SOURCE_SYNTAXES))]
        if self.propose_relational or self.require_relational:
            # PS3.7 D.3.3.5: the SOP Class Extended Negotiation sub-item in the A-ASSOCIATE-RQ.
            self._connecting = connect(self._destination, proposals, extended_negotiations=[relational_item(self._sop_class_uid)])
        else:
            self._connecting = connect(self._destination, proposals)
        association = await self._connecting
        self._connecting = None
        try:
            context = association.context_for_class(self._sop_class_uid)
            if context is None:
                raise SourceFailed("the source accepted no context for the FIND class")
            if self.require_relational and not association.relational_queries(self._sop_class_uid):
                # PS3.4 C.5.1.1: no reply, or byte 1 = 0, means the source
                # does not support relational queries; it would answer this
                # one hierarchically (or refuse it), so it is not asked.
                raise SourceFailed("the source did not accept relational queries")
            if self._cancelled:
                return CANCEL
            data = ident.encode_identifier(self._query, context.transfer_syntax)
            self._stream = association.find(self._sop_class_uid, data)
            while True:
                if self.writable is not None:
                    # The requester reads slowly: read no more of the source until it catches up.
                    await self.writable()
                response = await self._stream.next()
                if response is None:
                    raise SourceFailed("the source ended without a final response")
                if not response.pending:
                    return int(response.status)
                if response.identifier is None:
                    continue
                try:
                    on_match(response.dataset(), PENDING_WARNING if response.status == PENDING_WARNING else PENDING)
                except ident.IdentifierError as error:
                    log.warn("source {source}: a malformed match left out: {error}", source=self._destination.name, error=error.comment)
        finally:
            # Release before the source's part counts as over (a release
            # failing changes nothing for the query; the association is gone).
            try:
                await association.release()
            except Exception as error:
                log.debug("source {source}: release failed: {error}", source=self._destination.name, error=error)

    def cancel(self) -> None:
        """C-CANCEL-RQ on the running query, or give up the connection attempt."""
        self._cancelled = True
        if self._stream is not None:
            self._stream.cancel()
        elif self._connecting is not None:
            self._connecting.cancel()


def open_dicom_source(ctx: QRContext, destination: Any, sop_class_uid: str, query: Dataset) -> SourceQuery:
    """The default :data:`SourceOpener`."""
    return DicomSourceQuery(ctx, destination, sop_class_uid, query)


def routing_context(info: Any, wall: float) -> RoutingContext:
    """What the morph actions may read of the requester's association."""
    address = info.peer_address.rsplit(":", 1)[0] if ":" in info.peer_address else info.peer_address
    return RoutingContext(
        calling_ae_title=info.calling_ae_title,
        called_ae_title=info.called_ae_title,
        source_address=address.strip("[]"),
        listener=info.listener,
        listener_port=getattr(info, "listener_port", 0),
        tls_subject=getattr(info, "tls_subject", ""),
        received_at=wall,
    )


def _ui_values(ds: Dataset) -> dict[str, tuple[str, ...]]:
    """Every UI element's values by its path (for the remapped -> original pairs of a morph)."""
    out: dict[str, tuple[str, ...]] = {}
    for label, _holder, element in walk(ds):
        if element.VR == "UI" and element.value is not None:
            value = element.value
            out[label] = tuple(str(v) for v in value) if isinstance(value, (list, tuple, MultiValue)) else (str(value),)
    return out


def find(info: Any, rq: Any, identifier: bytes, responder: Any, ctx: QRContext) -> "Deferred[None]":
    """The C-FIND handler (see the module's theory of operation); always ends with ``responder.final``.

    :returns: fires once the final response is sent *and* every source's
        part is over (its association released), which may be later (a
        cancelled source answers its own Cancel).
    """
    config = ctx.config()
    settings = settings_for(config, info.listener, "find")
    job = _Find(info, rq, identifier, responder, ctx, config, settings)
    started = job.run()
    started.addErrback(job.internal_error)
    return job.settled


@dataclass
class _Source:
    """One source's state within a query."""

    name: str
    query: SourceQuery | None = None
    timer: Any = None
    started: float = 0.0
    results: int = 0
    ended: bool = False


class _Find:
    """One C-FIND request being served."""

    def __init__(self, info: Any, rq: Any, identifier: bytes, responder: Any, ctx: QRContext, config: Any, settings: Any) -> None:
        self.info = info
        self.rq = rq
        self.identifier = identifier
        self.responder = responder
        self.ctx = ctx
        self.config = config
        self.settings = settings
        self.open_source: SourceOpener = ctx.extra.get("open_source", open_dicom_source)
        self.level = ""
        self.clock_started = ctx.reactor.seconds() if ctx.reactor is not None else 0.0
        self.sources = [_Source(name) for name in settings.sources]
        self.merge = Merge(settings.sources, settings.max_results, dedupe=settings.mode == "merge")
        self.failed: list[tuple[str, str]] = []
        self.ended = False
        self.query: Dataset | None = None
        #: The query is relational (unique keys above its level missing, PS3.4 C.4.1.2.2).
        self.relational = False
        self.routing = routing_context(info, ctx.wall())
        self.next_index = 0
        #: Sources whose query Deferred has not fired yet.
        self.running = 0
        #: Fires once the final is sent and no source is running (see :func:`find`).
        self.settled: Deferred[None] = Deferred()

    # -- start ----------------------------------------------------------------------------

    def run(self) -> "Deferred[None]":
        """Check, un-remap, morph, then ask the sources."""
        sop_class = self.rq.affected_sop_class_uid
        model = ident.sop_class_model(sop_class)
        try:
            if model is None:
                raise ident.IdentifierError("not a FIND SOP class", status=0x0122)
            ds = ident.decode_identifier(self.identifier, self.responder.transfer_syntax)
            # PS3.4 C.4.1.2.1: without relational-queries negotiated for this
            # class (PS3.4 C.5.1.1), only hierarchical queries are valid.
            granted = sop_class in getattr(self.info, "relational_queries", frozenset())
            self.level = ident.check_query(ds, model[0], hierarchical=not granted)
            self.relational = bool(ident.relational_keys(ds, model[0], self.level))
        except ident.IdentifierError as error:
            self._end(error.status, error.comment, "invalid", error.offending)
            return succeed(None)
        self.responder.cancelled.addCallback(lambda _: self._requester_cancelled())
        d = self._original_uids(ds)
        d.addCallback(self._morph_and_start)
        return d

    def _original_uids(self, ds: Dataset) -> "Deferred[Dataset]":
        """Replace remapped UIDs in the keys by the originals on record (issue 16: ``uid_remap`` is one-way)."""
        wanted: set[str] = set()
        for tag in UID_KEYS:
            values = ident.uid_values(ds, tag)
            if values:
                wanted.update(v for v in values if v)
        if not wanted or self.ctx.journal is None or not hasattr(self.ctx.journal, "original_uids"):
            return succeed(ds)
        # With the time, the lookup is a use: a pair looked up is kept past retention.remapped_uids.
        d: Deferred[Any] = self.ctx.run.run(self.ctx.journal.original_uids, sorted(wanted), self.ctx.wall())

        def replace(originals: Any) -> Dataset:
            for tag in UID_KEYS:
                values = ident.uid_values(ds, tag)
                if values and any(v in originals for v in values):
                    new = [originals.get(v, v) for v in values]
                    ds[tag].value = new if len(new) > 1 else new[0]
            return ds

        d.addCallback(replace)
        return d

    def _morph_and_start(self, ds: Dataset) -> None:
        """Apply ``query_morph``, then start the sources."""
        if self.ended:
            return
        plan = self.settings.query_morph
        if plan is not None:
            try:
                plan.apply(ds, self.routing)
            except MorphError as error:
                self._end(Status.CANNOT_UNDERSTAND, f"query morph: {error}", "invalid")
                return
        self.query = ds
        if not self.sources:
            self._end(SOURCES_FAILED, "no query sources configured", "failed")
            return
        if self.settings.mode == "merge":
            for source in list(self.sources):
                self._start(source)
        else:
            self._start_next()

    def _start_next(self) -> None:
        """``first`` mode: ask the next source, or end."""
        if self.next_index >= len(self.sources):
            self._finish()
            return
        source = self.sources[self.next_index]
        self.next_index += 1
        self._start(source)

    def _start(self, source: _Source) -> None:
        """Open one source's query with its timeout."""
        if self.ended:
            return
        assert self.query is not None
        destination = next((d for d in self.config.destinations if d.name == source.name), None)
        source.started = self._now()
        if destination is None or not hasattr(destination, "ae_title"):
            self._source_failed(source, "not a DICOM destination")
            return
        try:
            source.query = self.open_source(self.ctx, destination, self.rq.affected_sop_class_uid, self.query)
        except Exception as error:  # a bug in the opener must not leave the request unanswered
            self._source_failed(source, str(error) if isinstance(error, SourceFailed) else f"{type(error).__name__}: {error}")
            return
        if isinstance(source.query, DicomSourceQuery):
            # Backpressure from the requester's association (responders that have it).
            source.query.writable = getattr(self.responder, "writable", None)
            source.query.propose_relational = bool(getattr(self.settings, "relational", False))
            source.query.require_relational = self.relational
        source.timer = self.ctx.reactor.callLater(self.settings.timeout, self._timed_out, source)
        self.running += 1
        d = source.query.start(lambda ds, status=PENDING: self._match(source, ds, status))
        d.addCallbacks(lambda status: self._source_final(source, status), lambda f: self._source_error(source, f))
        d.addErrback(self.internal_error)
        d.addBoth(lambda _: self._source_settled())

    # -- from the sources -------------------------------------------------------------------

    def _match(self, source: _Source, ds: Dataset, status: int = PENDING) -> None:
        """A pending response from ``source``: morph, merge, relay (0xFF01 stays 0xFF01, PS3.4 C.4.1.1.4)."""
        if self.ended or source.ended:
            return
        source.results += 1
        key = ident.unique_key(ds, self.level)
        plan = self.settings.response_morph
        if plan is not None:
            before = _ui_values(ds)
            try:
                plan.apply(ds, self.routing)
            except MorphError as error:
                log.warn("{assoc_id} a match from {source} left out: response morph: {error}", assoc_id=self.info.assoc_id, source=source.name, error=str(error))
                return
            self._remember(before, _ui_values(ds))
        try:
            data = ident.encode_identifier(ds, self.responder.transfer_syntax)
        except (ValueError, ident.IdentifierError) as error:
            log.warn("{assoc_id} a match from {source} left out: {error}", assoc_id=self.info.assoc_id, source=source.name, error=str(error))
            return
        for out in self.merge.offer(source.name, key, data, PENDING_WARNING if status == PENDING_WARNING else PENDING):
            self.responder.pending(out.status, out.identifier)
        if self.merge.over_limit:
            self._end(OUT_OF_RESOURCES, f"more than max_results {self.settings.max_results} matches", "limited")
            self._stop_sources()

    def _remember(self, before: dict[str, tuple[str, ...]], after: dict[str, tuple[str, ...]]) -> None:
        """Record (remapped, original) UID pairs a response morph made, so a later query can go backwards."""
        pairs: list[tuple[str, str]] = []
        for label, old in before.items():
            new = after.get(label)
            if new is not None and new != old and len(new) == len(old):
                pairs += [(n, o) for o, n in zip(old, new) if o != n]
        if not pairs or self.ctx.journal is None or not hasattr(self.ctx.journal, "remember_uids"):
            return
        d: Deferred[Any] = self.ctx.run.run(self.ctx.journal.remember_uids, pairs, self.ctx.wall())
        d.addErrback(lambda f: log.failure("recording remapped UIDs failed", f))

    def _source_final(self, source: _Source, status: int) -> None:
        """A source's final response."""
        if source.ended or self.ended:
            return
        if status in (0x0000, CANCEL):
            self._source_done(source, True, "")
        else:
            self._source_failed(source, f"status 0x{status:04X}")

    def _source_error(self, source: _Source, failure: Failure) -> None:
        """A source could not answer."""
        if source.ended or self.ended:
            return
        error = failure.value
        self._source_failed(source, str(error) if isinstance(error, SourceFailed) else f"{type(error).__name__}: {error}")

    def _timed_out(self, source: _Source) -> None:
        """``query.timeout`` passed for ``source``: cancel it and treat it as failed."""
        source.timer = None
        if source.ended or self.ended:
            return
        if source.query is not None:
            source.query.cancel()
        self._source_failed(source, "timeout")

    def _source_failed(self, source: _Source, reason: str) -> None:
        """Strict: the query fails; otherwise the source is left out."""
        log.warn(
            "{assoc_id} query source {source} failed: {reason}{left}",
            assoc_id=self.info.assoc_id, source=source.name, reason=reason,
            left="" if self.settings.strict else " (left out)",
        )
        self.failed.append((source.name, reason))
        self._source_done(source, False, reason)
        if self.ended:
            return
        if self.settings.strict:
            self._end(SOURCES_FAILED, f"source {source.name} failed: {reason}", "failed")
            self._stop_sources()

    def _source_done(self, source: _Source, ok: bool, reason: str) -> None:
        """``source`` ended: tell the observer, release held matches, maybe end the query."""
        source.ended = True
        if source.timer is not None and source.timer.active():
            source.timer.cancel()
        source.timer = None
        self.ctx.observer.observe(events.QuerySourceAnswered(source.name, ok, source.results, max(0.0, self._now() - source.started), reason))
        if self.ended:
            return
        for out in self.merge.finish(source.name):
            self.responder.pending(out.status, out.identifier)
        if self.merge.over_limit:
            self._end(OUT_OF_RESOURCES, f"more than max_results {self.settings.max_results} matches", "limited")
            self._stop_sources()
            return
        if not ok and self.settings.strict:
            return
        if self.settings.mode == "first":
            if ok and source.results > 0:
                self._finish()
            else:
                self._start_next()
        elif all(s.ended for s in self.sources):
            self._finish()

    # -- the end --------------------------------------------------------------------------

    def _requester_cancelled(self) -> None:
        """C-CANCEL-RQ from the requester (or its association ended): cancel every source, answer 0xFE00."""
        if self.ended:
            return
        self._end(CANCEL, "", "cancelled")
        self._stop_sources()

    def _stop_sources(self) -> None:
        """Cancel every running source (each sends C-CANCEL-RQ at once).

        Called after :meth:`_end`, so that a source failing synchronously on
        its cancel (a connection attempt given up) finds the query ended.
        """
        for source in self.sources:
            if source.timer is not None and source.timer.active():
                source.timer.cancel()
            source.timer = None
            if not source.ended and source.query is not None:
                source.query.cancel()

    def _finish(self) -> None:
        """Every source asked has ended: Success, or a failure if none answered."""
        answered = [s for s in self.sources if s.ended and s.name not in {name for name, _ in self.failed}]
        if not answered and self.failed:
            names = ", ".join(f"{name} ({reason})" for name, reason in self.failed)
            self._end(SOURCES_FAILED, f"no source answered: {names}", "failed")
            return
        self._end(0x0000, "", "partial" if self.failed else "success")

    def _end(self, status: int, comment: str, outcome: str, offending: tuple[int, ...] = ()) -> None:
        """Send the final response once and tell the observer.

        :param offending: the Offending Element (0000,0901) tags of a refused
            identifier (PS3.7 9.1.2.1.6 / C.4.1.1.4), sent beside the Error Comment.
        """
        if self.ended:
            return
        self.ended = True
        for source in self.sources:
            if source.timer is not None and source.timer.active():
                source.timer.cancel()
        info = self.info
        # Observed first (audit, metrics), then the final: whoever waits on
        # the final finds the event already told.
        self.ctx.observer.observe(
            events.QueryAnswered(
                info.listener,
                info.calling_ae_title,
                info.peer_address,
                self.rq.affected_sop_class_uid,
                self.level,
                self.identifier,
                self.responder.transfer_syntax,
                outcome,
                status,
                self.merge.relayed,
                tuple(name for name, _ in self.failed),
                max(0.0, self._now() - self.clock_started),
                comment or "; ".join(f"{name}: {reason}" for name, reason in self.failed),
            )
        )
        if offending:
            self.responder.final(status, error_comment=comment, offending=offending)
        else:
            self.responder.final(status, error_comment=comment)
        self._maybe_settled()

    def _source_settled(self) -> None:
        """One source's query Deferred fired."""
        self.running -= 1
        self._maybe_settled()

    def _maybe_settled(self) -> None:
        if self.ended and self.running == 0 and not self.settled.called:
            self.settled.callback(None)

    def internal_error(self, failure: Failure) -> None:
        """A bug: answer 0xC000 rather than leave the requester waiting."""
        log.failure("{assoc_id} C-FIND failed", failure, assoc_id=self.info.assoc_id)
        self._end(Status.CANNOT_UNDERSTAND, "Unable to process", "failed")
        self._stop_sources()

    def _now(self) -> float:
        return float(self.ctx.reactor.seconds()) if self.ctx.reactor is not None else time.monotonic()
