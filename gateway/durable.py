"""Durable file work: the system-call seam, and the orders that make a file survive a power cut.

A new or renamed file is durable only once its data and its directory entry
are on disk. POSIX gives no other guarantee than ``fsync``: of the file
(its data and inode) and of the directory that holds the entry (a rename
lives in the directory; without that fsync a power cut can undo it). The
order used here is the spool's (DESIGN.md 5, HARDENING decision 10)::

    create a temporary file beside the target (O_EXCL, mode 0600)
    write, fsync(file), close
    rename over the target (atomic within one filesystem)
    fsync(directory)

so a reader sees the old file or the whole new one, never part of one, and
once the call returns the new one stays.

Every system call goes through a :class:`FileOps`, the seam tests replace to
inject ENOSPC or EIO and to record the order of the calls; the real calls by
default (:data:`SYSTEM`).

:func:`fsync_dir` is the directory fsync; :func:`rename_durably` a rename
made durable; :func:`replace_durably` the whole order above, around a
caller's writes; :func:`create_durably` a small new file created in place
(``O_EXCL``: never over an existing one); :func:`write_synced` a small file
written and fsynced without the directory (a probe); :func:`write_all` a
write of a whole buffer through the seam.

The order is a parameter (:class:`FlushPolicy`). Two exist: the one above,
for every small file the gateway writes (configuration state, tokens, the
probe), and the spool's (issue 13), for received instances::

    ahead of time: create a batch of empty files, fsync(directory) once
    per instance: take one, write (starting write-back as it goes), fdatasync

The spool's saves the rename and the per-instance directory fsync: the
directory entry was made durable before the instance arrived, and the
journal, not the name, says whether the file holds an acknowledged
instance (see :mod:`gateway.spool` and :mod:`gateway.slots`).

:meth:`FileOps.start_writeback` is Linux's ``sync_file_range(...,
SYNC_FILE_RANGE_WRITE)``: it starts writing a range to the device without
waiting, so the final ``fdatasync`` finds little left to do. Python has no
binding; it is called through :mod:`ctypes`, and is a no-op where libc lacks it.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import sys
import uuid
from typing import Any, BinaryIO, Callable, Final

__all__ = [
    "CREATE_FLAGS",
    "DEFAULT_FLUSH",
    "FileOps",
    "FlushPolicy",
    "SYNC_FILE_RANGE_WRITE",
    "SYSTEM",
    "create_durably",
    "fsync_dir",
    "through_file",
    "rename_durably",
    "replace_durably",
    "write_all",
    "write_synced",
]


class FlushPolicy(enum.Enum):
    """When the data and the directory entry of a new file reach the disk."""

    #: fsync(file), then rename (or the entry made), then fsync(directory): once
    #: the call returns the file survives a power cut (DESIGN.md 5).
    SYNC_FILE_RENAME_SYNC_DIR = "sync-file-rename-sync-dir"
    #: The file was created empty ahead of time and its directory entry made
    #: durable then (a batch of them, one directory fsync); the data is written
    #: in place, write-back started as it goes, then fdatasync (data and the
    #: size that addresses it). No rename, no directory fsync per file (issue 13).
    PRECREATED_DATASYNC = "precreated-datasync"


#: ``sync_file_range`` flag: start write-out of dirty pages in the range, do not wait (``<fcntl.h>``).
SYNC_FILE_RANGE_WRITE: Final = 2


def _load_sync_file_range() -> Any:
    """libc's ``sync_file_range``, or ``None`` off Linux (or where libc lacks it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # The process's own symbols include libc's: no library search (find_library runs ldconfig).
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE: Final = _load_sync_file_range()


#: The order used when a caller names none.
DEFAULT_FLUSH: Final = FlushPolicy.SYNC_FILE_RENAME_SYNC_DIR


