"""Folder destinations: write Part 10 files under a root folder, atomically and safely.

A folder destination names each file from a pattern such as
``{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm``. The values
come from the instance, that is from the peer, so every one is validated
before it becomes part of a path (HARDENING decision 3 and D06; the class of
DCMTK CVE-2022-2119 and pynetdicom #823):

- UIDs must be PS3.5 9.1 UIDs: digits in dot-separated components, at most
  64 characters. A UID with letters, ``/``, ``\\``, ``..`` or NUL is refused.
- Other values (Patient ID, Accession Number, Modality, Study Date, the
  calling AE title) have every character outside ``[A-Za-z0-9._-]``
  replaced by ``_``; the result must be non-empty and neither ``.`` nor ``..``.
- The final path, after ``os.path.realpath`` (symbolic links resolved), must
  lie inside the root.

A refused value raises :class:`UnsafePath`, which the forwarder turns into a
dead letter for that instance. Writes are atomic and durable: a temporary
file in the target directory, fsync, rename, fsync of the directory (the
same order as the spool, HARDENING decision 10). A re-delivery overwrites
the same path with the same bytes.

Files are written with mode 0600 and the folders the gateway creates under
the root with mode 0700, whatever the umask (HARDENING H08): an export is
patient data. The root itself is the operator's, never created nor changed
here; a reader that runs as another account is the site's decision to make
(run the gateway as that account, or hand the files on), not a wider
default of the gateway.
"""

from __future__ import annotations

import os
import re
import shutil
import string
import tempfile
from typing import BinaryIO, Callable

from gateway.durable import DEFAULT_FLUSH, SYSTEM, FileOps, FlushPolicy, fsync_dir, replace_durably, through_file
from gateway.queue.interfaces import InstanceRecord

__all__ = ["UnsafePath", "FolderWriter", "UID_FIELDS"]

#: PS3.5 9.1: a UID is numeric components separated by periods.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: PS3.5 9.1: at most 64 characters.
_UID_MAX = 64
#: Characters kept as they are in the other values; every other becomes ``_``.
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9._-]")

#: Pattern fields that are UIDs (validated, never rewritten).
UID_FIELDS: frozenset[str] = frozenset({"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"})

#: Pattern fields read from the instance record.
_RECORD_FIELDS: dict[str, Callable[[InstanceRecord], str]] = {
    "StudyInstanceUID": lambda r: r.study_instance_uid,
    "SeriesInstanceUID": lambda r: r.series_instance_uid,
    "SOPInstanceUID": lambda r: r.sop_instance_uid,
    "SOPClassUID": lambda r: r.sop_class_uid,
    "PatientID": lambda r: r.patient_id,
    "AccessionNumber": lambda r: r.accession_number,
    "Modality": lambda r: r.modality,
    "calling_ae_title": lambda r: r.calling_ae_title,
}


class UnsafePath(ValueError):
    """A value (or the path built from it) could escape the folder or is not acceptable."""


