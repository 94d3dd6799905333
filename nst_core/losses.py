"""Gatys et al. losses, one value per sample so that batched pairs stay independent.

Every loss returns a (B,) fp32 tensor. Features may arrive in bf16 from autocast; Grams and
losses are always computed in fp32 because bf16 loses the small differences the style loss
is made of, and fp16 Grams overflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def gram(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C): F F^T with F the (C, H*W) flattening, divided by C*H*W."""
    b, c, h, w = features.shape
    with torch.autocast(features.device.type, enabled=False):
        flat = features.float().reshape(b, c, h * w)
        return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def blend_grams(
    grams: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Weighted average of several styles' Gram targets, layer by layer (weights sum to 1)."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("style blend weights must not all be zero")
    return {
        layer: sum(g[layer] * (w / total) for g, w in zip(grams, weights, strict=True))
        for layer in grams[0]
    }


def content_loss(
    features: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Mean over content layers of the per-sample MSE between features and their targets."""
    per_layer = [
        (features[name].float() - target).square().mean(dim=(1, 2, 3))
        for name, target in targets.items()
    ]
    return torch.stack(per_layer).mean(dim=0)


def style_loss(
    features: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    layer_weights: Mapping[str, float | torch.Tensor],
) -> torch.Tensor:
    """Per-layer-weighted sum of the per-sample MSE between Grams and their targets.

    A layer's weight is a number, or a (B,) tensor when samples weight layers differently.
    """
    return sum(
        weight * (gram(features[name]) - targets[name]).square().mean(dim=(1, 2))
        for name, weight in layer_weights.items()
    )


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Squared total variation: mean squared difference of neighbouring pixels, per sample."""
    image = image.float()
    dy = (image[:, :, 1:, :] - image[:, :, :-1, :]).square().mean(dim=(1, 2, 3))
    dx = (image[:, :, :, 1:] - image[:, :, :, :-1]).square().mean(dim=(1, 2, 3))
    return dx + dy
