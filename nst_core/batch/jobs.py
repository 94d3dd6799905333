"""Job identity, output layout and the metadata record: the one place that names outputs.

A job's key is a content address: sha256 over its input bytes' hashes, the style blend
weights, the parameters that shape the result, the output format and the engine version.
Same inputs and parameters, same key, same output name; any change, a new name. A job is
done when the record beside its image says `completed` with the same key.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from typing import TYPE_CHECKING

from nst_core.batch import storage
from nst_core.engine.limits import Limits
from nst_core.engine.params import StyleParams

if TYPE_CHECKING:  # torch stays unimported for validate and plan
    from nst_core.batch.manifest import Plan
    from nst_core.engine.transfer import Result

# Bump when a change to the engine changes its outputs for the same inputs and params.
ENGINE_VERSION = "1"
# Where and how often it runs does not change what a job is.
NOT_IN_KEY = frozenset({"device", "history_every"})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("nst-batch", "torch", "torchvision", "pillow", "prefect"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


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
        "params": {k: v for k, v in params.model_dump(mode="json").items() if k not in NOT_IN_KEY},
        "format": fmt,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


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
    base = output_dir.rstrip("/")
    return Job(
        content=content,
        content_sha=content_sha,
        styles=styles,
        style_shas=style_shas,
        params=params,
        key=key,
        output=f"{base}/{stem}.{fmt}",
        record=f"{base}/{stem}.json",
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


def read_record(uri: str) -> dict | None:
    """The record at `uri`, or None when it is missing or unreadable (then the job reruns)."""
    try:
        record = json.loads(storage.read_bytes(uri))
    except (storage.StorageError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def completed(job: Job, record: dict | None) -> bool:
    """Whether `record` (read from job.record) says this very job completed."""
    return bool(record) and record.get("status") == "completed" and record.get("key") == job.key


def is_done(job: Job) -> bool:
    return completed(job, read_record(job.record))


def record_inputs(content: str, content_sha: str, styles, style_shas) -> dict:
    """A record's `inputs`: the content and each (style URI, weight) with its bytes' sha256."""
    return {
        "content": {"uri": content, "sha256": content_sha},
        "styles": [
            {"uri": uri, "sha256": sha, "weight": weight}
            for (uri, weight), sha in zip(styles, style_shas, strict=True)
        ],
    }


def job_inputs(job: Job) -> dict:
    return record_inputs(job.content, job.content_sha, job.styles, job.style_shas)


def failed_record(job: Job, error: str) -> dict:
    """The record of a job that failed: why, and what it was; it never counts as done."""
    return {
        "status": "failed",
        "key": job.key,
        "output": job.output,
        "error": error,
        "engine_version": ENGINE_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "inputs": job_inputs(job),
        "params": job.params.model_dump(mode="json"),
    }


def build_record(
    *,
    output: str,
    inputs: dict,
    params: StyleParams,
    result: Result,
    timings: dict[str, float],
    key: str | None = None,
) -> dict:
    """The record of one completed output (fields documented in README.md); `inputs` comes
    from record_inputs()."""
    return {
        "status": "completed",
        "key": key,
        "output": output,
        "engine_version": ENGINE_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "inputs": inputs,
        "params": params.model_dump(mode="json"),
        "output_size": list(result.image.size),
        "device": result.device,
        "precision": result.precision,
        "weights": params.weights,
        "batch_size": result.batch_size,
        "losses": {"final": result.final, "history": result.history},
        "timings": {name: round(value, 3) for name, value in timings.items()},
        "versions": package_versions(),
    }


def json_bytes(record: dict) -> bytes:
    return (json.dumps(record, indent=2, allow_nan=False) + "\n").encode()
