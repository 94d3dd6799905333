"""Shared fixtures: small synthetic images written where tests need them."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import uuid
from types import SimpleNamespace

import pytest
from imagegen import scene, stripes
from PIL import Image
from s3_server import start_s3_server

from nst_core.batch import storage

# Ray reads these when it is first imported, which may be a test module's import, before
# flows.runners could set them: keep any Ray the tests start on loopback and out of ~/.ray.
for _key, _value in {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}.items():
    os.environ.setdefault(_key, _value)
# `precision: auto` is decided by timing once per machine (nst_core/engine/calibration.py);
# the suite never calibrates unless a test asks, and runs in one precision on every machine:
# entry points (commands, flows) read NST_PRECISION, and engine calls made directly find
# fp32 as this machine's decision in a calibration cache of the suite's own.
os.environ["NST_PRECISION"] = "fp32"
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="nst-test-cache-")


def _decided_fp32() -> None:
    import torch

    from nst_core.engine import calibration

    path = calibration.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = calibration.device_identity(torch.device("cpu"))
    path.write_text(json.dumps({cpu: {"precision": "fp32", "source": "the test suite"}}))


_decided_fp32()


# --------------------------------------------------------------------------- lanes
# `make check` runs the fast lane: every test that starts no server, browser, cluster or
# subprocess. A test's lane follows from the fixtures it uses (directly or through other
# fixtures): one of these puts it in the `integration` lane, which only `make test` runs.
STARTS_SOMETHING = {
    "s3_server": "a SeaweedFS server",
    "prefect_server": "a Prefect server",
    "browser": "Chromium",
    "local_ray": "a Ray cluster",
    "spawn": "child processes",
}
# Parametrised fixtures whose some values start something.
STARTS_SOMETHING_WHEN = {"storage_root": {"s3"}}


def pytest_collection_modifyitems(config, items):
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        heavy = set(item.fixturenames) & set(STARTS_SOMETHING) or any(
            params.get(name) in values for name, values in STARTS_SOMETHING_WHEN.items()
        )
        if heavy:
            item.add_marker(pytest.mark.integration)


class _Spawner:
    """subprocess.run and Popen for a test; what is still running at its end is killed."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def run(self, *args, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(*args, **kwargs)

    def popen(self, *args, **kwargs) -> subprocess.Popen:
        process = subprocess.Popen(*args, **kwargs)
        self.started.append(process)
        return process


@pytest.fixture
def spawn():
    """Child processes (`spawn.run`, `spawn.popen`): the way a test starts one, which puts
    it in the integration lane. Any still running when the test ends is killed."""
    spawner = _Spawner()
    yield spawner
    for process in spawner.started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture
def one_thread():
    """One intra-op thread: several split a lone row's reductions differently from a
    batch's rows (batch-independence tests); and on a CPU shared with other work, one
    thread runs these small images faster."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fast_lane_starts_no_process(request, monkeypatch):
    """A fast-lane test that starts a child process fails at once: it must take `spawn`
    (or a server fixture), so that `make check` stays fast and needs nothing running."""
    if request.node.get_closest_marker("integration"):
        return

    def refused(*args, **kwargs):
        raise AssertionError(
            "this test starts a child process: take the `spawn` fixture, which puts it in "
            "the integration lane"
        )

    monkeypatch.setattr(subprocess, "Popen", refused)


# --------------------------------------------------------------------------- images


@pytest.fixture
def content_image() -> Image.Image:
    return scene()


@pytest.fixture
def style_image() -> Image.Image:
    return stripes()


@pytest.fixture
def image_files(tmp_path, content_image, style_image):
    """(content path, style path) written as PNG under tmp_path."""
    content, style = tmp_path / "content.png", tmp_path / "style.png"
    content_image.save(content)
    style_image.save(style)
    return content, style


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS S3 server for the whole session; AWS_* env points storage at it."""
    server = start_s3_server(tmp_path_factory.mktemp("weed"))
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
            env.setenv("AWS_ACCESS_KEY_ID", server.access_key)
            env.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
            env.setenv("AWS_DEFAULT_REGION", "us-east-1")
            # Anything else in the developer's environment that would steer the client away.
            for key in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION"):
                env.delenv(key, raising=False)
            storage.reset_clients()
            yield server
    finally:
        storage.reset_clients()
        server.stop()


def _create_bucket() -> str:
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    storage.s3_client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}"


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket: "s3://NAME"."""
    return _create_bucket()


@pytest.fixture(scope="session")
def _s3_shared_bucket(s3_server) -> str:
    # SeaweedFS allocates storage on a bucket's first write (0.2-1 s); share one bucket.
    return _create_bucket()


@pytest.fixture(params=["local", "s3"])
def storage_root(request, tmp_path) -> str:
    """A base URI to work under, once per backend: a local folder or a fresh S3 prefix."""
    if request.param == "local":
        return str(tmp_path / "root")
    return f"{request.getfixturevalue('_s3_shared_bucket')}/{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def prefect_server():
    """A temporary Prefect API (SQLite) for the whole session; yields its URL.

    Logs and events are drained before the server stops, so pytest does not hang shipping
    them to a server that is gone.
    """
    import os

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()
        APILogWorker.drain_all(timeout=15)
        EventsWorker.drain_all(timeout=15)


@pytest.fixture
def fake_deployment(monkeypatch, prefect_server):
    """run_deployment that records its calls and creates real (already finished) flow runs."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Failed, Running

    @flow(name="stylize-batch")
    def stand_in(
        manifest: str,
        manifest_sha256: str | None = None,
        read_roots: list[str] | None = None,
        write_roots: list[str] | None = None,
    ):
        return manifest

    calls, run_ids, parameter_sets = [], [], []
    outcome = {"state": Completed}

    def run_deployment(name, parameters, **kwargs):
        calls.append(parameters["manifest"])
        parameter_sets.append(parameters)
        with get_client(sync_client=True) as client:
            run = client.create_flow_run(
                stand_in,
                parameters=parameters,
                name=f"batch-{uuid.uuid4().hex[:6]}",
                state=outcome["state"](),
            )
        run_ids.append(run.id)
        return SimpleNamespace(id=run.id, name=run.name)

    def finish_all():
        with get_client(sync_client=True) as client:
            for run_id in run_ids:
                client.set_flow_run_state(run_id, Completed(), force=True)

    from flows import watch

    monkeypatch.setattr(watch, "run_deployment", run_deployment)
    return SimpleNamespace(
        calls=calls,
        parameters=parameter_sets,
        run_ids=run_ids,
        outcome=outcome,
        Failed=Failed,
        Running=Running,
        finish_all=finish_all,
    )
