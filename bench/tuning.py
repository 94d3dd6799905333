"""`python -m bench.tuning`: the defaults' look on every pair of the tuning set, against the
engine's best look on that pair.

The tuning set is every content x every painting of `../shared/images` and its `tuning/`
folder (2 photos x 7 paintings). For each pair, the reference is the engine with 1,000
evaluations, the stopping rule off and the photo as the start; it takes hours on a 2-core
CPU, so each is kept in bench/results/tuning-reference.json (tracked) under a hash of its
resolved settings and size: a change of any default it takes recomputes it, a change of its
defaults' neighbours (the init or stopping rule the defaults use) does not. Each named
setting then runs on every pair, with the wall time of `stylize` and the look metric
(bench/look.py) of its output; the goal is a style and a content distance within 1.1x of
the reference's. Outputs go to bench/results/tuning/ for eyes, the table to
bench/results/tuning.json and into BENCHMARKS.md between the `tuning` markers.

python -m bench.tuning [--setting NAME=JSON ...] [--pair SUBSTRING ...] [--no-write]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

from PIL import Image

from bench.common import SHARED, machine, write_section
from bench.look import LookMetric
from nst_core.engine import images
from nst_core.engine.loop import network_for, stylize, stylize_pairs
from nst_core.engine.params import StyleParams
from nst_core.engine.targets import Pair

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "tuning"
SIZE = 256
REFERENCE_EVALS = 1000
REFERENCE_FILE = ROOT / "bench" / "results" / "tuning-reference.json"
# Pinned rather than taken from the defaults, so tuning the defaults' init and stopping
# keeps the references they are measured against.
REFERENCE = {"iterations": REFERENCE_EVALS, "stop_tolerance": 0.0, "init": "content"}
WITHIN = 1.1  # the goal: style and content distance at most this times the reference's
CONTENTS = ("tubingen.jpg", "tuning/amber.jpg")
PAINTINGS = (
    "starry_night.jpg",
    "the_scream.jpg",
    "tuning/udnie.jpg",
    "tuning/mosaic.jpg",
    "tuning/candy.jpg",
    "tuning/rain-princess-cropped.jpg",
    "tuning/picasso_selfport1907.jpg",
)
SETTINGS: dict[str, dict[str, Any]] = {"defaults": {}}


def _open(path: Path) -> Image.Image:
    return images.decode_image(path.read_bytes(), str(path))


def _stem(name: str) -> str:
    return Path(name).stem.split("_")[0].split("-")[0]


def tuning_pairs(only: list[str]) -> list[tuple[str, Path, Path]]:
    found = []
    for content in CONTENTS:
        for painting in PAINTINGS:
            label = f"{_stem(content)} x {_stem(painting)}"
            if only and not any(s in label for s in only):
                continue
            c, s = SHARED / content, SHARED / painting
            if not (c.exists() and s.exists()):
                raise SystemExit(f"{c} or {s} is missing: the tuning set is ../shared/images")
            found.append((label, c, s))
    return found


class Runner:
    """Runs settings on pairs with one network per precision, scoring each output."""

    def __init__(self) -> None:
        self.networks: dict[tuple[Any, ...], Any] = {}

    def network(self, params: StyleParams) -> Any:
        key = (params.weights, params.pooling, params.content_layers, params.style_layers)
        if key not in self.networks:
            self.networks[key] = network_for(params, "cpu")
        return self.networks[key]

    def run(self, label: str, metric: LookMetric, content, style, name: str, overrides) -> dict:
        params = StyleParams(size=SIZE, device="cpu", **overrides)
        network = self.network(params)
        started = time.perf_counter()
        result = stylize(Pair(content, [style], params), network=network)
        return self.score(label, metric, name, result, time.perf_counter() - started)

    def score(self, label: str, metric: LookMetric, name: str, result, seconds: float) -> dict:
        result.image.save(OUT / f"{label.replace(' ', '')}--{name.replace(' ', '_')}.png")
        look = metric(result.image)
        row = {
            "pair": label,
            "setting": name,
            "evaluations": result.evaluations,
            "seconds": round(seconds, 1),
            "precision": result.precision,
            "style": look.style,
            "colour": look.colour,
            "content": look.content,
            "layers": look.layers,
        }
        print(json.dumps(row), flush=True)
        return row


def references(runner: Runner, pairs, loaded) -> dict[str, dict]:
    """Each pair's reference, from the cache or computed: the pairs of one content share a
    batch (the same output size), which is what makes 14,000 evaluations affordable on a
    CPU; no pair's result depends on the others in its batch."""
    path = REFERENCE_FILE
    cached = json.loads(path.read_text()) if path.exists() else {}
    params = StyleParams(size=SIZE, device="cpu", **REFERENCE)
    version = reference_version(params)
    todo = [label for label, _, _ in pairs if cached.get(label, {}).get("version") != version]
    network = runner.network(params)
    for content_name in dict.fromkeys(label.split(" x ")[0] for label in todo):
        labels = [label for label in todo if label.startswith(content_name + " x ")]
        started = time.perf_counter()
        results = stylize_pairs(
            [Pair(loaded[label][1], [loaded[label][2]], params) for label in labels],
            network=network,
        )
        seconds = (time.perf_counter() - started) / len(labels)
        for label, result in zip(labels, results, strict=True):
            row = runner.score(label, loaded[label][0], "reference", result, seconds)
            cached[label] = {**row, "version": version}
        path.write_text(json.dumps(cached, indent=2))  # each content's pairs kept when done
    return cached


