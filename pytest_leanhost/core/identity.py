"""A process's identity: a PID and its create time, and when two create times are one process.

Every place that pins a PID (the pinned process and its signals, the description
of a leak, the session ledger, the leftovers of a killed run) asks
:func:`same_create_time`, so cleanup and description never disagree about whether
a PID still names the process that was seen. Standard library only: the ledger's
scan at every session start asks it without loading psutil.
"""

from __future__ import annotations

__all__ = ["CREATE_TIME_TOLERANCE", "same_create_time"]

#: Two create times of one PID within this many seconds are the same process.
#:
#: psutil computes a create time as ``/proc/PID/stat`` start ticks / ``SC_CLK_TCK``
#: plus the boot time from ``/proc/stat``, and so does the probe's own ``/proc``
#: reader: within one boot two readings of one process agree to the last bit, or
#: differ by float rounding (far below a microsecond) where they were computed in
#: another order or elsewhere (``process_iter``). The boot time as read can move by
#: a tick on some kernels, 10 ms at ``SC_CLK_TCK`` = 100. 50 ms is five such ticks.
#: A PID is reused only after the kernel has handed out every other free PID
#: (``pid_max``, 32768 at the least), so a newcomer starts seconds, not
#: milliseconds, after the process it replaces. Should the wall clock be stepped
#: between two readings (the boot time then moves with it, in whole seconds), the
#: process is refused as a stranger: the safe side, nothing is signalled.
CREATE_TIME_TOLERANCE = 0.05


def same_create_time(first: float, second: float) -> bool:
    """Whether two create times read for one PID name the same process."""
    return abs(first - second) <= CREATE_TIME_TOLERANCE
