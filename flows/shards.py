"""Sharding: one batch split into N child flow runs of a deployment, on N workers.

The parent splits the pending jobs into disjoint lists (whole work units, balanced by
pixels), starts one child run per list, waits for them with a timeout, and then reads each
job's record to learn what happened: the records, not the children's return values, are
the truth, so a child that crashed still reports every job it finished.

A job never runs twice: the lists are disjoint; a child skips jobs already completed (a
retried child resumes); with `force`, a child recomputes only records older than the
parent's start, so a retry still skips what its first attempt finished; and the child runs
carry idempotency keys, so a retried parent finds its children instead of starting more.

The children are runs of their own flow, `stylize-shard` (deployment `stylize-shard/shard`):
the parameters that say which jobs are a shard's stay off the `stylize-batch` form.
"""

from __future__ import annotations

import time
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.runtime import flow_run
from prefect.states import Cancelling

from flows.execute import RunLogger
from flows.parameters import SHA256, StyleOverrides, TaskRunnerName, overrides
from flows.runners import task_runner_name
from flows.work import BatchFailed, log_plan, pending_work, run_work, settled_entries
from nst_core.batch import jobs, records, units
from nst_core.batch.escape import log_text
from nst_core.batch.manifest import load_plan
from nst_core.batch.records import JobEntry, Record, Summary
from nst_core.batch.roots import Roots
from nst_core.settings import Settings

ADHOC = "stylize-batch/adhoc"  # what the inbox starts for each manifest
SHARD = "stylize-shard/shard"  # what a sharded parent starts for each shard
POLL_S = 2.0


def split(work: list[list[jobs.Job]], shards: int) -> list[list[jobs.Job]]:
    """The units' jobs cut into at most `shards` disjoint lists of about equal pixel work.

    Jobs stay in unit order, so each list is mostly whole units and its child batches them
    the same way; a unit is cut only where the lists meet (N GPUs beat one big unit).
    """
    ordered = [job for unit in work for job in unit]
    total = sum(_pixels(job) for job in ordered)
    lists: list[list[jobs.Job]] = [[] for _ in range(min(shards, len(ordered)))]
    done = 0
    for job in ordered:
        # The list whose share of the total this job's midpoint falls in.
        index = min(len(lists) - 1, int((done + _pixels(job) / 2) * len(lists) / total))
        lists[index].append(job)
        done += _pixels(job)
    return [shard for shard in lists if shard]


def _pixels(job: jobs.Job) -> int:
    size = units.output_size(job)
    return size[0] * size[1] if size else 1


def run_shards(
    lists: list[list[jobs.Job]],
    *,
    deployment: str,
    parameters: dict[str, Any],
    parent_id: str,
    parent_name: str,
    timeout_s: float,
) -> dict[str, str]:
    """Start one child run per job list and wait for all; returns {job key: why it did not
    finish} for the jobs of children that did not complete (empty when all did)."""
    logger = get_run_logger()
    children = []
    for index, shard in enumerate(lists):
        name = f"{parent_name}-shard-{index + 1}-of-{len(lists)}"
        # Called from a sync flow, run_deployment returns the run, not a coroutine.
        run = cast(
            FlowRun,
            run_deployment(
                deployment,
                parameters=parameters | {"job_keys": [j.key for j in shard], "shard_name": name},
                flow_run_name=name,
                timeout=0,
                # A retried parent gets these same runs back instead of starting new ones.
                idempotency_key=f"{parent_id}:shard-{index + 1}-of-{len(lists)}",
            ),
        )
        children.append((run.id, shard))
        logger.info(
            "shard %d/%d: %d jobs in flow run %s", index + 1, len(lists), len(shard), run.name
        )
    states = _wait([run_id for run_id, _ in children], timeout_s=timeout_s, logger=logger)
    unfinished = {}
    for (_, shard), state in zip(children, states, strict=True):
        if state != "COMPLETED":
            for job in shard:
                unfinished[job.key] = f"its shard ended {state.lower()}"
    return unfinished


