"""What one send attempt comes to: the outcomes a sender returns and the worker records (data only).

A sender (:mod:`gateway.send`) turns a C-STORE status, an exception or a
file error into one of four outcomes, which are data (DESIGN.md principle
4); the worker (:mod:`gateway.forward`) records them in the journal:

- :class:`Delivered`: the destination has the instance (success, or a
  warning status, which is logged and kept as the entry's ``last_error``);
- :class:`Retry`: a transient fault of this one send; the entry goes back to
  the queue after a backoff delay, and counts an attempt;
- :class:`DeadLetter`: a permanent fault of this one instance, with its
  :class:`DeadLetterKind`; it leaves the queue at once so the entries behind
  it keep flowing;
- :class:`DestinationDown`: a fault of the destination as a whole; nothing
  is dead-lettered for it, the circuit breaker takes over (HARDENING
  decision 9).

The kind of a dead letter travels as data, beside its human-readable
reason: nothing reads the reason text back to learn it. Only journal text
written before the kind existed is classified by its words
(:meth:`DeadLetterKind.of_reason`).

This module imports nothing but the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Union

__all__ = ["DeadLetterKind", "Delivered", "Retry", "DeadLetter", "DestinationDown", "Outcome"]


class DeadLetterKind(Enum):
    """Why an entry went to the dead letters: the bounded ``reason`` label of
    ``dead_lettered_total`` (HARDENING F16), never the free text, which may hold UIDs."""

    MORPH = "morph"  # the route's copy could not be made (HARDENING D15)
    UNREADABLE = "unreadable"  # the spooled file is not a readable Part 10 file
    UNSAFE_PATH = "unsafe_path"  # a folder destination refused a value (HARDENING D06)
    CONVERSION = "conversion"  # the destination's transfer syntax (policy or fallback) could not be made (issue 17)
    NO_CONTEXT = "no_context"  # no accepted presentation context (PS3.8 9.3.2.2, F03)
    REFUSED = "refused"  # a permanent or unknown C-STORE failure status (PS3.4 Table B.2-1)
    GAVE_UP = "gave_up"  # max_attempts or max_age reached, whatever the last failure
    OTHER = "other"

    @classmethod
    def of_reason(cls, reason: str) -> "DeadLetterKind":
        """The kind of a dead letter known only by its stored text (a journal from before kinds, a caller without one).

        A retry that ran out of attempts or age ("...; gave up after ...") is
        :attr:`GAVE_UP` whatever the last failure was.

        :param reason: the text stored with the dead letter.
        :returns: the kind, :attr:`OTHER` for text of no known shape.
        """
        if "gave up after" in reason:
            return cls.GAVE_UP
        for prefix, kind in _LEGACY_PREFIXES:
            if reason.startswith(prefix):
                return kind
        return cls.OTHER


#: The beginnings of the reason texts the worker has always written, by kind.
_LEGACY_PREFIXES: tuple[tuple[str, DeadLetterKind], ...] = (
    ("morph:", DeadLetterKind.MORPH),
    ("unreadable Part 10 file", DeadLetterKind.UNREADABLE),
    ("unsafe path", DeadLetterKind.UNSAFE_PATH),
    ("cannot convert to", DeadLetterKind.CONVERSION),
    ("no accepted presentation context", DeadLetterKind.NO_CONTEXT),
    ("data set does not match SOP class", DeadLetterKind.REFUSED),
    ("cannot understand", DeadLetterKind.REFUSED),
    ("refused (status", DeadLetterKind.REFUSED),
    ("unknown status", DeadLetterKind.REFUSED),
)


@dataclass(frozen=True)
class Delivered:
    """The destination has the instance.

    :ivar status: the C-STORE status (0x0000 or a warning; 0 for a folder).
    :ivar warning: a description of the warning status, empty on success.
    """

    status: int
    warning: str = ""


@dataclass(frozen=True)
class Retry:
    """A transient fault of one send: back off and try again (counts an attempt).

    :ivar reason: what happened, for the entry's history.
    :ivar ambiguous: the data may have arrived (A-ABORT or close after the
        last fragment, DIMSE timeout): if a later attempt succeeds, the
        destination may hold two copies, and a redelivery is counted
        (HARDENING F06, F07).
    :ivar after: the destination asked to be left alone this many seconds
        (HTTP ``Retry-After``, RFC 9110 10.2.3): the retry waits at least
        that long, whatever the backoff says (issue 17).
    """

    reason: str
    ambiguous: bool = False
    after: float = 0.0


@dataclass(frozen=True)
class DeadLetter:
    """A permanent fault of this one instance: move it to the dead letters now.

    :ivar reason: what happened, stored with the dead letter (human-readable).
    :ivar kind: the class of the fault, counted by metrics.
    """

    reason: str
    kind: DeadLetterKind = DeadLetterKind.OTHER


@dataclass(frozen=True)
class DestinationDown:
    """A fault of the destination as a whole (HARDENING decision 9).

    :ivar permanent: the destination said no for good (A-ASSOCIATE-RJ with
        result 1, PS3.8 9.3.4): probe at the maximum backoff interval.
    :ivar tls_failure: the TLS failure's label (``expired``, ``unknown_ca``,
        ``wrong_name``, ...) when the fault is one, decided where the error is
        classified; ``None`` otherwise.
    :ivar after: the destination asked to be left alone this many seconds
        (HTTP ``Retry-After`` on a 502/503/504, issue 17): the worker waits at
        least that long before trying it again.
    """

    reason: str
    permanent: bool = False
    tls_failure: str | None = None
    after: float = 0.0


#: What a send attempt comes to.
Outcome = Union[Delivered, Retry, DeadLetter, DestinationDown]
