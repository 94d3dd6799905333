"""End to end: a real Prefect server and process workers, real S3, the repo's prefect.yaml.

One module-scoped stack (tools/stack.py, what `make up` runs: PostgreSQL under the server,
here with two GPU-pool workers that run one flow run each, as on two GPU hosts, and the
light pool's worker for the inbox) on free loopback ports with a temporary home; S3 is the
session's SeaweedFS (tests/s3_server.py), not a bucket of the stack's own. The server's
scheduler is off so that the nightly and inbox schedules create no runs of their own while
the test drives them (tests/test_stack.py runs the scheduler). Everything it starts, it
stops.
"""

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from imagegen import ONE_JOB_PER_UNIT_GB, write_batch

from flows import watch
from nst_core.batch import storage
from tools.postgres import server_binaries
from tools.process_control import descendants, stop_process
from tools.stack import GPU_POOL, LIGHT_POOL, LIGHT_WORKER, LocalStack

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
def stack(s3_server):
    server_binaries()  # PostgresError, with how to install it, when missing
    # Not under pytest's owner-only temp folder: PostgreSQL's user must reach the home.
    home = Path(tempfile.mkdtemp(prefix="nst-deployments-test-"))
    home.chmod(0o755)
    stack = LocalStack(
        home=home,
        port=free_port(),
        local_s3=False,
        env={
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
            "AWS_ENDPOINT_URL": s3_server.endpoint_url,
            "AWS_ACCESS_KEY_ID": s3_server.access_key,
            "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        },
        workers=2,
        worker_limit=1,
    )
    try:
        stack.up()
        yield stack
    finally:
        stopped = stack.down()
        log = (home / "worker.log").read_text(errors="replace") if stopped else ""
        shutil.rmtree(home, ignore_errors=True)
        assert {"worker", "light", "server", "postgres"} <= set(stopped), log[-2000:]
        assert not stack.running()


def prefect(stack: LocalStack, *args: str, timeout: float = DEADLINE_S):
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        env=stack.environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def deployment_run(
    stack: LocalStack, deployment: str, *args: str, watch: bool = True, timeout=DEADLINE_S
):
    """`prefect deployment run DEPLOYMENT ARGS`, by default waiting for the run to end."""
    watching = ("--watch", "--watch-interval", "1") if watch else ()
    return prefect(stack, "deployment", "run", deployment, *args, *watching, timeout=timeout)


def completed_records(prefix: str) -> list[dict]:
    """The completed job records under `prefix`. Job claims (`_claims/`) are JSON too, and a
    running batch removes each right after its record lands: listed, they may be gone by the
    time they would be read, so they are not listed as records at all."""
    found = [
        json.loads(storage.read_bytes(uri))
        for uri in storage.list_prefix(prefix)
        if uri.endswith(".json")
        and "/out/" in uri
        and "/_runs/" not in uri
        and "/_claims/" not in uri
    ]
    return [r for r in found if r.get("status") == "completed"]


def test_adhoc_deployment_run_stylises_a_bucket_manifest(stack, s3_bucket):
    uri = write_batch(f"{s3_bucket}/team", MANIFEST)
    run = deployment_run(
        stack, "stylize-batch/adhoc", "-p", f"manifest={uri}", "-p", 'params={"iterations": 3}'
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


def test_the_deployed_run_forms_describe_every_parameter(stack):
    """What the UI's run form shows comes from the deployment's parameter schema, as
    `prefect deploy` stored it on the server: every parameter described, the style overrides
    typed field by field, and no shard internals on the batch's form."""
    from nst_core.engine.params import StyleParams

    schemas = {}
    for name in ("stylize-batch/adhoc", "stylize-shard/shard"):
        answer = httpx.get(f"{stack.api_url}/deployments/name/{name}", timeout=30)
        answer.raise_for_status()
        schemas[name] = answer.json()["parameter_openapi_schema"]
    for name, schema in schemas.items():
        undocumented = [
            p for p, spec in schema["properties"].items() if not spec.get("description")
        ]
        assert undocumented == [], name
    batch = schemas["stylize-batch/adhoc"]
    assert not {"only_jobs", "shard_name", "done_after", "job_keys"} & set(batch["properties"])
    assert {"manifest_sha256", "read_roots", "write_roots"} <= set(batch["properties"])
    overrides = batch["definitions"]["StyleOverrides"]["properties"]
    assert set(overrides) == set(StyleParams.model_fields)
    assert overrides["size"]["description"] == StyleParams.model_fields["size"].description
    assert {"job_keys", "shard_name"} <= set(schemas["stylize-shard/shard"]["required"])


def test_the_server_refuses_a_run_whose_style_params_are_out_of_range(stack, s3_bucket):
    """The schema is enforced where the run is created: nothing starts, and the answer names
    the field."""
    uri = write_batch(f"{s3_bucket}/refused", MANIFEST)
    run = deployment_run(
        stack,
        "stylize-batch/adhoc",
        "-p",
        f"manifest={uri}",
        "-p",
        'params={"iterations": 0}',
        watch=False,
    )
    assert run.returncode != 0
    assert "iterations" in run.stdout + run.stderr, run.stdout[-2000:] + run.stderr[-2000:]
    assert storage.list_prefix(f"{s3_bucket}/refused/out") == []


def test_inbox_deployment_files_good_and_broken_manifests(stack, s3_bucket):
    inbox = f"{s3_bucket}/inbox"
    write_batch(inbox, MANIFEST, name="good.yaml")
    storage.write_bytes(f"{inbox}/broken.yaml", b"version: 1\noutput: out\ncolour: red\n")
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        tick = deployment_run(stack, "watch-inbox/inbox", "-p", f"inbox={inbox}")
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


def test_missed_inbox_ticks_are_dropped_not_replayed_after_a_restart(stack, s3_bucket):
    """Ticks come due while no worker runs (the stack is down for a while); when the stack is
    back, one tick runs and the missed ones are cancelled by the deployment's concurrency
    limit, not replayed one after another."""
    inbox = f"{s3_bucket}/inbox"
    for name, pid in stack.running().items():
        if name.startswith("worker") or name == LIGHT_WORKER:
            stop_process(pid, 20)
    deployment = httpx.get(f"{stack.api_url}/deployments/name/watch-inbox/inbox", timeout=30)
    deployment.raise_for_status()
    now = datetime.now(UTC)
    missed = [
        api(
            stack,
            f"deployments/{deployment.json()['id']}/create_flow_run",
            {
                "parameters": {"inbox": inbox},
                "state": {
                    "type": "SCHEDULED",
                    "name": "Scheduled",
                    "state_details": {"scheduled_time": (now - timedelta(minutes=m)).isoformat()},
                },
            },
        )["id"]
        for m in range(6, 0, -1)
    ]
    stack.down()
    stack.up()

    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        runs = api(stack, "flow_runs/filter", {"flow_runs": {"id": {"any_": missed}}})
        if all(run["state_type"] in ("COMPLETED", "CANCELLED", "FAILED") for run in runs):
            break
        time.sleep(1)
    states = sorted(run["state_type"] for run in runs)
    assert states == ["CANCELLED"] * 5 + ["COMPLETED"], [(r["name"], r["state"]) for r in runs]
    ran = [run for run in runs if run["run_count"]]
    detail = [(r["state"]["message"], r["start_time"], r["run_count"]) for r in runs]
    assert len(ran) == 1, f"a missed tick was replayed: {detail}"
    (tick,) = ran
    # Cancelled by the deployment's concurrency limit, or by the tick that ran (whichever
    # saw the missed tick first).
    reasons = {r["state"]["message"] for r in runs if r["state_type"] == "CANCELLED"}
    covered = f"{watch.MISSED_TICK} {tick['name']}"
    assert reasons <= {"Deployment concurrency limit reached.", covered}, detail


def test_nightly_deployment_carries_the_cron_and_timezone_of_prefect_yaml(stack):
    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "prefect.yaml").read_text())
    nightly = next(d for d in config["deployments"] if d["name"] == "nightly")
    inspect = prefect(stack, "deployment", "inspect", "stylize-batch/nightly", "--output", "json")
    assert inspect.returncode == 0, inspect.stderr
    deployment = json.loads(inspect.stdout)
    (schedule,) = deployment["schedules"]
    assert schedule["schedule"]["cron"] == nightly["schedules"][0]["cron"] == "0 2 * * *"
    assert schedule["schedule"]["timezone"] == nightly["schedules"][0]["timezone"]
    assert schedule["active"] is False  # until its manifest is set
    assert "manifest" in deployment["parameters"]
    assert deployment["work_pool_name"] == GPU_POOL


