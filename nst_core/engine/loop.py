"""The optimisation loop of Gatys et al., for one pair or a batch of pairs of one size:
scales, optimiser steps, the best point and the loss history.

What differs from the paper, and why:
- The image is optimised in RGB [0, 1]; each weight source's preprocessing is part of the
  network, so losses have the scale that network was trained with.
- Losses are per sample and the default optimiser is our batched L-BFGS (optim.py), so a
  pair's result does not depend on the other pairs in its batch.
- `iterations` counts loss evaluations (forward+backward passes), the unit of cost, for
  L-BFGS (line-search trials included) and Adam alike. It is a budget per scale: a pair
  whose optimiser has converged, or whose stopping rule (stopping.py) says its loss no
  longer moves, leaves the batch early, and the others go on without it.
- The returned image is the lowest-loss point evaluated, not the last one; losses are taken
  at the image clamped to [0, 1], which is what is written (objective.py).

The network, the optimiser, the Gram function and the Gram cache are parts a caller may pass
(tests and benchmarks do); each defaults to the engine's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from nst_core.engine import images
from nst_core.engine.best import BestPoint
from nst_core.engine.devices import resolve_device, resolve_precision
from nst_core.engine.execution import Execution
from nst_core.engine.losses import gram
from nst_core.engine.objective import Features, Objective
from nst_core.engine.params import StyleParams, network_layers
from nst_core.engine.progress import Progress, Reporter, losses_by_pair
from nst_core.engine.steppers import Optimizer, optimizer_for, pairs_leaving
from nst_core.engine.stopping import Stopping
from nst_core.engine.targets import GramCache, Pair, Targets, check_sizes
from nst_core.engine.temporal import check_targets
from nst_core.engine.tiles import Tiling
from nst_core.engine.tiling import TiledObjective
from nst_core.engine.trace import HistoryRow, LossValues, ScaleRun
from nst_core.engine.vgg import load_vgg
from nst_core.errors import ParamsError


@dataclass(frozen=True)
class _Recorded:
    """One evaluation kept for the history, before its losses leave the device."""

    evaluation: int  # within this scale
    seconds: float
    losses: torch.Tensor  # (4, rows): LOSS_NAMES by the rows optimising then
    pairs: list[int]  # the pairs this evaluation is recorded for
    rows: list[int]  # the pairs optimising then, in row order


@dataclass
class Result:
    image: Image.Image
    history: list[HistoryRow]
    final: LossValues  # of the returned image at the output size
    seconds: float  # wall time of the whole batch this pair was part of
    evaluations: int  # loss evaluations this pair ran, over every scale
    tiling: list[ScaleRun]
    batch_size: int
    device: str
    precision: str
    # A video frame's unweighted temporal loss (temporal.py) at the point `final` is of;
    # None for a pair without a temporal target. `final.total` includes it, weighted.
    temporal: float | None = None


def network_for(params: StyleParams, device: torch.device | str) -> torch.nn.Module:
    """The engine's own network for these settings: VGG19 up to the deepest layer used."""
    return load_vgg(network_layers(params), params.weights, params.pooling, str(device))


def stylize(
    pair: Pair,
    *,
    progress: Progress | None = None,
    cache: GramCache | None = None,
    network: torch.nn.Module | None = None,
    optimizer: Optimizer | None = None,
    gram_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
    execution: Execution | None = None,
) -> Result:
    """Stylise one pair."""
    return stylize_pairs(
        [pair],
        progress=progress,
        cache=cache,
        execution=execution,
        network=network,
        optimizer=optimizer,
        gram_of=gram_of,
    )[0]


def stylize_pairs(
    pairs: Sequence[Pair],
    *,
    progress: Progress | None = None,
    cache: GramCache | None = None,
    network: torch.nn.Module | None = None,
    optimizer: Optimizer | None = None,
    gram_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
    execution: Execution | None = None,
) -> list[Result]:
    """Stylise B pairs of the same output size together in one (B, 3, H, W) tensor.

    Loss weights may differ per pair; everything in `StyleParams.together_key()` must match.
    `network` maps images to {layer: features} for `network_layers(params)` (default:
    `network_for`); `optimizer` yields the steps (default: by `params.optimizer`);
    `gram_of` computes Grams (default: losses.gram); `cache` keeps style Grams across calls.
    `execution` says where and how it runs (device, tiles, L-BFGS history); by default what
    the first pair's params ask for.
    """
    if not pairs:
        return []
    params = pairs[0].params
    if any(p.params.together_key() != params.together_key() for p in pairs):
        raise ParamsError(
            ["pairs stylised together must share size, layers, optimiser and schedule"]
        )
    out_sizes = {images.fit_size(*p.content.size, params.size) for p in pairs}
    if len(out_sizes) != 1:
        raise ParamsError([f"pairs stylised together must have one output size, got {out_sizes}"])
    width, height = out_sizes.pop()
    execution = execution or Execution.asked(params)
    device = resolve_device(execution.device)
    precision = resolve_precision(params.precision, device, execution.precision)
    schedule = [images.fit_size(width, height, s) for s in params.schedule()]
    check_sizes(pairs, schedule, network_layers(params))
    check_targets([p.temporal for p in pairs], (width, height))
    features = Features(network or network_for(params, device), device, precision)
    gram_of = gram_of or gram
    network_key = (params.weights, params.pooling, params.style_layers, features.bf16, str(device))
    targets = Targets(pairs, device, features, cache or GramCache(), gram_of, network_key)
    optimizer = optimizer or optimizer_for(params, execution.history_on)
    run = Scales(targets, optimizer, progress, len(schedule), execution)

    started = time.perf_counter()
    x = None
    for size in schedule:
        x = run.optimise_scale(size, x)
    seconds = time.perf_counter() - started
    assert x is not None  # the schedule always ends at the output size
    # One pixelwise pass at the output: cheaper than carrying a fourth part through the
    # best point, the history and every record for what only video frames have.
    term = targets.temporal(schedule[-1])
    temporal: list[float | None] = [None] * len(pairs) if term is None else term.loss(x).tolist()
    x = targets.recombine_colours(x, schedule[-1])
    return [
        Result(
            image=images.to_image(x[b]),
            history=run.history[b],
            final=run.final[b],
            seconds=seconds,
            evaluations=run.evaluations[b],
            tiling=run.tiling,
            batch_size=len(pairs),
            device=str(device),
            precision=precision,
            temporal=temporal[b] if pairs[b].temporal is not None else None,
        )
        for b in range(len(pairs))
    ]


