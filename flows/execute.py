"""Running a batch's work units: one Prefect task per unit, each holding its device's
concurrency slot, fed to the devices one unit at a time (or all at once to Ray).

GPU or CPU concurrency is a Prefect global concurrency limit per device per host, so two
flows on one machine never oversubscribe a device.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections import deque
from logging import Logger, LoggerAdapter
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State, TaskRun
from prefect.concurrency.sync import concurrency
from prefect.futures import PrefectFuture
from prefect.tasks import Task, exponential_backoff

from flows import embedded, progress
from nst_core.batch import runner, units
from nst_core.batch.escape import log_text
from nst_core.batch.jobs import Job
from nst_core.batch.records import JobEntry
from nst_core.engine.targets import GramCache
from nst_core.settings import DEFAULT_BATCH_TIMEOUT_S, Settings

if TYPE_CHECKING:
    from flows.runners import UnitPlacement

RunLogger = Logger | LoggerAdapter

# Style Grams are reused across the units of a process (keyed by the style bytes' hash).
_GRAM_CACHE = GramCache()
SLOT_TIMEOUT_S = 6 * 3600  # a unit waits this long at most for its device
# Held slots are renewed while a unit runs; a crashed holder's slot frees this long after.
LEASE_S = 60
# The flow stops waiting for its units after this long (NST_BATCH_TIMEOUT_S); so does a
# sharded parent for its children (the shard_timeout_s parameter).
BATCH_TIMEOUT_S = DEFAULT_BATCH_TIMEOUT_S


def device_limit_name(device: str) -> str:
    """One concurrency limit per device per host, e.g. nst-gpu-box1-cuda-0."""
    host = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname()).strip("-") or "host"
    return f"nst-{host}-{device.replace(':', '-')}"


def _transient_only(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a unit only for failures that retrying may fix (storage unreachable, 5xx)."""
    error = state.result(raise_on_failure=False)
    return bool(getattr(error, "transient", False))


def _unit_name() -> str:
    from prefect.runtime import task_run

    return task_run.parameters.get("label", "unit")


def _log_outcome(logger: RunLogger, outcome: runner.Outcome) -> None:
    # Labels and errors carry file names, which may hold CR, LF or ESC: each stays one line.
    label = log_text(outcome.job.label)
    if outcome.status == "completed":
        assert outcome.record is not None and outcome.record.losses is not None
        final = outcome.record.losses.final
        logger.info(
            "completed %s in %.1f s: total %.4g, content %.4g, style %.4g",
            label,
            outcome.seconds,
            final.total,
            final.content,
            final.style,
        )
    elif outcome.status == "failed":
        logger.error("failed %s: %s", label, log_text(outcome.error))
    elif outcome.status == "elsewhere":
        logger.info("left %s to the run that is computing it now", label)


@task(
    task_run_name=_unit_name,
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_condition_fn=_transient_only,
)
def stylize_unit(
    unit: list[Job],
    device: str,
    label: str,
    force: bool,
    settings: Settings,
    hold_slot: bool = True,
    progress_id: UUID | None = None,
) -> list[JobEntry]:
    """Stylise one work unit on one device, holding that device's concurrency slot (unless
    Ray already gave this unit its device). Its progress goes to the batch's progress
    artifact `progress_id` (flows/progress.py)."""
    logger = get_run_logger()
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
        outcomes = runner.run_unit(
            unit,
            device,
            cache=_GRAM_CACHE,
            on_job=lambda o: _log_outcome(logger, o),
            options=runner.UnitOptions(
                force=force,
                unit=label,
                warn=lambda line: logger.warning("%s", log_text(line)),
                settings=settings,
                progress=progress.unit_report(progress_id, label, logger),
            ),
        )
    return [
        JobEntry.of(o.job, o.status, record=o.record, error=o.error, seconds=o.seconds)
        for o in outcomes
    ]