def test_the_inbox_watcher_runs_on_the_light_pool(stack):
    inbox = httpx.get(f"{stack.api_url}/deployments/name/watch-inbox/inbox", timeout=30).json()
    assert inbox["work_pool_name"] == LIGHT_POOL
    workers = httpx.post(f"{stack.api_url}/work_pools/{LIGHT_POOL}/workers/filter", timeout=30)
    assert [w["name"] for w in workers.json()] == ["nst-light-worker"]


def api(stack: LocalStack, path: str, body: dict) -> list[dict]:
    # 503 (a database busy under load; SQLite's "database is locked" before the stack ran on
    # PostgreSQL): retried, as Prefect's own client does.
    for attempt in range(5):
        answer = httpx.post(f"{stack.api_url}/{path}", json=body, timeout=30)
        if answer.status_code != 503:
            break
        time.sleep(1 + attempt)
    answer.raise_for_status()
    return answer.json()


def completions(stack: LocalStack, run_ids: list[str]) -> list[str]:
    """The "completed JOB" log lines of these flow runs: one per job stylised."""
    logs = api(stack, "logs/filter", {"logs": {"flow_run_id": {"any_": run_ids}}, "limit": 200})
    return [log["message"] for log in logs if log["message"].startswith("completed ")]


def wait_for_idle_workers(stack: LocalStack) -> None:
    """Until no worker still runs a flow run process: one an earlier test left finishing (a
    flow run's state is final a few seconds before its process exits) holds its worker's
    only slot."""
    deadline = time.monotonic() + DEADLINE_S
    workers = {name: pid for name, pid in stack.running().items() if name.startswith("worker")}
    while any(descendants(pid) for pid in workers.values()):
        assert time.monotonic() < deadline, "a worker is still busy with an earlier flow run"
        time.sleep(0.5)


