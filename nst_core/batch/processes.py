"""Whether a process on this host is still running; a zombie (exited, not yet reaped) is not.

Job claims use it to free at once the jobs of a run killed on this host; the local stack
uses it to tell which of its processes are up.
"""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, but running
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) already said it exists
