"""The words for how a process got out of the run's sight, and the one rule for "reparented".

Standard library only: the escape words are part of a finding's JSON form (the
report's ``escaped`` list, validated when a detail is read back), and that form
travels without psutil. :func:`pytest_leanhost.core.live_process.escape_words`
claims each word from the live process; the ``reparented`` decision is
:func:`reparented`, here, for every caller.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["ESCAPE_MEANINGS", "ESCAPE_WORDS", "EscapeWord", "reparented"]

#: How a process got out of the run's sight; see ``describe.escape_words`` for each rule.
EscapeWord = Literal[
    "environment_dropped", "new_session", "new_process_group", "reparented", "daemonized"
]

#: Every escape word, in the fixed order in which a finding lists the ones it claims.
ESCAPE_WORDS: tuple[EscapeWord, ...] = (
    "environment_dropped",
    "new_session",
    "new_process_group",
    "reparented",
    "daemonized",
)

#: What each escape word says about a process, in :data:`ESCAPE_WORDS` order: the
#: documentation's table and troubleshooting entries are generated from it.
ESCAPE_MEANINGS: dict[EscapeWord, str] = dict(
    zip(
        ESCAPE_WORDS,
        (
            "it was found by lineage: its starting environment lacks the run's session marker",
            "it runs in a session other than pytest's (setsid)",
            "it runs in a process group other than pytest's (setpgid)",
            "its parent now is not the parent it had when the run first saw it",
            "it has no controlling terminal and its stdin, stdout and stderr are closed "
            "or /dev/null",
        ),
        strict=True,
    )
)


def reparented(
    *,
    current_parent: int | None,
    first_seen_parent: int | None,
    recorded_parent: int | None,
    root_pid: int,
) -> bool:
    """Whether a process of the run now hangs under another parent than the one it had.

    Claimed only from facts, each needing the current parent (from the process
    table); any one suffices:

    - its parent at first sight (``first_seen_parent``, the caller's lineage data)
      differs from its parent now;
    - nothing saw its first parent and its parent now is init (PID 1), while the
      run's root is not init: init never started a process of the run;
    - its record names a parent at start (``recorded_parent``,
      ``parent_pid_at_start``) other than its parent now: it was adopted (by
      pytest, the subreaper, when its launcher exited unseen).
    """
    if current_parent is None:
        return False
    if first_seen_parent is not None and first_seen_parent != current_parent:
        return True
    if first_seen_parent is None and current_parent == 1 and root_pid != 1:
        return True
    return recorded_parent is not None and recorded_parent != current_parent
