"""The gallery page at scale: a 500-job run (tiny images; records made up, not computed)
written, then loaded in headless Chromium: how long the page takes to build and to show, how
large it is, and the memory it takes in the browser.

    python -m bench.gallery              # 25 contents x 20 styles, Debian's /usr/bin/chromium

Prints a Markdown table and writes bench/results/gallery.json. `synthetic_run` is also what
tests/test_gallery.py builds pages from when no engine run is needed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from bench.common import machine, write_section
from nst_core.batch import storage
from nst_core.batch.jobs import InputFile, make_job, probe_input
from nst_core.batch.layout import RunLayout
from nst_core.batch.records import JobEntry, Losses, Record, Summary, Timings
from nst_core.engine.params import StyleParams
from nst_core.engine.trace import HistoryRow, LossValues

RESULTS = Path(__file__).resolve().parent / "results" / "gallery.json"
CHROMIUM = "/usr/bin/chromium"
# Headless Chromium as the tests run it: the system browser, nothing phoning home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUN = "bench-20260101-000000-abcd"


def _picture(seed: int, size: tuple[int, int]) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        draw.rectangle([x, y, x + 12, y + 9], fill=tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _history(rng: random.Random, evaluations: int = 60, every: int = 10) -> list[HistoryRow]:
    style, content = rng.uniform(50, 500), rng.uniform(1, 10)
    rows = []
    for k in range(every, evaluations + 1, every):
        style, content = style * rng.uniform(0.4, 0.8), content * rng.uniform(1.0, 1.2)
        rows.append(
            HistoryRow(
                evaluation=k,
                scale=48,
                seconds=round(k * 0.01, 4),
                total=style + content,
                content=content,
                style=style,
                tv=0.0,
            )
        )
    return rows


def synthetic_run(
    root: str,
    contents: Sequence[str],
    styles: Sequence[str],
    *,
    failed: Sequence[tuple[int, int]] = (),
    error: str | None = None,
    run: str = RUN,
    size: tuple[int, int] = (48, 36),
) -> tuple[RunLayout, Summary]:
    """A finished run under `root` without the engine: contents x styles jobs whose outputs
    are drawn pictures with made-up records, but for the (content, style) index pairs in
    `failed`, which failed (with `error`, or a made-up one). Names may hold anything a file
    name can, and so may `error` (the escaping tests)."""
    params = StyleParams(size=max(size), iterations=60, device="cpu", precision="fp32")
    content_uris = [f"{root}/photos/{name}" for name in contents]
    style_uris = [f"{root}/paintings/{name}" for name in styles]
    for seed, uri in enumerate(content_uris + style_uris):
        storage.write_bytes(uri, _picture(seed, size if uri in content_uris else (40, 40)))
    planned: dict[str, InputFile] = {}

    def input_file(uri: str) -> InputFile:
        if uri not in planned:
            planned[uri] = probe_input(uri, storage.read_bytes(uri))
        return planned[uri]

    layout, rng, entries = RunLayout(f"{root}/out"), random.Random(0), []
    for c, content in enumerate(content_uris):
        for s, style in enumerate(style_uris):
            job = make_job(
                input_file(content),
                ((input_file(style), 1.0),),
                params,
                output_dir=layout.base,
                fmt="png",
            )
            if (c, s) in failed:
                why = error or f"{storage.name(content)}: truncated or corrupt image (made up)"
                record = Record.failed(job, why)
                storage.write_bytes(job.record, record.to_json())
                entries.append(JobEntry.of(job, "failed", record=record, error=why))
                continue
            history = _history(rng)
            last = history[-1]
            final = LossValues(total=last.total, content=last.content, style=last.style, tv=0)
            record = Record.failed(job, "").model_copy(
                update={
                    "status": "completed",
                    "error": None,
                    "output_size": list(size),
                    "device": "cpu",
                    "precision": "fp32",
                    "evaluations": 60,
                    "losses": Losses(final=final, history=history),
                    "timings": Timings(read_s=0.01, optimize_s=1.5, write_s=0.01),
                }
            )
            storage.write_bytes(job.output, _picture(1000 + len(entries), size))
            storage.write_bytes(job.record, record.to_json())
            entries.append(JobEntry.of(job, "completed", record=record, seconds=1.51))
    return layout, Summary.of(run, f"{root}/batch.yaml", entries, wall_seconds=60.0)


def _pss_kib(root_pid: int) -> int:
    """Proportional set size of every Chromium process under `root_pid` (shared pages
    counted once across them), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, list(children.get(root_pid, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            if "chrom" not in Path(f"/proc/{pid}/comm").read_text():
                continue
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def measure(page_path: Path) -> dict:
    """Load the page in headless Chromium: navigation to `load`, until every thumbnail in
    view has decoded, until all have (lazy ones forced), and memory after that."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        started = time.perf_counter()
        page.goto(page_path.as_uri(), wait_until="load")
        loaded = time.perf_counter() - started
        # Functions, not expressions: Playwright eval()s an expression, which the CSP forbids.
        page.wait_for_function(
            "() => Array.from(document.images).filter(i => {"
            " const r = i.getBoundingClientRect();"
            " return r.top < innerHeight && r.left < innerWidth; }).every(i => i.complete)"
        )
        in_view = time.perf_counter() - started
        eager = time.perf_counter()
        page.evaluate("for (const i of document.images) i.loading = 'eager'")
        page.wait_for_function(
            "() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)",
            timeout=120_000,
        )
        every_image = time.perf_counter() - eager
        session = page.context.new_cdp_session(page)
        session.send("Performance.enable")
        metrics = {m["name"]: m["value"] for m in session.send("Performance.getMetrics")["metrics"]}
        images = page.evaluate("document.images.length")
        figures = page.evaluate("document.querySelectorAll('figure.job').length")
        started = time.perf_counter()
        page.select_option("#status", "failed")
        filter_s = time.perf_counter() - started
        pss = _pss_kib(os.getpid())
        browser.close()
    return {
        "load_event_s": round(loaded, 3),
        "visible_thumbnails_s": round(in_view, 3),
        "all_thumbnails_after_s": round(every_image, 3),
        "status_filter_s": round(filter_s, 3),
        "images": images,
        "jobs_shown": figures,
        "js_heap_used_mb": round(metrics["JSHeapUsedSize"] / 2**20, 1),
        "dom_nodes": int(metrics["Nodes"]),
        "chromium_pss_mb": round(pss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contents", type=int, default=25)
    parser.add_argument("--styles", type=int, default=20)
    args = parser.parse_args()
    from nst_core.batch.gallery import write_gallery

    with tempfile.TemporaryDirectory() as folder:
        contents = [f"photo-{i:03d}.png" for i in range(args.contents)]
        styles = [f"painting-{i:02d}.png" for i in range(args.styles)]
        failed = [(i, (i * 7) % args.styles) for i in range(0, args.contents, 5)]
        layout, summary = synthetic_run(folder, contents, styles, failed=failed)
        started = time.perf_counter()
        page = write_gallery(layout, summary)
        first = time.perf_counter() - started
        started = time.perf_counter()
        write_gallery(layout, summary)  # a rerun: every thumbnail is there already
        again = time.perf_counter() - started
        thumbs = len(storage.list_prefix(layout.thumbs))
        result = {
            "jobs": len(summary.jobs),
            "failed": len(failed),
            "machine": machine(),
            "build_first_s": round(first, 2),
            "build_rerun_s": round(again, 2),
            "thumbnails": thumbs,
            "page_kib": round(Path(page).stat().st_size / 1024, 1),
            **measure(Path(page)),
        }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    write_section("gallery", table(result))
    print(table(result))


def table(result: dict) -> str:
    rows = [
        ("jobs (failed)", f"{result['jobs']} ({result['failed']})"),
        (
            "page build, thumbnails made / rerun",
            f"{result['build_first_s']} s / "
            f"{result['build_rerun_s']} s ({result['thumbnails']} thumbnails)",
        ),
        ("page size", f"{result['page_kib']} KiB"),
        ("navigation to `load`", f"{result['load_event_s']} s"),
        ("thumbnails in view decoded", f"{result['visible_thumbnails_s']} s"),
        ("every thumbnail, lazy ones forced", f"{result['all_thumbnails_after_s']} s more"),
        ("status filter applied", f"{result['status_filter_s']} s"),
        ("JS heap used", f"{result['js_heap_used_mb']} MB"),
        ("DOM nodes", str(result["dom_nodes"])),
        ("Chromium processes, PSS", f"{result['chromium_pss_mb']} MB"),
    ]
    lines = [
        f"`python -m bench.gallery`: a run of {result['jobs']} jobs (tiny images, records made "
        f"up), its page opened from local disk in Debian's headless Chromium; {result['machine']}:",
        "",
        "| what | measured |",
        "| --- | ---: |",
    ]
    return "\n".join(lines + [f"| {what} | {value} |" for what, value in rows])


if __name__ == "__main__":
    main()