class Scales:
    """The scales of one batch in turn: evaluations counted, history kept, best point."""

    def __init__(
        self,
        targets: Targets,
        optimizer: Optimizer,
        progress: Progress | None,
        n_scales: int,
        execution: Execution | None = None,
    ) -> None:
        self.targets = targets
        self.execution = execution or Execution.asked(targets.params)
        self.params: StyleParams = targets.params
        self.optimizer = optimizer
        self.total_evals = self.params.iterations * n_scales
        self.budget_done = 0  # evaluations of the scales finished, as budgeted: for progress
        self.started = time.perf_counter()
        n = len(targets.pairs)
        self.evaluations = [0] * n  # each pair's own, which the stopping rule may cut short
        self.history: list[list[HistoryRow]] = [[] for _ in range(n)]
        self.final: list[LossValues] = []  # set by each scale, kept from the last
        self.report = Reporter(progress, n, self.total_evals)
        self.tiling: list[ScaleRun] = []
        self.loss_weights = targets.loss_weights()

    def objective(self, size: tuple[int, int]) -> tuple[Objective | TiledObjective, torch.Tensor]:
        """The loss at `size`, tiled when the execution says so for this size, and the
        luma-aware contents it was built from."""
        targets = self.targets
        w, h = size
        tile = self.execution.tile_size(size)
        layers = network_layers(self.params)
        tiling = Tiling.for_layers(tile, layers) if tile else None
        self.tiling.append(tiling.describe(h, w) if tiling else ScaleRun(scale=max(size)))
        content = targets.contents(size, luma=True)
        content_targets = targets.content_features(content, tiling)
        style_targets = targets.style_grams(size, content, tiling)
        objective = Objective(
            targets.features,
            content_targets,
            style_targets,
            targets.style_layer_weights(),
            self.loss_weights,
            targets.gram_of,
            targets.balanced(),
            targets.temporal(size),
        )
        return (TiledObjective(objective, tiling) if tiling else objective), content

    def optimise_scale(self, size: tuple[int, int], previous: torch.Tensor | None) -> torch.Tensor:
        w, h = size
        objective, content = self.objective(size)
        if previous is None:
            x = self.targets.initial_image(size, content)
        else:
            x = F.interpolate(previous, size=(h, w), mode="bicubic", align_corners=False)
            x = x.clamp(0, 1)
        best = BestPoint(x)
        stepper = self.optimizer(x, self.params)
        stopping = Stopping([pair.params for pair in self.targets.pairs])
        offset = list(self.evaluations)
        rows = list(range(len(self.targets.pairs)))  # the pairs still optimising, in order
        records: list[_Recorded] = []
        iterations, every = self.params.iterations, self.params.history_every
        for k in range(1, iterations + 1):
            point = stepper.ask()
            total, parts, grad = objective.evaluate(point)
            stepper.tell(total, grad)
            best.update(rows, point.detach(), total, parts)
            leaving = pairs_leaving(stepper, stopping, rows, total)
            on_cadence = k % every == 0 or k == iterations
            if on_cadence or leaving:
                row = torch.cat([total.unsqueeze(0), parts])  # (4, rows)
                seconds = time.perf_counter() - self.started
                records.append(_Recorded(k, seconds, row, rows if on_cadence else leaving, rows))
                if on_cadence:
                    self.report.losses(row, rows)
            self.report.evaluated(self.budget_done + k)
            if leaving:
                for b in leaving:
                    self.evaluations[b] = offset[b] + k
                kept = [j for j, b in enumerate(rows) if b not in leaving]
                rows = [rows[j] for j in kept]
                if not rows:
                    break
                # Pairs that stopped leave the batch: the rest run on a smaller one.
                stepper.keep(kept)
                objective = objective.keep(kept)
        for b in rows:
            self.evaluations[b] = offset[b] + iterations
        self.budget_done += iterations
        self.report.evaluated(self.budget_done)  # a scale that stopped early spent its budget
        self._keep_history(records, size, offset)
        self.final = losses_by_pair(torch.cat([best.total.unsqueeze(0), best.parts]).cpu())
        return best.x.clamp(0, 1)

    def _keep_history(
        self,
        records: list[_Recorded],
        size: tuple[int, int],
        offset: list[int],
    ) -> None:
        if not records:
            return
        flat = torch.cat([r.losses.flatten() for r in records]).cpu()  # one sync
        start = 0
        for r in records:
            values = flat[start : start + r.losses.numel()].view(r.losses.shape)
            start += r.losses.numel()
            for b in r.pairs:
                losses = LossValues.of(values[:, r.rows.index(b)].tolist())
                self.history[b].append(
                    HistoryRow(
                        evaluation=offset[b] + r.evaluation,
                        scale=max(size),
                        seconds=round(r.seconds, 4),
                        **losses.model_dump(),
                    )
                )
