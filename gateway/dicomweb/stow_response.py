"""The Store Instances Response of STOW-RS, parsed and classified per instance (PS3.18 10.5.3).

A STOW-RS origin server answers a Store Instances request with an HTTP
status and, for 200, 202 and 409, a response module (PS3.18 Table 10.5.3-1)
saying what became of each instance:

- the Referenced SOP Sequence (0008,1199): instances stored, each with its
  Referenced SOP Class UID (0008,1150) and Instance UID (0008,1155), and a
  Warning Reason (0008,1196) when the server coerced or discarded something;
- the Failed SOP Sequence (0008,1198): instances not stored, each with a
  Failure Reason (0008,1197), the C-STORE status values of PS3.4 Table B.2-1
  (plus the general codes of PS3.7 C.5).

The HTTP status only summarises (PS3.18 10.5.3: 200 all stored, 202 some,
409 none), so each entry of the batch is classified from its own item by
:func:`classify_instances`, never from the status. :func:`parse` reads
``application/dicom+json`` (PS3.18 F.2) and ``application/dicom+xml`` (the
Native DICOM Model of PS3.19 A.1, possibly as the one part of a
``multipart/related`` body).

Everything is bounded, since the answer comes from the network (HARDENING):
the caller reads at most :data:`MAX_BODY` bytes, at most :data:`MAX_ITEMS`
items are read from each sequence, nesting deeper than Python can parse is a
:class:`ResponseError`, XML with a document type declaration is refused (no
entity can expand), and every text kept is cut to :data:`MAX_TEXT`
characters of printable ASCII.

Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Any, Final, Sequence

from gateway.queue.outcome import DeadLetter, DeadLetterKind, Delivered, Outcome, Retry
from gateway.queue.policy import RetrySettings

__all__ = [
    "InstanceResult",
    "MAX_BODY",
    "NOT_MENTIONED",
    "ResponseError",
    "StoreResponse",
    "classify_failure",
    "classify_instances",
    "parse",
    "parse_json",
    "parse_xml",
    "printable",
]

#: The largest response body read (a response names each instance in about 300 bytes).
MAX_BODY: Final = 4 * 1024 * 1024
#: Items read from one sequence.
MAX_ITEMS: Final = 100_000
#: Characters kept of any text taken from the response.
MAX_TEXT: Final = 200

# PS3.6 Table 6-1.
FAILED_SOP_SEQUENCE: Final = "00081198"
REFERENCED_SOP_SEQUENCE: Final = "00081199"
REFERENCED_SOP_CLASS_UID: Final = "00081150"
REFERENCED_SOP_INSTANCE_UID: Final = "00081155"
FAILURE_REASON: Final = "00081197"
WARNING_REASON: Final = "00081196"

#: The retry reason of an instance the response did not mention; the sender sends such an instance alone next time.
NOT_MENTIONED: Final = "the STOW-RS response did not mention this instance"

#: PS3.4 Table B.2-1 / PS3.7 C.5 codes with their own meaning here.
PROCESSING_FAILURE: Final = 0x0110
DUPLICATE_SOP_INSTANCE: Final = 0x0111
SOP_CLASS_NOT_SUPPORTED: Final = 0x0122


class ResponseError(ValueError):
    """The response body is not a Store Instances Response this module can read."""


@dataclass(frozen=True)
class InstanceResult:
    """One item of the Referenced or Failed SOP Sequence.

    :ivar sop_instance_uid: Referenced SOP Instance UID (0008,1155).
    :ivar sop_class_uid: Referenced SOP Class UID (0008,1150).
    :ivar reason: Warning Reason (0008,1196) of a referenced item, Failure
        Reason (0008,1197) of a failed one; ``None`` when absent.
    """

    sop_instance_uid: str
    sop_class_uid: str = ""
    reason: int | None = None


@dataclass(frozen=True)
class StoreResponse:
    """What the server said it stored and failed (PS3.18 Table 10.5.3-1).

    :ivar referenced: the Referenced SOP Sequence's items.
    :ivar failed: the Failed SOP Sequence's items.
    """

    referenced: tuple[InstanceResult, ...] = ()
    failed: tuple[InstanceResult, ...] = ()


_NOT_PRINTABLE: Final = re.compile(r"[^\x20-\x7e]")


def printable(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` cut to ``limit`` characters, anything but printable ASCII replaced by ``?``.

    For the server's own words kept in a dead letter's reason or a log line.
    """
    cut = text[:limit]
    return _NOT_PRINTABLE.sub("?", cut) + ("..." if len(text) > limit else "")


def _uid(value: Any) -> str:
    """A UID as the response gives it, cut and made printable (a UI value is at most 64 characters)."""
    return _NOT_PRINTABLE.sub("?", str(value)[:64]) if value is not None else ""


def _code(value: Any) -> int | None:
    """A US value (Failure/Warning Reason), ``None`` when absent or not a 16-bit number."""
    if isinstance(value, bool):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if 0 <= number <= 0xFFFF else None


# -- application/dicom+json (PS3.18 F.2) --------------------------------------------------


