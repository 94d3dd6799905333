"""Where a batch's work units run: threads in the flow's process, or a Ray cluster.

The flow picks one with its `task_runner` parameter or NST_TASK_RUNNER (default `thread`).
With `thread`, units share this host's devices under a Prefect concurrency limit per device.
With `ray`, Ray's own resource accounting is the limit: a unit asks for one GPU when the
cluster has GPUs, else for a whole node's CPUs, so each node runs one unit at a time.

Ray settings (environment):
  NST_RAY_ADDRESS   unset or `local`: start a Ray on this host for the run, bound to
                    127.0.0.1; `auto`: join the cluster already running on this host;
                    `ray://HEAD:10001` or `HEAD:6379`: an existing cluster.
  NST_RAY_NUM_CPUS  CPUs of the local Ray (default: all of this host's).
  NST_RAY_TEMP_DIR  the local Ray's session folder (default: a new one under /tmp).
Storage settings and credentials (AWS_*, NST_*) and the Prefect API reach Ray workers
through their environment (Ray's runtime_env), never through task arguments.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prefect import Task
from prefect.client.orchestration import get_client
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from nst_core.errors import NstError
from nst_core.settings import Settings

TASK_RUNNERS = ("thread", "ray")
# Forwarded to Ray workers when set here. Secrets travel only this way.
FORWARDED_PREFIXES = ("AWS_", "NST_", "PREFECT_")


def task_runner_name(requested: str | None, settings: Settings) -> str:
    """The task runner to use: the flow parameter, else NST_TASK_RUNNER, else `thread`."""
    name = (requested or settings.task_runner).strip().lower()
    if name not in TASK_RUNNERS:
        raise NstError(
            f"task_runner: {name!r} is not one of {', '.join(TASK_RUNNERS)}; "
            "set the flow parameter task_runner or NST_TASK_RUNNER"
        )
    return name


@dataclass
class UnitPlacement:
    """How the flow submits units: the runner, each unit's device, and Ray's resource ask.

    `hold_slot` says whether the unit takes this host's Prefect device slot (thread runner)
    or leaves the accounting to Ray.
    """

    runner: TaskRunner
    name: str
    devices: list[str]
    hold_slot: bool
    remote_options: dict[str, Any] = field(default_factory=dict)

    def device(self, index: int) -> str:
        return self.devices[index % len(self.devices)]

    def submit(self, task: Task[..., Any], parameters: dict[str, Any]) -> PrefectFuture[Any]:
        if not self.remote_options:
            return self.runner.submit(task, parameters)
        from prefect_ray.context import remote_options

        with remote_options(**self.remote_options):
            return self.runner.submit(task, parameters)


@contextmanager
def placement(
    name: str, local_devices: list[str], job_device: str, settings: Settings
) -> Iterator[UnitPlacement]:
    """Start the chosen runner for the flow's units; stop it (and a Ray it started) after.

    `local_devices` are this host's devices for the thread runner; `job_device` is the
    jobs' `device` parameter, which decides whether Ray units may ask for GPUs.
    """
    if name == "thread":
        # The flow keeps one unit in flight per device: a thread each.
        pool: ThreadPoolTaskRunner[Any] = ThreadPoolTaskRunner(max_workers=len(local_devices))
        with pool as runner:
            yield UnitPlacement(runner, name, local_devices, hold_slot=True)
        return
    with _ray_runner(settings) as ray_runner:
        yield _ray_placement(ray_runner, job_device)


@contextmanager
def _ray_runner(settings: Settings) -> Iterator[TaskRunner]:
    address = settings.ray_address.strip()
    local = address in ("", "local")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if local:
        # A private Ray on loopback only (Ray reads this when it is first imported), with
        # no auth token written to ~/.ray.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as exc:
        raise NstError(
            "task_runner ray: prefect-ray is not installed; pip install 'nst-batch[ray]'"
        ) from exc
    # Ray must not start its own temporary Prefect server in every worker (~30 s and
    # 2 GB each): export the API this flow talks to before Ray starts its workers.
    with get_client(sync_client=True) as client:
        os.environ["PREFECT_API_URL"] = str(client.api_url).rstrip("/")
    init_kwargs: dict[str, Any] = {"runtime_env": {"env_vars": _forwarded_environment()}}
    session_dir = None  # a folder this run made for its local Ray, removed after
    if local:
        # No dashboard; its own session folder (short: Ray's socket paths must fit in
        # 107 bytes).
        init_kwargs["include_dashboard"] = False
        if settings.ray_temp_dir:
            init_kwargs["_temp_dir"] = settings.ray_temp_dir
        else:
            session_dir = init_kwargs["_temp_dir"] = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        if settings.ray_num_cpus:
            init_kwargs["num_cpus"] = settings.ray_num_cpus
        runner = RayTaskRunner(init_kwargs=init_kwargs)
    elif address == "auto":
        runner = RayTaskRunner(init_kwargs=init_kwargs | {"address": "auto"})
    else:
        runner = RayTaskRunner(address=address, init_kwargs=init_kwargs)
    try:
        with runner:
            yield runner
    finally:
        if session_dir:
            shutil.rmtree(session_dir, ignore_errors=True)


def _forwarded_environment() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if key.startswith(FORWARDED_PREFIXES) and not key.startswith("NST_RAY_")
    }


def _ray_placement(runner: TaskRunner, job_device: str) -> UnitPlacement:
    """A GPU per unit when the cluster has GPUs (asking for one on a GPU-less cluster would
    wait forever), else every CPU of the smallest node, so a node runs one unit at a time
    with all its cores (Ray sets the worker's OMP_NUM_THREADS to the CPUs asked for)."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus >= 1 and not job_device.startswith("cpu"):
        # Ray hands each unit its GPU through CUDA_VISIBLE_DEVICES: it is cuda:0 there.
        return UnitPlacement(runner, "ray", ["cuda"], False, {"num_gpus": 1})
    node_cpus = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive", True)]
    cpus = max(1, int(min((c for c in node_cpus if c), default=1)))
    return UnitPlacement(runner, "ray", ["cpu"], False, {"num_cpus": cpus})
