"""The optimisation loop of Gatys et al., for one pair or a batch of pairs of one size:
scales, optimiser steps, the best point and the loss history.

What differs from the paper, and why:
- The image is optimised in RGB [0, 1]; each weight source's preprocessing is part of the
  network, so losses have the scale that network was trained with.
- Losses are per sample and the default optimiser is our batched L-BFGS (optim.py), so a
  pair's result does not depend on the other pairs in its batch.
- `iterations` counts loss evaluations (forward+backward passes), the unit of cost, for
  L-BFGS (line-search trials included) and Adam alike.
- The returned image is the lowest-loss point evaluated, not the last one; losses are taken
  at the image clamped to [0, 1], which is what is written (objective.py).

The network, the optimiser, the Gram function and the Gram cache are parts a caller may pass
(tests and benchmarks do); each defaults to the engine's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from nst_core.engine import images
from nst_core.engine.devices import resolve_device, resolve_precision
from nst_core.engine.losses import gram
from nst_core.engine.objective import Features, Objective
from nst_core.engine.optim import BatchedLBFGS
from nst_core.engine.params import StyleParams
from nst_core.engine.targets import GramCache, Pair, Targets, check_sizes
from nst_core.engine.vgg import load_vgg
from nst_core.errors import ParamsError

LOSS_NAMES = ("total", "content", "style", "tv")
# Progress callback: (evaluations done, evaluations in all, per-pair losses of the latest record)
Progress = Callable[[int, int, list[dict[str, float]]], None]
# One optimiser step: the point to evaluate next, and what to tell the optimiser afterwards
# (the per-sample losses and the gradient at that point).
Step = tuple[torch.Tensor, Callable[[torch.Tensor, torch.Tensor], None]]
Optimizer = Callable[[torch.Tensor, StyleParams], Iterator[Step]]


@dataclass
class Result:
    image: Image.Image
    history: list[dict]  # one row per record: evaluation, scale, seconds and LOSS_NAMES
    final: dict[str, float]  # losses of the returned image at the output size
    seconds: float  # wall time of the whole batch this pair was part of
    batch_size: int
    device: str
    precision: str


def network_layers(params: StyleParams) -> tuple[str, ...]:
    """The layers the network must return for these settings, content layers first."""
    return tuple(dict.fromkeys(params.content_layers + params.style_layers))


def network_for(params: StyleParams, device: torch.device | str) -> torch.nn.Module:
    """The engine's own network for these settings: VGG19 up to the deepest layer used."""
    return load_vgg(network_layers(params), params.weights, params.pooling, str(device))


def lbfgs_steps(x: torch.Tensor, params: StyleParams) -> Iterator[Step]:
    shape = x.shape
    opt = BatchedLBFGS(x.flatten(1), history_size=params.lbfgs_history)
    while True:
        point = opt.ask().view(shape).clone().requires_grad_(True)
        yield point, lambda f, g: opt.tell(f, g.flatten(1))


def adam_steps(x: torch.Tensor, params: StyleParams) -> Iterator[Step]:
    x = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=params.learning_rate)

    def finish(_f, _g):
        opt.step()
        opt.zero_grad(set_to_none=True)

    while True:
        yield x, finish


OPTIMIZERS: dict[str, Optimizer] = {"lbfgs": lbfgs_steps, "adam": adam_steps}


