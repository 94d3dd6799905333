"""VGG19 layer names and where they sit in torchvision's `vgg19().features`.

Kept apart from vgg.py so that validating parameters never has to import torch.
"""

from __future__ import annotations

from collections.abc import Iterable

# Convolutions per block in VGG19 (configuration "E" of Simonyan & Zisserman).
_BLOCKS = (2, 2, 4, 4, 4)


def _layer_table() -> dict[str, int]:
    table: dict[str, int] = {}
    index = 0
    for block, convs in enumerate(_BLOCKS, start=1):
        for conv in range(1, convs + 1):
            table[f"conv{block}_{conv}"] = index
            table[f"relu{block}_{conv}"] = index + 1
            index += 2
        table[f"pool{block}"] = index
        index += 1
    return table


LAYER_INDEX: dict[str, int] = _layer_table()
LAYER_NAMES: tuple[str, ...] = tuple(LAYER_INDEX)
CONV_NAMES: tuple[str, ...] = tuple(n for n in LAYER_NAMES if n.startswith("conv"))


def channels(name: str) -> int:
    """Feature channels of a layer's output: 64, 128, 256, then 512 (from block 4 on)."""
    block = int(name[4]) if name.startswith("pool") else int(name.split("_")[0][-1])
    return min(64 * 2 ** (block - 1), 512)


def pools_through(name: str) -> int:
    """How many 2x poolings the input has passed through once `name` has run."""
    return sum(1 for n, i in LAYER_INDEX.items() if n.startswith("pool") and i <= LAYER_INDEX[name])


def min_side(layers: Iterable[str]) -> int:
    """Smallest image side (pixels) whose feature maps stay at least 1x1 at every layer."""
    return 2 ** max(pools_through(n) for n in layers)


def reach(layers: Iterable[str]) -> int:
    """How far (pixels, to either side) an output position of the deepest of `layers` sees
    into the input: a 3x3 convolution widens it by its stride on each side, a 2x2 pooling by
    its stride on the far side. Features computed from a crop with at least this margin
    around a region equal the whole image's there."""
    deepest = max(LAYER_INDEX[name] for name in layers)
    radius, stride = 0, 1
    for name, index in LAYER_INDEX.items():
        if index > deepest:
            break
        if name.startswith("conv"):
            radius += stride
        elif name.startswith("pool"):
            radius += stride
            stride *= 2
    return radius
