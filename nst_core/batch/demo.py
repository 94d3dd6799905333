"""Demo inputs drawn by the project itself, so `make demo` needs no downloads or shared files.

Two small towns under a sky (the contents), a swirling brush-stroke pattern and a
stained-glass mosaic (the styles). All deterministic: the same pictures on every machine.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter


def town(width: int = 320, height: int = 240, seed: int = 7, dusk: bool = False) -> Image.Image:
    """Houses with roofs and windows under a sky with a sun, on a green hill."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(height):  # sky gradient: deep blue to pale, or violet to orange at dusk
        f = y / height
        sky = (
            (int(90 + 160 * f), int(60 + 90 * f), int(150 - 60 * f))
            if dusk
            else (int(70 + 140 * f), int(120 + 110 * f), 235)
        )
        draw.line([(0, y), (width, y)], fill=sky)
    draw.ellipse([width * 0.72, height * 0.08, width * 0.86, height * 0.27], fill=(255, 220, 90))
    draw.ellipse([-width * 0.2, height * 0.62, width * 1.2, height * 1.5], fill=(70, 140, 60))
    rng = random.Random(seed)
    x = width * 0.04
    while x < width * 0.92:
        w = rng.uniform(0.1, 0.16) * width
        h = rng.uniform(0.16, 0.3) * height
        base = height * 0.8
        wall = rng.choice([(220, 200, 170), (200, 120, 90), (240, 235, 220), (180, 170, 150)])
        draw.rectangle([x, base - h, x + w, base], fill=wall, outline=(60, 50, 40))
        draw.polygon(
            [(x - 4, base - h), (x + w / 2, base - h - w * 0.6), (x + w + 4, base - h)],
            fill=(150, 50, 40),
        )
        for wx in (x + w * 0.2, x + w * 0.6):
            draw.rectangle([wx, base - h * 0.7, wx + w * 0.2, base - h * 0.45], fill=(60, 80, 120))
        x += w + rng.uniform(0.01, 0.04) * width
    return image


def swirls(width: int = 256, height: int = 256) -> Image.Image:
    """Thick curved strokes in a night-sky palette, circling a few centres."""
    palette = [
        (25, 45, 110),
        (40, 80, 160),
        (235, 200, 60),
        (250, 240, 170),
        (20, 90, 120),
        (90, 140, 200),
    ]
    image = Image.new("RGB", (width, height), (20, 35, 80))
    draw = ImageDraw.Draw(image)
    rng = random.Random(11)
    centres = [(rng.uniform(0, width), rng.uniform(0, height)) for _ in range(5)]
    for _ in range(900):
        cx, cy = rng.choice(centres)
        radius = rng.uniform(4, max(width, height) * 0.6)
        start = rng.uniform(0, 2 * math.pi)
        points = [
            (cx + radius * math.cos(start + a * 0.05), cy + radius * math.sin(start + a * 0.05))
            for a in range(rng.randint(3, 12))
        ]
        draw.line(points, fill=rng.choice(palette), width=rng.randint(2, 5))
    return image.filter(ImageFilter.SMOOTH)


def mosaic(width: int = 256, height: int = 256) -> Image.Image:
    """Stained glass: bright irregular tiles with dark leading between them."""
    palette = [
        (200, 40, 40),
        (240, 180, 30),
        (30, 90, 170),
        (40, 150, 80),
        (150, 60, 160),
        (240, 240, 220),
    ]
    image = Image.new("RGB", (width, height), (30, 25, 20))
    draw = ImageDraw.Draw(image)
    rng = random.Random(5)
    step = 32
    corners = {
        (i, j): (i * step + rng.uniform(-9, 9), j * step + rng.uniform(-9, 9))
        for i in range(width // step + 2)
        for j in range(height // step + 2)
    }
    for i in range(width // step + 1):
        for j in range(height // step + 1):
            quad = [
                corners[(i, j)],
                corners[(i + 1, j)],
                corners[(i + 1, j + 1)],
                corners[(i, j + 1)],
            ]
            draw.polygon(quad, fill=rng.choice(palette), outline=(30, 25, 20), width=4)
    return image


def write_demo_inputs(folder: Path) -> list[Path]:
    """Write two contents and two styles (content-*.png, style-*.png) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    drawings = {
        "content-town.png": town(),
        "content-dusk.png": town(seed=3, dusk=True),
        "style-swirls.png": swirls(),
        "style-mosaic.png": mosaic(),
    }
    paths = []
    for name, image in drawings.items():
        path = folder / name
        if not path.exists():  # keep the bytes, and so the job keys, stable across runs
            image.save(path)
        paths.append(path)
    return paths
