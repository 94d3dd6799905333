"""Small pictures of stored images, for the gallery's thumbnails and the contact sheet.

Thumbnails live in `{output}/_runs/_thumbs/` (RunLayout.thumbs), named by a digest of what
they show (an input's bytes; an output's job key and record time) and their size. The unit
makes them from the images it has in memory (an input it read, an output it wrote), so a
gallery finds them by one listing and reads no image back; it makes only those missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from typing import TYPE_CHECKING

from PIL import Image

from nst_core.batch import storage
from nst_core.batch.layout import RunLayout

if TYPE_CHECKING:
    from nst_core.batch.records import Record

THUMB = 160  # longest side of a thumbnail, pixels


def output_digest(key: str, created_at: str) -> str:
    return _digest(f"output\n{key}\n{created_at}")


def input_digest(sha256: str) -> str:
    return _digest(f"input\n{sha256}")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def read_thumbnail(uri: str, box: int) -> Image.Image | None:
    """The image at `uri` shrunk to fit `box` x `box` (never enlarged); None when it cannot
    be read or decoded: its cell then shows no picture, and the page or sheet goes on."""
    from nst_core.engine.images import decode_image  # torch: only when an image is read

    try:
        image = decode_image(storage.read_bytes(uri), uri, longest=box)
    except (storage.StorageError, ValueError):  # ImageError is a ValueError
        return None
    image.thumbnail((box, box), Image.Resampling.LANCZOS)
    return image


def write_thumbnail(layout: RunLayout, digest: str, image: Image.Image) -> str:
    """Store `image` (already thumbnail-sized) as the thumbnail `digest`; its file name."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    name = f"{digest}.{image.width}x{image.height}.jpg"
    storage.write_bytes(f"{layout.thumbs}/{name}", buffer.getvalue(), content_type="image/jpeg")
    return name


def shrunk(image: Image.Image) -> Image.Image:
    small = image.copy()
    small.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    return small


def save_output(output: str, record: Record, image: Image.Image) -> None:
    """The thumbnail of a job's output, from the image just written. Best effort: a gallery
    makes any that is missing."""
    layout = RunLayout(storage.parent(output))
    with contextlib.suppress(storage.StorageError):
        write_thumbnail(layout, output_digest(record.key or "", record.created_at), shrunk(image))


def save_input(layout: RunLayout, sha256: str, image: Image.Image) -> None:
    """The thumbnail of an input, from the bytes a unit read. Best effort, as above."""
    with contextlib.suppress(storage.StorageError):
        write_thumbnail(layout, input_digest(sha256), shrunk(image))