def pending_since(stack: LocalStack, run_id: str) -> datetime:
    """When a worker took this flow run (its PENDING state)."""
    answer = httpx.get(
        f"{stack.api_url}/flow_run_states/", params={"flow_run_id": run_id}, timeout=30
    )
    answer.raise_for_status()
    return min(
        datetime.fromisoformat(s["timestamp"]) for s in answer.json() if s["type"] == "PENDING"
    )


def test_two_shards_on_two_workers_complete_every_job_exactly_once(stack, s3_bucket):
    wait_for_idle_workers(stack)
    uri = write_batch(f"{s3_bucket}/sharded", MANIFEST)
    nst = [sys.executable, "-m", "nst_cli", "run", uri, "--shards", "2"]
    parent = subprocess.run(
        [*nst, "--shard-timeout", str(DEADLINE_S)],
        env=stack.environment(),
        capture_output=True,
        text=True,
        timeout=DEADLINE_S + 60,
    )
    assert parent.returncode == 0, parent.stdout[-3000:] + parent.stderr[-3000:]
    assert "4 completed, 0 failed, 0 skipped" in parent.stdout

    # One summary over all jobs; the shards write none of their own.
    summaries = [u for u in storage.list_prefix(f"{s3_bucket}/sharded") if "summary" in u]
    assert len(summaries) == 1
    summary = json.loads(storage.read_bytes(summaries[0]))
    assert summary["totals"]["completed"] == 4 and summary["totals"]["jobs"] == 4
    records = completed_records(f"{s3_bucket}/sharded/out")
    assert len(records) == 4

    children = api(
        stack,
        "flow_runs/filter",
        {"flow_runs": {"name": {"like_": f"{summary['run']}-shard-"}}, "sort": "NAME_ASC"},
    )
    assert [c["name"][-10:] for c in children] == ["shard-1-of-2"[-10:], "shard-2-of-2"[-10:]]
    assert all(c["state_type"] == "COMPLETED" for c in children)
    shard_deployment = httpx.get(
        f"{stack.api_url}/deployments/name/stylize-shard/shard", timeout=30
    )
    shard_deployment.raise_for_status()
    assert {c["deployment_id"] for c in children} == {shard_deployment.json()["id"]}
    shard_jobs = [set(c["parameters"]["job_keys"]) for c in children]
    assert not shard_jobs[0] & shard_jobs[1]  # disjoint
    assert shard_jobs[0] | shard_jobs[1] == {r["key"] for r in records}
    # Two idle workers of one run each took one shard, the second before the first was done:
    # the shards ran side by side, not one after the other on one worker.
    first, second = children
    workers = {c["labels"]["prefect.worker.name"] for c in children}
    assert workers == {"nst-gpu-worker", "nst-gpu-worker-2"}, workers
    taken = [pending_since(stack, c["id"]) for c in children]
    ended = [datetime.fromisoformat(c["end_time"]) for c in children]
    assert max(taken) < min(ended), (taken, ended)
    done = completions(stack, [c["id"] for c in children])
    assert sorted(done) == sorted(set(done)) and len(done) == 4, done

    # A shard run again (as a retry would) finds its jobs done and stylises nothing.
    retry = deployment_run(
        stack, "stylize-shard/shard", "--params", json.dumps(first["parameters"])
    )
    assert retry.returncode == 0, retry.stdout[-3000:] + retry.stderr[-3000:]
    runs = api(stack, "flow_runs/filter", {"flow_runs": {"name": {"any_": [first["name"]]}}})
    assert len(runs) == 2
    assert len(completions(stack, [r["id"] for r in runs])) == len(shard_jobs[0])
    assert completed_records(f"{s3_bucket}/sharded/out") == records  # nothing rewritten


