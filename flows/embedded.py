"""`nst run`'s embedded Prefect server: the temporary server Prefect starts on first use when
PREFECT_API_URL is unset (its SubprocessASGIServer, a uvicorn child process), made to end with
the `nst run` that started it, and known to this process as its own.

Ending with its parent: Prefect stops its server at exit (atexit), which a SIGKILL, an OOM kill
or a crash skips, leaving a ~200 MB uvicorn under PID 1. Here the server's stdin is a pipe
whose write end only `nst run` holds (subprocess makes it close-on-exec, so no exec'd child
inherits it); the kernel closes it however `nst run` ends, and a watchdog thread in the server
process, blocked reading that pipe, sees end-of-file: the server then stops as on SIGTERM
(a clean SQLite shutdown) and is ended outright after GRACE_S. No polling, no race (an
end-of-file that came before the thread started is read at once), and unlike Linux's
PR_SET_PDEATHSIG it does not fire when merely the parent *thread* that started the server
exits, and needs no preexec_fn (unsafe in a process that has threads).

Its own: `started_here(url)` says whether this process started the server `url` belongs to,
which is the only case where flows/execute.py may reset device slots (no lease repossessor
runs on this server). A flow run on any other server (a deployment's, from a worker) cannot
ask for that: it is no parameter, but a fact of the process.
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when used: the server's module takes ~3 s to import
    from prefect.server.api.server import SubprocessASGIServer

GRACE_S = 10.0  # after its parent is gone: the server's time to shut down cleanly
_installed: SubprocessASGIServer | None = None  # set by install(), in `nst run` only


def install() -> None:
    """Make the server Prefect starts on first use in this process (PREFECT_API_URL unset)
    one that ends with it: Prefect finds it as `SubprocessASGIServer()`, the instance under
    the None key (as its own test harness does), and starts it with `_start_watched`. A
    server of Prefect's own that already runs here is left alone."""
    global _installed
    from prefect.server.api.server import SubprocessASGIServer

    current = SubprocessASGIServer._instances.get(None)
    if current is not None and (current is _installed or current.running):
        return
    SubprocessASGIServer._instances.pop(None, None)
    server = SubprocessASGIServer()  # registers itself under the None key
    # Its start command (a private method, which Prefect's start() calls: once, or again
    # on another port when the first was taken) becomes ours.
    setattr(server, "_run_uvicorn_command", lambda: _start_watched(server))  # noqa: B010
    _installed = server


def started_here(api_url: str) -> bool:
    """Whether `api_url` is the API of the server install() set up, started and running in
    this process (never true in a process that did not call install(): a deployment's)."""
    server = _installed
    return (
        server is not None
        and server.running
        and server.server_process is not None
        and server.server_process.poll() is None
        and api_url.rstrip("/") == server.api_url.rstrip("/")
    )


def _start_watched(server: SubprocessASGIServer) -> subprocess.Popen[Any]:
    """Prefect's own server command and environment (SubprocessASGIServer._run_uvicorn_command
    in prefect/server/api/server.py), with this module as the entry point and a pipe as stdin."""
    import prefect
    from prefect.settings import get_current_settings

    uvicorn_args = [
        "--app-dir",
        str(prefect.__module_path__.parent),
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(server.port),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]
    server_env = {
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    return subprocess.Popen(
        # -P: the working folder (which may hold a `flows` package of its own) is not put on
        # sys.path; this module is found where nst-batch is installed.
        [sys.executable, "-P", "-m", "flows.embedded", *uvicorn_args],
        stdin=subprocess.PIPE,
        env={
            **os.environ,
            **server_env,
            **get_current_settings().to_environment_variables(exclude_unset=True),
        },
    )


def _watch_parent() -> None:
    """In the server's process: wait for end-of-file on stdin, i.e. for `nst run` to be gone,
    then stop as on SIGTERM, and for sure after GRACE_S."""
    while sys.stdin.buffer.read(4096):
        pass
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_S)
    os._exit(1)


if __name__ == "__main__":  # the server's process: `python -m uvicorn ARGS`, watched
    threading.Thread(target=_watch_parent, name="nst-parent-watch", daemon=True).start()
    sys.argv = ["uvicorn", *sys.argv[1:]]
    runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
