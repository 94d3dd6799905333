"""Where a batch's files live under its output folder: the one place that names them.

{output}/{content}--{styles}--{key8}.{fmt}   an output image
{output}/{content}--{styles}--{key8}.json    its record, written after the image
{output}/_claims/{key}.{generation}.json     which run is computing a job (claims.py)
{output}/_runs/{run}/summary.json            one run: summary, report.md,
                     report.md ...           contact_sheet.jpg, losses.png, and
                     index.html              its gallery page (gallery.py)
{output}/_runs/_thumbs/{digest}.{w}x{h}.jpg  gallery thumbnails, shared by every run of the
                                             batch: a rerun makes none it already has
"""

from __future__ import annotations

from dataclasses import dataclass

CLAIMS = "_claims"
RUNS = "_runs"
# Beside the run folders, not in one: named by what they show, so each is made once per
# output (or input) across reruns. No run is named this: run names end with a date.
THUMBS = "_thumbs"


@dataclass(frozen=True)
class RunLayout:
    """The paths under one output folder (a local path or an s3:// prefix)."""

    output: str

    @property
    def base(self) -> str:
        return self.output.rstrip("/")

    def image(self, stem: str, fmt: str) -> str:
        return f"{self.base}/{stem}.{fmt}"

    def record(self, stem: str) -> str:
        return f"{self.base}/{stem}.json"

    @property
    def claims(self) -> str:
        return f"{self.base}/{CLAIMS}"

    def run_folder(self, run: str) -> str:
        return f"{self.base}/{RUNS}/{run}"

    def summary(self, run: str) -> str:
        return f"{self.run_folder(run)}/summary.json"

    def report(self, run: str) -> str:
        return f"{self.run_folder(run)}/report.md"

    def contact_sheet(self, run: str) -> str:
        return f"{self.run_folder(run)}/contact_sheet.jpg"

    def loss_plot(self, run: str) -> str:
        return f"{self.run_folder(run)}/losses.png"

    def gallery(self, run: str) -> str:
        return f"{self.run_folder(run)}/index.html"

    @property
    def runs(self) -> str:
        return f"{self.base}/{RUNS}"

    @property
    def thumbs(self) -> str:
        return f"{self.base}/{RUNS}/{THUMBS}"
