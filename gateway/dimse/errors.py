"""Errors of the DIMSE layer (PS3.7 and PS3.8 Annex E).

The DIMSE layer is the upper layer's *service-user*: when a peer breaks the
rules of message encapsulation (PS3.8 Annex E) or sends a command set that
cannot be parsed or correlated (PS3.7 6.3, 9.3), no DIMSE response can be
given, so the association answers with A-ABORT, source 0 (service-user),
reason 0 (not specified); see HARDENING rule R2.
"""

from __future__ import annotations


class DIMSEProtocolError(Exception):
    """A violation of DIMSE message encapsulation or command set encoding.

    Raised by :func:`gateway.dimse.commands.decode_command` and by
    :class:`gateway.dimse.pdv.Reassembler`. The adapter that catches it sends
    A-ABORT(0, 0) (PS3.8 9.3.8; HARDENING R2) and discards any partial
    instance.

    :param message: a human-readable description for logs; it never contains
        data set values, only structure (tags, lengths, context IDs).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
