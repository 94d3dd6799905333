"""Optical flow for temporally consistent video stylisation (Ruder, Dosovitskiy and Brox,
"Artistic style transfer for videos", 2016).

Frame t's optimisation is pulled towards the previous stylised frame, carried along the
motion onto frame t's grid, but only where that motion can be trusted. This module supplies
the three pieces: the flow (DIS from OpenCV, so no flow network is downloaded), the warp
that carries an image along it, and the reliability mask of the paper's section 3.

One convention throughout, OpenCV's: a flow lives on the grid of the frame it starts from
and points to where each pixel is found in the other frame. `estimate_flow(source, target)`
gives `flow` with `source(x) ≈ target(x + flow(x))`, and `warp(target, flow)` pulls
`target`'s pixels onto `source`'s grid. Flows are (H, W, 2) float32 arrays in pixels,
channel 0 horizontal (x, to the right) and channel 1 vertical (y, downwards).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# Ruder et al. section 3. Disocclusion: the flow there and back must cancel out, up to a
# tolerance that grows with the motion (large motions are estimated less precisely).
CONSISTENCY_RELATIVE = 0.01
CONSISTENCY_ABSOLUTE = 0.5
# Motion boundaries: a steep flow gradient means two motions meet, where the flow is smeared
# across the edge and pixels of one object would be painted with the other's style.
BOUNDARY_RELATIVE = 0.01
BOUNDARY_ABSOLUTE = 0.002

Frame = np.ndarray | Image.Image


def estimate_flow(source: Frame, target: Frame) -> np.ndarray:
    """Dense flow (H, W, 2) float32 on `source`'s grid with `source(x) ≈ target(x + flow(x))`.

    So `warp(target, flow)` lays `target` over `source`. For video stylisation the flow to
    warp the previous output with is `estimate_flow(frame, previous_frame)`, from the frame
    being stylised back to the previous one; `temporal_inputs` spells that out.

    Frames are RGB uint8 arrays (H, W, 3) or PIL images of one size. DIS matches brightness
    only, so colour is reduced to luma (ITU-R 601, as OpenCV's RGB2GRAY) for both frames alike.
    A DIS instance is made per call: it keeps working buffers, so a shared one would not be
    thread-safe, and making one costs nothing next to computing the flow.
    """
    source_grey, target_grey = _grey(source), _grey(target)
    if source_grey.shape != target_grey.shape:
        raise ValueError(f"frames differ in size: {source_grey.shape} vs {target_grey.shape}")
    # DISOpticalFlow.create and a flow array to fill are what OpenCV's type stubs declare. DIS
    # takes a flow of the right size as its initial guess: zero, where it starts anyway.
    dis = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flow = np.zeros((*source_grey.shape, 2), dtype=np.float32)
    return np.asarray(dis.calc(source_grey, target_grey, flow), dtype=np.float32)


def warp(image: torch.Tensor, flow: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Backward warp: `out(x) = image(x + flow(x))`, bilinear, for an (N, C, H, W) float tensor.

    Backward (pulling each output pixel from where the flow points) rather than forward
    (pushing pixels along it) leaves no holes and no collisions. Points outside the frame take
    the nearest border value: they are unreliable anyway, and a border colour is a calmer
    starting point for the optimiser than black. `flow` is (H, W, 2) for all N images or
    (N, H, W, 2), in pixels; the result has `image`'s device and dtype.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (N, C, H, W), got shape {tuple(image.shape)}")
    n, _, height, width = image.shape
    # Sampling coordinates in half precision would be off by a tenth of a pixel at 100 px
    # and by half a pixel at 2000 px: half and bfloat16 images are sampled in float32.
    dtype = torch.promote_types(image.dtype, torch.float32)
    flow_t = torch.as_tensor(flow).to(device=image.device, dtype=dtype)
    if flow_t.ndim == 3:
        flow_t = flow_t.unsqueeze(0)
    if flow_t.ndim != 4 or flow_t.shape[1:] != (height, width, 2) or flow_t.shape[0] not in (1, n):
        raise ValueError(f"flow of shape {tuple(flow_t.shape)} does not fit image {image.shape}")
    ys, xs = torch.meshgrid(
        torch.arange(height, device=image.device, dtype=dtype),
        torch.arange(width, device=image.device, dtype=dtype),
        indexing="ij",
    )
    # With align_corners=True, -1 and +1 are the centres of the first and last pixels, so a
    # pixel coordinate p maps to 2p / (size - 1) - 1 (a one-pixel side has nowhere to go).
    grid = torch.stack(
        (
            2 * (xs + flow_t[..., 0]) / max(width - 1, 1) - 1,
            2 * (ys + flow_t[..., 1]) / max(height - 1, 1) - 1,
        ),
        dim=-1,
    )
    warped = F.grid_sample(
        image.to(dtype),
        grid.expand(n, -1, -1, -1),
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )
    return warped.to(image.dtype)


def reliability(*, to_previous: np.ndarray, from_previous: np.ndarray) -> np.ndarray:
    """Mask (H, W) float32 on frame t's grid: 1 where the previous frame, warped along
    `to_previous`, can be trusted at that pixel, 0 where not.

    `to_previous` is w = `estimate_flow(frame, previous_frame)` (frame t -> t-1, on t's grid;
    the paper's backward flow) and `from_previous` is w~ = `estimate_flow(previous_frame,
    frame)` (t-1 -> t, on t-1's grid; the paper's forward flow). The arguments are keyword
    only because swapping them still runs and silently tests the wrong frame's pixels.

    A pixel x of frame t is unreliable where
    - going back and forth does not return: |w~(x + w(x)) + w(x)|^2 >
      0.01 (|w~(x + w(x))|^2 + |w(x)|^2) + 0.5. That is a disocclusion: x shows something
      the previous frame did not, so the flow had nothing true to point at;
    - it lies on a motion boundary: |grad u|^2 + |grad v|^2 > 0.01 |w|^2 + 0.002 for
      w = (u, v), with central differences as in the authors' consistencyChecker;
    - x + w(x) lies outside the previous frame (content entering the view), as in the
      authors' code: the warp would only repeat the border there.
    """
    if to_previous.shape != from_previous.shape or to_previous.shape[-1:] != (2,):
        raise ValueError(
            f"flows must both be (H, W, 2), got {to_previous.shape} and {from_previous.shape}"
        )
    height, width = to_previous.shape[:2]
    back = to_previous.astype(np.float32)
    # w~ read at x + w(x): the same bilinear sampling the stylisation's warp uses.
    forth_chw = torch.from_numpy(from_previous.astype(np.float32)).permute(2, 0, 1)[None]
    forth = warp(forth_chw, back)[0].permute(1, 2, 0).numpy()

    round_trip = np.sum((forth + back) ** 2, axis=-1)
    magnitudes = np.sum(forth**2, axis=-1) + np.sum(back**2, axis=-1)
    disoccluded = round_trip > CONSISTENCY_RELATIVE * magnitudes + CONSISTENCY_ABSOLUTE

    du_dy, du_dx = np.gradient(back[..., 0])
    dv_dy, dv_dx = np.gradient(back[..., 1])
    steepness = du_dx**2 + du_dy**2 + dv_dx**2 + dv_dy**2
    boundary = steepness > BOUNDARY_RELATIVE * np.sum(back**2, axis=-1) + BOUNDARY_ABSOLUTE

    # The frame covers its pixels' squares, -0.5 to size - 0.5: a stricter bound would reject
    # a static scene's edge rows over the flow's rounding noise.
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    target_x, target_y = xs + back[..., 0], ys + back[..., 1]
    outside = (np.abs(target_x - (width - 1) / 2) > width / 2) | (
        np.abs(target_y - (height - 1) / 2) > height / 2
    )

    return (~(disoccluded | boundary | outside)).astype(np.float32)


@dataclass(frozen=True)
class TemporalInputs:
    """What stylising frame t takes from frame t-1, on frame t's grid.

    `flow` goes from frame t to frame t-1 (`warp(previous_output, flow)` lies over frame t)
    and `mask` is its `reliability`: 1 where the warped previous output is to be kept.
    """

    flow: np.ndarray
    mask: np.ndarray

    def warped(self, previous_output: torch.Tensor) -> torch.Tensor:
        """The previous stylised frame carried onto frame t's grid, so that no caller picks
        the flow's direction itself."""
        return warp(previous_output, self.flow)


def temporal_inputs(previous_frame: Frame, frame: Frame) -> TemporalInputs:
    """The flow to warp the previous output with and its reliability mask, for `frame`.

    Both directions are estimated from the content frames (never the stylised ones, whose
    painted texture would mislead the matching), and each goes where `reliability` needs it,
    so callers need not know which is which.
    """
    to_previous = estimate_flow(frame, previous_frame)
    from_previous = estimate_flow(previous_frame, frame)
    mask = reliability(to_previous=to_previous, from_previous=from_previous)
    return TemporalInputs(flow=to_previous, mask=mask)


def warping_error(
    previous_output: torch.Tensor,
    output: torch.Tensor,
    flow: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor,
) -> float:
    """Mean squared difference between `output` and `warp(previous_output, flow)` over the
    pixels where `mask` is 1 (and over channels): the temporal warping error of benchmarks.

    Tensors are (1, 3, H, W) in 0-1; `flow` and `mask` come from `temporal_inputs(frame t-1,
    frame t)`. Unreliable pixels are left out because there a change is expected
    (disocclusions) or the flow is wrong (motion boundaries), not a flicker. With no reliable
    pixel at all the error is NaN, not 0: nothing was compared, which must not read as
    perfectly stable.
    """
    warped = warp(previous_output, flow)
    if warped.shape != output.shape:
        raise ValueError(f"outputs differ in shape: {tuple(warped.shape)} vs {tuple(output.shape)}")
    weights = torch.as_tensor(mask).to(device=output.device, dtype=output.dtype)
    if weights.shape != output.shape[-2:]:
        raise ValueError(f"mask of shape {tuple(weights.shape)} does not fit {output.shape}")
    pixels = float(weights.sum()) * output.shape[0] * output.shape[1]
    if pixels == 0:
        return math.nan
    return float((((output - warped) ** 2) * weights).sum()) / pixels


def _grey(frame: Frame) -> np.ndarray:
    """Luma of an RGB frame; PIL images go through RGB first so both kinds grey alike."""
    pixels = np.asarray(frame.convert("RGB")) if isinstance(frame, Image.Image) else frame
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(
            f"a frame must be RGB uint8 (H, W, 3), got {pixels.dtype} of shape {pixels.shape}"
        )
    return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)