def _read_study_date(path: str) -> str:
    """Study Date (0008,0020) from the file's header (the record does not carry it)."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[0x00080020])
    return str(ds.get("StudyDate", "") or "")


class FolderWriter:
    """Writes instances under ``root`` at paths made from ``pattern``.

    :param root: the destination folder, absolute; it must exist when writing
        (a missing folder, e.g. an unmounted share, is a destination-wide fault).
    :param pattern: a template of ``{Field}`` references (see
        ``gateway.config.schema.FOLDER_PATTERN_FIELDS``).
    :param read_study_date: reads Study Date from a file (injectable for tests).
    :param ops: the system calls of the durable write (:mod:`gateway.durable`).
    :param flush: the order of its flushes.
    :raises ValueError: when the pattern names an unknown field or is absolute.
    """

    def __init__(
        self,
        root: str,
        pattern: str,
        read_study_date: Callable[[str], str] = _read_study_date,
        *,
        ops: FileOps = SYSTEM,
        flush: FlushPolicy = DEFAULT_FLUSH,
    ) -> None:
        self.root = os.path.abspath(root)
        self._ops = ops
        self._flush = flush
        self.pattern = pattern
        self._read_study_date = read_study_date
        self._fields = [name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None]
        for name in self._fields:
            if name not in _RECORD_FIELDS and name != "StudyDate":
                raise ValueError(f"pattern {pattern!r}: unknown field {{{name}}}")
        if os.path.isabs(pattern) or ".." in re.split(r"[\\/]", pattern):
            raise ValueError(f"pattern {pattern!r} must be relative and must not contain '..'")

    def _value(self, name: str, record: InstanceRecord) -> str:
        """One field's value, validated (UIDs) or made safe (other values).

        :raises UnsafePath: when the value cannot be used.
        """
        raw = self._read_study_date(record.path) if name == "StudyDate" else _RECORD_FIELDS[name](record)
        if name in UID_FIELDS:
            # PS3.5 9.1: digits and periods only, no empty component, at most 64 characters.
            if len(raw) > _UID_MAX or not _UID.match(raw):
                raise UnsafePath(f"{name} {raw!r} is not a valid UID (PS3.5 9.1)")
            return raw
        safe = _UNSAFE_CHAR.sub("_", raw)
        if not safe or safe in (".", ".."):
            raise UnsafePath(f"{name} {raw!r} cannot name a file or folder")
        return safe

    def path_for(self, record: InstanceRecord) -> str:
        """The absolute path ``record`` is written to.

        :param record: the instance.
        :returns: a path inside the root.
        :raises UnsafePath: when a value is refused or the path would leave the root.
        """
        values = {name: self._value(name, record) for name in self._fields}
        relative = self.pattern.format(**values)
        path = os.path.join(self.root, relative)
        real_root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if os.path.commonpath([real_root, real]) != real_root or real == real_root:
            raise UnsafePath(f"{relative!r} is outside the folder {self.root}")
        return path

    def check_writable(self) -> None:
        """The circuit probe of a folder destination: the root exists and a file can be created in it.

        :raises OSError: when it cannot.
        """
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"folder {self.root} does not exist")
        fd, tmp = tempfile.mkstemp(prefix=".probe-", dir=self.root)
        os.close(fd)
        os.unlink(tmp)

    def _make_dirs(self, directory: str) -> None:
        """Create ``directory`` and its missing parents under the root, fsyncing each new entry's parent."""
        missing: list[str] = []
        current = directory
        while not os.path.isdir(current):
            missing.append(current)
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
        for path in reversed(missing):
            try:
                # Owner only, as the spool (HARDENING H08): the export is
                # patient data, and the umask is the operator's. Sharing it
                # with a reader is a decision made on the root folder (its
                # owner, or a bind mount), not a default of the gateway.
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
            fsync_dir(os.path.dirname(path), self._ops)

    def write(self, src: str, record: InstanceRecord) -> str:
        """Copy ``src`` to ``path_for(record)`` atomically and durably.

        Order: temporary file in the target directory, copy, fsync, rename
        over the target, fsync the directory.

        :param src: the file to copy (the spooled or morphed Part 10 file).
        :param record: the instance, for the path.
        :returns: the path written.
        :raises UnsafePath: when the path is refused.
        :raises OSError: on I/O failure (a missing root included).
        """
        path = self.path_for(record)
        if not os.path.isdir(self.root):
            # Never create the root: it may be an unmounted share.
            raise FileNotFoundError(f"folder {self.root} does not exist")
        directory = os.path.dirname(path)
        self._make_dirs(directory)
        # Symbolic links created inside the root since path_for would be resolved here.
        real_root = os.path.realpath(self.root)
        if os.path.commonpath([real_root, os.path.realpath(directory)]) != real_root:
            raise UnsafePath(f"{directory!r} is outside the folder {self.root}")

        def copy(out: BinaryIO) -> None:
            """The source's bytes, in 1 MiB chunks."""
            with open(src, "rb") as inp:
                shutil.copyfileobj(inp, out, 1024 * 1024)

        replace_durably(path, through_file(copy), ops=self._ops, exact_mode=True, flush=self._flush)
        return path
