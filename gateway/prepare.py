"""A route's copy of an instance: morphing after the acknowledgement (HARDENING decision 4).

The received file is never modified. Each queue entry carries the morph plan
its route had when the instance was journaled (issue 11): the intake stores
the plan's canonical JSON with the entry (:func:`route_plan`), and the first
worker that sends one of the entries of an (instance, plan) asks
:class:`CopyMaker` for the copy. The plan is rebuilt from the journal, never
looked up among the routes in force, so a reload that renames, removes or
edits the route, a restart or an upgrade cannot change what an already
queued copy contains. It is applied by the splice writer
(:func:`gateway.splice.write_morphed`: new header, pixel data and tail copied
verbatim) into ``<spool>/morphed/<instance id>.<plan hash>.dcm``, once per
(instance, plan); every entry with that plan sends that file.

A morph that fails for this instance, and a plan that cannot be rebuilt (its
version is unknown, a plugin it names is gone, its arguments are refused),
raise :class:`~gateway.forward_types.PrepareError`, so the copy goes to the dead
letters (reason ``morph: ...``), never half-made and never with less
morphing than it was queued with (HARDENING D15). So does an entry journaled
with no plan at all (before schema version 3, whose route was gone at the
first start after the upgrade: see :mod:`gateway.queue.sqlite`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Collection, Mapping, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from gateway.blocking import IBlockingRunner
from gateway.config.schema import RouteConfig
from gateway.forward_types import PrepareError
from gateway.config.morph import compile_canonical
from gateway.morph import EMPTY_PLAN, MorphPlan, PlanError, plan_hash
from gateway.queue.interfaces import Entry, InstanceRecord, PlanRecord
from gateway.route import RoutingContext

#: The journaled plan of a route without ``morph``: sent as received.
NO_MORPH = PlanRecord(plan_hash(EMPTY_PLAN), EMPTY_PLAN)


def route_plan(route: RouteConfig) -> PlanRecord:
    """The plan a route's entries are journaled with.

    :param route: a route of the configuration in force.
    :returns: its plan's hash and canonical JSON (:data:`NO_MORPH` without ``morph``).
    """
    morph = route.morph
    if morph is None or not morph.canonical:
        return NO_MORPH
    return _plan_record(morph.canonical)


@functools.lru_cache(maxsize=256)
def _plan_record(canonical: str) -> PlanRecord:
    """The record of a canonical plan, hashed once per distinct plan (not once per instance)."""
    return PlanRecord(plan_hash(canonical), canonical)


def legacy_plans(routes: Sequence[RouteConfig]) -> dict[str, PlanRecord]:
    """The plans entries journaled without one adopt at start (:meth:`~gateway.queue.interfaces.IQueueStore.adopt_plans`).

    Each configured route's current plan; and, unless a route is named
    ``replay``, :data:`NO_MORPH` for the entries ``dicom-gateway replay``
    made before plans were journaled (they were always sent as received).

    :param routes: the routes in force at start.
    :returns: plans by route name.
    """
    plans = {route.name: route_plan(route) for route in routes if route.forward}
    plans.setdefault("replay", NO_MORPH)
    return plans


def short(digest: str | None) -> str:
    """A plan hash as messages show it (16 hex digits), or ``none`` for an entry without a plan."""
    return "none" if digest is None else digest[:16]


def retarget_refusal(routes: Sequence[RouteConfig], entry_plan: str | None, destination: str) -> str | None:
    """Why an entry with plan ``entry_plan`` may not be re-targeted to ``destination``, or None.

    Re-targeting sends the entry's own copy. It is allowed only when some
    route of the configuration in force already sends copies made with the
    same plan to ``destination``: an identified copy must not reach a
    destination that only ever receives de-identified ones (issue 11).

    :param routes: the routes in force.
    :param entry_plan: the entry's plan hash (None: journaled without one).
    :param destination: the target.
    :returns: the reason for a refusal (naming the plans), or None to allow.
    """
    senders = [(route.name, route_plan(route).plan_hash) for route in routes if destination in route.forward]
    if entry_plan is not None and any(digest == entry_plan for _, digest in senders):
        return None
    described = "; ".join(
        f"{name} (plan {short(digest)}{', no morph' if digest == NO_MORPH.plan_hash else ''})" for name, digest in senders
    )
    own = "no morph" if entry_plan == NO_MORPH.plan_hash else "a morph" if entry_plan else "no journaled plan"
    return (
        f"its copy is made with plan {short(entry_plan)} ({own}), and no route sends copies with that plan to "
        f"{destination} (routes to {destination}: {described or 'none'}); use --force "
        '(API: {"force": true}) to send it anyway'
    )


def kind_refusal(destinations: Sequence[Any], sop_class_uid: str, destination: str) -> str | None:
    """Why an entry may never go to ``destination`` because of what it is, or None (issue 18).

    A study notification (its record's SOP class is
    :data:`gateway.notify.document.NOTIFICATION_SOP_CLASS`) goes only to
    notification sinks, and an instance never goes to a sink: a re-target or
    replay across the two would hand a JSON document holding the patient's
    fields to a DICOM, folder or STOW-RS sender, or an instance to a sink.
    Unlike :func:`retarget_refusal` this cannot be forced.

    :param destinations: the configured destinations.
    :param sop_class_uid: the entry's instance record's SOP class.
    :param destination: the target.
    """
    from gateway.config.schema import NOTIFICATION_SINKS
    from gateway.notify.document import NOTIFICATION_SOP_CLASS

    target = next((d for d in destinations if d.name == destination), None)
    if target is None:
        return None
    is_sink = isinstance(target, NOTIFICATION_SINKS)
    is_notification = sop_class_uid == NOTIFICATION_SOP_CLASS
    if is_notification and not is_sink:
        return f"it is a study notification and {destination} is no notification sink (not even with force)"
    if is_sink and not is_notification:
        return f"{destination} is a notification sink and takes study notifications only, not instances (not even with force)"
    return None


def copy_path(morphed_dir: str, instance_id: str, digest: str) -> str:
    """Where the copy of ``instance_id`` under the plan with hash ``digest`` lives (internal names only)."""
    return os.path.join(morphed_dir, f"{instance_id}.{digest}.dcm")


def remove_copies(morphed_dir: str, instance_ids: Collection[str]) -> int:
    """Delete every morphed copy of these instances in one listing of the folder.

    Copies are named ``{instance_id}.{plan digest}.dcm`` (:func:`copy_path`)
    and a digest holds no dot, so the id is the name up to its last dot but
    one (the id of a shared spool starts with its node's name, which may hold
    dots: ``gw-1.site~3f2a...``, issue 14).
    One scan per clean-up pass, not one per instance; and no ``glob``, whose
    per-id pattern filled ``fnmatch``'s 32,768-entry cache at about 2 KB per
    instance (seen in bench/soak.py).

    :param morphed_dir: the folder of morphed copies.
    :param instance_ids: the instances whose copies go.
    :returns: how many files were removed.
    """
    wanted = set(instance_ids)
    if not wanted:
        return 0
    try:
        names = [e.name for e in os.scandir(morphed_dir)
                 if e.name.endswith(".dcm") and e.name[: -len(".dcm")].rpartition(".")[0] in wanted]
    except FileNotFoundError:
        return 0
    removed = 0
    for name in names:
        try:
            os.unlink(os.path.join(morphed_dir, name))
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def _text(dataset: Any, keyword: str) -> str:
    value = dataset.get(keyword, "")
    return "" if value is None else str(value)


def make_copy(record: InstanceRecord, plan: MorphPlan, digest: str, morphed_dir: str) -> InstanceRecord:
    """Write (or reuse) the copy of ``record`` under ``plan``; blocking, for a file runner.

    :param record: the spooled instance.
    :param plan: the entry's plan, rebuilt from the journal.
    :param digest: the plan's hash (names the copy).
    :param morphed_dir: the folder of copies.
    :returns: the record of the copy: its path and the UIDs and IDs it now carries.
    :raises PrepareError: when the morph fails for this instance.
    :raises OSError: when the copy cannot be written (retried later).
    """
    from gateway.morph import MorphError
    from gateway.splice import morph_copy
    from gateway.parse import read_header
    from gateway.private import make_private_dirs

    path = copy_path(morphed_dir, record.instance_id, digest)
    dataset: Any = None
    if not os.path.exists(path):
        make_private_dirs(morphed_dir)  # HARDENING H08: 0700 whatever the umask
        context = RoutingContext(
            calling_ae_title=record.calling_ae_title,
            called_ae_title=record.called_ae_title,
            source_address=record.source_address,
            listener="",
            received_at=record.received_at,
        )
        try:
            # The header as written: the UIDs and IDs the plan set, without
            # reading the copy back (issue 12).
            dataset = morph_copy(record.path, path, plan, context).dataset
        except MorphError as e:
            raise PrepareError(str(e)) from e
    if dataset is None:
        # A copy made before (an earlier attempt, another entry): read it.
        try:
            dataset = read_header(path).dataset
        except Exception as e:
            raise PrepareError(f"the morphed copy cannot be read back: {e}") from e
    return dataclasses.replace(
        record,
        path=path,
        sop_instance_uid=_text(dataset, "SOPInstanceUID") or record.sop_instance_uid,
        study_instance_uid=_text(dataset, "StudyInstanceUID"),
        series_instance_uid=_text(dataset, "SeriesInstanceUID"),
        patient_id=_text(dataset, "PatientID"),
        accession_number=_text(dataset, "AccessionNumber"),
        size=os.path.getsize(path),
    )


class CopyMaker:
    """The workers' ``prepare`` hook: swap an entry for the copy its journaled plan makes.

    :param definition: fetches a plan's canonical JSON from the journal by
        hash (on the store's thread); fails with :class:`KeyError` when the
        journal has no such plan.
    :param plugins: returns the morph plugins installed now (they change on reload).
    :param runner: where the morph runs (a file thread pool).
    :param morphed_dir: the spool folder for copies.
    :param on_error: called with the route name when a morph fails (metrics).
    :param rebuild: compiles a journaled plan's canonical JSON with the
        plugins installed now (:func:`gateway.config.morph.compile_canonical`,
        the configuration's own compiler); raises :class:`PlanError`.
    """

    def __init__(
        self,
        definition: Callable[[str], Deferred[str]],
        plugins: Callable[[], Mapping[str, Any]],
        runner: IBlockingRunner,
        morphed_dir: str,
        on_error: Callable[[str], None] = lambda route: None,
        rebuild: Callable[[str, Mapping[str, Any]], MorphPlan] = compile_canonical,
    ) -> None:
        self._definition = definition
        self._plugins = plugins
        self._runner = runner
        self.morphed_dir = morphed_dir
        self._on_error = on_error
        self._rebuild = rebuild
        # Rebuilt plans by hash, valid for one set of plugins (a reload
        # replaces the set, and a plugin may be gone).
        self._plans: dict[str, MorphPlan] = {}
        self._plans_for: Mapping[str, Any] | None = None
        # One morph per (instance, plan) at a time: the other entries with
        # that plan wait for it and share the file.
        self._inflight: dict[tuple[str, str], list[Deferred[InstanceRecord]]] = {}

    def __call__(self, entry: Entry) -> Deferred[Entry]:
        """The copy ``entry`` should send (itself when its plan does not morph)."""
        digest = entry.plan_hash
        if digest == NO_MORPH.plan_hash:
            return succeed(entry)
        return Deferred.fromCoroutine(self._prepare(entry))

    async def _rebuilt(self, digest: str) -> MorphPlan:
        """The plan with hash ``digest``, rebuilt from the journal with the plugins installed now.

        :raises PrepareError: when it cannot be rebuilt.
        """
        plugins = self._plugins()
        if plugins is not self._plans_for:
            self._plans, self._plans_for = {}, plugins
        plan = self._plans.get(digest)
        if plan is not None:
            return plan
        try:
            text = await self._definition(digest)
        except KeyError:
            raise PrepareError(f"plan {short(digest)} is not in the journal") from None
        if plan_hash(text) != digest:
            raise PrepareError(f"plan {short(digest)} in the journal does not match its hash")
        try:
            plan = self._rebuild(text, plugins)
        except PlanError as e:
            raise PrepareError(f"plan {short(digest)} cannot be rebuilt: {e}") from e
        self._plans[digest] = plan
        return plan

    async def _prepare(self, entry: Entry) -> Entry:
        """Rebuild the entry's plan and make (or join the making of) its copy."""
        digest = entry.plan_hash
        try:
            if digest is None:
                raise PrepareError(
                    f"no morph plan was journaled with this entry and its route {entry.route!r} was not "
                    "configured when the gateway started; it is not sent with less morphing than it was queued with"
                )
            plan = await self._rebuilt(digest)
        except PrepareError:
            self._on_error(entry.route)
            raise
        if not plan.actions:
            return entry
        key = (entry.instance.instance_id, digest)
        mine: Deferred[InstanceRecord] = Deferred()
        waiters = self._inflight.get(key)
        if waiters is None:
            self._inflight[key] = [mine]
            work = self._runner.run(make_copy, entry.instance, plan, digest, self.morphed_dir)

            def done(result: Any) -> None:
                if isinstance(result, Failure) and result.check(PrepareError):
                    self._on_error(entry.route)
                for waiter in self._inflight.pop(key, []):
                    if isinstance(result, Failure):
                        waiter.errback(result)
                    else:
                        waiter.callback(result)

            work.addBoth(done)
        else:
            waiters.append(mine)
        record = await mine
        return dataclasses.replace(entry, path=record.path, instance=record)
