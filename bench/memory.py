"""Does the planner's memory model (batch/memory_model.py) predict measured peaks within 20%?

Each configuration is first run once for one evaluation at its own shapes, so one-off
costs are not counted: cuDNN's autotuning workspaces, oneDNN's primitives, the network and
style targets. CPU: each configuration then runs in a fresh process whose peak RSS counter
is restarted (/proc/self/clear_refs) after freed memory goes back to the OS; the batch's
peak is that counter's rise. CUDA: torch's peak allocated bytes.

    python -m bench.memory                 # CPU grid that fits this machine
    python -m bench.memory --device cuda   # the full grid, 128-1024 px x batch 1-16
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch

from bench.common import machine, write_section
from nst_core.batch import demo
from nst_core.batch.memory_model import estimate_bytes
from nst_core.engine.images import fit_size
from nst_core.engine.loop import stylize_pairs
from nst_core.engine.params import StyleParams
from nst_core.engine.targets import Pair

ROOT = Path(__file__).resolve().parent.parent
CPU_GRID = [(128, 1), (128, 4), (128, 16), (256, 1), (256, 4), (512, 1), (512, 2), (1024, 1)]
GPU_GRID = [(s, b) for s in (128, 256, 512, 1024) for b in (1, 4, 16)]


def one(size: int, batch: int, device: str, precision: str = "fp32") -> dict:
    """Measure one configuration in this process."""
    params = StyleParams(size=size, iterations=4, device=device, precision=precision)
    content, style = demo.town(size * 4 // 3 + 1, size), demo.swirls(size, size)
    pairs = [Pair(content, [style], params) for _ in range(batch)]
    # Warm up at the measured shapes: cuDNN's one-off autotuning tries algorithms with
    # workspaces of up to all free memory (it skips those that do not fit), and oneDNN
    # builds and caches its primitives per shape; neither is the batch's own need.
    stylize_pairs([replace(p, params=params.model_copy(update={"iterations": 1})) for p in pairs])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _restart_rss_peak()
    result = stylize_pairs(pairs)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _status_bytes("VmHWM") - base
    width, height = fit_size(*content.size, size)
    resolved = params.model_copy(update={"precision": result[0].precision})
    predicted = estimate_bytes(width, height, resolved, pairs=batch)
    return {
        "size": size,
        "batch": batch,
        "device": device,
        "precision": result[0].precision,
        "measured_mb": peak / 2**20,
        "predicted_mb": predicted / 2**20,
        "error": predicted / peak - 1 if peak > 0 else None,
    }


def _restart_rss_peak() -> int:
    """Give freed memory back to the OS and restart the kernel's peak RSS; the RSS now.

    Without the trim, glibc keeps the warm-up's freed heap resident and the measured run
    reuses it without raising RSS, so its peak would read low.
    """
    gc.collect()
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS (VmHWM) to now
    return _status_bytes("VmRSS")


def _status_bytes(field: str) -> int:
    """A `kB` line of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def main() -> None:
    device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
    if "--one" in sys.argv:
        size, batch = map(int, sys.argv[sys.argv.index("--one") + 1].split("x"))
        print(json.dumps(one(size, batch, device)))
        return
    rows = []
    for size, batch in GPU_GRID if device.startswith("cuda") else CPU_GRID:
        if device.startswith("cuda"):
            rows.append(one(size, batch, device, precision="auto"))
        else:  # a fresh process per configuration, so RSS peaks do not carry over
            out = subprocess.run(
                [sys.executable, "-m", "bench.memory", "--one", f"{size}x{batch}"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        row = rows[-1]
        print(
            f"{row['size']:>5} px x{row['batch']:>3}: measured {row['measured_mb']:8.0f} MB, "
            f"predicted {row['predicted_mb']:8.0f} MB ({percent(row['error'])})",
            flush=True,
        )
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    kind = device.split(":")[0]
    (out_dir / f"memory-{kind}.json").write_text(json.dumps(rows, indent=2))
    lines = [
        "| size | batch | precision | measured MB | predicted MB | error |",
        "| ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['size']} | {r['batch']} | {r['precision']} | {r['measured_mb']:.0f} | "
        f"{r['predicted_mb']:.0f} | {percent(r['error'])} |"
        for r in rows
    ]
    write_section(
        f"memory-bench-{kind}",
        f"`python -m bench.memory --device {device}` on {machine()}:\n\n" + "\n".join(lines),
    )


def percent(error: float | None) -> str:
    return "n/a" if error is None else f"{error:+.0%}"


if __name__ == "__main__":
    main()
