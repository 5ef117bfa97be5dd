"""A route's copy of an instance: morphing after the acknowledgement (HARDENING decision 4).

The received file is never modified. When a route has ``morph`` actions, the
first worker that sends one of that route's entries asks :class:`CopyMaker`
for the route's copy: the morph plan is applied by the splice writer
(:func:`gateway.morph.write_morphed`: new header, pixel data and tail copied
verbatim) into ``<spool>/morphed/<instance id>.<plan digest>.dcm``, once per
(instance, route plan); every destination of the route sends that file. A
morph that fails for this instance raises
:class:`~gateway.forward.PrepareError`, so the route's copy goes to the dead
letters of each of its destinations (reason ``morph: ...``), never half-made
and never unmorphed (HARDENING D15).

The copy's file name carries a digest of the plan, so a reloaded
configuration with a changed plan makes a new copy instead of reusing one
made under the old rules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Callable, Collection, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from gateway.blocking import IBlockingRunner
from gateway.config.schema import RouteConfig
from gateway.forward import PrepareError
from gateway.queue.interfaces import Entry, InstanceRecord
from gateway.route import RoutingContext


def plan_digest(plan: Any) -> str:
    """A short, stable digest of a morph plan (frozen dataclasses have a deterministic repr)."""
    return hashlib.sha256(repr(plan).encode("utf-8")).hexdigest()[:16]


def copy_path(morphed_dir: str, instance_id: str, plan: Any) -> str:
    """Where the copy of ``instance_id`` under ``plan`` lives (internal names only)."""
    return os.path.join(morphed_dir, f"{instance_id}.{plan_digest(plan)}.dcm")


def remove_copies(morphed_dir: str, instance_ids: Collection[str]) -> int:
    """Delete every morphed copy of these instances in one listing of the folder.

    Copies are named ``{instance_id}.{plan digest}.dcm`` (:func:`copy_path`),
    and instance ids hold no dot, so the id is the name up to its first dot.
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
                 if e.name.endswith(".dcm") and e.name.split(".", 1)[0] in wanted]
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


def make_copy(record: InstanceRecord, route: RouteConfig, morphed_dir: str) -> InstanceRecord:
    """Write (or reuse) the route's copy of ``record``; blocking, for a file runner.

    :returns: the record of the copy: its path and the UIDs and IDs it now carries.
    :raises PrepareError: when the morph fails for this instance.
    :raises OSError: when the copy cannot be written (retried later).
    """
    from gateway.morph import MorphError, write_morphed
    from gateway.parse import read_header
    from gateway.private import make_private_dirs

    path = copy_path(morphed_dir, record.instance_id, route.morph)
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
            write_morphed(record.path, path, route.morph, context)
        except MorphError as e:
            raise PrepareError(str(e)) from e
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
    """The workers' ``prepare`` hook: swap an entry for its route's morphed copy.

    :param routes: returns the routes in force (they change on reload).
    :param runner: where the morph runs (a file thread pool).
    :param morphed_dir: the spool folder for copies.
    :param on_error: called with the route name when a morph fails (metrics).
    """

    def __init__(
        self,
        routes: Callable[[], Sequence[RouteConfig]],
        runner: IBlockingRunner,
        morphed_dir: str,
        on_error: Callable[[str], None] = lambda route: None,
    ) -> None:
        self._routes = routes
        self._runner = runner
        self.morphed_dir = morphed_dir
        self._on_error = on_error
        # One morph per (instance, route) at a time: the other destinations of
        # the route wait for it and share the file.
        self._inflight: dict[tuple[str, str], list[Deferred[InstanceRecord]]] = {}

    def __call__(self, entry: Entry) -> Deferred[Entry]:
        """The copy ``entry`` should send (itself when its route does not morph)."""
        route = next((r for r in self._routes() if r.name == entry.route), None)
        if route is None or route.morph is None:
            return succeed(entry)
        key = (entry.instance.instance_id, route.name)
        mine: Deferred[InstanceRecord] = Deferred()
        waiters = self._inflight.get(key)
        if waiters is None:
            self._inflight[key] = [mine]
            work = self._runner.run(make_copy, entry.instance, route, self.morphed_dir)

            def done(result: Any) -> None:
                if isinstance(result, Failure) and result.check(PrepareError):
                    self._on_error(route.name)
                for waiter in self._inflight.pop(key, []):
                    if isinstance(result, Failure):
                        waiter.errback(result)
                    else:
                        waiter.callback(result)

            work.addBoth(done)
        else:
            waiters.append(mine)
        return mine.addCallback(lambda record: dataclasses.replace(entry, path=record.path, instance=record))
