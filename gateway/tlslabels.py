"""The short labels of TLS failures, for logs, metrics and the audit trail (issue 12).

A leaf module (no pyOpenSSL, no Twisted): the bounded value set of the
``reason`` label of ``dicom_gateway_tls_handshake_failures_total``
(:data:`HANDSHAKE_FAILURE_REASONS`), the mapping of a failed handshake to one
of them (:func:`classify_handshake_failure`, given the exception and the
X.509 error numbers :mod:`gateway.tls` collected), and the labels of a
destination's TLS fault read back from its reason text
(:func:`destination_failure_label`). :mod:`gateway.tls` re-exports them.
"""

from __future__ import annotations

__all__ = ["HANDSHAKE_FAILURE_REASONS", "classify_handshake_failure", "destination_failure_label"]

#: Every reason label :func:`classify_handshake_failure` and the listener
#: report: the bounded value set of the ``reason`` label of
#: ``dicom_gateway_tls_handshake_failures_total``.
HANDSHAKE_FAILURE_REASONS: frozenset[str] = frozenset(
    {
        "unknown_ca",
        "invalid_ca",
        "expired",
        "not_yet_valid",
        "revoked",
        "crl_unavailable",
        "wrong_key_usage",
        "weak_key",
        "weak_signature",
        "no_certificate",
        "protocol_version",
        "no_shared_cipher",
        "not_tls",
        "certificate_rejected",
        "timeout",
        "oversized",
        "renegotiation",
        "closed",
        "other",
    }
)

#: X.509 verification error numbers (OpenSSL ``X509_V_ERR_*``) -> reason labels.
_VERIFY_REASONS: dict[int, str] = {
    2: "unknown_ca",  # unable to get issuer certificate
    3: "crl_unavailable",  # unable to get certificate CRL (CRL_CHECK, no CRL of that issuer)
    8: "crl_unavailable",  # CRL signature failure
    11: "crl_unavailable",  # CRL is not yet valid
    12: "crl_unavailable",  # CRL has expired
    9: "not_yet_valid",
    10: "expired",
    18: "unknown_ca",  # self-signed leaf
    19: "unknown_ca",  # self-signed certificate in chain
    20: "unknown_ca",  # unable to get local issuer certificate
    21: "unknown_ca",  # unable to verify the first certificate
    23: "revoked",
    24: "invalid_ca",
    26: "wrong_key_usage",  # invalid purpose
    66: "weak_key",  # X509_V_ERR_EE_KEY_TOO_SMALL
    67: "weak_key",  # X509_V_ERR_CA_KEY_TOO_SMALL
    68: "weak_signature",  # X509_V_ERR_CA_MD_TOO_WEAK
}

#: OpenSSL's words for the X.509 errors a destination's certificate typically fails with.
_VERIFY_TEXT: dict[int, str] = {
    2: "unable to get issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
    66: "EE certificate key too small",
    67: "CA certificate key too small",
    68: "CA signature digest algorithm too weak",
}


def _ssl_reason(error: BaseException) -> str:
    """The OpenSSL reason strings of an ``SSL.Error`` (``"no shared cipher"``), or its text."""
    args = getattr(error, "args", ())
    if args and isinstance(args[0], list):
        parts = [entry[2] for entry in args[0] if isinstance(entry, tuple) and len(entry) == 3 and entry[2]]
        if parts:
            return "; ".join(parts)
    return str(error) or type(error).__name__


def classify_handshake_failure(error: BaseException | None, verify_errors: list[int]) -> str:
    """A short reason label for a failed handshake, for logs, metrics and the audit trail.

    :param error: the exception that ended the connection, if any.
    :param verify_errors: X.509 verification error numbers seen during the handshake.
    :returns: one of ``unknown_ca``, ``invalid_ca``, ``expired``,
        ``not_yet_valid``, ``revoked``, ``crl_unavailable``,
        ``wrong_key_usage``, ``weak_key``, ``weak_signature``,
        ``no_certificate``, ``protocol_version``, ``no_shared_cipher``,
        ``not_tls``, ``oversized``, ``certificate_rejected`` (the peer
        refused *our* certificate), ``closed`` (the peer went away) or
        ``other``: all in :data:`HANDSHAKE_FAILURE_REASONS`.
    """
    for errno in verify_errors:
        if errno in _VERIFY_REASONS:
            return _VERIFY_REASONS[errno]
    text = _ssl_reason(error).lower() if error is not None else ""
    if "excessive message size" in text or "too long" in text:
        return "oversized"
    if "key too small" in text:
        return "weak_key"
    if "md too weak" in text or "digest too weak" in text:
        return "weak_signature"
    if "peer did not return a certificate" in text or "certificate required" in text:
        return "no_certificate"
    if "unsupported protocol" in text or "protocol version" in text or "version too low" in text:
        return "protocol_version"
    if "no shared cipher" in text or "no cipher" in text or "handshake failure" in text:
        return "no_shared_cipher"
    if "wrong version number" in text or "http request" in text or "unknown protocol" in text or "record layer" in text:
        return "not_tls"
    if "unknown ca" in text or "bad certificate" in text or "certificate unknown" in text:
        return "certificate_rejected"
    if "certificate verify failed" in text:
        return "unknown_ca"
    if error is None or not text or "connection" in text or "eof" in text:
        return "closed"
    return "other"

def destination_failure_label(reason: str) -> str | None:
    """A short label for a destination fault that :func:`describe_tls_failure` described, else ``None``.

    :param reason: the fault's reason (a queue ``last_error``).
    :returns: ``wrong_name`` (RFC 6125 name check), ``expired``,
        ``not_yet_valid``, ``unknown_ca``, ``weak_key``, or
        ``verify_failed`` / ``other`` when OpenSSL says no more; ``None``
        when the fault is not a TLS failure.
    """
    if "TLS failure" not in reason:
        return None
    text = reason.lower()
    if "expected name" in text:
        return "wrong_name"
    if "certificate has expired" in text:
        return "expired"
    if "not yet valid" in text:
        return "not_yet_valid"
    if "unable to get local issuer" in text or "self-signed" in text or "self signed" in text or "unknown ca" in text:
        return "unknown_ca"
    if "too small" in text or "too weak" in text:
        return "weak_key"
    if "certificate verify failed" in text:
        return "verify_failed"
    return "other"
