"""Odd and hostile images: each decodes correctly or fails with one clear reason."""

import io

import numpy as np
import pytest
from imagegen import png_bytes, scene, stripes
from PIL import Image

from nst_core.engine import images
from nst_core.engine.loop import stylize
from nst_core.engine.params import StyleParams
from nst_core.engine.targets import Pair
from nst_core.errors import ImageError


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (encoded(scene(), "JPEG")[:400], "truncated or corrupt"),
        (b"", "empty file"),
        (b"GIF89a? no, just words in a .jpg", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image"),  # a signature, no header
    ],
)
def test_broken_files_fail_with_their_reason(data, reason):
    with pytest.raises(ImageError, match=reason) as info:
        images.decode_image(data, "photo.jpg")
    assert str(info.value).startswith("photo.jpg: ")


def test_cmyk_jpeg_decodes_to_rgb():
    cmyk = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # pure red in CMYK
    decoded = images.decode_image(encoded(cmyk, "JPEG", quality=95), "cmyk.jpg")
    assert decoded.mode == "RGB" and decoded.size == (16, 8)
    r, g, b = decoded.getpixel((8, 4))
    assert r > 200 and g < 60 and b < 60


def test_16_bit_greyscale_is_scaled_not_clipped():
    array = np.array([[0, 32768, 65535]], dtype=np.uint16)
    decoded = images.decode_image(png_bytes(Image.fromarray(array)), "deep.png")
    assert [decoded.getpixel((x, 0)) for x in range(3)] == [
        (0, 0, 0),
        (128, 128, 128),
        (255, 255, 255),
    ]


def test_greyscale_and_palette_become_rgb():
    grey = images.decode_image(png_bytes(Image.new("L", (4, 4), 90)), "grey.png")
    assert grey.getpixel((0, 0)) == (90, 90, 90)
    palette = scene().convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    decoded = images.decode_image(png_bytes(palette), "palette.png")
    assert decoded.mode == "RGB"
    assert decoded.getpixel((1, 1)) == palette.convert("RGB").getpixel((1, 1))


def test_transparency_becomes_white():
    rgba = Image.new("RGBA", (4, 4), (200, 0, 0, 0))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    decoded = images.decode_image(png_bytes(rgba), "alpha.png")
    assert decoded.getpixel((1, 1)) == (255, 255, 255)
    assert decoded.getpixel((0, 0)) == (10, 20, 30)


def test_exif_orientation_is_applied():
    wide = Image.new("RGB", (40, 20), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encoded(wide, "JPEG", exif=exif.tobytes())
    assert images.decode_image(data, "phone.jpg").size == (20, 40)
    assert images.probe_size(data) == (20, 40)


def test_animated_gif_uses_its_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "lime", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    decoded = images.decode_image(buffer.getvalue(), "anim.gif")
    assert decoded.getpixel((4, 4)) == (255, 0, 0)


def test_a_one_pixel_content_is_upscaled_and_stylised():
    dot = images.decode_image(png_bytes(Image.new("RGB", (1, 1), (90, 140, 200))), "dot.png")
    params = StyleParams(size=32, iterations=3, device="cpu", precision="fp32")
    result = stylize(Pair(dot, [stripes()], params))
    assert result.image.size == (32, 32)
