"""What a run's gallery page shows, gathered by gallery.py and drawn by gallery_page.py: the
run's summary, each job with its record and thumbnail, and the input thumbnails."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

from nst_core.batch import storage
from nst_core.batch.layout import RunLayout
from nst_core.batch.records import JobEntry, Record, Summary


@dataclass(frozen=True)
class Thumb:
    """A thumbnail as the page links it: relative to the run folder, with its size."""

    href: str
    width: int
    height: int

    @property
    def name(self) -> str:
        return self.href.rsplit("/", 1)[-1]


@dataclass
class GalleryJob:
    entry: JobEntry
    record: Record | None  # None when missing, unreadable or another job's
    thumb: Thumb | None = None  # of the output; None when there is none to show


@dataclass
class Gallery:
    """Everything the page shows: the run's summary, its jobs, and the input thumbnails."""

    summary: Summary
    jobs: list[GalleryJob]
    inputs: dict[str, Thumb | None] = field(default_factory=dict)  # by content or style URI

    def thumbnail_uris(self, layout: RunLayout) -> dict[str, str]:
        """{an output's or input's URI: its thumbnail's}, for each image that has one."""
        shown = {job.entry.output: job.thumb for job in self.jobs} | self.inputs
        return {uri: f"{layout.thumbs}/{thumb.name}" for uri, thumb in shown.items() if thumb}


def output_href(uri: str) -> str:
    """A job's output or record as linked from its run folder. RunLayout puts both directly
    in the output folder, so the name alone says where, wherever the folder was moved."""
    return f"../../{quote(storage.name(uri), safe='')}"
