"""Decode, resize and encode images; colour-space helpers for colour preservation.

Decoding accepts what photo folders really hold (CMYK, 16-bit, greyscale, palette, alpha,
EXIF-rotated, animated) and turns everything else into one clear ImageError. Pillow's
decompression-bomb limit stays on: a huge declared size is refused before it is decoded.
"""

from __future__ import annotations

import io
import warnings
from pathlib import PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from nst_core.errors import ImageError

# Output formats by file extension, with the Pillow format name and save options.
FORMATS = {
    ".png": ("PNG", {}),
    ".jpg": ("JPEG", {"quality": 95}),
    ".jpeg": ("JPEG", {"quality": 95}),
    ".webp": ("WEBP", {"quality": 95}),
}

_HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def decode_image(data: bytes, name: str) -> Image.Image:
    """Bytes -> RGB PIL image with EXIF orientation applied, or ImageError naming `name`."""
    if not data:
        raise ImageError(f"{name}: empty file, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.seek(0)  # animated images: the first frame
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"{name}: image is larger than Pillow's decompression-bomb limit "
            f"({Image.MAX_IMAGE_PIXELS:,} pixels); downscale it before stylising"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{name}: truncated or corrupt image ({exc})") from None
    return _to_rgb(ImageOps.exif_transpose(image))


def probe_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) after EXIF rotation, from the header alone; None if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except Exception:  # any decoder failure: the job itself will report it
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _to_rgb(image: Image.Image) -> Image.Image:
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
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


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
    image.save(buffer, format=pil_format, **options)
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


def recombine_colour(stylised_luma: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Stylised luminance with the content image's colour (I and Q channels)."""
    yiq = rgb_to_yiq(content)
    y = rgb_to_yiq(stylised_luma)[:, :1]
    return yiq_to_rgb(torch.cat([y, yiq[:, 1:]], dim=1)).clamp(0, 1)
