"""PDV reassembly into DIMSE messages, and fragmentation of outgoing ones (PS3.8 Annex E).

Theory of operation
===================

A DIMSE message is a command set, optionally followed by one data set
(PS3.7 6.3). On the wire each is cut into *fragments*; each fragment travels
in one presentation data value (PDV) item whose first byte, the message
control header, says whether it is command or data (bit 0) and whether it is
the last fragment of that part (bit 1) (PS3.8 E.2). Bits 2-7 are "never
checked by the receiver" (E.2), so we never look at them (HARDENING P25).

PS3.8 E.1 adds the encapsulation rules this module enforces:

1. every fragment of one message uses the same presentation context ID;
2. fragments of different messages are never interleaved: a message's last
   fragment precedes the next message's first one;
3. the command comes first, and the data set (if the command's
   CommandDataSetType announces one, PS3.7 E.1) follows it;
4. "each fragment of a message shall consist of an even number of bytes"
   (E.1, with the note that no padding is needed because PS3.5 encodes
   everything on even boundaries).

On rule 4 and interoperability: DCMTK and pynetdicom cut fragments at
``max_pdu_length - 6`` bytes (4 bytes of PDV item length, 1 of context ID,
1 of control header, PS3.8 9.3.5.1). That is even whenever the maximum
length *we* advertise is even, and ours always is, so enforcing rule 4 on
receipt does not break them. An odd fragment therefore means a broken
encoder (or a dataset of odd length, itself invalid PS3.5); HARDENING P24
answers it with A-ABORT(0,0). On sending, :func:`max_fragment_size` rounds
down to an even size so that a peer advertising an odd maximum still gets
even fragments.

The :class:`Reassembler` is a small state machine, one per association::

    AWAIT_COMMAND --cmd fragment--> IN_COMMAND --cmd last, no data set--> AWAIT_COMMAND
                                         |
                                         +--cmd last, data set--> IN_DATASET --data last--> AWAIT_COMMAND

Command fragments are joined (a command set is small; we cap it at 64 KiB)
and decoded when the last one arrives, giving one :class:`CommandComplete`.
Data fragments are *never* buffered: each one is handed on at once as a
:class:`DatasetFragment`, so memory does not grow with the instance size
(HARDENING L4; pynetdicom's chunked-receive idea). Any violation raises
:class:`~gateway.dimse.errors.DIMSEProtocolError`, after which the
reassembler is poisoned: every further :meth:`Reassembler.feed` raises too,
since the association is being aborted (HARDENING R2: A-ABORT(0,0)).

This module is sans-IO: it imports nothing that does I/O or keeps time.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Union

from gateway.dimse.commands import Command, decode_command
from gateway.dimse.errors import DIMSEProtocolError
from gateway.ul.pdu import PDV

#: PS3.8 9.3.5.1: a PDV item costs 4 (item length) + 1 (context ID) + 1
#: (message control header) bytes besides its fragment, and the maximum
#: length the peer announces bounds the variable field of P-DATA-TF, i.e. the
#: PDV items (PS3.8 D.1). With one PDV per PDU, fragment = max length - 6.
PDV_OVERHEAD = 6

#: Our cap on a command set: real ones are under 1 KiB; 64 KiB leaves room
#: for long error comments and unknown elements (HARDENING P24, R4).
MAX_COMMAND_LENGTH = 64 * 1024

#: The largest P-DATA-TF variable field we send when the caller gives no cap.
DEFAULT_SEND_CAP = 64 * 1024

#: PS3.8 E.2 message control header bits.
_COMMAND_BIT = 0x01
_LAST_BIT = 0x02


@dataclass(frozen=True)
class CommandComplete:
    """A whole command set has arrived and decoded.

    :ivar context_id: the presentation context it came on.
    :ivar command: the decoded command.
    :ivar has_dataset: whether data set fragments follow (PS3.7 E.1).
    """

    context_id: int
    command: Command
    has_dataset: bool


@dataclass(frozen=True)
class DatasetFragment:
    """One data set fragment, handed on as soon as it arrives.

    :ivar context_id: the presentation context it came on.
    :ivar data: the fragment bytes, without the control header. It is the
        ``bytes`` object of the incoming :class:`~gateway.ul.pdu.PDV`,
        passed on without a copy (always ``bytes``, never a memoryview).
    :ivar last: whether this is the data set's last fragment.
    """

    context_id: int
    data: bytes
    last: bool


#: What :meth:`Reassembler.feed` yields.
ReassemblyEvent = Union[CommandComplete, DatasetFragment]


class _Phase(Enum):
    """Where the reassembler is within a message (see the theory of operation)."""

    AWAIT_COMMAND = "await-command"
    IN_COMMAND = "in-command"
    IN_DATASET = "in-dataset"
    BROKEN = "broken"


class Reassembler:
    """Turn the PDVs of one association into DIMSE messages (PS3.8 Annex E).

    :param max_command_length: the cap on a joined command set, in bytes.
    """

    def __init__(self, max_command_length: int = MAX_COMMAND_LENGTH) -> None:
        self._max_command_length = max_command_length
        self._phase = _Phase.AWAIT_COMMAND
        # Context ID of the message in progress, None between messages.
        self._context_id: int | None = None
        # Command fragments received so far for the message in progress.
        self._command_parts: list[bytes] = []
        self._command_length = 0
        # Whether the previous complete command announced a data set; only
        # used to word the error for stray data (HARDENING P24).
        self._previous_had_no_dataset = False

    @property
    def idle(self) -> bool:
        """Whether no message is partly received (e.g. to judge an A-RELEASE-RQ, HARDENING P29)."""
        return self._phase is _Phase.AWAIT_COMMAND

    @property
    def context_id(self) -> int | None:
        """The presentation context of the message in progress, or ``None``."""
        return self._context_id

    def feed(self, pdv: PDV) -> list[ReassemblyEvent]:
        """Process one PDV.

        :param pdv: the next PDV of the association, in arrival order.
        :returns: zero or one event: a :class:`CommandComplete` when the last
            command fragment arrives, a :class:`DatasetFragment` for every data
            fragment.
        :raises DIMSEProtocolError: on any encapsulation violation, or if a
            previous call already raised.
        """
        try:
            return self._feed(pdv)
        except DIMSEProtocolError:
            # Never stay half-transitioned: a failed reassembler stays failed.
            self._phase = _Phase.BROKEN
            self._command_parts = []
            raise

    def _feed(self, pdv: PDV) -> list[ReassemblyEvent]:
        """Implement :meth:`feed` without the poisoning wrapper."""
        if self._phase is _Phase.BROKEN:
            raise DIMSEProtocolError("reassembler already failed; the association must be aborted")
        # PS3.8 E.1: "each fragment of a message shall consist of an even
        # number of bytes" (HARDENING P24).
        if len(pdv.data) % 2:
            raise DIMSEProtocolError(
                f"odd-length {'command' if pdv.is_command else 'data'} fragment "
                f"({len(pdv.data)} bytes) on context {pdv.context_id}"
            )
        # PS3.8 E.1: every fragment of one message uses the same context.
        if self._context_id is not None and pdv.context_id != self._context_id:
            raise DIMSEProtocolError(
                f"fragment on context {pdv.context_id} while a message on context "
                f"{self._context_id} is in progress"
            )
        if pdv.is_command:
            return self._feed_command(pdv)
        return self._feed_data(pdv)

    def _feed_command(self, pdv: PDV) -> list[ReassemblyEvent]:
        """Handle a command fragment (PS3.8 E.1, E.2 bit 0 set)."""
        # PS3.8 E.1: no interleaving, so no command while a data set is open.
        if self._phase is _Phase.IN_DATASET:
            raise DIMSEProtocolError(
                f"command fragment on context {pdv.context_id} before the last fragment "
                "of the previous data set"
            )
        # First fragment of a new message: remember its context.
        if self._phase is _Phase.AWAIT_COMMAND:
            self._phase = _Phase.IN_COMMAND
            self._context_id = pdv.context_id
        # Cap before joining (HARDENING R4): a hostile peer could otherwise
        # make us buffer an endless "command".
        self._command_length += len(pdv.data)
        if self._command_length > self._max_command_length:
            raise DIMSEProtocolError(
                f"command set exceeds {self._max_command_length} bytes on context {pdv.context_id}"
            )
        self._command_parts.append(pdv.data)
        if not pdv.is_last:
            return []
        # Last command fragment: join and decode (raises DIMSEProtocolError).
        data = b"".join(self._command_parts)
        self._command_parts = []
        self._command_length = 0
        command = decode_command(data)
        context_id = pdv.context_id
        if command.has_dataset:
            # PS3.7 E.1: CommandDataSetType != 0x0101, a data set follows.
            self._phase = _Phase.IN_DATASET
        else:
            self._phase = _Phase.AWAIT_COMMAND
            self._context_id = None
        self._previous_had_no_dataset = not command.has_dataset
        return [CommandComplete(context_id, command, command.has_dataset)]

    def _feed_data(self, pdv: PDV) -> list[ReassemblyEvent]:
        """Handle a data set fragment (PS3.8 E.1, E.2 bit 0 clear)."""
        # PS3.8 E.1: the command's fragments come first.
        if self._phase is _Phase.IN_COMMAND:
            raise DIMSEProtocolError(
                f"data fragment on context {pdv.context_id} before the last command fragment"
            )
        # Between messages: data with no command that announced a data set.
        if self._phase is _Phase.AWAIT_COMMAND:
            if self._previous_had_no_dataset:
                raise DIMSEProtocolError(
                    f"data fragment on context {pdv.context_id} for a command whose "
                    "CommandDataSetType announced no data set"
                )
            raise DIMSEProtocolError(
                f"data fragment on context {pdv.context_id} with no command pending"
            )
        # IN_DATASET: hand the fragment on without buffering it.
        if pdv.is_last:
            self._phase = _Phase.AWAIT_COMMAND
            self._context_id = None
            self._previous_had_no_dataset = False
        return [DatasetFragment(pdv.context_id, pdv.data, pdv.is_last)]


# ---------------------------------------------------------------------------
# Fragmentation for sending
# ---------------------------------------------------------------------------


def max_fragment_size(max_pdu_length: int, our_cap: int) -> int:
    """The largest fragment we may put in one PDV for a peer.

    PS3.8 D.1: the peer's Maximum Length bounds the variable field of the
    P-DATA-TF PDUs we send it, and 0 means no limit, in which case our own
    cap applies (never "unlimited", HARDENING P15). With one PDV per PDU the
    fragment is that limit minus :data:`PDV_OVERHEAD` (PS3.8 9.3.5.1), rounded
    down to an even number (PS3.8 E.1).

    :param max_pdu_length: the peer's maximum length received, 0 = unlimited.
    :param our_cap: the largest variable field we are willing to send.
    :returns: an even fragment size, at least 2.
    :raises ValueError: if either limit is negative, or the effective limit is
        below 8 bytes: no even, non-empty fragment fits, so no P-DATA can be
        sent to that peer at all (the negotiation refuses such peers first).
    """
    if max_pdu_length < 0 or our_cap < 0:
        raise ValueError(f"negative maximum length ({max_pdu_length}, {our_cap})")
    limit = our_cap if max_pdu_length == 0 else min(max_pdu_length, our_cap)
    # Python ints do not wrap, but the check keeps the meaning explicit
    # (dicom-rs #771: a subtraction that wrapped gave a huge fragment size).
    if limit < PDV_OVERHEAD + 2:
        raise ValueError(f"maximum length {limit} leaves no room for an even fragment")
    return (limit - PDV_OVERHEAD) & ~1


def fragment(context_id: int, data: bytes, fragment_size: int, *, command: bool) -> list[PDV]:
    """Cut one message part into PDVs with the right control headers (PS3.8 E.2).

    :param context_id: the presentation context ID (odd, 1-255).
    :param data: the whole command set or (small) data set.
    :param fragment_size: from :func:`max_fragment_size`; must be even and positive.
    :param command: True for a command set, False for a data set.
    :returns: at least one PDV; only the last has bit 1 set. Empty data gives
        a single empty last fragment.
    :raises ValueError: if ``fragment_size`` is not a positive even number.
    """
    if fragment_size < 2 or fragment_size % 2:
        raise ValueError(f"fragment size {fragment_size} is not a positive even number")
    base = _COMMAND_BIT if command else 0
    starts = range(0, max(len(data), 1), fragment_size)
    pdvs = []
    for start in starts:
        last = start + fragment_size >= len(data)
        pdvs.append(PDV(context_id, base | (_LAST_BIT if last else 0), data[start : start + fragment_size]))
    return pdvs


def fragment_command(
    context_id: int, data: bytes, max_pdu_length: int, our_cap: int = DEFAULT_SEND_CAP
) -> list[PDV]:
    """Fragment an encoded command set for a peer (PS3.8 E.1, E.2).

    :param context_id: the presentation context ID.
    :param data: the output of :func:`~gateway.dimse.commands.encode_command`.
    :param max_pdu_length: the peer's maximum length received, 0 = unlimited.
    :param our_cap: our own limit on what we send.
    :returns: the command PDVs, the last one flagged last.
    """
    return fragment(context_id, data, max_fragment_size(max_pdu_length, our_cap), command=True)
