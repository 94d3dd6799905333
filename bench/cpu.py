"""`make bench`: on this CPU, with `precision: auto` as it decides here, two comparisons
against the tutorial-style baseline (bench/baseline.py: 300 evaluations, pinned weights):

1. What a user gets: `nst stylize --size 256` at every other default, timed as a whole
   process (interpreter start, weights, decode, optimisation, encode, record), against the
   baseline's time for its 300 evaluations; both outputs scored by the look metric
   (bench/look.py). The target is a ratio of 5 with an output at least as good: equal or
   lower style distance at equal or lower content distance.
2. Time-to-quality, as before: the engine run on the tutorial's own objective (`loss:
   gatys`, content 1, style 50), its trace read for the time it takes to reach the
   baseline's final loss.

3. The defaults' look on both sample pairs beside neural-style's published outputs
   (`../shared/images/reference/`), from `nst stylize` runs: the first pair's comes from (1),
   the second pair gets one more run.

Each measured run is a fresh process (bench/run_one.py, or the `nst` command itself) on
the same inputs. Repeats per size are in REPEATS, time-to-quality runs on the first repeat
of each size; every figure is a median with its spread (min-max). Results go to
bench/results/cpu.json and into BENCHMARKS.md between the markers.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench import quality
from bench.common import (
    SHARED,
    input_files,
    inputs,
    loss_at,
    machine,
    time_to_loss,
    write_section,
)
from bench.look import LookMetric
from nst_core.engine import images

ROOT = Path(__file__).resolve().parent.parent
# The baseline's spread at 128 px was 43.0-46.8 s over three repeats: one repeat says enough
# there; 256 px is the size the target is judged at.
REPEATS = {128: 1, 256: 2}
STYLIZE_SIZE = 256
# The engine on the tutorial's objective passes the baseline's loss after about 120
# evaluations at 256 px and 133 at 128 px; its runs stop a margin past that.
TTQ_ITERATIONS = {128: 200, 256: 160}


def measure(mode: str, size: int, overrides: dict | None = None) -> dict:
    command = [sys.executable, "-m", "bench.run_one", mode, str(size)]
    out = subprocess.run(
        [*command, json.dumps(overrides or {})],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def nst(*args: str) -> subprocess.CompletedProcess:
    """The `nst` command of this environment, as a user runs it."""
    executable = Path(sys.executable).parent / "nst"
    return subprocess.run([str(executable), *args], capture_output=True, text=True, check=True)


def measure_stylize(content: Path, style: Path, size: int, metric: LookMetric) -> dict:
    """`nst stylize` at its defaults but the size, as one whole process, and its output."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out.png"
        started = time.perf_counter()
        nst("stylize", str(content), str(style), "-o", str(out), "--size", str(size))
        wall = time.perf_counter() - started
        record = json.loads(out.with_suffix(".json").read_text())
        output = images.decode_image(out.read_bytes(), str(out))
        return {
            "wall_s": wall,
            "optimize_s": record["timings"]["optimize_s"],
            "evaluations": record["evaluations"],
            "iterations": record["params"]["iterations"],
            "precision": record["precision"],
            "look": asdict(metric(output)),
        }


def compare(baseline: dict, engine: dict) -> dict:
    """Time-to-quality and quality at equal time for one baseline/engine pair of runs."""
    target = baseline["final_loss"]
    baseline_s = baseline["trace"][-1][0]
    engine_s = engine["trace"][-1][0]
    ttq = time_to_loss(engine["trace"], target)
    return {
        "baseline_s": baseline_s,
        "baseline_loss": target,
        "engine_ttq_s": ttq,
        "ratio": baseline_s / ttq if ttq else 0.0,
        "engine_loss_at_baseline_time": loss_at(engine["trace"], baseline_s),
        "engine_final_loss": engine["final_loss"],
        "engine_s": engine_s,
        "engine_evals_per_s": engine["evaluations"] / engine_s,
        "baseline_evals_per_s": baseline["evaluations"] / baseline_s,
        "engine_peak_mb": engine["peak_rss_mb"],
        "baseline_peak_mb": baseline["peak_rss_mb"],
    }


def as_good(look: dict, baseline: dict) -> bool:
    """The target's reading of the look metric: no more style distance, no more content."""
    return look["style"] <= baseline["style"] and look["content"] <= baseline["content"]


def spread(values: list[float], fmt: str) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return (
        f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-"
        f"{format(max(values), fmt)})"
    )


def target_table(runs: list[dict]) -> str:
    get = lambda key: [r[key] for r in runs]  # noqa: E731
    stylize = get("stylize")
    baseline_looks = get("baseline_look")
    rows = [
        "| baseline 300 evals, s | `nst stylize` whole process, s | ratio | evaluations run "
        "| look style / content: baseline | look style / content: `nst stylize` "
        "| as good by the look |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| {spread(get('baseline_s'), '.1f')} | {spread([s['wall_s'] for s in stylize], '.1f')}"
        f" | {spread([r['baseline_s'] / r['stylize']['wall_s'] for r in runs], '.2f')}"
        f" | {spread([s['evaluations'] for s in stylize], '.0f')} of {stylize[0]['iterations']}"
        f" | {_look(baseline_looks)} | {_look([s['look'] for s in stylize])}"
        f" | {sum(as_good(r['stylize']['look'], r['baseline_look']) for r in runs)} of "
        f"{len(runs)} |",
    ]
    return "\n".join(rows)


