"""The file a destination is sent: the spool file, or a copy converted to its policy's target (issue 17).

:func:`convert_for` is blocking (file and codec work): senders run it on
their ``file_runner``, never on the reactor thread.

Contract for the senders (DICOM and DICOMweb):

- it returns a :class:`Converted`; when ``temporary`` is true the sender
  removes ``path`` after the attempt (delivered or not);
- a conversion the codecs cannot do raises
  :class:`~gateway.codecs.ConversionError` (dead letter, reason ``conversion``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from pydicom import dcmread

from gateway.codecs import ConversionError, TransferSyntaxPolicy

__all__ = ["Converted", "convert_for"]


@dataclass(frozen=True)
class Converted:
    """The file to send for one entry.

    :ivar path: the spool file itself, or a converted copy in the scratch folder.
    :ivar transfer_syntax_uid: its transfer syntax.
    :ivar sop_instance_uid: its SOP Instance UID (a new one after a lossy conversion, PS3.3 C.7.6.1.1.5).
    :ivar temporary: the caller removes ``path`` after the attempt.
    """

    path: str
    transfer_syntax_uid: str
    sop_instance_uid: str
    temporary: bool = False


def convert_for(policy: TransferSyntaxPolicy, path: str, scratch_dir: str, accepted: Sequence[str] = ()) -> Converted:
    """The file to send under ``policy`` (blocking).

    :param policy: the destination's policy.
    :param path: the spool file (Part 10).
    :param scratch_dir: where a converted copy is written.
    :param accepted: transfer syntaxes the peer accepts for this SOP class
        (empty: unknown, any); ``preserve`` is not converted here.
    :raises ConversionError: the codecs cannot do it.
    """
    meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    syntax = str(meta.file_meta.TransferSyntaxUID)
    uid = str(meta.get("SOPInstanceUID", meta.file_meta.get("MediaStorageSOPInstanceUID", "")))
    if policy.target == "preserve" or policy.transfer_syntax_uid == syntax:
        return Converted(path, syntax, uid)
    raise ConversionError(f"conversion to {policy.target} is not available")
