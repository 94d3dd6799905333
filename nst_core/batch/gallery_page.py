"""The gallery page's HTML: one self-contained file (inline CSS and script, no CDN, no build
step) with the contents down and the styles across, as the contact sheet has them.

Every piece of text that came from outside (file names, error messages, manifest names,
parameters) goes through `_text` (html.escape, quotes included) or, for the data the script
reads, through `_script_json`, which leaves no `<`, `>` or `&` that could end the script
element. The script itself writes text only as textContent. A Content-Security-Policy lets
no script run but the page's own (by its hash), as a second line of defence.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections import Counter
from importlib import resources
from typing import Any

from nst_core.batch import storage
from nst_core.batch.gallery_model import Gallery, GalleryJob, Thumb, output_href
from nst_core.batch.records import STATUSES, JobEntry, StyleRef

ASSETS = resources.files("nst_core.batch") / "gallery_assets"
RUN_FILES = ("summary.json", "report.md", "contact_sheet.jpg", "losses.png")
MAX_VARIANT_TAGS = 3
_HISTORY_META = ("evaluation", "scale", "seconds")


def render(gallery: Gallery) -> str:
    summary = gallery.summary
    rows = list(dict.fromkeys(e.content for e in summary.jobs))
    columns = list(dict.fromkeys(_column_key(e.styles) for e in summary.jobs))
    styles_of = {_column_key(e.styles): e.styles for e in summary.jobs}
    cells: dict[tuple[int, int], list[int]] = {}
    for index, job in enumerate(gallery.jobs):
        place = (rows.index(job.entry.content), columns.index(_column_key(job.entry.styles)))
        cells.setdefault(place, []).append(index)
    common = _most_common_params(gallery.jobs)
    head = [_style_header(c, styles_of[key], gallery.inputs) for c, key in enumerate(columns)]
    body = []
    for r, content in enumerate(rows):
        row = [_content_header(r, content, gallery.inputs.get(content))]
        for c in range(len(columns)):
            figures = "".join(
                _figure(i, gallery.jobs[i], common, gallery.inputs.get(content))
                for i in cells.get((r, c), [])
            )
            row.append(f'<td data-col="{c}">{figures}</td>')
        body.append(f'<tr data-row="{r}">{"".join(row)}</tr>')
    script = (ASSETS / "gallery.js").read_text()
    return _PAGE.format(
        csp=_csp(script),
        title=_text(f"{summary.run}: gallery"),
        run=_text(summary.run),
        manifest=_text(summary.manifest),
        totals=_text(f"{summary.totals.line()} of {summary.totals.jobs} jobs"),
        links=" · ".join(f'<a href="{name}">{name}</a>' for name in RUN_FILES),
        status_options=_options([("all", "every status")] + [(s, s) for s in STATUSES]),
        content_options=_options(
            [("all", "every content")] + [(str(r), storage.name(u)) for r, u in enumerate(rows)]
        ),
        style_options=_options(
            [("all", "every style")]
            + [(str(c), _style_label(styles_of[key])) for c, key in enumerate(columns)]
        ),
        head="".join(head),
        body="\n".join(body),
        data=_script_json([_job_data(job) for job in gallery.jobs], common),
        css=(ASSETS / "gallery.css").read_text(),
        script=script,
    )


def _text(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _script_json(jobs: list[dict], common: dict) -> str:
    """JSON safe inside a <script> element: `</script>` or `<!--` in a file name or error
    cannot end it, because no `<`, `>` or `&` is left (JSON.parse reads the escapes back)."""
    params: list[Any] = []
    index: dict[str, int] = {}
    for job in jobs:  # most jobs share their parameters: each set is written once
        key = json.dumps(job["params"], sort_keys=True)
        job["params"] = index.setdefault(key, len(index))
        if job["params"] == len(params):
            params.append(json.loads(key))
    text = json.dumps({"jobs": jobs, "params": params, "common": common}, allow_nan=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _csp(script: str) -> str:
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    # img-src 'self' file: lets a page opened from disk show its own folder's images.
    return (
        "default-src 'none'; img-src 'self' file:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'"
    )


def _options(pairs: list[tuple[str, str]]) -> str:
    return "".join(f'<option value="{_text(v)}">{_text(label)}</option>' for v, label in pairs)


def _column_key(styles: list[StyleRef]) -> tuple:
    return tuple((s.uri, s.weight) for s in styles)


def _style_label(styles: list[StyleRef]) -> str:
    if len(styles) == 1:
        return storage.name(styles[0].uri)
    return " + ".join(f"{storage.name(s.uri)} ×{s.weight:g}" for s in styles)


def _img(thumb: Thumb | None, alt: str, css: str = "") -> str:
    if thumb is None:
        return f'<span class="nothumb {css}" role="img" aria-label="{_text(alt)}">no preview</span>'
    return (
        f'<img class="{css}" src="{_text(thumb.href)}" width="{thumb.width}" '
        f'height="{thumb.height}" alt="{_text(alt)}" loading="lazy" decoding="async">'
    )


def _style_header(column: int, styles: list[StyleRef], inputs: dict[str, Thumb | None]) -> str:
    pictures = "".join(
        _img(inputs.get(s.uri), f"style: {storage.name(s.uri)}", "blend" if len(styles) > 1 else "")
        for s in styles
    )
    label = _text(_style_label(styles))
    return f'<th scope="col" data-col="{column}">{pictures}<span class="name">{label}</span></th>'


def _content_header(row: int, uri: str, thumb: Thumb | None) -> str:
    name = storage.name(uri)
    return (
        f'<th scope="row">{_img(thumb, f"content: {name}")}'
        f'<span class="name">{_text(name)}</span></th>'
    )


def _figure(index: int, job: GalleryJob, common: dict, content: Thumb | None) -> str:
    entry = job.entry
    alt = f"{storage.name(entry.content)} in the style of {_style_label(entry.styles)}"
    if job.thumb is not None:
        picture = _img(job.thumb, alt)
    else:
        # No output to show: a box at the content's shape holds the status instead.
        box = content or Thumb("", 4, 3)
        width = min(box.width, 160)
        picture = (
            f'<span class="placeholder" style="width:{width}px;'
            f'aspect-ratio:{box.width}/{box.height}">{_text(entry.status)}</span>'
        )
    lines = [_losses_line(entry, _seconds(job))]
    if entry.status == "failed":
        lines.insert(0, f'<span class="error">{_text(_one_line(entry.error))}</span>')
    elif entry.status != "completed":
        lines.append(f'<span class="tag">{_text(entry.status)}</span>')
    tags = _variant_tags(job, common)
    if tags:
        lines.append(f'<span class="variant">{_text(tags)}</span>')
    label = f"{entry.label}: {entry.status}"
    return (
        f'<figure class="job {entry.status}" data-job="{index}" data-status="{entry.status}" '
        f'tabindex="0" role="button" aria-label="{_text(label)}">{picture}'
        f"<figcaption>{'<br>'.join(line for line in lines if line)}</figcaption></figure>"
    )


def _losses_line(entry: JobEntry, seconds: float | None) -> str:
    losses = entry.losses
    parts = [f"style {losses.style:.3g}", f"content {losses.content:.3g}"] if losses else []
    if seconds is not None:
        parts.append(f"{seconds:.1f} s")
    return _text(" · ".join(parts))


def _seconds(job: GalleryJob) -> float | None:
    """This run's seconds for the job, or for a job done earlier (skipped now), the read
    and optimise time its record kept."""
    if job.entry.seconds is not None:
        return job.entry.seconds
    timings = job.record.timings if job.record is not None else None
    if job.entry.status != "skipped" or timings is None:
        return None
    return timings.optimize_s + timings.read_s


def _one_line(error: str | None) -> str:
    lines = (error or "").strip().splitlines()
    line = lines[0] if lines else "failed"
    return line if len(line) <= 240 else line[:239] + "…"


def _most_common_params(jobs: list[GalleryJob]) -> dict:
    counts = Counter(
        json.dumps(j.record.params, sort_keys=True) for j in jobs if j.record is not None
    )
    return json.loads(counts.most_common(1)[0][0]) if counts else {}


def _variant_tags(job: GalleryJob, common: dict) -> str:
    """The parameters where this job differs from most (an explicit pair's own params)."""
    if job.record is None:
        return ""
    own = job.record.params
    differ = [f"{k}={own[k]}" for k in sorted(own) if own[k] != common.get(k)]
    more = " …" if len(differ) > MAX_VARIANT_TAGS else ""
    return ", ".join(differ[:MAX_VARIANT_TAGS]) + more


def _job_data(job: GalleryJob) -> dict:
    """What the detail view of one job shows, read by the page's script."""
    entry, record = job.entry, job.record
    has_output = job.thumb is not None
    data: dict[str, Any] = {
        "label": entry.label,
        "status": entry.status,
        "error": entry.error,
        "output": output_href(entry.output) if has_output else None,
        "record": output_href(entry.record) if record is not None else None,
        "losses": entry.losses.model_dump() if entry.losses else {},
        "seconds": _seconds(job),
        "params": record.params if record is not None else {},
    }
    if record is not None:
        history = [row.model_dump() for row in record.losses.history] if record.losses else []
        names = [k for k in (history[0] if history else {}) if k not in _HISTORY_META]
        data["history"] = {
            name: [_round(row.get(name)) for row in history] for name in ["evaluation", *names]
        }
        data |= {
            "size": record.output_size,
            "device": record.device,
            "precision": record.precision,
            "evaluations": record.evaluations,
            "created": record.created_at,
            "notes": record.notes or [],
        }
    return data


def _round(value: object) -> object:
    return float(f"{value:.5g}") if isinstance(value, float) else value


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<header>
<h1>Run <code>{run}</code></h1>
<p>Manifest <code>{manifest}</code>: {totals}. {links}</p>
<form id="filters" aria-label="Filters">
<label>Status <select id="status">{status_options}</select></label>
<label>Content <select id="content">{content_options}</select></label>
<label>Style <select id="style">{style_options}</select></label>
<output id="shown" aria-live="polite"></output>
</form>
</header>
<main>
<table class="grid">
<thead><tr><td class="corner">contents ↓ styles →</td>{head}</tr></thead>
<tbody>
{body}
</tbody>
</table>
</main>
<dialog id="detail" aria-labelledby="detail-title">
<button type="button" class="close" id="detail-close" aria-label="Close">×</button>
<h2 id="detail-title"></h2>
<div id="detail-body"></div>
</dialog>
<script type="application/json" id="gallery-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""
