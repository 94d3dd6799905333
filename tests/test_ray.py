"""The Ray task runner: the same batch, the same outputs, on a local Ray bound to loopback."""

import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import ray
from imagegen import TINY_MANIFEST, job_records, write_batch
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

from flows import runners
from flows.batch import stylize_batch
from nst_core.batch import storage
from nst_core.engine import images
from nst_core.errors import NstError
from nst_core.settings import Settings

MANIFEST = TINY_MANIFEST


def outputs(root: str) -> dict[str, tuple[dict, Image.Image]]:
    """{output name: (record, image)} of every completed job under root/out."""
    found = {}
    for record in job_records(root).values():
        image = images.decode_image(storage.read_bytes(record["output"]), record["output"])
        found[record["output"].rsplit("/", 1)[-1]] = (record, image)
    return found


@pytest.fixture
def local_ray(monkeypatch):
    """Settings for a private local Ray: 2 CPUs, loopback, its own short session folder."""
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    monkeypatch.setenv("NST_RAY_NUM_CPUS", "2")
    monkeypatch.setenv("NST_RAY_TEMP_DIR", temp)
    monkeypatch.delenv("NST_RAY_ADDRESS", raising=False)
    yield Path(temp)
    assert not ray.is_initialized(), "the flow must shut down the Ray it started"
    shutil.rmtree(temp, ignore_errors=True)


def test_ray_runner_gives_the_thread_runners_outputs_on_s3(
    local_ray, s3_bucket, prefect_server, monkeypatch
):
    """Ray workers read and write S3 with credentials from their environment: none of
    them is in a task's parameters, and outputs match the thread runner's."""
    thread_root, ray_root = f"{s3_bucket}/thread", f"{s3_bucket}/ray"
    by_threads = stylize_batch(write_batch(thread_root, MANIFEST), task_runner="thread")
    by_ray = stylize_batch(write_batch(ray_root, MANIFEST), task_runner="ray")
    assert by_threads.totals.completed == by_ray.totals.completed == 4

    # The units really ran in Ray worker processes of the local Ray.
    logs = next(local_ray.glob("session_2*/logs"))
    assert list(logs.glob("worker-*.out")), "no Ray worker ran"
    # Ray's processes bound to loopback only, not to this machine's network address.
    addresses = set(re.findall(r"\b\d+\.\d+\.\d+\.\d+\b", (logs / "raylet.out").read_text()))
    assert addresses == {"127.0.0.1"}, addresses

    threads, rays = outputs(thread_root), outputs(ray_root)
    assert set(threads) == set(rays) and len(rays) == 4
    for name, (record, image) in rays.items():
        twin_record, twin_image = threads[name]
        assert record["key"] == twin_record["key"]
        assert image.size == twin_image.size == (40, 30)
        a = images.to_tensor(image.convert("RGB"))
        b = images.to_tensor(twin_image.convert("RGB"))
        assert (a - b).abs().mean().item() < 0.02, name

    secret = storage.s3_client()._request_signer._credentials.secret_key
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[by_ray.run]))
        )
        task_runs = client.read_task_runs()
    unit_runs = [t for t in task_runs if t.flow_run_id == runs[0].id and t.name.startswith("unit")]
    assert unit_runs and all(t.state.is_completed() for t in unit_runs)
    assert secret not in json.dumps(runs[0].parameters)
    assert all(secret not in json.dumps(t.task_inputs, default=str) for t in unit_runs)


def test_task_runner_is_checked_by_name(monkeypatch):
    monkeypatch.setenv("NST_TASK_RUNNER", "ray")
    settings = Settings.from_env()
    assert runners.task_runner_name(None, settings) == "ray"
    assert runners.task_runner_name("Thread", settings) == "thread"
    with pytest.raises(NstError, match="task_runner: 'dask' is not one of thread, ray"):
        runners.task_runner_name("dask", settings)
    monkeypatch.setenv("NST_TASK_RUNNER", "dask")
    with pytest.raises(NstError, match="NST_TASK_RUNNER: input should be 'thread' or 'ray'"):
        Settings.from_env()


def _fake_cluster(monkeypatch, resources: dict, nodes: list[dict]) -> None:
    # No GPU here: Ray's view of a cluster is what a unit's resource request is made from.
    monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
    monkeypatch.setattr(ray, "nodes", lambda: nodes)


def test_units_ask_for_a_gpu_only_when_the_cluster_has_gpus(monkeypatch):
    node = {"Alive": True, "Resources": {"CPU": 16.0, "GPU": 2.0}}
    _fake_cluster(monkeypatch, {"CPU": 32.0, "GPU": 4.0}, [node, node])
    place = runners._ray_placement(runner=None, job_device="auto")
    assert place.remote_options == {"num_gpus": 1}
    assert place.device(3) == "cuda" and not place.hold_slot
    # Jobs that ask for the CPU do not take GPUs.
    assert runners._ray_placement(None, "cpu").remote_options == {"num_cpus": 16}


def test_units_without_gpus_take_a_whole_node_of_cpus(monkeypatch):
    nodes = [
        {"Alive": True, "Resources": {"CPU": 8.0}},
        {"Alive": True, "Resources": {"CPU": 4.0}},
        {"Alive": False, "Resources": {"CPU": 2.0}},
    ]
    _fake_cluster(monkeypatch, {"CPU": 12.0}, nodes)
    place = runners._ray_placement(None, "auto")
    # The smallest living node's CPUs: a unit fits on every node, one at a time per node.
    assert place.remote_options == {"num_cpus": 4}
    assert place.device(0) == "cpu"


def test_only_storage_and_prefect_settings_are_forwarded_to_ray_workers(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("NST_MEMORY_BUDGET_GB", "2")
    monkeypatch.setenv("NST_RAY_TEMP_DIR", "/tmp/x")
    monkeypatch.setenv("HOME_SECRET_TOKEN", "nope")
    forwarded = runners._forwarded_environment()
    assert forwarded["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"
    assert forwarded["NST_MEMORY_BUDGET_GB"] == "2"
    assert "NST_RAY_TEMP_DIR" not in forwarded and "HOME_SECRET_TOKEN" not in forwarded
