"""The Storage Commitment request and report as data (PS3.4 J.3.2, J.3.3; PS3.3 C.14.1.1).

Shared by the codec (:mod:`gateway.dimse.commitment`), the verdict, the
worker and the journal (which keeps a decided report as the JSON of
:meth:`CommitmentReport.to_json`, so every retry and every node sends the
same report).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum

from gateway.queue.commitments import Reference

__all__ = [
    "STORAGE_COMMITMENT_PUSH",
    "STORAGE_COMMITMENT_INSTANCE",
    "ACTION_REQUEST_COMMITMENT",
    "EVENT_ALL_COMMITTED",
    "EVENT_SOME_FAILED",
    "FailureReason",
    "Reference",
    "FailedReference",
    "ActionRequest",
    "CommitmentReport",
]

#: Storage Commitment Push Model SOP Class (PS3.4 J.3, PS3.6 Annex A).
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
#: Its well-known SOP Instance (PS3.4 J.3.2.1.2): in every N-ACTION and N-EVENT-REPORT.
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
#: Action Type ID 1: Request Storage Commitment (PS3.4 Table J.3-1).
ACTION_REQUEST_COMMITMENT = 1
#: Event Type ID 1: Storage Commitment Request Successful (PS3.4 Table J.3-2).
EVENT_ALL_COMMITTED = 1
#: Event Type ID 2: Storage Commitment Request Complete - Failures Exist (PS3.4 Table J.3-2).
EVENT_SOME_FAILED = 2


class FailureReason(IntEnum):
    """(0008,1197) Failure Reason values a Failed SOP Sequence item may carry (PS3.3 C.14.1.1)."""

    PROCESSING_FAILURE = 0x0110
    NO_SUCH_OBJECT_INSTANCE = 0x0112
    CLASS_INSTANCE_CONFLICT = 0x0119
    REFERENCED_SOP_CLASS_NOT_SUPPORTED = 0x0122
    DUPLICATE_TRANSACTION_UID = 0x0131
    RESOURCE_LIMITATION = 0x0213


@dataclass(frozen=True)
class FailedReference:
    """One Failed SOP Sequence item: the instance and its Failure Reason."""

    reference: Reference
    reason: int


@dataclass(frozen=True)
class ActionRequest:
    """An N-ACTION-RQ's data set (PS3.4 Table J.3-1): the Transaction UID and what is asked about.

    :ivar references: the Referenced SOP Sequence items in request order
        (repeats kept: the SCP decides what to do with them).
    :ivar storage_media_file_set_id: (0088,0130), optional, kept for the audit.
    :ivar storage_media_file_set_uid: (0088,0140), optional.
    """

    transaction_uid: str
    references: tuple[Reference, ...]
    storage_media_file_set_id: str = ""
    storage_media_file_set_uid: str = ""


@dataclass(frozen=True)
class CommitmentReport:
    """An N-EVENT-REPORT-RQ's data set (PS3.4 Table J.3-2): each instance in exactly one sequence.

    :ivar retrieve_ae_title: (0008,0054), optional: where committed instances can be retrieved.
    """

    transaction_uid: str
    committed: tuple[Reference, ...] = ()
    failed: tuple[FailedReference, ...] = ()
    retrieve_ae_title: str = ""

    @property
    def event_type(self) -> int:
        """1 when every instance is committed, 2 when failures exist (PS3.4 J.3.3)."""
        return EVENT_SOME_FAILED if self.failed else EVENT_ALL_COMMITTED

    def to_json(self) -> str:
        """The journal's form (canonical: sorted keys, no spaces)."""
        return json.dumps(
            {
                "transaction_uid": self.transaction_uid,
                "committed": [[r.sop_class_uid, r.sop_instance_uid] for r in self.committed],
                "failed": [[f.reference.sop_class_uid, f.reference.sop_instance_uid, f.reason] for f in self.failed],
                "retrieve_ae_title": self.retrieve_ae_title,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> "CommitmentReport":
        """Read :meth:`to_json`'s form back.

        :raises ValueError: not that form.
        """
        try:
            data = json.loads(text)
            return cls(
                transaction_uid=str(data["transaction_uid"]),
                committed=tuple(Reference(str(c), str(i)) for c, i in data["committed"]),
                failed=tuple(FailedReference(Reference(str(c), str(i)), int(r)) for c, i, r in data["failed"]),
                retrieve_ae_title=str(data.get("retrieve_ae_title", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a journaled commitment report: {e}") from e
