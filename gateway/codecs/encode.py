"""Encode one decoded frame in a target transfer syntax (issue 17).

Codecs (pydicom's encoder interface, one frame per call):

- RLE Lossless (PS3.5 Annex G): pylibjpeg-rle (MIT), else pydicom's own;
- JPEG-LS Lossless and Near-Lossless (PS3.5 A.4.3, ISO 14495-1): pyjpegls (MIT, CharLS BSD-3-Clause);
- JPEG 2000 Lossless and lossy (PS3.5 A.4.4, ISO 15444-1): pylibjpeg-openjpeg (MIT, OpenJPEG BSD-2-Clause);
- Explicit VR Little Endian: the frame's bytes, little endian (PS3.5 8.1.1: colour-by-pixel when
  Planar Configuration is 0).

JPEG baseline (lossy, ISO 10918-1) has no encoder among them: that target is
a :class:`~gateway.codecs.ConversionError` for now.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom import uid as uids
from pydicom.pixels import get_encoder

from gateway.codecs import ConversionError

__all__ = ["FrameFormat", "LOSSY_METHOD", "encode_frame", "native_frame"]

#: Lossy Image Compression Method (0028,2114) per lossy target syntax (PS3.3 C.7.6.1.1.5.1, Table C.7-8a... defined terms).
LOSSY_METHOD: dict[str, str] = {
    uids.JPEG2000: "ISO_15444_1",
    uids.JPEGLSNearLossless: "ISO_14495_1",
    uids.JPEGBaseline8Bit: "ISO_10918_1",
}

#: Compression ratio asked of the lossy JPEG 2000 encoder (about visually lossless for CT/MR).
J2K_LOSSY_RATIO = 10
#: NEAR parameter of JPEG-LS near-lossless: each sample within +-2 of the original (ISO 14495-1).
JLS_NEAR = 2


@dataclass(frozen=True)
class FrameFormat:
    """What a decoded frame is (the Image Pixel attributes the encoders need, PS3.3 C.7.6.3)."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str

    @classmethod
    def of(cls, properties: dict[str, Any]) -> "FrameFormat":
        """From the properties a pydicom decoder reports with a frame.

        A decoded frame is full resolution and colour-by-pixel: YBR_FULL_422
        data comes out as YBR_FULL (PS3.3 C.7.6.3.1.2; not every decoder
        plugin says so), and JPEG 2000's YBR_RCT/YBR_ICT as RGB (the codec
        undoes its multiple-component transform, PS3.5 A.4.4).
        """
        photometric = str(properties["photometric_interpretation"])
        photometric = {"YBR_FULL_422": "YBR_FULL", "YBR_RCT": "RGB", "YBR_ICT": "RGB"}.get(photometric, photometric)
        return cls(
            rows=int(properties["rows"]),
            columns=int(properties["columns"]),
            samples_per_pixel=int(properties["samples_per_pixel"]),
            bits_allocated=int(properties["bits_allocated"]),
            bits_stored=int(properties["bits_stored"]),
            pixel_representation=int(properties["pixel_representation"]),
            photometric_interpretation=photometric,
        )


def native_frame(frame: Any, fmt: FrameFormat) -> bytes:
    """The frame as native little-endian bytes (Planar Configuration 0).

    :raises ConversionError: for 1-bit data (bit-packed across frames, PS3.5 8.1.1), not handled.
    """
    if fmt.bits_allocated == 1:
        raise ConversionError("1-bit pixel data (bit-packed) is not converted")
    size = fmt.bits_allocated // 8
    if frame.dtype.itemsize != size:
        # Decoders give at least Bits Allocated; never fewer bits here.
        if frame.dtype.itemsize < size:
            raise ConversionError(f"decoded {frame.dtype} for Bits Allocated {fmt.bits_allocated}")
        frame = frame.astype(f"{'i' if fmt.pixel_representation else 'u'}{size}")
    return frame.astype(frame.dtype.newbyteorder("<"), copy=False).tobytes()


def encode_frame(frame: Any, fmt: FrameFormat, syntax: str) -> bytes:
    """One frame encoded in ``syntax`` (an encapsulated target), with pydicom's encoders.

    :param frame: the decoded frame.
    :param fmt: what it is.
    :param syntax: the target transfer syntax UID.
    :raises ConversionError: no encoder available for ``syntax`` (a codec
        missing), or the encoder refuses the data (e.g. JPEG-LS above 16 bits).
    """
    try:
        encoder = get_encoder(syntax)
    except NotImplementedError as e:
        raise ConversionError(f"no encoder for {uids.UID(syntax).name}") from e
    if not encoder.is_available:
        raise ConversionError(f"no encoder available for {uids.UID(syntax).name}: install one of its plugins")
    options: dict[str, Any] = {
        "rows": fmt.rows,
        "columns": fmt.columns,
        "samples_per_pixel": fmt.samples_per_pixel,
        "bits_allocated": fmt.bits_allocated,
        "bits_stored": fmt.bits_stored,
        "pixel_representation": fmt.pixel_representation,
        "photometric_interpretation": fmt.photometric_interpretation,
        "number_of_frames": 1,
        "planar_configuration": 0,
    }
    if syntax == uids.JPEG2000:
        options["j2k_cr"] = [J2K_LOSSY_RATIO]
    elif syntax == uids.JPEGLSNearLossless:
        options["jls_error"] = JLS_NEAR
    try:
        return bytes(encoder.encode(frame, **options))
    except Exception as e:  # encoders raise ValueError, RuntimeError... on data they refuse
        raise ConversionError(f"cannot encode as {uids.UID(syntax).name}: {type(e).__name__}: {' '.join(str(e).split())}") from e
