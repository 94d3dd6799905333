"""`nst run`'s embedded Prefect server (flows/embedded.py): it never outlives its `nst run`,
SIGKILL included, and it is the only server whose device slots a flow run may reset; a
deployment run cannot ask for a reset."""

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from imagegen import TINY_MANIFEST, write_batch
from prefect.exceptions import SignatureMismatchError
from prefect.utilities.callables import parameter_schema

from flows import embedded, execute
from flows.batch import stylize_batch

SERVER_APP = "prefect.server.api.server:create_app"  # in the embedded server's command line


def _processes() -> dict[int, tuple[int, str, str]]:
    """{pid: (parent pid, state, command line)} of every process /proc shows."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # it ended while being read
            continue
        # "PID (NAME) STATE PPID ...": NAME may hold spaces and parentheses.
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        found[int(entry.name)] = (int(ppid), state, command)
    return found


def _gone(pid: int) -> bool:
    """Ended: no such process, or a zombie that only waits to be reaped."""
    process = _processes().get(pid)
    return process is None or process[1] == "Z"


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def _embedded_server_of(parent: int) -> tuple[int, int] | None:
    """(pid, port) of `parent`'s child serving Prefect's API, once it answers."""
    for pid, (ppid, _, command) in _processes().items():
        port = re.search(r"--port (\d+)", command)
        if ppid == parent and SERVER_APP in command and port and _healthy(int(port[1])):
            return pid, int(port[1])
    return None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_the_embedded_server_ends_when_nst_run_is_sigkilled(tmp_path, spawn):
    """Before: the uvicorn child of a SIGKILLed `nst run` ran on under PID 1 (Prefect stops
    it at exit, which SIGKILL skips). Only `nst run` is killed here, not its process group."""
    # Jobs that run for hours (every evaluation, no early stop): `nst run` is still running
    # when it is killed, however fast this machine is.
    manifest = TINY_MANIFEST.replace("iterations: 6", "iterations: 100000, stop_tolerance: 0")
    uri = write_batch(str(tmp_path), manifest)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home")}
    log = tmp_path / "nst-run.log"
    with log.open("wb") as output:
        nst = spawn.popen(
            [sys.executable, "-m", "nst_cli", "run", uri],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = None
    try:
        deadline = time.monotonic() + 240
        while server is None and nst.poll() is None and time.monotonic() < deadline:
            server = _embedded_server_of(nst.pid)
            time.sleep(0.2)
        assert server is not None, f"no embedded server answered:\n{log.read_text()[-3000:]}"
        assert nst.poll() is None, f"`nst run` ended by itself:\n{log.read_text()[-3000:]}"
        os.kill(nst.pid, signal.SIGKILL)  # `nst run` alone: no cleanup of its own runs
        nst.wait(timeout=30)
        deadline = time.monotonic() + 60
        while not _gone(server[0]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _gone(server[0]), f"the embedded server (pid {server[0]}) outlived `nst run`"
        assert not _healthy(server[1])
    finally:
        if server is not None and not _gone(server[0]):
            os.kill(server[0], signal.SIGKILL)


def test_a_deployment_run_cannot_ask_to_reset_device_slots():
    """Before: `embedded_server=true`, a parameter of the flow, made any run (a deployment's
    too) free the device slots that every other live run on its server held. Now no such
    parameter exists: Prefect refuses a run that passes it before the flow starts."""
    assert "embedded_server" not in parameter_schema(stylize_batch.fn).properties
    with pytest.raises(SignatureMismatchError, match="embedded_server"):
        # What Prefect's engine does with a deployment run's parameters.
        stylize_batch.validate_parameters({"manifest": "m.yaml", "embedded_server": True})


class _Client:
    """The slice of Prefect's sync client ensure_device_limits uses, recording its calls."""

    def __init__(self, api_url: str) -> None:
        self.api_url, self.calls = api_url, []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def upsert_global_concurrency_limit_by_name(self, name, limit):
        self.calls.append(("upsert", name, limit))

    def update_global_concurrency_limit(self, name, update):
        self.calls.append(("reset", name, update.active_slots))


@pytest.fixture
def own_server(monkeypatch):
    """What install() leaves in `nst run`'s process once Prefect started the server (on port
    4321 here): install() itself runs in the SIGKILL test above, through `nst run`."""
    server = SimpleNamespace(
        running=True,
        server_process=SimpleNamespace(poll=lambda: None),
        api_url="http://127.0.0.1:4321/api",
    )
    monkeypatch.setattr(embedded, "_installed", server)
    return server


def _limits_calls(monkeypatch, api_url: str) -> list:
    client = _Client(api_url)
    monkeypatch.setattr(execute, "get_client", lambda sync_client: client)
    execute.ensure_device_limits(["cpu"])
    return client.calls


def test_slots_are_reset_only_on_the_embedded_server_this_process_started(monkeypatch, own_server):
    name = execute.device_limit_name("cpu")
    assert _limits_calls(monkeypatch, "http://127.0.0.1:4321/api/") == [
        ("upsert", name, 1),
        ("reset", name, 0),
    ]
    # Another server (a deployment's, PREFECT_API_URL): the limit is made, never reset.
    assert _limits_calls(monkeypatch, "http://127.0.0.1:4200/api/") == [("upsert", name, 1)]
    own_server.server_process = SimpleNamespace(poll=lambda: -9)  # it died: not ours to trust
    assert _limits_calls(monkeypatch, "http://127.0.0.1:4321/api/") == [("upsert", name, 1)]


def test_a_process_that_installed_no_embedded_server_never_resets(monkeypatch):
    """A worker's flow run, or a flow called in a plain Python process."""
    monkeypatch.setattr(embedded, "_installed", None)
    name = execute.device_limit_name("cpu")
    assert _limits_calls(monkeypatch, "http://127.0.0.1:4321/api/") == [("upsert", name, 1)]
