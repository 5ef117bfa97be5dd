"""Study completeness in the journal (issue 18): the interface and its records.

A route with ``notify:`` keeps one row per study in the ``studies`` table
(SQLite schema 9, PostgreSQL schema 5; :data:`gateway.queue.schema.STUDIES_TABLE`).
The state lives in the journal, not in memory, so every node sharing a
queue sees the same studies and a restart forgets nothing.

* The intake passes :class:`StudyNote` s with the instances it journals
  (``notes`` of :meth:`~gateway.queue.interfaces.IQueueStore.add_instance`
  and ``add_instances``): the row is created, or updated, in the same
  transaction as the instance. A note for a study that is ``complete``
  reopens it (the next completion is an amendment). A note whose route's
  entries were all DUPLICATE changes nothing (a re-send is not news).
* The tracker (:mod:`gateway.notify.tracker`, housekeeping node) reads
  :meth:`IStudyJournal.open_studies`, asks :meth:`IStudyJournal.study_progress`
  and, when the route's rule says complete, calls
  :meth:`IStudyJournal.complete_study`, which records the completion and
  queues the notifications in one transaction (compare-and-set on the row,
  so a concurrent instance or another node's tracker makes it a no-op).

Notification records are instances of sop_class_uid
:data:`gateway.notify.document.NOTIFICATION_SOP_CLASS`: progress never
counts them as the study's instances.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from zope.interface import Interface

from gateway.queue.interfaces import InstanceRecord, NewEntry

__all__ = ["StudyNote", "SeriesSeen", "StudyRow", "DestinationProgress", "StudyProgress", "IStudyJournal"]


@dataclass(frozen=True)
class StudyNote:
    """What the intake tells the journal of one instance for one notifying route.

    :ivar expected_instances: (0020,1208) Number of Study Related Instances, when the instance carries it.
    """

    route: str
    study_instance_uid: str
    series_instance_uid: str = ""
    series_number: int | None = None
    modality: str = ""
    expected_instances: int | None = None


@dataclass(frozen=True)
class SeriesSeen:
    """One series of a study row: what arrived of it (``studies.series_seen``, JSON by series UID)."""

    series_instance_uid: str
    series_number: int | None = None
    modality: str = ""
    instances: int = 0


@dataclass(frozen=True)
class StudyRow:
    """One row of ``studies``.

    :ivar opened_at: the first instance of the current opening (``max_wait`` counts from it).
    :ivar instances: instances noted for the route, over every opening.
    :ivar completions: notifications recorded so far (0: the next one is ``complete``, else ``amended``).
    """

    route: str
    study_instance_uid: str
    state: str
    opened_at: float
    last_instance_at: float
    instances: int = 0
    expected_instances: int | None = None
    series: Mapping[str, SeriesSeen] = field(default_factory=dict)
    completions: int = 0
    completed_at: float | None = None
    forced: bool = False


@dataclass(frozen=True)
class DestinationProgress:
    """One destination's entries for the study's instances of one route."""

    destination: str
    outstanding: int = 0  # QUEUED or LEASED
    delivered: int = 0
    dead: int = 0
    duplicates: int = 0


@dataclass(frozen=True)
class StudyProgress:
    """Where a study's instances stand at a route's destinations (notification records excluded).

    :ivar sample: one instance of the study whose file is still in the spool
        (the header the notification's patient and study fields come from), or ``None``.
    """

    route: str
    study_instance_uid: str
    instances: int
    destinations: tuple[DestinationProgress, ...]
    first_received_at: float | None = None
    last_received_at: float | None = None
    sample: InstanceRecord | None = None

    @property
    def outstanding(self) -> int:
        """Entries still to be sent (QUEUED or LEASED) at any destination."""
        return sum(d.outstanding for d in self.destinations)


class IStudyJournal(Interface):
    """Study completeness (mixed into the SQLite, PostgreSQL and in-memory stores)."""

    def open_studies(quiet_before: float, opened_before: float, limit: int = 500) -> list[StudyRow]:
        """Open rows with ``last_instance_at <= quiet_before`` or ``opened_at <= opened_before``, quietest first."""

    def study(route: str, study_instance_uid: str) -> StudyRow:
        """One row. :raises KeyError: none."""

    def studies(state: str | None = None, limit: int = 100, after: tuple[float, str, str] | None = None) -> list[StudyRow]:
        """Rows newest first (by ``last_instance_at``, then route, then study UID), after a keyset cursor."""

    def study_progress(route: str, study_instance_uid: str) -> StudyProgress:
        """The route's entries for the study's instances, per destination (``sample``: a file still present)."""

    def complete_study(
        route: str,
        study_instance_uid: str,
        last_instance_at: float,
        completions: int,
        now: float,
        forced: bool,
        notifications: Sequence[tuple[InstanceRecord, Sequence[NewEntry]]],
    ) -> bool:
        """Record the study complete and queue its notifications, in one transaction.

        Nothing is written (``False``) unless the row is still open with this
        ``last_instance_at`` and ``completions`` (no instance arrived, no other
        tracker completed it) and, unless ``forced``, no entry of the route for
        the study's instances is QUEUED or LEASED. Otherwise the row becomes
        ``complete`` with ``completions + 1``, ``completed_at = now`` and
        ``forced``, and every notification record is added with its entries
        (never a duplicate).
        """

    def purge_studies(completed_before: float, limit: int = 500) -> int:
        """Delete complete rows completed before ``completed_before`` (retention); returns how many."""