def test_a_worker_killed_mid_batch_loses_nothing_and_a_rerun_finishes(stack, s3_bucket):
    """SIGKILL the worker and its flow run after the first job: no record without its image;
    the device slot it held frees when its lease ends; a rerun completes the rest once."""
    import os
    import signal

    uri = write_batch(f"{s3_bucket}/killed", MANIFEST)
    run = [
        "stylize-batch/adhoc",
        "-p",
        f"manifest={uri}",
        "-p",
        'params={"iterations": 80}',
        "--job-variable",
        # one job per unit: records land one by one
        f'env={{"NST_MEMORY_BUDGET_GB": "{ONE_JOB_PER_UNIT_GB}"}}',
    ]
    assert deployment_run(stack, *run, watch=False).returncode == 0
    deadline = time.monotonic() + DEADLINE_S
    while not completed_records(f"{s3_bucket}/killed/out") and time.monotonic() < deadline:
        time.sleep(0.2)
    busy = {name: pid for name, pid in stack.running().items() if name.startswith("worker")}
    busy = {name: pid for name, pid in busy.items() if descendants(pid)}
    assert len(busy) == 1, "one worker should be running the batch"
    ((name, pid),) = busy.items()
    for victim in [pid, *descendants(pid)]:
        os.kill(victim, signal.SIGKILL)
    before = {r["key"]: r for r in completed_records(f"{s3_bucket}/killed/out")}
    assert 1 <= len(before) < 4, "the kill should land mid-batch"
    for record in before.values():  # every record's image is whole
        assert storage.read_bytes(record["output"]).startswith(b"\x89PNG")
    stack._save(stack.running() | {name: stack.start_worker(name)})

    rerun = deployment_run(stack, *run, timeout=DEADLINE_S + 120)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    after = {r["key"]: r for r in completed_records(f"{s3_bucket}/killed/out")}
    assert len(after) == 4
    assert all(after[key] == record for key, record in before.items())  # not recomputed
    summaries = [u for u in storage.list_prefix(f"{s3_bucket}/killed") if "summary" in u]
    totals = json.loads(storage.read_bytes(summaries[-1]))["totals"]
    assert totals["skipped"] == len(before) and totals["completed"] == 4 - len(before)
