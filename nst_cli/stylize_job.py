"""`nst stylize`'s work: one content and its styles from local files into OUT and its
record, as a one-job unit through the same runner the flow uses.

Its contract differs from a batch's only where a person at a terminal expects it to: the
job is always recomputed, takes no claim, shows a progress bar, and a job that fails leaves
nothing at OUT and no record (the error is one line, exit 2).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from nst_core.batch import jobs, runner
from nst_core.batch.progress import UnitProgress, UnitReport
from nst_core.engine.execution import Execution
from nst_core.engine.params import StyleParams
from nst_core.errors import ImageError
from nst_core.settings import Settings


def read_input(path: Path, role: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such {role} file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, expected a {role} image file") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied reading the {role} image") from None


def check_output(out: Path) -> None:
    """Fail before any work when OUT cannot be written."""
    from nst_core.engine.images import format_for

    format_for(out.name)
    folder = out.parent
    if not folder.is_dir():
        raise ImageError(f"{out}: output folder {folder} does not exist; create it first")
    if out.is_dir():
        raise ImageError(f"{out}: is a folder; give a file name such as {out / 'out.png'}")
    if not os.access(folder, os.W_OK):
        raise ImageError(f"{out}: output folder {folder} is not writable")


def _progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]stylising"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("evals"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[losses]}"),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def bar_progress(bar: Progress, task: TaskID) -> UnitReport:
    """The unit's progress onto the bar: the evaluations done, counted from the first one
    (the engine reports the count at every evaluation), and the losses as of the latest
    recorded evaluation (every `history_every`)."""

    def show(progress: UnitProgress) -> None:
        row = progress.losses[0] if progress.losses else None
        text = (
            f"total {row.total:.4g}  content {row.content:.4g}  style {row.style:.4g}"
            if row
            else ""
        )
        total = progress.budget or None  # unknown until the engine's first report
        bar.update(task, completed=progress.evaluations, total=total, losses=text)

    return show


def one_job(
    content: Path, styles: list[Path], blend: list[float] | None, params: StyleParams, out: Path
) -> jobs.Job:
    """The job `nst stylize` runs: its key is the batch key of the same inputs and format.
    Missing or unreadable files are refused here; undecodable ones by the runner's load,
    which also refuses a file changed since it was read here."""
    content_file = jobs.probe_input(str(content), read_input(content, "content"))
    style_files = [jobs.probe_input(str(path), read_input(path, "style")) for path in styles]
    weights = blend or [1.0] * len(styles)
    fmt = out.suffix.lstrip(".").lower()
    pairs = [(f.sha256, w) for f, w in zip(style_files, weights, strict=True)]
    return jobs.Job(
        content_file=content_file,
        style_files=tuple(style_files),
        weights=tuple(float(w) for w in weights),
        params=params,
        key=jobs.job_key(content_file.sha256, pairs, params, fmt),
        output=str(out),
        record=str(out.with_suffix(".json")),
        execution=Execution.asked(params),
    )


def fit_memory(job: jobs.Job, settings: Settings) -> jobs.Job:
    """The job as the memory budget lets it run (in tiles when it does not fit whole), as
    a batch would plan it; ImageError before any work when it fits not even in tiles."""
    from nst_core.batch.memory_fit import fit_memory

    planned = fit_memory([job], job.params.device, settings.memory_budget_bytes)
    if planned.unfit:
        ((_, need),) = planned.unfit
        raise ImageError(f"{job.content}: {planned.reason(job, need)}")
    (fitted,) = planned.fitting
    return replace(fitted, execution=fitted.execution.on(planned.devices[0]))


def stylize_file(job: jobs.Job, settings: Settings) -> str:
    """Run `job` alone; the line to print. Raises ImageError when it fails."""
    started = time.perf_counter()
    console = Console(stderr=True)
    with _progress_bar(console) as bar:
        task = bar.add_task("stylise", total=None, losses="")
        options = runner.UnitOptions(
            force=True,
            claim=False,
            record_failures=False,
            progress=bar_progress(bar, task),
            settings=settings,
        )
        (outcome,) = runner.run_unit([job], job.execution.device, options=options)
    if outcome.status != "completed":
        raise ImageError(outcome.error or f"{job.content}: not stylised")
    record = outcome.record
    assert record is not None and record.losses is not None and record.output_size is not None
    final = record.losses.final
    w, h = record.output_size
    return (
        f"wrote {job.output} ({w}x{h}) in {time.perf_counter() - started:.1f} s on "
        f"{record.device} ({record.precision}); style loss {final.style:.4g}, content "
        f"loss {final.content:.4g}; record {job.record}"
    )