class FileOps:
    """The system calls of durable file work, in one replaceable object.

    Tests substitute a subclass to inject ENOSPC or EIO and to record the
    order of ``fsync``, ``rename`` and directory ``fsync``.
    """

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        """
        :func:`os.open`.

        :param path: the path.
        :param flags: ``os.O_*`` flags.
        :param mode: the creation mode.
        :returns: a file descriptor.
        """
        return os.open(path, flags, mode)

    def write(self, fd: int, data: memoryview | bytes) -> int:
        """
        :func:`os.write`.

        :param fd: the descriptor.
        :param data: the bytes.
        :returns: the count written.
        """
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        """
        :func:`os.fsync`.

        :param fd: the descriptor.
        """
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        """
        :func:`os.fdatasync`: the data, and the metadata needed to read it back (the size).

        :param fd: the descriptor.
        """
        os.fdatasync(fd)

    def start_writeback(self, fd: int, offset: int, length: int) -> None:
        """
        Start writing a range of the file to the device without waiting (``sync_file_range``).

        Only a hint that makes the later :meth:`fdatasync` shorter: a failure
        here is ignored, since the fdatasync reports any I/O error that matters.

        :param fd: the descriptor.
        :param offset: the first byte.
        :param length: the number of bytes.
        """
        if _SYNC_FILE_RANGE is not None:
            _SYNC_FILE_RANGE(fd, offset, length, SYNC_FILE_RANGE_WRITE)

    def rename(self, src: str, dst: str) -> None:
        """
        :func:`os.rename` (atomic within one filesystem).

        :param src: the old path.
        :param dst: the new path.
        """
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        """
        :func:`os.unlink`.

        :param path: the path.
        """
        os.unlink(path)

    def fchmod(self, fd: int, mode: int) -> None:
        """
        :func:`os.fchmod`.

        :param fd: the descriptor.
        :param mode: the permissions.
        """
        os.fchmod(fd, mode)

    def close(self, fd: int) -> None:
        """
        :func:`os.close`.

        :param fd: the descriptor.
        """
        os.close(fd)


#: The real system calls.
SYSTEM: Final = FileOps()

#: How a temporary file is created: never over an existing file or through a
#: symbolic link (``O_EXCL | O_NOFOLLOW``), and not inherited by children.
CREATE_FLAGS: Final = (
    os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
)


def fsync_dir(path: str, ops: FileOps = SYSTEM) -> None:
    """fsync a directory, so a new entry or a rename in it survives a power cut.

    :param path: the directory.
    :param ops: the system calls.
    :raises OSError: when the directory cannot be opened or synced.
    """
    fd = ops.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        ops.fsync(fd)
    finally:
        ops.close(fd)


def rename_durably(src: str, dst: str, ops: FileOps = SYSTEM) -> None:
    """Rename ``src`` to ``dst``, then fsync ``dst``'s directory.

    Only the new entry is made durable: after a power cut the file is at
    ``dst`` or, the rename lost, still at ``src``, never nowhere.

    :param src: the file.
    :param dst: its new path (same filesystem).
    :param ops: the system calls.
    :raises OSError: from the rename or the directory fsync.
    """
    ops.rename(src, dst)
    fsync_dir(os.path.dirname(dst) or os.curdir, ops)


def write_all(fd: int, data: bytes, ops: FileOps = SYSTEM) -> None:
    """Write a whole (small) buffer in one call; a short write is an I/O error.

    :param fd: the descriptor.
    :param data: the bytes.
    :param ops: the system calls.
    :raises OSError: EIO when fewer bytes were written, or the write's own error.
    """
    if ops.write(fd, data) != len(data):
        raise OSError(errno.EIO, os.strerror(errno.EIO))


