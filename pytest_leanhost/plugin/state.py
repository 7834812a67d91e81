"""The session's registries: one directory per test under one private session root.

A test's registry is only named when the test starts (its path is put into the
environment); the directory itself is created by the first server that
registers in it, so a test that starts no server costs a dictionary entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_leanhost.files import write_atomically

__all__ = ["STATE_KEY", "SessionState", "nodeid_of_registry_name", "registry_name"]

_MAX_NAME = 200  # file-system names stop at 255 bytes
#: An xdist worker's PID file in the session root: ``worker-gw0.pid``.
_WORKER_PREFIX = "worker-"


def registry_name(nodeid: str) -> str:
    """A directory name for a test's registry that maps back to its node id.

    Only ``/`` cannot stand in a file name (a node id holds no NUL), so escaping
    ``%`` and ``/`` is enough and keeps the name readable; it runs once per
    test, so it must cost next to nothing. A name too long for the file system
    becomes a hash, which the session root's index maps back.
    """
    name = "t-" + nodeid.replace("%", "%25").replace("/", "%2F")
    # An ASCII name (a flag CPython keeps: no scan) is as long in bytes as in characters.
    if len(name) <= _MAX_NAME and (name.isascii() or len(name.encode()) <= _MAX_NAME):
        return name
    return "h-" + hashlib.sha256(nodeid.encode()).hexdigest()[:16]


def nodeid_of_registry_name(name: str) -> str | None:
    """The node id a registry name stands for, when the name alone says it."""
    if not name.startswith("t-"):
        return None
    return name[2:].replace("%2F", "/").replace("%25", "%")


class SessionState:
    """Where the session's registries live and which test each belongs to."""

    def __init__(self, session_id: str, root: Path, worker: str | None = None) -> None:
        self.session_id = session_id
        self.root = root
        self.worker = worker
        self.registries_root = os.path.join(root, "registries")
        self._registries_prefix = self.registries_root + os.sep
        self._nodeids: dict[str, str] = {}
        #: The processes xdist started for its workers' gateways (the controller only).
        self._gateways: set[int] = set()

    def registry_path(self, nodeid: str) -> str:
        """The registry directory of test ``nodeid``, named, not created (once per test)."""
        name = registry_name(nodeid)
        path = self._registries_prefix + name
        if name[0] == "h" and path not in self._nodeids:
            # A hashed name does not say its test: the shared index does, for the controller.
            self._update_index(lambda index: index["registries"].__setitem__(name, nodeid))
        self._nodeids[path] = nodeid
        return path

    def registry_for(self, nodeid: str, *, create: bool = False) -> Path:
        """The registry directory of test ``nodeid`` (created, mode 0700, if asked)."""
        path = self.registry_path(nodeid)
        if create:
            os.makedirs(path, mode=0o700, exist_ok=True)
        return Path(path)

    def own_registries(self) -> dict[str, str | None]:
        """The registries of this process's tests that exist (a server created them).

        Whatever stands at a registry's path counts, a file included: a registry
        that cannot be read is a finding, not something to pass over.
        """
        return {path: nodeid for path, nodeid in self._nodeids.items() if os.path.lexists(path)}

    def all_registries(self) -> dict[str, str | None]:
        """Everything at a registry's name under the session root, with its test's node id.

        A file or a link where a test's registry directory should be is listed too:
        the check reports it rather than passing it over.
        """
        found: dict[str, str | None] = {}
        try:
            entries = list(os.scandir(self.registries_root))
        except FileNotFoundError:
            return found
        indexed: dict[str, str] = {}
        if any(not entry.name.startswith("t-") for entry in entries):
            indexed = self._read_index()["registries"]
        for entry in entries:
            if entry.name.startswith(("t-", "h-")):
                found[entry.path] = (
                    self._nodeids.get(entry.path)
                    or nodeid_of_registry_name(entry.name)
                    or indexed.get(entry.name)
                )
        return found

    def register_worker(self, worker: str, pid: int) -> None:
        """Note an xdist worker's PID, so the controller never takes it for a leak.

        Rule: each worker writes a file of its own (atomically), so no lock is
        taken at a worker's start: importing filelock alone costs a worker about
        15 ms.
        """
        write_atomically(self._worker_file(worker), f"{pid}\n".encode())

    def has_worker(self, worker: str) -> bool:
        """Whether xdist worker ``worker`` wrote its PID file here: it stood on this root."""
        return os.path.exists(self._worker_file(worker))

    def _worker_file(self, worker: str) -> str:
        name = f"{_WORKER_PREFIX}{worker.replace('%', '%25').replace('/', '%2F')}.pid"
        return os.path.join(self.root, name)

    def add_gateway(self, pid: int) -> None:
        """Note a process xdist started for a worker (the controller's own child)."""
        self._gateways.add(pid)

    def worker_pids(self) -> set[int]:
        """The PIDs of every xdist worker of the session (empty without xdist).

        On the controller, also every process at or below a worker's gateway
        process, read now: a wrapper (``unshare``, ``ssh``) and a worker in a PID
        namespace of its own, whose PID file holds a PID of that namespace. What
        is below them is that worker's, never the controller's to judge.
        """
        pids = self._gateway_trees()
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.root):
                if entry.name.startswith(_WORKER_PREFIX) and entry.name.endswith(".pid"):
                    with (
                        contextlib.suppress(OSError, ValueError),
                        open(entry.path, encoding="utf-8") as handle,
                    ):
                        pids.add(int(handle.read()))
        return pids

    def _gateway_trees(self) -> set[int]:
        """The live gateway processes and all their descendants (Linux; elsewhere the PIDs)."""
        found: set[int] = set()
        todo = list(self._gateways)
        while todo:
            pid = todo.pop()
            if pid in found:
                continue
            found.add(pid)
            todo.extend(_children(pid))
        return found

    # The index is the one file that several processes write (a hashed registry
    # name's node id): every change happens under a file lock, and lands by an
    # atomic rename, so no reader sees half of it.

    def _index_path(self) -> str:
        return os.path.join(self.root, "index.json")

    def _read_index(self) -> dict[str, Any]:
        index: dict[str, Any] = {"registries": {}}
        with contextlib.suppress(OSError, ValueError):
            with open(self._index_path(), encoding="utf-8") as handle:
                loaded = json.load(handle)
            if isinstance(loaded, dict):
                for key in index:
                    if isinstance(loaded.get(key), dict):
                        index[key] = loaded[key]
        return index

    def _update_index(self, change: Callable[[dict[str, Any]], None]) -> None:
        from filelock import FileLock

        path = self._index_path()
        with FileLock(path + ".lock"):
            index = self._read_index()
            change(index)
            write_atomically(path, json.dumps(index).encode("utf-8"))


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (none where ``/proc`` cannot say)."""
    from pytest_leanhost.core.procfs import read_children

    return read_children(pid) or []


STATE_KEY = pytest.StashKey[SessionState]()
