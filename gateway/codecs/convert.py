"""The file a destination is sent: the spool file, or a copy converted to its policy's target (issue 17).

:func:`convert_for` is blocking (file and codec work): senders run it on
their ``file_runner``, never on the reactor thread.

Contract for the senders (DICOM and DICOMweb):

- it returns a :class:`Converted`; when ``temporary`` is true the sender
  removes ``path`` after the attempt (delivered or not);
- a conversion the codecs cannot do raises
  :class:`~gateway.codecs.ConversionError` (dead letter, reason ``conversion``).

How (see :mod:`gateway.codecs.frames`, :mod:`~gateway.codecs.encode`, :mod:`~gateway.codecs.write`):

- an instance already in the target syntax is sent as it is;
- a source only GDCM decodes (the JPEG family without the optional
  pylibjpeg-libjpeg) is converted in a child process, as GDCM ends its
  process on some corrupt streams (:mod:`gateway.codecs.isolate`);
- an instance without (0007FE0,0010) Pixel Data (a structured report, a
  presentation state...) or with Float/Double Float Pixel Data, which no
  encapsulated syntax can carry (PS3.5 A.4 encapsulates Pixel Data only),
  has nothing to compress: it is sent in its own native syntax when the peer
  takes it (or nothing is known of the peer), else re-encoded in Explicit
  VR Little Endian (:func:`gateway.transcode.transcode`);
- otherwise the frames are decoded one at a time and each is written,
  encoded or native, into the copy before the next is decoded: memory holds
  one decoded frame and its encoding, whatever the number of frames.
  A lossy target first writes the encoded frames to a scratch file, as the
  compression ratio PS3.3 C.7.6.1.1.5 records goes in the header, before them.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator, Sequence

from pydicom import dcmread
from pydicom.filewriter import correct_ambiguous_vr
from pydicom.uid import UID

from gateway.codecs import LOSSY_TARGETS, ConversionError, TransferSyntaxPolicy
from gateway.codecs.encode import LOSSY_METHOD, FrameFormat, encode_frame, native_frame
from gateway.codecs.frames import Source, decoding_plugin, iter_frames, read_source
from gateway.codecs.isolate import run_isolated
from gateway.codecs.lossy import derived_uid, mark_lossy, mark_lossy_source
from gateway.codecs.write import write_part10
from gateway.sopclasses import EXPLICIT_VR_BE, EXPLICIT_VR_LE, IMPLICIT_VR_LE

__all__ = ["Converted", "convert", "convert_for"]

_NATIVE = frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE})

#: The largest decoded frame converted (HARDENING: bounded sizes). A header
#: may claim 65535 x 65535 x 3 samples of 16 bits (24 GiB a frame) over a few
#: bytes of compressed data; the decoder would allocate it. 1 GiB is far
#: above any real frame (a 16k x 16k RGB whole-slide tile is 768 MiB).
MAX_FRAME_BYTES = 1 << 30
_DEFLATED = "1.2.840.10008.1.2.1.99"


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
        (empty: unknown, any); ``preserve`` is not converted here. Used for an
        instance without pixel data, which keeps its native syntax when accepted.
    :raises ConversionError: the codecs cannot do it.
    :raises FileNotFoundError: ``path`` is missing.
    """
    try:
        meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    except FileNotFoundError:
        raise  # the spool file is missing: the sender's retry, not a conversion failure
    except Exception as e:  # pydicom raises many types for unreadable input
        raise ConversionError(f"cannot read the source: {type(e).__name__}: {e}") from e
    syntax = str(meta.file_meta.TransferSyntaxUID)
    uid = str(meta.get("SOPInstanceUID", meta.file_meta.get("MediaStorageSOPInstanceUID", "")))
    target = policy.transfer_syntax_uid
    if target is None or target == syntax:
        return Converted(path, syntax, uid)
    if policy.target in LOSSY_TARGETS and not policy.lossy:
        raise ConversionError(f"{policy.target} is lossy and lossy: true is not set")
    if decoding_plugin(syntax) == "gdcm":
        # GDCM may end the process on corrupt data: decoded in a child (gateway.codecs.isolate),
        # into a file made here, removed here when the child dies half-way.
        out = _scratch(scratch_dir)
        try:
            result: Converted = run_isolated(convert, path, scratch_dir, target, accepted=tuple(accepted), out=out)
        except BaseException:
            if os.path.exists(out):
                os.unlink(out)
            raise
        if result.path != out and os.path.exists(out):
            os.unlink(out)
        return result
    return convert(path, scratch_dir, target, accepted=accepted)


