"""The stack `make up` runs (tools/stack.py), end to end, and the parts of it that need none.

The integration tests share one fresh stack on a temporary home and free ports: PostgreSQL,
a Prefect server on it with its scheduler on, SeaweedFS with the team bucket, one GPU-pool
worker with --limit 1 (a GPU host) and the light pool's worker. Its S3 is read here through
its own client, so this process's environment points nowhere new. Everything it starts, the
last test stops and checks gone.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from nst_core.batch.processes import alive
from tools import api, deploy
from tools.postgres import PostgresError, server_binaries
from tools.process_control import GRPC_OFFSET, descendants, free_ports, port_open
from tools.samples import BUCKET
from tools.seaweed import weed_binary
from tools.stack import GPU_POOL, LIGHT_POOL, REPO, LocalStack
from tools.stack_commands import main
from tools.stack_config import StackConfig

TIMEOUT_S = 300  # generous: each wait ends as soon as its condition holds


def small(name: str, defaults: str = "size: 32, iterations: 3, device: cpu") -> str:
    """A manifest of the stack's sample inputs (2 x 2 jobs), tiny by default."""
    return f"""version: 1
name: {name}
output: s3://{BUCKET}/tests/{name}
format: png
defaults: {{{defaults}}}
contents: [s3://{BUCKET}/samples/content-*.png]
styles: [s3://{BUCKET}/samples/style-*.png]
"""


PROJECT = yaml.safe_load((REPO / "prefect.yaml").read_text())


