"""Where tiles and their halos fall on an image, without torch: the engine evaluates by them
(tiling.py) and the planner sizes memory and cost by them (batch/units.py).

Tile origins are multiples of the network's stride at the deepest layer used, so feature
crops fall on whole positions. A halo of at least `layers.reach()` makes every feature of a
tile's own region the untiled one. The default halo is a share of that reach: the outermost
pixels of a receptive field weigh little, so a shorter halo leaves the objective almost
exact while each tile sends far fewer pixels through the network.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nst_core.engine.layers import min_side, reach
from nst_core.engine.trace import ScaleRun

if TYPE_CHECKING:
    import torch

# Measured by `python -m bench.tiling` (BENCHMARKS.md, "tiling"): with relu5_1 (reach 85 px),
# tiles of 64 px on a 256 px photo, a halo of 64 px (this share, rounded up to the stride)
# put the gradient 6e-4 off the untiled one and the loss 2e-6, where 48 px gave 3% and
# 32 px 12%; against the full 96 px halo, a 128 px tile sends 256^2 pixels through the
# network instead of 320^2.
DEFAULT_HALO_SHARE = 0.75


@dataclass(frozen=True)
class Tile:
    own: tuple[int, int, int, int]  # y0, y1, x0, x1: the pixels this tile answers for
    crop: tuple[int, int, int, int]  # the tile and its halo, clipped to the image

    def pixels(self, image: torch.Tensor) -> torch.Tensor:
        """The crop of an (B, C, H, W) image tensor."""
        y0, y1, x0, x1 = self.crop
        return image[:, :, y0:y1, x0:x1]

    def own_features(self, features: torch.Tensor, stride: int) -> torch.Tensor:
        """This tile's own positions of a feature map computed from its crop.

        Position i at stride s covers pixels [i*s, (i+1)*s); a map of an image of H pixels
        has H // s rows (VGG pools round down), so own rows [y0 // s, y1 // s) partition
        the whole image's map across tiles, the last tile taking the rounded-down end.
        """
        rows, cols = self.own_region(stride)
        top, left = self.crop[0] // stride, self.crop[2] // stride
        return features[
            :, :, rows.start - top : rows.stop - top, cols.start - left : cols.stop - left
        ]

    def own_region(self, stride: int) -> tuple[slice, slice]:
        """The same positions in the whole image's feature map."""
        y0, y1, x0, x1 = self.own
        return slice(y0 // stride, y1 // stride), slice(x0 // stride, x1 // stride)


@dataclass(frozen=True)
class Tiling:
    """Square tiles of `size` pixels (a multiple of `align`) with `halo` pixels of context."""

    size: int
    halo: int
    align: int

    @classmethod
    def for_layers(cls, size: int, layers: Collection[str], halo: int | None = None) -> Tiling:
        """Tiles for a network cut at `layers`: aligned to its deepest stride, with the
        default share of its reach as halo unless one is given (`reach(layers)` is exact);
        `size` and the halo are rounded up to the alignment."""
        align = min_side(layers)
        size = max(align, math.ceil(size / align) * align)
        context = DEFAULT_HALO_SHARE * reach(layers) if halo is None else halo
        return cls(size=size, halo=math.ceil(context / align) * align, align=align)

    def spans(self, length: int) -> list[tuple[int, int, int, int]]:
        """Along one side of `length` pixels: (own start, own end, crop start, crop end)."""
        return [
            (start, min(start + self.size, length), max(0, start - self.halo),
             min(length, start + self.size + self.halo))
            for start in range(0, length, self.size)
        ]  # fmt: skip

    def tiles(self, height: int, width: int) -> list[Tile]:
        return [
            Tile((y0, y1, x0, x1), (cy0, cy1, cx0, cx1))
            for y0, y1, cy0, cy1 in self.spans(height)
            for x0, x1, cx0, cx1 in self.spans(width)
        ]

    def network_pixels(self, height: int, width: int) -> int:
        """Pixels sent through the network per pass over the tiles: the cost of a pass."""
        rows = sum(end - start for _, _, start, end in self.spans(height))
        cols = sum(end - start for _, _, start, end in self.spans(width))
        return rows * cols

    def largest_crop(self, height: int, width: int) -> int:
        """Pixels of the largest tile-plus-halo: what one network pass holds at once."""
        rows = max(end - start for _, _, start, end in self.spans(height))
        cols = max(end - start for _, _, start, end in self.spans(width))
        return rows * cols

    def describe(self, height: int, width: int) -> ScaleRun:
        """How a scale of this size ran, for the record."""
        tiles = len(self.tiles(height, width))
        return ScaleRun(scale=max(height, width), tile=self.size, halo=self.halo, tiles=tiles)
