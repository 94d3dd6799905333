"""Run one work unit: read its inputs, stylise its jobs together, write images and records.

No Prefect here: the flow calls `run_unit` inside a task, and anything else (a test, a
script) can call it the same way.

Guarantees:
- Each input is read once per unit, and only if its bytes are those the plan hashed (and,
  for a local file under read roots, the file opened lies inside them): else the job fails
  ("input changed since it was planned"), and nothing is stylised under a key that does not
  describe its bytes.
- An image is written before its record, each atomically, so a record always has its image.
- A job that fails (unreadable image, out of memory at batch size 1, a storage error
  retrying will not fix) gets a `failed` record and the other jobs go on.
- Out of memory splits the unit's pairs in halves and tries again.
- Storage errors that retrying may fix propagate, so the caller can retry the whole unit;
  jobs already done are skipped then.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from nst_core.batch import records, storage, thumbnails
from nst_core.batch.job_claims import JobClaims, generations, job_claims_folder
from nst_core.batch.jobs import Job
from nst_core.batch.progress import UnitReport, UnitTracker
from nst_core.batch.records import Record, Status, Timings
from nst_core.batch.unit_inputs import UnitInputs
from nst_core.engine import images
from nst_core.engine.loop import Result, stylize_pairs
from nst_core.engine.targets import GramCache, Pair
from nst_core.errors import ImageError, NstError
from nst_core.settings import Settings


@dataclass
class Outcome:
    """What happened to one job of a unit."""

    job: Job
    status: Status  # `elsewhere`: another run is computing it
    seconds: float = 0.0
    error: str | None = None
    record: Record | None = field(default=None, repr=False)


OnJob = Callable[[Outcome], None]
# A claimed job with its engine input and the seconds it took to read.
_Loaded = tuple[Job, Pair, float]


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    message = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in message or "can't allocate memory" in message
    )


@dataclass
class UnitOptions:
    """How a unit runs. The flow takes the defaults; `nst stylize` runs one job unclaimed,
    recomputed, with a progress bar, and leaves no record when it fails."""

    force: bool = False  # recompute jobs already done (only those no live run holds)
    claim: bool = True  # claim each job first (claims.py), so two runs never compute it twice
    record_failures: bool = True  # a failed job gets a `failed` record
    # Where the unit's progress goes: at every evaluation and at every job it finishes.
    progress: UnitReport | None = None
    unit: str | None = None  # the unit's name, for the records' `execution`
    # Input size limit, claim lease and what `precision: auto` means; default: the built-in
    # settings (never read from the environment here).
    settings: Settings = field(default_factory=Settings)
    warn: Callable[[str], None] | None = None  # where a claim taken over is reported


class _Unclaimed:
    """Claims for a unit that takes none: every job is this run's."""

    def take(self, job: Job, seen: dict[str, list[int]]) -> bool:
        return True

    def release(self, key: str) -> None:
        pass


def run_unit(
    unit: list[Job],
    device: str,
    *,
    cache: GramCache | None = None,
    on_job: OnJob | None = None,
    options: UnitOptions | None = None,
) -> list[Outcome]:
    """Stylise `unit` on `device`; one Outcome per job, in order.

    Each job is claimed first (nst_core/batch/job_claims.py): a job another run is computing
    right now comes back `elsewhere`, and `options.force` recomputes only jobs no live run
    holds.
    """
    options = options or UnitOptions()
    outcomes: dict[str, Outcome] = {}
    claims = (
        JobClaims(options.settings.claim_lease_s, options.warn)
        if options.claim
        else contextlib.nullcontext(_Unclaimed())
    )
    tracker = UnitTracker(len(unit), options.progress) if options.progress else None
    with claims as held:

        def finish(outcome: Outcome) -> None:
            held.release(outcome.job.key)  # recorded (or failed): nothing left to guard
            outcomes[outcome.job.key] = outcome
            if on_job:
                on_job(outcome)
            if tracker:
                tracker.job_finished()

        unit_run = _UnitRun(cache or GramCache(), options, finish, device, tracker)
        loaded = _claim_and_load(unit, held, unit_run)
        unit_run.run(loaded)
    return [outcomes[job.key] for job in unit]


