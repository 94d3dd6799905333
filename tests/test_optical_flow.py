"""Optical flow for video stylisation: DIS flow, backward warping, Ruder et al.'s reliability
mask and the warping error, on synthetic frames whose true motion is known."""

import math

import numpy as np
import pytest
import torch
from imagegen import sinusoids
from PIL import Image

from nst_core.engine.optical_flow import (
    estimate_flow,
    reliability,
    temporal_inputs,
    warp,
    warping_error,
)

HEIGHT, WIDTH = 72, 96
MARGIN = 8  # DIS's patches and pyramid see less near the frame's edges


def texture(shift=(0.0, 0.0), seed=0, height=HEIGHT, width=WIDTH):
    """Smooth random RGB texture (H, W, 3) uint8, moved by `shift` = (dx, dy) pixels.

    A sum of random sinusoids is a texture defined everywhere, so a shifted frame is the same
    texture sampled at shifted points: exact at any sub-pixel shift, with no resampling blur
    that would differ between frames. Periods of 6-24 px in all orientations leave DIS no
    aperture problem."""
    out = sinusoids(height, width, waves=24, periods=(6, 24), seed=seed, shift=shift)
    # A fixed scale, not each frame's own range, so a shift leaves brightness as it was: the
    # sum's spread is sqrt(24 / 2), and +-2.8 of it fills 0-255.
    out = np.clip(0.5 + out / (4 * np.sqrt(24)), 0, 1)
    return np.round(out * 255).astype(np.uint8)


def as_tensor(frame):
    return torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255


def interior(array, margin=MARGIN):
    return array[margin:-margin, margin:-margin]


@pytest.mark.parametrize("shift", [(2.5, -1.5), (-3.0, 2.0), (0.25, 0.75)])
def test_flow_of_a_pan_is_within_half_a_pixel_in_the_interior(shift):
    previous, frame = texture(), texture(shift)
    # frame(x) = previous(x - shift), so the flow from frame to previous is -shift everywhere.
    flow = estimate_flow(frame, previous)
    assert flow.shape == (HEIGHT, WIDTH, 2) and flow.dtype == np.float32
    end_point_error = np.hypot(flow[..., 0] + shift[0], flow[..., 1] + shift[1])
    assert interior(end_point_error).mean() < 0.5


def test_estimate_flow_accepts_pil_images_and_arrays_alike():
    previous, frame = texture(), texture((1.5, 1.0))
    from_arrays = estimate_flow(frame, previous)
    from_images = estimate_flow(Image.fromarray(frame), Image.fromarray(previous))
    np.testing.assert_array_equal(from_images, from_arrays)


