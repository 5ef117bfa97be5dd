"""Retry policy: backoff delays and the classification of send outcomes (pure).

The forwarder (:mod:`gateway.forward`) sends an instance and gets either a
C-STORE status or an exception. This module turns either into one of four
outcomes, which are data (DESIGN.md principle 4); the worker interprets them:

- :class:`Delivered`: the destination has the instance (success, or a
  warning status, which is logged and kept as the entry's ``last_error``);
- :class:`Retry`: a transient fault of this one send; the entry goes back to
  the queue with a :func:`backoff` delay, and counts an attempt;
- :class:`DeadLetter`: a permanent fault of this one instance; it leaves the
  queue at once so the entries behind it keep flowing;
- :class:`DestinationDown`: a fault of the destination as a whole; nothing
  is dead-lettered for it, the worker's circuit breaker takes over
  (HARDENING decision 9).

The status table follows PS3.7 Annex C and the Storage Service Class's
reserved ranges (PS3.4 Table B.2-1), with the decisions of the
store-and-forward issue (HARDENING decision 6): unknown codes are retried a
bounded number of times, then dead-lettered with the code.

Nothing here reads a clock, sleeps or does I/O: times and randomness come
from the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Union

from twisted.internet import error as _neterror

from gateway.associate import AssociationAborted, AssociationRejected, NoPresentationContext
from gateway.queue.interfaces import Entry

__all__ = [
    "Delivered",
    "Retry",
    "DeadLetter",
    "DestinationDown",
    "Outcome",
    "RetrySettings",
    "backoff",
    "classify_status",
    "classify_error",
    "give_up",
    "DEAD_LETTER_REASONS",
    "dead_letter_reason",
]


class RetrySettings(Protocol):
    """The fields of ``gateway.config.schema.RetryConfig`` this module reads.

    A structural type, so the policy does not depend on the config module.
    """

    @property
    def initial_delay(self) -> float: ...

    @property
    def max_delay(self) -> float: ...

    @property
    def multiplier(self) -> float: ...

    @property
    def jitter(self) -> float: ...

    @property
    def max_attempts(self) -> int: ...

    @property
    def max_age(self) -> float: ...

    @property
    def unknown_status_attempts(self) -> int: ...


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
    """

    reason: str
    ambiguous: bool = False


@dataclass(frozen=True)
class DeadLetter:
    """A permanent fault of this one instance: move it to the dead letters now."""

    reason: str


@dataclass(frozen=True)
class DestinationDown:
    """A fault of the destination as a whole (HARDENING decision 9).

    :ivar permanent: the destination said no for good (A-ASSOCIATE-RJ with
        result 1, PS3.8 9.3.4): probe at the maximum backoff interval.
    """

    reason: str
    permanent: bool = False


#: What a send attempt comes to.
Outcome = Union[Delivered, Retry, DeadLetter, DestinationDown]


def backoff(
    attempt: int,
    *,
    initial: float,
    maximum: float,
    multiplier: float,
    jitter: float,
    rand: Callable[[], float],
) -> float:
    """The delay before the next attempt, in the style of Twisted's ``backoffPolicy``.

    The delay grows geometrically, ``initial * multiplier ** attempt``, is
    capped at ``maximum``, then spread by +/- ``jitter`` (a fraction of the
    delay) so that many entries or workers that failed together do not retry
    in lock step. The result never exceeds ``maximum`` and is never negative.

    :param attempt: how many attempts failed before this one (0 for the first retry).
    :param initial: the delay after the first failure, in seconds.
    :param maximum: the cap, in seconds.
    :param multiplier: the growth factor per attempt.
    :param jitter: the spread, a fraction of the delay (0.2 means +/- 20 %).
    :param rand: a source of floats in [0, 1) (``random.random`` in production).
    :returns: the delay in seconds.
    """
    try:
        # A float power overflows around 2 ** 1024: past the cap anyway.
        raw = initial * multiplier ** max(attempt, 0)
    except OverflowError:
        raw = maximum
    delay = min(raw, maximum)
    # rand() in [0, 1) maps to a factor in [1 - jitter, 1 + jitter).
    delay *= 1.0 + jitter * (2.0 * rand() - 1.0)
    return max(0.0, min(delay, maximum))


