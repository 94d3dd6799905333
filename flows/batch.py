"""The stylize-batch flow: a manifest in; every pair stylised; outputs, records and a report out.

Orchestration only: nst_core plans, runs and reports; this module decides what runs where
and when. Units run on threads here (flows/execute.py: one device slot per device per
host) or on a Ray cluster (flows/runners.py); `shards` splits a batch over several
workers as child runs of a deployment (flows/shards.py).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows import artifacts
from flows import shards as sharding
from flows.execute import BATCH_TIMEOUT_S, run_units
from flows.runners import placement, task_runner_name
from nst_core.batch import gallery, records, report, runner, storage, units
from nst_core.batch.escape import log_text
from nst_core.batch.jobs import Job, build_jobs
from nst_core.batch.layout import RunLayout
from nst_core.batch.manifest import Plan, load_plan
from nst_core.batch.memory_fit import fit_memory
from nst_core.batch.records import DryRun, JobEntry, Record, Summary
from nst_core.batch.roots import Roots
from nst_core.errors import NstError
from nst_core.settings import Settings


class BatchFailed(RuntimeError):
    """Raised after everything was written, when any job failed: the flow run ends Failed."""


def _run_name() -> str:
    if flow_run.parameters.get("shard_name"):
        return str(flow_run.parameters["shard_name"])
    manifest = str(flow_run.parameters.get("manifest", "batch"))
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", storage.stem(manifest)).strip("-") or "batch"
    # The run's own id ends the name: two runs started in one second get two run folders.
    return f"{stem}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{str(flow_run.id)[:4]}"


@dataclass
class _Work:
    """What a run found to do: every job, their records, and the pending ones in units."""

    plan: Plan
    all_jobs: list[Job]
    records: dict[str, Record | None]
    done: set[str]
    pending: list[Job]
    device: str
    devices: list[str]
    budget: int
    units: list[list[Job]]
    unfit: list[tuple[Job, int]]
    shard_lists: list[list[Job]]


def _pending_work(
    plan: Plan,
    roots: Roots,
    settings: Settings,
    only_jobs: list[str] | None,
    force: bool,
    shards: int,
    done_after: str | None,
) -> _Work:
    built = build_jobs(plan, read_roots=roots.read, max_input_bytes=settings.limits.max_input_bytes)
    all_jobs = _select(built, only_jobs, plan.uri)
    # Each record is read once: it decides done-ness and, for skipped jobs, the summary line.
    # A sharded parent reads them even with `force`: it tells new records from old by them.
    read = not force or shards > 1
    found = {j.key: records.read_record(j.record) for j in all_jobs} if read else {}
    done = {
        j.key for j in all_jobs if not force and records.done(j, found.get(j.key), since=done_after)
    }
    pending = [j for j in all_jobs if j.key not in done]
    job_device = pending[0].params.device if pending else "cpu"
    memory = fit_memory(pending, job_device, settings.memory_budget_bytes)
    work = units.pack_units(memory.fitting, memory.budget)
    shard_lists = sharding.split(work, shards) if shards > 1 else []
    return _Work(
        plan=plan,
        all_jobs=all_jobs,
        records=found,
        done=done,
        pending=pending,
        device=job_device,
        devices=memory.devices,
        budget=memory.budget,
        units=work,
        unfit=memory.unfit,
        shard_lists=shard_lists,
    )


def _select(all_jobs: list[Job], only: list[str] | None, uri: str) -> list[Job]:
    """A shard's own jobs; all of them must still be in the manifest."""
    if only is None:
        return all_jobs
    wanted = set(only)
    missing = wanted - {j.key for j in all_jobs}
    if missing:
        raise NstError(
            f"{uri}: {len(missing)} of this shard's {len(wanted)} jobs are no longer in the "
            "manifest (it or its inputs changed after the batch was split); rerun the batch"
        )
    return [j for j in all_jobs if j.key in wanted]


@flow(name="stylize-batch", flow_run_name=_run_name, log_prints=False)
def stylize_batch(
    manifest: str,
    params: dict | None = None,
    force: bool = False,
    dry_run: bool = False,
    task_runner: str | None = None,
    shards: int = 1,
    shard_timeout_s: float = BATCH_TIMEOUT_S,
    shard_deployment: str = sharding.ADHOC,
    only_jobs: list[str] | None = None,
    shard_name: str | None = None,
    done_after: str | None = None,
    read_roots: list[str] | None = None,
    write_roots: list[str] | None = None,
    manifest_sha256: str | None = None,
) -> Summary | DryRun:
    """Stylise every job of MANIFEST (a path or s3:// URI) that is not done yet.

    `params` overrides the manifest's defaults; `force` recomputes done jobs; `dry_run`
    plans and reports without stylising or writing anything. `task_runner` is `thread`
    (default, or NST_TASK_RUNNER) or `ray`. `shards` > 1 splits the pending jobs into that
    many child runs of `shard_deployment`, waits up to `shard_timeout_s` for them and writes
    one summary. `only_jobs`, `shard_name` and `done_after` are set by such a parent for its
    children: the child's job keys, its run name, and (for `force`) the time before which
    a completed record does not count as done. `read_roots` / `write_roots` confine what the
    manifest may read and write (the inbox sets them); `manifest_sha256` refuses a manifest
    that changed since whoever started the run validated it.
    """
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    settings = Settings.from_env()  # this run's NST_* settings, passed down from here
    runner_name = task_runner_name(task_runner, settings)
    if shards < 1:
        raise NstError(f"shards: must be 1 or more, got {shards}")
    roots = Roots.of(read_roots, write_roots)
    plan = load_plan(
        manifest,
        overrides=params,
        roots=roots,
        expect_sha256=manifest_sha256,
        limits=settings.limits,
    )
    work = _pending_work(plan, roots, settings, only_jobs, force, shards, done_after)
    _log_plan(work, runner_name)
    if dry_run:
        return DryRun(
            run=flow_run.name,
            jobs=len(work.all_jobs),
            done=len(work.done),
            pending=[j.output for j in work.pending],
            units=[len(u) for u in work.units],
            shards=[len(s) for s in work.shard_lists],
            cannot_fit=[j.output for j, _ in work.unfit],
        )
    entries = _settled_entries(work)
    if work.shard_lists:
        shard_parameters = {
            "manifest": manifest,
            "params": params,
            "task_runner": task_runner,
            "done_after": started_at if force else None,
            "read_roots": read_roots,
            "write_roots": write_roots,
            "manifest_sha256": plan.sha256,
        }
        entries |= _run_shards(work, shard_deployment, shard_parameters, shard_timeout_s)
    elif work.units:
        with placement(runner_name, work.devices, work.device, settings) as place:
            description = f"{plan.name}: jobs finished"
            entries |= run_units(work.units, place, force, description, settings)
    ordered = [entries[j.key] for j in work.all_jobs]
    summary = Summary.of(flow_run.name, plan.uri, ordered, time.perf_counter() - started)
    return _finish(summary, plan, shard_name, work.all_jobs)


def _log_plan(work: _Work, runner_name: str) -> None:
    get_run_logger().info(
        "%s: %d jobs, %d done already, %d to run in %d units %s%s",
        log_text(work.plan.uri),
        len(work.all_jobs),
        len(work.done),
        len(work.pending),
        len(work.units),
        f"over {len(work.shard_lists)} shards" if work.shard_lists else f"on {runner_name} runner",
        f"; {len(work.unfit)} cannot fit the memory budget" if work.unfit else "",
    )


def _settled_entries(work: _Work) -> dict[str, JobEntry]:
    """Entries known before anything runs: done jobs skipped, unfittable jobs failed alone
    (before any optimisation; the rest go on)."""
    entries = {
        j.key: JobEntry.of(j, "skipped", record=work.records[j.key])
        for j in work.all_jobs
        if j.key in work.done
    }
    for job, need in work.unfit:
        outcome = runner.fail(job, units.unfit_reason(job, need, work.budget))
        get_run_logger().error("failed %s: %s", log_text(job.label), log_text(outcome.error))
        entries[job.key] = JobEntry.of(job, "failed", record=outcome.record, error=outcome.error)
    return entries


def _run_shards(
    work: _Work, deployment: str, parameters: dict, timeout_s: float
) -> dict[str, JobEntry]:
    """Start the shards' child runs, wait for them, and read their jobs' records back."""
    unfinished = sharding.run_shards(
        work.shard_lists,
        deployment=deployment,
        parameters=parameters,
        parent_id=str(flow_run.id),
        parent_name=flow_run.name,
        timeout_s=timeout_s,
    )
    return {e.key: e for e in sharding.entries_after(work.pending, work.records, unfinished)}


def _finish(summary: Summary, plan: Plan, shard_name: str | None, jobs: list[Job]) -> Summary:
    """Write the summary, report and pictures (a shard leaves that to its parent), publish
    the artifacts, and fail the run when any job failed."""
    totals, unwritten = summary.totals, None
    if shard_name:  # one summary per batch: the parent writes it
        where = f"the parent's summary ({shard_name.rsplit('-shard-', 1)[0]})"
    else:
        layout = RunLayout(plan.output)
        markdown = report.markdown_report(summary, layout)  # the artifact's and report.md's
        artifacts.publish(summary, markdown)  # first: they need no storage, which may have broken
        try:
            summary.run_folder = _write_results(layout, summary, markdown, jobs)
            where = f"{summary.run_folder}/summary.json"
        except storage.StorageError as exc:
            unwritten = exc
            where = f"the flow run's artifacts (the summary could not be written: {exc})"
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