def stylize(
    pair: Pair,
    *,
    progress: Progress | None = None,
    cache: GramCache | None = None,
    network: torch.nn.Module | None = None,
    optimizer: Optimizer | None = None,
    gram_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Result:
    """Stylise one pair."""
    parts = {"network": network, "optimizer": optimizer, "gram_of": gram_of}
    return stylize_batch([pair], progress=progress, cache=cache, **parts)[0]


def stylize_batch(
    pairs: Sequence[Pair],
    *,
    progress: Progress | None = None,
    cache: GramCache | None = None,
    network: torch.nn.Module | None = None,
    optimizer: Optimizer | None = None,
    gram_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[Result]:
    """Stylise B pairs of the same output size together in one (B, 3, H, W) tensor.

    Loss weights may differ per pair; everything in `StyleParams.batch_key()` must match.
    `network` maps images to {layer: features} for `network_layers(params)` (default:
    `network_for`); `optimizer` yields the steps (default: by `params.optimizer`);
    `gram_of` computes Grams (default: losses.gram); `cache` keeps style Grams across calls.
    """
    if not pairs:
        return []
    params = pairs[0].params
    if any(p.params.batch_key() != params.batch_key() for p in pairs):
        raise ParamsError(["pairs in one batch must share size, layers, optimiser and schedule"])
    out_sizes = {images.fit_size(*p.content.size, params.size) for p in pairs}
    if len(out_sizes) != 1:
        raise ParamsError([f"pairs in one batch must have one output size, got {out_sizes}"])
    width, height = out_sizes.pop()
    device = resolve_device(params.device)
    precision = resolve_precision(params.precision, device)
    schedule = [images.fit_size(width, height, s) for s in params.schedule()]
    check_sizes(pairs, schedule, network_layers(params))
    features = Features(network or network_for(params, device), device, precision)
    gram_of = gram_of or gram
    network_key = (params.weights, params.pooling, params.style_layers, features.bf16, str(device))
    targets = Targets(pairs, device, features, cache or GramCache(), gram_of, network_key)
    run = _Scales(targets, optimizer or OPTIMIZERS[params.optimizer], progress, len(schedule))

    started = time.perf_counter()
    x = None
    for size in schedule:
        x = run.optimise_scale(size, x)
    seconds = time.perf_counter() - started
    x = targets.recombine_colours(x, schedule[-1])
    return [
        Result(
            image=images.to_image(x[b]),
            history=run.history[b],
            final=run.final[b],
            seconds=seconds,
            batch_size=len(pairs),
            device=str(device),
            precision=precision,
        )
        for b in range(len(pairs))
    ]


class _Scales:
    """The scales of one batch in turn: evaluations counted, history kept, best point."""

    def __init__(self, targets: Targets, optimizer: Optimizer, progress, n_scales: int):
        self.targets = targets
        self.params: StyleParams = targets.params
        self.optimizer = optimizer
        self.progress = progress
        self.total_evals = self.params.iterations * n_scales
        self.evals_done = 0
        self.started = time.perf_counter()
        self.history: list[list[dict]] = [[] for _ in targets.pairs]
        self.final: list[dict[str, float]] = [{} for _ in targets.pairs]
        self.loss_weights = targets.loss_weights()

    def objective(self, size) -> tuple[Objective, torch.Tensor]:
        """The loss at `size`, and the luma-aware contents it was built from."""
        targets = self.targets
        content = targets.contents(size, luma=True)
        content_targets = targets.content_features(content)
        style_targets = targets.style_grams(size, content)
        objective = Objective(
            targets.features,
            content_targets,
            style_targets,
            targets.style_layer_weights(),
            self.loss_weights,
            targets.gram_of,
            targets.balanced(),
        )
        return objective, content

    def optimise_scale(self, size, previous: torch.Tensor | None) -> torch.Tensor:
        w, h = size
        objective, content = self.objective(size)
        if previous is None:
            x = self.targets.initial_image(size, content)
        else:
            x = F.interpolate(previous, size=(h, w), mode="bicubic", align_corners=False)
            x = x.clamp(0, 1)
        best = _Best(x)
        records: list[tuple[int, float, torch.Tensor]] = []
        iterations = self.params.iterations
        steps = self.optimizer(x, self.params)
        for k in range(1, iterations + 1):
            point, finish = next(steps)
            total, parts = objective(point)
            total.sum().backward()
            finish(total.detach(), point.grad)
            best.update(point.detach(), total.detach(), parts.detach())
            if k % self.params.history_every == 0 or k == iterations:
                row = torch.cat([total.detach().unsqueeze(0), parts.detach()])
                records.append((self.evals_done + k, time.perf_counter() - self.started, row))
                if self.progress:
                    self.progress(self.evals_done + k, self.total_evals, _rows(row.cpu()))
        self.evals_done += iterations
        self._keep_history(records, size)
        self.final = _rows(torch.cat([best.total.unsqueeze(0), best.parts]).cpu())
        return best.x.clamp(0, 1)

    def _keep_history(self, records, size) -> None:
        if not records:
            return
        values = torch.stack([row for _, _, row in records]).cpu()  # (R, 4, B): one sync
        for r, (evaluation, seconds, _) in enumerate(records):
            for b in range(len(self.targets.pairs)):
                entry = {"evaluation": evaluation, "scale": max(size), "seconds": round(seconds, 4)}
                entry.update(zip(LOSS_NAMES, values[r, :, b].tolist(), strict=True))
                self.history[b].append(entry)


class _Best:
    """Per-sample lowest-loss point seen so far, kept on the device without host syncs."""

    def __init__(self, x: torch.Tensor):
        self.x = x.detach().clone()
        self.total = torch.full((x.shape[0],), float("inf"), device=x.device)
        self.parts = torch.zeros(3, x.shape[0], device=x.device)

    def update(self, x: torch.Tensor, total: torch.Tensor, parts: torch.Tensor) -> None:
        better = total < self.total
        self.x = torch.where(better.view(-1, 1, 1, 1), x, self.x)
        self.total = torch.where(better, total, self.total)
        self.parts = torch.where(better.unsqueeze(0), parts, self.parts)


def _rows(values: torch.Tensor) -> list[dict[str, float]]:
    """(4, B) losses -> one dict per pair."""
    return [
        dict(zip(LOSS_NAMES, values[:, b].tolist(), strict=True)) for b in range(values.shape[1])
    ]
