"""Work units: jobs grouped by what can share one batch, sized to fit one device's memory.

The memory model is per output pixel per pair: activations kept for the backward pass of
VGG19 up to relu5_1, their gradients, and L-BFGS's curvature history. bench/ checks it
against measured peaks; the budget is a setting because a device is often shared.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import replace

from nst_core.batch.jobs import Job
from nst_core.engine.images import fit_size
from nst_core.engine.layers import channels, min_side, pools_through, reach
from nst_core.engine.params import StyleParams

# Bytes per output pixel per pair for the network's activations and gradients, by precision.
# fp32: fitted to peaks measured on the CPU (bench/memory.py, BENCHMARKS.md: 128-1024 px,
# batches 1-16); on an H200 it over-predicts by 16-19%. bf16: measured on an H200, within
# 7% from 256 px up.
NETWORK_BYTES_PER_PIXEL = {"fp32": 3_500, "bf16": 2_300}
# Per batch, whatever its size: the network's weights in use, the style targets and the
# library workspaces. Dominant only for small batches (128 px x 1 measured 63 MB on the
# H200 and 67-70 MB on the CPU, against 33 and 47 MB from the per-pixel terms alone).
FIXED_BYTES = 20 * 2**20
# A style image's forward pass (no gradient) while its Grams are computed, per pixel of the
# style image: 1,051 B/px at 512 px and 771 B/px at 1024 px measured on the CPU (fp32,
# AMD EPYC, features of five style layers kept). It runs before the optimisation, so it
# counts only when it is larger than the optimisation's own peak (a large style_scale).
STYLE_FORWARD_BYTES_PER_PIXEL = 1_100
DEFAULT_CPU_BUDGET_GB = 4.0
MAX_BATCH = 16
# Tile sizes tried, largest first, for a job with `tile: auto` that does not fit whole.
TILE_SIZES = (2048, 1024, 512, 256, 128, 64, 32)


def gram_bytes(params: StyleParams) -> int:
    """The fp32 Gram matrices of one style image: C x C per style layer."""
    return sum(channels(layer) ** 2 * 4 for layer in params.style_layers)


def estimate_bytes(
    width: int, height: int, params: StyleParams, *, batch: int = 1, styles: int = 1
) -> int:
    """Peak memory of one batch at (width, height) whose pairs blend `styles` styles each;
    `auto` precision counts as fp32.

    The planner sizes units with the batch-of-1 figure per pair, so it counts the fixed
    part once per pair: on the safe side, and only noticeably so for tiny images.
    """
    per_pixel = NETWORK_BYTES_PER_PIXEL["bf16" if params.precision == "bf16" else "fp32"]
    if params.optimizer == "lbfgs":
        # s and y history, 3 fp32 values per pixel each, plus x, g, d and trial buffers.
        per_pixel += params.lbfgs_history * 2 * 3 * 4 + 6 * 3 * 4
    optimisation = width * height * per_pixel * batch
    style_side = max(width, height) * params.style_scale  # the style's aspect is unknown here
    style_forward = int(style_side**2 * STYLE_FORWARD_BYTES_PER_PIXEL)
    targets = gram_bytes(params) * styles * batch  # every style's Grams stay cached
    return FIXED_BYTES + max(optimisation, style_forward) + targets


def tiled_bytes(
    width: int, height: int, params: StyleParams, tile: int, *, batch: int = 1, styles: int = 1
) -> int:
    """Peak memory of a batch at (width, height) run in tiles of `tile` pixels: the network
    sees one tile and its halo at a time, while the whole image's state stays (the image, its
    gradient and best point, L-BFGS's history, the content targets' feature maps)."""
    layers = tuple(dict.fromkeys(params.content_layers + params.style_layers))
    align = min_side(layers)
    tile = math.ceil(tile / align) * align
    halo = math.ceil(reach(layers) / align) * align
    crop = min(width, tile + 2 * halo) * min(height, tile + 2 * halo)
    per_pixel = NETWORK_BYTES_PER_PIXEL["bf16" if params.precision == "bf16" else "fp32"]
    network = crop * per_pixel * batch
    state_per_pixel = 3 * 3 * 4  # the point, its gradient, the best point: fp32 RGB
    if params.optimizer == "lbfgs":
        state_per_pixel += params.lbfgs_history * 2 * 3 * 4 + 6 * 3 * 4
    for layer in params.content_layers:
        state_per_pixel += channels(layer) * 4 / 4 ** pools_through(layer)
    state = int(width * height * state_per_pixel * batch)
    style_side = max(width, height) * params.style_scale
    style_forward = int(min(style_side**2, crop) * STYLE_FORWARD_BYTES_PER_PIXEL)
    targets = gram_bytes(params) * styles * batch
    return FIXED_BYTES + max(network, style_forward) + state + targets


def job_bytes(job: Job) -> int | None:
    """A job's estimated peak alone on a device (tiled when its params say so), or None
    when its content size is unknown."""
    size = output_size(job)
    if size is None:
        return None
    tile = job.params.tile_size(size)
    if tile is not None:
        return tiled_bytes(*size, job.params, tile, styles=len(job.styles))
    return estimate_bytes(*size, job.params, styles=len(job.styles))


def in_tiles(job: Job, budget_bytes: int) -> Job | None:
    """The job set to run in the largest tiles that fit `budget_bytes`, when its `tile` is
    auto and some tile does; else None. Tiling is how, not what: the job key stays."""
    size = output_size(job)
    if job.params.tile != "auto" or size is None:
        return None
    for tile in TILE_SIZES:
        if tile < max(size):
            need = tiled_bytes(*size, job.params, tile, styles=len(job.styles))
            if need <= budget_bytes:
                return replace(job, params=job.params.model_copy(update={"tile": tile}))
    return None


def memory_budget_bytes(device: str) -> int:
    """NST_MEMORY_BUDGET_GB, else 80% of a CUDA device's memory, else 4 GB on the CPU."""
    setting = os.environ.get("NST_MEMORY_BUDGET_GB")
    if setting:
        return int(float(setting) * 1024**3)
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.get_device_properties(device).total_memory * 0.8)
    return int(DEFAULT_CPU_BUDGET_GB * 1024**3)


