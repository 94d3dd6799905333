"""Shared fixtures: small synthetic images written where tests need them."""

from __future__ import annotations

import pytest
from imagegen import scene, stripes
from PIL import Image


@pytest.fixture
def content_image() -> Image.Image:
    return scene()


@pytest.fixture
def style_image() -> Image.Image:
    return stripes()


@pytest.fixture
def image_files(tmp_path, content_image, style_image):
    """(content path, style path) written as PNG under tmp_path."""
    content, style = tmp_path / "content.png", tmp_path / "style.png"
    content_image.save(content)
    style_image.save(style)
    return content, style
