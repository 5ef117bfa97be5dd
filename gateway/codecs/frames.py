"""Read a Part 10 file's header and decode its pixel data one frame at a time (issue 17).

:func:`read_source` reads every element but the pixel data: pydicom's
reader is given a small ``defer_size``, so the pixel data value (native or
encapsulated, defined or undefined length) is skipped in chunks and only its
position is kept. :func:`iter_frames` then decodes the frames from the file,
one at a time, with pydicom's decoders (PS3.5 A.4: one or more fragments
per frame), so a multi-frame instance never has more than one decoded frame
in memory.

Decoding is *raw* (no colour-space conversion): a lossless conversion must
give back the stored values, so YBR_FULL stays YBR_FULL; the decoder's
report of what the frame now is (Photometric Interpretation after JPEG's
chroma upsampling, Planar Configuration 0 for colour-by-pixel) is returned
with each frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import UID

from gateway.codecs import ConversionError

__all__ = ["PIXEL_TAGS", "Source", "decoding_plugin", "iter_frames", "read_source"]

#: Pixel Data, Float Pixel Data, Double Float Pixel Data (PS3.3 C.7.6.3).
PIXEL_TAGS: dict[int, str] = {
    0x7FE00010: "PixelData",
    0x7FE00008: "FloatPixelData",
    0x7FE00009: "DoubleFloatPixelData",
}

#: Values longer than this are not loaded by :func:`read_source` (the pixel
#: data; other long values are read when the copy is written).
_DEFER = 1024


#: Decoder plugins in order of preference. GDCM comes last: it calls
#: ``std::terminate`` on some corrupt JPEG and JPEG 2000 streams (the process
#: dies), so it is used only where no other plugin decodes the syntax (JPEG
#: without the optional, GPL pylibjpeg-libjpeg), and then in a child process
#: (:mod:`gateway.codecs.isolate`).
PLUGIN_PREFERENCE: tuple[str, ...] = ("pylibjpeg", "pyjpegls", "pydicom", "gdcm")


def decoding_plugin(syntax: str) -> str | None:
    """The decoder plugin used for ``syntax`` (``None``: none available; ``""`` for a native syntax)."""
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return None
    if decoder.is_native:
        return ""
    available = set(decoder.available_plugins)
    return next((name for name in PLUGIN_PREFERENCE if name in available), None)


@dataclass
class Source:
    """A Part 10 file's data set without its pixel data, and where the pixel data lies.

    :ivar dataset: every element but the pixel data, with ``file_meta``.
    :ivar transfer_syntax_uid: the file's transfer syntax.
    :ivar pixel_tag: the pixel data element's tag, ``None`` when there is none.
    :ivar pixel_vr: its VR as stored (``OB``, ``OW``, ``OF``, ``OD``; ``None`` in Implicit VR).
    :ivar value_offset: where its value starts in the file.
    :ivar value_length: its length (0xFFFFFFFF: encapsulated, undefined length).
    """

    dataset: Dataset
    transfer_syntax_uid: UID
    pixel_tag: int | None = None
    pixel_vr: str | None = None
    value_offset: int = 0
    value_length: int = 0

    @property
    def frames(self) -> int:
        """Number of Frames (0028,0008), 1 when absent."""
        try:
            return max(1, int(self.dataset.get("NumberOfFrames", 1) or 1))
        except (TypeError, ValueError):
            return 1


def read_source(path: str) -> Source:
    """The data set of ``path`` without its pixel data (bounded memory: the pixel data is skipped).

    :param path: a Part 10 file.
    :raises ConversionError: the file cannot be read.
    """
    try:
        ds = dcmread(path, defer_size=_DEFER)
        syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    except FileNotFoundError:
        raise
    except Exception as e:  # pydicom raises many types for unreadable input
        raise ConversionError(f"cannot read the source: {type(e).__name__}: {' '.join(str(e).split())}") from e
    source = Source(ds, syntax)
    # The element is still raw: its value was deferred (or is small) and never parsed.
    store: Any = ds._dict  # pydicom keeps raw elements here until first access
    for tag in PIXEL_TAGS:
        raw = store.get(tag)
        if raw is None:
            continue
        if not isinstance(raw, RawDataElement):
            raise ConversionError("the pixel data element was already parsed (unexpected reader state)")
        source.pixel_tag = tag
        source.pixel_vr = raw.VR
        source.value_offset = raw.value_tell
        source.value_length = raw.length
        del ds[tag]
        break
    return source


def iter_frames(path: str, source: Source) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Decode the frames of ``path``, one at a time (raw: no colour conversion).

    :param path: the file :func:`read_source` read.
    :param source: what it returned (with a pixel data element).
    :returns: ``(frame, properties)`` pairs: a numpy array of shape
        ``(rows, columns)`` or ``(rows, columns, samples)``, and the Image
        Pixel attributes describing it (pydicom's names: ``photometric_interpretation``...).
    :raises ConversionError: no decoder for the syntax (a codec missing), or
        corrupt pixel data.
    """
    if source.pixel_tag is None:
        raise ConversionError("the instance has no pixel data")
    try:
        decoder = get_decoder(source.transfer_syntax_uid)
    except NotImplementedError as e:
        raise ConversionError(f"no decoder for {source.transfer_syntax_uid.name}") from e
    if not decoder.is_available:
        raise ConversionError(
            f"no decoder available for {source.transfer_syntax_uid.name}: install one of its plugins"
            f" ({', '.join(sorted(decoder.missing_dependencies)) or 'none known'})"
        )
    try:
        options = as_pixel_options(
            source.dataset,
            transfer_syntax_uid=source.transfer_syntax_uid,
            pixel_keyword=PIXEL_TAGS[source.pixel_tag],
            **({"pixel_vr": source.pixel_vr} if source.pixel_vr else {}),
        )
    except Exception as e:
        raise ConversionError(f"incomplete Image Pixel module: {e}") from e
    # pydicom 3.0's sequential path corrects the sign of signed JPEG-LS/JPEG 2000
    # samples in a read-only array (ValueError "output array is read-only"); the
    # indexed path copies each frame first (and seeks through the Basic Offset
    # Table when there is one). Used only for signed data.
    indices = None
    if decoder.is_encapsulated and options.get("pixel_representation") == 1:
        indices = range(source.frames)
    with open(path, "rb") as f:
        f.seek(source.value_offset)
        try:
            plugin = "" if decoder.is_native else (decoding_plugin(source.transfer_syntax_uid) or "")
            frames = decoder.iter_array(f, indices=indices, raw=True, validate=True, decoding_plugin=plugin, **options)
            for frame, properties in frames:
                yield frame, properties
        except ConversionError:
            raise
        except (Exception, AssertionError) as e:  # decoders raise many types on corrupt data
            raise ConversionError(f"cannot decode {source.transfer_syntax_uid.name}: {type(e).__name__}: {' '.join(str(e).split())}") from e