def output_size(job: Job) -> tuple[int, int] | None:
    if job.content_size is None:
        return None
    return fit_size(*job.content_size, job.params.size)


def split_unfit(jobs: list[Job], budget_bytes: int) -> tuple[list[Job], list[tuple[Job, int]]]:
    """(jobs that fit the budget alone, whole or in tiles, (job, estimated bytes) for those
    that do not fit even in tiles)."""
    fitting, unfit = [], []
    for job in jobs:
        need = job_bytes(job)
        if need is None or need <= budget_bytes:
            fitting.append(job)
        elif (tiled := in_tiles(job, budget_bytes)) is not None:
            fitting.append(tiled)
        else:
            unfit.append((job, min(need, _smallest_tiles_bytes(job))))
    return fitting, unfit


def _smallest_tiles_bytes(job: Job) -> int:
    size = output_size(job)
    if job.params.tile != "auto" or size is None:
        return 2**62
    return tiled_bytes(*size, job.params, TILE_SIZES[-1], styles=len(job.styles))


def unfit_reason(job: Job, need: int, budget_bytes: int) -> str:
    how = "even alone" if job.params.tile == "off" else "even alone and in tiles"
    fix = "lower size or style_scale"
    if job.params.tile == "off":
        fix += ", or let it run in tiles (tile: auto)"
    return (
        f"needs about {need / 2**30:,.2f} GB {how}, over the memory budget of "
        f"{budget_bytes / 2**30:,.2f} GB (NST_MEMORY_BUDGET_GB); {fix}"
    )


def plan_units(jobs: list[Job], budget_bytes: int, max_batch: int = MAX_BATCH) -> list[list[Job]]:
    """Group jobs that may share a batch (same output size and batch key), then chunk each
    group so that a unit's estimated peak stays within `budget_bytes` (at least one job;
    `split_unfit` first sets aside the jobs that fit no unit).

    Jobs whose content could not be read go alone: they will fail with their own reason.
    """
    groups: dict[tuple, list[Job]] = defaultdict(list)
    alone: list[list[Job]] = []
    for job in jobs:
        size = output_size(job)
        if size is None:
            alone.append([job])
        else:
            groups[(size, job.params.batch_key())].append(job)
    units = []
    for members in groups.values():
        per_pair = max(job_bytes(job) for job in members)
        fit = max(1, min(max_batch, budget_bytes // per_pair))
        units.extend(members[i : i + fit] for i in range(0, len(members), fit))
    return units + alone