def test_warp_with_a_constant_integer_flow_moves_the_image_by_that_many_pixels():
    image = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    flow = np.zeros((40, 48, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3, -2
    out = warp(image, flow)
    # out(x, y) = image(x + 3, y - 2): row y reads row y - 2, column x reads column x + 3.
    torch.testing.assert_close(out[..., 2:, :-3], image[..., :-2, 3:], atol=1e-5, rtol=0)


def test_warp_interpolates_bilinearly_between_pixels():
    image = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    flow = torch.full((32, 32, 2), 0.5)
    out = warp(image, flow)
    corners = image[..., :-1, :-1] + image[..., :-1, 1:] + image[..., 1:, :-1] + image[..., 1:, 1:]
    torch.testing.assert_close(out[..., :-1, :-1], corners / 4, atol=1e-5, rtol=0)


def test_warp_takes_the_border_value_outside_the_frame():
    image = torch.rand(1, 3, 32, 40, generator=torch.Generator().manual_seed(2))
    flow = torch.zeros(32, 40, 2)
    flow[..., 0] = -100  # every pixel reads far left of the frame
    out = warp(image, flow)
    torch.testing.assert_close(out, image[..., :1].expand_as(image), atol=1e-6, rtol=0)


def test_warp_returns_the_image_dtype_whatever_the_flow_dtype():
    image = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    out = warp(image, np.zeros((32, 32, 2), np.float32))
    assert out.dtype == torch.float64 and out.device == image.device
    torch.testing.assert_close(out, image)


def test_warp_samples_half_precision_images_at_full_precision_coordinates():
    image = torch.rand(1, 3, 72, 96, generator=torch.Generator().manual_seed(3))
    flow = constant_flow(2.25, -1.75, height=72, width=96)
    out = warp(image.half(), flow)
    assert out.dtype == torch.float16
    # Only the values' own rounding (about 5e-4 at 1.0) may differ from the float32 warp.
    torch.testing.assert_close(out.float(), warp(image, flow), atol=1e-3, rtol=0)


def test_warping_the_previous_frame_by_the_estimated_flow_reproduces_the_frame_where_reliable():
    previous, frame = texture(seed=3), texture((2.5, -1.5), seed=3)
    inputs = temporal_inputs(previous, frame)
    reliable = interior(inputs.mask) == 1
    assert reliable.mean() > 0.9
    warped = inputs.warped(as_tensor(previous))[0].permute(1, 2, 0).numpy()
    difference = np.abs(warped - frame / 255).mean(axis=-1)
    unwarped = np.abs(previous / 255 - frame / 255).mean(axis=-1)
    assert interior(difference)[reliable].mean() < 0.01
    # The same frames without the warp differ an order of magnitude more: the test can fail.
    assert interior(unwarped)[reliable].mean() > 10 * interior(difference)[reliable].mean()


SQUARE, TOP, LEFT, STEP = 24, 24, 30, 4


def square_frames():
    """A textured square moving STEP px right over a static textured background."""
    background, pattern = texture(seed=4), texture(seed=5)[:SQUARE, :SQUARE]
    frames = []
    for left in (LEFT, LEFT + STEP):
        frame = background.copy()
        frame[TOP : TOP + SQUARE, left : left + SQUARE] = pattern
        frames.append(frame)
    return frames


def test_pixels_disoccluded_behind_a_moving_square_are_unreliable():
    previous, frame = square_frames()
    mask = temporal_inputs(previous, frame).mask
    # Frame t shows background where the square's left part was in frame t-1.
    disoccluded = mask[TOP : TOP + SQUARE, LEFT : LEFT + STEP]
    # DIS smooths the flow over a few pixels across a motion edge, so the column touching the
    # square may take the square's motion and pass both checks; the rest must not.
    assert (disoccluded[:, :-1] == 0).all()
    assert disoccluded.mean() < 0.1


def test_static_background_far_from_a_moving_square_is_reliable():
    previous, frame = square_frames()
    mask = temporal_inputs(previous, frame).mask
    far = np.ones_like(mask, dtype=bool)
    far[TOP - 12 : TOP + SQUARE + 12, LEFT - 12 : LEFT + STEP + SQUARE + 12] = False
    assert (mask[far] == 1).all()


def constant_flow(dx, dy, height=32, width=40):
    flow = np.empty((height, width, 2), np.float32)
    flow[..., 0], flow[..., 1] = dx, dy
    return flow


def test_reliability_marks_pixels_coming_from_outside_the_previous_frame_unreliable():
    # The view pans: frame t's content lies 3 px right of where it was in frame t-1, so frame
    # t's 3 leftmost columns were outside frame t-1.
    mask = reliability(to_previous=constant_flow(-3, 0), from_previous=constant_flow(3, 0))
    assert (mask[:, :3] == 0).all() and (mask[:, 3:] == 1).all()


def test_reliability_rejects_flows_that_do_not_undo_each_other():
    # Both flows pointing the same way is what swapping the two directions would give.
    mask = reliability(to_previous=constant_flow(-3, 0), from_previous=constant_flow(-3, 0))
    assert (mask == 0).all()


def test_reliability_marks_motion_boundaries_unreliable():
    # Frame t's right half moved 3 px right; left half static. Column 48 passes the
    # forward-backward check (it maps to column 45, whose forward flow is +3) and is
    # rejected for the flow's jump alone.
    to_previous = constant_flow(0, 0, width=96)
    to_previous[:, 48:, 0] = -3
    from_previous = constant_flow(0, 0, width=96)
    from_previous[:, 45:, 0] = 3
    mask = reliability(to_previous=to_previous, from_previous=from_previous)
    assert (mask[:, 48] == 0).all()
    assert (mask[:, 4:40] == 1).all() and (mask[:, 56:92] == 1).all()


def warping_case():
    generator = torch.Generator().manual_seed(6)
    previous_output = torch.rand(1, 3, 32, 40, generator=generator)
    flow = constant_flow(1.5, -0.5)
    mask = np.zeros((32, 40), np.float32)
    mask[:, :20] = 1
    return previous_output, flow, mask


def test_warping_error_is_zero_for_the_exactly_warped_previous_output():
    previous_output, flow, mask = warping_case()
    output = warp(previous_output, flow)
    assert warping_error(previous_output, output, flow, mask) == 0.0


def test_warping_error_grows_with_a_perturbation():
    previous_output, flow, mask = warping_case()
    output = warp(previous_output, flow)
    errors = [warping_error(previous_output, output + delta, flow, mask) for delta in (0.01, 0.1)]
    assert errors[0] == pytest.approx(0.01**2, rel=1e-4)
    assert errors[1] == pytest.approx(0.1**2, rel=1e-4)


def test_warping_error_ignores_pixels_outside_the_mask():
    previous_output, flow, mask = warping_case()
    output = warp(previous_output, flow)
    output[..., torch.from_numpy(mask == 0)] += 0.5
    assert warping_error(previous_output, output, flow, mask) == 0.0


def test_warping_error_is_nan_without_reliable_pixels():
    previous_output, flow, mask = warping_case()
    output = warp(previous_output, flow)
    assert math.isnan(warping_error(previous_output, output, flow, np.zeros_like(mask)))
