"""What a run finds to do, and doing it: shared by the batch flow and its shards' flow.

A run builds the manifest's jobs (a shard only its own), reads each record once to tell the
done jobs, fits the rest into the device's memory and packs them into work units; then runs
the units on threads (one device slot per device per host) or on Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import get_run_logger

from flows.execute import run_units
from flows.runners import placement
from nst_core.batch import records, runner, units
from nst_core.batch.escape import log_text
from nst_core.batch.jobs import Job, build_jobs
from nst_core.batch.manifest import Plan
from nst_core.batch.memory_fit import fit_memory
from nst_core.batch.records import JobEntry, Record
from nst_core.batch.roots import Roots
from nst_core.errors import NstError
from nst_core.settings import Settings


class BatchFailed(RuntimeError):
    """Raised after everything was written, when any job failed: the flow run ends Failed."""


@dataclass
class Work:
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


def pending_work(
    plan: Plan,
    roots: Roots,
    settings: Settings,
    *,
    force: bool,
    only_jobs: list[str] | None = None,
    done_after: str | None = None,
    read_all: bool = False,
) -> Work:
    """The run's jobs (`only_jobs`: a shard's), which are done, and the rest in units.

    Each record is read once: it decides done-ness and, for skipped jobs, the summary line.
    `read_all` reads them even with `force` (a sharded parent tells new records from old by
    them); `done_after` makes older completed records count as not done (a forced shard).
    """
    built = build_jobs(plan, read_roots=roots.read, max_input_bytes=settings.limits.max_input_bytes)
    all_jobs = _select(built, only_jobs, plan.uri)
    read = not force or read_all
    found = {j.key: records.read_record(j.record) for j in all_jobs} if read else {}
    done = {
        j.key for j in all_jobs if not force and records.done(j, found.get(j.key), since=done_after)
    }
    pending = [j for j in all_jobs if j.key not in done]
    job_device = pending[0].params.device if pending else "cpu"
    memory = fit_memory(pending, job_device, settings.memory_budget_bytes)
    return Work(
        plan=plan,
        all_jobs=all_jobs,
        records=found,
        done=done,
        pending=pending,
        device=job_device,
        devices=memory.devices,
        budget=memory.budget,
        units=units.pack_units(memory.fitting, memory.budget),
        unfit=memory.unfit,
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


def log_plan(work: Work, where: str) -> None:
    """One line: how many jobs, done, to run in how many units, and `where` they run."""
    get_run_logger().info(
        "%s: %d jobs, %d done already, %d to run in %d units %s%s",
        log_text(work.plan.uri),
        len(work.all_jobs),
        len(work.done),
        len(work.pending),
        len(work.units),
        where,
        f"; {len(work.unfit)} cannot fit the memory budget" if work.unfit else "",
    )


def settled_entries(work: Work) -> dict[str, JobEntry]:
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


def run_work(work: Work, runner_name: str, force: bool, settings: Settings) -> dict[str, JobEntry]:
    """Run the pending units where `runner_name` says; their entries by job key."""
    if not work.units:
        return {}
    with placement(runner_name, work.devices, work.device, settings) as place:
        description = f"{work.plan.name}: jobs finished"
        return run_units(work.units, place, force, description, settings)
