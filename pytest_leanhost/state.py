"""The session's registries: one directory per test under one private session root.

A test's registry is only named when the test starts (its path is put into the
environment); the directory itself is created by the first server that
registers in it, so a test that starts no server costs a dictionary entry.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import quote, unquote

import pytest

__all__ = ["STATE_KEY", "SessionState", "nodeid_of_registry_name", "registry_name"]

_MAX_NAME = 200  # file-system names stop at 255 bytes


def registry_name(nodeid: str) -> str:
    """A directory name for a test's registry that maps back to its node id."""
    quoted = quote(nodeid, safe="")
    if len(quoted) <= _MAX_NAME:
        return f"t-{quoted}"
    digest = hashlib.sha256(nodeid.encode()).hexdigest()[:16]
    return f"h-{digest}-{quoted[: _MAX_NAME - 20]}"


def nodeid_of_registry_name(name: str) -> str | None:
    """The node id a registry name stands for, when the name alone says it."""
    return unquote(name[2:]) if name.startswith("t-") else None


class SessionState:
    """Where the session's registries live and which test each belongs to."""

    def __init__(self, session_id: str, root: Path, worker: str | None = None) -> None:
        self.session_id = session_id
        self.root = root
        self.worker = worker
        self.registries_root = os.path.join(root, "registries")
        self._registries_prefix = self.registries_root + os.sep
        self._nodeids: dict[str, str] = {}

    def registry_path(self, nodeid: str) -> str:
        """The registry directory of test ``nodeid``, named, not created (once per test)."""
        path = self._registries_prefix + registry_name(nodeid)
        self._nodeids[path] = nodeid
        return path

    def registry_for(self, nodeid: str, *, create: bool = False) -> Path:
        """The registry directory of test ``nodeid`` (created, mode 0700, if asked)."""
        path = self.registry_path(nodeid)
        if create:
            os.makedirs(path, mode=0o700, exist_ok=True)
        return Path(path)

    def own_registries(self) -> dict[str, str | None]:
        """The registries of this process's tests that exist (a server created them)."""
        return {path: nodeid for path, nodeid in self._nodeids.items() if os.path.isdir(path)}

    def all_registries(self) -> dict[str, str | None]:
        """Every registry directory under the session root, with its test's node id."""
        found: dict[str, str | None] = {}
        try:
            entries = list(os.scandir(self.registries_root))
        except FileNotFoundError:
            return found
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                found[entry.path] = self._nodeids.get(entry.path) or nodeid_of_registry_name(
                    entry.name
                )
        return found


STATE_KEY = pytest.StashKey[SessionState]()