def _wait(run_ids: list[UUID], *, timeout_s: float, logger: RunLogger) -> list[str]:
    """Each child's final state type, polling until all are final or `timeout_s` passes;
    children still running then are cancelled and reported as timed out."""
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = {
                r.id: r
                for r in client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids))
                )
            }
            states_now = [runs[i].state for i in run_ids]
            if all(state is not None and state.is_final() for state in states_now):
                return [state.type.value for state in states_now if state is not None]
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        states = []
        for run_id in run_ids:
            state = runs[run_id].state
            if state and state.is_final():
                states.append(state.type.value)
                continue
            logger.error("shard flow run %s did not finish in %.0f s: cancelled", run_id, timeout_s)
            client.set_flow_run_state(run_id, Cancelling(message="its parent batch timed out"))
            states.append("TIMED_OUT")
        return states


def entries_after(
    pending: list[jobs.Job], before: dict[str, Record | None], unfinished: dict[str, str]
) -> list[JobEntry]:
    """Summary entries for the sharded jobs, read back from their records: completed when a
    new completed record is there, failed with its error when a new failed record is, else
    failed because its shard did not finish it."""
    entries = []
    for job in pending:
        record = records.read_record(job.record)
        fresh = record is not None and record != before.get(job.key)
        if record is not None and fresh and records.done(job, record):
            seconds = _seconds(record)
            entries.append(JobEntry.of(job, "completed", record=record, seconds=seconds))
        elif record is not None and fresh and record.status == "failed" and record.key == job.key:
            entries.append(JobEntry.of(job, "failed", error=record.error))
        else:
            why = unfinished.get(job.key, "its shard completed without it")
            entries.append(JobEntry.of(job, "failed", error=f"not run: {why}"))
    return entries


def _seconds(record: Record) -> float | None:
    """Read plus optimise time, as the thread path reports it."""
    timings = record.timings
    return timings.optimize_s + timings.read_s if timings else None


@flow(name="stylize-shard", flow_run_name="{shard_name}", log_prints=False)
def stylize_shard(
    manifest: str,
    manifest_sha256: SHA256,
    job_keys: list[str],
    shard_name: str,
    params: StyleOverrides | None = None,
    task_runner: TaskRunnerName | None = None,
    done_after: str | None = None,
    read_roots: list[str] | None = None,
    write_roots: list[str] | None = None,
) -> Summary:
    """One shard of a sharded stylize-batch run: its parent starts it; people need not.

    It runs its own jobs of the manifest as the parent planned them and writes their images
    and records; the parent reads those back and writes the batch's one summary, report
    and gallery, so a shard writes none. Run one again with the same parameters and it
    stylises only what its first attempt did not finish.

    Args:
        manifest: The batch's manifest, as its parent read it.
        manifest_sha256: The manifest's sha256 when the parent split it: changed bytes are
            refused instead of run.
        job_keys: This shard's jobs (their keys); each must still be in the manifest.
        shard_name: The run's name, `{parent run}-shard-{i}-of-{n}`.
        params: The parent's style parameter overrides.
        task_runner: Where units run: thread (default, or NST_TASK_RUNNER) or ray.
        done_after: A forced batch's start (ISO 8601): completed records older than it are
            recomputed, newer ones (this shard's earlier attempt) are kept.
        read_roots: Where the manifest may read, as the parent was confined.
        write_roots: Where it may write, as the parent was confined.
    """
    started = time.perf_counter()
    settings = Settings.from_env()  # this run's NST_* settings, passed down from here
    runner_name = task_runner_name(task_runner, settings)
    roots = Roots.of(read_roots, write_roots)
    plan = load_plan(
        manifest,
        overrides=overrides(params),
        roots=roots,
        expect_sha256=manifest_sha256,
        limits=settings.limits,
    )
    work = pending_work(
        plan, roots, settings, force=False, only_jobs=job_keys, done_after=done_after
    )
    log_plan(work, f"on {runner_name} runner")
    entries = settled_entries(work) | run_work(work, runner_name, False, settings)
    ordered = [entries[j.key] for j in work.all_jobs]
    summary = Summary.of(flow_run.name, plan.uri, ordered, time.perf_counter() - started)
    totals = summary.totals
    where = log_text(f"the parent's summary ({shard_name.rsplit('-shard-', 1)[0]})")
    get_run_logger().info("%s; summary in %s", totals.line(), where)
    if totals.failed:
        raise BatchFailed(f"{totals.failed} of {totals.jobs} jobs failed; see {where}")
    return summary
