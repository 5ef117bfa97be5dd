"""The gateway behind the HTTP resources: the readiness cache and the audited actions (issues 6 and 11).

:class:`ServiceBackend` is the :class:`~gateway.httpresources.Backend` over a
running :class:`~gateway.service.GatewayService`. Readiness is a cached
state: the spool is probed by a periodic check off the request path, so a
flood of ``/readyz`` probes never queues behind the spool's fsyncs, and the
reasons name no paths. Every store call goes through the store's runner;
every action is written to the audit trail with who asked.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from gateway.durable import write_synced
from gateway.admin import Operator
from gateway.httpresources import BadRequest, NotFound, Refused

__all__ = ["ServiceBackend", "spool_probe", "PROBE_INTERVAL"]

#: How often the spool is probed for ``/readyz``.
PROBE_INTERVAL = 5.0

def spool_probe(root: str) -> None:
    """Prove the spool is writable: create, write, fsync and remove a small file (blocking; run it on a runner).

    The probe file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW``: a
    symbolic link planted in its place is never followed (issue 11).

    :param root: the spool directory.
    :raises OSError: the spool cannot be written.
    """
    path = os.path.join(root, ".readyz-probe")
    try:
        os.unlink(path)  # left by a probe interrupted by a crash
    except FileNotFoundError:
        pass
    write_synced(path, b"ok\n", mode=0o600)
    os.remove(path)


_PATH = re.compile(r"(?<![\w.])'?/[^\s'\"]*'?")


def _no_paths(text: str) -> str:
    """``text`` with file system paths replaced, for ``/readyz`` (its body names no paths)."""
    return _PATH.sub("<path>", text)


class ServiceBackend:
    """:class:`Backend` over a :class:`~gateway.service.GatewayService`.

    Readiness is a cached state: :meth:`start` probes the spool every
    ``interval`` seconds on the service's blocking runner, and
    :meth:`readiness` answers from memory (issue 11: no disk write per
    request). Every action is written to the audit trail with who asked.

    :param service: the running gateway.
    :param load: the configuration loader used by ``reload``.
    :param probe: proves the spool writable (blocking; run on the service's blocking runner);
        by default the spool's own :meth:`~gateway.spool.Spool.probe`, which makes a commit's
        system calls (create, write, fsync, rename, folder fsyncs), so EIO on rename or a
        read-only filesystem fails readiness as it would fail the next instance (HARDENING
        D11, D12); :func:`spool_probe` where the service has no spool object.
    :param wall: wall-clock time.
    :param clock: schedules the periodic probe; the global reactor by default.
    :param interval: seconds between spool probes.
    """

    def __init__(
        self,
        service: Any,
        load: Callable[[str], Any],
        probe: Callable[[str], None] | None = None,
        wall: Callable[[], float] | None = None,
        clock: Any = None,
        interval: float = PROBE_INTERVAL,
    ) -> None:
        import time

        self._service = service
        self._load = load
        self._probe = probe
        self._wall = wall or time.time
        self._clock = clock
        self._interval = interval
        self._loop: LoopingCall | None = None
        self._probing = False
        #: ``None`` until the first probe ends; then ``""`` or why the spool is not writable.
        self.spool_error: str | None = None

    # -- readiness ----------------------------------------------------------------------

    def start(self) -> None:
        """Probe the spool now, then every ``interval`` seconds."""
        if self._loop is not None:
            return
        self._loop = LoopingCall(self.probe_now)
        if self._clock is not None:
            self._loop.clock = self._clock
        self._loop.start(self._interval, now=True)

    def stop(self) -> None:
        """Stop probing."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def probe_now(self) -> "Deferred[None]":
        """Probe the spool once (off the reactor thread) and cache the outcome.

        :returns: a Deferred firing when the outcome is cached.
        """
        config = self._service.config
        if self._probing or config is None:
            return succeed(None)
        self._probing = True
        spool = getattr(self._service, "spool", None)
        if self._probe is not None:
            d = self._service.blocking.run(self._probe, config.spool.path)
        elif spool is not None and hasattr(spool, "probe"):
            d = self._service.blocking.run(spool.probe)
        else:
            d = self._service.blocking.run(spool_probe, config.spool.path)

        def probed(_: object) -> None:
            self.spool_error = ""

        def unwritable(failure: Failure) -> None:
            error = failure.value
            reason = error.strerror if isinstance(error, OSError) and error.strerror else failure.getErrorMessage()
            self.spool_error = _no_paths(reason or "unknown error")

        def done(_: object) -> None:
            self._probing = False

        d.addCallbacks(probed, unwritable)
        d.addBoth(done)
        return d

    def readiness(self) -> "Deferred[list[str]]":
        """Spool writable, every listener bound, start-up recovery done, configuration loaded (from memory)."""
        service = self._service
        reasons: list[str] = []
        if service.config is None:
            reasons.append("configuration not loaded")
        if not service.ready.called:
            reasons.append("start-up recovery not finished")
        for listener in service.listeners:
            if listener.port is None:
                reasons.append(f"listener {listener.listener.name} not bound")
        for name, worker in sorted(getattr(service, "workers", {}).items()):
            # HARDENING F15: outcomes the journal refused; the worker stopped dequeuing.
            error = worker.status().journal_error
            if error:
                reasons.append(f"destination {name}: journal not writable, not dequeuing ({_no_paths(error)})")
        heartbeat = getattr(service, "heartbeat", None)
        if heartbeat is not None and not heartbeat.available:
            # Issue 14: the journal does not answer; new work is refused (RJ(2,3,1), 0xA700).
            reasons.append("queue store unreachable")
        if self.spool_error is None:
            reasons.append("spool not checked yet")
        elif self.spool_error:
            reasons.append(f"spool not writable: {self.spool_error}")
        else:
            # HARDENING D11/D12: an instance's write, fsync or rename failed since the last
            # good probe; the next probe clears it once the spool commits again.
            fault = getattr(getattr(service, "spool", None), "fault", None)
            if fault is not None:
                reasons.append(f"spool failing: {_no_paths(str(fault))}")
        drain = getattr(service, "drain", None)
        if drain is not None and drain.draining:
            # Issue 14: at once, so the load balancer stops sending new associations here.
            reasons.append("draining")
        space = getattr(service, "space", None)
        if space is not None and space.low():
            # D11: below spool.min_free new work is refused (RJ(2,3,1), 0xA700).
            reasons.append("spool below its free-space floor (spool.min_free)")
        return succeed(reasons)

    def node_name(self) -> str:
        """The node's name (config key ``node``), for the ``/readyz`` body; empty before that key exists.

        :returns: the name.
        """
        config = self._service.config
        return str(getattr(config, "node", "") or "") if config is not None else ""

    # -- views ----------------------------------------------------------------------------

    def queues(self) -> "Deferred[list[dict[str, Any]]]":
        """:func:`gateway.admin.queue_rows` on the store's thread."""
        from gateway.admin import queue_rows

        names = [d.name for d in self._service.config.destinations]
        return self._service.store_runner.run(queue_rows, self._service.store, names, self._wall())

    def dead_letters(self, destination: str | None) -> "Deferred[list[dict[str, Any]]]":
        """Dead entries as :func:`gateway.admin.entry_dict`."""
        from gateway.admin import entry_dict
        from gateway.queue.interfaces import EntryState

        store = self._service.store

        def read() -> list[dict[str, Any]]:
            return [entry_dict(e) for e in store.entries(destination, EntryState.DEAD)]

        return self._service.store_runner.run(read)

    # -- actions (audited) ------------------------------------------------------------------

    def _audited(self, d: "Deferred[Any]", action: str, operator: Operator, **details: Any) -> "Deferred[Any]":
        """Write the action's audit record when ``d`` fires (a failure is recorded as a minor failure)."""
        from gateway.admin import audit_operator_action
        from gateway.audit import Outcome

        trail = getattr(self._service, "audit", None)

        def resolved() -> dict[str, Any]:
            # A detail may be a callable, read once the action ended (e.g. whether it was forced).
            return {k: v() if callable(v) else v for k, v in details.items()}

        def succeeded(result: Any) -> Any:
            if trail is not None:
                audit_operator_action(trail, action, operator, **resolved())
            return result

        def failed(failure: Failure) -> Failure:
            if trail is not None:
                fields = resolved()
                fields.pop("description", None)
                audit_operator_action(
                    trail,
                    action,
                    operator,
                    outcome=Outcome.MINOR_FAILURE,
                    description=f"{action} refused: {failure.getErrorMessage()}",
                    **fields,
                )
            return failure

        d.addCallbacks(succeeded, failed)
        return d

    def retry(self, entry_id: int, to: str | None, operator: Operator, force: bool = False) -> "Deferred[int]":
        """Requeue a dead letter; ``to`` must be a configured destination that may get the entry's copy.

        A re-target is refused (:class:`Refused`) when no route in force sends
        copies made with the entry's plan to ``to``, unless ``force``; a forced
        one is audited as such (issue 11).
        """
        from gateway.prepare import kind_refusal, retarget_refusal

        action = "retarget" if to else "retry"
        if to is not None and to not in {d.name for d in self._service.config.destinations}:
            return self._audited(_failed(BadRequest(f"unknown destination {to!r}")), action, operator, entry_ids=[entry_id], to=to)
        store = self._service.store
        now = self._wall()
        routes = self._service.config.routes

        forced: list[str] = []

        def requeue() -> int:
            try:
                if to is not None:
                    entry = store.get(entry_id)
                    wrong_kind = kind_refusal(self._service.config.destinations, entry.instance.sop_class_uid, to)
                    if wrong_kind:
                        raise Refused(f"entry {entry_id} not re-targeted to {to}: {wrong_kind}")
                    refusal = retarget_refusal(routes, entry.plan_hash, to)
                    if refusal and not force:
                        raise Refused(f"entry {entry_id} not re-targeted to {to}: {refusal}")
                    if refusal:
                        forced.append(refusal)
                return int(store.requeue_dead(entry_id, now, to))
            except KeyError:
                raise NotFound(f"no dead letter {entry_id}")

        d = self._service.store_runner.run(requeue)

        def poke(new_id: int) -> int:
            # Wake the workers now rather than at their next poll.
            for worker in list(self._service.workers.values()):
                worker.poke()
            return new_id

        d.addCallback(poke)
        audited = self._audited(d, action, operator, entry_ids=[entry_id], to=to or "",
                                description=lambda: f"{action} to {to} forced past the re-target guard: {forced[0]}"
                                if forced else "")
        return audited

    def purge(self, entry_id: int, operator: Operator) -> "Deferred[None]":
        """Delete a dead letter."""
        store = self._service.store

        def purge() -> None:
            try:
                store.purge(entry_id)
            except KeyError:
                raise NotFound(f"no dead letter {entry_id}")

        return self._audited(self._service.store_runner.run(purge), "purge", operator, entry_ids=[entry_id])

    def pause(self, destination: str, paused: bool, operator: Operator) -> "Deferred[None]":
        """Pause or resume a configured destination (as ``dicom-gateway queue pause``)."""
        action = "pause" if paused else "resume"
        if destination not in {d.name for d in self._service.config.destinations}:
            return self._audited(_failed(NotFound(f"no destination {destination!r}")), action, operator, destination=destination)
        store = self._service.store
        d = self._service.store_runner.run(store.set_paused, destination, paused)

        def poke(result: Any) -> Any:
            worker = self._service.workers.get(destination)
            if worker is not None and not paused:
                worker.poke()
            return result

        d.addCallback(poke)
        return self._audited(d, action, operator, destination=destination)

    def drain(self, draining: bool, operator: Operator) -> "Deferred[dict[str, Any]]":
        """Start (``draining``) or end a drain (:mod:`gateway.drain`); fires with its status; audited.

        :param draining: ``True`` for ``drain``, ``False`` for ``undrain``.
        :param operator: who asked.
        :returns: a Deferred firing with :meth:`gateway.drain.DrainStatus.as_dict` and the node's name.
        """
        from gateway.admin import audit_operator_action

        drain = self._service.drain
        was = drain.draining
        status = drain.drain() if draining else drain.undrain()
        action = "drain" if draining else "undrain"
        trail = getattr(self._service, "audit", None)
        if trail is not None:
            if draining:
                what = "already draining" if was else f"draining: not ready; new associations rejected after {status.grace:g}s"
            else:
                what = "drain ended: ready" if was else "was not draining"
            audit_operator_action(trail, action, operator, description=f"{what}; asked by {operator.who}")
        return succeed({**status.as_dict(), "node": self.node_name()})

    def reload(self, operator: Operator) -> "Deferred[bool]":
        """As SIGHUP."""
        from gateway.admin import audit_operator_action
        from gateway.audit import Outcome

        d = self._service.reload(self._load)

        def record(applied: bool) -> bool:
            trail = getattr(self._service, "audit", None)
            if trail is not None:
                audit_operator_action(
                    trail,
                    "reload",
                    operator,
                    outcome=Outcome.SUCCESS if applied else Outcome.MINOR_FAILURE,
                    description=f"reload {'applied' if applied else 'refused'}; asked by {operator.who}",
                )
            return applied

        d.addCallback(record)
        return d

    # -- Storage Commitment (issue 15) ------------------------------------------------------

    def _journal(self) -> Any:
        """The store's Storage Commitment journal. :raises NotFound: the store keeps none."""
        from gateway.admin import commitment_journal

        journal = commitment_journal(self._service.store)
        if journal is None:
            raise NotFound("this gateway's queue store keeps no Storage Commitment journal")
        return journal

    def commitments(self, state: str | None) -> "Deferred[dict[str, Any]]":
        """:func:`gateway.admin.commitment_rows` and :func:`~gateway.admin.commitment_summary` on the store's thread."""
        from gateway.admin import commitment_rows, commitment_summary
        from gateway.queue.commitments import TransactionState

        try:
            wanted = TransactionState(state) if state else None
        except ValueError:
            return _failed(BadRequest(f"state must be one of open, reported, dead, not {state!r}"))
        now = self._wall()

        def read() -> dict[str, Any]:
            journal = self._journal()
            return {"summary": commitment_summary(journal, now), "commitments": commitment_rows(journal, now, wanted)}

        return self._service.store_runner.run(read)

    def commitment(self, transaction_uid: str) -> "Deferred[dict[str, Any]]":
        """:func:`gateway.admin.commitment_detail` on the store's thread, judged with the configuration in force."""
        from gateway.admin import commitment_detail

        now = self._wall()
        committing = [d.name for d in self._service.config.destinations if getattr(d, "storage_commitment", False)]

        def read() -> dict[str, Any]:
            try:
                return commitment_detail(self._journal(), transaction_uid, committing, now)
            except KeyError:
                raise NotFound(f"no Storage Commitment transaction {transaction_uid}") from None

        return self._service.store_runner.run(read)

    def retry_commitment(self, transaction_uid: str, operator: Operator) -> "Deferred[dict[str, Any]]":
        """:func:`gateway.admin.retry_commitment` on the store's thread; the report worker is poked; audited."""
        from gateway.admin import commitment_row, retry_commitment
        from gateway.queue.commitments import TransactionState

        service = self._service
        now = self._wall()

        def requeue() -> dict[str, Any]:
            journal = self._journal()
            try:
                state = journal.get_transaction(transaction_uid).state
            except KeyError:
                raise NotFound(f"no Storage Commitment transaction {transaction_uid}") from None
            if state is not TransactionState.DEAD:
                raise Refused(f"transaction {transaction_uid} is {state.value}, not dead: only a dead report is retried")
            return commitment_row(retry_commitment(journal, transaction_uid, now), now)

        d = service.store_runner.run(requeue)

        def poke(row: dict[str, Any]) -> dict[str, Any]:
            # The report worker (gateway.commitment.worker), when the service runs one: look now.
            worker = getattr(service, "commitment_worker", None)
            if worker is not None:
                worker.poke()
            return row

        d.addCallback(poke)
        return self._audited(d, "commitment_retry", operator, transaction_uid=transaction_uid)


    # -- retrieves (issue 16) ------------------------------------------------------------

    def retrieves(self, state: str | None, limit: int, cursor: str | None) -> "Deferred[dict[str, Any]]":
        """:func:`gateway.admin_retrieves.retrieve_page` on the store's thread."""
        from gateway import admin_retrieves as ar

        try:
            wanted = ar.parse_state(state)
            before = ar.decode_cursor(cursor) if cursor else None
        except ValueError as e:
            return _failed(BadRequest(str(e)))
        now = self._wall()

        def read() -> dict[str, Any]:
            journal = ar.retrieve_journal(self._service.store)
            if journal is None:
                raise NotFound("this gateway's queue store keeps no retrieves")
            return ar.retrieve_page(journal, now, wanted, limit, before)

        return self._service.store_runner.run(read)

    def retrieve(self, retrieve_id: int) -> "Deferred[dict[str, Any]]":
        """:func:`gateway.admin_retrieves.retrieve_detail` on the store's thread; 404 says finished ones go after retention."""
        from gateway import admin_retrieves as ar

        now = self._wall()
        retention = self._service.config.retrieve_retention

        def read() -> dict[str, Any]:
            journal = ar.retrieve_journal(self._service.store)
            if journal is None:
                raise NotFound("this gateway's queue store keeps no retrieves")
            try:
                return ar.retrieve_detail(journal, retrieve_id, now)
            except KeyError:
                raise NotFound(ar.not_on_record(retrieve_id, retention)) from None

        return self._service.store_runner.run(read)

def _failed(error: Exception) -> "Deferred[Any]":
    d: Deferred[Any] = Deferred()
    d.errback(Failure(error))
    return d

