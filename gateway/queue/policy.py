"""Retry policy: backoff delays, when to give up, and the journal's words for outcomes (pure).

The senders (:mod:`gateway.send`) classify what a destination answered into
the outcomes of :mod:`gateway.queue.outcome` (re-exported here); the worker
(:mod:`gateway.forward`) records them with the help of this module:
:func:`backoff` for the delay of a retry, :func:`give_up` for when a retried
entry leaves the queue, and :func:`retry_text` / :func:`had_ambiguous_attempt`
for how an attempt whose outcome is unknown is written to, and read back
from, the journal (at-least-once, HARDENING F06, F07: it must hold across
restarts, so it lives in the journal's own text).

Nothing here reads a clock, sleeps or does I/O, and nothing imports the
network: times and randomness come from the caller.
"""

from __future__ import annotations

from typing import Callable, Protocol

from gateway.queue.interfaces import Entry
from gateway.queue.outcome import DeadLetter, DeadLetterKind, Delivered, DestinationDown, Outcome, Retry

__all__ = [
    "Delivered",
    "Retry",
    "DeadLetter",
    "DeadLetterKind",
    "DestinationDown",
    "Outcome",
    "RetrySettings",
    "backoff",
    "give_up",
    "AMBIGUOUS_PREFIX",
    "retry_text",
    "had_ambiguous_attempt",
    "DEAD_LETTER_REASONS",
    "dead_letter_reason",
]

#: The start of the recorded error of an attempt whose outcome is unknown
#: (and of :data:`~gateway.queue.interfaces.RECOVERED_IN_FLIGHT`).
AMBIGUOUS_PREFIX = "ambiguous: "


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


def retry_text(retry: Retry) -> str:
    """The error the journal stores for a retried attempt: ``"ambiguous: "`` first when the data may have arrived.

    :param retry: the outcome.
    :returns: the text for the entry's history.
    """
    return (AMBIGUOUS_PREFIX if retry.ambiguous else "") + retry.reason


def had_ambiguous_attempt(entry: Entry) -> bool:
    """Whether an attempt of ``entry`` may have reached the destination (its history says so).

    Read from the journal, so it holds across restarts, and for attempts the
    store's recovery noted (:data:`~gateway.queue.interfaces.RECOVERED_IN_FLIGHT`).

    :param entry: the entry as leased.
    :returns: ``True`` when a delivery now may be a second copy.
    """
    return entry.last_error.startswith(AMBIGUOUS_PREFIX) or any(
        a.error.startswith(AMBIGUOUS_PREFIX) for a in entry.history
    )


#: The bounded set of reason classes a dead letter is counted under (HARDENING F16:
#: ``dlq{reason="morph"}``); never the free text, which may hold UIDs.
DEAD_LETTER_REASONS: tuple[str, ...] = tuple(kind.value for kind in DeadLetterKind)


def dead_letter_reason(reason: str) -> str:
    """The class of a dead letter known only by its stored text, one of :data:`DEAD_LETTER_REASONS`.

    For journal text written before outcomes carried their kind; the worker
    passes :attr:`DeadLetter.kind` along and never needs this.

    :param reason: the text stored with the dead letter.
    :returns: the class.
    """
    return DeadLetterKind.of_reason(reason).value