def _json_first(item: Any, tag: str) -> Any:
    """The first value of ``tag`` in a JSON data set object, ``None`` if absent."""
    if not isinstance(item, dict):
        return None
    attribute = item.get(tag)
    if not isinstance(attribute, dict):
        return None
    values = attribute.get("Value")
    if not isinstance(values, list) or not values:
        return None
    return values[0]


def _json_items(dataset: dict[str, Any], tag: str, reason_tag: str) -> tuple[InstanceResult, ...]:
    attribute = dataset.get(tag)
    if not isinstance(attribute, dict):
        return ()
    items = attribute.get("Value")
    if not isinstance(items, list):
        return ()
    results = []
    for item in items[:MAX_ITEMS]:
        uid = _json_first(item, REFERENCED_SOP_INSTANCE_UID)
        if uid is None:
            continue
        results.append(
            InstanceResult(_uid(uid), _uid(_json_first(item, REFERENCED_SOP_CLASS_UID)), _code(_json_first(item, reason_tag)))
        )
    return tuple(results)


def parse_json(body: bytes) -> StoreResponse:
    """Read an ``application/dicom+json`` response (PS3.18 F.2: one object, or an array of one).

    :raises ResponseError: not JSON, too deep, or not an object.
    """
    if len(body) > MAX_BODY:
        raise ResponseError(f"response body over {MAX_BODY} bytes")
    try:
        document = json.loads(body)
    except RecursionError:
        raise ResponseError("response nested too deeply") from None
    except ValueError as e:
        raise ResponseError(f"not JSON: {printable(str(e))}") from None
    if isinstance(document, list) and len(document) == 1:
        document = document[0]
    if not isinstance(document, dict):
        raise ResponseError("the JSON response is not a data set object")
    return StoreResponse(
        referenced=_json_items(document, REFERENCED_SOP_SEQUENCE, WARNING_REASON),
        failed=_json_items(document, FAILED_SOP_SEQUENCE, FAILURE_REASON),
    )


# -- application/dicom+xml (PS3.19 A.1, Native DICOM Model) -------------------------------


def _xml_first(item: ElementTree.Element, tag: str) -> str | None:
    for attribute in item.findall("DicomAttribute"):
        if attribute.get("tag", "").upper() == tag:
            value = attribute.find("Value")
            return None if value is None or value.text is None else value.text.strip()
    return None


def _xml_items(root: ElementTree.Element, tag: str, reason_tag: str) -> tuple[InstanceResult, ...]:
    for attribute in root.findall("DicomAttribute"):
        if attribute.get("tag", "").upper() != tag:
            continue
        results = []
        for item in attribute.findall("Item")[:MAX_ITEMS]:
            uid = _xml_first(item, REFERENCED_SOP_INSTANCE_UID)
            if uid is None:
                continue
            results.append(
                InstanceResult(_uid(uid), _uid(_xml_first(item, REFERENCED_SOP_CLASS_UID)), _code(_xml_first(item, reason_tag)))
            )
        return tuple(results)
    return ()


def _strip_xml_namespaces(root: ElementTree.Element) -> None:
    """PS3.19's schema puts the elements in a namespace some servers write and some do not."""
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag.startswith("{"):
            element.tag = element.tag.split("}", 1)[1]


def parse_xml(body: bytes) -> StoreResponse:
    """Read an ``application/dicom+xml`` response (a ``NativeDicomModel`` element, PS3.19 A.1).

    :raises ResponseError: not well-formed, a document type declaration
        (refused: no entity may expand), or another root element.
    """
    if len(body) > MAX_BODY:
        raise ResponseError(f"response body over {MAX_BODY} bytes")
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise ResponseError("XML with a document type declaration is refused")
    try:
        root = ElementTree.fromstring(body)
    except (ElementTree.ParseError, RecursionError) as e:
        raise ResponseError(f"not well-formed XML: {printable(str(e))}") from None
    _strip_xml_namespaces(root)
    if root.tag != "NativeDicomModel":
        raise ResponseError(f"the XML root element is {printable(str(root.tag), 40)}, not NativeDicomModel")
    return StoreResponse(
        referenced=_xml_items(root, REFERENCED_SOP_SEQUENCE, WARNING_REASON),
        failed=_xml_items(root, FAILED_SOP_SEQUENCE, FAILURE_REASON),
    )