def wait_for(condition: Callable[[], Any], what: str, timeout: float = TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(1)
    return found


# --------------------------------------------------------------------------- fast lane
def test_prefect_yaml_puts_the_watcher_on_the_light_pool_and_batches_on_the_gpu_pool():
    pools = {d["name"]: d["work_pool"]["name"] for d in PROJECT["deployments"]}
    assert pools.pop("inbox") == LIGHT_POOL == "nst-light"
    assert set(pools.values()) == {GPU_POOL} and {"nightly", "adhoc"} <= set(pools)


def test_prefect_yaml_ships_every_schedule_off_and_named():
    """A plain `prefect deploy --all` polls no bucket anyone did not choose; `make up`
    keeps each schedule's state by its slug."""
    schedules = [s for d in PROJECT["deployments"] for s in d.get("schedules") or []]
    assert len(schedules) == 2
    assert all(s["active"] is False and s["slug"] for s in schedules)


def states(**deployments: tuple[bool, tuple[tuple[str | None, bool], ...]]) -> dict:
    entry = {d["name"]: d["entrypoint"] for d in PROJECT["deployments"]}
    return {
        (name, entry[name]): deploy.Deployed(paused, schedules)
        for name, (paused, schedules) in deployments.items()
    }


def test_a_redeploy_carries_what_the_user_paused_and_resumed():
    before = states(
        nightly=(False, (("nightly", True),)),  # resumed by the user
        inbox=(False, (("inbox-tick", False),)),  # paused by the user
        adhoc=(True, ()),  # the deployment itself paused
    )
    config = deploy.with_states(PROJECT, before, turn_on={"inbox"})
    planned = deploy.planned_states(config)
    for key, state in before.items():
        assert planned[key] == state
    assert PROJECT["deployments"][0]["schedules"][0]["active"] is False  # not modified


def test_a_new_deployment_takes_prefect_yaml_and_only_the_inbox_is_turned_on():
    planned = deploy.planned_states(deploy.with_states(PROJECT, {}, turn_on={"inbox"}))
    assert planned[("inbox", "flows/watch.py:watch_inbox")].schedules == (("inbox-tick", True),)
    nightly = planned[("nightly", "flows/batch.py:stylize_batch")]
    assert nightly == deploy.Deployed(False, (("nightly", False),))


def test_a_schedule_without_a_slug_keeps_its_state_when_it_is_the_only_one():
    project = {"deployments": [{"name": "d", "entrypoint": "f.py:f", "schedules": [{}]}]}
    before = {("d", "f.py:f"): deploy.Deployed(False, ((None, False),))}
    assert deploy.with_states(project, before, set())["deployments"][0]["schedules"] == [
        {"active": False}
    ]


def test_differences_name_a_deployment_shown_otherwise_or_missing():
    planned = states(nightly=(False, (("nightly", False),)), adhoc=(False, ()))
    shown = states(nightly=(False, (("nightly", True),)))
    problems = deploy.differences(planned, shown)
    assert len(problems) == 2
    assert problems[0].startswith("nightly: deployed") and "adhoc" in problems[1]


def test_ports_and_keys_are_chosen_once_and_kept_owner_only(tmp_path):
    path = tmp_path / "stack-config.json"
    first = StackConfig.load_or_create(path, avoid={4200})
    assert StackConfig.load_or_create(path) == first
    assert path.stat().st_mode & 0o777 == 0o600
    assert 4200 not in {first.postgres_port, *first.s3_ports}
    assert StackConfig.load_or_create(path, postgres_port=15432).postgres_port == 15432


def test_workers_get_the_local_bucket_and_only_the_server_gets_the_database(tmp_path):
    foreign = {
        "AWS_PROFILE": "someone",
        "AWS_ENDPOINT_URL_S3": "https://s3.amazonaws.com",
        "AWS_SESSION_TOKEN": "t",
        "PREFECT_API_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:///elsewhere.db",
        "PREFECT_SERVER_DATABASE_PASSWORD": "theirs",
    }
    with pytest.MonkeyPatch.context() as env:
        for key, value in foreign.items():
            env.setenv(key, value)
        stack = LocalStack(home=tmp_path, port=4321, postgres_port=15433)
        workers, server = stack.environment(), stack.server_environment()
    config = stack.config()
    assert not set(foreign) & set(workers)
    assert not {"AWS_PROFILE", "PREFECT_SERVER_DATABASE_PASSWORD"} & set(server)
    assert workers["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{config.s3_ports[0]}"
    assert workers["AWS_SECRET_ACCESS_KEY"] == config.s3_secret_key
    assert server["PREFECT_API_DATABASE_CONNECTION_URL"] == (
        f"postgresql+asyncpg://prefect:{config.postgres_password}@127.0.0.1:15433/prefect"
    )


def test_make_up_starts_the_gpu_worker_with_one_slot_and_the_light_worker_without(
    tmp_path, monkeypatch
):
    started: dict[str, list[str]] = {}
    monkeypatch.setattr(
        LocalStack, "_spawn", lambda self, name, args, env=None: started.setdefault(name, args)
    )
    stack = LocalStack(home=tmp_path)  # what `python -m tools.stack up` builds
    for name in stack.worker_names():
        stack.start_worker(name)
    assert started["worker"][-2:] == ["--limit", "1"]
    assert "--limit" not in started["light"]


def test_missing_server_binaries_are_one_line_naming_the_fix(tmp_path):
    with pytest.raises(PostgresError) as error:
        server_binaries(tmp_path)
    assert "apt-get install postgresql" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["drop", "no-such.yaml"], "no-such.yaml: no such file"),
        (["drop", "README.md"], "README.md: manifests are *.yaml or *.yml files"),
        (["drop", "prefect.yaml", "--as", "a/b.yaml"], "--as 'a/b.yaml': give a file name"),
        (["nightly", "no-such.yaml"], "no-such.yaml: no such file"),
        (["drop", "prefect.yaml"], "is not running: run `make up` first"),
    ],
)
def test_stack_commands_refuse_bad_input_in_one_line(tmp_path, monkeypatch, args, expected):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("NST_PREFECT_PORT", str(free_ports(1)[0]))  # nothing listens there
    with pytest.raises(SystemExit) as exit_:
        main(["--home", str(tmp_path), *args])
    message = str(exit_.value.code)
    assert expected in message and "\n" not in message
    assert message.startswith(f"python -m tools.stack {args[0]}: ")


