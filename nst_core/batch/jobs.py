"""Job identity: what one output is made of, and the content address that names it.

A job's key is a content address: sha256 over its input bytes' hashes, the style blend
weights, what in the parameters shapes the result (OutputIdentity), the output format and
the engine version. Same inputs and parameters, same key, same output name; any change, a
new name. A job is done when the record beside its image says `completed` with the same key
(records.done). A Job is the plan of one output, built once when its inputs are hashed and
carried unchanged to the unit that runs it and the record that describes it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from nst_core.batch import storage
from nst_core.batch.layout import RunLayout
from nst_core.engine.execution import Execution
from nst_core.engine.limits import Limits
from nst_core.engine.params import StyleParams
from nst_core.errors import NstError

if TYPE_CHECKING:
    from nst_core.batch.manifest import Plan

# Bump when a change to the engine changes its outputs for the same inputs and params.
# 2: the balanced loss and strength are the defaults; 3: the stopping rule is on by default.
ENGINE_VERSION = "3"
# Hex digits of the key in output names: 64 bits, so that accidental collisions are out of
# reach (one in ~10^11 at 10^4 jobs of one pair and folder); the planner refuses any that
# happen anyway (`check_unique_outputs`). Names had 8 digits before.
KEY_DIGITS = 16
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safe_stem(uri: str) -> str:
    """A file stem that is safe in any folder or bucket: no separators, no leading dots."""
    return _UNSAFE.sub("_", storage.stem(uri)).strip("._")[:60] or "image"


class OutputIdentity(BaseModel):
    """What in a job's parameters determines its output, and nothing else: the style weight
    as resolved (strength only matters through it), the scales as they run, the stopping
    rule only when it can fire. Where a job runs, in what pieces and how often it reports
    (device, tile, lbfgs_history_on, history_every) are not here: the same objective and
    gradient, computed elsewhere or in tiles to within the halo's measured bound."""

    model_config = ConfigDict(frozen=True)

    size: int
    iterations: int
    stop_tolerance: float | None
    stop_window: int | None
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    style_layer_weights: tuple[float, ...] | None
    content_weight: float
    style_weight: float
    tv_weight: float
    loss: str
    optimizer: str
    lbfgs_history: int
    learning_rate: float
    init: str
    seed: int
    scales: tuple[int, ...] | None
    preserve_color: bool
    style_scale: float
    weights: str
    pooling: str
    precision: str

    @classmethod
    def of(cls, params: StyleParams) -> OutputIdentity:
        stops = bool(params.stop_tolerance)
        return cls(
            **{name: getattr(params, name) for name in _COPIED},
            # A rule that never fires changes nothing: keys stay those of runs without it.
            stop_tolerance=params.stop_tolerance if stops else None,
            stop_window=params.stop_window if stops else None,
            style_weight=params.resolved_style_weight(),
            # The sizes that run, not how they were asked for: `auto` up to 512 px is the
            # one scale that no `scales` gives, so keys from before `auto` stay.
            scales=tuple(params.schedule()[:-1]) or None,
        )

    def as_json(self) -> dict:
        identity = self.model_dump(mode="json")
        if identity["stop_tolerance"] is None:
            del identity["stop_tolerance"], identity["stop_window"]
        return identity


_DERIVED = {"stop_tolerance", "stop_window", "style_weight", "scales"}
_COPIED = tuple(name for name in OutputIdentity.model_fields if name not in _DERIVED)