def _scratch(scratch_dir: str) -> str:
    """A new file for a copy in ``scratch_dir`` (made if missing: the spool's scratch folder is created on first use)."""
    os.makedirs(scratch_dir, exist_ok=True)
    fd, out = tempfile.mkstemp(prefix="convert-", suffix=".dcm", dir=scratch_dir)
    os.close(fd)
    return out


def convert(
    path: str, scratch_dir: str, target: str, *, accepted: Sequence[str] = (), out: str | None = None
) -> Converted:
    """Convert ``path`` to ``target`` into a new file of ``scratch_dir`` (blocking; see the module docstring).

    :param path: a Part 10 file.
    :param scratch_dir: where the copy goes.
    :param target: the target transfer syntax UID (one of :data:`gateway.codecs.LOSSLESS_TARGETS`
        or :data:`~gateway.codecs.LOSSY_TARGETS` values).
    :param accepted: see :func:`convert_for`.
    :param out: the file to write the copy to (made by the caller); a new one in ``scratch_dir`` if ``None``.
    :returns: the copy (``temporary``), or ``path`` itself when nothing is to be done.
    :raises ConversionError: unreadable source, no codec, corrupt pixel data, data the encoder refuses.
    """
    source = read_source(path)
    syntax = str(source.transfer_syntax_uid)
    uid = str(source.dataset.get("SOPInstanceUID", ""))
    if syntax == _DEFLATED:
        raise ConversionError("a deflated source is not converted")
    if source.pixel_tag != 0x7FE00010:
        # Nothing to compress (PS3.5 A.4 encapsulates (7FE0,0010) only).
        if syntax in _NATIVE and (not accepted or syntax in accepted):
            return Converted(path, syntax, uid)
        return _to_explicit_le(path, scratch_dir, source, uid)
    out = out or _scratch(scratch_dir)
    try:
        with open(out, "wb") as stream:
            new_uid = _write_converted(stream, path, scratch_dir, source, target)
    except ConversionError:
        os.unlink(out)
        raise
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as e:
        os.unlink(out)
        raise ConversionError(f"cannot write the {UID(target).name} copy: {type(e).__name__}: {e}") from e
    except BaseException:
        os.unlink(out)
        raise
    return Converted(out, target, new_uid or uid, temporary=True)


def _to_explicit_le(path: str, scratch_dir: str, source: Source, uid: str) -> Converted:
    """The instance (no Pixel Data) re-encoded in Explicit VR Little Endian."""
    from gateway.transcode import TranscodeError, transcode

    out = _scratch(scratch_dir)
    try:
        if str(source.transfer_syntax_uid) in _NATIVE:
            transcode(path, out, EXPLICIT_VR_LE)
        else:
            # An encapsulated syntax without Pixel Data: the data set is already Explicit VR LE (PS3.5 A.4).
            ds = dcmread(path)
            ds.file_meta.TransferSyntaxUID = EXPLICIT_VR_LE
            ds.save_as(out, enforce_file_format=True, little_endian=True, implicit_vr=False)
    except (TranscodeError, Exception) as e:
        os.unlink(out)
        raise ConversionError(f"cannot re-encode as Explicit VR Little Endian: {e}") from e
    return Converted(out, EXPLICIT_VR_LE, uid, temporary=True)