# --------------------------------------------------------------------------- integration
@pytest.fixture(scope="module")
def stack():
    server_binaries()  # each raises, saying how to install it, when missing
    weed_binary()
    # Not under pytest's owner-only temp folder: PostgreSQL's user must reach the home.
    home = Path(tempfile.mkdtemp(prefix="nst-stack-test-"))
    home.chmod(0o755)
    prefect_port, postgres_port = free_ports(2)
    stack = LocalStack(
        home=home,
        port=prefect_port,
        env={"PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"},
        postgres_port=postgres_port,
        s3_ports=tuple(free_ports(5, twins=True, avoid={prefect_port, postgres_port})),
    )
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)


def commands(stack: LocalStack, spawn, *args: str, timeout: float = TIMEOUT_S):
    """`python -m tools.stack --home HOME ARGS`, as a user runs it."""
    env = stack.environment() | {"NST_PREFECT_PORT": str(stack.port)}
    return spawn.run(
        [sys.executable, "-m", "tools.stack", "--home", str(stack.home), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def keys(stack: LocalStack, prefix: str) -> list[str]:
    listed = stack.s3().client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for item in listed.get("Contents", [])]


def read_json(stack: LocalStack, key: str) -> Any:
    return json.loads(stack.s3().client().get_object(Bucket=BUCKET, Key=key)["Body"].read())


def put(stack: LocalStack, key: str, text: str) -> str:
    stack.s3().client().put_object(Bucket=BUCKET, Key=key, Body=text.encode())
    return f"s3://{BUCKET}/{key}"


def deployment(stack: LocalStack, name: str) -> dict:
    return api.call(stack.api_url, "GET", f"deployments/name/{name}")


def flow_runs(stack: LocalStack, **filters: Any) -> list[dict]:
    return api.call(stack.api_url, "POST", "flow_runs/filter", {"flow_runs": filters})


def test_the_server_keeps_its_state_in_postgresql_and_no_secret_in_it(stack, spawn):
    import asyncpg

    async def deployment_ids() -> set[str]:
        url = stack.postgres().url.replace("postgresql+asyncpg://", "postgresql://")
        connection = await asyncpg.connect(url)
        try:
            return {str(row["id"]) for row in await connection.fetch("SELECT id FROM deployment")}
        finally:
            await connection.close()

    shown = api.call(stack.api_url, "POST", "deployments/filter", {})
    assert {d["id"] for d in shown} == asyncio.run(deployment_ids()) != set()
    assert not list(stack.home.glob("prefect.db*"))  # no SQLite database beside it
    secrets = (stack.config().s3_secret_key, stack.config().postgres_password)
    pools = [api.call(stack.api_url, "GET", f"work_pools/{p}") for p in (GPU_POOL, LIGHT_POOL)]
    assert not any(secret in json.dumps([shown, pools]) for secret in secrets)
    for name in ("worker", "light"):
        environ = Path(f"/proc/{stack.running()[name]}/environ").read_bytes().split(b"\0")
        assert f"AWS_ENDPOINT_URL={stack.s3().endpoint_url}".encode() in environ
        assert not [v for v in environ if v.startswith(b"PREFECT_API_DATABASE_CONNECTION_URL=")]


def test_an_adhoc_deployment_run_stylises_the_sample_inputs(stack, spawn):
    uri = put(stack, "tests/adhoc.yaml", small("adhoc"))
    run = spawn.run(
        [sys.executable, "-m", "prefect", "deployment", "run", "stylize-batch/adhoc"]
        + ["-p", f"manifest={uri}", "--watch", "--watch-interval", "1"],
        env=stack.environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    records = [k for k in keys(stack, "tests/adhoc/") if k.endswith(".json") and "/_" not in k]
    assert len(records) == 4
    assert all(read_json(stack, k)["status"] == "completed" for k in records)


def events(stack: LocalStack, names: list[str]) -> list[dict]:
    wanted = {
        "filter": {
            "event": {"name": names},
            "resource": {"id_prefix": [f"nst.manifest.s3://{BUCKET}/inbox/"]},
        },
        "limit": 50,
    }
    return api.call(stack.api_url, "POST", "events/filter", wanted)["events"]


def test_manifests_dropped_into_the_inbox_run_or_are_rejected_with_events(stack, spawn, tmp_path):
    assert [s["active"] for s in deployment(stack, "watch-inbox/inbox")["schedules"]] == [True]
    good, broken = tmp_path / "good.yaml", tmp_path / "broken.yaml"
    good.write_text(small("dropped"))
    broken.write_text("version: 1\noutput: out\ncolour: red\n")
    for path in (good, broken):
        dropped = commands(stack, spawn, "drop", str(path))
        assert dropped.returncode == 0, dropped.stderr
        assert f"s3://{BUCKET}/inbox/{path.name}" in dropped.stdout

    # The scheduler's own ticks, every minute: one starts the batch, a later one files it.
    done = wait_for(lambda: [k for k in keys(stack, "inbox/done/") if k.endswith(".json")], "done")
    details = read_json(stack, done[0])
    assert details["state"] == "Completed", details
    failed = [k for k in keys(stack, "inbox/failed/") if k.endswith(".json")]
    assert len(failed) == 1 and "colour" in json.dumps(read_json(stack, failed[0]))

    batch = api.call(stack.api_url, "GET", f"flow_runs/{details['flow_run_id']}")
    assert batch["work_pool_name"] == GPU_POOL
    inbox_id = deployment(stack, "watch-inbox/inbox")["id"]
    ticks = flow_runs(
        stack, deployment_id={"any_": [inbox_id]}, state={"type": {"any_": ["COMPLETED"]}}
    )
    assert ticks and {t["work_pool_name"] for t in ticks} == {LIGHT_POOL}

    names = ["nst.inbox.manifest.rejected", "nst.batch.finished"]
    both = wait_for(lambda: len({e["event"] for e in events(stack, names)}) == 2, "events")
    assert both
    seen = {e["event"]: e for e in events(stack, names)}
    rejected, finished = seen[names[0]], seen[names[1]]
    assert (
        rejected["resource"]["prefect.resource.id"]
        == f"nst.manifest.s3://{BUCKET}/inbox/broken.yaml"
    )
    assert rejected["payload"]["problems"] >= 1
    assert finished["resource"]["nst.outcome"] == "completed"
    assert finished["payload"]["counts"]["completed"] == 4


def test_inbox_ticks_run_while_a_batch_holds_the_gpu_workers_only_slot(stack, spawn):
    """The GPU worker runs one flow run at a time (--limit 1). While a batch holds it, the
    inbox keeps ticking on the light pool: the watcher never waits for a GPU worker's slot.
    The batch is held for as long as the test needs: this test takes the device's slot
    first, so the batch's unit waits for it (flows/execute.py) until the test lets go."""
    from flows.execute import device_limit_name

    device = device_limit_name("cpu")
    try:
        api.call(stack.api_url, "POST", "v2/concurrency_limits/", {"name": device, "limit": 1})
    except api.ApiError as error:
        assert error.status == 409, error  # the batches before created it
    held = api.call(
        stack.api_url,
        "POST",
        "v2/concurrency_limits/increment-with-lease",
        {"names": [device], "slots": 1, "lease_duration": 2 * TIMEOUT_S},
    )
    adhoc = deployment(stack, "stylize-batch/adhoc")
    uri = put(stack, "tests/held.yaml", small("held"))
    batch = api.call(
        stack.api_url,
        "POST",
        f"deployments/{adhoc['id']}/create_flow_run",
        {"parameters": {"manifest": uri}},
    )

    def read_batch() -> dict:
        return api.call(stack.api_url, "GET", f"flow_runs/{batch['id']}")

    running = wait_for(lambda: (r := read_batch())["state_type"] == "RUNNING" and r, "the batch")
    assert running["work_pool_name"] == GPU_POOL
    inbox_id = deployment(stack, "watch-inbox/inbox")["id"]

    def ticks_since_the_batch_started() -> list[dict]:
        ticks = flow_runs(
            stack, deployment_id={"any_": [inbox_id]}, state={"type": {"any_": ["COMPLETED"]}}
        )
        return [t for t in ticks if t["start_time"] > running["start_time"]]

    (tick, *_) = wait_for(ticks_since_the_batch_started, "an inbox tick")
    assert read_batch()["state_type"] == "RUNNING"  # it still holds the GPU worker
    assert tick["work_pool_name"] == LIGHT_POOL

    api.call(
        stack.api_url,
        "POST",
        "v2/concurrency_limits/decrement-with-lease",
        {"lease_id": held["lease_id"]},
    )
    wait_for(lambda: read_batch()["state_type"] == "COMPLETED", "the batch, once let go")


def schedule_states(stack: LocalStack) -> dict[str, tuple[bool, list[bool]]]:
    return {
        name: (d["paused"], [s["active"] for s in d["schedules"]])
        for name in ("stylize-batch/nightly", "watch-inbox/inbox", "stylize-batch/adhoc")
        for d in [deployment(stack, name)]
    }


def test_nightly_stays_off_until_a_valid_manifest_is_set(stack, spawn, tmp_path):
    nightly = "stylize-batch/nightly"
    assert schedule_states(stack)[nightly] == (False, [False])
    broken = tmp_path / "nightly.yaml"
    broken.write_text("version: 1\noutput: out\ncolour: red\n")
    refused = commands(stack, spawn, "nightly", str(broken))
    assert refused.returncode == 1
    assert "does not validate" in refused.stderr.splitlines()[-1]
    assert "colour" in refused.stderr  # nst validate's own words, above it
    assert schedule_states(stack)[nightly] == (False, [False])
    assert keys(stack, "manifests/") == []

    good = tmp_path / "good-nightly.yaml"
    good.write_text(small("nightly"))
    accepted = commands(stack, spawn, "nightly", str(good))
    assert accepted.returncode == 0, accepted.stderr
    assert schedule_states(stack)[nightly] == (False, [True])
    assert keys(stack, "manifests/") == ["manifests/nightly.yaml"]

    # A broken file later never replaces the working manifest.
    assert commands(stack, spawn, "nightly", str(broken)).returncode == 1
    stored = stack.s3().client().get_object(Bucket=BUCKET, Key="manifests/nightly.yaml")
    assert stored["Body"].read() == good.read_bytes()
    assert schedule_states(stack)[nightly] == (False, [True])


def test_make_up_again_keeps_what_the_user_paused_and_resumed(stack, spawn):
    inbox, adhoc = deployment(stack, "watch-inbox/inbox"), deployment(stack, "stylize-batch/adhoc")
    (schedule,) = inbox["schedules"]
    # What a user does in the UI: pause the inbox's schedule and the adhoc deployment.
    api.call(
        stack.api_url,
        "PATCH",
        f"deployments/{inbox['id']}/schedules/{schedule['id']}",
        {"active": False},
    )
    api.call(stack.api_url, "POST", f"deployments/{adhoc['id']}/pause_deployment")
    nightly = schedule_states(stack)["stylize-batch/nightly"]
    before = (stack.home / "deployed.sha256").read_text()

    pids = stack.up()

    assert (stack.home / "deployed.sha256").read_text() != before  # deployed again, for real
    assert schedule_states(stack) == {
        "stylize-batch/nightly": nightly,
        "watch-inbox/inbox": (False, [False]),
        "stylize-batch/adhoc": (True, []),
    }
    assert pids == stack.running()  # the same processes, none started twice


def test_down_stops_every_process_and_closes_every_port(stack, spawn):
    recorded = stack.running()
    assert set(recorded) == {"postgres", "s3", "server", "worker", "light"}
    family = {pid for pid in recorded.values()} | {
        child for pid in recorded.values() for child in descendants(pid)
    }
    s3_ports = stack.config().s3_ports
    ports = [stack.port, stack.config().postgres_port, *s3_ports]
    ports += [p + GRPC_OFFSET for p in s3_ports[1:]]  # master, volume, filer, admin gRPC
    assert all(port_open(p) for p in ports[:3])

    stopped = stack.down()

    assert sorted(stopped) == sorted(recorded)
    assert [pid for pid in family if alive(pid)] == []
    assert [p for p in ports if port_open(p)] == []
    assert not stack.pids_file.exists() and stack.running() == {}
    assert stack.down() == []  # again: nothing was running
