"""A clip's frames stylised one after another, temporally consistent after Ruder,
Dosovitskiy and Brox, "Artistic style transfer for videos" (2016).

Frame 0 is optimised as a still image. Each later frame starts from the previous stylised
frame warped along the optical flow (where the flow is reliable) and is held close to it by
the temporal loss (temporal.py); the flow and its reliability mask come from the content
frames (optical_flow.py), never from the stylised ones. With `temporal_weight` 0 every
frame is stylised on its own from its ordinary init: the per-frame baseline, still measured
with the same warping error so the two can be compared.

Frames are stylised one at a time, since frame t needs frame t-1's output: one network and
one Gram cache serve the whole clip, so the style's Grams are computed once per clip (once
per frame with preserve_color, whose style targets follow each frame's luminance).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from nst_core.engine import images
from nst_core.engine.devices import resolve_device
from nst_core.engine.execution import Execution
from nst_core.engine.loop import network_for, stylize
from nst_core.engine.optical_flow import TemporalInputs, temporal_inputs, warping_error
from nst_core.engine.params import StyleParams
from nst_core.engine.steppers import Optimizer
from nst_core.engine.targets import GramCache, Pair
from nst_core.engine.temporal import TemporalTarget
from nst_core.engine.trace import LossValues
from nst_core.errors import ImageError, ParamsError


@dataclass(frozen=True)
class FrameResult:
    """One stylised frame and how it came about."""

    index: int  # in the clip, from 0
    image: Image.Image  # at the output size
    evaluations: int  # loss evaluations over every scale
    seconds: float  # wall time of this frame's optimisation (not the flow's)
    losses: LossValues  # of the output; `total` includes the weighted temporal loss
    # The unweighted temporal loss of the output (temporal.py); None where the frame had no
    # temporal target: frame 0, and every frame with temporal_weight 0.
    temporal: float | None
    # Mean squared difference between the output and the previous output warped onto this
    # frame, over reliable pixels (optical_flow.warping_error), on the written 8-bit images;
    # None for frame 0. NaN when no pixel was reliable.
    warping_error: float | None
    reliable: float | None  # the share of pixels the reliability mask kept; None for frame 0


def stylize_frames(
    frames: Iterable[Image.Image],
    styles: Sequence[Image.Image],
    params: StyleParams,
    *,
    temporal_weight: float,
    network: torch.nn.Module | None = None,
    cache: GramCache | None = None,
    optimizer: Optimizer | None = None,
    execution: Execution | None = None,
    style_weights: Sequence[float] | None = None,
    style_names: Sequence[str] = (),
    style_ids: Sequence[str] = (),
) -> Iterator[FrameResult]:
    """Stylise a clip's frames in order, lazily: each frame is read when the previous one's
    result has been taken, and only the previous frame and output are held.

    `temporal_weight` weighs the temporal loss against the weighted content, style and tv
    terms (the same total `params` sets up); 0 stylises each frame independently. The other
    arguments are `stylize`'s and `Pair`'s, shared by every frame.
    """
    if not (math.isfinite(temporal_weight) and temporal_weight >= 0):
        raise ParamsError([f"temporal_weight: must be finite and >= 0, got {temporal_weight}"])
    execution = execution or Execution.asked(params)
    network = network or network_for(params, resolve_device(execution.device))
    cache = cache or GramCache()
    previous: tuple[Image.Image, torch.Tensor] | None = None  # content and output at size
    clip_size: tuple[int, int] | None = None
    for index, frame in enumerate(frames):
        if clip_size is None:
            clip_size = frame.size
        elif frame.size != clip_size:
            raise ImageError(
                f"frame {index}: {frame.size[0]}x{frame.size[1]} px, but the clip's frames "
                f"are {clip_size[0]}x{clip_size[1]} px"
            )
        frame = frame.convert("RGB")
        # The flow is estimated at the output size, where the previous output lives. The
        # pair still gets the frame as it came, so frame 0 is exactly a still's result.
        content = images.resize(frame, images.fit_size(*clip_size, params.size))
        inputs: TemporalInputs | None = None
        target: TemporalTarget | None = None
        if previous is not None:
            inputs = temporal_inputs(previous[0], content)
            if temporal_weight > 0:
                target = TemporalTarget.of(inputs, previous[1], temporal_weight)
        pair = Pair(
            frame,
            styles,
            params,
            style_weights=style_weights,
            content_name=f"frame {index}",
            style_names=style_names,
            style_ids=style_ids,
            temporal=target,
        )
        result = stylize(
            pair, cache=cache, network=network, optimizer=optimizer, execution=execution
        )
        output = images.to_tensor(result.image)
        error: float | None = None
        reliable: float | None = None
        if inputs is not None and previous is not None:
            # On the written 8-bit images, both of them: what a viewer sees flicker.
            error = warping_error(previous[1], output, inputs.flow, inputs.mask)
            reliable = float(inputs.mask.mean())
        yield FrameResult(
            index=index,
            image=result.image,
            evaluations=result.evaluations,
            seconds=result.seconds,
            losses=result.final,
            temporal=result.temporal,
            warping_error=error,
            reliable=reliable,
        )
        previous = (content, output)
