"""Progress seen from outside: a real `nst run`'s stderr and its progress artifact's values
on the server, and a unit on another worker publishing its own artifact for the flow."""

from flows import progress
from nst_core.batch.progress import UnitTracker


def progress_values(api_url: str, run_name: str) -> list[float]:
    """Every value the run's progress artifact took, in order, from the server's events
    (the artifact itself holds only its latest). The server persists events in batches a
    few seconds apart: read until the last update (100) is in."""
    import time

    import httpx
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
        FlowRunFilter,
        FlowRunFilterName,
    )

    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name]))
        )
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]),
                type=ArtifactFilterType(any_=["progress"]),
            )
        )
    wanted = {
        "filter": {
            "event": {"name": ["prefect.artifact.updated"]},
            "resource": {"id": [f"prefect.artifact.{artifact.id}"]},
            "order": "ASC",
        },
        "limit": 50,  # the most the API returns in one page
    }
    deadline = time.monotonic() + 120  # a bound on the server's batching, not on our work
    while True:
        response = httpx.post(f"{api_url}/events/filter", json=wanted)
        response.raise_for_status()
        values = [e["payload"]["data"] for e in response.json()["events"]]
        if 100 in values or time.monotonic() > deadline:
            return values
        time.sleep(0.5)


def test_nst_run_shows_progress_before_jobs_complete_and_moves_its_artifact(
    tmp_path, prefect_server, spawn
):
    """A real `nst run` (its stderr not a terminal: plain lines) of the tiny batch in one
    unit, as the demo runs: a progress line comes before the first job's result line, and
    the progress artifact goes through values between 0 and 100 before its jobs finish.
    The artifact is published at every report here (PUBLISH_EVERY_S = 0), so the test reads
    values, not a clock; when it is due is test_progress.py's to say, on a fake clock."""
    import os
    import sys

    from imagegen import TINY_MANIFEST, write_batch

    uri = write_batch(str(tmp_path), TINY_MANIFEST)
    script = f"""
import sys
from nst_cli import app
from flows import progress
progress.PUBLISH_EVERY_S = 0
sys.argv = ["nst", "run", {uri!r}]
app.main()
"""
    done = spawn.run(
        [sys.executable, "-c", script],
        env=os.environ | {"PREFECT_API_URL": prefect_server},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert any("4 to run in 1 units" in line for line in lines), done.stderr[-3000:]
    first_progress = next(i for i, line in enumerate(lines) if line.startswith("progress: "))
    first_result = next(i for i, line in enumerate(lines) if " - completed " in line)
    assert first_progress < first_result, "\n".join(lines)
    assert lines[first_progress].startswith("progress: 0/4 jobs done")
    (summary,) = [line for line in done.stdout.splitlines() if line.startswith("summary:")]
    run_name = summary.split("/_runs/")[1].split("/")[0]
    values = progress_values(prefect_server, run_name)
    assert values == sorted(values) and values[-1] == 100, values
    assert any(0 < value < 100 for value in values), values  # not 0, then 100 at once


def test_a_unit_elsewhere_publishes_its_own_artifact_and_the_waiting_flow_reads_it(
    prefect_server,
):
    """The Ray path without Ray: a unit whose batch tally is not in its process keeps a
    progress artifact on its own task run; the flow, polling while it waits, folds it in."""
    import threading
    from uuid import uuid4

    from prefect import flow, get_run_logger, task

    reported, read = threading.Event(), threading.Event()
    polls: list[float] = []
    published: list[float] = []

    @task
    def unit_elsewhere() -> None:
        report = progress.unit_report(uuid4(), "unit 1/1", get_run_logger())
        assert isinstance(report, progress.UnitArtifact)  # no tally here: its own artifact
        tracker = UnitTracker(2, report)
        tracker.stylising(2)
        tracker.job_finished()  # published at once: 50%
        reported.set()
        read.wait(timeout=300)  # still running until the flow has read it (300: a hang guard)

    @flow
    def batch() -> float:
        tally = progress.Tally(2, published.append)
        future = unit_elsewhere.submit()

        def poll() -> None:
            if reported.is_set():
                progress.poll_remote(tally, {future.task_run_id: ("unit 1/1", 2)}, get_run_logger())
                polls.append(tally.shown.done)
                read.set()

        for _ in progress.as_completed_polling([future], float("inf"), 0.05, poll):
            pass
        return polls[0]

    assert batch() == 1.0  # one of its 2 jobs, read from its artifact
    assert published == [50.0]  # and published on the batch's at once
