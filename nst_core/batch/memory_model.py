"""The memory model of one device: what pairs optimised together, a tiled run and an input's
decode hold at their peak, per output (or input) pixel. Per output pixel per pair:
activations kept for the backward pass of VGG19 up to relu5_1, their gradients, and L-BFGS's
curvature history. bench/ checks it against measured peaks (BENCHMARKS.md, "Memory model").
"""

from __future__ import annotations

from nst_core.engine.execution import Execution
from nst_core.engine.layers import channels, pools_through
from nst_core.engine.params import StyleParams, network_layers
from nst_core.engine.tiles import Tiling

# Bytes per output pixel per pair for the network's activations and gradients, by precision.
# fp32: fitted to peaks measured on the CPU (bench/memory.py, BENCHMARKS.md: 128-1024 px,
# batches 1-16); on an H200 it over-predicts by 16-19%. bf16: measured on an H200, within
# 7% from 256 px up.
NETWORK_BYTES_PER_PIXEL = {"fp32": 3_500, "bf16": 2_300}
# Per batch, whatever its size: the network's weights in use, the style targets and the
# library workspaces. Dominant only for small batches (128 px x 1 measured 63 MB on the
# H200 and 67-70 MB on the CPU, against 33 and 47 MB from the per-pixel terms alone).
FIXED_BYTES = 20 * 2**20
# A style image's forward pass (no gradient) while its Grams are computed, per pixel of the
# style image: 1,051 B/px at 512 px and 771 B/px at 1024 px measured on the CPU (fp32,
# AMD EPYC, features of five style layers kept). It runs before the optimisation, so it
# counts only when it is larger than the optimisation's own peak (a large style_scale).
STYLE_FORWARD_BYTES_PER_PIXEL = 1_100
# Decoding an input, per pixel of the file (peak RSS rise, BENCHMARKS.md "Decoding"): shrunk
# while decoded, 4 B/px for an opaque PNG, 8 with alpha, under 1 for a JPEG (its DCT
# scaling); at full size, 4 for opaque RGB, 8 turned by EXIF, 20 with alpha (the copies
# compositing over white makes). Inputs are decoded one at a time, each shrunk before the
# next, and before the optimisation starts: a unit counts its largest decode once.
DECODE_BYTES_PER_PIXEL = {"shrunk": 8, "whole": 20}


def decode_bytes(pixels: tuple[int, int], side: int) -> int:
    """Peak bytes of decoding an input of `pixels` for a longer side of `side`: shrunk
    while decoded when the photo is at least twice that (unit_inputs.py)."""
    width, height = pixels
    how = "shrunk" if max(width, height) >= 2 * side else "whole"
    return width * height * DECODE_BYTES_PER_PIXEL[how]


def gram_bytes(params: StyleParams) -> int:
    """The fp32 Gram matrices of one style image: C x C per style layer."""
    return sum(channels(layer) ** 2 * 4 for layer in params.style_layers)


def estimate_bytes(
    width: int,
    height: int,
    params: StyleParams,
    *,
    pairs: int = 1,
    styles: int = 1,
    history_on: str | None = None,
) -> int:
    """Peak memory of `pairs` optimised together at (width, height), each blending `styles`
    styles; `auto` precision counts as fp32. `history_on` is where L-BFGS's history lives (by
    default where `params` ask).

    The planner sizes units with the one-pair figure per pair, so it counts the fixed
    part once per pair: on the safe side, and only noticeably so for tiny images.
    """
    per_pixel = NETWORK_BYTES_PER_PIXEL["bf16" if params.precision == "bf16" else "fp32"]
    if params.optimizer == "lbfgs":
        # x, g, d and trial buffers, and the history when it is on the device.
        per_pixel += 6 * 3 * 4 + history_bytes_per_pixel(params, history_on)
    optimisation = width * height * per_pixel * pairs
    style_side = max(width, height) * params.style_scale  # the style's aspect is unknown here
    style_forward = int(style_side**2 * STYLE_FORWARD_BYTES_PER_PIXEL)
    targets = gram_bytes(params) * styles * pairs  # every style's Grams stay cached
    return FIXED_BYTES + max(optimisation, style_forward) + targets


def tiled_bytes(
    width: int,
    height: int,
    params: StyleParams,
    tile: int,
    *,
    pairs: int = 1,
    styles: int = 1,
    history_on: str | None = None,
) -> int:
    """Peak memory of `pairs` at (width, height) run in tiles of `tile` pixels: the network
    sees one tile and its halo at a time, while the whole image's state stays (the image, its
    gradient and best point, L-BFGS's history, the content targets' feature maps)."""
    crop = tiling_for(params, tile).largest_crop(height, width)
    per_pixel = NETWORK_BYTES_PER_PIXEL["bf16" if params.precision == "bf16" else "fp32"]
    network = crop * per_pixel * pairs
    state = int(width * height * _state_bytes_per_pixel(params, history_on) * pairs)
    style_side = max(width, height) * params.style_scale
    style_forward = int(min(style_side**2, crop) * STYLE_FORWARD_BYTES_PER_PIXEL)
    targets = gram_bytes(params) * styles * pairs
    return FIXED_BYTES + max(network, style_forward) + state + targets


def _state_bytes_per_pixel(params: StyleParams, history_on: str | None) -> float:
    """What stays whole while tiles go through the network, per output pixel per pair."""
    per_pixel = 3 * 3 * 4  # the point, its gradient, the best point: fp32 RGB
    if params.optimizer == "lbfgs":
        per_pixel += 6 * 3 * 4 + history_bytes_per_pixel(params, history_on)
    for layer in params.content_layers:
        per_pixel += channels(layer) * 4 / 4 ** pools_through(layer)
    return per_pixel


def history_bytes_per_pixel(params: StyleParams, history_on: str | None) -> int:
    """L-BFGS's history on the device, per output pixel per pair."""
    where = history_on or Execution.asked(params).history_on
    return 0 if where == "host" else lbfgs_history_bytes_per_pixel(params)


def lbfgs_history_bytes_per_pixel(params: StyleParams) -> int:
    """L-BFGS's s and y history wherever it lives: 3 fp32 values per pixel each, per pair."""
    return params.lbfgs_history * 2 * 3 * 4 if params.optimizer == "lbfgs" else 0


def tiling_for(params: StyleParams, tile: int) -> Tiling:
    """The tiles the engine uses for `params` at a tile size of `tile`."""
    return Tiling.for_layers(tile, network_layers(params))
