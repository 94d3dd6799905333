"""`python -m bench.stopping`: what the per-pair stopping rule saves and what it costs in look.

For each sample pair (and the drawn pair) at 256 px, one batch holds the same pair under each
rule: off (every iteration) and the candidates. Pairs with different rules may share a batch,
and one that stops leaves it, so every rule's output is what it would be alone. Reported per
rule: evaluations run, the share saved against off, and the look metric (bench/look.py) of
its output beside off's. Outputs go to bench/results/stopping/ for eyes; the table to
bench/results/stopping.json and into BENCHMARKS.md between the `stopping` markers.

python -m bench.stopping [--rule WINDOW:TOLERANCE ...] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from bench.common import SHARED, machine, write_section
from bench.look import LookMetric
from nst_core.batch import demo
from nst_core.engine import images
from nst_core.engine.loop import stylize_pairs
from nst_core.engine.params import StyleParams
from nst_core.engine.targets import Pair

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "stopping"
SIZE = 256
# (window, tolerance) candidates; (0, 0.0) is the rule off.
RULES = ((0, 0.0), (20, 0.01), (20, 0.005), (10, 0.02))
PAIRS = (
    ("tubingen x starry_night", "tubingen.jpg", "starry_night.jpg"),
    ("tubingen x the_scream", "tubingen.jpg", "the_scream.jpg"),
)


def pairs() -> list[tuple[str, object, object]]:
    found = []
    for label, content, style in PAIRS:
        if (SHARED / content).exists() and (SHARED / style).exists():
            found.append((label, _open(SHARED / content), _open(SHARED / style)))
    found.append(("drawn town x drawn swirls", demo.town(1024, 768), demo.swirls(1024, 1024)))
    return found


def _open(path: Path):
    return images.decode_image(path.read_bytes(), str(path))


def label(rule: tuple[int, float]) -> str:
    window, tolerance = rule
    return "off" if tolerance == 0 else f"{tolerance:g} over {window}"


def run(rules=RULES, size: int = SIZE) -> list[dict]:
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, content, style in pairs():
        metric = LookMetric(content, style, size)
        settings = [
            StyleParams(
                size=size,
                device="cpu",
                precision="fp32",
                stop_tolerance=tolerance,
                stop_window=max(window, 1),
            )
            for window, tolerance in rules
        ]
        started = time.perf_counter()
        results = stylize_pairs([Pair(content, [style], params) for params in settings])
        seconds = time.perf_counter() - started
        off = results[0].evaluations
        for rule, result in zip(rules, results, strict=True):
            stem = f"{name}--{label(rule)}".replace(" ", "_")
            result.image.save(OUT / f"{stem}.png")
            rows.append(
                {
                    "pair": name,
                    "rule": label(rule),
                    "evaluations": result.evaluations,
                    "saved": 1 - result.evaluations / off,
                    "look": asdict(metric(result.image)),
                    "batch_s": round(seconds, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| pair | rule (tolerance over window) | evaluations | saved | style | colour | content |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        look = r["look"]
        lines.append(
            f"| {r['pair']} | {r['rule']} | {r['evaluations']} | {r['saved']:.0%} | "
            f"{look['style']:.3g} | {look['colour']:.3f} | {look['content']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rule", action="append", default=[], metavar="WINDOW:TOLERANCE")
    parser.add_argument("--no-write", action="store_true", help="Leave BENCHMARKS.md alone.")
    args = parser.parse_args()
    rules = RULES
    if args.rule:
        rules = ((0, 0.0), *((int(w), float(t)) for w, t in (r.split(":") for r in args.rule)))
    rows = run(rules)
    print(table(rows))
    if not args.no_write:
        (ROOT / "bench" / "results" / "stopping.json").write_text(json.dumps(rows, indent=2))
        body = (
            f"Stopping rule at {SIZE} px, {StyleParams().iterations} iterations, fp32, on "
            f"{machine()}; look metric of each output (bench/look.py); outputs in "
            "bench/results/stopping/.\n\n" + table(rows)
        )
        write_section("stopping", body)


if __name__ == "__main__":
    main()