def _claim_and_load(unit: list[Job], held: JobClaims | _Unclaimed, run: _UnitRun) -> list[_Loaded]:
    """Each job claimed and its inputs read: (job, its engine input, seconds to read it).
    Jobs done already, held elsewhere or unreadable are finished here. Whether a job is done
    was decided by whoever planned the unit; it is read again only once claimed, when
    another run may have recorded it meanwhile (or this unit's earlier attempt did)."""
    options = run.options
    seen: dict[str, list[int]] = {}
    if options.claim:
        seen = {
            key: gens
            for folder in dict.fromkeys(job_claims_folder(job) for job in unit)
            for key, gens in generations(folder).items()
        }
    inputs = UnitInputs(options.settings.limits)
    loaded: list[_Loaded] = []
    for job in unit:
        if not held.take(job, seen):
            run.finish(Outcome(job, "elsewhere"))
            continue
        if not options.force and (done := _skipped_if_done(job)):
            run.finish(done)
            continue
        started = time.perf_counter()
        try:
            pair = inputs.pair(job)
        except (ImageError, storage.StorageError) as exc:
            if _is_transient(exc):
                raise
            run.finish(run.fail(job, str(exc), time.perf_counter() - started))
            continue
        loaded.append((job, pair, time.perf_counter() - started))
    return loaded


def _skipped_if_done(job: Job) -> Outcome | None:
    """A `skipped` outcome with its record when the job is already done, else None."""
    record = records.read_record(job.record)
    return Outcome(job, "skipped", record=record) if records.done(job, record) else None


@dataclass
class _UnitRun:
    cache: GramCache
    options: UnitOptions
    finish: Callable[[Outcome], None]
    device: str
    tracker: UnitTracker | None = None

    def fail(self, job: Job, reason: str, seconds: float = 0.0) -> Outcome:
        if self.options.record_failures:
            return fail(job, reason, seconds)
        return Outcome(job, "failed", seconds=seconds, error=reason)

    def run(self, loaded: list[_Loaded]) -> None:
        """Stylise the pairs together; on out of memory, or a job the engine rejects (an image
        too small for the network), split in halves down to single jobs, so only that job
        fails."""
        if not loaded:
            return
        started = time.perf_counter()
        pairs = [pair for _, pair, _ in loaded]
        # The planner gave every job of a unit one execution; the unit got its device.
        execution = loaded[0][0].execution.on(self.device, self.options.settings.precision)
        tracker = self.tracker
        if tracker:
            tracker.stylising(len(pairs))
        progress = tracker.evaluated if tracker else None
        try:
            results = stylize_pairs(pairs, cache=self.cache, progress=progress, execution=execution)
        except Exception as exc:
            if not isinstance(exc, NstError) and not is_out_of_memory(exc):
                raise
            if tracker:
                tracker.gave_up()
            self._split(loaded, exc, time.perf_counter() - started)
            return
        seconds = (time.perf_counter() - started) / len(loaded)
        for (job, _, read_s), result in zip(loaded, results, strict=True):
            if not result.final.finite():
                # No image without its record, and a record holds only finite numbers.
                why = (
                    f"the losses did not stay finite ({result.final.total:g}); lower "
                    "content_weight, style_weight or tv_weight"
                )
                self.finish(self.fail(job, why, seconds))
                continue
            try:
                record = _write(job, result, read_s, seconds, self.options.unit)
            except storage.StorageError as exc:
                if _is_transient(exc):
                    raise
                self.finish(self.fail(job, str(exc), seconds))
                continue
            self.finish(Outcome(job, "completed", seconds=seconds + read_s, record=record))

    def _split(self, loaded: list[_Loaded], exc: Exception, seconds: float) -> None:
        if len(loaded) > 1:
            _release_memory()
            half = len(loaded) // 2
            self.run(loaded[:half])
            self.run(loaded[half:])
            return
        reason = "out of memory even alone; lower size" if is_out_of_memory(exc) else str(exc)
        for job, _, _ in loaded:
            self.finish(self.fail(job, reason, seconds))
        _release_memory()


def _write(job: Job, result: Result, read_s: float, seconds: float, unit: str | None) -> Record:
    started = time.perf_counter()
    storage.write_bytes(job.output, images.encode_image(result.image, job.output))
    record = Record.completed(
        job,
        result=result,
        timings=Timings(read_s=read_s, optimize_s=seconds, write_s=time.perf_counter() - started),
        unit=unit,
    )
    # The record goes last: its presence says the image beside it is complete.
    storage.write_bytes(job.record, record.to_json())
    # The gallery's thumbnail, from the image in memory (never read back from storage).
    thumbnails.save_output(job.output, record, result.image)
    return record


def fail(job: Job, reason: str, seconds: float = 0.0) -> Outcome:
    """Record `job` as failed for `reason` (best effort: the summary reports it anyway)."""
    record = Record.failed(job, reason)
    with contextlib.suppress(storage.StorageError):  # the summary still reports the failure
        storage.write_bytes(job.record, record.to_json())
    return Outcome(job, "failed", seconds=seconds, error=reason, record=record)


def _is_transient(exc: BaseException) -> bool:
    return bool(getattr(exc, "transient", False))


def _release_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
