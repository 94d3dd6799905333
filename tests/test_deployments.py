"""End to end: a real Prefect server and process worker, real S3, the repo's prefect.yaml.

One module-scoped stack (flows/stack.py, what `make up` runs) on free loopback ports with a
temporary PREFECT_HOME; the server's scheduler is off so that the nightly and inbox
schedules create no runs of their own while the test drives them. Everything it starts, it
stops.
"""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from imagegen import write_batch

from flows.stack import LocalStack
from nst_core import storage

MANIFEST = """version: 1
output: out/{name}
format: png
defaults: {size: 48, iterations: 4, device: cpu}
contents: ['photos/*.png']
styles: ['paintings/*.png']
"""
DEADLINE_S = 150


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 55000:
            return port


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3_server):
    home = tmp_path_factory.mktemp("prefect-home")
    stack = LocalStack(
        home=home,
        port=free_port(),
        env={
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
            "AWS_ENDPOINT_URL": s3_server.endpoint_url,
            "AWS_ACCESS_KEY_ID": s3_server.access_key,
            "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        },
    )
    try:
        stack.up()
        yield stack
    finally:
        stopped = stack.down()
        log = (home / "worker.log").read_text(errors="replace") if stopped else ""
        assert "worker" in stopped and "server" in stopped, log[-2000:]
        assert not stack.running()


def prefect(stack: LocalStack, *args: str, timeout: float = DEADLINE_S):
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        env=stack.environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def completed_records(prefix: str) -> list[dict]:
    found = [
        json.loads(storage.read_bytes(uri))
        for uri in storage.list_prefix(prefix)
        if uri.endswith(".json") and "/_runs/" not in uri and "/out/" in uri
    ]
    return [r for r in found if r.get("status") == "completed"]


def test_adhoc_deployment_run_stylises_a_bucket_manifest(stack, s3_bucket):
    uri = write_batch(f"{s3_bucket}/team", MANIFEST)
    run = prefect(
        stack,
        "deployment",
        "run",
        "stylize-batch/adhoc",
        "-p",
        f"manifest={uri}",
        "-p",
        'params={"iterations": 3}',
        "--watch",
        "--watch-interval",
        "1",
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Completed" in run.stdout
    records = completed_records(f"{s3_bucket}/team/out")
    assert len(records) == 4
    assert all(r["params"]["iterations"] == 3 for r in records)
    for record in records:
        assert storage.read_bytes(record["output"]).startswith(b"\x89PNG")
    summaries = [
        u for u in storage.list_prefix(f"{s3_bucket}/team/out") if u.endswith("/summary.json")
    ]
    assert len(summaries) == 1
    assert json.loads(storage.read_bytes(summaries[0]))["totals"]["completed"] == 4


def test_inbox_deployment_files_good_and_broken_manifests(stack, s3_bucket):
    inbox = f"{s3_bucket}/inbox"
    write_batch(inbox, MANIFEST, name="good.yaml")
    storage.write_bytes(f"{inbox}/broken.yaml", b"version: 1\noutput: out\ncolour: red\n")
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        tick = prefect(
            stack,
            "deployment",
            "run",
            "watch-inbox/inbox",
            "-p",
            f"inbox={inbox}",
            "--watch",
            "--watch-interval",
            "1",
        )
        assert tick.returncode == 0, tick.stdout[-3000:] + tick.stderr[-3000:]
        if storage.glob(f"{inbox}/done/good.*.yaml"):
            break
        time.sleep(2)
    done = storage.glob(f"{inbox}/done/good.*.json")
    assert len(done) == 1, storage.list_prefix(inbox)
    details = json.loads(storage.read_bytes(done[0]))
    assert details["state"] == "Completed" and details["flow_run_id"]
    assert details["summary"].startswith(f"{inbox}/out/good/_runs/")
    assert json.loads(storage.read_bytes(details["summary"]))["totals"]["completed"] == 4
    assert len(completed_records(f"{inbox}/out")) == 4
    failed = storage.glob(f"{inbox}/failed/broken.*.json")
    assert len(failed) == 1 and storage.glob(f"{inbox}/failed/broken.*.yaml")
    errors = json.loads(storage.read_bytes(failed[0]))["errors"]
    assert any("colour: Extra inputs are not permitted" in e for e in errors)
    assert storage.list_prefix(f"{inbox}/.claims") == []
    assert not storage.exists(f"{inbox}/good.yaml") and not storage.exists(f"{inbox}/broken.yaml")


def test_nightly_deployment_carries_the_cron_and_timezone_of_prefect_yaml(stack):
    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "prefect.yaml").read_text())
    nightly = next(d for d in config["deployments"] if d["name"] == "nightly")
    inspect = prefect(stack, "deployment", "inspect", "stylize-batch/nightly", "--output", "json")
    assert inspect.returncode == 0, inspect.stderr
    deployment = json.loads(inspect.stdout)
    (schedule,) = [s["schedule"] for s in deployment["schedules"]]
    assert schedule["cron"] == nightly["schedules"][0]["cron"] == "0 2 * * *"
    assert schedule["timezone"] == nightly["schedules"][0]["timezone"]
    assert "manifest" in deployment["parameters"]
    assert deployment["work_pool_name"] == "nst-gpu"
