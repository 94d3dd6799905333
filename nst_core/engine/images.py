"""Decode, resize and encode images; colour-space helpers for colour preservation.

Decoding accepts what photo folders really hold (CMYK, 16-bit, greyscale, palette, alpha,
EXIF-rotated, animated, colour-managed) and turns everything else into one clear ImageError.
Only photo formats reach a decoder: Pillow knows PostScript (through Ghostscript), PDF, PSD
and more, and an input from a bucket is untrusted. An input's pixels are bounded from its
header before it is decoded, and a large photo for a small output is shrunk while it is
decoded (JPEG's DCT scaling, then an integer box reduction), so its full-size pixels are
held once at most, never beside copies of themselves.
"""

from __future__ import annotations

import io
import warnings
from pathlib import PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from nst_core.engine.limits import Limits
from nst_core.errors import ImageError

# Output formats by file extension, with the Pillow format name and save options.
FORMATS = {
    ".png": ("PNG", {}),
    ".jpg": ("JPEG", {"quality": 95}),
    ".jpeg": ("JPEG", {"quality": 95}),
    ".webp": ("WEBP", {"quality": 95}),
}
# The formats inputs may be in: what cameras, phones, scanners and the web write (Pillow's
# JPEG opener also reads the multi-picture JPEGs, MPO, of phones and stereo cameras).
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")
PHOTO_FORMATS_TEXT = "JPEG, PNG, WebP, TIFF, BMP or GIF"
Image.init()  # registers every opener, so that `formats=` can name any of the above

_HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
# The profile outputs carry. LittleCMS stamps the time it made it (header bytes 24-35), which
# would make one job's output differ from process to process; a fixed date keeps them equal.
_SRGB_BYTES = _SRGB.tobytes()[:24] + bytes([7, 234, 0, 1, 0, 1]) + bytes(6) + _SRGB.tobytes()[36:]
# The modes an ICC profile of each colour space converts from.
_PROFILE_MODES = {"RGB": "RGB", "GRAY": "L", "CMYK": "CMYK"}


def decode_image(
    data: bytes,
    name: str,
    *,
    longest: int | None = None,
    max_pixels: int = Limits().max_input_pixels,
) -> Image.Image:
    """Bytes -> sRGB RGB PIL image with EXIF orientation applied, or ImageError naming
    `name`. With `longest`, an image whose longer side is larger comes back with that longer
    side (aspect kept): nothing downstream needs more. More than `max_pixels` pixels (from the
    header) is refused before decoding."""
    if not data:
        raise ImageError(f"{name}: empty file, not an image")
    try:
        with warnings.catch_warnings():
            # The pixel bound below replaces Pillow's bomb warning; its hard limit stays.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=PHOTO_FORMATS)
            _check_pixels(opened.size, max_pixels, name)
            opened.seek(0)  # animated images: the first frame
            if longest is not None and opened.format in ("JPEG", "MPO"):
                opened.draft(opened.mode, fit_size(*opened.size, longest))
            opened.load()
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(
            f"{name}: image is larger than Pillow's decompression-bomb limit "
            f"({2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels); downscale it before stylising"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image in a photo format ({PHOTO_FORMATS_TEXT})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{name}: truncated or corrupt image ({exc})") from None
    image: Image.Image = opened
    if longest is not None:
        image = _reduced(image, longest)
    profile = image.info.get("icc_profile")
    # In place: a photo that needs no turning is not copied (a full-size copy, otherwise).
    ImageOps.exif_transpose(image, in_place=True)
    image = _flattened(image)
    image = _to_srgb(image, profile)
    if longest is not None and max(image.size) > longest:
        image = image.resize(fit_size(*image.size, longest), Image.Resampling.LANCZOS)
    return image


def _check_pixels(size: tuple[int, int], max_pixels: int, name: str) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageError(
            f"{name}: {width:,} x {height:,} px is {width * height / 1e6:,.1f} megapixels; an "
            f"input may have at most {max_pixels / 1e6:,.0f} (NST_MAX_INPUT_MEGAPIXELS): "
            "downscale it, or raise the setting"
        )


def _reduced(image: Image.Image, longest: int) -> Image.Image:
    """`image` shrunk by the largest whole factor that keeps its longer side >= `longest`
    (a box filter over the decoded pixels; LANCZOS finishes the job at the end)."""
    factor = max(image.size) // longest
    if factor < 2 or image.mode not in ("RGB", "RGBA", "L", "LA", "CMYK", "I", "F"):
        return image
    info = image.info
    reduced = image.reduce(factor)
    reduced.info = info  # the ICC profile and EXIF still describe the pixels
    return reduced


def probe_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) after EXIF rotation, from the header alone; None if unreadable or
    not a photo format."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=PHOTO_FORMATS)
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except Exception:  # any decoder failure: the job itself will report it
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _flattened(image: Image.Image) -> Image.Image:
    """RGB, L or CMYK: high depth scaled to 8 bits, palettes expanded, alpha over white."""
    if image.mode in _HIGH_DEPTH_MODES:
        # Pillow's convert("L") clips 16-bit values instead of scaling them.
        array = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if array.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent areas become white, as most viewers show them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode not in ("RGB", "L", "CMYK"):
        image = image.convert("RGB")
    return image