def ensure_device_limits(devices: list[str]) -> None:
    """Create each device's one-slot limit. On `nst run`'s embedded server, one this process
    started (flows/embedded.py), also free its slot: that server runs no lease repossessor, so
    a slot held by a killed run would otherwise stay taken for good. On any other server (a
    deployment's flow run, `nst run` with PREFECT_API_URL) slots are never reset: live runs
    may hold them, and the server frees a dead run's slot when its lease expires. This is a
    fact of the process, not a flow parameter, so no deployment run can ask for a reset."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    with get_client(sync_client=True) as client:
        reset = embedded.started_here(str(client.api_url))
        for device in devices:
            name = device_limit_name(device)
            client.upsert_global_concurrency_limit_by_name(name, 1)
            if reset:
                client.update_global_concurrency_limit(
                    name, GlobalConcurrencyLimitUpdate(active_slots=0)
                )


class _Feeder:
    """Units waiting for a device, and the ones in flight on each."""

    def __init__(
        self,
        work: list[list[Job]],
        place: UnitPlacement,
        force: bool,
        settings: Settings,
        progress_id: UUID | None = None,
    ) -> None:
        self.work, self.place, self.force, self.settings = work, place, force, settings
        self.progress_id = progress_id
        self.queue = deque(enumerate(work))
        # Each unit in flight: its jobs, its device and its label.
        self.in_flight: dict[PrefectFuture[Any], tuple[list[Job], str, str]] = {}

    def start(self, device: str) -> None:
        index, unit = self.queue.popleft()
        label = unit_label(index, len(self.work), unit)
        parameters = {
            "unit": unit,
            "device": device,
            "label": label,
            "force": self.force,
            "settings": self.settings,
            "hold_slot": self.place.hold_slot,
            "progress_id": self.progress_id,
        }
        self.in_flight[self.place.submit(stylize_unit, parameters)] = (unit, device, label)

    def running(self) -> dict[UUID, tuple[str, int]]:
        """Each unit in flight by its task run: its label and its number of jobs."""
        return {f.task_run_id: (label, len(u)) for f, (u, _, label) in self.in_flight.items()}

    def start_all_lanes(self) -> None:
        """With device slots, one unit per device; Ray queues its own, so all go at once."""
        lanes = sorted(set(self.place.devices)) if self.place.hold_slot else None
        for index in range(len(lanes) if lanes else len(self.work)):
            if self.queue:
                self.start(lanes[index] if lanes else self.place.device(index))


def run_units(
    work: list[list[Job]],
    place: UnitPlacement,
    force: bool,
    description: str,
    settings: Settings,
) -> dict[str, JobEntry]:
    """Run every unit where `place` says and collect their summary entries by job key.

    With device slots, each device gets its next unit the moment its last one returns (one
    unit in flight per device): units queued all at once would instead poll for the slot
    and leave the device idle ~0.5 s between units.
    """
    logger = get_run_logger()
    if place.hold_slot:
        ensure_device_limits(sorted(set(place.devices)))
    # Called from a sync flow: the artifact's id, not a coroutine.
    progress_id = cast(UUID, create_progress_artifact(0.0, description=description))
    total = sum(len(u) for u in work)
    tally = progress.Tally(
        total, lambda value: progress.publish(progress_id, value, logger), progress.displayed()
    )
    feeder = _Feeder(work, place, force, settings, progress_id)
    entries: dict[str, JobEntry] = {}
    timeout = settings.batch_timeout_s
    deadline = time.monotonic() + timeout
    # Units on this process's threads report to the tally themselves; units elsewhere are
    # read from their own artifacts while the flow waits.
    poll_s = None if place.name == "thread" else progress.POLL_EVERY_S
    try:
        with progress.registered(progress_id, tally):
            feeder.start_all_lanes()
            while feeder.in_flight:
                waiting = progress.as_completed_polling(
                    list(feeder.in_flight),
                    deadline,
                    poll_s,
                    lambda: progress.poll_remote(tally, feeder.running(), logger),
                )
                for future in waiting:
                    unit, device, label = feeder.in_flight.pop(future)
                    for entry in _unit_entries(future, unit, logger):
                        entries[entry.key] = entry
                    tally.unit_returned(label, len(unit))
                    if feeder.queue:
                        feeder.start(device)
                        break  # wait again, now on the new unit too
    except TimeoutError:
        logger.error("units still running after %.0f s: their jobs are reported failed", timeout)
        error = f"not finished within {timeout:.0f} s (NST_BATCH_TIMEOUT_S)"
        for job in (job for unit in work for job in unit if job.key not in entries):
            entries[job.key] = JobEntry.of(job, "failed", error=error)
    return entries


def _unit_entries(
    future: PrefectFuture[list[JobEntry]], unit: list[Job], logger: RunLogger
) -> list[JobEntry]:
    try:
        return future.result()
    except Exception as exc:  # the unit failed after its retries: its jobs failed
        names = ", ".join(j.label for j in unit)
        logger.error("unit failed after its retries (%s): %s", log_text(names), log_text(exc))
        return [JobEntry.of(j, "failed", error=f"unit failed: {exc}") for j in unit]


def unit_label(index: int, count: int, unit: list[Job]) -> str:
    """A task run name that says which jobs it holds, on one line: Prefect logs it."""
    size = units.output_size(unit[0])
    where = f" at {size[0]}x{size[1]}" if size else ""
    names = ", ".join(log_text(j.label) for j in unit[:3])
    names += f" +{len(unit) - 3}" if len(unit) > 3 else ""
    return f"unit {index + 1}/{count}{where}: {names}"[:200]
