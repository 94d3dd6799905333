"""Inputs decoded as photos only, within a pixel bound, at the size their job needs, in sRGB;
and the planner counting the memory a decode holds."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from imagegen import job_for, png_bytes, scene
from PIL import EpsImagePlugin, Image, ImageCms, PdfImagePlugin

from nst_core.batch import memory_model, storage, units
from nst_core.batch.jobs import InputFile
from nst_core.batch.unit_inputs import UnitInputs
from nst_core.engine import images
from nst_core.engine.limits import Limits
from nst_core.engine.params import StyleParams
from nst_core.errors import ImageError

DATA = Path(__file__).parent / "data"
# Display P3 (CC0, github.com/saucecontrol/Compact-ICC-Profiles, profiles/DisplayP3-v4.icc)
DISPLAY_P3 = (DATA / "DisplayP3-v4.icc").read_bytes()


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels and holds none."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"


@pytest.mark.parametrize(
    ("data", "name"),
    [(EPS, "eps.jpg"), (encoded(scene(), "PDF"), "report.png"), (encoded(scene(), "ICO"), "i.png")],
)
def test_only_photo_formats_reach_a_decoder(data, name, monkeypatch):
    def never(self):
        pytest.fail("a non-photo decoder parsed the input")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", never)
    monkeypatch.setattr(PdfImagePlugin, "_save", never, raising=False)
    with pytest.raises(ImageError) as info:
        images.decode_image(data, name)
    assert str(info.value) == (
        f"{name}: not an image in a photo format (JPEG, PNG, WebP, TIFF, BMP or GIF)"
    )
    assert images.probe_size(data) is None  # the planner does not parse it either


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"])
def test_every_photo_format_decodes(fmt):
    decoded = images.decode_image(encoded(scene(40, 30), fmt), f"photo.{fmt.lower()}")
    assert decoded.mode == "RGB" and decoded.size == (40, 30)


def test_decoded_pixels_are_bounded_from_the_header_before_decoding():
    with pytest.raises(ImageError) as info:
        images.decode_image(png_header(12_000, 9_000), "scan.png")
    assert str(info.value) == (
        "scan.png: 12,000 x 9,000 px is 108.0 megapixels; an input may have at most 100 "
        "(NST_MAX_INPUT_MEGAPIXELS): downscale it, or raise the setting"
    )
    small = png_bytes(scene(40, 30))
    with pytest.raises(ImageError, match="1,200 px|1.2 megapixels|40 x 30 px"):
        images.decode_image(small, "s.png", max_pixels=1_000)
    assert images.decode_image(small, "s.png", max_pixels=1_200).size == (40, 30)


def test_the_default_bound_passes_a_50_megapixel_camera_photo():
    assert Limits().max_input_pixels >= 8_688 * 5_792  # a 50 MP full-frame camera


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_large_photo_is_decoded_at_the_size_asked_for(fmt):
    big = scene(2_000, 1_500)
    decoded = images.decode_image(encoded(big, fmt), f"big.{fmt.lower()}", longest=200)
    assert decoded.size == (200, 150)
    # Shrunk, not cropped: the picture matches the whole photo resized.
    expected = big.resize((200, 150), Image.Resampling.LANCZOS)
    difference = np.asarray(decoded, dtype=float) - np.asarray(expected, dtype=float)
    mean_error = np.abs(difference).mean()
    assert mean_error < 6, mean_error
    assert images.decode_image(encoded(big, fmt), "big", longest=4_000).size == (2_000, 1_500)


def test_a_unit_holds_its_inputs_at_the_size_their_job_needs(tmp_path):
    content, style = tmp_path / "c.jpg", tmp_path / "s.png"
    content.write_bytes(encoded(scene(1_600, 1_200), "JPEG"))
    style.write_bytes(png_bytes(scene(1_000, 1_000, seed=3)))
    params = StyleParams(size=400, style_scale=0.5)
    job = job_for(str(content), ((str(style), 1.0),), params, output_dir=str(tmp_path / "o"))
    pair = UnitInputs(Limits()).pair(job)
    assert pair.content.size == (400, 300)  # the output size, not 1600 x 1200
    assert pair.styles[0].size == (200, 200)  # size x style_scale


def p3_to_srgb(rgb: tuple[int, int, int]) -> tuple[float, ...]:
    """Display P3 -> sRGB by the published primaries' matrix (both use sRGB's curve):
    an answer computed without LittleCMS."""

    def linear(v: float) -> float:
        v /= 255
        return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4

    def encoded_value(v: float) -> float:
        v = min(max(v, 0.0), 1.0)
        return 255 * (12.92 * v if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055)

    m = [[1.2249, -0.2247, 0.0], [-0.0420, 1.0419, 0.0], [-0.0197, -0.0786, 1.0979]]
    lin = [linear(v) for v in rgb]
    return tuple(encoded_value(sum(m[i][j] * lin[j] for j in range(3))) for i in range(3))


def test_a_display_p3_photo_is_converted_to_srgb():
    colour = (180, 120, 60)
    data = encoded(Image.new("RGB", (8, 8), colour), "PNG", icc_profile=DISPLAY_P3)
    decoded = images.decode_image(data, "phone.png").getpixel((4, 4))
    expected = p3_to_srgb(colour)
    assert all(abs(a - b) <= 1.5 for a, b in zip(decoded, expected, strict=True)), decoded
    assert decoded != colour  # read as sRGB, it would be these numbers unchanged
    untagged = images.decode_image(encoded(Image.new("RGB", (8, 8), colour), "PNG"), "x.png")
    assert untagged.getpixel((4, 4)) == colour


def test_a_profile_that_cannot_be_read_leaves_the_pixels_as_srgb():
    data = encoded(Image.new("RGB", (8, 8), (10, 20, 30)), "PNG", icc_profile=b"not a profile")
    assert images.decode_image(data, "odd.png").getpixel((0, 0)) == (10, 20, 30)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_outputs_are_tagged_srgb_and_equal_from_process_to_process(suffix):
    data = images.encode_image(scene(), f"out{suffix}")
    profile = Image.open(io.BytesIO(data)).info["icc_profile"]
    described = ImageCms.ImageCmsProfile(io.BytesIO(profile)).profile.profile_description
    assert "sRGB" in described
    assert profile[24:36] == bytes([7, 234, 0, 1, 0, 1]) + bytes(6)  # no time of making


def decoding_job(tmp_path, side: int, size: int = 48):
    """A job whose content is `side` x `side` pixels (as planned; no file needed)."""
    job = job_for(
        str(tmp_path / "c.png"),
        ((str(tmp_path / "s.png"), 1.0),),
        StyleParams(size=size, device="cpu", precision="fp32"),
        output_dir=str(tmp_path / "o"),
        sha_of=lambda uri: "0" * 64,
    )
    content = InputFile(uri=job.content, sha256="0" * 64, pixels=(side, side))
    style = InputFile(uri=job.style_files[0].uri, sha256="1" * 64, pixels=(64, 64))
    from dataclasses import replace

    return replace(job, content_file=content, style_files=(style,))


def test_the_planner_counts_a_large_inputs_decode(tmp_path):
    big = decoding_job(tmp_path, 9_000)  # 81 MP for a 48 px output
    small = decoding_job(tmp_path, 48)
    decode = units.decode_bytes(big)
    assert decode == 81_000_000 * memory_model.DECODE_BYTES_PER_PIXEL["shrunk"]
    assert units.decode_bytes(small) < 2**20
    # A photo decoded whole (its job's output is as large) may hold its alpha copies too.
    whole = decoding_job(tmp_path, 9_000, size=8_000)
    assert units.decode_bytes(whole) == 81_000_000 * memory_model.DECODE_BYTES_PER_PIXEL["whole"]
    # Six such jobs fit one unit by their optimisation alone; the decode leaves room for fewer.
    per_pair = units.job_bytes(big)
    budget = decode + 3 * per_pair
    assert budget // per_pair >= 6
    assert [len(u) for u in units.pack_units([big] * 6, budget)] == [3, 3]
    fitting, unfit = units.split_unfit([big, small], decode // 2)
    assert fitting == [small] and [job for job, _ in unfit] == [big]
    reason = units.unfit_reason(big, unfit[0][1], decode // 2)
    assert "downscale its largest input (decoding it takes about 0.60 GB)" in reason


def test_inputs_are_read_from_storage_only_once_per_size(tmp_path, monkeypatch):
    content = tmp_path / "c.png"
    content.write_bytes(png_bytes(scene(64, 48)))
    style = tmp_path / "s.png"
    style.write_bytes(png_bytes(scene(64, 64, seed=2)))
    jobs = [
        job_for(str(content), ((str(style), 1.0),), StyleParams(size=s), output_dir=str(tmp_path))
        for s in (32, 40)
    ]
    reads = []
    real = storage.read_bytes

    def counted(uri, *args, **kwargs):
        reads.append(uri)
        return real(uri, *args, **kwargs)

    monkeypatch.setattr(storage, "read_bytes", counted)
    inputs = UnitInputs(Limits())
    for job in jobs:
        inputs.pair(job)
    # Both sizes are under a thumbnail's side: one decode serves both jobs.
    assert sorted(reads) == sorted([str(content), str(style)])
