"""Run one work unit: read its inputs, stylise its jobs as one batch, write images and records.

No Prefect here: the flow calls `run_unit` inside a task, and anything else (a test, a
script) can call it the same way.

Guarantees:
- An image is written before its record, each atomically, so a record always has its image.
- A job that fails (unreadable image, out of memory at batch size 1, a storage error
  retrying will not fix) gets a `failed` record and the other jobs go on.
- Out of memory splits the batch in halves and tries again.
- Storage errors that retrying may fix propagate, so the caller can retry the whole unit;
  jobs already done are skipped then.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from nst_core.batch import jobs, storage
from nst_core.batch.claims import JobClaims, claims_folder, generations
from nst_core.batch.jobs import Job
from nst_core.engine import images
from nst_core.engine.limits import Limits
from nst_core.engine.transfer import GramCache, Pair, Result, stylize_batch
from nst_core.errors import ImageError, NstError


@dataclass
class Outcome:
    """What happened to one job of a unit."""

    job: Job
    status: str  # completed | failed | skipped | elsewhere (another run is computing it)
    seconds: float = 0.0
    error: str | None = None
    record: dict | None = field(default=None, repr=False)


OnJob = Callable[[Outcome], None]


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    message = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in message or "can't allocate memory" in message
    )


def run_unit(
    unit: list[Job],
    device: str,
    *,
    cache: GramCache | None = None,
    on_job: OnJob | None = None,
    force: bool = False,
) -> list[Outcome]:
    """Stylise `unit` on `device`; one Outcome per job, in order.

    Each job is claimed first (nst_core/claims.py): a job another run is computing right now
    comes back `elsewhere`, and `force` recomputes only jobs that no live run holds.
    """
    cache = cache or GramCache()
    outcomes: dict[str, Outcome] = {}
    with JobClaims() as held:

        def finish(outcome: Outcome) -> None:
            held.release(outcome.job.key)  # recorded (or failed): nothing left to guard
            outcomes[outcome.job.key] = outcome
            if on_job:
                on_job(outcome)

        seen = {
            key: gens
            for folder in dict.fromkeys(claims_folder(job) for job in unit)
            for key, gens in generations(folder).items()
        }
        loaded: list[tuple[Job, Pair, float]] = []  # job, its engine input, seconds to read it
        for job in unit:
            if not force and (done := _skipped_if_done(job)):  # a retried unit, say
                finish(done)
                continue
            if not held.take(job, seen):
                finish(Outcome(job, "elsewhere"))
                continue
            # Another run may have recorded it between the check above and the claim.
            if not force and (done := _skipped_if_done(job)):
                finish(done)
                continue
            started = time.perf_counter()
            try:
                pair = _load(job, device)
            except (ImageError, storage.StorageError) as exc:
                if _is_transient(exc):
                    raise
                finish(fail(job, str(exc), time.perf_counter() - started))
                continue
            loaded.append((job, pair, time.perf_counter() - started))
        _run_batches(loaded, cache, finish)
    return [outcomes[job.key] for job in unit]


def _skipped_if_done(job: Job) -> Outcome | None:
    """A `skipped` outcome with its record when the job is already done, else None."""
    record = jobs.read_record(job.record)
    return Outcome(job, "skipped", record=record) if jobs.completed(job, record) else None


def _run_batches(loaded, cache: GramCache, finish: Callable[[Outcome], None]) -> None:
    """Stylise as one batch; on out of memory, or a job the engine rejects (an image too
    small for the network), split in halves down to single jobs, so only that job fails."""
    if not loaded:
        return
    started = time.perf_counter()
    try:
        results = stylize_batch([pair for _, pair, _ in loaded], cache=cache)
    except Exception as exc:
        if not isinstance(exc, NstError) and not is_out_of_memory(exc):
            raise
        if len(loaded) > 1:
            _release_memory()
            half = len(loaded) // 2
            _run_batches(loaded[:half], cache, finish)
            _run_batches(loaded[half:], cache, finish)
            return
        reason = "out of memory even alone; lower size" if is_out_of_memory(exc) else str(exc)
        for job, _, _ in loaded:
            finish(fail(job, reason, time.perf_counter() - started))
        _release_memory()
        return
    seconds = (time.perf_counter() - started) / len(loaded)
    for (job, _, read_s), result in zip(loaded, results, strict=True):
        try:
            record = _write(job, result, read_s, seconds)
        except storage.StorageError as exc:
            if _is_transient(exc):
                raise
            finish(fail(job, str(exc), seconds))
            continue
        finish(Outcome(job, "completed", seconds=seconds + read_s, record=record))


def _load(job: Job, device: str) -> Pair:
    limit = Limits.current().max_input_bytes  # an input may have grown since validation
    content_bytes = storage.read_bytes(job.content, limit)
    style_bytes = [storage.read_bytes(uri, limit) for uri, _ in job.styles]
    pair = Pair(
        content=images.decode_image(content_bytes, job.content),
        styles=[
            images.decode_image(d, uri) for d, (uri, _) in zip(style_bytes, job.styles, strict=True)
        ],
        params=job.params.model_copy(update={"device": device}),
        style_weights=[w for _, w in job.styles],
        content_name=job.content,
        style_names=[uri for uri, _ in job.styles],
        style_ids=list(job.style_shas),
        content_id=job.content_sha,
    )
    return pair


def _write(job: Job, result: Result, read_s: float, seconds: float) -> dict:
    started = time.perf_counter()
    storage.write_bytes(job.output, images.encode_image(result.image, job.output))
    record = jobs.build_record(
        key=job.key,
        output=job.output,
        inputs=jobs.job_inputs(job),
        params=job.params,
        result=result,
        timings={
            "read_s": read_s,
            "optimize_s": seconds,
            "write_s": time.perf_counter() - started,
        },
    )
    # The record goes last: its presence says the image beside it is complete.
    storage.write_bytes(job.record, jobs.json_bytes(record))
    return record


def fail(job: Job, reason: str, seconds: float = 0.0) -> Outcome:
    """Record `job` as failed for `reason` (best effort: the summary reports it anyway)."""
    record = jobs.failed_record(job, reason)
    with contextlib.suppress(storage.StorageError):  # the summary still reports the failure
        storage.write_bytes(job.record, jobs.json_bytes(record))
    return Outcome(job, "failed", seconds=seconds, error=reason, record=record)


def _is_transient(exc: BaseException) -> bool:
    return bool(getattr(exc, "transient", False))


def _release_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
