"""The session ledger in the plugin: what a run killed outright left, found by the next run.

The controller scans the ledger at session start, writes its own entry, and removes it
at a normal or interrupted end; ini ``leanhost_earlier_sessions`` says whether what it
found is reported, fails the run or is stopped. See docs/guides/earlier-runs.md.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    from pytest_leanhost.core.earlier_sessions import Leftover

__all__ = ["EARLIER_MODES", "EarlierLeftover", "EarlierMode", "EarlierRuns"]

EarlierMode = Literal["report", "fail", "terminate"]
EARLIER_MODES: tuple[EarlierMode, ...] = ("report", "fail", "terminate")


class EarlierLeftover(NamedTuple):
    """One process an earlier, killed run left; ``action`` is what this run did to it."""

    session_id: str
    pid: int
    cmdline: tuple[str, ...]
    started_unix: float
    age_seconds: float
    action: str = "none"

    def to_json(self) -> dict[str, object]:
        """The report's ``earlier_sessions`` entry."""
        return {
            "session_id": self.session_id,
            "pid": self.pid,
            "cmdline": list(self.cmdline),
            "started_unix": self.started_unix,
            "age_seconds": round(self.age_seconds, 3),
            "action": self.action,
            "terminate": f"kill -TERM {self.pid}",
        }


class EarlierRuns:
    """The controller's ledger entry and what earlier runs left (scanned once, at start)."""

    def __init__(self, mode: EarlierMode, shutdown_timeout: float) -> None:
        self.mode = mode
        self.shutdown_timeout = shutdown_timeout
        self.leftovers: list[EarlierLeftover] = []
        self.problems: list[str] = []
        self._session_id: str | None = None
        self._directory: Path | None = None

    def start(self, session_id: str) -> None:
        """Scan for earlier runs' leftovers, act as the mode says, then write our entry.

        Rule: only a directory holding another session's entry is scanned (the
        entries read, the process table looked at); an empty one costs one listing.
        """
        from pytest_leanhost.core.session_ledger import SessionsDirError, ledger_names, sessions_dir

        try:
            directory = sessions_dir()
            if ledger_names(directory):
                self._scan(session_id, directory)
        except (SessionsDirError, OSError) as exc:
            self.problems.append(f"leanhost: sessions ledger not used: {exc}")
            return
        self._write(session_id, directory)

    def _scan(self, session_id: str, directory: Path) -> None:
        from pytest_leanhost.core.earlier_sessions import scan_earlier_sessions, terminate_leftovers

        scan = scan_earlier_sessions(session_id, directory=directory)
        self.problems.extend(
            f"leanhost: sessions ledger: {problem.path}: {problem.reason}"
            for problem in scan.problems
        )
        actions: dict[int, str] = {}
        if self.mode == "terminate" and scan.leftovers:
            for result in terminate_leftovers(scan.leftovers, self.shutdown_timeout):
                actions[result.leftover.pid] = result.action
        self.leftovers = [_leftover(item, actions.get(item.pid, "none")) for item in scan.leftovers]

    def _write(self, session_id: str, directory: Path) -> None:
        from pytest_leanhost.core.session_ledger import write_ledger

        try:
            write_ledger(session_id, directory=directory)
        except OSError as exc:
            self.problems.append(f"leanhost: cannot write the sessions ledger: {exc}")
            return
        self._session_id, self._directory = session_id, directory

    def end(self) -> None:
        """Remove our ledger entry (a normal or interrupted end); idempotent."""
        if self._session_id is None:
            return
        from pytest_leanhost.core.session_ledger import remove_ledger

        try:
            remove_ledger(self._session_id, directory=self._directory)
        except OSError as exc:
            self.problems.append(f"leanhost: cannot remove the sessions ledger entry: {exc}")
        self._session_id = None

    @property
    def fails_run(self) -> bool:
        """``fail`` mode and an earlier run's process is still alive."""
        return self.mode == "fail" and any(item.action == "none" for item in self.leftovers)

    def lines(self) -> list[str]:
        """The terminal section: each leftover, greppable, then the exact command to stop it."""
        lines: list[str] = []
        for item in self.leftovers:
            done = "" if item.action == "none" else f" action={item.action}"
            lines.append(
                f"earlier_session {item.session_id} pid={item.pid} age={int(item.age_seconds)}s"
                f"{done} cmdline={shlex.join(item.cmdline) or '-'}"
            )
            if item.action == "none":
                lines.append(f"  exact_terminate=kill -TERM {item.pid}")
        if any(item.action == "none" for item in self.leftovers):
            lines.append(
                "  or: leanhost doctor sessions --terminate (exact PIDs, session marker checked)"
            )
        return lines


def _leftover(item: Leftover, action: str) -> EarlierLeftover:
    return EarlierLeftover(
        session_id=item.session_id,
        pid=item.pid,
        cmdline=item.cmdline,
        started_unix=item.create_time,
        age_seconds=item.age_seconds,
        action=action,
    )