def _prepare_header(source: Source) -> None:
    """Load every value but the pixel data, resolve ambiguous VRs, swap OW words of a big endian source."""
    from gateway.transcode import _swap_other_vrs

    ds = source.dataset
    syntax = str(source.transfer_syntax_uid)
    little = syntax != EXPLICIT_VR_BE
    for _ in ds.iterall():
        pass
    correct_ambiguous_vr(ds, little)
    if not little:
        _swap_other_vrs(ds)


def _frame_bytes(source: Source) -> int:
    """The decoded size of one frame the header announces (PS3.3 C.7.6.3)."""
    ds = source.dataset
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as e:
        raise ConversionError(f"incomplete Image Pixel module: {e}") from e
    return rows * columns * samples * max(1, (bits + 7) // 8)


def _write_converted(stream: BinaryIO, path: str, scratch_dir: str, source: Source, target: str) -> str | None:
    """Write the copy of ``path`` in ``target`` to ``stream``; the new SOP Instance UID of a lossy copy."""
    size = _frame_bytes(source)
    if size > MAX_FRAME_BYTES:
        raise ConversionError(f"a frame of {size} bytes is over the {MAX_FRAME_BYTES}-byte limit")
    _prepare_header(source)
    ds = source.dataset
    frames = iter_frames(path, source)
    try:
        first, properties = next(frames)
    except StopIteration:
        raise ConversionError("the pixel data holds no frame") from None
    fmt = FrameFormat.of(properties)
    decoded: Iterator[Any] = itertools.chain([first], (frame for frame, _ in frames))
    # What the frames now are (PS3.3 C.7.6.3): raw decoding keeps the colour
    # space, but JPEG's upsampled YBR_FULL_422 is YBR_FULL, colour-by-pixel.
    ds.PhotometricInterpretation = fmt.photometric_interpretation
    if fmt.samples_per_pixel > 1:
        ds.PlanarConfiguration = 0
    mark_lossy_source(ds, str(source.transfer_syntax_uid))
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]  # they described the source's fragments (PS3.3 C.7.6.3.1.8)
    file_meta = ds.file_meta
    file_meta.TransferSyntaxUID = target
    count = source.frames
    preamble = getattr(ds, "preamble", None)
    if target == EXPLICIT_VR_LE:
        size = fmt.rows * fmt.columns * fmt.samples_per_pixel * (fmt.bits_allocated // 8)
        length = count * size + (count * size) % 2
        write_part10(
            stream, ds, file_meta, (native_frame(f, fmt) for f in decoded), encapsulated=False,
            native_length=length, native_vr="OB" if fmt.bits_allocated <= 8 else "OW", preamble=preamble,
        )
        return None
    if target not in LOSSY_METHOD:
        write_part10(
            stream, ds, file_meta, (encode_frame(f, fmt, target) for f in decoded), encapsulated=True,
            frame_count=count, preamble=preamble,
        )
        return None
    # Lossy: spill the fragments first; the ratio goes in the header (PS3.3 C.7.6.1.1.5).
    with tempfile.TemporaryFile(dir=scratch_dir) as spill:
        lengths = []
        for frame in decoded:
            data = encode_frame(frame, fmt, target)
            spill.write(data)
            lengths.append(len(data))
        native = count * fmt.rows * fmt.columns * fmt.samples_per_pixel * (fmt.bits_allocated // 8)
        new_uid = derived_uid(str(ds.get("SOPInstanceUID", "")), target)
        mark_lossy(ds, ratio=native / max(1, sum(lengths)), method=LOSSY_METHOD[target], new_uid=new_uid)
        file_meta.MediaStorageSOPInstanceUID = new_uid
        spill.seek(0)

        def read_back() -> Iterator[bytes]:
            for n in lengths:
                yield spill.read(n)

        write_part10(stream, ds, file_meta, read_back(), encapsulated=True, frame_count=count, preamble=preamble)
    return new_uid
