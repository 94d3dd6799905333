"""Job identity: what one output is made of, and the content address that names it.

A job's key is a content address: sha256 over its input bytes' hashes, the style blend
weights, the parameters that shape the result, the output format and the engine version.
Same inputs and parameters, same key, same output name; any change, a new name. A job is
done when the record beside its image says `completed` with the same key (records.py).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from nst_core.batch import storage
from nst_core.batch.layout import RunLayout
from nst_core.engine.limits import Limits
from nst_core.engine.params import StyleParams

if TYPE_CHECKING:
    from nst_core.batch.manifest import Plan

# Bump when a change to the engine changes its outputs for the same inputs and params.
# 2: the balanced loss and strength are the defaults; 3: the stopping rule is on by default.
ENGINE_VERSION = "3"
# Where it runs, how often it reports, whether it runs in tiles (the same objective and
# gradient tile by tile, to within the halo's measured bound: engine/tiles.py) and where
# L-BFGS keeps its history do not change what a job is.
NOT_IN_KEY = frozenset({"device", "history_every", "tile", "lbfgs_history_on"})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safe_stem(uri: str) -> str:
    """A file stem that is safe in any folder or bucket: no separators, no leading dots."""
    return _UNSAFE.sub("_", storage.stem(uri)).strip("._")[:60] or "image"


def job_key(
    content_sha: str, styles: list[tuple[str, float]], params: StyleParams, fmt: str
) -> str:
    """sha256 of everything that determines the output; `styles` holds (sha256, weight)."""
    identity = {
        "engine": ENGINE_VERSION,
        "content": content_sha,
        "styles": [[sha, float(weight)] for sha, weight in styles],
        "params": _params_identity(params),
        "format": fmt,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _params_identity(params: StyleParams) -> dict:
    """The parameters as they shape the output: the style weight as resolved (strength only
    matters through it), without where or how often it runs."""
    identity = {k: v for k, v in params.model_dump(mode="json").items() if k not in NOT_IN_KEY}
    identity.pop("strength", None)
    if not params.stop_tolerance:
        # A rule that never fires changes nothing: keys stay those of runs without it.
        identity.pop("stop_tolerance")
        identity.pop("stop_window")
    identity["style_weight"] = params.resolved_style_weight()
    # The sizes that run, not how they were asked for: `auto` up to 512 px is the one scale
    # that no `scales` gives, so keys from before `auto` became the default stay.
    identity["scales"] = params.schedule()[:-1] or None
    return identity


@dataclass(frozen=True)
class Job:
    """One output: its inputs (URIs and hashes), resolved params, key and output URIs."""

    content: str
    content_sha: str
    styles: tuple[tuple[str, float], ...]  # (uri, blend weight)
    style_shas: tuple[str, ...]
    params: StyleParams
    key: str
    output: str  # the image
    record: str  # its metadata record, written last
    content_size: tuple[int, int] | None = None  # (width, height) of the content, when readable

    @property
    def label(self) -> str:
        names = "+".join(storage.name(uri) for uri, _ in self.styles)
        return f"{storage.name(self.content)} x {names}"


def make_job(
    content: str,
    styles: tuple[tuple[str, float], ...],
    params: StyleParams,
    *,
    output_dir: str,
    fmt: str,
    sha_of: Callable[[str], str],
) -> Job:
    """Name a job's outputs `{content-stem}--{style-stem}--{key8}.{fmt}` under `output_dir`.

    `sha_of(uri)` hashes an input's bytes; callers cache it, since styles repeat.
    """
    content_sha = sha_of(content)
    style_shas = tuple(sha_of(uri) for uri, _ in styles)
    key = job_key(
        content_sha, list(zip(style_shas, (w for _, w in styles), strict=True)), params, fmt
    )
    style_stem = "+".join(safe_stem(uri) for uri, _ in styles)
    stem = f"{safe_stem(content)}--{style_stem[:120]}--{key[:8]}"
    layout = RunLayout(output_dir)
    return Job(
        content=content,
        content_sha=content_sha,
        styles=styles,
        style_shas=style_shas,
        params=params,
        key=key,
        output=layout.image(stem, fmt),
        record=layout.record(stem),
    )


def build_jobs(plan: Plan) -> list[Job]:
    """Key every job of a plan (reading each input once); duplicates collapse into one."""
    from nst_core.engine.images import probe_size

    hashes: dict[str, str] = {}
    sizes: dict[str, tuple[int, int] | None] = {}

    limit = Limits.current().max_input_bytes

    def sha_of(uri: str) -> str:
        if uri not in hashes:
            data = storage.read_bytes(uri, limit)
            hashes[uri] = sha256(data)
            sizes[uri] = probe_size(data)  # header only; lets the planner batch by size
        return hashes[uri]

    jobs: dict[str, Job] = {}
    for spec in plan.jobs:
        job = make_job(
            spec.content,
            spec.styles,
            spec.params,
            output_dir=plan.output,
            fmt=plan.format,
            sha_of=sha_of,
        )
        jobs.setdefault(job.key, replace(job, content_size=sizes[spec.content]))
    return list(jobs.values())
