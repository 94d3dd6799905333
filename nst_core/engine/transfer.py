"""The optimisation loop of Gatys et al., for one pair or a batch of pairs of one size.

What differs from the paper, and why:
- The image is optimised in RGB [0, 1]; each weight source's preprocessing is part of the
  network, so losses have the scale that network was trained with.
- Losses are per sample and the default optimiser is our batched L-BFGS (optim.py), so a
  pair's result does not depend on the other pairs in its batch.
- `iterations` counts loss evaluations (forward+backward passes), the unit of cost, for
  L-BFGS (line-search trials included) and Adam alike.
- The returned image is the lowest-loss point evaluated, not the last one; losses are taken
  at the image clamped to [0, 1], which is what is written, while the gradient passes the
  clamp as if it were not there, so no pixel is ever stuck outside the range.
- The network runs channels_last, and under bf16 autocast where that pays; Grams and
  losses are fp32 results (losses.py: bf16 features multiply on the tensor cores).
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image

from nst_core.engine import images
from nst_core.engine.devices import resolve_device, resolve_precision
from nst_core.engine.layers import min_side
from nst_core.engine.losses import blend_grams, content_loss, gram, style_loss, tv_loss
from nst_core.engine.optim import BatchedLBFGS
from nst_core.engine.params import StyleParams
from nst_core.engine.vgg import VGGFeatures, load_vgg
from nst_core.errors import ImageError, ParamsError

LOSS_NAMES = ("total", "content", "style", "tv")
# Progress callback: (evaluations done, evaluations in all, per-pair losses of the latest record)
Progress = Callable[[int, int, list[dict[str, float]]], None]


@dataclass
class Pair:
    """One job for the engine: a content image and one or more weighted style images."""

    content: Image.Image
    styles: Sequence[Image.Image]
    params: StyleParams = field(default_factory=StyleParams)
    style_weights: Sequence[float] | None = None
    content_name: str = "content"
    style_names: Sequence[str] = ()
    style_ids: Sequence[str] = ()  # stable identities (e.g. sha256) for the Gram cache
    content_id: str | None = None  # the content's stable identity (e.g. its bytes' sha256)

    def content_identity(self) -> str:
        """What colour-preserving style targets are cached under: the caller's identity for
        the content, else a hash of its pixels. Never id(): a freed image's address is
        reused by the next one, which would then get another content's targets."""
        if self.content_id is not None:
            return self.content_id
        digest = hashlib.sha256(f"{self.content.mode}{self.content.size}".encode())
        digest.update(self.content.tobytes())
        return digest.hexdigest()

    def style_id(self, index: int) -> str | None:
        return self.style_ids[index] if index < len(self.style_ids) else None

    def blend_weights(self) -> list[float]:
        return list(self.style_weights) if self.style_weights else [1.0] * len(self.styles)

    def style_name(self, index: int) -> str:
        return self.style_names[index] if index < len(self.style_names) else f"style[{index}]"


@dataclass
class Result:
    image: Image.Image
    history: list[dict]  # one row per record: evaluation, scale, seconds and LOSS_NAMES
    final: dict[str, float]  # losses of the returned image at the output size
    seconds: float  # wall time of the whole batch this pair was part of
    batch_size: int
    device: str
    precision: str


class GramCache:
    """Style Gram targets, computed once per style image, size and network; reused by pairs.

    A style is known by the caller's identity for it (its bytes' hash, so batches that
    decode the same file again still hit), else by the image object; entries hold the
    image, so an id() is never reused while its entry lives. The least recently used
    entries go first past `max_entries` (each is a few MB of device memory).
    """

    def __init__(self, max_entries: int = 64) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, tuple[Image.Image, dict[str, torch.Tensor]]] = (
            OrderedDict()
        )

    def get(self, key: tuple, image: Image.Image, compute, ident=None) -> dict[str, torch.Tensor]:
        full_key = (ident if ident is not None else id(image), *key)
        if full_key in self._entries:
            self._entries.move_to_end(full_key)
        else:
            self._entries[full_key] = (image, compute())
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return self._entries[full_key][1]


def stylize(
    pair: Pair, *, progress: Progress | None = None, cache: GramCache | None = None
) -> Result:
    """Stylise one pair."""
    return stylize_batch([pair], progress=progress, cache=cache)[0]


