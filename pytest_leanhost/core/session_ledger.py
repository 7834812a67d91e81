"""The session ledger's files: where they live, and writing, listing and removing one.

Every run's session start and end come through here, so it defines no classes
and loads nothing but the standard library: reading and judging the entries
(:mod:`pytest_leanhost.core.earlier_sessions`) loads only when the directory holds
another session's entry. The file format is :func:`ledger_bytes`; the reader
is ``sessions.LedgerEntry.from_json_bytes``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from pytest_leanhost.files import write_atomically
from pytest_leanhost.record import directory_from_env

__all__ = [
    "LEDGER_SCHEMA_VERSION",
    "SESSIONS_ENV",
    "SessionsDirError",
    "is_session_id",
    "ledger_bytes",
    "ledger_names",
    "remove_ledger",
    "sessions_dir",
    "write_ledger",
]

#: Overrides the per-user sessions directory (the project's own tests use it).
SESSIONS_ENV = "LEANHOST_SESSIONS_DIR"
LEDGER_SCHEMA_VERSION = 1

# A session id names a file: letters, digits, '.', '_' and '-', never a leading dot.
_SESSION_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


class SessionsDirError(Exception):
    """The sessions directory is misconfigured or cannot be read."""


def is_session_id(text: str) -> bool:
    """Whether ``text`` can be a session id (and so a ledger file's name)."""
    return _SESSION_ID.fullmatch(text) is not None


def sessions_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The per-user sessions directory.

    ``$LEANHOST_SESSIONS_DIR`` when set, else ``<user cache dir>/pytest-leanhost/sessions``
    (platformdirs' ``user_cache_dir()`` with no app name, as the registry default).
    An empty variable is an error: it would otherwise mean the current directory.
    """
    return directory_from_env(
        environ, SESSIONS_ENV, ("pytest-leanhost", "sessions"), error=SessionsDirError
    )


def _ledger_path(directory: Path, session_id: str) -> Path:
    if not is_session_id(session_id):
        raise ValueError(f"{session_id!r} is not a session id")
    return directory / f"{session_id}.json"


def ledger_bytes(
    session_id: str,
    pytest_pid: int,
    pytest_create_time: float,
    started_unix: float,
    cwd: str,
    argv: Sequence[str],
) -> bytes:
    """One ledger entry as the file holds it (two-space indented JSON)."""
    data = {
        "schema_version": LEDGER_SCHEMA_VERSION,
        "session_id": session_id,
        "pytest_pid": pytest_pid,
        "pytest_create_time": pytest_create_time,
        "started_unix": started_unix,
        "cwd": cwd,
        "argv": list(argv),
    }
    return (json.dumps(data, indent=2) + "\n").encode()


def ledger_names(directory: Path) -> list[str]:
    """The names of the ledger entries in ``directory``, sorted; none when it is missing.

    A directory that exists but cannot be listed raises :class:`SessionsDirError`.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SessionsDirError(
            f"cannot read sessions directory {directory}: {exc.strerror or exc}"
        ) from None
    # Rule: dot files are the temporary files of an atomic write (or not ours).
    return sorted(name for name in names if name.endswith(".json") and not name.startswith("."))


def write_ledger(
    session_id: str,
    *,
    directory: Path | None = None,
    pid: int | None = None,
    argv: Sequence[str] | None = None,
    cwd: str | None = None,
) -> Path:
    """Write this session's ledger entry (atomically) and return its path.

    Names the pytest process (``pid``, default this process) with its create time,
    so that a later reader can prove it gone even if the PID is reused. The
    directory is created private to the user (mode 0700).
    """
    from pytest_leanhost.core.probe import create_time_of

    target = sessions_dir() if directory is None else directory
    path = _ledger_path(target, session_id)
    created = not target.is_dir()
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    if created:
        target.chmod(0o700)  # mkdir's mode is masked by the umask
    own = os.getpid() if pid is None else pid
    data = ledger_bytes(
        session_id,
        own,
        create_time_of(own),
        time.time(),
        os.getcwd() if cwd is None else cwd,
        sys.argv if argv is None else argv,
    )
    write_atomically(path, data)
    return path


def remove_ledger(session_id: str, *, directory: Path | None = None) -> bool:
    """Remove this session's ledger entry at a normal end; ``False`` when there was none."""
    target = sessions_dir() if directory is None else directory
    try:
        _ledger_path(target, session_id).unlink()
    except FileNotFoundError:
        return False
    return True
