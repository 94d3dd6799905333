"""The loss a batch minimises at one scale: the network's features of the clamped image
against the content and style targets, weighted pair by pair.

The network runs channels_last, and under bf16 autocast where that pays; Grams and losses
are fp32 results (losses.py: bf16 features multiply on the tensor cores).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from nst_core.engine.losses import content_loss, energies, style_loss, tv_loss
from nst_core.engine.temporal import TemporalTerm

# The network's forward pass as the loop runs it: image batch -> {layer: features}.
FeaturesOf = Callable[[torch.Tensor], dict[str, torch.Tensor]]


class Features:
    """The network's forward pass in the layout and precision the loop runs it in."""

    def __init__(self, network: torch.nn.Module, device: torch.device, precision: str) -> None:
        self.device = device
        self.bf16 = precision == "bf16"
        # channels_last: oneDNN and cuDNN run VGG's convolutions faster in NHWC; measured
        # 12% faster in fp32 at 256 px on the 2-core AVX-512 CPU, and needed for bf16's gain.
        self.channels_last = device.type in ("cpu", "cuda")
        self.network = network
        if self.channels_last:
            self.network = network.to(memory_format=torch.channels_last)

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.network(image)


def clamp_straight_through(x: torch.Tensor) -> torch.Tensor:
    """clamp(x, 0, 1) in value; in the backward pass, the identity."""
    return x + (x.clamp(0, 1) - x).detach()


class Objective:
    """point (B, 3, H, W) -> (total (B,), parts (3, B): content, style, total variation).

    With a temporal term (video frames, temporal.py) the total also holds each pair's
    weighted temporal loss; the parts stay the three, so every record keeps its shape.
    """

    def __init__(
        self,
        features: FeaturesOf,
        content_targets: dict[str, torch.Tensor],
        style_targets: dict[str, torch.Tensor],
        layer_weights: dict[str, torch.Tensor],
        loss_weights: torch.Tensor,
        gram_of: Callable[[torch.Tensor], torch.Tensor],
        balanced: torch.Tensor | None = None,
        temporal: TemporalTerm | None = None,
    ) -> None:
        self.features = features
        self.content_targets = content_targets
        self.style_targets = style_targets
        self.layer_weights = layer_weights
        self.loss_weights = loss_weights  # (B, 3)
        self.gram_of = gram_of
        self.temporal = temporal
        # (B,) which pairs take the balanced loss: each term relative to its target's energy.
        self.content_scales = self.style_scales = None
        if balanced is not None and bool(balanced.any()):
            self.content_scales = energies(content_targets, balanced)
            self.style_scales = energies(style_targets, balanced)

    def keep(self, rows: list[int]) -> Objective:
        """This objective for these batch rows only, in this order."""
        index = torch.tensor(rows, device=self.loss_weights.device)

        def pick(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {
                name: v.index_select(0, index) if isinstance(v, torch.Tensor) and v.dim() else v
                for name, v in values.items()
            }

        kept = copy.copy(self)
        kept.content_targets = pick(self.content_targets)
        kept.style_targets = pick(self.style_targets)
        kept.layer_weights = pick(self.layer_weights)
        kept.content_scales = None if self.content_scales is None else pick(self.content_scales)
        kept.style_scales = None if self.style_scales is None else pick(self.style_scales)
        kept.loss_weights = self.loss_weights.index_select(0, index)
        kept.temporal = None if self.temporal is None else self.temporal.keep(rows)
        return kept

    def evaluate(self, point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total (B,), parts (3, B), gradient like point) at `point`."""
        point = point.detach().requires_grad_(True)
        total, parts = self(point)
        total.sum().backward()
        assert point.grad is not None  # a leaf of the loss: backward() set it
        return total.detach(), parts.detach(), point.grad

    def __call__(self, point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Losses are taken at the clamped image, which is what gets written: the optimiser's
        # unconstrained optimum lies partly outside [0, 1], and a loss measured there would
        # flatter the output. The gradient passes the clamp unchanged (straight-through):
        # with the clamp's own zero gradient, a pixel pushed past 0 or 1 stays there for
        # good, which cost about 1.5% of final loss on images with saturated areas
        # (BENCHMARKS.md, levers).
        image = clamp_straight_through(point)
        feats = self.features(image)
        parts = torch.stack(
            [
                content_loss(feats, self.content_targets, self.content_scales),
                style_loss(
                    feats, self.style_targets, self.layer_weights, self.gram_of, self.style_scales
                ),
                tv_loss(image),
            ]
        )
        total = (self.loss_weights.T * parts).sum(dim=0)
        if self.temporal is not None:
            total = total + self.temporal.weighted(image)
        return total, parts
