"""Tiled evaluation against untiled: how far the default halo is from exact, what a tiled
evaluation costs, and whether the planner's tiled memory model predicts measured peaks.

- halo: at 256 px (tiles of 64 px, every layer up to relu5_1), the loss and gradient of
  tiled evaluations against the untiled one, for halos from 0 to the full reach;
- speed: seconds per evaluation at 512 px, untiled and in tiles (default and full halo);
- memory: a tiled run's peak in a fresh process against `memory_model.tiled_bytes` at 1024 and
  2048 px (`--large` adds 4096 px, which needs more memory than a 24 GB machine has and
  minutes per evaluation on a CPU); 4096 px is also planned under 8 GB, predicted only.

    python -m bench.tiling [--large] [--sections halo,speed,memory]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.common import inputs, machine, planning_job, write_section
from bench.memory import _restart_rss_peak, _status_bytes
from nst_core.batch import memory_model, units
from nst_core.engine.images import fit_size
from nst_core.engine.layers import reach
from nst_core.engine.loop import Scales, network_for, network_layers, stylize
from nst_core.engine.losses import gram
from nst_core.engine.objective import Features
from nst_core.engine.params import StyleParams
from nst_core.engine.steppers import LBFGSSteps
from nst_core.engine.targets import GramCache, Pair, Targets
from nst_core.engine.tiles import Tiling
from nst_core.engine.tiling import TiledObjective

ROOT = Path(__file__).resolve().parent.parent
HALOS = (0, 16, 32, 48, 64, 96)
SPEED_TILES = ((256, None), (128, None), (128, "full"))
MEMORY_SIZES = (1024, 2048)
# A memory run is planned under this share of its untiled estimate, so that it tiles; a
# budget much nearer the image's own state (the point, its gradient, L-BFGS's history and
# the content features, 620 bytes per pixel) leaves room only for tiny tiles, each sending
# its halo through the network again.
MEMORY_BUDGET_SHARE = 0.6


def scene(size: int):
    """(objective, point, params) at `size`: the sample pair, a point off the content."""
    torch.manual_seed(0)
    content, style, _ = inputs()
    params = StyleParams(size=size, device="cpu", precision="fp32")
    features = Features(network_for(params, "cpu"), torch.device("cpu"), "fp32")
    pair = Pair(content, [style], params)
    targets = Targets([pair], torch.device("cpu"), features, GramCache(), gram, ("bench",))
    objective, start = Scales(targets, LBFGSSteps, None, 1).objective(fit_size(*content.size, size))
    point = (start + 0.1 * torch.randn_like(start)).clamp(0, 1)
    return objective, point, params


def halo_errors() -> list[dict]:
    objective, point, params = scene(256)
    total, parts, grad = objective.evaluate(point)
    layers = network_layers(params)
    rows = []
    for halo in HALOS:
        tiling = Tiling.for_layers(64, layers, halo=halo)
        t_total, t_parts, t_grad = TiledObjective(objective, tiling).evaluate(point)
        rows.append(
            {
                "halo": halo,
                "loss": ((t_total - total).abs() / total).item(),
                "style": ((t_parts[1] - parts[1]).abs() / parts[1]).item(),
                "content": ((t_parts[0] - parts[0]).abs() / parts[0]).item(),
                "gradient": ((t_grad - grad).norm() / grad.norm()).item(),
            }
        )
        print(f"halo {halo:>3}: {rows[-1]}", flush=True)
    return rows


def speed(repeats: int = 5) -> list[dict]:
    objective, point, params = scene(512)
    layers = network_layers(params)
    height, width = point.shape[-2:]
    configs = [("untiled", objective, height * width)]
    for tile, halo in SPEED_TILES:
        tiling = Tiling.for_layers(tile, layers, halo=reach(layers) if halo else None)
        name = f"tiles of {tiling.size}, halo {tiling.halo}"
        configs.append(
            (name, TiledObjective(objective, tiling), tiling.network_pixels(height, width))
        )
    rows = []
    for name, evaluator, pixels in configs:
        evaluator.evaluate(point)  # warm: oneDNN builds its primitives per shape
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            evaluator.evaluate(point)
            seconds.append(time.perf_counter() - started)
        rows.append(
            {
                "how": name,
                "median_s": statistics.median(seconds),
                "min_s": min(seconds),
                "max_s": max(seconds),
                "network_pixels": pixels,
            }
        )
        print(rows[-1], flush=True)
    return rows


def memory_one(size: int) -> dict:
    """One tiled run of 2 evaluations at `size`, planned under MEMORY_BUDGET, measured in
    this process after a 1-evaluation warm-up at the same shapes."""
    content, style, _ = inputs()
    params = StyleParams(size=size, iterations=2, device="cpu", precision="fp32", stop_tolerance=0)
    width, height = fit_size(*content.size, size)
    budget = int(MEMORY_BUDGET_SHARE * memory_model.estimate_bytes(width, height, params))
    tile = _planned_tile(params, width, height, budget)
    params = params.model_copy(update={"tile": tile})
    pair = Pair(content, [style], params)
    stylize(Pair(content, [style], params.model_copy(update={"iterations": 1})))
    base = _restart_rss_peak()
    result = stylize(pair)
    peak = _status_bytes("VmHWM") - base
    predicted = memory_model.tiled_bytes(width, height, params, tile)
    whole = memory_model.estimate_bytes(width, height, params)
    return {
        "size": size,
        "output": [width, height],
        "tiling": result.tiling[-1].model_dump(exclude_unset=True),
        "budget_mb": budget / 2**20,
        "measured_mb": peak / 2**20,
        "predicted_mb": predicted / 2**20,
        "untiled_predicted_mb": whole / 2**20,
        "error": predicted / peak - 1,
    }


def _planned_tile(params: StyleParams, width: int, height: int, budget: int) -> int:
    planned = units.in_tiles(planning_job(params, width, height), budget)
    if planned is None:
        raise SystemExit(f"{width}x{height} does not fit {budget / 2**30:.2f} GB in tiles")
    return planned.execution.tile


def memory(sizes) -> list[dict]:
    rows = []
    for size in sizes:  # a fresh process each, so RSS peaks do not carry over
        out = subprocess.run(
            [sys.executable, "-m", "bench.tiling", "--memory-one", str(size)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    return rows


def report(results: dict) -> str:
    lines = [f"`python -m bench.tiling` on {machine()}; {results['inputs']}."]
    if "halo" in results:
        lines += [
            "",
            "Halo against exactness, 256 px, tiles of 64 px, layers to relu5_1 (reach 85 px):",
            "",
            "| halo, px | loss | style | content | gradient |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {r['halo']} | {r['loss']:.1e} | {r['style']:.1e} | {r['content']:.1e} | "
            f"{r['gradient']:.1e} |"
            for r in results["halo"]
        ]
        lines += ["", "(relative errors against the untiled evaluation)"]
    if "speed" in results:
        untiled = results["speed"][0]["median_s"]
        lines += [
            "",
            "Seconds per evaluation at 512x384 (median of 5 after a warm-up, min-max):",
            "",
            "| how | s / evaluation | against untiled | pixels through the network per pass |",
            "| --- | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {r['how']} | {r['median_s']:.2f} ({r['min_s']:.2f}-{r['max_s']:.2f}) | "
            f"{r['median_s'] / untiled:.2f}x | {r['network_pixels']:,} |"
            for r in results["speed"]
        ]
    if "memory" in results:
        lines += [
            "",
            f"Peak memory of tiled runs, each planned under {MEMORY_BUDGET_SHARE:.0%} of its "
            "untiled estimate (fresh process, peak RSS rise over a warm-up):",
            "",
            "| size | budget MB | tiles | measured MB | predicted MB | error | untiled, "
            "predicted MB |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {r['output'][0]}x{r['output'][1]} | {r['budget_mb']:.0f} | "
            f"{r['tiling']['tiles']} of "
            f"{r['tiling']['tile']} px, halo {r['tiling']['halo']} | {r['measured_mb']:.0f} | "
            f"{r['predicted_mb']:.0f} | {r['error']:+.0%} | {r['untiled_predicted_mb']:.0f} |"
            for r in results["memory"]
        ]
    if "memory" in results and not any(r["size"] == 4096 for r in results["memory"]):
        width, height, tile, tiled, whole = predicted_4096()
        lines += [
            "",
            f"Not measured here, the model's prediction for {width}x{height} (fp32): "
            f"{whole / 2**30:.1f} GB untiled; planned under 8 GB, tiles of {tile} px, "
            f"{tiled / 2**30:.1f} GB.",
        ]
    return "\n".join(lines)


def predicted_4096() -> tuple[int, int, int, int, int]:
    """(width, height, tile, tiled bytes, untiled bytes) of the sample at 4096 px, fp32,
    planned under 8 GB."""
    content, _, _ = inputs()
    params = StyleParams(size=4096, device="cpu", precision="fp32")
    width, height = fit_size(*content.size, 4096)
    tile = _planned_tile(params, width, height, 8 * 2**30)
    tiled = memory_model.tiled_bytes(width, height, params, tile)
    return width, height, tile, tiled, memory_model.estimate_bytes(width, height, params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="halo,speed,memory")
    parser.add_argument("--large", action="store_true", help="also 4096 px in the memory run")
    parser.add_argument("--memory-one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_one:
        print(json.dumps(memory_one(args.memory_one)))
        return
    sections = args.sections.split(",")
    out = ROOT / "bench" / "results" / "tiling.json"
    # A run of some sections keeps the others' last figures.
    results = json.loads(out.read_text()) if out.exists() else {}
    results["inputs"] = inputs()[2]
    if "halo" in sections:
        results["halo"] = halo_errors()
    if "speed" in sections:
        results["speed"] = speed()
    if "memory" in sections:
        results["memory"] = memory(MEMORY_SIZES + ((4096,) if args.large else ()))
    out.write_text(json.dumps(results, indent=2))
    write_section("tiling", report(results))
    print(report(results))


if __name__ == "__main__":
    main()
