"""Small pictures of stored images, for the gallery's thumbnails and the contact sheet."""

from __future__ import annotations

from PIL import Image

from nst_core.batch import storage


def read_thumbnail(uri: str, box: int) -> Image.Image | None:
    """The image at `uri` shrunk to fit `box` x `box` (never enlarged); None when it cannot
    be read or decoded: its cell then shows no picture, and the page or sheet goes on."""
    from nst_core.engine.images import decode_image  # torch: only when an image is read

    try:
        image = decode_image(storage.read_bytes(uri), uri)
    except (storage.StorageError, ValueError):  # ImageError is a ValueError
        return None
    image.thumbnail((box, box), Image.Resampling.LANCZOS)
    return image
