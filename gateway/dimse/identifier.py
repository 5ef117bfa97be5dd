"""Query/Retrieve identifiers: decode, check, key and encode them (PS3.4 C.2-C.6, PS3.7 9.1.2-9.1.4).

A C-FIND, C-MOVE or C-GET request carries an *Identifier*: a data set,
encoded in the transfer syntax of the request's presentation context (PS3.7
9.1.2.1.4, 9.1.3.1.4, 9.1.4.1.5), that names the Query/Retrieve Level
(0008,0052) and the keys to match or retrieve. Identifiers are small (a few
dozen elements; a retrieve may list a few thousand UIDs), but they come from
the network, so this module decodes them in two steps:

1. a structural walk with :class:`gateway.validate.DatasetWalker` (no
   recursion, no allocation from declared lengths, every length checked
   against its enclosing value, a cap on nesting depth and element count,
   PS3.5 7.1-7.5, HARDENING D01-D03, D18). pydicom alone is lenient: it
   silently truncates a value that runs past the end of the buffer;
2. then pydicom's ``read_dataset``, whose result is a
   :class:`pydicom.dataset.Dataset` that the handlers (``gateway/qr``) read
   and rewrite with the existing morph actions, and that
   :func:`encode_identifier` writes back. Every element is converted
   eagerly, so a value pydicom cannot convert fails here (as
   :class:`IdentifierError`) rather than later inside a handler.

pydicom is used (rather than a hand codec, as for command sets in
:mod:`gateway.dimse.commands`) because identifiers must be morphed, matched
and re-encoded in another transfer syntax, which the morph actions already
do on pydicom datasets; the two bounds above keep it strict and cheap. It is
given bytes only (``DicomBytesIO``), so the module stays sans-IO.

:func:`check_query` applies the rules a Q/R SCP enforces before passing a
request on (PS3.4 C.4.1.2, C.4.2.2, C.4.3.2; C.6.1 and C.6.2): the level
exists in the information model, the unique keys are syntactically valid
UIDs or UID lists, and, for a retrieve, the unique key of every level above
the retrieve level is present with a single value (hierarchical retrieve,
PS3.4 C.4.2.2.1 / C.6.1.2.2 / C.6.2.2.2); for a C-FIND from a requester
that did not negotiate relational queries, the same hierarchical rule for
the levels above (PS3.4 C.4.1.2.1, C.4.1.3.1). :func:`relational_keys`
says which of those keys a query lacks (what makes it relational, PS3.4
C.4.1.2.2, C.4.1.3.2). :func:`unique_key` gives a
response's key at its level, for duplicate removal across sources.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Final

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from gateway.dimse.status import Status
from gateway.validate import DatasetWalker, MalformedDataset

__all__ = [
    "IMPLICIT_VR_LE",
    "EXPLICIT_VR_LE",
    "EXPLICIT_VR_BE",
    "IdentifierError",
    "Model",
    "Verb",
    "LEVELS",
    "UNIQUE_KEYS",
    "sop_class_model",
    "decode_identifier",
    "encode_identifier",
    "check_query",
    "relational_keys",
    "unique_key",
    "uid_values",
    "is_valid_uid",
]

#: PS3.5 A.1: the default transfer syntax.
IMPLICIT_VR_LE: Final = "1.2.840.10008.1.2"
#: PS3.5 A.2.
EXPLICIT_VR_LE: Final = "1.2.840.10008.1.2.1"
#: PS3.5 A.3 (retired, still negotiated by some old archives).
EXPLICIT_VR_BE: Final = "1.2.840.10008.1.2.2"
#: transfer syntax -> (implicit VR, little endian). Deflate and the
#: compressed syntaxes are never accepted for a Q/R context, so an identifier
#: in any other syntax is an error.
_ENCODINGS: Final[dict[str, tuple[bool, bool]]] = {
    IMPLICIT_VR_LE: (True, True),
    EXPLICIT_VR_LE: (False, True),
    EXPLICIT_VR_BE: (False, False),
}

#: Bounds (HARDENING D02, D18). An identifier of a retrieve listing 10,000
#: SOP Instance UIDs is about 650 KiB, well inside 4 MiB.
MAX_IDENTIFIER_BYTES: Final = 4 * 1024 * 1024
#: Identifiers nest little (e.g. Issuer of Patient ID Qualifiers Sequence,
#: Referenced ... Sequence keys); pydicom's recursive reader stays far from
#: Python's recursion limit at this depth.
MAX_DEPTH: Final = 8
MAX_ELEMENTS: Final = 100_000

#: (0008,0052) Query/Retrieve Level.
QUERY_RETRIEVE_LEVEL: Final = 0x00080052
#: (0010,0020) Patient ID, (0010,0021) Issuer of Patient ID.
PATIENT_ID: Final = 0x00100020
ISSUER_OF_PATIENT_ID: Final = 0x00100021
#: (0020,000D), (0020,000E), (0008,0018).
STUDY_INSTANCE_UID: Final = 0x0020000D
SERIES_INSTANCE_UID: Final = 0x0020000E
SOP_INSTANCE_UID: Final = 0x00080018


class Model(Enum):
    """The Query/Retrieve Information Models the gateway serves (PS3.4 C.6.1, C.6.2)."""

    PATIENT_ROOT = "PATIENT_ROOT"
    STUDY_ROOT = "STUDY_ROOT"


class Verb(Enum):
    """The Q/R operation a SOP class stands for (PS3.4 C.4.1-C.4.3)."""

    FIND = "FIND"
    MOVE = "MOVE"
    GET = "GET"


#: PS3.4 C.6 Table C.6-1 (model SOP classes).
_SOP_CLASSES: Final[dict[str, tuple[Model, Verb]]] = {
    "1.2.840.10008.5.1.4.1.2.1.1": (Model.PATIENT_ROOT, Verb.FIND),
    "1.2.840.10008.5.1.4.1.2.1.2": (Model.PATIENT_ROOT, Verb.MOVE),
    "1.2.840.10008.5.1.4.1.2.1.3": (Model.PATIENT_ROOT, Verb.GET),
    "1.2.840.10008.5.1.4.1.2.2.1": (Model.STUDY_ROOT, Verb.FIND),
    "1.2.840.10008.5.1.4.1.2.2.2": (Model.STUDY_ROOT, Verb.MOVE),
    "1.2.840.10008.5.1.4.1.2.2.3": (Model.STUDY_ROOT, Verb.GET),
}

#: The levels of each model, top first (PS3.4 C.6.1.1: Patient Root has
#: PATIENT, STUDY, SERIES, IMAGE; C.6.2.1: Study Root has no PATIENT level,
#: patient attributes are keys of the STUDY level).
LEVELS: Final[dict[Model, tuple[str, ...]]] = {
    Model.PATIENT_ROOT: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    Model.STUDY_ROOT: ("STUDY", "SERIES", "IMAGE"),
}

#: The unique key of each level (PS3.4 C.6.1.1.2-C.6.1.1.5, C.6.2.1).
UNIQUE_KEYS: Final[dict[str, int]] = {
    "PATIENT": PATIENT_ID,
    "STUDY": STUDY_INSTANCE_UID,
    "SERIES": SERIES_INSTANCE_UID,
    "IMAGE": SOP_INSTANCE_UID,
}

#: PS3.5 9.1: digits and dots, components without leading zeros, 64 bytes at most.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_MAX_UID = 64


class IdentifierError(Exception):
    """An identifier the SCP refuses, with the status and Error Comment to answer.

    :ivar status: a failure status: 0xC000 (unable to process, PS3.4
        C.4.1.1.4 / C.4.2.1.5 / C.4.3.1.4 "Cxxx") for an identifier that is
        malformed or whose keys are invalid; 0xA900 (Identifier does not
        match SOP Class, same tables) for a level the information model does
        not have.
    :ivar comment: the Error Comment (0000,0902) (PS3.7 9.1.2.1.6); cut to
        64 characters when encoded.
    :ivar offending: the (0000,0901) Offending Element tags, possibly empty.
    """

    def __init__(self, comment: str, status: int = Status.CANNOT_UNDERSTAND, offending: tuple[int, ...] = ()) -> None:
        super().__init__(comment)
        self.comment = comment
        self.status = status
        self.offending = offending


def sop_class_model(sop_class_uid: str) -> tuple[Model, Verb] | None:
    """The information model and verb of a Q/R SOP class (PS3.4 C.6, Table C.6-1 and C.6-2).

    :param sop_class_uid: the Affected SOP Class UID of the request.
    :returns: ``(model, verb)``, or ``None`` for any other class.
    """
    return _SOP_CLASSES.get(sop_class_uid)


def is_valid_uid(value: str) -> bool:
    """Whether ``value`` is a syntactically valid UID (PS3.5 9.1).

    :param value: the UID, padding already stripped.
    :returns: True for digits and dots, no leading zero in a component, at most 64 bytes.
    """
    return len(value) <= _MAX_UID and _UID.fullmatch(value) is not None


def _encoding(transfer_syntax_uid: str) -> tuple[bool, bool]:
    """(implicit VR, little endian) of a transfer syntax an identifier may use.

    :raises IdentifierError: for any other transfer syntax.
    """
    encoding = _ENCODINGS.get(transfer_syntax_uid.rstrip("\x00 "))
    if encoding is None:
        raise IdentifierError(f"identifier in unsupported transfer syntax {transfer_syntax_uid}")
    return encoding


def _convert_all(ds: Dataset, depth: int = 0) -> None:
    """Convert every raw element of ``ds`` (and its items) to a DataElement.

    pydicom converts values lazily on access; converting them here makes a
    bad value fail at decode time. The depth is bounded by the walk.
    """
    for elem in ds:  # iterating converts each element
        if elem.VR == "SQ" and isinstance(elem.value, Sequence):
            for item in elem.value:
                _convert_all(item, depth + 1)


def decode_identifier(
    data: bytes,
    transfer_syntax_uid: str,
    *,
    max_bytes: int = MAX_IDENTIFIER_BYTES,
    max_depth: int = MAX_DEPTH,
    max_elements: int = MAX_ELEMENTS,
    convert: bool = True,
) -> Dataset:
    """Decode an identifier into a pydicom Dataset, strictly and within bounds.

    :param data: the identifier's bytes (all its P-DATA fragments joined).
    :param transfer_syntax_uid: the request's presentation context transfer
        syntax: Implicit VR LE, Explicit VR LE or Explicit VR BE.
    :param max_bytes: the largest identifier accepted.
    :param max_depth: the deepest sequence nesting accepted.
    :param max_elements: the most element headers accepted.
    :param convert: convert every element now (the default), so that a
        value pydicom cannot convert is an :class:`IdentifierError` here.
        Conversion is about two thirds of the cost (``bench/qr_wire.py``:
        ~250 us for a 15-element match); a caller that reads a few keys of
        a source's match and relays the original bytes may pass ``False``
        and must then expect pydicom's exceptions from the values it reads.
    :returns: the data set, every element converted unless ``convert`` is false.
    :raises IdentifierError: (0xC000) when the syntax is not one of the
        three, the identifier is empty, too large, too deep, or breaks an
        encoding rule of PS3.5, or pydicom cannot convert a value.
    """
    implicit, little = _encoding(transfer_syntax_uid)
    if not data:
        # PS3.7 9.1.2.1.4: the Identifier is mandatory in the request.
        raise IdentifierError("empty identifier")
    if len(data) > max_bytes:
        raise IdentifierError(f"identifier of {len(data)} bytes exceeds {max_bytes}")
    walker = DatasetWalker(transfer_syntax_uid.rstrip("\x00 "), max_depth=max_depth, max_elements=max_elements)
    try:
        walker.feed(data)
        walker.finish()
    except MalformedDataset as error:
        raise IdentifierError(f"malformed identifier: {error.comment}") from error
    try:
        ds = read_dataset(DicomBytesIO(data), implicit, little, bytelength=len(data))
        if convert:
            _convert_all(ds)
    except Exception as error:  # noqa: BLE001 - see below
        # pydicom signals a value it cannot convert with many exception
        # types (ValueError, struct.error, its own BytesLengthException, ...;
        # found by tests/unit/fuzz/test_fuzz_identifier.py); the walk has
        # already ruled out structural faults, and any of these means the
        # identifier cannot be processed: 0xC000, never an escape.
        raise IdentifierError(f"undecodable identifier: {type(error).__name__}") from error
    # PS3.7 6.3.1 / PS3.10 7.1: command (0000) and file meta (0002) elements
    # never belong in a data set; group 0004 is DICOMDIR only (PS3.3 F.3).
    for tag in ds.keys():
        if tag >> 16 < 0x0008:
            raise IdentifierError(
                f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) not allowed in an identifier", offending=(int(tag),)
            )
    return ds


def encode_identifier(ds: Dataset, transfer_syntax_uid: str) -> bytes:
    """Encode an identifier (e.g. a morphed query, or a response) in a transfer syntax.

    :param ds: the data set; elements without a VR get the dictionary's.
    :param transfer_syntax_uid: Implicit VR LE, Explicit VR LE or Explicit VR BE.
    :returns: the encoded data set (no preamble, no file meta).
    :raises IdentifierError: for another transfer syntax.
    :raises ValueError: if pydicom cannot encode a value in it.
    """
    implicit, little = _encoding(transfer_syntax_uid)
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit
    fp.is_little_endian = little
    write_dataset(fp, ds)
    return bytes(fp.getvalue())


def _text_values(elem: DataElement | None) -> tuple[str, ...] | None:
    """The values of a string element as a tuple (padding removed), or None if absent."""
    if elem is None:
        return None
    value = elem.value
    if value is None or value == "":
        return ()
    if isinstance(value, (list, tuple, MultiValue)):
        return tuple(str(v).strip(" \x00") for v in value)
    return (str(value).strip(" \x00"),)


def uid_values(ds: Dataset, tag: int) -> tuple[str, ...] | None:
    """The UIDs of a unique key: ``None`` when absent, ``()`` when empty (universal matching).

    :param ds: the identifier.
    :param tag: e.g. (0020,000D).
    :returns: the values, a list of UIDs being several (PS3.4 C.2.2.2.2).
    """
    return _text_values(ds.get(tag))


def _level(ds: Dataset, model: Model) -> str:
    """The identifier's Query/Retrieve Level, checked against the model (PS3.4 C.6.1.1.1, C.6.2.1.1)."""
    values = _text_values(ds.get(QUERY_RETRIEVE_LEVEL))
    if values is None:
        raise IdentifierError("Query/Retrieve Level (0008,0052) missing", offending=(QUERY_RETRIEVE_LEVEL,))
    if len(values) != 1 or not values[0]:
        raise IdentifierError("Query/Retrieve Level (0008,0052) must have one value", offending=(QUERY_RETRIEVE_LEVEL,))
    level = values[0]
    if level not in UNIQUE_KEYS:
        raise IdentifierError(f"unknown Query/Retrieve Level {level[:20]!r}", offending=(QUERY_RETRIEVE_LEVEL,))
    if level not in LEVELS[model]:
        # PS3.4 C.6.2.1: the Study Root model has no PATIENT level.
        raise IdentifierError(
            f"level {level} is not in the {model.value} model",
            status=Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            offending=(QUERY_RETRIEVE_LEVEL,),
        )
    return level


