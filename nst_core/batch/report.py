"""What a batch run leaves for people: summary.json, report.md, a contact sheet, a loss plot.

Pillow draws the pictures; the project has no plotting dependency, and these are simple.
"""

from __future__ import annotations

import io
import math
import shlex
from collections.abc import Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

from nst_core.batch import storage
from nst_core.batch.escape import markdown_code, markdown_text
from nst_core.batch.layout import RunLayout
from nst_core.batch.records import JobEntry, Summary
from nst_core.batch.thumbnails import read_thumbnail
from nst_core.engine.trace import HistoryRow

THUMB = 160
# A sheet shows at most this many contents (rows) and styles (columns).
SHEET_ROWS, SHEET_COLUMNS = 40, 12
LABEL_H = 16
PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def markdown_report(summary: Summary, layout: RunLayout | None = None) -> str:
    """The run as Markdown; with the batch's `layout`, it says where the gallery page is.
    Every name, URI and error in it is escaped: Prefect's UI renders it, links and HTML too."""
    totals = summary.totals
    lines = [
        f"# Style transfer run {markdown_code(summary.run)}",
        "",
        f"Manifest: {markdown_code(summary.manifest)}",
        "",
        *([gallery_note(layout, summary.run), ""] if layout else []),
        f"**{totals.line()}** of {totals.jobs} jobs in {totals.wall_seconds:.1f} s "
        f"({totals.images_per_hour:.1f} images/hour).",
        "",
        "| job | status | seconds | total loss | style loss | content loss | output / error |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for entry in summary.jobs:
        losses = entry.losses
        seconds = f"{entry.seconds:.1f}" if entry.seconds is not None else ""
        where = entry.error if entry.status == "failed" else entry.output
        lines.append(
            f"| {markdown_text(entry.label)} | {entry.status} | {seconds} | "
            f"{_num(losses and losses.total)} | {_num(losses and losses.style)} | "
            f"{_num(losses and losses.content)} | {markdown_text(where)} |"
        )
    return "\n".join(lines) + "\n"


def gallery_note(layout: RunLayout, run: str) -> str:
    """Where the run's gallery page is and the command that serves it. No presigned URL:
    it would put credentials in the report and in Prefect's artifacts."""
    folder = layout.run_folder(run)
    opened = "" if storage.is_s3(folder) else ", or open it from disk"
    return (
        f"Gallery: {markdown_code(layout.gallery(run))}; browse it with "
        f"{markdown_code(f'nst gallery {shlex.quote(folder)} --serve')}{opened}."
    )


def _num(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else ""


def contact_sheet(entries: list[JobEntry], thumbnails: Mapping[str, str] | None = None) -> bytes:
    """A labelled grid: styles across the top, contents down the side, outputs where they meet.

    Big batches show their first SHEET_ROWS contents and SHEET_COLUMNS styles, with a footer
    saying so: the sheet is for eyes (and JPEG stops at 65,500 px); summary.json lists all.
    `thumbnails` ({image URI: its thumbnail's URI}, the gallery's) are read in place of the
    images they show, so a run decodes each full-size output once, not once per picture.
    """
    thumbnails = thumbnails or {}

    def picture(uri: str) -> Image.Image | None:
        return read_thumbnail(thumbnails.get(uri, uri), THUMB - 8)

    all_rows = list(dict.fromkeys(e.content for e in entries))
    all_columns = list(dict.fromkeys(_style_label(e) for e in entries))
    rows, columns = all_rows[:SHEET_ROWS], all_columns[:SHEET_COLUMNS]
    column_of = {label: c for c, label in enumerate(columns, start=1)}
    row_of = {content: r for r, content in enumerate(rows, start=1)}
    column_styles = {_style_label(e): e.styles for e in entries}
    font = ImageFont.load_default()
    cell_h = THUMB + LABEL_H
    cut = len(rows) < len(all_rows) or len(columns) < len(all_columns)
    footer = LABEL_H * 2 if cut else 0
    size = (THUMB * (len(columns) + 1), cell_h * (len(rows) + 1) + footer)
    sheet = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(sheet)

    def cell(column: int, row: int, label: str | None, image: Image.Image | None) -> None:
        x, y = column * THUMB, row * cell_h
        if label:
            draw.text((x + 4, y + 2), _clip(label), fill="black", font=font)
        _paste(sheet, image, x, y + LABEL_H)

    for label, column in column_of.items():
        styles = column_styles[label]
        cell(column, 0, label, picture(styles[0].uri) if len(styles) == 1 else None)
    for content, row in row_of.items():
        cell(0, row, storage.name(content), picture(content))
    for entry in entries:
        r, c = row_of.get(entry.content), column_of.get(_style_label(entry))
        if r is None or c is None:
            continue
        if entry.status in ("failed", "elsewhere"):
            x, y = c * THUMB, r * cell_h + LABEL_H
            colour = "red" if entry.status == "failed" else "grey"
            draw.rectangle([x + 4, y + 4, x + THUMB - 4, y + THUMB - 4], outline=colour, width=3)
            draw.text((x + 10, y + THUMB // 2), entry.status, fill=colour, font=font)
        else:
            cell(c, r, None, picture(entry.output))
    if cut:
        note = (
            f"showing {len(rows)} of {len(all_rows)} contents and {len(columns)} of "
            f"{len(all_columns)} styles; summary.json lists every output"
        )
        draw.text((4, size[1] - footer + 8), note, fill="black", font=font)
    buffer = io.BytesIO()
    sheet.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _style_label(entry: JobEntry) -> str:
    return " + ".join(storage.name(s.uri) for s in entry.styles)


def _clip(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _paste(sheet: Image.Image, thumb: Image.Image | None, x: int, y: int) -> None:
    if thumb is not None:
        sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))


def loss_plot(
    histories: Sequence[tuple[str, list[HistoryRow]]], size: tuple[int, int] = (720, 440)
) -> bytes:
    """Every job's total loss against evaluations, log-scale y, one coloured line per job."""
    width, height = size
    left, right, top, bottom = 70, 20, 20, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    points = [
        (row.evaluation, row.total)
        for _, history in histories
        for row in history
        if row.total > 0 and math.isfinite(row.total)
    ]
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    if points:
        max_x = max(x for x, _ in points) or 1
        lo = math.floor(math.log10(min(y for _, y in points)))
        hi = math.ceil(math.log10(max(y for _, y in points)))
        hi = hi if hi > lo else lo + 1

        def to_px(x: float, y: float) -> tuple[float, float]:
            px = left + (width - left - right) * x / max_x
            py = top + (height - top - bottom) * (hi - math.log10(y)) / (hi - lo)
            return px, py

        for decade in range(lo, hi + 1):
            _, py = to_px(0, 10.0**decade)
            draw.line([left, py, width - right, py], fill=(225, 225, 225))
            draw.text((6, py - 6), f"1e{decade}", fill="black", font=font)
        for i, (label, history) in enumerate(histories):
            colour = PALETTE[i % len(PALETTE)]
            line = [to_px(r.evaluation, r.total) for r in history if r.total > 0]
            if len(line) > 1:
                draw.line(line, fill=colour, width=2)
            if i < 12:  # a legend for the first dozen; beyond that it would hide the plot
                y = top + 18 + 12 * i
                draw.line(
                    [width - right - 250, y + 5, width - right - 235, y + 5], fill=colour, width=2
                )
                draw.text((width - right - 230, y), _clip(label, 38), fill="black", font=font)
        draw.text(
            (width // 2 - 60, height - bottom + 12),
            f"evaluations (0-{max_x})",
            fill="black",
            font=font,
        )
    draw.text((left + 6, top + 4), "total loss (log scale)", fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
