"""Faults a batch must survive (issue #8): S3 going away mid-batch, and secrets in the output.

Real parts only: a private SeaweedFS S3 server (so a test can stop it and start it again on
the same data and port without disturbing the session's server), `nst run` as a subprocess
(the way people run batches; it also lets the test stop S3 while the run is in flight), and
the session's Prefect API, so the tests read back what the run told Prefect: its state, task
runs, logs, artifacts and events.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_runner import run_cli
from imagegen import ONE_JOB_PER_UNIT_GB, job_records, write_batch
from s3_server import S3Server, start_s3_server

from nst_core.batch import storage
from nst_core.engine import images

REPO = Path(__file__).resolve().parent.parent
MANIFEST = """version: 1
name: faults
output: out
format: png
defaults: {{size: {size}, iterations: {iterations}, device: cpu, precision: fp32}}
contents: [photos/*.png]
styles: [paintings/*.png]
"""
# Three jobs as explicit pairs: after the first, two units meet the outage, each through its
# retries (about 20 s apiece), so the scenario shows more than one failed unit at that cost.
OUTAGE_MANIFEST = MANIFEST.replace(
    "contents: [photos/*.png]\nstyles: [paintings/*.png]\n",
    "pairs:\n"
    "  - {{content: photos/a.png, style: paintings/s1.png}}\n"
    "  - {{content: photos/a.png, style: paintings/s2.png}}\n"
    "  - {{content: photos/b.png, style: paintings/s1.png}}\n",
)
RUN_TIMEOUT_S = 300  # one `nst run` of a few tiny jobs on a busy 2-core machine
SESSION_AWS = ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION")


# --------------------------------------------------------------------------- helpers


@dataclass
class Run:
    """One finished `nst run` subprocess."""

    returncode: int
    out: str
    err: str

    @property
    def last_err_line(self) -> str:
        lines = self.err.strip().splitlines()
        return lines[-1] if lines else ""


@dataclass
class PrivateS3:
    """A SeaweedFS server of one test alone, with storage pointed at it through AWS_*."""

    server: S3Server
    env: pytest.MonkeyPatch = field(repr=False)

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        """Start it again on the same data folder, ports and keys."""
        self.server = self.server.restart()
        storage.reset_clients()  # pooled connections went to the stopped process

    def bucket(self) -> str:
        name = f"faults-{uuid.uuid4().hex[:12]}"
        storage.s3_client().create_bucket(Bucket=name)
        return f"s3://{name}"


@pytest.fixture(scope="module")
def private_s3_factory(tmp_path_factory):
    """Starts private servers; on the way out stops them and puts AWS_* back (the session's
    s3_server fixture may have set them), so later tests talk to the session server again."""
    started: list[PrivateS3] = []

    def start(**keys: str) -> PrivateS3:
        server = start_s3_server(tmp_path_factory.mktemp("weed"), **keys)
        env = pytest.MonkeyPatch()
        s3 = PrivateS3(server, env)
        started.append(s3)
        env.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
        env.setenv("AWS_ACCESS_KEY_ID", server.access_key)
        env.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for key in SESSION_AWS:
            env.delenv(key, raising=False)
        storage.reset_clients()
        return s3

    yield start
    for s3 in reversed(started):
        s3.env.undo()
        s3.stop()
    storage.reset_clients()


@contextlib.contextmanager
def pointed_at(s3: PrivateS3) -> Iterator[PrivateS3]:
    """Storage talks to `s3` inside the block and to whatever it talked to before after it."""
    try:
        yield s3
    finally:
        s3.env.undo()
        storage.reset_clients()


def nst_env(home: Path, api_url: str, **extra: str) -> dict[str, str]:
    """An `nst run` subprocess's environment: this process's AWS_* (the private server), the
    session's Prefect API (so the test can read what the run reported), and `extra`."""
    return dict(os.environ) | {
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **extra,
    }


def start_nst_run(manifest: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nst_cli", "run", manifest],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen) -> Run:
    try:
        out, err = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"nst run took over {RUN_TIMEOUT_S} s:\n{err[-3000:]}")
    return Run(process.returncode, out, err)


def flow_run_ids(manifest: str) -> list:
    """Ids of the stylize-batch flow runs of `manifest` on the session Prefect API."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=200)
    return [r.id for r in runs if (r.parameters or {}).get("manifest") == manifest]


def prefect_record(flow_run_id, timeout: float = 30.0) -> dict:
    """What Prefect holds about one flow run: the run, its states, task runs, logs (its
    tasks' too), artifacts and events. Waits for the flow run's last log ("Finished in
    state ...") and its final-state event: a run ships both in batches, so the last ones can
    land a moment after the process exits."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            logs = []
            while batch := client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                limit=200,
                offset=len(logs),
            ):
                logs += batch
            if any(
                log.task_run_id is None and log.message.startswith("Finished in state")
                for log in logs
            ):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the flow run's last log did not arrive in {timeout} s")
            time.sleep(0.5)
        flow_run = client.read_flow_run(flow_run_id)
        final_event = f"prefect.flow-run.{flow_run.state.name}"
        while True:
            events = _flow_run_events(client, flow_run_id)
            if any(event.event == final_event for event in events):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"no {final_event} event arrived in {timeout} s")
            time.sleep(0.5)
        return {
            "flow_run": flow_run,
            "states": client.read_flow_run_states(flow_run_id),
            "task_runs": client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            ),
            "logs": logs,
            "artifacts": client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
                )
            ),
            "events": events,
        }


def _flow_run_events(client, flow_run_id) -> list:
    """Every event about the flow run or naming it as related (its task runs' too)."""
    from prefect.events.filters import EventAnyResourceFilter, EventFilter

    page = client.read_events(
        EventFilter(any_resource=EventAnyResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"])),
        limit=50,  # the API's most per page
    )
    events = list(page.events)
    while page.next_page and len(events) < 1000:
        page = client.read_events_page(page.next_page)
        events += page.events
    return events


# --------------------------------------------------------------------------- S3 outage


@dataclass
class Outage:
    """What one outage scenario left behind, for the tests below to judge."""

    root: str
    jobs: int
    first: Run
    prefect: dict  # prefect_record() of the first run
    before: dict[str, dict]  # job records after the outage
    finals: dict[str, bytes]  # every object with a final name after the outage
    second: Run
    after: dict[str, dict]  # job records after the rerun
    summaries: dict[str, dict]  # every summary.json, by URI


@pytest.fixture(scope="module")
def outage(private_s3_factory, prefect_server, tmp_path_factory) -> Outage:
    """Three pairs, one job per unit, on a private S3 server that is stopped as
    soon as the first record lands; then started again (same data, same port) and the batch
    rerun. Storage retries are kept short; the unit task's own retries (2, after 5 s and
    10 s) are the flow's and stay as they are."""
    with pointed_at(private_s3_factory()) as s3:
        root = s3.bucket()
        uri = write_batch(root, OUTAGE_MANIFEST.format(size=40, iterations=20))
        env = nst_env(
            tmp_path_factory.mktemp("prefect-home"),
            prefect_server,
            NST_MEMORY_BUDGET_GB=ONE_JOB_PER_UNIT_GB,  # one job per unit: records one by one
            NST_S3_MAX_ATTEMPTS="2",
            NST_S3_CONNECT_TIMEOUT="1",
            NST_S3_READ_TIMEOUT="5",
        )
        process = start_nst_run(uri, env)
        try:
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while not job_records(root):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"no record appeared:\n{process.communicate()[1][-3000:]}")
                time.sleep(0.2)
            s3.stop()
            first = finish(process)
        finally:
            if process.poll() is None:
                process.kill()
        ids = flow_run_ids(uri)
        assert len(ids) == 1, ids
        prefect = prefect_record(ids[0])

        s3.restart()
        before = job_records(root)
        finals = {
            u: storage.read_bytes(u)
            for u in storage.list_prefix(f"{root}/out")
            if u.endswith((".png", ".jpg", ".json"))
        }
        second = finish(start_nst_run(uri, env))
        after = job_records(root)
        summaries = {
            u: json.loads(storage.read_bytes(u))
            for u in storage.list_prefix(f"{root}/out/_runs")
            if u.endswith("/summary.json")
        }
        return Outage(root, 3, first, prefect, before, finals, second, after, summaries)


def test_outage_lands_mid_batch(outage):
    """The scenario itself: some jobs completed before S3 went away and some did not; the
    tests below mean nothing otherwise."""
    assert 1 <= len(outage.before) < outage.jobs, outage.first.err[-3000:]
    assert all(r["status"] == "completed" for r in outage.before.values())


def test_outage_fails_the_run_with_one_clear_line(outage):
    """Exit 1, and the last line says the run failed because S3 could not be reached,
    naming the object: no traceback at the end of the output."""
    assert outage.first.returncode == 1, outage.first.err[-3000:]
    last = outage.first.last_err_line
    assert last.startswith("FAILED: "), last
    assert "Traceback" not in last
    assert re.search(rf"{re.escape(outage.root)}/\S+: cannot reach the S3 endpoint", last), last
    assert outage.prefect["flow_run"].state.is_failed()


def test_outage_units_fail_after_their_retries_and_prefect_says_which(outage):
    """Each unit left when S3 went away failed after both of its retries; Prefect has one
    line per such unit naming its jobs (the task run name) and the storage error."""
    runs = outage.prefect["task_runs"]
    failed = [t for t in runs if t.state.is_failed()]
    left = outage.jobs - len(outage.before)
    assert len(failed) == left, [(t.name, t.state.name) for t in runs]
    assert all(t.run_count == 3 for t in failed), [(t.name, t.run_count) for t in failed]
    for task_run in failed:
        assert task_run.name.startswith("unit ") and ".png x s" in task_run.name
        assert "cannot reach the S3 endpoint" in task_run.state.message
        final = [
            log.message
            for log in outage.prefect["logs"]
            if log.task_run_id == task_run.id and "Retries are exhausted" in log.message
        ]
        assert len(final) == 1, final
        assert f"{outage.root}/" in final[0] and "cannot reach the S3 endpoint" in final[0]
    unit_errors = [
        log.message
        for log in outage.prefect["logs"]
        if log.message.startswith("unit failed after its retries (")
    ]
    assert len(unit_errors) == left
    # Each names its job and the cause.
    assert all(".png x s" in m and "cannot reach the S3 endpoint" in m for m in unit_errors)


def test_outage_leaves_nothing_half_written(outage):
    """Every object with a final name (image or JSON) is whole once S3 is back, and every
    record written before the outage has its image."""
    assert outage.finals
    for uri, data in outage.finals.items():
        if uri.endswith(".json"):
            json.loads(data)
        else:
            images.decode_image(data, uri).load()
    for record in outage.before.values():
        assert record["output"] in outage.finals


def test_rerun_after_outage_completes_every_job_exactly_once(outage):
    """With S3 back, a rerun exits 0: jobs done before the outage are skipped (their records
    untouched), the others complete, so every job completed exactly once."""
    assert outage.second.returncode == 0, outage.second.err[-3000:]
    done = len(outage.before)
    summary = f"{outage.jobs - done} completed, 0 failed, {done} skipped"
    assert summary in outage.second.out, outage.second.out
    assert len(outage.after) == outage.jobs
    assert all(r["status"] == "completed" for r in outage.after.values())
    for uri, record in outage.before.items():
        assert outage.after[uri]["created_at"] == record["created_at"]
    # One summary: the first run could not write one with S3 down.
    assert len(outage.summaries) == 1, list(outage.summaries)
    (summary,) = outage.summaries.values()
    statuses = {entry["record"]: entry["status"] for entry in summary["jobs"]}
    assert statuses == {
        uri: "skipped" if uri in outage.before else "completed" for uri in outage.after
    }


def test_outage_final_line_and_artifacts_say_which_jobs_failed(outage):
    """With S3 still down at the end, the run still says which jobs failed and why: the last
    line counts them and the job table artifact (which needs no S3) lists each with its error."""
    left = outage.jobs - len(outage.before)
    assert f"{left} of {outage.jobs} jobs failed" in outage.first.last_err_line
    tables = [a for a in outage.prefect["artifacts"] if a.key == "nst-faults-jobs"]
    assert len(tables) == 1
    rows = tables[0].data if isinstance(tables[0].data, list) else json.loads(tables[0].data)
    failed = [row for row in rows if row["status"] == "failed"]
    assert len(failed) == left
    assert all("cannot reach the S3 endpoint" in row["output"] for row in failed)


# --------------------------------------------------------------------------- secrets


def test_s3_keys_appear_in_no_log_record_summary_report_or_artifact(
    private_s3_factory, prefect_server, tmp_path_factory, capsys
):
    """Run a batch against S3 with distinctive keys, one of its contents not an image so the
    error paths run too, then look for both keys everywhere the run left text: every object
    in the bucket, the command's output, and the flow run, its states, task runs, logs,
    artifacts and events on the Prefect API. A run with the wrong secret is checked too."""
    access_key = "NSTCANARYID" + secrets.token_hex(6).upper()
    secret_key = "nstCanarySecret" + secrets.token_hex(16)
    with pointed_at(private_s3_factory(access_key=access_key, secret_key=secret_key)) as s3:
        root = s3.bucket()
        uri = write_batch(root, MANIFEST.format(size=32, iterations=3))
        storage.write_bytes(f"{root}/photos/c.png", b"this is not an image")
        env = nst_env(tmp_path_factory.mktemp("prefect-home"), prefect_server)
        run = finish(start_nst_run(uri, env))
        objects = {u: storage.read_bytes(u) for u in storage.list_prefix(root)}

        wrong_secret = "nstWrongSecret" + secrets.token_hex(16)
        s3.env.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
        storage.reset_clients()
        code, wrong_out, wrong_err = run_cli(["run", uri], capsys)

    assert run.returncode == 1 and "2 of 6 jobs failed" in run.err, run.err[-3000:]
    assert code == 2 and "rejected the credentials" in wrong_err, wrong_err
    ids = flow_run_ids(uri)
    assert len(ids) == 1, ids  # the wrong-secret run stops before Prefect
    prefect = prefect_record(ids[0])

    # Not vacuous: each place holds what a leak would hide in.
    records = [u for u in objects if u.endswith(".json") and "/_runs/" not in u]
    assert len(records) == 6
    assert any(u.endswith("/summary.json") for u in objects)
    assert any(u.endswith("/report.md") for u in objects)
    messages = [log.message for log in prefect["logs"]]
    assert any(m.startswith("failed c.png x s1.png: ") for m in messages), messages
    assert {"nst-faults-jobs", "nst-faults-report"} <= {a.key for a in prefect["artifacts"]}
    assert prefect["task_runs"] and prefect["states"] and prefect["events"]

    places = {uri: data.decode("latin-1") for uri, data in objects.items()}
    places |= {
        "nst run stdout": run.out,
        "nst run stderr": run.err,
        "wrong-secret run output": wrong_out + wrong_err,
        "flow run": prefect["flow_run"].model_dump_json(),
    }
    for kind in ("states", "task_runs", "logs", "artifacts", "events"):
        for index, item in enumerate(prefect[kind]):
            places[f"prefect {kind}[{index}]"] = item.model_dump_json()
    leaks = [
        f"{name} holds {which}"
        for name, text in places.items()
        for which, value in (
            ("the access key id", access_key),
            ("the secret key", secret_key),
            ("the wrong secret key", wrong_secret),
        )
        if value in text
    ]
    assert leaks == [], leaks
