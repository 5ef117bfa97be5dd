"""The rule tester's upload: a ``multipart/form-data`` body read from a file, never whole in memory (issue 18).

The HTTP channel streams a ``POST /console/rules`` body to an unnamed
temporary file under ``<spool>/tmp`` (:class:`gateway.httpguard.GuardedRequest`),
refusing it with 413 above ``console.upload_limit`` from its
``Content-Length`` or as it grows. :func:`read_form` then walks that file in
64 KiB pieces through the sans-IO parser of
:mod:`gateway.dicomweb.multipart_in` (``multipart/form-data`` has the
framing of RFC 2046 5.1; RFC 7578 4.2 names each part by the ``name``
parameter of its ``Content-Disposition``): small fields are kept as text,
the ``file`` part is written to a named temporary file beside it, which
the caller deletes after the check.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import IO

from gateway.dicomweb.multipart_in import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnded,
    PartStarted,
    parse_media_type,
)

__all__ = ["Form", "read_form", "MultipartError", "MAX_FIELD_BYTES"]

#: A text field longer than this is refused (the form's fields are a token and an id).
MAX_FIELD_BYTES = 4096
_CHUNK = 64 * 1024
_NAME = re.compile(r'(?:^|;)\s*name\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))', re.IGNORECASE)


@dataclass
class Form:
    """The fields of a form and, when one was sent, the uploaded file's temporary path (``""``: none)."""

    fields: dict[str, str] = field(default_factory=dict)
    file_path: str = ""
    file_size: int = 0

    def discard(self) -> None:
        """Delete the uploaded file."""
        if self.file_path:
            try:
                os.unlink(self.file_path)
            except FileNotFoundError:
                pass
            self.file_path = ""


def _part_name(disposition: str | None) -> str:
    if not disposition:
        return ""
    match = _NAME.search(disposition)
    if match is None:
        return ""
    return match.group(1) if match.group(1) is not None else match.group(2)


def read_form(body: IO[bytes], content_type: str, folder: str) -> Form:
    """Parse a ``multipart/form-data`` body from ``body`` (from its start).

    :param folder: where the ``file`` part goes (a named temporary file).
    :raises MultipartError: not multipart/form-data, malformed, or a text field too long.
    """
    media, params = parse_media_type(content_type)
    if media != "multipart/form-data" or "boundary" not in params:
        raise MultipartError("expected multipart/form-data with a boundary")
    parser = MultipartParser(params["boundary"].encode("latin-1"), max_parts=16)
    form = Form()
    current = ""
    text = bytearray()
    out: IO[bytes] | None = None
    body.seek(0)
    try:
        while True:
            chunk = body.read(_CHUNK)
            for event in parser.feed(chunk):
                if isinstance(event, PartStarted):
                    current = _part_name(event.header("content-disposition"))
                    text.clear()
                    if current == "file" and out is None and not form.file_path:
                        handle, form.file_path = tempfile.mkstemp(prefix="console-upload-", suffix=".dcm", dir=folder)
                        out = os.fdopen(handle, "wb")
                elif isinstance(event, PartData):
                    if current == "file" and out is not None:
                        out.write(event.data)
                        form.file_size += len(event.data)
                    else:
                        text += event.data
                        if len(text) > MAX_FIELD_BYTES:
                            raise MultipartError(f"form field {current[:40]!r} is longer than {MAX_FIELD_BYTES} bytes")
                elif isinstance(event, PartEnded):
                    if current == "file" and out is not None:
                        out.close()
                        out = None
                    elif current:
                        form.fields.setdefault(current, text.decode("utf-8", "replace"))
                    current = ""
            if not chunk:
                break
        parser.end()
    except BaseException:
        if out is not None:
            out.close()
        form.discard()
        raise
    if out is not None:
        out.close()
    return form
