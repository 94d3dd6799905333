"""`precision: auto`, decided by timing on the machine at hand and remembered there.

CPU flags do not say whether bf16 pays: it ran 4x faster than fp32 on an Intel with AMX,
4x slower on one without, and 1.57x faster on an AMD Zen 4 with AVX512-BF16 but no AMX. So on
first use for a device (its model and the torch version), the network's forward + input
gradient is timed in fp32 and in bf16 autocast, first at a small shape (a bf16 that is far
slower there is settled in seconds), then at a representative one; the faster is kept in
`$XDG_CACHE_HOME/nst-batch/precision.json` (default ~/.cache). Grams and losses stay fp32
either way (losses.py). NST_PRECISION=fp32|bf16 overrides the decision; `nst devices` shows
it and the timings it came from, and `nst devices --recalibrate` measures again.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

OVERRIDE = "NST_PRECISION"
# bf16 must win by this much to be chosen: a tie is not worth its rounding.
MARGIN = 0.9
# The shape timed: what a unit at the default size looks like on each kind of device.
SIDE = {"cpu": 256, "cuda": 512}
# A first look at a small shape: where bf16 is far slower (20x on a 2-core EPYC without
# AVX512-BF16: 35 s a step at 256 px), that settles it in a few seconds.
PROBE_SIDE, PROBE_SLOWER = 64, 2.0
# Timer: (device, precision, side) -> seconds for one forward + input gradient.
Timer = Callable[[torch.device, str, int], float]


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nst-batch" / "precision.json"


def device_model(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model()


def device_identity(device: torch.device) -> str:
    """What a decision holds for: the device's model and the torch version."""
    return f"{device.type}: {device_model(device)}; torch {torch.__version__}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def decide(
    device: torch.device,
    *,
    timer: Timer | None = None,
    fresh: bool = False,
    override: str | None = None,
) -> dict:
    """The precision `auto` means on `device`: {precision, source, and the timings}.
    `override` (the settings' NST_PRECISION) decides without measuring."""
    if override:
        return {"precision": override, "source": OVERRIDE}
    if device.type == "mps" or (device.type == "cuda" and not torch.cuda.is_bf16_supported()):
        return {"precision": "fp32", "source": "no bf16 autocast on this device"}
    identity = device_identity(device)
    decisions = _read()
    if not fresh and identity in decisions:
        return decisions[identity]
    decision = _measure(device, timer or time_step)
    _write({**decisions, identity: decision})
    return decision


def _measure(device: torch.device, timer: Timer) -> dict:
    side = PROBE_SIDE
    fp32_s, bf16_s = timer(device, "fp32", side), timer(device, "bf16", side)
    if bf16_s < PROBE_SLOWER * fp32_s:  # close enough to need the representative shape
        side = SIDE.get(device.type, 256)
        fp32_s, bf16_s = timer(device, "fp32", side), timer(device, "bf16", side)
    return {
        "precision": "bf16" if bf16_s < MARGIN * fp32_s else "fp32",
        "source": f"measured {datetime.now(UTC).isoformat(timespec='seconds')}",
        "fp32_s": round(fp32_s, 4),
        "bf16_s": round(bf16_s, 4),
        "shape": f"{side}x{side}",
    }


def _read() -> dict:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: measure again
    return data if isinstance(data, dict) else {}


def _write(decisions: dict) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(f".{os.getpid()}.part")
        part.write_text(json.dumps(decisions, indent=2))
        part.replace(path)
    except OSError:
        pass  # an unwritable cache costs a few seconds next time, nothing else


def time_step(device: torch.device, precision: str, side: int, repeats: int | None = None) -> float:
    """Median seconds of VGG19's forward + input gradient through the default layers at
    side x side, channels_last, after a warm-up, in `precision` (the probe: one step)."""
    repeats = repeats or (1 if side <= PROBE_SIDE else 3)
    from nst_core.engine.params import StyleParams, network_layers
    from nst_core.engine.vgg import load_vgg

    params = StyleParams()
    network = load_vgg(network_layers(params), params.weights, params.pooling, str(device))
    network = network.to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, side, side, device=device).contiguous(memory_format=torch.channels_last)
    times = []
    for _ in range(repeats + 1):
        image = x.clone().requires_grad_(True)
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            feats = network(image)
        sum(f.float().square().mean() for f in feats.values()).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])