def _to_srgb(image: Image.Image, profile: bytes | None) -> Image.Image:
    """RGB in sRGB: converted from the embedded ICC profile where there is one that fits the
    pixels (Display P3 from phones, Adobe RGB from cameras, a press CMYK); without one, or
    with one that cannot be read, the pixels are taken as sRGB, as browsers do."""
    if profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            mode = _PROFILE_MODES.get(source.profile.xcolor_space.strip())
            if mode == image.mode:
                converted = ImageCms.profileToProfile(
                    image,
                    source,
                    _SRGB,
                    renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
                    outputMode="RGB",
                )
                assert converted is not None  # inPlace=False returns the new image
                return converted
        except (OSError, ImageCms.PyCMSError):
            pass
    return image if image.mode == "RGB" else image.convert("RGB")


def fit_size(width: int, height: int, longest: int) -> tuple[int, int]:
    """(width, height) scaled so the longest side is `longest`, aspect kept, each side >= 1."""
    scale = longest / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) float32 in [0, 1]."""
    array = np.array(image, dtype=np.uint8)  # a writable copy: torch.from_numpy shares it
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).float().contiguous() / 255.0


def to_image(tensor: torch.Tensor) -> Image.Image:
    """(3, H, W) or (1, 3, H, W) in [0, 1] -> PIL RGB (values clamped, rounded)."""
    if tensor.dim() == 4:
        tensor = tensor[0]
    array = (tensor.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy(), "RGB")


def format_for(name: str) -> str:
    """The output extension of `name` (lower case), or ImageError naming the allowed ones."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in FORMATS:
        raise ImageError(
            f"{name}: unsupported output format {suffix or '(none)'}; use one of "
            + ", ".join(sorted(FORMATS))
        )
    return suffix


def encode_image(image: Image.Image, name: str) -> bytes:
    """Encode for the extension of `name`."""
    pil_format, options = FORMATS[format_for(name)]
    buffer = io.BytesIO()
    # Tagged sRGB, which the pixels are: colour-managed viewers then show what was made.
    image.save(buffer, format=pil_format, icc_profile=_SRGB_BYTES, **options)
    return buffer.getvalue()


# YIQ (NTSC) transform: Y is luminance; I and Q carry the colour.
_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]]
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def rgb_to_yiq(image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", _RGB_TO_YIQ.to(image), image)


def yiq_to_rgb(image: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", _YIQ_TO_RGB.to(image), image)


def luminance(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 3, H, W) grey image of its luminance."""
    return rgb_to_yiq(image)[:, :1].expand(-1, 3, -1, -1).contiguous()


def match_luminance(source: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Shift and scale each `source` image's luminance to its `reference`'s mean and spread.

    Gatys et al. 2016, "Preserving colour": the style's luminance histogram is matched to
    the content's before a luminance-only transfer. Per image, so batches stay independent.
    """
    dims = (-3, -2, -1)
    mean_s, std_s = source.mean(dims, keepdim=True), source.std(dims, keepdim=True)
    mean_r, std_r = reference.mean(dims, keepdim=True), reference.std(dims, keepdim=True)
    return ((source - mean_s) / std_s.clamp_min(1e-6) * std_r + mean_r).clamp(0, 1)


def colour_statistics(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The RGB mean (3,) and covariance (3, 3) of a (1, 3, H, W) image, in float64 on the
    host (MPS has no float64; a 3x3 problem gains nothing from a device)."""
    pixels = image.reshape(3, -1).cpu().double()
    return pixels.mean(dim=1), torch.cov(pixels)


def match_colours(
    source: torch.Tensor, mean: torch.Tensor, covariance: torch.Tensor
) -> torch.Tensor:
    """`source` (1, 3, H, W) recoloured to the given RGB mean and covariance by one affine map
    of its pixels, x -> C_t^1/2 C_s^-1/2 (x - m_s) + m_t (Gatys et al. 2017, "Controlling
    perceptual factors", colour histogram matching): the layout and detail are the source's,
    the palette the target's."""
    own_mean, own_cov = colour_statistics(source)
    eye = 1e-5 * torch.eye(3, dtype=torch.float64)
    root = _symmetric_power(covariance.cpu().double() + eye, 0.5)
    map_ = root @ _symmetric_power(own_cov + eye, -0.5)
    pixels = source.reshape(3, -1).cpu().double()
    moved = map_ @ (pixels - own_mean[:, None]) + mean.double().cpu()[:, None]
    return moved.reshape(source.shape).to(source.device, source.dtype).clamp(0, 1)


def _symmetric_power(matrix: torch.Tensor, power: float) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp_min(1e-8) ** power) @ vectors.T


def recombine_colour(stylised_luma: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Stylised luminance with the content image's colour (I and Q channels)."""
    yiq = rgb_to_yiq(content)
    y = rgb_to_yiq(stylised_luma)[:, :1]
    return yiq_to_rgb(torch.cat([y, yiq[:, 1:]], dim=1)).clamp(0, 1)
