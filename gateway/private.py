"""Owner-only files and folders, whatever the umask the gateway was started with (HARDENING H08, D16).

Everything the gateway creates that can hold patient data (the spool tree,
instance files, morphed copies, the queue journal and its ``-wal``/``-shm``,
logs, the audit trail) is created through these helpers: folders ``0700``,
files ``0600``. A mode passed to :func:`os.open` or :func:`os.mkdir` is
filtered by the process umask, which is the operator's (``022`` from a
login shell, anything from a service manager), so each helper sets the
mode explicitly after creating and tightens an existing object that is
group- or world-accessible (a spool created by an older version).
"""

from __future__ import annotations

import os
import stat

__all__ = ["FILE_MODE", "DIR_MODE", "make_private_dirs", "open_private", "tighten"]

#: Files: read and write for the owner only.
FILE_MODE = 0o600
#: Folders: owner only.
DIR_MODE = 0o700


def tighten(path: str, mode: int) -> bool:
    """Set ``path``'s mode to ``mode`` when it grants anything to group or others.

    :param path: a file or folder (symbolic links are not followed; a link
        is left alone, as chmod on a link would change its target).
    :param mode: the wanted mode.
    :returns: whether the mode was changed.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode) or not stat.S_IMODE(st.st_mode) & 0o077 or st.st_uid != os.geteuid():
        # Only the owner may chmod; another user's file (a CLI run as
        # another account) is left as it is.
        return False
    os.chmod(path, mode)
    return True


def make_private_dirs(path: str, tighten_existing: bool = True) -> None:
    """Create ``path`` and its missing parents with mode 0700 (like ``os.makedirs(exist_ok=True)``).

    :param path: the folder.
    :param tighten_existing: also take group and other access away from
        ``path`` itself when it exists (never from parents the gateway did
        not create).
    """
    missing: list[str] = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(folder, DIR_MODE)  # the umask may have taken bits away
    if tighten_existing and not missing:
        tighten(path, DIR_MODE)


def open_private(path: str, flags: int) -> int:
    """:func:`os.open` with ``O_CREAT``, a file created 0600 whatever the umask.

    :param path: the file.
    :param flags: ``os.O_*`` flags (``O_CREAT`` and ``O_CLOEXEC`` are added).
    :returns: the file descriptor.
    """
    fd = os.open(path, flags | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        st = os.fstat(fd)
        if stat.S_IMODE(st.st_mode) != FILE_MODE and st.st_uid == os.geteuid():
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd
