"""The stylize-batch flow: a manifest in; every pair stylised; outputs, records and a report out.

Orchestration only: nst_core plans, runs and reports; this module decides what runs where
and when. Units run on threads here (GPU or CPU concurrency is then a Prefect global
concurrency limit per device per host, so two flows on one machine never oversubscribe a
device) or on a Ray cluster (flows/runners.py); `shards` splits a batch over several
workers as child runs of a deployment (flows/shards.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections import deque
from datetime import UTC, datetime

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from flows import shards as sharding
from flows.runners import placement, task_runner_name
from nst_core.batch import jobs, report, runner, storage, units
from nst_core.batch.manifest import load_plan
from nst_core.batch.roots import Roots
from nst_core.engine.devices import devices_for
from nst_core.engine.transfer import GramCache
from nst_core.errors import NstError

# Style Grams are reused across the units of a process (keyed by the style bytes' hash).
_GRAM_CACHE = GramCache()
SLOT_TIMEOUT_S = 6 * 3600  # a unit waits this long at most for its device
# Held slots are renewed while a unit runs; a crashed holder's slot frees this long after.
LEASE_S = 60
# The flow stops waiting for its units after this long (NST_BATCH_TIMEOUT_S); so does a
# sharded parent for its children (the shard_timeout_s parameter).
BATCH_TIMEOUT_S = 24 * 3600


class BatchFailed(RuntimeError):
    """Raised after everything was written, when any job failed: the flow run ends Failed."""


def _run_name() -> str:
    if flow_run.parameters.get("shard_name"):
        return str(flow_run.parameters["shard_name"])
    manifest = str(flow_run.parameters.get("manifest", "batch"))
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", storage.stem(manifest)).strip("-") or "batch"
    # The run's own id ends the name: two runs started in one second get two run folders.
    return f"{stem}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{str(flow_run.id)[:4]}"


def device_limit_name(device: str) -> str:
    """One concurrency limit per device per host, e.g. nst-gpu-box1-cuda-0."""
    host = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname()).strip("-") or "host"
    return f"nst-{host}-{device.replace(':', '-')}"


def _transient_only(task, task_run, state) -> bool:
    """Retry a unit only for failures that retrying may fix (storage unreachable, 5xx)."""
    error = state.result(raise_on_failure=False)
    return bool(getattr(error, "transient", False))


def _unit_name() -> str:
    from prefect.runtime import task_run

    return task_run.parameters.get("label", "unit")


@task(
    task_run_name=_unit_name,
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_condition_fn=_transient_only,
)
def stylize_unit(
    unit: list[jobs.Job], device: str, label: str, force: bool, hold_slot: bool = True
) -> list[dict]:
    """Stylise one work unit on one device, holding that device's concurrency slot (unless
    Ray already gave this unit its device)."""
    logger = get_run_logger()

    def log(outcome: runner.Outcome) -> None:
        if outcome.status == "completed":
            final = outcome.record["losses"]["final"]
            logger.info(
                "completed %s in %.1f s: total %.4g, content %.4g, style %.4g",
                outcome.job.label,
                outcome.seconds,
                final["total"],
                final["content"],
                final["style"],
            )
        elif outcome.status == "failed":
            logger.error("failed %s: %s", outcome.job.label, outcome.error)
        elif outcome.status == "elsewhere":
            logger.info("left %s to the run that is computing it now", outcome.job.label)

    slot = (
        concurrency(
            device_limit_name(device),
            occupy=1,
            timeout_seconds=SLOT_TIMEOUT_S,
            lease_duration=LEASE_S,
        )
        if hold_slot
        else contextlib.nullcontext()
    )
    with slot:
        outcomes = runner.run_unit(unit, device, cache=_GRAM_CACHE, on_job=log, force=force)
    return [
        report.job_entry(o.job, o.status, record=o.record, error=o.error, seconds=o.seconds)
        for o in outcomes
    ]


def _ensure_device_limits(devices: list[str]) -> None:
    """Create each device's one-slot limit. Under `nst run` with the embedded server, also
    free its slot: that server runs no lease repossessor, so a slot held by a killed run
    would otherwise stay taken for good (a real server frees it when its lease expires)."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    reset = os.environ.get("NST_EMBEDDED_SERVER") == "1"
    with get_client(sync_client=True) as client:
        for device in devices:
            name = device_limit_name(device)
            client.upsert_global_concurrency_limit_by_name(name, 1)
            if reset:
                client.update_global_concurrency_limit(
                    name, GlobalConcurrencyLimitUpdate(active_slots=0)
                )


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
) -> dict:
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
    logger = get_run_logger()
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    runner_name = task_runner_name(task_runner)
    if shards < 1:
        raise NstError(f"shards: must be 1 or more, got {shards}")
    roots = Roots.of(read_roots, write_roots)
    plan = load_plan(manifest, overrides=params, roots=roots, expect_sha256=manifest_sha256)
    all_jobs = _select(jobs.build_jobs(plan), only_jobs, plan.uri)
    # Each record is read once: it decides done-ness and, for skipped jobs, the summary line.
    # A sharded parent reads them even with `force`: it tells new records from old by them.
    read = not force or shards > 1
    records = {j.key: jobs.read_record(j.record) for j in all_jobs} if read else {}
    is_done = sharding.completed_since(done_after)
    done = {j.key for j in all_jobs if not force and is_done(j, records.get(j.key))}
    pending = [j for j in all_jobs if j.key not in done]
    job_device = pending[0].params.device if pending else "cpu"
    device_list = devices_for(job_device)
    budget = units.memory_budget_bytes(device_list[0])
    fitting, unfit = units.split_unfit(pending, budget)
    work = units.plan_units(fitting, budget)
    shard_lists = sharding.split(work, shards) if shards > 1 else []
    logger.info(
        "%s: %d jobs, %d done already, %d to run in %d units %s%s",
        plan.uri,
        len(all_jobs),
        len(done),
        len(pending),
        len(work),
        f"over {len(shard_lists)} shards" if shard_lists else f"on {runner_name} runner",
        f"; {len(unfit)} cannot fit the memory budget" if unfit else "",
    )
    if dry_run:
        return {
            "run": flow_run.name,
            "jobs": len(all_jobs),
            "done": len(done),
            "pending": [j.output for j in pending],
            "units": [len(u) for u in work],
            "shards": [len(s) for s in shard_lists],
            "cannot_fit": [j.output for j, _ in unfit],
        }

    entries = {
        j.key: report.job_entry(j, "skipped", record=records[j.key])
        for j in all_jobs
        if j.key in done
    }
    for job, need in unfit:  # failed alone, before any optimisation; the rest go on
        outcome = runner.fail(job, units.unfit_reason(need, budget))
        logger.error("failed %s: %s", job.label, outcome.error)
        entries[job.key] = report.job_entry(
            job, "failed", record=outcome.record, error=outcome.error
        )
    if shard_lists:
        unfinished = sharding.run_shards(
            shard_lists,
            deployment=shard_deployment,
            parameters={
                "manifest": manifest,
                "params": params,
                "task_runner": task_runner,
                "done_after": started_at if force else None,
                "read_roots": read_roots,
                "write_roots": write_roots,
                "manifest_sha256": plan.sha256,
            },
            parent_id=str(flow_run.id),
            parent_name=flow_run.name,
            timeout_s=shard_timeout_s,
        )
        for entry in sharding.entries_after(pending, records, unfinished):
            entries[entry["key"]] = entry
    elif work:
        with placement(runner_name, device_list, job_device) as place:
            entries |= _run_units(work, place, force, f"{plan.name}: jobs finished")

    ordered = [entries[j.key] for j in all_jobs]
    summary = report.summarize(flow_run.name, plan.uri, ordered, time.perf_counter() - started)
    totals = summary["totals"]
    unwritten = None
    if shard_name:  # one summary per batch: the parent writes it
        where = f"the parent's summary ({shard_name.rsplit('-shard-', 1)[0]})"
    else:
        _publish_artifacts(summary)  # first: they need no storage, which may be what broke
        try:
            summary["run_folder"] = _write_results(plan.output, summary, ordered)
            where = f"{summary['run_folder']}/summary.json"
        except storage.StorageError as exc:
            unwritten = exc
            where = f"the flow run's artifacts (the summary could not be written: {exc})"
    logger.info("%s; summary in %s", report.totals_line(totals), where)
    if totals["failed"]:
        raise BatchFailed(f"{totals['failed']} of {totals['jobs']} jobs failed; see {where}")
    if unwritten:
        raise BatchFailed(f"every job is done, but {where}")
    return summary


def _select(all_jobs: list[jobs.Job], only: list[str] | None, uri: str) -> list[jobs.Job]:
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


def _run_units(work: list[list[jobs.Job]], place, force: bool, description: str) -> dict:
    """Run every unit where `place` says and collect their summary entries by job key.

    With device slots, each device gets its next unit the moment its last one returns (one
    unit in flight per device): units queued all at once would instead poll for the slot
    and leave the device idle ~0.5 s between units. Ray queues its own, so all go at once.
    """
    logger = get_run_logger()
    if place.hold_slot:
        _ensure_device_limits(sorted(set(place.devices)))
    progress_id = create_progress_artifact(0.0, description=description)
    queue = deque(enumerate(work))
    in_flight: dict = {}  # future -> (unit, device)

    def start(device: str) -> None:
        index, unit = queue.popleft()
        parameters = {
            "unit": unit,
            "device": device,
            "label": _label(index, len(work), unit),
            "force": force,
            "hold_slot": place.hold_slot,
        }
        in_flight[place.submit(stylize_unit, parameters)] = (unit, device)

    lanes = sorted(set(place.devices)) if place.hold_slot else None
    for index in range(len(lanes) if lanes else len(work)):
        if queue:
            start(lanes[index] if lanes else place.device(index))
    entries: dict[str, dict] = {}
    total = sum(len(u) for u in work)
    timeout = float(os.environ.get("NST_BATCH_TIMEOUT_S", BATCH_TIMEOUT_S))
    deadline = time.monotonic() + timeout
    try:
        while in_flight:
            remaining = max(deadline - time.monotonic(), 0.001)
            for future in as_completed(list(in_flight), timeout=remaining):
                unit, device = in_flight.pop(future)
                try:
                    results = future.result()
                except Exception as exc:  # the unit failed after its retries: its jobs failed
                    error = f"unit failed: {exc}"
                    results = [report.job_entry(j, "failed", error=error) for j in unit]
                    names = ", ".join(j.label for j in unit)
                    logger.error("unit failed after its retries (%s): %s", names, exc)
                for entry in results:
                    entries[entry["key"]] = entry
                update_progress_artifact(progress_id, 100.0 * len(entries) / total)
                if queue:
                    start(device)
                    break  # wait again, now on the new unit too
    except TimeoutError:
        logger.error("units still running after %.0f s: their jobs are reported failed", timeout)
        for unit in work:
            for job in unit:
                if job.key not in entries:
                    error = f"not finished within {timeout:.0f} s (NST_BATCH_TIMEOUT_S)"
                    entries[job.key] = report.job_entry(job, "failed", error=error)
    return entries


def _label(index: int, count: int, unit: list[jobs.Job]) -> str:
    """A task run name that says which jobs it holds."""
    size = units.output_size(unit[0])
    where = f" at {size[0]}x{size[1]}" if size else ""
    names = ", ".join(j.label for j in unit[:3]) + (f" +{len(unit) - 3}" if len(unit) > 3 else "")
    return f"unit {index + 1}/{count}{where}: {names}"[:200]


def _write_results(output: str, summary: dict, entries: list[dict]) -> str:
    folder = f"{output}/_runs/{summary['run']}"
    storage.write_bytes(f"{folder}/summary.json", json.dumps(summary, indent=2).encode())
    storage.write_bytes(f"{folder}/report.md", report.markdown_report(summary).encode())
    storage.write_bytes(f"{folder}/contact_sheet.jpg", report.contact_sheet(entries))
    histories = [(e["label"], e["history"]) for e in entries if e["history"]]
    storage.write_bytes(f"{folder}/losses.png", report.loss_plot(histories))
    return folder


def _publish_artifacts(summary: dict) -> None:
    rows = [
        {
            "job": e["label"],
            "status": e["status"],
            "seconds": round(e["seconds"], 1) if e["seconds"] is not None else None,
            "style loss": (e["losses"] or {}).get("style"),
            "content loss": (e["losses"] or {}).get("content"),
            "output": e["output"] if e["status"] != "failed" else e["error"],
        }
        for e in summary["jobs"]
    ]
    create_table_artifact(rows, key="stylize-batch-jobs", description=summary["run"])
    create_markdown_artifact(report.markdown_report(summary), key="stylize-batch-report")
