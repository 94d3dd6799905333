"""Processes of the local stack: their trees, stopping them by PID, and free loopback ports.

Each long-running part is started in its own session (so its process group is its PID) and
stopped by that PID: SIGTERM to the group, then SIGKILL, then anything it started in a
session of its own (a process worker's flow runs) that outlived it.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from pathlib import Path

from nst_core.batch.processes import alive

# SeaweedFS listens on each HTTP port and on port + 10000 for gRPC.
GRPC_OFFSET = 10000


def descendants(pid: int) -> list[int]:
    """Every process started by `pid`, at any depth (read from /proc; [] without it)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def wait_gone(pids: list[int], timeout: float) -> bool:
    """Until none of `pids` runs (a zombie counts as gone); False if some still do."""
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _signal(pid: int, sig: signal.Signals, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_process(pid: int, timeout: float = 20, group: bool = True) -> None:
    """Stop `pid` (its process group when `group`) and whatever it started: SIGTERM, then
    SIGKILL for what is left after `timeout` seconds."""
    stop_processes([pid], timeout, group)


def stop_processes(pids: list[int], timeout: float = 20, group: bool = True) -> None:
    """`stop_process` for several at once: all are signalled before any is waited for, so
    parts that each take their whole `timeout` to stop cost one timeout, not one each."""
    families = {pid: [pid, *descendants(pid)] for pid in pids}
    everyone = [member for family in families.values() for member in family]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, family in families.items():
            _signal(pid, sig, group)
            for other in family[1:]:  # children in sessions of their own
                if alive(other):
                    _signal(other, sig, group=False)
        if wait_gone(everyone, timeout):
            return


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, twins: bool = False, avoid: set[int] | None = None) -> list[int]:
    """`count` distinct free ports on 127.0.0.1 (with `twins`, each with port + 10000 free
    too). Drawn below Linux's ephemeral range (32768+), so outgoing connections are unlikely
    to take one before its server binds it, and a twin stays a valid port."""
    taken = set(avoid or ())
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randrange(15000, 30000)
        wanted = {port, port + GRPC_OFFSET} if twins else {port}
        if wanted & taken or not all(_bindable(p) for p in wanted):
            continue
        chosen.append(port)
        taken |= wanted
    return chosen
