"""What a DICOM destination's answer means for one entry: the C-STORE status table and network errors.

The DICOM sender (:mod:`gateway.send.dicom`) sends an instance and gets
either a C-STORE status or an exception; this module turns either into one
of the outcomes of :mod:`gateway.queue.outcome`. It lives on the forward
side, beside the network it knows about, so the queue imports nothing of
the network.

The status table follows PS3.7 Annex C and the Storage Service Class's
reserved ranges (PS3.4 Table B.2-1), with the decisions of the
store-and-forward issue (HARDENING decision 6): unknown codes are retried a
bounded number of times, then dead-lettered with the code.

Nothing here reads a clock, sleeps or does I/O.
"""

from __future__ import annotations

import dataclasses

from twisted.internet import error as _neterror

from gateway.associate import AssociationAborted, AssociationRejected, NoPresentationContext
from gateway.queue.outcome import DeadLetter, DeadLetterKind, Delivered, DestinationDown, Outcome, Retry
from gateway.queue.policy import RetrySettings
from gateway.tlslabels import destination_failure_label

__all__ = ["classify_status", "classify_error", "data_went_out"]

_REFUSED = DeadLetterKind.REFUSED


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
        return DeadLetter(f"data set does not match SOP class (status {code})", _REFUSED)
    # PS3.4 Table B.2-1: 0xCxxx cannot understand (permanent).
    if 0xC000 <= status <= 0xCFFF:
        return DeadLetter(f"cannot understand (status {code})", _REFUSED)
    # PS3.7 C.5: the general failure codes (0x0122, 0x0124, 0x0211, ...).
    if 0x0100 <= status <= 0x02FF:
        return DeadLetter(f"refused (status {code})", _REFUSED)
    # Unknown: bounded retries, then a dead letter naming the code (HARDENING F04).
    if attempts >= retry_config.unknown_status_attempts:
        return DeadLetter(f"unknown status {code} after {attempts} attempts", _REFUSED)
    return Retry(f"unknown status {code}")


def _is_tls_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a TLS handshake or verification failure (pyOpenSSL)."""
    try:
        from OpenSSL.SSL import Error as SSLError
    except ImportError:  # pragma: no cover - pyOpenSSL is a dependency of TLS support
        return False
    return isinstance(exc, SSLError)


def classify_error(exc: BaseException, *, data_sent: bool, connecting: bool = False) -> Outcome:
    """Decide what an exception raised while connecting or sending means (see :func:`_classify`).

    A destination-wide fault that is a TLS failure carries its label as data
    (:attr:`DestinationDown.tls_failure`, HARDENING F20), so observers (the
    audit trail's Security Alert) never read it back out of the reason text.

    :param exc: the exception.
    :param data_sent: whether the last fragment of the data set went out.
    :param connecting: whether the exception came from opening the association.
    :returns: the outcome.
    """
    outcome = _classify(exc, data_sent=data_sent, connecting=connecting)
    if isinstance(outcome, DestinationDown) and outcome.tls_failure is None:
        label = destination_failure_label(outcome.reason)
        if label is not None:
            outcome = dataclasses.replace(outcome, tls_failure=label)
    return outcome


def _classify(exc: BaseException, *, data_sent: bool, connecting: bool = False) -> Outcome:
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
        return DeadLetter(str(exc), DeadLetterKind.NO_CONTEXT)
    if isinstance(exc, (AssociationAborted, _neterror.ConnectionLost, _neterror.ConnectionDone)):
        if connecting:
            return DestinationDown(text)
        return Retry(text, ambiguous=data_sent)
    if connecting:
        # Any other failure to open an association is the destination's, not the instance's.
        return DestinationDown(text)
    return Retry(text)


def data_went_out(exc: BaseException) -> bool:
    """Whether the data set's last fragment had been sent when ``exc`` ended the send.

    :meth:`~gateway.associate.ClientAssociation.store` sets ``data_sent`` on
    the :class:`~gateway.associate.AssociationAborted` it raises. Without the
    attribute the text decides: "... while sending" and "not open" come
    before the last fragment, other texts (DIMSE timeout, A-ABORT) after it.
    """
    explicit = getattr(exc, "data_sent", None)
    if isinstance(explicit, bool):
        return explicit
    if not isinstance(exc, AssociationAborted):
        return False
    text = str(exc)
    return "while sending" not in text and "not open" not in text
