"""Fuzz targets for the decoders that read peer bytes, with their seed corpora.

Each target takes arbitrary bytes, drives one decoder, and lets only that
decoder's *documented* error through as a normal outcome; anything else
(``IndexError``, ``struct.error``, ``RecursionError``, ``MemoryError``, a
wrong return type) propagates and is a crash (HARDENING R4, and the issue's
"every crash it ever finds becomes a regression test").

The targets are shared by the bounded CI runs (``tests/unit/fuzz/test_*``,
hypothesis with ``deadline=None``) and by the longer documented run
``python bench/fuzz.py --seconds 600``.

Seeds are real bytes: the DCMTK captures and hand-written PDUs of
:mod:`tests.support.fixtures_pdu`, command sets built from PS3.7, and the
data sets of pydicom's bundled test files (never downloaded). Mutations
(:func:`mutate`) flip, insert, delete, truncate and overwrite 32-bit length
fields with boundary values, which is where decoders of this kind break.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Sequence
from functools import lru_cache

from gateway.dimse.commands import decode_command
from gateway.dimse.errors import DIMSEProtocolError
from gateway.dimse.pdv import CommandComplete, DatasetFragment, Reassembler
from gateway.ul import pdu as pdu_module
from gateway.ul.errors import PDUDecodeError
from gateway.ul.framing import PDUBuffer
from gateway.ul.pdu import PDU, PDV
from gateway.validate import DatasetSummary, MalformedDataset, walk_dataset

from tests.support import dataset_bytes as raw
from tests.support import fixtures_pdu

__all__ = [
    "TARGETS",
    "Target",
    "command_seeds",
    "dataset_seeds",
    "mutate",
    "pdu_seeds",
    "target_decode_command",
    "target_pdu_decode",
    "target_pdu_stream",
    "target_reassembler",
    "target_walk_dataset",
]

#: Boundary values written over 16- and 32-bit fields by :func:`mutate`.
_BOUNDARIES_32 = (0, 1, 2, 3, 4, 5, 6, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFE, 0xFFFFFFFF)
_BOUNDARIES_16 = (0, 1, 3, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)

#: Transfer syntaxes a data set is walked in (PS3.5 A.1, A.2, A.3, A.5, and an encapsulated one).
SYNTAXES = (
    raw.IMPLICIT_VR_LE,
    raw.EXPLICIT_VR_LE,
    raw.EXPLICIT_VR_BE,
    raw.DEFLATED,
    "1.2.840.10008.1.2.4.50",
)


# -- the targets --------------------------------------------------------------


def target_pdu_stream(data: bytes, chunk: int = 7) -> None:
    """Frame ``data`` with :class:`PDUBuffer`, fed ``chunk`` bytes at a time.

    Documented behaviour: ``feed`` never raises; it returns PDUs and at most
    one :class:`PDUDecodeError`, as the last element, after which the buffer
    is dead and returns ``[]``.

    :param data: the byte stream.
    :param chunk: bytes per ``feed`` call (at least 1).
    :raises AssertionError: if the documented contract is broken.
    """
    buffer = PDUBuffer(max_pdata_length=16384, max_other_length=65536)
    step = max(1, chunk)
    seen_error = False
    for start in range(0, len(data), step):
        out = buffer.feed(data[start:start + step])
        if seen_error:
            assert out == [], "a dead buffer returned output"
        for i, item in enumerate(out):
            if isinstance(item, PDUDecodeError):
                assert i == len(out) - 1, "an error was not the last element"
                assert buffer.dead
                seen_error = True
            else:
                assert isinstance(item, PDU), f"feed returned {type(item)!r}"
    assert buffer.buffered >= 0


def target_pdu_decode(data: bytes) -> None:
    """Decode ``data[0]`` as a PDU type and ``data[6:]`` as its body with :func:`gateway.ul.pdu.decode`.

    Documented behaviour: returns a PDU or raises :class:`PDUDecodeError`;
    "Nothing else is ever raised".

    :param data: type byte, 5 ignored bytes, then the body.
    """
    if not data:
        return
    try:
        result = pdu_module.decode(data[0], data[6:])
    except PDUDecodeError:
        return
    assert isinstance(result, PDU), f"decode returned {type(result)!r}"


def _pdvs(data: bytes) -> list[PDV]:
    """Cut bytes into PDVs: ``[length byte][control byte][context byte][data]`` repeated.

    :param data: the fuzz input.
    :returns: the PDVs (context IDs are forced odd, as :mod:`gateway.ul.pdu` decodes them).
    """
    out: list[PDV] = []
    pos = 0
    while pos + 3 <= len(data):
        length, control, context = data[pos], data[pos + 1], data[pos + 2]
        pos += 3
        out.append(PDV(context_id=context | 1, control=control & 0x03, data=bytes(data[pos:pos + length])))
        pos += length
    return out


def target_reassembler(data: bytes) -> None:
    """Feed PDVs cut from ``data`` to a :class:`Reassembler`.

    Documented behaviour: ``feed`` returns events or raises
    :class:`DIMSEProtocolError`; after the first error every later ``feed``
    raises it again (the association must be aborted).

    :param data: the fuzz input, cut by :func:`_pdvs`.
    """
    reassembler = Reassembler()
    for pdv in _pdvs(data):
        try:
            events = reassembler.feed(pdv)
        except DIMSEProtocolError:
            try:
                reassembler.feed(PDV(context_id=1, control=0x03, data=b""))
            except DIMSEProtocolError:
                return
            raise AssertionError("the reassembler accepted input after an error")
        for event in events:
            assert isinstance(event, (CommandComplete, DatasetFragment)), type(event)


def target_decode_command(data: bytes) -> None:
    """Decode ``data`` as a command set with :func:`decode_command`.

    Documented behaviour: returns a command or raises :class:`DIMSEProtocolError`.

    :param data: the candidate command set.
    """
    try:
        decode_command(data)
    except DIMSEProtocolError:
        return


def target_walk_dataset(data: bytes) -> None:
    """Walk ``data[1:]`` as a data set in the syntax chosen by ``data[0]``.

    Documented behaviour: returns a :class:`DatasetSummary` or raises
    :class:`MalformedDataset`. The inflation cap is 1 MiB and the element
    budget 100,000, so a fuzz input cannot make the run slow by design.

    :param data: syntax selector byte, then the data set.
    """
    if not data:
        return
    syntax = SYNTAXES[data[0] % len(SYNTAXES)]
    try:
        result = walk_dataset(io.BytesIO(data[1:]), syntax, max_inflated_size=1 << 20,
                              max_elements=100_000)
    except MalformedDataset:
        return
    assert isinstance(result, DatasetSummary), type(result)


# -- seed corpora -------------------------------------------------------------


@lru_cache(maxsize=1)
def pdu_seeds() -> tuple[bytes, ...]:
    """Whole PDUs: the DCMTK captures and the hand-written fixtures, plus a C-STORE P-DATA.

    :returns: the seeds.
    """
    seeds = [fixture for _name, fixture, _pdu in fixtures_pdu.ALL_FIXTURES]
    seeds.append(fixtures_pdu.ECHO_EXCHANGE if isinstance(fixtures_pdu.ECHO_EXCHANGE, bytes) else b"")
    command = raw.c_store_rq("1.2.3.4")
    seeds.append(pdu_module.pdata_pdu(1, 0x03, command))
    seeds.append(pdu_module.pdata_pdu(1, 0x02, raw.minimal("1.2.3.4")))
    # A whole exchange in one stream: association, echo, release.
    seeds.append(b"".join(seeds[:3]))
    return tuple(s for s in seeds if s)


@lru_cache(maxsize=1)
def command_seeds() -> tuple[bytes, ...]:
    """Command sets: DCMTK's C-ECHO-RQ and C-STORE-RQs built from PS3.7 9.3.1.1.

    :returns: the seeds.
    """
    return (
        fixtures_pdu.ECHO_RQ_COMMAND,
        raw.c_store_rq("1.2.826.0.1.3680043.10.543.1.2.3"),
        raw.c_store_rq("1.2.3", data_set_type=0x0101),
        raw.c_store_rq("1.2.3", command_field=0x0020),
    )


def reassembler_seeds() -> tuple[bytes, ...]:
    """Inputs for :func:`target_reassembler`: a command then data fragments, in its cut format.

    :returns: the seeds.
    """
    def cut(control: int, payload: bytes) -> bytes:
        return bytes([len(payload), control, 1]) + payload

    out = []
    for command in command_seeds():
        if len(command) > 255:
            continue
        data = raw.minimal("1.2.3.4")[:200]
        out.append(cut(0x03, command) + cut(0x00, data[:100]) + cut(0x02, data[100:200]))
        out.append(cut(0x01, command[:40]) + cut(0x03, command[40:]))
    return tuple(out)


@lru_cache(maxsize=1)
def dataset_seeds() -> tuple[bytes, ...]:
    """Data sets of pydicom's bundled files and hostile shapes, each prefixed by its syntax byte.

    :returns: the seeds (first byte selects the transfer syntax in :data:`SYNTAXES`).
    """
    from pydicom.data import get_testdata_file

    from tests.support.datasets import dataset_bytes

    files = {
        "MR_small_implicit.dcm": 0,
        "rtplan.dcm": 0,
        "CT_small.dcm": 1,
        "nested_priv_SQ.dcm": 0,
        "MR_small_bigendian.dcm": 2,
        "image_dfl.dcm": 3,
        "SC_rgb_jpeg_dcmtk.dcm": 4,
    }
    seeds: list[bytes] = []
    for name, syntax in files.items():
        path = get_testdata_file(name, download=False)
        if path:
            seeds.append(bytes([syntax]) + dataset_bytes(path)[:4096])
    seeds.append(b"\x01" + raw.minimal("1.2.3", extra=[raw.nested_sequences(4)]))
    seeds.append(b"\x01" + raw.minimal("1.2.3", extra=[raw.long_sequence(3)]))
    seeds.append(b"\x03" + raw.deflate_bomb("1.2.3", 4096))
    return tuple(seeds)


# -- mutation -----------------------------------------------------------------


def mutate(seed: bytes, operations: Sequence[tuple[int, int, int]]) -> bytes:
    """Apply byte-level mutations to a seed.

    Each operation is ``(kind, position, value)``; positions wrap around the
    current length. Kinds: 0 flip a byte, 1 insert a byte, 2 delete a byte,
    3 truncate, 4 write a boundary 32-bit value (LE), 5 the same big endian,
    6 write a boundary 16-bit value (LE), 7 duplicate a slice.

    :param seed: the starting bytes.
    :param operations: the mutations, applied in order.
    :returns: the mutated bytes.
    """
    data = bytearray(seed)
    for kind, position, value in operations:
        n = len(data)
        pos = position % (n + 1)
        kind %= 8
        if kind == 0 and n:
            data[pos % n] ^= (value & 0xFF) or 1
        elif kind == 1:
            data.insert(pos, value & 0xFF)
        elif kind == 2 and n:
            del data[pos % n]
        elif kind == 3:
            del data[pos:]
        elif kind in (4, 5) and n >= 4:
            at = pos % (n - 3)
            fmt = "<I" if kind == 4 else ">I"
            data[at:at + 4] = struct.pack(fmt, _BOUNDARIES_32[value % len(_BOUNDARIES_32)])
        elif kind == 6 and n >= 2:
            at = pos % (n - 1)
            data[at:at + 2] = struct.pack("<H", _BOUNDARIES_16[value % len(_BOUNDARIES_16)])
        elif kind == 7 and n:
            end = min(n, pos + 1 + value % 64)
            data[pos:pos] = data[pos % n:end]
    return bytes(data)


#: A fuzz target: bytes in, ``None`` out, or an unexpected exception (a crash).
Target = Callable[[bytes], None]

#: Every target by name, with the seeds that feed it (used by ``bench/fuzz.py``).
TARGETS: dict[str, tuple[Target, Callable[[], tuple[bytes, ...]]]] = {
    "pdu_stream": (target_pdu_stream, pdu_seeds),
    "pdu_decode": (target_pdu_decode, pdu_seeds),
    "reassembler": (target_reassembler, reassembler_seeds),
    "decode_command": (target_decode_command, command_seeds),
    "walk_dataset": (target_walk_dataset, dataset_seeds),
}


# -- hypothesis strategies (imported lazily: bench/fuzz.py uses them too) -----


def mutated(seeds: Callable[[], tuple[bytes, ...]]) -> "object":
    """A hypothesis strategy: a seed with up to 8 :func:`mutate` operations.

    :param seeds: the corpus function.
    :returns: a strategy of bytes.
    """
    from hypothesis import strategies as st

    operation = st.tuples(st.integers(0, 7), st.integers(0, 1 << 16), st.integers(0, 255))
    return st.builds(mutate, st.sampled_from(seeds()), st.lists(operation, max_size=8))


def arbitrary() -> "object":
    """A hypothesis strategy of arbitrary bytes up to 2 KiB.

    :returns: a strategy of bytes.
    """
    from hypothesis import strategies as st

    return st.binary(max_size=2048)
