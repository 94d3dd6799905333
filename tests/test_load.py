"""A scaled-down load run (bench/load.py measures the 100- and 500-job ones): 60 tiny jobs
through the flow, each completed exactly once, and a rerun that skips them all."""

import io
import json
from pathlib import Path

from PIL import Image

from bench.load import write_batch
from flows.batch import stylize_batch
from nst_core.batch.layout import THUMBS

CONTENTS, STYLES = 15, 4
JOBS = CONTENTS * STYLES


def outputs(folder: Path) -> tuple[list[dict], list[Path]]:
    """(records, images) directly under out/; the run folders under out/_runs are not jobs."""
    out = folder / "out"
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    return records, sorted(out.glob("*.png"))


def test_60_jobs_complete_once_each_and_a_rerun_skips_them(tmp_path, prefect_server):
    manifest = write_batch(tmp_path, CONTENTS, STYLES, "load-60")
    run = stylize_batch.with_options(timeout_seconds=300)

    summary = run(str(manifest))
    totals = summary.totals
    assert (totals.jobs, totals.completed, totals.failed, totals.skipped) == (
        JOBS,
        JOBS,
        0,
        0,
    )
    assert len({e.key for e in summary.jobs}) == JOBS
    assert all(e.status == "completed" for e in summary.jobs)
    records, images = outputs(tmp_path)
    # One record per job, each naming its own image; nothing else and nothing half-written.
    assert len(records) == JOBS and len(images) == JOBS
    assert {r["key"] for r in records} == {e.key for e in summary.jobs}
    assert sorted(Path(r["output"]) for r in records) == images
    assert all(r["status"] == "completed" and r["output_size"] == [16, 16] for r in records)
    assert all(r["params"]["iterations"] == 2 for r in records)
    inputs = {(r["inputs"]["content"]["uri"], r["inputs"]["styles"][0]["uri"]) for r in records}
    assert len(inputs) == JOBS  # every content x style pair, once
    assert not list(tmp_path.rglob("*.part"))
    written = json.loads(Path(summary.run_folder, "summary.json").read_text())
    assert written["totals"] == totals.model_dump()

    again = run(str(manifest))
    assert again.totals.skipped == JOBS and again.totals.completed == 0
    after, images_after = outputs(tmp_path)
    assert after == records and images_after == images  # untouched, still one each
    runs = [p for p in (tmp_path / "out" / "_runs").iterdir() if p.name != THUMBS]
    assert len(runs) == 2  # beside the thumbnails every run of the batch shares


def test_contact_sheet_of_a_big_batch_shows_a_readable_corner():
    """400 contents x 20 styles: one row per content would pass JPEG's 65,500 px; the sheet
    shows the first rows and columns and says what it left out."""
    from nst_core.batch import report
    from nst_core.batch.records import JobEntry, StyleRef

    entries = [
        JobEntry(
            key=f"{i}-{j}",
            label=f"c{i} x s{j}",
            content=f"/nowhere/c{i}.png",  # thumbnails that do not load stay empty cells
            styles=[StyleRef(uri=f"/nowhere/s{j}.png", weight=1.0)],
            status="completed",
            output=f"/nowhere/o{i}-{j}.png",
            record=f"/nowhere/o{i}-{j}.json",
        )
        for i in range(400)
        for j in range(20)
    ]
    sheet = Image.open(io.BytesIO(report.contact_sheet(entries)))
    cell = report.THUMB + report.LABEL_H
    assert sheet.size == (
        report.THUMB * (report.SHEET_COLUMNS + 1),
        cell * (report.SHEET_ROWS + 1) + 2 * report.LABEL_H,
    )
