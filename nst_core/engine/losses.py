"""Gatys et al. losses, one value per sample so that batched pairs stay independent.

Every loss returns a (B,) fp32 tensor. Features may arrive in bf16 from autocast; Grams and
losses are always fp32 results because bf16 loses the small differences the style loss is
made of, and fp16 Grams overflow. bf16 features still multiply on the tensor cores, with
fp32 sums: 4.9x faster than an fp32 copy through an fp32 GEMM on an H200, at 7e-4 relative
error against float64 there (the fp32 path: 3e-5), which moved no final loss by more than
0.6% (BENCHMARKS.md, GPU levers).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import torch
from torch.autograd.function import BackwardCFunction, FunctionCtx


def gram(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C): F F^T with F the (C, H*W) flattening, divided by C*H*W."""
    b, c, h, w = features.shape
    with torch.autocast(features.device.type, enabled=False):
        if features.dtype != torch.bfloat16:
            features = features.float()
        # (B, HW, C) rows: a view, not a copy, in either memory layout (contiguous rows for
        # the channels_last features the engine makes). bf16 x bf16 products are exact in
        # fp32 and the sums are fp32, so bf16 features need no fp32 copy either.
        rows = features.flatten(2).transpose(1, 2)
        return _Gram.apply(rows) / (c * h * w)


def _bmm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with an fp32 result; bf16 operands multiply in one GEMM with fp32 accumulation
    where the backend has it."""
    if a.dtype != torch.bfloat16:
        return torch.bmm(a, b)
    if a.device.type == "cuda" and _cuda_bmm_has_out_dtype():
        return torch.bmm(a, b, out_dtype=torch.float32)
    return torch.bmm(a.float(), b.float())


@functools.cache
def _cuda_bmm_has_out_dtype() -> bool:
    """torch >= 2.8 has bmm(out_dtype=) on CUDA; older ones take the upcast path."""
    try:
        one = torch.ones(1, 1, 1, dtype=torch.bfloat16, device="cuda")
        torch.bmm(one, one, out_dtype=torch.float32)
    except (TypeError, RuntimeError):
        return False
    return True


class _Gram(torch.autograd.Function):
    """R^T R for rows R (B, HW, C), fp32 or bf16, with a backward that uses the symmetry.

    Autograd of R^T R would run two GEMMs (dG^T R and dG R) and add them, and hand back the
    gradient in a (B, C, HW) layout that the channels_last network then has to add to its
    own. R (dG + dG^T) is one GEMM whose result has the rows' layout: 13% less time per
    evaluation at 256 px on the 2-core CPU (BENCHMARKS.md, levers). The bf16 path needs a
    hand-written backward anyway, as torch's bmm(out_dtype) has no derivative. There, dG
    (fp32) goes in as a bf16 pair, high + low, which keeps about 16 bits of dG at the cost
    of a second GEMM; the result is rounded to bf16 once, as autograd's cast back would.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, rows: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows)
        return _bmm_fp32(rows.transpose(1, 2), rows)

    @staticmethod
    def backward(ctx: BackwardCFunction, grad: torch.Tensor) -> torch.Tensor:
        (rows,) = ctx.saved_tensors
        sym = grad + grad.transpose(1, 2)
        if rows.dtype != torch.bfloat16:
            return torch.bmm(rows, sym)
        high = sym.to(torch.bfloat16)
        low = (sym - high.float()).to(torch.bfloat16)
        return (_bmm_fp32(rows, high) + _bmm_fp32(rows, low)).to(rows.dtype)


def blend_grams(
    grams: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Weighted average of several styles' Gram targets, layer by layer (weights sum to 1)."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("style blend weights must not all be zero")
    # sum() is typed to give 0 for no terms; there is one per style (grams[0] exists).
    return {
        layer: cast(
            torch.Tensor, sum(g[layer] * (w / total) for g, w in zip(grams, weights, strict=True))
        )
        for layer in grams[0]
    }


def content_loss(
    features: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    scales: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mean over content layers of the per-sample MSE between features and their targets,
    each divided by its layer's `scales` (B,) when given (energies(): balanced losses)."""
    per_layer = [
        (features[name].float() - target).square().mean(dim=(1, 2, 3))
        / (scales[name] if scales is not None else 1)
        for name, target in targets.items()
    ]
    return torch.stack(per_layer).mean(dim=0)


def style_loss(
    features: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    layer_weights: Mapping[str, float | torch.Tensor],
    gram_of: Callable[[torch.Tensor], torch.Tensor] = gram,
    scales: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per-layer-weighted sum of the per-sample MSE between Grams and their targets, each
    divided by its layer's `scales` (B,) when given (energies(): balanced losses).

    A layer's weight is a number, or a (B,) tensor when samples weight layers differently.
    `gram_of` is the Gram function (benchmarks pass variants of it).
    """
    # sum() is typed to give 0 for no terms; there is a term per style layer (at least one).
    return cast(
        torch.Tensor,
        sum(
            weight
            * (gram_of(features[name]) - targets[name]).square().mean(dim=(1, 2))
            / (scales[name] if scales is not None else 1)
            for name, weight in layer_weights.items()
        ),
    )


def energies(
    targets: Mapping[str, torch.Tensor], balanced: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per layer, each sample's divisor for a balanced loss: its target's mean square where
    `balanced` (B,) is set, else 1. A balanced term is then the squared error relative to
    the target itself, whatever the layer's magnitude: Gram errors of deep layers are
    10-100x larger than relu1_1's, and an unbalanced sum spends the optimisation on them."""
    out = {}
    for name, target in targets.items():
        energy = target.float().square().mean(dim=tuple(range(1, target.dim())))
        out[name] = torch.where(balanced, energy.clamp_min(1e-12), torch.ones_like(energy))
    return out


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Squared total variation: mean squared difference of neighbouring pixels, per sample."""
    image = image.float()
    dy = (image[:, :, 1:, :] - image[:, :, :-1, :]).square().mean(dim=(1, 2, 3))
    dx = (image[:, :, :, 1:] - image[:, :, :, :-1]).square().mean(dim=(1, 2, 3))
    return dx + dy