def _first_part(body: bytes, content_type: str) -> tuple[str, bytes]:
    """The media type and content of the first part of a ``multipart/related`` body (RFC 2046 5.1)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        raise ResponseError("multipart response without a boundary")
    delimiter = b"--" + match.group(1).encode("latin-1")
    pieces = body.split(delimiter)
    if len(pieces) < 3:
        raise ResponseError("multipart response without a part")
    head, _, content = pieces[1].lstrip(b"\r\n").partition(b"\r\n\r\n")
    part_type = "application/dicom+xml"
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-type":
            part_type = value.decode("latin-1").strip()
    return part_type, content.removesuffix(b"\r\n")


def parse(content_type: str, body: bytes) -> StoreResponse:
    """Read a Store Instances Response in whichever of its media types it came (PS3.18 10.5.3, 8.7.3).

    :param content_type: the response's ``Content-Type`` header (empty if none).
    :param body: the body (at most :data:`MAX_BODY` bytes).
    :raises ResponseError: an unknown media type or an unreadable body.
    """
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "multipart/related":
        content_type, body = _first_part(body, content_type)
        media = content_type.split(";", 1)[0].strip().lower()
    if media in ("application/dicom+json", "application/json"):
        return parse_json(body)
    if media in ("application/dicom+xml", "application/xml", "text/xml"):
        return parse_xml(body)
    if not media:
        # No type given: the first byte tells.
        start = body.lstrip()[:1]
        if start in (b"{", b"["):
            return parse_json(body)
        if start == b"<":
            return parse_xml(body)
    raise ResponseError(f"unexpected response type {printable(media, 60) or '(none)'}")


# -- classification ------------------------------------------------------------------------


def classify_failure(reason: int | None, attempts: int, retry: RetrySettings) -> Retry | DeadLetter:
    """What a Failed SOP Sequence item's Failure Reason means for its entry (PS3.18 10.5.3, PS3.4 Table B.2-1).

    - 0xA7xx, refused, out of resources: retry;
    - 0xA9xx (data set does not match SOP class), 0xCxxx (cannot
      understand; 0xC122 transfer syntax not supported), 0x0122 (SOP class
      not supported), 0x0124 (not authorized) and the other general failures
      of PS3.7 C.5: dead letter with the code, the same bytes get the same answer;
    - 0x0110, processing failure: retry, at most ``unknown_status_attempts``
      attempts in all, then a dead letter with the code;
    - 0x0111, duplicate SOP instance: the server already holds an instance of
      that UID and did not list it as stored, so it does not say the content
      is the same: a dead letter with the code (an identical copy it keeps is
      reported in the Referenced SOP Sequence, and is delivered);
    - no reason, or an unknown code: as 0x0110.

    :param reason: the Failure Reason, ``None`` when the item has none.
    :param attempts: real attempts made, this one included.
    :param retry: the destination's retry settings.
    """
    if reason is None:
        if attempts >= retry.unknown_status_attempts:
            return DeadLetter(f"STOW-RS failed without a Failure Reason after {attempts} attempts", DeadLetterKind.REFUSED)
        return Retry("STOW-RS failed without a Failure Reason")
    code = f"0x{reason:04X}"
    if 0xA700 <= reason <= 0xA7FF:
        return Retry(f"STOW-RS refused, out of resources (Failure Reason {code})")
    if 0xA900 <= reason <= 0xA9FF:
        return DeadLetter(f"STOW-RS: data set does not match SOP class (Failure Reason {code})", DeadLetterKind.REFUSED)
    if 0xC000 <= reason <= 0xCFFF:
        return DeadLetter(f"STOW-RS: cannot understand (Failure Reason {code})", DeadLetterKind.REFUSED)
    if reason == DUPLICATE_SOP_INSTANCE:
        return DeadLetter(
            f"STOW-RS: the server already holds this SOP instance and did not say its content is the same "
            f"(Failure Reason {code})",
            DeadLetterKind.REFUSED,
        )
    if reason != PROCESSING_FAILURE and 0x0100 <= reason <= 0x02FF:
        return DeadLetter(f"STOW-RS refused (Failure Reason {code})", DeadLetterKind.REFUSED)
    if attempts >= retry.unknown_status_attempts:
        return DeadLetter(f"STOW-RS Failure Reason {code} after {attempts} attempts", DeadLetterKind.REFUSED)
    return Retry(f"STOW-RS Failure Reason {code}")


def classify_instances(
    uids: Sequence[str], attempts: Sequence[int], response: StoreResponse, retry: RetrySettings
) -> list[Outcome]:
    """Each entry's outcome from its own item of the response (PS3.18 10.5.3), in the order of ``uids``.

    - in the Referenced SOP Sequence: delivered (with the Warning Reason as
      the warning when there is one, PS3.4 B.2.3: 0xB000 coercion, 0xB006
      elements discarded, 0xB007 data set does not match SOP class);
    - in the Failed SOP Sequence: :func:`classify_failure`;
    - in both (a server's bug): failed wins, custody never assumes a copy;
    - in neither: retried on its own (the server said nothing of it).

    :param uids: the SOP Instance UIDs sent, one per entry.
    :param attempts: real attempts made for each entry, this one included.
    :param response: the parsed response.
    :param retry: the destination's retry settings.
    """
    failed = {item.sop_instance_uid: item for item in response.failed}
    referenced = {item.sop_instance_uid: item for item in response.referenced}
    outcomes: list[Outcome] = []
    for uid, tries in zip(uids, attempts):
        if uid in failed:
            outcomes.append(classify_failure(failed[uid].reason, tries, retry))
        elif uid in referenced:
            warning = referenced[uid].reason
            outcomes.append(Delivered(warning or 0, f"STOW-RS Warning Reason 0x{warning:04X}" if warning else ""))
        else:
            outcomes.append(Retry(NOT_MENTIONED))
    return outcomes
