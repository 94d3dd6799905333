"""Work units: jobs grouped by what can be optimised together, sized to fit one device's memory
(memory_model.py); the budget is a setting because a device is often shared.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import replace

from nst_core.batch import memory_model
from nst_core.batch.jobs import Job
from nst_core.batch.memory_model import (
    estimate_bytes,
    history_bytes_per_pixel,
    lbfgs_history_bytes_per_pixel,
    tiled_bytes,
    tiling_for,
)
from nst_core.batch.unit_inputs import decoded_sides
from nst_core.engine.images import fit_size
from nst_core.engine.params import StyleParams

DEFAULT_CPU_BUDGET_GB = 4.0
MAX_UNIT_JOBS = 16


def decode_bytes(job: Job) -> int:
    """The most memory decoding one of `job`'s inputs holds at once (0 when no input's
    size is known: such a job fails when it is read)."""
    sides = decoded_sides(job)
    return max((memory_model.decode_bytes(f.pixels, s) for f, s in sides if f.pixels), default=0)


def job_bytes(job: Job) -> int | None:
    """A job's estimated peak alone on a device as its execution says it runs (tiled or
    whole, history here or on the host), or None when its content size is unknown."""
    size = output_size(job)
    if size is None:
        return None
    tile = job.execution.tile_size(size)
    if tile is not None:
        return _job_tiled_bytes(job, size, tile)
    return estimate_bytes(
        *size, job.params, styles=len(job.styles), history_on=job.execution.history_on
    )


def _job_tiled_bytes(job: Job, size: tuple[int, int], tile: int) -> int:
    """tiled_bytes for `job` at `size` in tiles of `tile`, as its execution runs it."""
    return tiled_bytes(
        *size, job.params, tile, styles=len(job.styles), history_on=job.execution.history_on
    )


def in_tiles(job: Job, budget_bytes: int) -> Job | None:
    """The job set to run in the tiles that cost least while fitting `budget_bytes`, when its
    `tile` is auto and some tile does; else None. Tiling is how, not what: the job's
    execution changes, its params and key stay.

    A pass's cost is the pixels it sends through the network, halos included, so the choice
    is by `network_pixels`: usually the largest tile that fits, but not when a slightly
    smaller one splits the image into fewer tiles.
    """
    size = output_size(job)
    if job.params.tile != "auto" or size is None:
        return None
    width, height = size
    best = None
    for tile in _tile_sizes(job.params, max(size)):
        if _job_tiled_bytes(job, size, tile) <= budget_bytes:
            cost = tiling_for(job.params, tile).network_pixels(height, width)
            if best is None or cost < best[0]:
                best = (cost, tile)
    if best is None:
        return None
    return replace(job, execution=replace(job.execution, tile=best[1]))


def _tile_sizes(params: StyleParams, longest: int) -> range:
    """Every aligned tile size smaller than the image, largest first."""
    align = tiling_for(params, 1).align
    return range((longest - 1) // align * align, align - 1, -align)


def memory_budget_bytes(device: str, setting: int | None = None) -> int:
    """`setting` (NST_MEMORY_BUDGET_GB, in bytes), else 80% of a CUDA device's memory, else
    4 GB on the CPU."""
    if setting is not None:
        return setting
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.get_device_properties(device).total_memory * 0.8)
    return int(DEFAULT_CPU_BUDGET_GB * 1024**3)


def output_size(job: Job) -> tuple[int, int] | None:
    if job.content_size is None:
        return None
    return fit_size(*job.content_size, job.params.size)


def split_unfit(
    jobs: list[Job], budget_bytes: int, *, host_history: bool = False
) -> tuple[list[Job], list[tuple[Job, int]]]:
    """(jobs that fit the budget alone, as they are or as the planner sets them to run,
    (job, estimated bytes) for those that do not fit even so).

    A job that does not fit whole runs in tiles (`tile: auto`). With `host_history` (a GPU,
    whose memory is the budget), an L-BFGS job that fits neither way on the device runs
    with its history in host memory (`lbfgs_history_on: auto`): at 4096 px, 20 history
    pairs are 6 GB of the device's memory, more than the network needs for a tile.
    """
    fitting, unfit = [], []
    for job in jobs:
        if not host_history and job.execution.history_on == "host":
            # On a CPU the host's memory is the device's: the history counts either way.
            job = replace(job, execution=replace(job.execution, history_on="device"))
        need = job_bytes(job)
        # What the optimisation may use once the job's largest input has been decoded.
        decode = decode_bytes(job)
        budget = budget_bytes - decode
        if need is None or need <= budget:
            fitting.append(job)
        elif (planned := _fit(job, budget, host_history)) is not None:
            fitting.append(planned)
        else:
            smallest = _smallest_tiles_bytes(job)
            if (hosted := _hosted(job, host_history)) is not None:
                smallest = min(smallest, _smallest_tiles_bytes(hosted))
            unfit.append((job, min(need, smallest) + decode))
    return fitting, unfit


def _fit(job: Job, budget_bytes: int, host_history: bool) -> Job | None:
    if (tiled := in_tiles(job, budget_bytes)) is not None:
        return tiled
    if (hosted := _hosted(job, host_history)) is None:
        return None
    need = job_bytes(hosted)
    if need is not None and need <= budget_bytes:
        return hosted
    return in_tiles(hosted, budget_bytes)


def _hosted(job: Job, host_history: bool) -> Job | None:
    """The job with L-BFGS's history in host memory, where the planner may put it there (a
    GPU, `lbfgs_history_on: auto`) and half the host's memory holds it; else None (the
    reason then suggests a shorter history)."""
    params = job.params
    if not host_history or params.optimizer != "lbfgs" or params.lbfgs_history_on != "auto":
        return None
    size = output_size(job)
    history = 0 if size is None else lbfgs_history_bytes_per_pixel(params) * size[0] * size[1]
    if history > host_memory_bytes() / 2:
        return None
    return replace(job, execution=replace(job.execution, history_on="host"))


def history_may_go_to_host(device: str) -> bool:
    """Whether the planner may move L-BFGS's history off `device` into host memory: only off
    a GPU; a CPU's memory is the host's."""
    return device.startswith("cuda")


def host_memory_bytes() -> int:
    """This machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _smallest_tiles_bytes(job: Job) -> int:
    size = output_size(job)
    if job.params.tile != "auto" or size is None:
        return 2**62
    smallest = tiling_for(job.params, 1).align
    return _job_tiled_bytes(job, size, smallest)


