"""The splice writer: a morphed copy of a spooled instance, its pixel data copied verbatim.

:func:`write_morphed` reads the header only (:func:`gateway.parse.read_header`),
applies a :class:`gateway.morph.MorphPlan` to it, writes the file meta and the
morphed header in the original transfer syntax, then copies the pixel data and
everything after it **verbatim** from the original file, in bounded memory,
leaving out the tail elements the plan drops (see :mod:`gateway.morph`). The
original spool file is never modified; the output appears atomically and
durably (:func:`gateway.durable.replace_durably`: a unique temporary name,
fsync, rename, fsync of the directory).
"""

from __future__ import annotations

import copy as copy_module
import os
import shutil
from dataclasses import dataclass
from typing import Any, BinaryIO

from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset, write_file_meta_info

from gateway.durable import DEFAULT_FLUSH, SYSTEM, FileOps, FlushPolicy, replace_durably, through_file
from gateway.parse import RawParseError, encoding_of, is_deflated, iter_raw_elements, read_header
from gateway.private import FILE_MODE
from gateway.morph import Change, MorphError, MorphPlan

__all__ = ["MorphedCopy", "morph_copy", "write_morphed"]


# ---------------------------------------------------------------------------
# The splice writer
# ---------------------------------------------------------------------------

_COPY_CHUNK = 1 << 20


def _copy_range(src: BinaryIO, dst: BinaryIO, start: int, end: int | None) -> None:
    """Copy ``src[start:end]`` (to EOF when ``end`` is None) in 1 MiB chunks."""
    src.seek(start)
    if end is None:
        shutil.copyfileobj(src, dst, _COPY_CHUNK)
        return
    remaining = end - start
    while remaining > 0:
        chunk = src.read(min(_COPY_CHUNK, remaining))
        if not chunk:
            raise MorphError("the source file is shorter than its elements say")
        dst.write(chunk)
        remaining -= len(chunk)


@dataclass(frozen=True)
class MorphedCopy:
    """What :func:`morph_copy` made: the changes, and the header as written.

    :ivar changes: the changes the plan made.
    :ivar dataset: the morphed header (without the pixel data and what
        follows), so a caller learns the UIDs and IDs the plan set without
        reading the copy back.
    """

    changes: list[Change]
    dataset: Dataset


def write_morphed(
    src_path: str,
    dst_path: str,
    plan: MorphPlan,
    context: Any,
    *,
    ops: FileOps = SYSTEM,
    flush: FlushPolicy = DEFAULT_FLUSH,
) -> list[Change]:
    """Write ``plan`` applied to ``src_path`` as a new Part 10 file at ``dst_path`` (see :func:`morph_copy`).

    :returns: the changes made.
    :raises MorphError: when the file cannot be read or morphed.
    :raises OSError: when the output cannot be written (disk full, ...).
    """
    return morph_copy(src_path, dst_path, plan, context, ops=ops, flush=flush).changes


def morph_copy(
    src_path: str,
    dst_path: str,
    plan: MorphPlan,
    context: Any,
    *,
    ops: FileOps = SYSTEM,
    flush: FlushPolicy = DEFAULT_FLUSH,
) -> MorphedCopy:
    """Write ``plan`` applied to ``src_path`` as a new Part 10 file at ``dst_path``.

    File meta (same transfer syntax; (0002,0003) follows a changed SOP
    Instance UID, PS3.10 7.1) and the morphed header are written by pydicom in
    the original encoding; the bytes from the pixel data element to the end
    are copied verbatim, except tail elements the plan drops. The source is
    never modified; the output appears atomically.

    :param src_path: the spooled instance.
    :param dst_path: where the morphed copy goes.
    :param plan: the route's plan.
    :param context: the association context.
    :param ops: the system calls of the durable write (:mod:`gateway.durable`).
    :param flush: the order of its flushes.
    :returns: the changes made and the morphed header.
    :raises MorphError: when the file cannot be read or morphed.
    :raises OSError: when the output cannot be written (disk full, ...).
    """
    try:
        header = read_header(src_path)
    except ValueError as e:
        raise MorphError(str(e)) from e
    syntax = header.transfer_syntax_uid
    if is_deflated(syntax):
        raise MorphError("deflated data sets are not morphed")
    dataset = header.dataset
    meta = copy_module.deepcopy(dataset.file_meta)
    changes = plan.apply(dataset, context)
    # PS3.10 7.1: the meta's SOP class/instance equal the data set's.
    for meta_keyword, keyword in (("MediaStorageSOPInstanceUID", "SOPInstanceUID"), ("MediaStorageSOPClassUID", "SOPClassUID")):
        value = dataset.get(keyword)
        if value and str(value) != str(meta.get(meta_keyword, "")):
            setattr(meta, meta_keyword, str(value))
    implicit, little = encoding_of(syntax)

    def write(out: BinaryIO) -> None:
        """The preamble, the file meta, the morphed header and the copied tail."""
        # PS3.10 7.1: a zero preamble (HARDENING D16) and the prefix.
        out.write(b"\x00" * 128 + b"DICM")
        fp = DicomFileLike(out)
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_file_meta_info(fp, meta, enforce_standard=True)
        fp.is_little_endian, fp.is_implicit_VR = little, implicit
        try:
            write_dataset(fp, dataset)
        except Exception as e:
            raise MorphError(f"cannot encode the morphed header: {e}") from e
        if header.pixel_offset is not None:
            with open(src_path, "rb") as src:
                _copy_tail(src, out, header.pixel_offset, plan, implicit, little)

    # HARDENING H08: the copy carries patient data; 0600 whatever the umask.
    # A unique temporary name beside the target (O_EXCL), fsync, rename, fsync
    # of the directory (gateway.durable).
    replace_durably(os.path.abspath(dst_path), through_file(write), ops=ops, mode=FILE_MODE, exact_mode=True, flush=flush)
    return MorphedCopy(changes, dataset)


def _copy_tail(src: BinaryIO, out: BinaryIO, pixel_offset: int, plan: MorphPlan, implicit: bool, little: bool) -> None:
    """Copy from the pixel data element to EOF, leaving out tail elements the plan drops."""
    if not plan.touches_tail:
        _copy_range(src, out, pixel_offset, None)
        return
    try:
        for element in iter_raw_elements(src, pixel_offset, None, implicit=implicit, little=little):
            if element.offset != pixel_offset and plan.drops_tail(element.tag):
                continue
            _copy_range(src, out, element.offset, element.end)
    except RawParseError as e:
        raise MorphError(f"cannot walk the elements after the pixel data: {e}") from e
