"""What a lossy copy must say about itself (PS3.3 C.7.6.1.1.5, issue 17).

PS3.3 C.7.6.1.1.5 (Lossy Image Compression): once an image has been lossy
compressed, Lossy Image Compression (0028,2110) is "01" and stays so;
Lossy Image Compression Ratio (0028,2112) and Method (0028,2114) record each
lossy step, in order (multi-valued, one value per step). PS3.3
C.7.6.1.1.5 and C.7.6.1.1.2 (Image Type): the copy is a new instance with
a new SOP Instance UID and Image Type value 1 DERIVED. The source is kept
as a reference in Source Image Sequence (0008,2112) with Purpose of
Reference (121320, DCM, "Uncompressed predecessor"), and Derivation Code
Sequence (0008,9215) says (113040, DCM, "Lossy Compression") (PS3.16 CID 7203, 7202).

The new SOP Instance UID is derived from the source's and the target, so
every attempt to send the same entry makes the same copy (a retried send is
a duplicate the archive recognises, not a second instance): a "2.25" UID
(PS3.5 B.2) from a name-based UUID (RFC 9562 version 8, SHA-256).
"""

from __future__ import annotations

import hashlib
import uuid

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import JPEG2000, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless

__all__ = ["LOSSY_SOURCE_METHOD", "derived_uid", "mark_lossy", "mark_lossy_source"]

#: Lossy source syntaxes and their Lossy Image Compression Method (PS3.3 C.7.6.1.1.5.1 defined terms).
LOSSY_SOURCE_METHOD: dict[str, str] = {
    JPEGBaseline8Bit: "ISO_10918_1",
    JPEGExtended12Bit: "ISO_10918_1",
    JPEGLSNearLossless: "ISO_14495_1",
    JPEG2000: "ISO_15444_1",
}


def derived_uid(source_uid: str, target_syntax: str) -> str:
    """The SOP Instance UID of the lossy copy of ``source_uid`` in ``target_syntax`` (stable, PS3.5 B.2)."""
    digest = bytearray(hashlib.sha256(f"{source_uid}\0{target_syntax}".encode("ascii")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x80  # version 8 (RFC 9562 5.8)
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC's variant
    return f"2.25.{uuid.UUID(bytes=bytes(digest)).int}"


def _values(ds: Dataset, keyword: str) -> list[str]:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    if isinstance(value, (list, MultiValue)):
        return [str(v) for v in value]
    return [str(value)]


def mark_lossy_source(ds: Dataset, source_syntax: str) -> None:
    """Flag a copy decoded from a lossy source syntax as lossy if the source did not (PS3.3 C.7.6.1.1.5)."""
    method = LOSSY_SOURCE_METHOD.get(source_syntax)
    if method is None or ds.get("LossyImageCompression") == "01":
        return
    ds.LossyImageCompression = "01"
    if not _values(ds, "LossyImageCompressionMethod"):
        ds.LossyImageCompressionMethod = method


def mark_lossy(ds: Dataset, *, ratio: float, method: str, new_uid: str) -> None:
    """Make ``ds`` the lossy, derived copy of itself (PS3.3 C.7.6.1.1.5).

    :param ds: the copy's data set (its SOP Instance UID still the source's).
    :param ratio: uncompressed size / compressed size of this step.
    :param method: this step's Lossy Image Compression Method.
    :param new_uid: the copy's SOP Instance UID.
    """
    source_class = str(ds.get("SOPClassUID", ""))
    source_uid = str(ds.get("SOPInstanceUID", ""))
    ds.LossyImageCompression = "01"
    ratios = _values(ds, "LossyImageCompressionRatio")
    methods = _values(ds, "LossyImageCompressionMethod")
    ds.LossyImageCompressionRatio = [*ratios, f"{ratio:.4g}"[:16]]
    ds.LossyImageCompressionMethod = [*methods, method]
    image_type = _values(ds, "ImageType") or ["DERIVED", "SECONDARY"]
    image_type[0] = "DERIVED"
    if len(image_type) < 2:
        image_type.append("SECONDARY")
    ds.ImageType = image_type
    reference = Dataset()
    reference.ReferencedSOPClassUID = source_class
    reference.ReferencedSOPInstanceUID = source_uid
    purpose = Dataset()
    purpose.CodeValue = "121320"
    purpose.CodingSchemeDesignator = "DCM"
    purpose.CodeMeaning = "Uncompressed predecessor"
    reference.PurposeOfReferenceCodeSequence = [purpose]
    sources = list(ds.get("SourceImageSequence", []))
    ds.SourceImageSequence = [*sources, reference]
    derivation = Dataset()
    derivation.CodeValue = "113040"
    derivation.CodingSchemeDesignator = "DCM"
    derivation.CodeMeaning = "Lossy Compression"
    ds.DerivationCodeSequence = [*list(ds.get("DerivationCodeSequence", [])), derivation]
    description = f"Lossy compression {method} ratio {ratio:.4g}"
    ds.DerivationDescription = description[:1024]
    ds.SOPInstanceUID = new_uid