def _single_value(ds: Dataset, tag: int) -> bool:
    """Whether ``tag`` holds one value usable for Single Value Matching (PS3.4 C.2.2.2.1): no list, no wildcard."""
    values = _text_values(ds.get(tag))
    return bool(values) and len(values) == 1 and bool(values[0]) and not ("*" in values[0] or "?" in values[0])


def relational_keys(ds: Dataset, model: Model, level: str) -> tuple[int, ...]:
    """The unique keys above ``level`` that a C-FIND lacks as a single value: what makes it relational.

    PS3.4 C.4.1.2.1 (baseline, hierarchical): "the SCU shall supply a single
    value in the Unique Key attribute for each level above the
    Query/Retrieve level". A query without one of them (absent, empty,
    a list, or a wildcard) can only be answered by the relational search
    method (PS3.4 C.4.1.2.2, C.4.1.3.2), which is negotiated with the SOP
    Class Extended Negotiation sub-item, relational-queries byte (PS3.4 C.5.1.1).

    :param ds: the decoded identifier.
    :param model: its information model.
    :param level: its level (as :func:`check_query` returned it).
    :returns: the tags at fault, top level first; ``()`` for a hierarchical query.
    """
    levels = LEVELS[model]
    return tuple(UNIQUE_KEYS[above] for above in levels[: levels.index(level)] if not _single_value(ds, UNIQUE_KEYS[above]))