def _hex(status: int) -> str:
    return f"0x{status:04X}"


#: General warning codes (PS3.7 C.4, and 0x0001 of the DIMSE-N services).
_GENERAL_WARNINGS = frozenset({0x0001, 0x0107, 0x0116})


def classify_status(status: int, attempts: int, retry_config: RetrySettings) -> Delivered | Retry | DeadLetter:
    """Decide what a C-STORE-RSP status means for the entry (PS3.7 Annex C, PS3.4 Table B.2-1).

    - 0x0000: delivered.
    - 0x0001, 0x0107, 0x0116 (PS3.7 C.4) and any 0xBxxx (PS3.4 B.2.3, e.g.
      0xB000 coercion, 0xB006 elements discarded, 0xB007 data set does not
      match SOP class): delivered with a warning.
    - 0xA7xx (refused, out of resources) and 0xFE00 (cancel, PS3.7 C.3): retry.
    - 0xA9xx (data set does not match SOP class), 0xCxxx (cannot
      understand) and the general failures 0x01xx/0x02xx (PS3.7 C.5, e.g.
      0x0122 SOP class not supported, 0x0124 not authorized, 0x0211
      unrecognized operation): dead letter at once; re-sending the same
      bytes cannot change the answer.
    - Anything else (e.g. 0xD123, or a pending code, which C-STORE never
      uses): retry until ``unknown_status_attempts`` attempts were made,
      then dead letter with the code.

    :param status: the 16-bit status of the response.
    :param attempts: real attempts made so far, this one included.
    :param retry_config: the destination's retry settings.
    :returns: the outcome.
    """
    code = _hex(status)
    # PS3.7 C.1: success.
    if status == 0x0000:
        return Delivered(status)
    # PS3.7 C.4 and PS3.4 B.2.3: warnings count as delivered, and are logged.
    if 0xB000 <= status <= 0xBFFF or status in _GENERAL_WARNINGS:
        return Delivered(status, warning=f"warning status {code}")
    # PS3.4 Table B.2-1: 0xA7xx refused, out of resources (transient).
    if 0xA700 <= status <= 0xA7FF:
        return Retry(f"out of resources (status {code})")
    # PS3.7 C.3: cancelled; the destination may take it next time.
    if status == 0xFE00:
        return Retry(f"cancelled (status {code})")
    # PS3.4 Table B.2-1: 0xA9xx data set does not match SOP class (permanent).
    if 0xA900 <= status <= 0xA9FF:
        return DeadLetter(f"data set does not match SOP class (status {code})")
    # PS3.4 Table B.2-1: 0xCxxx cannot understand (permanent).
    if 0xC000 <= status <= 0xCFFF:
        return DeadLetter(f"cannot understand (status {code})")
    # PS3.7 C.5: the general failure codes (0x0122, 0x0124, 0x0211, ...).
    if 0x0100 <= status <= 0x02FF:
        return DeadLetter(f"refused (status {code})")
    # Unknown: bounded retries, then a dead letter naming the code (HARDENING F04).
    if attempts >= retry_config.unknown_status_attempts:
        return DeadLetter(f"unknown status {code} after {attempts} attempts")
    return Retry(f"unknown status {code}")


