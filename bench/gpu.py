"""The GPU benchmark: batched engine against the one-at-a-time fp32 baseline at 512 px.

Writes one JSON file (argument 1, default bench/results/gpu.json) with:
- baseline images/hour: tutorial-style fp32 L-BFGS, 300 evaluations per image;
- engine images/hour at its defaults on a batch of 16 pairs (bf16 where it pays);
- FLOP utilisation: image-iterations/s x 379 GFLOP (forward + input gradient through
  relu5_1 at 512x512) against the device's bf16 dense peak;
- the memory model's predictions against torch's measured peaks (bench/memory.py grid).
`--dry-run` does the same at toy sizes on any device, to check the script end to end.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from bench.baseline import run_baseline
from bench.common import tensors
from bench.memory import GPU_GRID, one, percent
from nst_core import demo
from nst_core.params import StyleParams
from nst_core.transfer import Pair, stylize_batch

GFLOP_PER_IMAGE_ITERATION_512 = 379.0
# Dense bf16 tensor-core peaks, TFLOP/s (vendor data sheets; sparsity excluded).
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    dry = "--dry-run" in sys.argv
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    default = (
        Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(__file__).parent / "results"
    )
    out = Path(args[0]) if args else default / ("gpu-dry-run.json" if dry else "gpu.json")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size, batch, evals = (32, 2, 4) if dry else (512, 16, 300)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    content, style = demo.town(size * 4 // 3, size), demo.swirls(size, size)
    params = StyleParams(size=size, device=device, iterations=evals)
    report: dict = {
        "device": name,
        "torch": torch.__version__,
        "size": size,
        "batch": batch,
        "dry_run": dry,
    }

    # Baseline: one pair at a time, fp32 NCHW, 300 evaluations (two images, the second timed).
    content_t, style_t = (t.to(device) for t in tensors(content, style, size))
    baseline_params = params.model_copy(update={"device": device})
    run_baseline(content_t, style_t, baseline_params, evals)
    sync(device)
    started = time.perf_counter()
    run_baseline(content_t, style_t, baseline_params, evals)
    sync(device)
    baseline_s = time.perf_counter() - started
    report["baseline_s_per_image"] = baseline_s
    report["baseline_images_per_hour"] = 3600 / baseline_s

    # Engine: its defaults, one batch of `batch` pairs (a warm-up batch first).
    pairs = [Pair(content, [style], params) for _ in range(batch)]
    stylize_batch(pairs[:1] if not dry else pairs)
    sync(device)
    started = time.perf_counter()
    results = stylize_batch(pairs)
    sync(device)
    engine_s = time.perf_counter() - started
    report["engine_precision"] = results[0].precision
    report["engine_s_per_batch"] = engine_s
    report["engine_images_per_hour"] = 3600 * batch / engine_s
    report["speedup_images_per_hour"] = (
        report["engine_images_per_hour"] / report["baseline_images_per_hour"]
    )
    image_iterations_per_s = batch * evals / engine_s
    report["image_iterations_per_s"] = image_iterations_per_s
    tflops = image_iterations_per_s * GFLOP_PER_IMAGE_ITERATION_512 * (size / 512) ** 2 / 1000
    report["achieved_tflops"] = tflops
    peak = peak_tflops(name)
    report["bf16_peak_tflops"] = peak
    report["flop_utilisation"] = tflops / peak if peak else None

    grid = [(32, 1), (32, 2)] if dry else GPU_GRID
    report["memory_model"] = [one(s, b, device, precision="auto") for s, b in grid]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "memory_model"}, indent=2))
    for row in report["memory_model"]:
        print(
            f"memory {row['size']} px x{row['batch']}: measured {row['measured_mb']:.0f} MB, "
            f"predicted {row['predicted_mb']:.0f} MB ({percent(row['error'])})"
        )


if __name__ == "__main__":
    main()
