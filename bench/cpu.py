"""`make bench`: the engine against the tutorial-style baseline, on this CPU, both on the
tutorial's objective (`loss: gatys`, content 1, style 50), so their losses compare; the look
metric (bench/look.py) of each output is reported beside them. `bench.quality` then scores
the engine's defaults against neural-style's published outputs.

For 128 and 256 px, three repeats each, alternating baseline and engine runs in fresh
processes (bench/run_one.py), on the same inputs, size and weights. Every figure is a
median with its spread (min-max). Results go to bench/results/cpu.json and into
BENCHMARKS.md between the markers.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import inputs, loss_at, machine, time_to_loss, write_section

ROOT = Path(__file__).resolve().parent.parent
SIZES = (128, 256)
REPEATS = 3


def measure(mode: str, size: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.run_one", mode, str(size)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


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
        "baseline_look": baseline["look"],
        "engine_look": engine["look"],
    }


def spread(values: list[float], fmt: str) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return (
        f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-"
        f"{format(max(values), fmt)})"
    )


def table(results: dict[int, list[dict]]) -> str:
    rows = [
        "| size | baseline 300 evals, s | engine time-to-quality, s | ratio | engine evals/s "
        "| baseline evals/s | final loss baseline / engine | engine loss at baseline's time "
        "| peak RSS engine / baseline, MB | look style / content, baseline / engine |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size, runs in results.items():
        get = lambda key, runs=runs: [r[key] for r in runs]  # noqa: E731
        rows.append(
            f"| {size} | {spread(get('baseline_s'), '.1f')} | {spread(get('engine_ttq_s'), '.1f')}"
            f" | {spread(get('ratio'), '.2f')} | {spread(get('engine_evals_per_s'), '.2f')}"
            f" | {spread(get('baseline_evals_per_s'), '.2f')}"
            f" | {statistics.median(get('baseline_loss')):.4g} / "
            f"{statistics.median(get('engine_final_loss')):.4g}"
            f" | {spread(get('engine_loss_at_baseline_time'), '.4g')}"
            f" | {statistics.median(get('engine_peak_mb')):.0f} / "
            f"{statistics.median(get('baseline_peak_mb')):.0f}"
            f" | {_look(get('baseline_look'))} / {_look(get('engine_look'))} |"
        )
    return "\n".join(rows)


def _look(looks: list[dict]) -> str:
    """Median style and content distance of the look metric (bench/look.py)."""
    style = statistics.median(look["style"] for look in looks)
    content = statistics.median(look["content"] for look in looks)
    return f"{style:.3g} / {content:.2f}"


def main() -> None:
    started = time.perf_counter()
    _, _, described = inputs()
    results: dict[int, list[dict]] = {}
    for size in SIZES:
        for repeat in range(REPEATS):
            baseline, engine = measure("baseline", size), measure("engine", size)
            results.setdefault(size, []).append(compare(baseline, engine))
            last = results[size][-1]
            print(
                f"{size} px, repeat {repeat + 1}: baseline {last['baseline_s']:.1f} s, engine "
                f"reaches its loss in {last['engine_ttq_s'] or float('nan'):.1f} s "
                f"(ratio {last['ratio']:.2f})",
                flush=True,
            )
    minutes = (time.perf_counter() - started) / 60
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "cpu.json").write_text(
        json.dumps({"machine": machine(), "inputs": described, "results": results}, indent=2)
    )
    write_section(
        "cpu-bench",
        f"Measured by `make bench` ({minutes:.1f} min) on {machine()}; inputs: {described}; "
        f"medians of {REPEATS} repeats with (min-max).\n\n{table(results)}",
    )
    print(table(results))


if __name__ == "__main__":
    main()
