"""The stack a team runs, on one machine, in one command: PostgreSQL, a Prefect server on it,
SeaweedFS as the team's bucket, two work pools with their workers, and the deployments.

    python -m tools.stack up      # what `make up` runs; idempotent
    python -m tools.stack down    # what `make down` runs; stops what `up` started, by PID
    python -m tools.stack drop|nightly|env ...   # tools/stack_commands.py

State lives under HOME (.prefect/ in the repo): the PostgreSQL cluster, the bucket's data,
logs, PIDs (stack.json, gone after `down`) and the ports and keys chosen once
(stack-config.json, readable by its owner only). Processes start in their own sessions from
Python, not with `&` from a shell script: a worker started that way inherits an ignored
SIGINT/SIGTERM and would not stop. The end-to-end tests drive the same class with a
temporary home and free ports.

Two pools: `nst-gpu` for batches (one worker per GPU host, `--limit 1` there), `nst-light`
for the inbox watcher, so a tick never takes a GPU worker's only slot. Every worker gets the
local bucket's endpoint and keys in its environment, never in Prefect's database, so nothing
the stack runs reaches a bucket outside this machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from nst_core.batch.processes import alive
from tools import api, deploy
from tools.postgres import LocalPostgres
from tools.process_control import stop_process, stop_processes
from tools.samples import seed_bucket
from tools.seaweed import LocalS3
from tools.stack_config import StackConfig, StackError

REPO = Path(__file__).resolve().parent.parent
GPU_POOL, LIGHT_POOL = "nst-gpu", "nst-light"
LIGHT_WORKER = "light"
# New deployments whose schedules the stack turns on: the inbox's bucket is its own local
# one. prefect.yaml ships every schedule off, so a plain `prefect deploy` polls no bucket
# a team has not named; `nightly` stays off until `python -m tools.stack nightly FILE`.
TURN_ON_WHEN_NEW = {"inbox"}
# Set by the user's shell, these would send the workers' S3 calls past the local endpoint
# (AWS_ENDPOINT_URL_S3 wins over AWS_ENDPOINT_URL) or sign them with foreign credentials.
FOREIGN_AWS = ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
DATABASE_URL = "PREFECT_API_DATABASE_CONNECTION_URL"
# A database the caller's shell names is not the stack's: workers get none, the server ours.
FOREIGN_DATABASE = ("PREFECT_API_DATABASE_", "PREFECT_SERVER_DATABASE_")


def _prefect() -> list[str]:
    return [sys.executable, "-m", "prefect"]


@dataclass
class LocalStack:
    home: Path
    port: int = 4200
    env: dict[str, str] = field(default_factory=dict)  # extra environment for every process
    workers: int = 1
    # Flow runs one GPU worker runs at once (None: no limit). A GPU host runs one batch at a
    # time (--limit 1, as the Dockerfile's worker): two would share its device's memory.
    worker_limit: int | None = 1
    # sqlite: only to compare against (tools/slot_bench.py); a team's server runs on postgresql.
    database: Literal["postgresql", "sqlite"] = "postgresql"
    # False: no SeaweedFS of its own; `env` gives the workers an S3 endpoint (tests do).
    local_s3: bool = True
    postgres_port: int | None = None  # None: the one chosen at the first `up`
    s3_ports: tuple[int, int, int, int, int] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def pids_file(self) -> Path:
        return self.home / "stack.json"

    def config(self) -> StackConfig:
        return StackConfig.load_or_create(
            self.home / "stack-config.json", self.postgres_port, self.s3_ports, avoid={self.port}
        )

    def postgres(self) -> LocalPostgres:
        config = self.config()
        return LocalPostgres(self.home / "postgres", config.postgres_port, config.postgres_password)

    def s3(self) -> LocalS3:
        config = self.config()
        return LocalS3(
            self.home / "s3", config.s3_ports, config.s3_access_key, config.s3_secret_key
        )

    def environment(self) -> dict[str, str]:
        """The environment of the workers and of the Prefect commands the stack runs."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_DATABASE)}
        if self.local_s3:
            base = {k: v for k, v in base.items() if k not in FOREIGN_AWS}
        return {
            **base,
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_WORKER_PREFETCH_SECONDS": "2",
            "PWD": str(REPO),  # prefect.yaml's pull step runs flows from this checkout
            **(self.s3().client_environment() if self.local_s3 else {}),
            **self.env,
        }

    def server_environment(self) -> dict[str, str]:
        """The workers' environment plus the database: only the server holds its password."""
        env = self.environment()
        if self.database == "postgresql":
            env[DATABASE_URL] = self.postgres().url
        return env

    # -- processes -------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> int:
        with open(self.home / f"{name}.log", "ab") as log:  # the child keeps its own copy
            process = subprocess.Popen(
                args,
                cwd=REPO,
                env=env or self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return process.pid

    def _run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            args, cwd=REPO, env=self.environment(), capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise StackError(f"{' '.join(args[2:])} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def healthy(self) -> bool:
        return api.healthy(self.api_url)

    def running(self) -> dict[str, int]:
        """The PIDs recorded by `up` that are still alive."""
        if not self.pids_file.exists():
            return {}
        pids = json.loads(self.pids_file.read_text()).get("pids", {})
        return {name: pid for name, pid in pids.items() if alive(pid)}

    # -- the steps of `up` -----------------------------------------------------------------
    def start_server(self, timeout: float = 120) -> int:
        args = [*_prefect(), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        pid = self._spawn("server", args, env=self.server_environment())
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline or not alive(pid):
                stop_process(pid, timeout=10)
                log = (self.home / "server.log").read_text(errors="replace")[-3000:]
                raise StackError(f"the Prefect server did not become healthy:\n{log}")
            time.sleep(0.5)
        return pid

    def start_s3(self, pids: dict[str, int]) -> int:
        s3 = self.s3()
        if "s3" in pids and s3.running(pids["s3"]):
            return pids["s3"]
        if "s3" in pids:  # alive but not serving: start it afresh
            stop_process(pids["s3"])
        return s3.start()

    def create_pools(self) -> None:
        """Both pools, created only when missing: a user's changes to a pool are kept."""
        for pool in (GPU_POOL, LIGHT_POOL):
            try:
                api.call(self.api_url, "GET", f"work_pools/{pool}")
            except api.ApiError as error:
                if error.status != 404:
                    raise
                self._run([*_prefect(), "work-pool", "create", pool, "--type", "process"])

    def deploy(self) -> bool:
        """prefect.yaml's deployments, each keeping the paused state it has on the server;
        skipped (False) when neither prefect.yaml nor the flows' code changed since the last
        deploy and every deployment is on the server as planned."""
        project = yaml.safe_load((REPO / "prefect.yaml").read_text())
        before = deploy.current_states(self.api_url)
        config = deploy.with_states(project, before, TURN_ON_WHEN_NEW)
        planned = deploy.planned_states(config)
        stamp = self.home / "deployed.sha256"
        digest = deploy.fingerprint(config, [REPO / "flows", REPO / "nst_core"])
        unchanged = stamp.exists() and stamp.read_text() == digest
        if unchanged and not deploy.differences(planned, before):
            return False
        deploy_file = self.home / "deploy.yaml"
        deploy_file.write_text(
            "# Written by tools/stack.py from prefect.yaml and the server's paused states.\n"
            + yaml.safe_dump(config, sort_keys=False)
        )
        self._run(
            [*_prefect(), "--no-prompt", "deploy", "--all", "--prefect-file", str(deploy_file)],
            timeout=300,
        )
        problems = deploy.differences(planned, deploy.current_states(self.api_url))
        if problems:
            raise StackError("deployed, but not as planned: " + "; ".join(problems))
        stamp.write_text(digest)
        return True

    def worker_names(self) -> list[str]:
        return ["worker"] + [f"worker-{n}" for n in range(2, self.workers + 1)] + [LIGHT_WORKER]

    def start_worker(self, name: str = "worker") -> int:
        """A GPU worker (`worker`, `worker-2`, ...) or the light pool's (`light`)."""
        pool = LIGHT_POOL if name == LIGHT_WORKER else GPU_POOL
        worker_name = f"{pool}-worker" if name == LIGHT_WORKER else f"{pool}-{name}"
        args = [*_prefect(), "worker", "start", "--pool", pool, "--name", worker_name]
        if pool == GPU_POOL and self.worker_limit is not None:
            args += ["--limit", str(self.worker_limit)]
        return self._spawn(name, args)

    def up(self) -> dict[str, int]:
        self.home.mkdir(parents=True, exist_ok=True)
        pids = self.running()
        # Each PID is recorded as soon as it exists, so `down` stops a half-started stack.
        if self.database == "postgresql":
            pids["postgres"] = self.postgres().start()
            self._save(pids)
        if self.local_s3:
            pids["s3"] = self.start_s3(pids)
            self._save(pids)
            seed_bucket(self.s3(), self.home / "samples")
        if "server" not in pids:
            pids["server"] = self.start_server()
            self._save(pids)
        self.create_pools()
        self.deploy()
        for name in self.worker_names():
            if name not in pids:
                pids[name] = self.start_worker(name)
        self._save(pids)
        return pids

    def down(self, timeout: float = 20) -> list[str]:
        """Stop the workers (and their flow runs), the server, S3, then PostgreSQL; returns
        what was stopped."""
        pids = self.running()
        stopped = []
        workers = sorted(n for n in pids if n.startswith("worker") or n == LIGHT_WORKER)
        # Together: a worker with a flow run in flight can take its whole timeout.
        if workers:
            stop_processes([pids[name] for name in workers], timeout)
            stopped.extend(workers)
        for name in ["server", "s3"]:
            if name in pids:
                stop_process(pids[name], timeout)
                stopped.append(name)
        # By its own postmaster.pid too: a stack.json lost or stale leaves no server behind.
        configured = (self.home / "stack-config.json").exists()
        if self.database == "postgresql" and configured and self.postgres().stop(timeout):
            stopped.append("postgres")
        self.pids_file.unlink(missing_ok=True)
        return stopped

    def _save(self, pids: dict[str, int]) -> None:
        self.pids_file.write_text(json.dumps({"pids": pids, "url": self.url}))


if __name__ == "__main__":
    from tools.stack_commands import main

    main()
