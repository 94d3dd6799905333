"""The objective of a whole image evaluated tile by tile, so that no network pass ever sees
more than one tile and its halo: outputs larger than the device's memory.

The style loss depends on the image only through each layer's Gram matrix, and a Gram is a
sum over positions: G = sum over tiles of F_t F_t^T / (C H W). So one evaluation is two
passes over the tiles:

1. without gradient: each tile (with its halo of context) through the network, its features
   cropped to the tile's own positions at each layer's stride, every layer's Gram and the
   content error summed; then the loss, and dL/dG, are known for the whole image;
2. with gradient: each tile again, backpropagating sum_l <dL/dG_l, G_l,tile> plus its
   content error from its own positions back to the tile-plus-halo input, and *adding* that
   into the image's gradient (a border pixel also feeds its neighbours' features).

Where the tiles fall is tiles.py's. With a halo of at least `layers.reach()` the loss and
gradient are the untiled objective's (to float rounding); the default, shorter halo
approximates them near tile borders, within the bound tiles.py gives.
"""

from __future__ import annotations

from collections.abc import Collection

import torch

from nst_core.engine.layers import pools_through
from nst_core.engine.losses import style_loss, tv_loss
from nst_core.engine.objective import FeaturesOf, Objective, clamp_straight_through
from nst_core.engine.tiles import Tile, Tiling


