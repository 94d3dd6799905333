"""The typed documents a batch writes: a job's record beside its image, the summary entry of
each job in a run, and the run summary. Their JSON form is the one README.md documents; every
reader goes through these models, and records written by earlier versions stay readable.
"""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nst_core.batch import storage
from nst_core.batch.jobs import ENGINE_VERSION, Job
from nst_core.engine.trace import HistoryRow, LossValues, ScaleRun

if TYPE_CHECKING:  # torch stays unimported for validate and plan
    from nst_core.engine.loop import Result

# A job's status in a run: `elsewhere` is a job another run was computing at the time.
Status = Literal["completed", "failed", "skipped", "elsewhere"]
STATUSES: tuple[Status, ...] = ("completed", "failed", "skipped", "elsewhere")


class _Document(BaseModel):
    # Fields a later version adds are kept, not refused: old readers, new records.
    model_config = ConfigDict(extra="allow")

    def to_json(self) -> bytes:
        """The JSON written to storage: only the fields this document was given."""
        data = self.model_dump(mode="json", exclude_unset=True)
        return (json.dumps(data, indent=2, allow_nan=False) + "\n").encode()


class ContentInput(_Document):
    uri: str
    sha256: str


class StyleInput(_Document):
    uri: str
    sha256: str
    weight: float


class Inputs(_Document):
    content: ContentInput
    styles: list[StyleInput]

    @classmethod
    def of_job(cls, job: Job) -> Inputs:
        """The content and each (style URI, weight) with its bytes' sha256."""
        return cls(
            content=ContentInput(uri=job.content, sha256=job.content_sha),
            styles=[
                StyleInput(uri=uri, sha256=sha, weight=weight)
                for (uri, weight), sha in zip(job.styles, job.style_shas, strict=True)
            ],
        )


class Losses(_Document):
    final: LossValues  # of the image written
    history: list[HistoryRow]


class Timings(_Document):
    """Wall seconds: reading the inputs, this job's share of its unit's optimisation, and
    writing the image."""

    read_s: float
    optimize_s: float
    write_s: float

    def rounded(self) -> Timings:
        return Timings(**{name: round(value, 3) for name, value in self.model_dump().items()})


class Record(_Document):
    """One output's record; `completed` ones say how it was made, `failed` ones why not."""

    status: Literal["completed", "failed"]
    key: str | None
    output: str
    error: str | None = None
    engine_version: str
    created_at: str
    inputs: Inputs
    params: dict[str, Any]
    output_size: list[int] | None = None
    device: str | None = None
    precision: str | None = None
    weights: str | None = None
    batch_size: int | None = None
    evaluations: int | None = None  # loss evaluations run, over every scale
    tiling: list[ScaleRun] | None = None  # given when some scale ran in tiles
    # The planner's decisions (device, tile, history_on, unit): how it ran, apart from the
    # user's `params`, which are recorded as given.
    execution: dict[str, Any] | None = None
    losses: Losses | None = None
    timings: Timings | None = None
    versions: dict[str, str] | None = None
    notes: list[str] | None = None  # how the settings were read, e.g. style_weight over strength

    @classmethod
    def failed(cls, job: Job, error: str) -> Record:
        """A job that failed: why, and what it was; it never counts as done."""
        return cls(
            status="failed",
            key=job.key,
            output=job.output,
            error=error,
            engine_version=ENGINE_VERSION,
            created_at=_now(),
            inputs=Inputs.of_job(job),
            params=job.params.model_dump(mode="json"),
        )

    @classmethod
    def completed(
        cls, job: Job, *, result: Result, timings: Timings, unit: str | None = None
    ) -> Record:
        """One completed output (fields documented in README.md): the job's inputs as
        planned and verified, its params as given, how it ran, what it reached."""
        params = job.params
        execution = job.execution.describe() | {"device": result.device}
        # Given only when they say something: a field never set stays out of the JSON.
        tiling: dict[str, Any] = (
            {"tiling": result.tiling} if any(s.tiled for s in result.tiling) else {}
        )
        notes: dict[str, Any] = {"notes": params.notes()} if params.notes() else {}
        return cls(
            status="completed",
            key=job.key,
            output=job.output,
            engine_version=ENGINE_VERSION,
            created_at=_now(),
            inputs=Inputs.of_job(job),
            params=params.model_dump(mode="json"),
            execution=execution | ({"unit": unit} if unit else {}),
            output_size=list(result.image.size),
            device=result.device,
            precision=result.precision,
            weights=params.weights,
            batch_size=result.batch_size,
            evaluations=result.evaluations,
            **tiling,
            losses=Losses(final=result.final, history=result.history),
            timings=timings.rounded(),
            versions=package_versions(),
            **notes,
        )