def check_query(ds: Dataset, model: Model, *, retrieve: bool = False, hierarchical: bool = False) -> str:
    """Check an identifier before it is passed on to the sources; return its level.

    C-FIND (``retrieve=False``, PS3.4 C.4.1.2): the level exists in the
    model; each UID unique key present is empty (universal matching) or a
    list of valid UIDs (single value or List of UID Matching, PS3.4
    C.2.2.2.2; wildcards are not allowed for UIDs, C.2.2.2.4). With
    ``hierarchical`` (the requester did not negotiate relational queries)
    the unique key of every level above is present with a single value
    (PS3.4 C.4.1.2.1, C.4.1.3.1; :func:`relational_keys`); the error names
    the missing keys as Offending Elements. Without it keys above the level
    are not required: the caller sends such a relational query only to
    sources that accepted relational queries.

    C-MOVE / C-GET (``retrieve=True``, PS3.4 C.4.2.2.1, C.6.1.2.2,
    C.6.2.2.2): additionally, the unique key of every level above the
    retrieve level is present with exactly one value, and the level's own
    unique key is present with one or more values (a list of UIDs). In the
    Patient Root model that starts at Patient ID; in the Study Root model at
    Study Instance UID.

    :param ds: the decoded identifier.
    :param model: the information model of the request's SOP class.
    :param retrieve: whether the request is a C-MOVE or C-GET.
    :param hierarchical: C-FIND only: refuse a relational query (the
        requester was not granted relational-queries, PS3.4 C.5.1.1).
    :returns: the level (``"PATIENT"``, ``"STUDY"``, ``"SERIES"`` or ``"IMAGE"``).
    :raises IdentifierError: naming the first rule broken.
    """
    level = _level(ds, model)
    levels = LEVELS[model]
    # Every UID key present must be syntactically valid (PS3.5 9.1).
    for tag in (STUDY_INSTANCE_UID, SERIES_INSTANCE_UID, SOP_INSTANCE_UID):
        values = uid_values(ds, tag)
        for value in values or ():
            if not is_valid_uid(value):
                raise IdentifierError(f"invalid UID {value[:30]!r} in ({tag >> 16:04X},{tag & 0xFFFF:04X})", offending=(tag,))
    if not retrieve:
        missing = relational_keys(ds, model, level) if hierarchical else ()
        if missing:
            # PS3.4 C.4.1.2.1: hierarchical queries name one value for each
            # unique key above the level; relational ones were not negotiated.
            # The comment fits the 64 characters of (0000,0902) and names the
            # first key; (0000,0901) names them all.
            first = missing[0]
            more = f" +{len(missing) - 1}" if len(missing) > 1 else ""
            raise IdentifierError(
                f"relational query not negotiated; no single ({first >> 16:04X},{first & 0xFFFF:04X}){more}", offending=missing
            )
        return level
    depth = levels.index(level)
    for above in levels[:depth]:
        tag = UNIQUE_KEYS[above]
        values = _text_values(ds.get(tag))
        if not values or len(values) != 1 or not values[0]:
            raise IdentifierError(
                f"retrieve at {level} needs one {above} unique key ({tag >> 16:04X},{tag & 0xFFFF:04X})",
                offending=(tag,),
            )
    own = UNIQUE_KEYS[level]
    values = _text_values(ds.get(own))
    if not values or not all(values):
        raise IdentifierError(
            f"retrieve at {level} needs its unique key ({own >> 16:04X},{own & 0xFFFF:04X})",
            offending=(own,),
        )
    return level


def unique_key(ds: Dataset, level: str) -> tuple[str, ...] | None:
    """The key that identifies a C-FIND response at its level, for duplicate removal.

    PATIENT: Patient ID with Issuer of Patient ID (0010,0021) (the same ID
    from two issuers is two patients, PS3.3 C.7.1.1); STUDY, SERIES,
    IMAGE: the Study, Series or SOP Instance UID (PS3.4 C.6.1.1.2-5).

    :param ds: a response identifier.
    :param level: its Query/Retrieve Level.
    :returns: ``(level, value...)``, or ``None`` when the response lacks a
        usable key (it then cannot be de-duplicated and is kept).
    :raises ValueError: for an unknown level.
    """
    if level not in UNIQUE_KEYS:
        raise ValueError(f"unknown level {level!r}")
    values = _text_values(ds.get(UNIQUE_KEYS[level]))
    if not values or len(values) != 1 or not values[0]:
        return None
    if level == "PATIENT":
        issuer = _text_values(ds.get(ISSUER_OF_PATIENT_ID)) or ("",)
        return (level, values[0], "\\".join(issuer))
    return (level, values[0])
