"""DIMSE status codes and their categories (PS3.7 Annex C, PS3.4 B.2.3).

A status is a 16-bit value in (0000,0900) of every response. PS3.7 Annex C
sorts them into Success, Warning, Failure, Cancel and Pending; the service
class (PS3.4) defines the meaning of the ranges it reserves, e.g. the Storage
Service Class reserves 0xA7xx (out of resources), 0xA9xx (data set does not
match SOP class), 0xCxxx (cannot understand) and 0xB000/0xB006/0xB007
(warnings, PS3.4 Table B.2-1).
"""

from __future__ import annotations

from enum import Enum, IntEnum


class Status(IntEnum):
    """Named status codes used by the gateway (PS3.7 Annex C, PS3.4 Table B.2-1)."""

    # PS3.7 C.1.1: the operation completed successfully.
    SUCCESS = 0x0000
    # Warning used by the DIMSE-N services (PS3.7 10.1): requested optional attributes not supported.
    WARNING_OPTIONAL_ATTRIBUTES_NOT_SUPPORTED = 0x0001
    # PS3.7 C.4: attribute list error (warning).
    ATTRIBUTE_LIST_ERROR = 0x0107
    # PS3.7 C.4: attribute value out of range (warning).
    ATTRIBUTE_VALUE_OUT_OF_RANGE = 0x0116
    # PS3.4 Table B.2-1: coercion of data elements.
    COERCION_OF_DATA_ELEMENTS = 0xB000
    # PS3.4 Table B.2-1: elements discarded.
    ELEMENTS_DISCARDED = 0xB006
    # PS3.4 Table B.2-1: data set does not match SOP class (warning variant).
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007
    # PS3.4 Table B.2-1: refused, out of resources (0xA7xx).
    OUT_OF_RESOURCES = 0xA700
    # PS3.4 Table B.2-1: error, data set does not match SOP class (0xA9xx).
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    # PS3.4 Table B.2-1: error, cannot understand (0xCxxx).
    CANNOT_UNDERSTAND = 0xC000
    # PS3.7 C.5: refused, SOP class not supported.
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    # PS3.7 C.5: refused, not authorized.
    NOT_AUTHORIZED = 0x0124
    # PS3.7 C.5: unrecognized operation.
    UNRECOGNIZED_OPERATION = 0x0211
    # PS3.7 C.5: processing failure.
    PROCESSING_FAILURE = 0x0110
    # PS3.7 C.5: invalid object instance.
    INVALID_OBJECT_INSTANCE = 0x0117
    # The DIMSE-N failures below are the general codes of PS3.7 C.5 that
    # N-ACTION (PS3.7 10.1.4.1.10) and N-EVENT-REPORT (PS3.7 10.1.1.1.8) may
    # answer, and that the Storage Commitment Failure Reason (0008,1197)
    # reuses (PS3.3 C.14.1.1).
    # PS3.7 C.5: no such SOP instance (N-ACTION, N-EVENT-REPORT).
    NO_SUCH_OBJECT_INSTANCE = 0x0112
    # PS3.7 C.5: no such event type (N-EVENT-REPORT).
    NO_SUCH_EVENT_TYPE = 0x0113
    # PS3.7 C.5: no such argument (N-ACTION, N-EVENT-REPORT).
    NO_SUCH_ARGUMENT = 0x0114
    # PS3.7 C.5: invalid argument value (N-ACTION, N-EVENT-REPORT).
    INVALID_ARGUMENT_VALUE = 0x0115
    # PS3.7 C.5: no such SOP class (N-ACTION, N-EVENT-REPORT).
    NO_SUCH_SOP_CLASS = 0x0118
    # PS3.7 C.5: class-instance conflict (N-ACTION, N-EVENT-REPORT).
    CLASS_INSTANCE_CONFLICT = 0x0119
    # PS3.7 C.5: missing attribute (listed for N-CREATE, PS3.7 10.1.5; not in
    # the N-ACTION list of 10.1.4.1.10, see gateway/dimse/commitment.py).
    MISSING_ATTRIBUTE = 0x0120
    # PS3.7 C.5: missing attribute value (N-CREATE/N-SET; same remark).
    MISSING_ATTRIBUTE_VALUE = 0x0121
    # PS3.7 C.5: no such action (N-ACTION).
    NO_SUCH_ACTION = 0x0123
    # PS3.7 C.5: duplicate invocation (every DIMSE-N service).
    DUPLICATE_INVOCATION = 0x0210
    # PS3.7 C.5: mistyped argument (N-ACTION, N-EVENT-REPORT).
    MISTYPED_ARGUMENT = 0x0212
    # PS3.7 C.5: resource limitation (every DIMSE-N service).
    RESOURCE_LIMITATION = 0x0213
    # PS3.7 C.3: the operation was cancelled (C-CANCEL).
    CANCEL = 0xFE00
    # PS3.7 C.2: pending, matches are continuing.
    PENDING = 0xFF00
    # PS3.7 C.2: pending, some optional keys were not supported.
    PENDING_WARNING = 0xFF01


class StatusCategory(Enum):
    """The five status types of PS3.7 Annex C."""

    SUCCESS = "Success"
    WARNING = "Warning"
    FAILURE = "Failure"
    CANCEL = "Cancel"
    PENDING = "Pending"


#: General codes in the 0x00xx-0x02xx space that are warnings: PS3.7 C.4
#: lists 0x0107 (attribute list error) and 0x0116 (attribute value out of
#: range); 0x0001 (optional attributes not supported) is the warning of the
#: DIMSE-N services. Every other general code is a failure (PS3.7 C.5).
_GENERAL_WARNINGS = frozenset({0x0001, 0x0107, 0x0116})


def category(status: int) -> StatusCategory:
    """Classify a DIMSE status code (PS3.7 Annex C).

    Ranges: 0x0000 success; 0xFF00/0xFF01 pending (C.2); 0xFE00 cancel
    (C.3); 0x0001, 0x0107, 0x0116 and 0xBxxx warnings (C.4, PS3.4 B.2.3);
    everything else, in particular 0xAxxx, 0xCxxx and the general failure
    codes 0x01xx/0x02xx of C.5, is a failure. A code the standard
    does not define (e.g. 0xD123) is a failure too: treating an unknown code
    as success could lose an instance.

    :param status: the 16-bit value of (0000,0900).
    :returns: the category.
    :raises ValueError: if ``status`` does not fit in 16 bits.
    """
    # (0000,0900) is a US: anything outside 0..0xFFFF is a caller bug.
    if not 0 <= status <= 0xFFFF:
        raise ValueError(f"status {status!r} is not a 16-bit value")
    # PS3.7 C.1: exactly one success code.
    if status == 0x0000:
        return StatusCategory.SUCCESS
    # PS3.7 C.2: the two pending codes used by C-FIND/C-GET/C-MOVE.
    if status in (0xFF00, 0xFF01):
        return StatusCategory.PENDING
    # PS3.7 C.3: the cancel code.
    if status == 0xFE00:
        return StatusCategory.CANCEL
    # PS3.4 B.2.3 and other service classes: 0xBxxx are warnings.
    if 0xB000 <= status <= 0xBFFF:
        return StatusCategory.WARNING
    # PS3.7 C.4: the general warning codes.
    if status in _GENERAL_WARNINGS:
        return StatusCategory.WARNING
    # 0xAxxx, 0xCxxx, the general failures and unknown codes.
    return StatusCategory.FAILURE
