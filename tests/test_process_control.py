"""Stopping the stack's processes by PID."""

from __future__ import annotations

import subprocess
import sys

from nst_core.batch.processes import alive
from tools.process_control import stop_processes

# Ignores SIGTERM, so only the SIGKILL after the timeout stops it.
STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(600)
"""

# On SIGTERM, notes whether the stubborn process was still running at that moment.
WITNESS = """
import signal, sys, time
from pathlib import Path
from nst_core.batch.processes import alive
stubborn, note = int(sys.argv[1]), Path(sys.argv[2])
def on_term(*_):
    note.write_text("running" if alive(stubborn) else "gone")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
time.sleep(600)
"""


def test_stopping_several_signals_all_before_waiting_for_any(spawn, tmp_path):
    note = tmp_path / "note"

    def start(*args: str) -> subprocess.Popen:
        process = spawn.popen(
            [sys.executable, "-c", *args],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        return process

    stubborn = start(STUBBORN)
    witness = start(WITNESS, str(stubborn.pid), str(note))
    stop_processes([stubborn.pid, witness.pid], timeout=3)
    # One at a time, the witness would hear SIGTERM only once the stubborn one was killed.
    assert note.read_text() == "running"
    assert not alive(stubborn.pid) and not alive(witness.pid)