def tiled_features(
    features: FeaturesOf, image: torch.Tensor, layers: Collection[str], tiling: Tiling
) -> dict[str, torch.Tensor]:
    """The whole image's feature maps at `layers` (fp32), assembled tile by tile."""
    height, width = image.shape[-2:]
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for tile in tiling.tiles(height, width):
            feats = features(tile.pixels(image))
            for name in layers:
                stride = 2 ** pools_through(name)
                own = tile.own_features(feats[name], stride).float()
                if name not in out:
                    b, c = own.shape[:2]
                    shape = (b, c, height // stride, width // stride)
                    out[name] = torch.zeros(shape, device=own.device)
                rows, cols = tile.own_region(stride)
                out[name][:, :, rows, cols] = own
    return out


def tiled_grams(
    features: FeaturesOf, image: torch.Tensor, layers: Collection[str], tiling: Tiling
) -> dict[str, torch.Tensor]:
    """Each layer's Gram F F^T / (C H W) of the whole image, summed tile by tile (fp32)."""
    sums, positions = _gram_sums(features, image, layers, tiling)
    return {name: sums[name] / (sums[name].shape[1] * positions[name]) for name in layers}


def _gram_sums(
    features: FeaturesOf, image: torch.Tensor, layers: Collection[str], tiling: Tiling
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    height, width = image.shape[-2:]
    sums: dict[str, torch.Tensor] = {}
    positions = {
        n: (height // 2 ** pools_through(n)) * (width // 2 ** pools_through(n)) for n in layers
    }
    with torch.no_grad():
        for tile in tiling.tiles(height, width):
            feats = features(tile.pixels(image))
            for name in layers:
                gram = _own_gram(tile, feats[name], name)
                sums[name] = sums[name] + gram if name in sums else gram
    return sums, positions


def _own_gram(tile: Tile, features: torch.Tensor, name: str) -> torch.Tensor:
    """F F^T (B, C, C), fp32, over the tile's own positions at layer `name`, unnormalised:
    the whole image's Gram is the sum of its tiles' divided by C and its positions."""
    own = tile.own_features(features, 2 ** pools_through(name)).float().flatten(2)
    return torch.bmm(own, own.transpose(1, 2))


class TiledObjective:
    """Objective's loss and gradient for a whole batch image, evaluated tile by tile.

    Its targets are Objective's: content features as whole-image maps (tiled_features) and
    style Grams. Grams are computed in fp32 from the (possibly bf16) features.
    """

    def __init__(self, objective: Objective, tiling: Tiling) -> None:
        self.objective = objective
        self.tiling = tiling

    def keep(self, rows: list[int]) -> TiledObjective:
        return TiledObjective(self.objective.keep(rows), self.tiling)

    def evaluate(self, point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total (B,), parts (3, B), gradient like point) at `point`."""
        o = self.objective
        point = point.detach()
        height, width = point.shape[-2:]
        tiles = self.tiling.tiles(height, width)
        style_layers, content_layers = list(o.style_targets), list(o.content_targets)
        positions = {
            name: _positions(name, height, width) for name in style_layers + content_layers
        }

        # Pass 1: the whole image's Grams and content error, no gradient.
        sums: dict[str, torch.Tensor] = {}
        content_error = torch.zeros(point.shape[0], device=point.device)
        with torch.no_grad():
            for tile in tiles:
                feats = o.features(tile.pixels(point).clamp(0, 1))
                for name in style_layers:
                    gram = _own_gram(tile, feats[name], name)
                    sums[name] = sums[name] + gram if name in sums else gram
                content_error += self._content_error(tile, feats, positions)

        # The loss as a function of the Grams: dL/dG for the second pass.
        grams = {
            name: (sums[name] / (sums[name].shape[1] * positions[name])).requires_grad_(True)
            for name in style_layers
        }
        style = style_loss(grams, o.style_targets, o.layer_weights, _same, o.style_scales)
        weights = o.loss_weights  # (B, 3): content, style, tv
        (weights[:, 1] * style).sum().backward()
        d_grams: dict[str, torch.Tensor] = {}
        for name in style_layers:
            d_gram = grams[name].grad
            assert d_gram is not None  # every style layer's Gram is in the style loss
            d_grams[name] = d_gram

        # Pixelwise terms need no tiles: the total variation, and a video frame's temporal
        # loss (its target and mask are the whole image's).
        image = point.clone().requires_grad_(True)
        clamped = clamp_straight_through(image)
        tv = tv_loss(clamped)
        pixelwise = weights[:, 2] * tv
        temporal = None if o.temporal is None else o.temporal.weighted(clamped)
        if temporal is not None:
            pixelwise = pixelwise + temporal
        pixelwise.sum().backward()
        gradient = image.grad
        assert gradient is not None  # a leaf of the tv loss: backward() set it

        # Pass 2: each tile's share of the gradient, added into the whole image's.
        for tile in tiles:
            crop = tile.pixels(point).clone().requires_grad_(True)
            feats = o.features(clamp_straight_through(crop))
            surrogate = (weights[:, 0] * self._content_error(tile, feats, positions)).sum()
            for name in style_layers:
                gram = _own_gram(tile, feats[name], name)
                surrogate = surrogate + (d_grams[name] * gram).sum() / (
                    gram.shape[1] * positions[name]
                )
            surrogate.backward()
            assert crop.grad is not None  # a leaf of the surrogate: backward() set it
            y0, y1, x0, x1 = tile.crop
            gradient[:, :, y0:y1, x0:x1] += crop.grad

        parts = torch.stack([content_error, style.detach(), tv.detach()])
        total = (weights.T * parts).sum(dim=0)
        if temporal is not None:
            total = total + temporal.detach()
        return total, parts, gradient

    def _content_error(
        self, tile: Tile, feats: dict[str, torch.Tensor], positions: dict[str, int]
    ) -> torch.Tensor | float:
        """This tile's share of the content loss: its own squared error over the whole
        image's positions, per sample (mean over content layers, as Objective)."""
        o = self.objective
        error: torch.Tensor | float = 0
        for name, target in o.content_targets.items():
            stride = 2 ** pools_through(name)
            own = tile.own_features(feats[name], stride).float()
            rows, cols = tile.own_region(stride)
            squared = (own - target[:, :, rows, cols]).square().sum(dim=(1, 2, 3))
            scale = o.content_scales[name] if o.content_scales is not None else 1
            error = error + squared / (target.shape[1] * positions[name]) / scale
        return error / len(o.content_targets)


def _positions(name: str, height: int, width: int) -> int:
    """Feature positions of a whole image at layer `name` (VGG pools round down)."""
    stride = 2 ** pools_through(name)
    return (height // stride) * (width // stride)


def _same(grams: torch.Tensor) -> torch.Tensor:
    return grams