def _is_tls_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a TLS handshake or verification failure (pyOpenSSL)."""
    try:
        from OpenSSL.SSL import Error as SSLError
    except ImportError:  # pragma: no cover - pyOpenSSL is a dependency of TLS support
        return False
    return isinstance(exc, SSLError)


def classify_error(exc: BaseException, *, data_sent: bool, connecting: bool = False) -> Outcome:
    """Decide what an exception raised while connecting or sending means.

    - Connection refused, connect timeout, DNS failure, TLS failure, and
      A-ASSOCIATE-RJ (PS3.8 9.3.4: result 1 permanent, 2 transient): the
      destination as a whole is down (HARDENING decision 9, F01, F02, F20).
    - :class:`AssociationAborted` while connecting (no A-ASSOCIATE-AC within
      the ACSE timeout, or the peer dropped us before answering): down too.
    - :class:`AssociationAborted` during a send (A-ABORT, connection closed,
      DIMSE timeout): retry; *ambiguous* when the data was sent, since the
      destination may have stored it (F05, F06, F07).
    - :class:`NoPresentationContext`: the destination accepted the
      association but none of the contexts for this instance's SOP class and
      transfer syntax (F03): dead letter.
    - Anything else: retry with the exception's text (bounded by ``max_attempts``).

    :param exc: the exception.
    :param data_sent: whether the last fragment of the data set went out.
    :param connecting: whether the exception came from opening the association.
    :returns: the outcome.
    """
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, AssociationRejected):
        # PS3.8 9.3.4: result 1 is rejected-permanent, 2 rejected-transient.
        return DestinationDown(str(exc), permanent=exc.rejection.result == 1)
    if isinstance(exc, (_neterror.ConnectError, _neterror.DNSLookupError, _neterror.TimeoutError)):
        # ConnectError covers refused, TCP timeout, no route, and the rest.
        return DestinationDown(text)
    if isinstance(exc, (ConnectionRefusedError, TimeoutError)) or _is_tls_error(exc):
        return DestinationDown(text)
    if isinstance(exc, NoPresentationContext):
        return DeadLetter(str(exc))
    if isinstance(exc, (AssociationAborted, _neterror.ConnectionLost, _neterror.ConnectionDone)):
        if connecting:
            return DestinationDown(text)
        return Retry(text, ambiguous=data_sent)
    if connecting:
        # Any other failure to open an association is the destination's, not the instance's.
        return DestinationDown(text)
    return Retry(text)


def give_up(entry: Entry, now: float, retry_config: RetrySettings) -> str | None:
    """Whether an entry whose current attempt just failed should leave the queue.

    ``entry`` is the leased entry as it was before the attempt, so
    ``entry.attempts + 1`` real attempts have now been made. Circuit probes
    and destination-wide faults are not attempts (HARDENING decision 9), so
    a weekend outage never reaches ``max_attempts``; ``max_age`` defaults to
    days for the same reason.

    :param entry: the entry.
    :param now: wall-clock time.
    :param retry_config: the destination's retry settings.
    :returns: the reason to dead-letter it, or ``None`` to retry.
    """
    attempts = entry.attempts + 1
    if attempts >= retry_config.max_attempts:
        return f"gave up after {attempts} attempts (max_attempts {retry_config.max_attempts})"
    age = now - entry.enqueued_at
    if age >= retry_config.max_age:
        return f"gave up after {age:.0f}s in the queue (max_age {retry_config.max_age:.0f}s)"
    return None


#: The bounded set of reason classes a dead letter is counted under (HARDENING F16:
#: ``dlq{reason="morph"}``); never the free text, which may hold UIDs.
DEAD_LETTER_REASONS = (
    "morph",
    "unreadable",
    "unsafe_path",
    "conversion",
    "no_context",
    "refused",
    "gave_up",
    "other",
)

_REASON_PREFIXES = (
    ("morph:", "morph"),
    ("unreadable Part 10 file", "unreadable"),
    ("unsafe path", "unsafe_path"),
    ("cannot convert to", "conversion"),
    ("no accepted presentation context", "no_context"),
    ("data set does not match SOP class", "refused"),
    ("cannot understand", "refused"),
    ("refused (status", "refused"),
    ("unknown status", "refused"),
)


def dead_letter_reason(reason: str) -> str:
    """The class of a dead letter's reason text, one of :data:`DEAD_LETTER_REASONS`.

    A retry that ran out of attempts or age ("...; gave up after ...") is
    ``gave_up`` whatever the last failure was.

    :param reason: the text stored with the dead letter.
    :returns: the class.
    """
    if "gave up after" in reason:
        return "gave_up"
    for prefix, kind in _REASON_PREFIXES:
        if reason.startswith(prefix):
            return kind
    return "other"