def reference_version(params: StyleParams) -> str:
    """What a cached reference was computed with: every resolved setting, hashed."""
    settings = json.dumps(params.model_dump(mode="json"), sort_keys=True)
    return f"{SIZE}px/" + hashlib.sha256(settings.encode()).hexdigest()[:16]


def table(rows: list[dict], reference: dict[str, dict]) -> str:
    lines = [
        "| pair | setting | evaluations | s | style | colour | content | style / ref. | "
        "content / ref. | within 1.1x |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for label in dict.fromkeys(r["pair"] for r in rows):
        ref = reference[label]
        for r in [ref, *(r for r in rows if r["pair"] == label)]:
            style, content = r["style"] / ref["style"], r["content"] / ref["content"]
            ok = "yes" if style <= WITHIN and content <= WITHIN else "**no**"
            lines.append(
                f"| {label} | {r['setting']} | {r['evaluations']} | {r['seconds']} | "
                f"{r['style']:.3g} | {r['colour']:.2f} | {r['content']:.2f} | {style:.2f} | "
                f"{content:.2f} | {'' if r is ref else ok} |"
            )
    return "\n".join(lines)


def summary(rows: list[dict], reference: dict[str, dict]) -> str:
    lines = []
    for name in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == name]
        held = sum(
            r["style"] <= WITHIN * reference[r["pair"]]["style"]
            and r["content"] <= WITHIN * reference[r["pair"]]["content"]
            for r in mine
        )
        seconds = [r["seconds"] for r in mine]
        worst = max(r["style"] / reference[r["pair"]]["style"] for r in mine)
        lines.append(
            f"- **{name}**: within 1.1x on {held} of {len(mine)} pairs; worst style ratio "
            f"{worst:.2f}; seconds per pair median {statistics.median(seconds):.1f} "
            f"({min(seconds):.1f}-{max(seconds):.1f})"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=JSON")
    parser.add_argument("--pair", action="append", default=[], metavar="SUBSTRING")
    parser.add_argument("--no-write", action="store_true", help="Leave BENCHMARKS.md alone.")
    args = parser.parse_args()
    settings = dict(SETTINGS)
    for item in args.setting:
        name, _, body = item.partition("=")
        settings[name] = json.loads(body)
    OUT.mkdir(parents=True, exist_ok=True)
    pairs = tuning_pairs(args.pair)
    loaded = {}
    for label, c, s in pairs:
        content, style = _open(c), _open(s)
        loaded[label] = (LookMetric(content, style, SIZE), content, style)
    runner = Runner()
    reference = references(runner, pairs, loaded)
    # Pair by pair, every setting in turn: whatever else loads the machine falls on all
    # settings alike, so their times stay comparable.
    rows = [
        runner.run(label, *loaded[label], name, overrides)
        for label, _, _ in pairs
        for name, overrides in settings.items()
    ]
    rows.sort(key=lambda row: list(settings).index(row["setting"]))
    body = table(rows, reference) + "\n\n" + summary(rows, reference)
    print(body)
    if not args.no_write:
        (ROOT / "bench" / "results" / "tuning.json").write_text(json.dumps(rows, indent=2))
        header = (
            f"Tuning set at {SIZE} px on {machine()}: each pair's reference is the engine with "
            f"{REFERENCE_EVALS} evaluations and the stopping rule off; outputs in "
            "bench/results/tuning/. Measured with `python -m bench.tuning`.\n\n"
        )
        write_section("tuning", header + body)


if __name__ == "__main__":
    main()
