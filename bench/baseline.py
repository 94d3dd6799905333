"""A tutorial-style baseline, written the way the PyTorch neural-style tutorial does it.

One pair at a time, fp32, NCHW, `torch.optim.LBFGS` with its defaults (no line search,
20 iterations per step), the image clamped inside the closure, content at relu4_2, style at
relu1_1..relu5_1, the tutorial's loss weights (pinned below) and a fixed number of loss
evaluations. It uses the engine's weights source and its plain (`loss: gatys`) loss
definitions, so the engine run with those settings optimises the same objective, but computes
its Grams the tutorial's way, through autograd. It lives in bench/ only.
"""

from __future__ import annotations

import time

import torch

from nst_core.engine.loop import network_for
from nst_core.engine.losses import content_loss
from nst_core.engine.params import StyleParams

# The tutorial's budget: the baseline's loss evaluations per image in every benchmark.
EVALUATIONS = 300
# The tutorial's loss weights, pinned: what a tutorial user gets, whatever the engine's
# defaults become (equal style layer weights summing to 1).
CONTENT_WEIGHT, STYLE_WEIGHT = 1.0, 50.0
# The engine on the same objective: what benchmarks comparing the two run it with.
TUTORIAL_SETTINGS = {
    "loss": "gatys",
    "content_weight": CONTENT_WEIGHT,
    "style_weight": STYLE_WEIGHT,
}


def tutorial_gram(features: torch.Tensor) -> torch.Tensor:
    """The tutorial's Gram, F F^T / (C*H*W), differentiated by autograd: the engine's has a
    hand-written backward (losses.py), which would make this baseline faster than one a user
    writes from the tutorial."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def tutorial_style_loss(features, targets, weights) -> torch.Tensor:
    """losses.style_loss with tutorial_gram: the same values, the tutorial's backward."""
    return sum(
        weight * (tutorial_gram(features[name]) - targets[name]).square().mean()
        for name, weight in weights.items()
    )


def run_baseline(
    content: torch.Tensor, style: torch.Tensor, params: StyleParams, evaluations: int = EVALUATIONS
):
    """Returns (image, trace) where trace is [(seconds, evaluation, loss)] for every call."""
    vgg = network_for(params, content.device)
    with torch.no_grad():
        content_targets = {n: vgg(content)[n] for n in params.content_layers}
        style_feats = vgg(style)
        style_targets = {n: tutorial_gram(style_feats[n]) for n in params.style_layers}
    weights = {name: 1.0 / len(params.style_layers) for name in params.style_layers}
    image = content.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([image])
    trace: list[tuple[float, int, float]] = []
    started = time.perf_counter()
    calls = [0]
    while calls[0] < evaluations:
        # The tutorial loops until its counter passes the budget; capping the last step
        # makes the evaluation count exact.
        optimizer.param_groups[0]["max_eval"] = min(25, evaluations - calls[0])

        def closure():
            with torch.no_grad():
                image.clamp_(0, 1)
            optimizer.zero_grad()
            feats = vgg(image)
            loss = CONTENT_WEIGHT * content_loss(feats, content_targets).sum()
            loss = loss + STYLE_WEIGHT * tutorial_style_loss(feats, style_targets, weights)
            loss.backward()
            calls[0] += 1
            trace.append((time.perf_counter() - started, calls[0], loss.item()))
            return loss

        optimizer.step(closure)
    with torch.no_grad():
        image.clamp_(0, 1)
    return image.detach(), trace
