"""The temporal loss of Ruder, Dosovitskiy and Brox, "Artistic style transfer for videos"
(2016): frame t is kept close to the previous stylised frame, warped onto frame t's grid by
the optical flow, wherever that flow is reliable (optical_flow.py).

    L_temporal(x) = weight * (1 / D) * sum_k mask_k * (x_k - warped_k)^2,   D = 3 * H * W

per sample, over every pixel k and channel, on the clamped image like the other losses.
D counts all values, not only the reliable ones: this is the paper's normalisation, and it
means a frame with fewer reliable pixels is pulled less as a whole, not harder per pixel.

A pair carries its target at the output size (`TemporalTarget`); each scale of the
coarse-to-fine schedule sees it resized (`TemporalTerm.at_scale`):
- the warped image bilinearly, with antialiasing, since downscaling a painted texture by
  more than 2x without it would alias;
- the mask by area (the share of each coarse pixel's footprint that is reliable), not
  nearest: nearest keeps or drops thin reliable or unreliable bands by where the samples
  happen to fall, while area weighting keeps sum(mask * error) / D the same quantity at
  every scale, so a weight means the same at a coarse scale as at the output. At the output
  size nothing is resized, so the mask there is exactly the 0/1 reliability mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from nst_core.engine import images
from nst_core.errors import ParamsError

if TYPE_CHECKING:
    # Only a type here: every engine import goes through targets.py and so through this
    # module, and none of them should load OpenCV unless it stylises a video.
    from nst_core.engine.optical_flow import TemporalInputs


def temporal_loss(image: torch.Tensor, warped: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(1 / D) * sum(mask * (image - warped)^2) per sample (B,), D = 3 * H * W; unweighted.

    `image` and `warped` are (B, 3, H, W), `mask` (B, 1, H, W) (or broadcastable to it).
    """
    image = image.float()
    squared = (mask * (image - warped).square()).flatten(1)
    return squared.sum(dim=1) / squared.shape[1]


@dataclass(frozen=True)
class TemporalTarget:
    """What one frame is held to: the previous stylised frame warped onto this frame's grid
    (1, 3, H, W) in [0, 1] at the output size, the reliability mask (1, 1, H, W) in {0, 1},
    and the weight of the temporal loss."""

    warped: torch.Tensor
    mask: torch.Tensor
    weight: float

    def __post_init__(self) -> None:
        problems = []
        if self.warped.ndim != 4 or self.warped.shape[:2] != (1, 3):
            problems.append(f"temporal target: warped must be (1, 3, H, W), got {self.shape}")
        elif tuple(self.mask.shape) != (1, 1, *self.warped.shape[-2:]):
            problems.append(
                f"temporal target: mask of shape {tuple(self.mask.shape)} does not fit "
                f"warped {tuple(self.warped.shape)}"
            )
        if not (math.isfinite(self.weight) and self.weight >= 0):
            problems.append(f"temporal target: weight must be finite and >= 0, got {self.weight}")
        if problems:
            raise ParamsError(problems)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.warped.shape)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as the engine's sizes are."""
        return self.warped.shape[-1], self.warped.shape[-2]

    @classmethod
    def of(
        cls, inputs: TemporalInputs, previous_output: torch.Tensor, weight: float
    ) -> TemporalTarget:
        """From `temporal_inputs(previous frame, frame)` and the previous stylised frame
        (1, 3, H, W) at this frame's output size."""
        # Bilinear warping stays within the image's range; the clamp only guards rounding.
        warped = inputs.warped(previous_output.float()).clamp(0, 1)
        mask = torch.from_numpy(inputs.mask).float()[None, None]
        return cls(warped=warped, mask=mask, weight=weight)

    def at(self, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(warped, mask) at `size` (width, height): see the module's note on resizing."""
        if size == self.size:
            return self.warped, self.mask
        w, h = size
        warped = F.interpolate(
            self.warped.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True
        ).clamp(0, 1)
        mask = F.interpolate(self.mask.float(), size=(h, w), mode="area")
        return warped, mask


def check_targets(targets: Sequence[TemporalTarget | None], size: tuple[int, int]) -> None:
    """Every target must be at the output size `size` (width, height)."""
    wrong = [
        f"temporal target of pair {b}: {t.size[0]}x{t.size[1]} px, but the output is "
        f"{size[0]}x{size[1]} px"
        for b, t in enumerate(targets)
        if t is not None and t.size != size
    ]
    if wrong:
        raise ParamsError(wrong)


@dataclass(frozen=True)
class TemporalTerm:
    """A batch's temporal targets at one scale, stacked along the batch.

    Pairs without a target have weight 0 and mask 0, so their loss is +0 exactly and their
    start is their own: adding exact zeros leaves their totals, gradients and images bit for
    bit what they are without a temporal term. A batch in which no pair has a target gets no
    term at all (`at_scale` gives None), so it does not even pay for the zeros.
    """

    warped: torch.Tensor  # (B, 3, h, w)
    mask: torch.Tensor  # (B, 1, h, w)
    weights: torch.Tensor  # (B,)

    @classmethod
    def at_scale(
        cls,
        targets: Sequence[TemporalTarget | None],
        size: tuple[int, int],
        device: torch.device,
        luma: Sequence[bool],
    ) -> TemporalTerm | None:
        """The term at `size`; `luma` marks the pairs optimised as grey luminance images
        (preserve_color), whose target is then the warped frame's luminance: the colour is
        recombined from the content afterwards, as it was for the previous frame."""
        if all(t is None for t in targets):
            return None
        w, h = size
        warped, masks, weights = [], [], []
        for target, grey in zip(targets, luma, strict=True):
            if target is None:
                warped.append(torch.zeros(1, 3, h, w))
                masks.append(torch.zeros(1, 1, h, w))
                weights.append(0.0)
                continue
            image, mask = target.at(size)
            warped.append(images.luminance(image) if grey else image)
            masks.append(mask)
            weights.append(target.weight)
        return cls(
            warped=torch.cat([t.to(device) for t in warped]),
            mask=torch.cat([m.to(device) for m in masks]),
            weights=torch.tensor(weights, device=device),
        )

    def keep(self, rows: list[int]) -> TemporalTerm:
        """This term for these batch rows only, in this order (Objective.keep)."""
        index = torch.tensor(rows, device=self.weights.device)
        return TemporalTerm(
            warped=self.warped.index_select(0, index),
            mask=self.mask.index_select(0, index),
            weights=self.weights.index_select(0, index),
        )

    def loss(self, image: torch.Tensor) -> torch.Tensor:
        """Unweighted temporal loss per sample (B,)."""
        return temporal_loss(image, self.warped, self.mask)

    def weighted(self, image: torch.Tensor) -> torch.Tensor:
        """weight * temporal loss per sample (B,): what the total adds."""
        return self.weights * self.loss(image)

    def start(self, init: torch.Tensor) -> torch.Tensor:
        """The warped previous output where the mask is 1, `init` where it is 0 (a blend
        where a coarse scale's area mask lies between). Both ends are exact: 1 * a + 0 * b
        is a, so pairs without a target keep their init bit for bit."""
        return self.mask * self.warped + (1 - self.mask) * init