def stylize_batch(
    pairs: Sequence[Pair], *, progress: Progress | None = None, cache: GramCache | None = None
) -> list[Result]:
    """Stylise B pairs of the same output size together in one (B, 3, H, W) tensor.

    Loss weights may differ per pair; everything in `StyleParams.batch_key()` must match.
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
    layers = tuple(dict.fromkeys(params.content_layers + params.style_layers))
    _check_sizes(pairs, schedule, layers)
    vgg = load_vgg(layers, params.weights, params.pooling, str(device))
    cache = cache or GramCache()
    run = _BatchRun(pairs, vgg, device, precision, cache, progress, len(schedule))

    started = time.perf_counter()
    x = None
    for scale_index, size in enumerate(schedule):
        x = run.optimise_scale(scale_index, size, x)
    seconds = time.perf_counter() - started
    x = run.recombine_colours(x, schedule[-1])
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


def _check_sizes(pairs: Sequence[Pair], schedule, layers) -> None:
    """Every image must stay at least 1x1 at the deepest layer, at every scale."""
    need = min_side(layers)
    deepest = max(layers, key=lambda name: min_side([name]))
    for pair in pairs:
        checks = [(pair.content_name, size) for size in schedule]
        for index, style in enumerate(pair.styles):
            for w, h in schedule:
                longest = round(max(w, h) * pair.params.style_scale)
                checks.append((pair.style_name(index), images.fit_size(*style.size, longest)))
        for name, (w, h) in checks:
            if min(w, h) < need:
                raise ImageError(
                    f"{name}: too small for layer {deepest} at {w}x{h} px; it needs at least "
                    f"{need} px on each side: raise size (or scales), or use shallower layers"
                )


class _BatchRun:
    """State shared by the scales of one batch: targets, history, best losses."""

    def __init__(self, pairs, vgg: VGGFeatures, device, precision, cache, progress, n_scales):
        self.pairs = pairs
        self.params: StyleParams = pairs[0].params
        self.vgg = vgg
        self.device = device
        self.bf16 = precision == "bf16"
        # channels_last: oneDNN and cuDNN run VGG's convolutions faster in NHWC; measured
        # 12% faster in fp32 at 256 px on the 2-core AVX-512 CPU, and needed for bf16's gain.
        self.channels_last = device.type in ("cpu", "cuda")
        self.cache = cache
        self.progress = progress
        self.total_evals = self.params.iterations * n_scales
        self.evals_done = 0
        self.started = time.perf_counter()
        self.history: list[list[dict]] = [[] for _ in pairs]
        self.final: list[dict[str, float]] = [{} for _ in pairs]
        self.weights = torch.tensor(
            [[p.params.content_weight, p.params.style_weight, p.params.tv_weight] for p in pairs],
            device=device,
        )
        if self.channels_last:
            self.vgg = self.vgg.to(memory_format=torch.channels_last)

    # -- inputs: built pair by pair, so no pair's start or targets depend on its batch ----
    def contents(self, size: tuple[int, int], *, luma: bool) -> torch.Tensor:
        """Content images at `size`; with `luma`, grey for the pairs that preserve colour."""
        tensors = []
        for pair in self.pairs:
            tensor = images.to_tensor(images.resize(pair.content, size))
            if luma and pair.params.preserve_color:
                tensor = images.luminance(tensor)
            tensors.append(tensor)
        return torch.cat(tensors).to(self.device)

    def _style_tensor(self, pair: Pair, style: Image.Image, size, content: torch.Tensor):
        longest = round(max(size) * pair.params.style_scale)
        tensor = images.to_tensor(images.resize(style, images.fit_size(*style.size, longest)))
        tensor = tensor.to(self.device)
        if pair.params.preserve_color:
            tensor = images.match_luminance(images.luminance(tensor), content)
        return tensor

    def _features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.vgg(image)

    def style_targets(self, size, content: torch.Tensor) -> dict[str, torch.Tensor]:
        params = self.params
        per_pair = []
        for b, pair in enumerate(self.pairs):
            # Colour preservation matches each style to its content, so only then does the
            # target depend on the content image.
            luma_key = pair.content_identity() if pair.params.preserve_color else None
            key = (
                size,
                pair.params.style_scale,
                luma_key,
                params.weights,
                params.pooling,
                params.style_layers,
                self.bf16,
                str(self.device),
            )

            def compute(pair=pair, style=None, b=b):
                with torch.no_grad():
                    feats = self._features(self._style_tensor(pair, style, size, content[b]))
                    return {name: gram(feats[name]) for name in params.style_layers}

            grams = [
                self.cache.get(
                    key, style, functools.partial(compute, style=style), pair.style_id(index)
                )
                for index, style in enumerate(pair.styles)
            ]
            per_pair.append(blend_grams(grams, pair.blend_weights()))
        return {name: torch.cat([g[name] for g in per_pair]) for name in params.style_layers}

    def style_layer_weights(self) -> dict[str, torch.Tensor]:
        """Style layer -> (B,) weights, since each pair may weight its layers differently."""
        per_pair = [p.params.layer_weights() for p in self.pairs]
        return {
            name: torch.tensor([w[name] for w in per_pair], device=self.device)
            for name in self.params.style_layers
        }

    def initial_image(self, size, content: torch.Tensor) -> torch.Tensor:
        """Each pair's start: its content, its first style stretched to size, or its noise."""
        w, h = size
        starts = []
        for b, pair in enumerate(self.pairs):
            if pair.params.init == "content":
                start = content[b : b + 1].clone()
            elif pair.params.init == "style":
                start = images.to_tensor(images.resize(pair.styles[0], size)).to(self.device)
                if pair.params.preserve_color:
                    start = images.match_luminance(images.luminance(start), content[b])
            else:
                generator = torch.Generator().manual_seed(pair.params.seed)
                start = torch.rand(1, 3, h, w, generator=generator).to(self.device)
            starts.append(start)
        return torch.cat(starts)

    def recombine_colours(self, x: torch.Tensor, size) -> torch.Tensor:
        """Put the content colours back for the pairs that asked to preserve them."""
        keep = [p.params.preserve_color for p in self.pairs]
        if not any(keep):
            return x
        mask = torch.tensor(keep, device=x.device).view(-1, 1, 1, 1)
        return torch.where(mask, images.recombine_colour(x, self.contents(size, luma=False)), x)

    # -- optimisation ----------------------------------------------------------------------
    def optimise_scale(self, scale_index: int, size, previous: torch.Tensor | None):
        w, h = size
        content = self.contents(size, luma=True)
        with torch.no_grad():
            feats = self._features(content)
            content_targets = {n: feats[n].float() for n in self.params.content_layers}
        style_targets = self.style_targets(size, content)
        if previous is None:
            x = self.initial_image(size, content)
        else:
            x = F.interpolate(previous, size=(h, w), mode="bicubic", align_corners=False)
            x = x.clamp(0, 1)
        layer_weights = self.style_layer_weights()

        def objective(point: torch.Tensor):
            # Losses are taken at the clamped image, which is what gets written: the
            # optimiser's unconstrained optimum lies partly outside [0, 1], and a loss
            # measured there would flatter the output. The gradient passes the clamp
            # unchanged (straight-through): with the clamp's own zero gradient, a pixel
            # pushed past 0 or 1 stays there for good, which cost about 1.5% of final loss
            # on images with saturated areas (BENCHMARKS.md, levers).
            image = clamp_straight_through(point)
            feats = self._features(image)
            parts = torch.stack(
                [
                    content_loss(feats, content_targets),
                    style_loss(feats, style_targets, layer_weights),
                    tv_loss(image),
                ]
            )
            total = (self.weights.T * parts).sum(dim=0)
            return total, parts

        best = _Best(x)
        records: list[tuple[int, float, torch.Tensor]] = []
        iterations = self.params.iterations
        step = self._lbfgs_steps(x) if self.params.optimizer == "lbfgs" else self._adam_steps(x)
        for k in range(1, iterations + 1):
            point, finish = next(step)
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
        final = torch.cat([best.total.unsqueeze(0), best.parts]).cpu()
        self.final = _rows(final)
        return best.x.clamp(0, 1)

    def _lbfgs_steps(self, x: torch.Tensor):
        shape = x.shape
        opt = BatchedLBFGS(x.flatten(1), history_size=self.params.lbfgs_history)
        while True:
            point = opt.ask().view(shape).clone().requires_grad_(True)
            yield point, lambda f, g: opt.tell(f, g.flatten(1))

    def _adam_steps(self, x: torch.Tensor):
        x = x.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=self.params.learning_rate)

        def finish(_f, _g):
            opt.step()
            opt.zero_grad(set_to_none=True)

        while True:
            yield x, finish

    def _keep_history(self, records, size) -> None:
        if not records:
            return
        values = torch.stack([row for _, _, row in records]).cpu()  # (R, 4, B): one sync
        for r, (evaluation, seconds, _) in enumerate(records):
            for b in range(len(self.pairs)):
                entry = {"evaluation": evaluation, "scale": max(size), "seconds": round(seconds, 4)}
                entry.update(zip(LOSS_NAMES, values[r, :, b].tolist(), strict=True))
                self.history[b].append(entry)


def clamp_straight_through(x: torch.Tensor) -> torch.Tensor:
    """clamp(x, 0, 1) in value; in the backward pass, the identity."""
    return x + (x.clamp(0, 1) - x).detach()


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