def read_record(uri: str) -> Record | None:
    """The record at `uri`, or None when it is missing or unreadable (then the job reruns)."""
    try:
        return Record.model_validate_json(storage.read_bytes(uri))
    except (storage.StorageError, ValidationError, ValueError):
        return None


def done(job: Job, record: Record | None, *, since: str | None = None) -> bool:
    """The one answer to "is this job done?": `record` (read from job.record by the caller,
    who reads it once) says this very job completed, and, with `since` (an ISO time: a
    forced sharded batch's start), it was written after then."""
    if record is None or record.status != "completed" or record.key != job.key:
        return False
    if since is None:
        return True
    try:
        return datetime.fromisoformat(record.created_at) >= datetime.fromisoformat(since)
    except ValueError:
        return False


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("nst-batch", "torch", "torchvision", "pillow", "prefect"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class StyleRef(_Document):
    uri: str
    weight: float


class JobEntry(_Document):
    """One job's line in summary.json; `history` feeds the run's loss plot and stays out of
    the summary (the record has it)."""

    key: str
    label: str
    content: str
    styles: list[StyleRef]
    status: Status
    output: str
    record: str
    losses: LossValues | None = None
    seconds: float | None = None
    error: str | None = None
    history: list[HistoryRow] = Field(default_factory=list, exclude=True)
    # The record this entry was made from, kept in memory for the run's gallery so that it
    # is not read again; never written to the summary.
    found: Record | None = Field(default=None, exclude=True, repr=False)

    @classmethod
    def of(
        cls,
        job: Job,
        status: Status,
        *,
        record: Record | None = None,
        error: str | None = None,
        seconds: float | None = None,
    ) -> JobEntry:
        losses = record.losses if record is not None else None
        return cls(
            key=job.key,
            label=job.label,
            content=job.content,
            styles=[StyleRef(uri=uri, weight=weight) for uri, weight in job.styles],
            status=status,
            output=job.output,
            record=job.record,
            losses=losses.final if losses else None,
            seconds=seconds,
            error=error,
            history=losses.history if losses else [],
            found=record,
        )


class Totals(_Document):
    jobs: int
    completed: int
    failed: int
    skipped: int
    elsewhere: int
    wall_seconds: float
    images_per_hour: float

    def line(self) -> str:
        """ "4 completed, 0 failed, 0 skipped" (and ", N running elsewhere" when there are)."""
        line = f"{self.completed} completed, {self.failed} failed, {self.skipped} skipped"
        return line + (f", {self.elsewhere} running elsewhere" if self.elsewhere else "")


class Summary(_Document):
    """A run: every job's entry and the totals. `run_folder` is where it was written (on the
    flow's return value only; summary.json is written before it is known)."""

    run: str
    manifest: str
    jobs: list[JobEntry]
    totals: Totals
    run_folder: str | None = None

    @classmethod
    def of(cls, run: str, manifest: str, entries: list[JobEntry], wall_seconds: float) -> Summary:
        counts = {s: sum(e.status == s for e in entries) for s in STATUSES}
        per_hour = counts["completed"] / wall_seconds * 3600 if wall_seconds else 0.0
        totals = Totals(
            jobs=len(entries),
            **counts,
            wall_seconds=round(wall_seconds, 2),
            images_per_hour=round(per_hour, 1),
        )
        return cls(run=run, manifest=manifest, jobs=entries, totals=totals)


class DryRun(_Document):
    """What `dry_run` reports instead of running: job counts and the outputs it would make."""

    run: str
    jobs: int
    done: int
    pending: list[str]
    units: list[int]
    shards: list[int]
    cannot_fit: list[str]