def unfit_reason(job: Job, need: int, budget_bytes: int) -> str:
    how = "even alone" if job.params.tile == "off" else "even alone and in tiles"
    fix = "lower size or style_scale"
    size = output_size(job)
    history = history_bytes_per_pixel(job.params, job.execution.history_on)
    if size is not None and history * size[0] * size[1] > need / 2:
        fix += f", or a shorter lbfgs_history (now {job.params.lbfgs_history})"
    if job.params.tile == "off":
        fix += ", or let it run in tiles (tile: auto)"
    decode = decode_bytes(job)
    if decode > need / 2:
        fix = f"downscale its largest input (decoding it takes about {decode / 2**30:,.2f} GB)"
    return (
        f"needs about {need / 2**30:,.2f} GB {how}, over the memory budget of "
        f"{budget_bytes / 2**30:,.2f} GB (NST_MEMORY_BUDGET_GB); {fix}"
    )


def pack_units(
    jobs: list[Job], budget_bytes: int, max_jobs: int = MAX_UNIT_JOBS
) -> list[list[Job]]:
    """Group jobs that may be optimised together (same output size and `together_key`), then
    chunk each group so that a unit's estimated peak, its largest input's decode included,
    stays within `budget_bytes` (at least one job; `split_unfit` first sets aside the jobs
    that fit no unit).

    Jobs whose content could not be read go alone: they will fail with their own reason.
    """
    groups: dict[tuple, list[Job]] = defaultdict(list)
    alone: list[list[Job]] = []
    for job in jobs:
        size = output_size(job)
        if size is None:
            alone.append([job])
        else:
            groups[(size, job.params.together_key(), job.execution)].append(job)
    units: list[list[Job]] = []
    for members in groups.values():
        needs = [job_bytes(job) for job in members]
        per_pair = max(need for need in needs if need is not None)  # every member has a size
        decode = max(decode_bytes(job) for job in members)
        fit = max(1, min(max_jobs, (budget_bytes - decode) // per_pair))
        units.extend(members[i : i + fit] for i in range(0, len(members), fit))
    return units + alone
