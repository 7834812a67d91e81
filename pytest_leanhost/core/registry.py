"""Reading a registry directory: every ``*.json`` entry, parsed or diagnosed, never followed.

The scan is the only code that opens files in a registry. It keeps three rules:
it never follows a symlink (a link is reported, not read), it never reads more
than :data:`~pytest_leanhost.record.MAX_RECORD_BYTES` of a file, and a file it
cannot make sense of becomes an entry with a reason instead of an exception.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import NamedTuple

from pytest_leanhost.files import read_regular_file
from pytest_leanhost.record import MAX_RECORD_BYTES, ProcessRecord, RecordError

__all__ = [
    "RegistryEntry",
    "RegistryUnreadableError",
    "is_record_name",
    "read_entry",
    "scan_registry",
]


class RegistryUnreadableError(OSError):
    """The registry exists but cannot be listed (permissions, not a directory)."""

    def __init__(self, directory: str, reason: str) -> None:
        super().__init__(f"cannot read process registry {directory}: {reason}")
        self.directory = directory
        self.reason = reason


class RegistryEntry(NamedTuple):
    """One ``*.json`` file of a registry, as read at scan time.

    ``path`` is the registry path joined with the file name, as lean-host-mcp
    prints it. Exactly one of ``record`` and ``problem`` is set: the parsed
    record, or why the file is not a valid record. ``data`` holds the bytes that
    were judged, so a cleanup can tell whether the file changed since.
    """

    path: str
    record: ProcessRecord | None
    problem: str | None
    owner_uid: int | None
    data: bytes | None = None

    @property
    def is_corrupt(self) -> bool:
        """Whether the file is not a valid record."""
        return self.record is None


def is_record_name(name: str) -> bool:
    """Whether a file name is a record's: its extension is exactly ``json``.

    The same rule as Rust's ``path.extension() == Some("json")``: ``.json``
    alone is a hidden name without an extension, and ``x.JSON`` is not a record.
    """
    return name.endswith(".json") and name != ".json"


def scan_registry(directory: str | os.PathLike[str]) -> list[RegistryEntry]:
    """Read every record file of ``directory``; a missing directory has none.

    Raises :class:`RegistryUnreadableError` when the directory exists but cannot
    be listed. Files that vanish between listing and reading are skipped: their
    server removed them, which is the normal end of a record.
    """
    base = os.fspath(directory)
    try:
        names = sorted(entry.name for entry in os.scandir(base) if is_record_name(entry.name))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise RegistryUnreadableError(base, "not a directory") from None
    except OSError as exc:
        raise RegistryUnreadableError(base, exc.strerror or str(exc)) from None
    entries = []
    for name in names:
        entry = read_entry(os.path.join(base, name))
        if entry is not None:
            entries.append(entry)
    return entries


def read_entry(path: str) -> RegistryEntry | None:
    """Read and parse one record file without following links; ``None`` if it is gone."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return _problem(path, None, f"cannot stat: {exc.strerror or exc}")
    owner = info.st_uid
    if stat.S_ISLNK(info.st_mode):
        return _problem(path, owner, "symlink (not followed)")
    if stat.S_ISDIR(info.st_mode):
        return _problem(path, owner, "a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        return _problem(path, owner, "not a regular file")
    if info.st_size > MAX_RECORD_BYTES:
        return _problem(path, owner, f"larger than {MAX_RECORD_BYTES} bytes ({info.st_size})")
    try:
        data = read_regular_file(path, MAX_RECORD_BYTES)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return _problem(path, owner, "symlink (not followed)")
        return _problem(path, owner, f"cannot read: {exc.strerror or exc}")
    if len(data) > MAX_RECORD_BYTES:
        return _problem(path, owner, f"larger than {MAX_RECORD_BYTES} bytes")
    try:
        record = ProcessRecord.from_json_bytes(data)
    except RecordError as exc:
        return RegistryEntry(path, None, str(exc), owner, data)
    return RegistryEntry(path, record, None, owner, data)


def _problem(path: str, owner: int | None, reason: str) -> RegistryEntry:
    return RegistryEntry(path, None, reason, owner, None)
