"""Transfer-syntax policy per destination (issue 17): what encoding a destination gets.

A destination's ``transfer_syntax`` (with ``lossy``) is a
:class:`TransferSyntaxPolicy`. The senders (DICOM, DICOMweb) ask
:func:`gateway.codecs.convert.convert_for` for the file to send: the spool
file itself when it already fits, or a converted copy in the scratch folder.
A conversion the codecs cannot do raises :class:`ConversionError`, which the
sender turns into a dead letter with reason ``conversion`` (never a crash).

Targets (PS3.5 Annex A, the transfer syntax UIDs of PS3.6 Table A-1):

- ``preserve``: send as received (the DICOM sender still falls back to
  Explicit/Implicit VR Little Endian for uncompressed data a peer does not
  take in its original syntax, :mod:`gateway.transcode`);
- ``uncompressed``: Explicit VR Little Endian (1.2.840.10008.1.2.1);
- ``jpeg2000-lossless``: JPEG 2000 Image Compression (Lossless Only), 1.2.840.10008.1.2.4.90;
- ``jpeg-ls-lossless``: JPEG-LS Lossless, 1.2.840.10008.1.2.4.80;
- ``rle``: RLE Lossless, 1.2.840.10008.1.2.5;
- lossy targets (only with ``lossy: true``): ``jpeg2000`` (1.2.840.10008.1.2.4.91) and
  ``jpeg-ls-near-lossless`` (1.2.840.10008.1.2.4.81). JPEG baseline is not a target: none of the
  codecs encodes it, so the loader refuses it rather than dead-letter every image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Mapping

__all__ = [
    "ConversionError",
    "LOSSLESS_TARGETS",
    "LOSSY_TARGETS",
    "PRESERVE",
    "TARGETS",
    "TransferSyntaxPolicy",
]

#: Lossless targets: name -> transfer syntax UID (``uncompressed`` is Explicit VR Little Endian).
LOSSLESS_TARGETS: Final[Mapping[str, str]] = {
    "uncompressed": "1.2.840.10008.1.2.1",
    "jpeg2000-lossless": "1.2.840.10008.1.2.4.90",
    "jpeg-ls-lossless": "1.2.840.10008.1.2.4.80",
    "rle": "1.2.840.10008.1.2.5",
}

#: Lossy targets (``lossy: true`` required): name -> transfer syntax UID.
LOSSY_TARGETS: Final[Mapping[str, str]] = {
    "jpeg2000": "1.2.840.10008.1.2.4.91",
    "jpeg-ls-near-lossless": "1.2.840.10008.1.2.4.81",
}

#: Every value ``transfer_syntax`` may take.
TARGETS: Final[tuple[str, ...]] = ("preserve", *LOSSLESS_TARGETS, *LOSSY_TARGETS)


class ConversionError(Exception):
    """The codecs cannot convert this instance as the policy asks (a dead letter with reason ``conversion``)."""


@dataclass(frozen=True)
class TransferSyntaxPolicy:
    """A destination's transfer-syntax policy (keys ``transfer_syntax`` and ``lossy``).

    :param target: one of :data:`TARGETS`.
    :param lossy: the operator allowed a lossy target (required for one of :data:`LOSSY_TARGETS`).
    """

    target: str = "preserve"
    lossy: bool = False

    @property
    def transfer_syntax_uid(self) -> str | None:
        """The target's transfer syntax UID, ``None`` for ``preserve``."""
        return LOSSLESS_TARGETS.get(self.target) or LOSSY_TARGETS.get(self.target)


#: Send as received.
PRESERVE: Final = TransferSyntaxPolicy()
