"""Parse the header bytes a :class:`~gateway.validate.DatasetWalker` kept, for routing.

The walker keeps the top-level data set bytes before the pixel data as they
arrive (:attr:`gateway.validate.DatasetSummary.header`), so intake can route
on them without reading the spooled file again. They are a data set without
preamble or file meta, in the encoding named by
:attr:`~gateway.validate.DatasetSummary.header_transfer_syntax` (the
instance's own, or Explicit VR Little Endian for a deflated one, PS3.5 A.5).
:func:`parse_header` reads them with pydicom as :func:`gateway.parse.read_header`
reads a file, stopping before any pixel data.
"""

from __future__ import annotations

import io

import pydicom
from pydicom.filereader import read_dataset

from gateway.parse import PIXEL_DATA_TAGS, encoding_of
from gateway.validate import DatasetSummary

__all__ = ["parse_header"]


def _before_pixel_data(tag: object, vr: object, length: object) -> bool:
    """
    pydicom's ``stop_when`` callback: stop at the pixel data (as ``stop_before_pixels``).

    The walker's header already ends there; this only guards a header
    captured by other means.

    :param tag: the element's tag.
    :param vr: its VR (unused).
    :param length: its length (unused).
    :returns: whether to stop reading.
    """
    return tag in PIXEL_DATA_TAGS


def parse_header(summary: DatasetSummary) -> pydicom.Dataset:
    """
    Read the header bytes of a walked data set into a pydicom data set.

    Nothing is deferred (pydicom's ``defer_size`` re-reads a value from the
    data set's file, which these bytes do not have; they are in memory, at
    most the walker's ``header_cap``).

    :param summary: a walk's summary with a captured header.
    :returns: the top-level elements before the pixel data (no file meta).
    :raises ValueError: if the summary has no header (it exceeded the
        walker's cap), or pydicom cannot read it.
    """
    header = summary.header
    syntax = summary.header_transfer_syntax
    if header is None or syntax is None:
        raise ValueError("the walk kept no header (it did not fit in the cap)")
    implicit, little = encoding_of(syntax)
    try:
        return read_dataset(
            io.BytesIO(header),
            implicit,
            little,
            stop_when=_before_pixel_data,
        )
    except Exception as e:  # pydicom raises many kinds on malformed input
        raise ValueError(f"cannot read the header bytes: {e}") from e
