"""Merging the C-FIND responses of several sources into one stream (pure; issue 16).

Theory of operation
-------------------
In ``query.mode: merge`` every source is asked at once and their pending
responses are relayed as they arrive. Two rules shape what leaves:

* **Duplicates** are removed by the level's unique key (PS3.4 C.6.1.1.2-5,
  C.6.2.1.2-4: Patient ID with its Issuer of Patient ID at PATIENT level,
  Study / Series / SOP Instance UID below), computed by the caller
  (:func:`gateway.dimse.identifier.unique_key`). Only a 16-byte digest of
  each key is kept, never the identifiers: the set costs about 90 bytes per
  distinct result in CPython (a 33-byte ``bytes`` header plus 16 bytes of
  digest, and the set's slot at its load factor), so about 9 MB per
  100,000 results (measured: :class:`tests.unit.qr.test_merge.MemoryTests`).
  ``max_results`` bounds it (10,000 by default: about 1 MB).
* **Precedence**: on a conflict the first source in ``query.sources`` wins.
  A response can not be taken back once sent, so a match from a source is
  relayed at once only when every source listed before it has finished;
  otherwise it is *held* until they have (and dropped then if one of them
  sent the same key). Held matches are bounded by ``hold_limit`` (count) and
  ``hold_bytes``: past either bound a held match is released at once, first
  come (precedence is then best effort; :attr:`Merge.precedence_lost`
  counts those releases), so memory stays bounded whatever the sources do.

``max_results`` counts matches relayed: the match after the limit sets
:attr:`Merge.over_limit`; the caller then cancels the sources and ends with
0xA700 (PS3.4 C.4.1.1.4: C-FIND has no warning final status).

Each match keeps the pending status it came with (:meth:`Merge.offer`,
:meth:`Merge.finish` give :class:`Relayed` pairs): a source's 0xFF01
("Matches are continuing - Warning that one or more Optional Keys were not
supported for existence for this Identifier", PS3.4 C.4.1.1.4) is relayed
as 0xFF01, not turned into 0xFF00. :meth:`Merge.match` and
:meth:`Merge.source_done` are the same without the status.

Nothing here does I/O or keeps time: the caller feeds matches and source
ends and sends what comes out.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass
from typing import Hashable, NamedTuple, Sequence

#: Matches of a lower-precedence source kept while a higher one is still running.
HOLD_LIMIT = 1000
#: Bytes of held identifiers, at most.
HOLD_BYTES = 8 * 1024 * 1024

#: "Matches are continuing" (PS3.4 C.4.1.1.4), the status of a match unless told otherwise.
PENDING = 0xFF00


def key_digest(key: Hashable) -> bytes:
    """A 16-byte digest of a unique key (a tuple of strings): what the duplicate set keeps."""
    text = "\x00".join(str(part) for part in key) if isinstance(key, tuple) else str(key)
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).digest()


@dataclass(frozen=True)
class Held:
    """A match waiting for the sources listed before its own to finish."""

    source: int
    digest: bytes | None
    identifier: bytes
    status: int = PENDING


class Relayed(NamedTuple):
    """A match to relay now, with the pending status its source sent (0xFF00 or 0xFF01)."""

    identifier: bytes
    status: int = PENDING


class Merge:
    """The merge of one query's responses (see the module's theory of operation).

    :param sources: the source names, in precedence order.
    :param max_results: matches relayed at most (``0``: no limit).
    :param dedupe: remove duplicates by key (``merge`` mode); ``first`` mode
        asks one source at a time and has nothing to merge.
    :param hold_limit: held matches at most.
    :param hold_bytes: held identifier bytes at most.
    """

    def __init__(
        self,
        sources: Sequence[str],
        max_results: int,
        dedupe: bool = True,
        hold_limit: int = HOLD_LIMIT,
        hold_bytes: int = HOLD_BYTES,
    ) -> None:
        self._index = {name: i for i, name in enumerate(sources)}
        self._done = [False] * len(sources)
        self._max_results = max_results
        self._dedupe = dedupe
        self._hold_limit = hold_limit
        self._hold_bytes = hold_bytes
        self._seen: set[bytes] = set()
        self._held: deque[Held] = deque()
        self._held_size = 0
        #: Matches relayed so far.
        self.relayed = 0
        #: Matches dropped as duplicates.
        self.duplicates = 0
        #: Held matches released before their turn (bounds reached).
        self.precedence_lost = 0
        #: True once a match beyond ``max_results`` arrived.
        self.over_limit = False

    # -- input ---------------------------------------------------------------------------

    def match(self, source: str, key: Hashable | None, identifier: bytes) -> list[bytes]:
        """A pending response's identifier from ``source``: the identifiers to relay now, in order.

        :param key: the level's unique key, ``None`` when the match has none
            (it is then never a duplicate).
        """
        return [relayed.identifier for relayed in self.offer(source, key, identifier)]

    def offer(self, source: str, key: Hashable | None, identifier: bytes, status: int = PENDING) -> list[Relayed]:
        """As :meth:`match`, keeping each match's pending status (0xFF00 or 0xFF01, PS3.4 C.4.1.1.4).

        :param status: the pending status the source sent with this match.
        """
        index = self._index[source]
        digest = key_digest(key) if key is not None and self._dedupe else None
        if digest is not None and digest in self._seen:
            self.duplicates += 1
            return []
        if all(self._done[:index]):
            return self._relay(digest, identifier, status)
        self._held.append(Held(index, digest, identifier, status))
        self._held_size += len(identifier)
        out: list[Relayed] = []
        while self._held and (len(self._held) > self._hold_limit or self._held_size > self._hold_bytes):
            # Bounded memory first: the oldest held match goes now.
            self.precedence_lost += 1
            out += self._release_one()
        return out

    def source_done(self, source: str) -> list[bytes]:
        """``source`` finished (final response, failure, timeout, left out): held matches now due."""
        return [relayed.identifier for relayed in self.finish(source)]

    def finish(self, source: str) -> list[Relayed]:
        """As :meth:`source_done`, keeping each match's pending status."""
        self._done[self._index[source]] = True
        out: list[Relayed] = []
        while self._held and all(self._done[: self._held[0].source]):
            out += self._release_one()
        # Matches of later sources behind one still waiting keep their place
        # (arrival order within the held queue); release any whose turn has come.
        if self._held:
            keep: deque[Held] = deque()
            for held in self._held:
                if all(self._done[: held.source]):
                    self._held_size -= len(held.identifier)
                    out += self._relay(held.digest, held.identifier, held.status)
                else:
                    keep.append(held)
            self._held = keep
        return out

    @property
    def all_done(self) -> bool:
        """Whether every source has finished."""
        return all(self._done)

    @property
    def held(self) -> int:
        """Matches held now."""
        return len(self._held)

    # -- internals -----------------------------------------------------------------------

    def _release_one(self) -> list[Relayed]:
        held = self._held.popleft()
        self._held_size -= len(held.identifier)
        return self._relay(held.digest, held.identifier, held.status)

    def _relay(self, digest: bytes | None, identifier: bytes, status: int) -> list[Relayed]:
        """Relay one match unless it is a duplicate (checked again: a held one may have been overtaken) or over the limit."""
        if digest is not None:
            if digest in self._seen:
                self.duplicates += 1
                return []
        if self.over_limit or (self._max_results and self.relayed >= self._max_results):
            self.over_limit = True
            return []
        if digest is not None:
            self._seen.add(digest)
        self.relayed += 1
        return [Relayed(identifier, status)]