def replace_durably(
    path: str,
    fill: Callable[[int], None],
    *,
    ops: FileOps = SYSTEM,
    temp: str | None = None,
    mode: int = 0o600,
    exact_mode: bool = False,
    flush: FlushPolicy = DEFAULT_FLUSH,
) -> None:
    """Create ``path`` (or replace it) atomically and durably with what ``fill`` writes.

    Order: create ``temp`` (:data:`CREATE_FLAGS`, ``mode``), ``fill(fd)``,
    fsync, close, rename over ``path``, fsync ``path``'s directory. When
    anything before the rename fails, the temporary file is removed and the
    error raised; ``path`` is untouched.

    :param path: the target.
    :param fill: writes the contents to the open descriptor (through ``ops``,
        or a file object on it that it flushes and does not close).
    :param ops: the system calls.
    :param temp: the temporary file, in ``path``'s directory (so the rename
        stays on one filesystem); a hidden unique name beside ``path`` by default.
    :param mode: the new file's permissions (0600: the gateway's files carry
        patient data, HARDENING H08).
    :param exact_mode: set ``mode`` with ``fchmod`` after creating, so the
        umask cannot narrow it (:mod:`gateway.private`'s rule).
    :param flush: the order of the flushes (today's by default).
    :raises OSError: from any step.
    """
    _check_policy(flush)
    folder, name = os.path.split(path)
    folder = folder or os.curdir
    if temp is None:
        temp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    fd = ops.open(temp, CREATE_FLAGS, mode)
    try:
        try:
            if exact_mode:
                ops.fchmod(fd, mode)
            fill(fd)
            ops.fsync(fd)
        finally:
            ops.close(fd)
        ops.rename(temp, path)
    except BaseException:
        try:
            ops.unlink(temp)
        except OSError:
            pass
        raise
    fsync_dir(folder, ops)


def _check_policy(flush: FlushPolicy) -> None:
    """Refuse a policy this module does not implement (a new member without its steps)."""
    if flush is not FlushPolicy.SYNC_FILE_RENAME_SYNC_DIR:
        raise ValueError(f"flush policy {flush!r} is not implemented")


def write_synced(path: str, data: bytes, *, ops: FileOps = SYSTEM, mode: int = 0o600) -> None:
    """Create ``path`` (:data:`CREATE_FLAGS`), write ``data``, fsync and close it; the directory is not synced.

    :param path: the new file (it must not exist).
    :param data: the contents (small: one write).
    :param ops: the system calls.
    :param mode: the permissions, set exactly (``fchmod``: the umask cannot narrow them).
    :raises FileExistsError: when ``path`` exists (or is a symbolic link).
    :raises OSError: from any other step; a file created is left for the caller.
    """
    fd = ops.open(path, CREATE_FLAGS, mode)
    try:
        ops.fchmod(fd, mode)
        write_all(fd, data, ops)
        ops.fsync(fd)
    finally:
        ops.close(fd)


def create_durably(
    path: str,
    data: bytes,
    *,
    ops: FileOps = SYSTEM,
    mode: int = 0o600,
    flush: FlushPolicy = DEFAULT_FLUSH,
) -> None:
    """Create a small new file in place, never over an existing one, and make it durable.

    Order: create (``O_EXCL``), write, fsync, close, fsync the directory. A
    racing creator gets :class:`FileExistsError` and reads the winner's file.

    :param path: the new file.
    :param data: the contents.
    :param ops: the system calls.
    :param mode: the permissions, set exactly.
    :param flush: the order of the flushes (today's by default).
    :raises FileExistsError: when ``path`` exists.
    :raises OSError: from any other step.
    """
    _check_policy(flush)
    write_synced(path, data, ops=ops, mode=mode)
    fsync_dir(os.path.dirname(path) or os.curdir, ops)


def through_file(write: Callable[[BinaryIO], None]) -> Callable[[int], None]:
    """A ``fill`` for :func:`replace_durably` from a writer of a binary file object.

    The file object wraps the descriptor without owning it, and is flushed
    before the fsync.

    :param write: writes the contents to the file object.
    :returns: the fill.
    """

    def fill(fd: int) -> None:
        """Write through a buffered file object on ``fd``, then flush it."""
        with os.fdopen(fd, "wb", closefd=False) as stream:
            write(stream)
            stream.flush()

    return fill


def unlink_if_present(path: str) -> None:
    """Remove ``path``; a file already gone is fine (a crash between unlink and the journal).

    :param path: the file.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
