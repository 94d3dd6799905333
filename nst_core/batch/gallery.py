"""A run's gallery: `{output}/_runs/{run}/index.html`, a page for people to browse the outputs.

This module gathers what the page shows (each job's summary entry and record, thumbnails of
the outputs and of the content and style images) and writes it; gallery_page.py turns that
into HTML. Thumbnails live in `{output}/_runs/_thumbs/` (RunLayout.thumbs), named by a digest
of what they show (an input's bytes; an output's job key and record time) and their size, so
one listing of that folder says which exist and how large they are: a rerun makes only those
it lacks, and the page knows every aspect ratio without opening an image. Every link on the
page is relative and stays inside the output folder, so it works from disk, copied, or
served over HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from nst_core.batch import records, storage
from nst_core.batch.gallery_model import Gallery, GalleryJob, Thumb
from nst_core.batch.gallery_page import render
from nst_core.batch.layout import RUNS, THUMBS, RunLayout
from nst_core.batch.records import JobEntry, Record, Summary
from nst_core.batch.thumbnails import (
    THUMB,
    input_digest,
    output_digest,
    read_thumbnail,
    write_thumbnail,
)

_THUMB_NAME = re.compile(r"^([0-9a-f]{20})\.(\d+)x(\d+)\.jpg$")
# Records and images are read from storage; on S3 each read is mostly waiting.
WORKERS = 8


def write_gallery(layout: RunLayout, summary: Summary) -> str:
    """Write the run's page (and any thumbnail it lacks); returns the page's URI."""
    return write_page(layout, collect(layout, summary))


def write_page(layout: RunLayout, gallery: Gallery) -> str:
    """Write the page of what `collect` gathered; returns its URI."""
    uri = layout.gallery(gallery.summary.run)
    storage.write_bytes(uri, render(gallery).encode(), content_type="text/html; charset=utf-8")
    return uri


def collect(
    layout: RunLayout,
    summary: Summary,
    known: dict[str, Record | None] | None = None,
    planned_shas: dict[str, str] | None = None,
) -> Gallery:
    """The records of the run's jobs, and a thumbnail for each output and input, made now
    for the ones the thumbnail folder does not hold yet (units make them as they go).

    A run passes what it already has: `known`, the records it read or wrote by job key (the
    others are read), and `planned_shas`, each input's sha256 from its plan (inputs no record
    or plan names are hashed from their bytes)."""
    known = known or {}
    with ThreadPoolExecutor(WORKERS) as pool:
        found = list(
            pool.map(
                lambda e: _own(e, known[e.key]) if e.key in known else _own_record(e),
                summary.jobs,
            )
        )
        jobs = [
            GalleryJob(entry, record) for entry, record in zip(summary.jobs, found, strict=True)
        ]
        shas: dict[str, str | None] = {**(planned_shas or {}), **_input_shas(jobs)}
        inputs = _input_uris(summary.jobs)
        missing = [uri for uri in inputs if uri not in shas]
        shas |= dict(zip(missing, pool.map(_sha_of, missing), strict=True))
        wanted: dict[str, str] = {}  # digest -> the image to make its thumbnail from
        by_output: dict[str, str] = {}
        for job in jobs:
            if _has_output(job):
                assert job.record is not None  # _has_output says so
                digest = output_digest(job.entry.key, job.record.created_at)
                by_output[job.entry.key] = digest
                wanted[digest] = job.entry.output
        by_input = {uri: input_digest(sha) for uri in inputs if (sha := shas[uri])}
        wanted |= {digest: uri for uri, digest in by_input.items()}
        thumbs = _thumbnails(layout, wanted, pool.map)
    for job in jobs:
        job.thumb = thumbs.get(by_output.get(job.entry.key, ""))
    return Gallery(
        summary=summary,
        jobs=jobs,
        inputs={uri: thumbs.get(by_input.get(uri, "")) for uri in inputs},
    )


def rebuild(run_folder: str) -> str:
    """Write the page of the run at `run_folder` from its summary.json (for runs that ended
    before pages were written, or whose page was removed); returns the page's URI."""
    base, run = split_run_folder(run_folder)
    layout = RunLayout(base)
    summary = Summary.model_validate_json(storage.read_bytes(layout.summary(run)))
    return write_gallery(layout, summary)


def split_run_folder(run_folder: str) -> tuple[str, str]:
    """(the batch's output folder, the run's name) of `{output}/_runs/{run}`; ValueError for
    anything else."""
    folder = run_folder.rstrip("/")
    runs = storage.parent(folder)
    if storage.name(runs) != RUNS or storage.name(folder) in ("", THUMBS):
        raise ValueError(f"not a run folder (expected OUTPUT/{RUNS}/RUN): {run_folder}")
    return storage.parent(runs), storage.name(folder)


def _own_record(entry: JobEntry) -> Record | None:
    return _own(entry, records.read_record(entry.record))


def _own(entry: JobEntry, record: Record | None) -> Record | None:
    return record if record is not None and record.key == entry.key else None


def _has_output(job: GalleryJob) -> bool:
    return (
        job.entry.status in ("completed", "skipped")
        and job.record is not None
        and job.record.status == "completed"
    )


def _input_uris(entries: Iterable[JobEntry]) -> list[str]:
    uris = [e.content for e in entries] + [s.uri for e in entries for s in e.styles]
    return list(dict.fromkeys(uris))


def _input_shas(jobs: list[GalleryJob]) -> dict[str, str]:
    """The sha256 of each input's bytes, as the records say (they hashed them to key jobs)."""
    shas = {}
    for job in jobs:
        if job.record is not None:
            inputs = job.record.inputs
            shas[inputs.content.uri] = inputs.content.sha256
            shas |= {style.uri: style.sha256 for style in inputs.styles}
    return shas


def _sha_of(uri: str) -> str | None:
    from nst_core.batch.jobs import sha256

    try:
        return sha256(storage.read_bytes(uri))
    except storage.StorageError:
        return None  # gone: its header shows the name without a picture


def _thumbnails(
    layout: RunLayout, wanted: dict[str, str], map_: Callable
) -> dict[str, Thumb | None]:
    """{digest: its thumbnail} for every wanted digest: those the folder holds, found by one
    listing, and the others made from their images (None where that image cannot be read)."""
    held = {}
    for uri in storage.list_prefix(layout.thumbs):
        match = _THUMB_NAME.match(storage.name(uri))
        if match:
            held[match[1]] = _thumb(storage.name(uri), int(match[2]), int(match[3]))
    todo = [digest for digest in wanted if digest not in held]
    made = map_(lambda digest: _make_thumb(layout, digest, wanted[digest]), todo)
    return {digest: held.get(digest) for digest in wanted} | dict(zip(todo, made, strict=True))


def _thumb(name: str, width: int, height: int) -> Thumb:
    return Thumb(href=f"../{THUMBS}/{name}", width=width, height=height)


def _make_thumb(layout: RunLayout, digest: str, source: str) -> Thumb | None:
    image = read_thumbnail(source, THUMB)
    if image is None:
        return None  # its cell says there is no preview; the page goes on
    name = write_thumbnail(layout, digest, image)
    return _thumb(name, image.width, image.height)