def job_key(
    content_sha: str, styles: list[tuple[str, float]], params: StyleParams, fmt: str
) -> str:
    """sha256 of everything that determines the output; `styles` holds (sha256, weight)."""
    identity = {
        "engine": ENGINE_VERSION,
        "content": content_sha,
        "styles": [[sha, float(weight)] for sha, weight in styles],
        "params": OutputIdentity.of(params).as_json(),
        "format": fmt,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class InputFile:
    """An input as planned: its URI, and its bytes' sha256, length and pixel size (from the
    header; None when it is not a readable image) as they were when the plan was made. The
    unit that uses it checks the bytes it reads against `sha256`."""

    uri: str
    sha256: str
    bytes: int = 0
    pixels: tuple[int, int] | None = None


@dataclass(frozen=True)
class Job:
    """One output, planned: its inputs, the user's params (never rewritten), the planner's
    Execution, its key and output URIs, and the read roots its inputs must stay under."""

    content_file: InputFile
    style_files: tuple[InputFile, ...]
    weights: tuple[float, ...]  # one blend weight per style
    params: StyleParams
    key: str
    output: str  # the image
    record: str  # its metadata record, written last
    execution: Execution = field(default_factory=Execution)
    read_roots: tuple[str, ...] | None = None  # canonical; None: unrestricted

    @property
    def content(self) -> str:
        return self.content_file.uri

    @property
    def content_sha(self) -> str:
        return self.content_file.sha256

    @property
    def content_size(self) -> tuple[int, int] | None:
        """(width, height) of the content, when it is a readable image."""
        return self.content_file.pixels

    @property
    def styles(self) -> tuple[tuple[str, float], ...]:
        """(uri, blend weight) per style."""
        return tuple((f.uri, w) for f, w in zip(self.style_files, self.weights, strict=True))

    @property
    def style_shas(self) -> tuple[str, ...]:
        return tuple(f.sha256 for f in self.style_files)

    @property
    def inputs(self) -> tuple[InputFile, ...]:
        return (self.content_file, *self.style_files)

    @property
    def label(self) -> str:
        names = "+".join(storage.name(uri) for uri, _ in self.styles)
        return f"{storage.name(self.content)} x {names}"


def make_job(
    content: InputFile,
    styles: tuple[tuple[InputFile, float], ...],
    params: StyleParams,
    *,
    output_dir: str,
    fmt: str,
    key_digits: int = KEY_DIGITS,
    read_roots: tuple[str, ...] | None = None,
) -> Job:
    """Name a job's outputs `{content-stem}--{style-stem}--{key16}.{fmt}` under `output_dir`."""
    weights = tuple(float(w) for _, w in styles)
    files = tuple(f for f, _ in styles)
    key = job_key(content.sha256, [(f.sha256, w) for f, w in styles], params, fmt)
    style_stem = "+".join(safe_stem(f.uri) for f in files)
    stem = f"{safe_stem(content.uri)}--{style_stem[:120]}--{key[:key_digits]}"
    layout = RunLayout(output_dir)
    return Job(
        content_file=content,
        style_files=files,
        weights=weights,
        params=params,
        key=key,
        output=layout.image(stem, fmt),
        record=layout.record(stem),
        execution=Execution.asked(params),
        read_roots=read_roots,
    )


def probe_input(uri: str, data: bytes) -> InputFile:
    """An input as the plan records it, from the bytes read at planning."""
    from nst_core.engine.images import probe_size

    return InputFile(uri=uri, sha256=sha256(data), bytes=len(data), pixels=probe_size(data))


def build_jobs(
    plan: Plan,
    *,
    key_digits: int = KEY_DIGITS,
    read_roots: tuple[str, ...] | None = None,
    max_input_bytes: int = Limits().max_input_bytes,
) -> list[Job]:
    """Key every job of a plan (reading each input once, refusing one over
    `max_input_bytes`); duplicates collapse into one, and two distinct jobs that would write
    one output are refused (NstError naming both)."""
    planned: dict[str, InputFile] = {}

    def input_file(uri: str) -> InputFile:
        if uri not in planned:
            planned[uri] = probe_input(uri, storage.read_bytes(uri, max_input_bytes))
        return planned[uri]

    jobs: dict[str, Job] = {}
    for spec in plan.jobs:
        job = make_job(
            input_file(spec.content),
            tuple((input_file(uri), weight) for uri, weight in spec.styles),
            spec.params,
            output_dir=plan.output,
            fmt=plan.format,
            key_digits=key_digits,
            read_roots=read_roots,
        )
        jobs.setdefault(job.key, job)
    found = list(jobs.values())
    check_unique_outputs(found)
    return found


def check_unique_outputs(jobs: list[Job]) -> None:
    """Refuse two distinct jobs (different keys) that would write the same output."""
    by_output: dict[str, Job] = {}
    for job in jobs:
        other = by_output.setdefault(job.output, job)
        if other.key != job.key:
            raise NstError(
                f"two different jobs would write {job.output}: {other.label} (key "
                f"{other.key}) and {job.label} (key {job.key}); change one's parameters or "
                "output folder"
            )