def ttq_table(results: dict[int, list[dict]]) -> str:
    rows = [
        "| size | repeats | baseline 300 evals, s | engine time-to-quality, s | ratio "
        "| engine evals/s | baseline evals/s | final loss baseline / engine "
        "| engine loss at baseline's time | peak RSS engine / baseline, MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size, runs in results.items():
        get = lambda key, runs=runs: [r[key] for r in runs]  # noqa: E731
        rows.append(
            f"| {size} | {len(runs)} | {spread(get('baseline_s'), '.1f')}"
            f" | {spread(get('engine_ttq_s'), '.1f')}"
            f" | {spread(get('ratio'), '.2f')} | {spread(get('engine_evals_per_s'), '.2f')}"
            f" | {spread(get('baseline_evals_per_s'), '.2f')}"
            f" | {statistics.median(get('baseline_loss')):.4g} / "
            f"{statistics.median(get('engine_final_loss')):.4g}"
            f" | {spread(get('engine_loss_at_baseline_time'), '.4g')}"
            f" | {statistics.median(get('engine_peak_mb')):.0f} / "
            f"{statistics.median(get('baseline_peak_mb')):.0f} |"
        )
    return "\n".join(rows)


def _look(looks: list[dict]) -> str:
    """Median style and content distance of the look metric (bench/look.py)."""
    style = statistics.median(look["style"] for look in looks)
    content = statistics.median(look["content"] for look in looks)
    return f"{style:.3g} / {content:.2f}"


def looks_of_defaults(first: dict, folder: Path) -> list[dict]:
    """The defaults' look on each sample pair beside neural-style's published output."""
    rows = []
    for index, (label, content_name, style_name, reference_name) in enumerate(quality.PAIRS):
        content, style = SHARED / content_name, SHARED / style_name
        if not (content.exists() and style.exists()):
            continue
        content_image, style_image = _open(content), _open(style)
        metric = LookMetric(content_image, style_image, STYLIZE_SIZE)
        reference = SHARED / "reference" / reference_name
        if reference.exists():
            look = asdict(metric(_open(reference)))
            rows.append({"pair": label, "output": "neural-style (published)", "look": look})
        ours = first if index == 0 else measure_stylize(content, style, STYLIZE_SIZE, metric)
        rows.append({"pair": label, "output": "`nst stylize` defaults", **ours})
    if not rows:  # drawn inputs: the first stylize run is all there is
        rows.append({"pair": "drawn town x drawn swirls", "output": "defaults", **first})
    return rows


def looks_table(rows: list[dict]) -> str:
    lines = [
        "| pair | output | evaluations | style | colour | content |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        look = r["look"]
        lines.append(
            f"| {r['pair']} | {r['output']} | {r.get('evaluations', '')} | {look['style']:.3g} "
            f"| {look['colour']:.2f} | {look['content']:.2f} |"
        )
    return "\n".join(lines)


def _open(path: Path):
    return images.decode_image(path.read_bytes(), str(path))


def main() -> None:
    started = time.perf_counter()
    content_image, style_image, described = inputs()
    # `precision: auto` decides on first use and remembers; decide before anything is timed.
    devices = nst("devices").stdout.strip()
    precision = os.environ.get("NST_PRECISION", "auto")
    print(devices, flush=True)
    metric = LookMetric(content_image, style_image, STYLIZE_SIZE)
    results: dict[int, list[dict]] = {}
    with tempfile.TemporaryDirectory() as folder:
        content, style = input_files(Path(folder))
        for size, repeats in REPEATS.items():
            for repeat in range(repeats):
                baseline = measure("baseline", size)
                row = {
                    "baseline_s": baseline["trace"][-1][0],
                    "baseline_look": baseline["look"],
                }
                line = f"{size} px, repeat {repeat + 1}: baseline {row['baseline_s']:.1f} s"
                if repeat == 0:
                    # Every evaluation of the engine's trace counts here: no stopping rule.
                    settings = {"iterations": TTQ_ITERATIONS[size], "stop_tolerance": 0}
                    row["ttq"] = compare(baseline, measure("engine", size, settings))
                    ttq = row["ttq"]["engine_ttq_s"]
                    line += f"; engine reaches its loss in {ttq or float('nan'):.1f} s"
                if size == STYLIZE_SIZE:
                    row["stylize"] = measure_stylize(content, style, size, metric)
                    line += f"; nst stylize {row['stylize']['wall_s']:.1f} s"
                results.setdefault(size, []).append(row)
                print(line, flush=True)
        looks = looks_of_defaults(results[STYLIZE_SIZE][0]["stylize"], Path(folder))
    minutes = (time.perf_counter() - started) / 60
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    report = {
        "machine": machine(),
        "devices": devices,
        "inputs": described,
        "results": results,
        "looks": looks,
    }
    (out / "cpu.json").write_text(json.dumps(report, indent=2))
    decision = next((line.strip() for line in devices.splitlines() if "auto =" in line), "?")
    ttq = {size: [r["ttq"] for r in runs if "ttq" in r] for size, runs in results.items()}
    body = (
        f"Measured by `make bench` ({minutes:.1f} min) on {machine()}; inputs: {described}; "
        f"`precision: {precision}`, which `nst devices` resolves here as: {decision}.\n\n"
        f"**`nst stylize --size {STYLIZE_SIZE}` at its defaults against the baseline**, "
        f"medians of {len(results[STYLIZE_SIZE])} repeats with (min-max):\n\n"
        f"{target_table(results[STYLIZE_SIZE])}\n\n"
        "**Time-to-quality on the tutorial's objective**:\n\n"
        f"{ttq_table(ttq)}\n\n"
        f"**The defaults' look at {STYLIZE_SIZE} px beside neural-style's published outputs** "
        "(downscaled; bench/look.py):\n\n"
        f"{looks_table(looks)}"
    )
    write_section("cpu-bench", body)
    print(body)


if __name__ == "__main__":
    main()
