"""Interim: an "incremental" walker that keeps the bytes and walks them at the end (to be replaced)."""

from __future__ import annotations

import io
from typing import Any

from gateway.validate import DatasetSummary, walk_dataset


class DatasetWalker:
    def __init__(self, transfer_syntax_uid: str, **limits: Any) -> None:
        self._ts = transfer_syntax_uid
        self._limits = {k: v for k, v in limits.items() if k not in ("header_cap", "start_offset")}
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def finish(self) -> DatasetSummary:
        return walk_dataset(io.BytesIO(bytes(self._buf)), self._ts, **self._limits)
