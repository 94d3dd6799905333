"""A local Prefect stack in one command: server, work pool, deployments and a worker.

    python -m tools.stack up      # what `make up` runs; idempotent
    python -m tools.stack down    # what `make down` runs; stops what `up` started, by PID

State lives under .prefect/ in the repo (SQLite database, logs, PIDs). Processes start in
their own sessions from Python, not with `&` from a shell script: a worker started that way
inherits an ignored SIGINT/SIGTERM and would not stop. The end-to-end test drives the same
class with a temporary home and free ports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from nst_core.batch.processes import alive
from nst_core.settings import Settings

REPO = Path(__file__).resolve().parent.parent
POOL = "nst-gpu"


def _prefect() -> list[str]:
    return [sys.executable, "-m", "prefect"]


@dataclass
class LocalStack:
    home: Path
    port: int = 4200
    env: dict[str, str] = field(default_factory=dict)  # extra environment for every process
    workers: int = 1
    # Flow runs one worker runs at once (None: no limit). One per GPU host is --limit 1.
    worker_limit: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def pids_file(self) -> Path:
        return self.home / "stack.json"

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_WORKER_PREFETCH_SECONDS": "2",
            "PWD": str(REPO),  # prefect.yaml's pull step runs flows from this checkout
            **self.env,
        }

    # -- processes -------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> int:
        log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        process = subprocess.Popen(
            args,
            cwd=REPO,
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return process.pid

    def _run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run(
            args,
            cwd=REPO,
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[2:])} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def running(self) -> dict[str, int]:
        """The PIDs recorded by `up` that are still alive."""
        if not self.pids_file.exists():
            return {}
        pids = json.loads(self.pids_file.read_text()).get("pids", {})
        return {name: pid for name, pid in pids.items() if alive(pid)}

    # -- the steps of `up` -----------------------------------------------------------------
    def start_server(self, timeout: float = 90) -> int:
        pid = self._spawn(
            "server",
            [*_prefect(), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
        )
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline or not alive(pid):
                log = (self.home / "server.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"Prefect server did not become healthy:\n{log}")
            time.sleep(0.5)
        return pid

    def create_pool(self) -> None:
        self._run([*_prefect(), "work-pool", "create", POOL, "--type", "process", "--overwrite"])

    def deploy(self) -> None:
        self._run([*_prefect(), "--no-prompt", "deploy", "--all"], timeout=300)

    def worker_names(self) -> list[str]:
        return ["worker"] + [f"worker-{n}" for n in range(2, self.workers + 1)]

    def start_worker(self, name: str = "worker") -> int:
        args = [*_prefect(), "worker", "start", "--pool", POOL, "--name", f"{POOL}-{name}"]
        if self.worker_limit is not None:
            args += ["--limit", str(self.worker_limit)]
        return self._spawn(name, args)

    def up(self) -> dict[str, int]:
        self.home.mkdir(parents=True, exist_ok=True)
        pids = self.running()
        if "server" not in pids:
            pids["server"] = self.start_server()
        self._save(pids)
        self.create_pool()
        self.deploy()
        for name in self.worker_names():
            if name not in pids:
                pids[name] = self.start_worker(name)
        self._save(pids)
        return pids

    def down(self, timeout: float = 20) -> list[str]:
        """Stop the workers, then the server; returns what was stopped."""
        pids = self.running()
        stopped = []
        for name in [*sorted(n for n in pids if n.startswith("worker")), "server"]:
            if name in pids:
                _stop(pids[name], timeout)
                stopped.append(name)
        self.pids_file.unlink(missing_ok=True)
        return stopped

    def _save(self, pids: dict[str, int]) -> None:
        self.pids_file.write_text(json.dumps({"pids": pids, "url": self.url}))


def _stop(pid: int, timeout: float) -> None:
    """SIGTERM the process group, then SIGKILL it if it does not exit in time."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not alive(pid):
                return
            time.sleep(0.2)


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    port = Settings.from_env().prefect_port
    stack = LocalStack(home=REPO / ".prefect", port=port)
    if command == "up":
        pids = stack.up()
        print(
            f"Prefect is up: UI {stack.url}  (server pid {pids['server']}, worker pid "
            f"{pids['worker']}; logs in {stack.home})\n"
            f"Use it from this shell:  export PREFECT_API_URL={stack.api_url}\n"
            "Run a batch:  prefect deployment run 'stylize-batch/adhoc' "
            "-p manifest=$PWD/manifests/demo.yaml --watch\n"
            "Stop:         make down"
        )
    elif command == "down":
        stopped = stack.down()
        print(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
    else:
        sys.exit("usage: python -m tools.stack up|down")


if __name__ == "__main__":
    main()
