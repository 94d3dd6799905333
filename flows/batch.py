"""The stylize-batch flow: a manifest in; every pair stylised; outputs, records and a report out.

Orchestration only: nst_core plans, runs and reports; this module decides what runs where
and when. Units run on threads (flows/execute.py: one device slot per device per host) or
on a Ray cluster (flows/runners.py), as flows/work.py finds and runs them; `shards` splits
a batch over several workers as child runs of the `stylize-shard` flow (flows/shards.py).
A finished batch publishes its artifacts (flows/artifacts.py) and an event
(flows/events.py).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from flows import artifacts, events
from flows import shards as sharding
from flows.execute import BATCH_TIMEOUT_S
from flows.parameters import SHA256, StyleOverrides, TaskRunnerName, overrides
from flows.runners import task_runner_name
from flows.work import BatchFailed, Work, log_plan, pending_work, run_work, settled_entries
from nst_core.batch import gallery, report, storage
from nst_core.batch.escape import log_text
from nst_core.batch.jobs import Job
from nst_core.batch.layout import RunLayout
from nst_core.batch.manifest import Plan, load_plan
from nst_core.batch.records import DryRun, JobEntry, Record, Summary
from nst_core.batch.roots import Roots
from nst_core.settings import Settings

__all__ = ["BatchFailed", "stylize_batch"]


def _run_name() -> str:
    manifest = str(flow_run.parameters.get("manifest", "batch"))
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", storage.stem(manifest)).strip("-") or "batch"
    # The run's own id ends the name: two runs started in one second get two run folders.
    return f"{stem}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{str(flow_run.id)[:4]}"


@flow(name="stylize-batch", flow_run_name=_run_name, log_prints=False)
def stylize_batch(
    manifest: str,
    params: StyleOverrides | None = None,
    force: bool = False,
    dry_run: bool = False,
    task_runner: TaskRunnerName | None = None,
    shards: Annotated[int, Field(ge=1)] = 1,
    shard_timeout_s: Annotated[float, Field(gt=0)] = BATCH_TIMEOUT_S,
    shard_deployment: str = sharding.SHARD,
    read_roots: list[str] | None = None,
    write_roots: list[str] | None = None,
    manifest_sha256: SHA256 | None = None,
) -> Summary | DryRun:
    """Stylise every job of a manifest that is not done yet; write a summary, report and gallery.

    Args:
        manifest: The batch's manifest: a path on the worker or an s3:// URI.
        params: Style parameters that override the manifest's defaults for this run (a
            pair's own params still win), e.g. {"iterations": 50, "size": 256}.
        force: Recompute the jobs that are done already.
        dry_run: Plan and report what would run; stylise and write nothing.
        task_runner: Where units run: thread (this worker's devices; the default, or
            NST_TASK_RUNNER) or ray (the cluster at NST_RAY_ADDRESS).
        shards: Split the pending jobs into this many child runs of shard_deployment, on
            as many workers, and write one summary for the batch. 1 runs them here.
        shard_timeout_s: Seconds to wait for the shards; runs still going then are
            cancelled and their unfinished jobs reported failed.
        shard_deployment: The deployment that runs each shard (flow stylize-shard).
        read_roots: URI prefixes the manifest may read under (contents, styles, globs);
            unset (null), anywhere. The inbox sets them.
        write_roots: URI prefixes the manifest may write its output under; unset (null),
            anywhere. The inbox sets them.
        manifest_sha256: The manifest's sha256 as whoever started the run validated it: a
            manifest changed since is refused. The inbox and `nst run` set it.
    """
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    settings = Settings.from_env()  # this run's NST_* settings, passed down from here
    runner_name = task_runner_name(task_runner, settings)
    roots = Roots.of(read_roots, write_roots)
    overridden = overrides(params)
    plan = load_plan(
        manifest,
        overrides=overridden,
        roots=roots,
        expect_sha256=manifest_sha256,
        limits=settings.limits,
    )
    work = pending_work(plan, roots, settings, force=force, read_all=shards > 1)
    shard_lists = sharding.split(work.units, shards) if shards > 1 else []
    log_plan(work, f"over {len(shard_lists)} shards" if shard_lists else f"on {runner_name} runner")
    if dry_run:
        return DryRun(
            run=flow_run.name,
            jobs=len(work.all_jobs),
            done=len(work.done),
            pending=[j.output for j in work.pending],
            units=[len(u) for u in work.units],
            shards=[len(s) for s in shard_lists],
            cannot_fit=[j.output for j, _ in work.unfit],
        )
    entries = settled_entries(work)
    if shard_lists:
        shard_parameters: dict[str, Any] = {
            "manifest": manifest,
            "manifest_sha256": plan.sha256,
            "params": overridden,
            "task_runner": task_runner,
            "done_after": started_at if force else None,
            "read_roots": read_roots,
            "write_roots": write_roots,
        }
        entries |= _run_shards(
            work, shard_lists, shard_deployment, shard_parameters, shard_timeout_s
        )
    else:
        entries |= run_work(work, runner_name, force, settings)
    ordered = [entries[j.key] for j in work.all_jobs]
    summary = Summary.of(flow_run.name, plan.uri, ordered, time.perf_counter() - started)
    return _finish(summary, plan, work.all_jobs)


def _run_shards(
    work: Work,
    lists: list[list[Job]],
    deployment: str,
    parameters: dict[str, Any],
    timeout_s: float,
) -> dict[str, JobEntry]:
    """Start the shards' child runs, wait for them, and read their jobs' records back."""
    unfinished = sharding.run_shards(
        lists,
        deployment=deployment,
        parameters=parameters,
        parent_id=str(flow_run.id),
        parent_name=flow_run.name,
        timeout_s=timeout_s,
    )
    return {e.key: e for e in sharding.entries_after(work.pending, work.records, unfinished)}


def _finish(summary: Summary, plan: Plan, jobs: list[Job]) -> Summary:
    """Write the summary, report and pictures, publish the artifacts and the finished
    event, and fail the run when any job failed."""
    totals, unwritten = summary.totals, None
    layout = RunLayout(plan.output)
    markdown = report.markdown_report(summary, layout)  # the artifact's and report.md's
    artifacts.publish(summary, markdown, plan.name)  # first: they need no storage
    try:
        summary.run_folder = _write_results(layout, summary, markdown, jobs)
        where = f"{summary.run_folder}/summary.json"
    except storage.StorageError as exc:
        unwritten = exc
        where = f"the flow run's artifacts (the summary could not be written: {exc})"
    if unwritten is None:  # links to what is there, only
        artifacts.publish_links(layout, summary.run, plan.name)
    events.batch_finished(summary, plan.name, layout, written=unwritten is None)
    where = log_text(where)  # a state message and a log line: one line each
    get_run_logger().info("%s; summary in %s", totals.line(), where)
    if totals.failed:
        raise BatchFailed(f"{totals.failed} of {totals.jobs} jobs failed; see {where}")
    if unwritten:
        raise BatchFailed(f"every job is done, but {where}")
    return summary


def _write_results(layout: RunLayout, summary: Summary, markdown: str, jobs: list[Job]) -> str:
    run = summary.run
    storage.write_bytes(layout.summary(run), summary.to_json())
    storage.write_bytes(layout.report(run), markdown.encode())
    thumbnails = {}
    # What the run already holds: records read or written, and each input's planned hash.
    known: dict[str, Record | None] = {e.key: e.found for e in summary.jobs if e.found}
    shas = {f.uri: f.sha256 for job in jobs for f in job.inputs}
    try:
        shown = gallery.collect(layout, summary, known, shas)
        gallery.write_page(layout, shown)
        thumbnails = shown.thumbnail_uris(layout)
    except storage.StorageError:
        raise  # as for the files above: the run says the results could not be written
    except Exception:
        # The page is a view of what is written; a fault in drawing it must not fail a batch
        # whose every output and record is there. `nst gallery` can write it again.
        get_run_logger().exception("the gallery page of %s could not be written", log_text(run))
    # Drawn from the gallery's thumbnails where there are some (from the images otherwise).
    sheet = report.contact_sheet(summary.jobs, thumbnails)
    storage.write_bytes(layout.contact_sheet(run), sheet)
    histories = [(e.label, e.history) for e in summary.jobs if e.history]
    storage.write_bytes(layout.loss_plot(run), report.loss_plot(histories))
    return layout.run_folder(run)
