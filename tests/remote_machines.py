"""Other machines on this one: pytest-xdist workers each in its own PID, mount and UTS namespace.

A wrapper (``--tx popen//python=WRAPPER``) starts the worker's interpreter under
``unshare --pid --fork --mount-proc --mount --uts``: its own host name, its own
PIDs, and a private, empty tmpfs over the directory that holds everything of a
machine (home, cache, temporary files, the base temporary directory). The
checkout and the interpreter stay shared, as a remote machine has them at the
same path. A shell is PID 1 of each namespace, the worker its child, so a worker
killed with SIGKILL leaves its machine standing until the shell sees it die.

The tests judge with their own eyes: each namespace's id is written down by its
wrapper, and ``/proc/*/ns/pid`` says which processes still live in it. PID 1 of a
namespace, killed, takes the whole namespace with it: that is how
:meth:`RemoteMachines.close` ends whatever a broken run left.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from pytest_leanhost.stopping import poll_until

__all__ = ["RemoteMachines", "unshare_or_skip"]

_UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--mount", "--uts"]


@functools.cache
def _unshare_refused() -> str | None:
    """Why namespaces cannot be made here (no ``unshare``, not root), or None."""
    if not sys.platform.startswith("linux"):
        return "PID and mount namespaces are Linux only"
    try:
        done = subprocess.run(
            [*_UNSHARE, "sh", "-c", "hostname remote-0 && mount -t tmpfs tmpfs /mnt"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError as exc:
        return f"unshare cannot run: {exc}"
    if done.returncode != 0:
        return f"unshare is refused here (root needed): {done.stderr.strip()}"
    return None


def unshare_or_skip() -> None:
    """Skip with one reason where namespaces cannot be made; under ``CI=true``, fail."""
    reason = _unshare_refused()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def pid_namespace_of(pid: int) -> str | None:
    """The PID namespace of process ``pid`` (``pid:[N]``), or None when it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


class RemoteMachines:
    """Wrappers that make machines, the machine-local directory they hide, what lives in them."""

    def __init__(self, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.base = base
        #: Everything of one machine: each namespace mounts a private tmpfs over it.
        self.local = base / "machine"
        self.basetemp = self.local / "basetemp"
        self._log = base / "namespaces.log"
        for name, sub in [
            ("HOME", "home"),
            ("XDG_CACHE_HOME", "cache"),
            ("TMPDIR", "tmp"),
            ("LEANHOST_SESSIONS_DIR", "sessions"),
            ("LEAN_HOST_MCP_PROCESS_REGISTRY_DIR", "registry"),
        ]:
            monkeypatch.setenv(name, str(self.local / sub))
        for sub in ("home", "tmp"):
            (self.local / sub).mkdir(parents=True, mode=0o700, exist_ok=True)

    def wrapper(self, hostname: str) -> Path:
        """A ``python=`` for ``--tx popen``: the interpreter on a new machine named ``hostname``.

        Python processes there write their PIDs (of that namespace) to a log of
        their own, never to the run's: those PIDs mean nothing on this machine.
        """
        unshare_or_skip()
        path = self.base / f"python-on-{hostname}"
        pids = self.base / f"pids-on-{hostname}.log"
        script = (
            'hostname "$0" && mount -t tmpfs -o mode=0700 tmpfs "$1"'
            ' && mkdir -p "$HOME" "$TMPDIR"'
            ' && echo "$0 $(readlink /proc/self/ns/pid)" >> "$2" || exit 111\n'
            f"export LEANHOST_TESTS_PID_LOG={shlex.quote(str(pids))}\n"
            'shift 2; "$@"; exit $?'
        )
        args = [hostname, str(self.local), str(self._log), sys.executable]
        path.write_text(
            "#!/bin/sh\n"
            f"exec {shlex.join(_UNSHARE)} /bin/sh -c {shlex.quote(script)}"
            f' {shlex.join(args)} "$@"\n'
        )
        path.chmod(0o755)
        return path

    def namespaces(self) -> dict[str, list[str]]:
        """Each host name's PID namespaces, as their wrappers wrote them down (in order)."""
        found: dict[str, list[str]] = {}
        if self._log.exists():
            for line in self._log.read_text().splitlines():
                host, _, namespace = line.partition(" ")
                found.setdefault(host, []).append(namespace)
        return found

    def living_in(self, namespace: str) -> list[int]:
        """This machine's PIDs of every process still in ``namespace`` (zombies included)."""
        return [pid for pid in psutil.pids() if pid_namespace_of(pid) == namespace]

    def assert_all_gone(self) -> None:
        """Every namespace the run made is empty: its init died, and everything with it."""
        namespaces = [ns for spaces in self.namespaces().values() for ns in spaces]
        assert namespaces, "no wrapper wrote its namespace down: no worker ran on a machine"
        poll_until(lambda: not any(self.living_in(ns) for ns in namespaces), timeout=10)
        assert {ns: self.living_in(ns) for ns in namespaces} == {ns: [] for ns in namespaces}

    def close(self) -> None:
        """SIGKILL each namespace's init (it takes its namespace along), pinned by start time."""
        for spaces in self.namespaces().values():
            for namespace in spaces:
                for pid in self.living_in(namespace):
                    with contextlib.suppress(psutil.Error, OSError):
                        proc = psutil.Process(pid)  # pinned by create time from here on
                        if pid_namespace_of(pid) == namespace and _is_init(pid):
                            proc.send_signal(signal.SIGKILL)


def _is_init(pid: int) -> bool:
    """Whether ``pid`` is PID 1 of its own namespace (the last ``NSpid`` of its status)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("NSpid:"):
                    return line.split()[-1] == "1"
    except OSError:
        pass
    return False
