"""Writing a file so no reader sees half of it, and removing one only if it is unchanged.

Standard library only: a server writes its record through :func:`write_atomically`.
The host side removes records through :func:`remove_if_unchanged`, which keeps the
registry's rules: it never follows a symlink, touches only a regular file, and
removes only the exact bytes that were judged.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile

__all__ = ["read_regular_file", "remove_if_unchanged", "write_atomically"]

# O_NOFOLLOW: a symlink swapped in after lstat() fails to open instead of being read.
# O_NONBLOCK: a FIFO swapped in after lstat() cannot block the reader.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


def write_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename.

    The temporary name starts with a dot and ends in ``.tmp`` (never ``.json``), so no
    reader takes it for a record; on any failure it is removed and the error raised.
    """
    target = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(target))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def read_regular_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """Up to ``limit + 1`` bytes of the regular file at ``path``, never through a symlink.

    Raises ``OSError`` (``ELOOP`` for a symlink, ``EINVAL`` for anything that is not
    a regular file, ``ENOENT`` when it is gone); reading one byte past ``limit`` lets
    the caller tell a file that is too large.
    """
    fd = os.open(path, _OPEN_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        chunks = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def remove_if_unchanged(path: str | os.PathLike[str], judged: bytes) -> bool:
    """Remove ``path`` only if it is still a regular file holding exactly ``judged``.

    Returns False, and removes nothing, when the file is gone, is now a symlink or
    anything but a regular file (a link's target is never read or touched), or holds
    other bytes (rewritten: a new server may have taken the PID). Raises ``OSError``
    when the file was unchanged but could not be removed.
    """
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        current = read_regular_file(path, len(judged))
    except OSError:
        return False  # gone, a link (ELOOP), not a regular file, or unreadable
    if current != judged:
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False  # removed by someone else in between
    return True
