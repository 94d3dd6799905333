"""The README's look figures, composed from `bench.quality` outputs (bench/results/look/):
one pair's content, style, engine version 1's default and today's default side by side, and
a strip of one pair at several strengths. Written to docs/ as JPEG.

    python -m bench.quality --no-write --setting 'strength 0.2={"strength": 0.2}' \
        --setting 'strength 0.5={"strength": 0.5}' --setting 'strength 0.8={"strength": 0.8}'
    python -m bench.quality            # the v1 and v2 defaults, and BENCHMARKS.md
    python -m bench.figures tubingen_x_the_scream the_scream.jpg
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from bench.common import SHARED
from bench.quality import OUT

ROOT = Path(__file__).resolve().parent.parent
TILE = 256
LABEL_H = 18


def _tile(image: Image.Image) -> Image.Image:
    image = image.convert("RGB")
    image.thumbnail((TILE, TILE))
    return image


def strip(tiles: list[tuple[str, Image.Image]], path: Path) -> None:
    """Labelled tiles in one row."""
    font = ImageFont.load_default()
    height = max(_tile(image).height for _, image in tiles) + LABEL_H
    sheet = Image.new("RGB", (TILE * len(tiles), height), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (label, image) in enumerate(tiles):
        tile = _tile(image)
        sheet.paste(tile, (index * TILE + (TILE - tile.width) // 2, LABEL_H))
        draw.text((index * TILE + 4, 3), label, fill="black", font=font)
    sheet.save(path, quality=85)


def main() -> None:
    pair, style = (
        sys.argv[1:3] if len(sys.argv) > 2 else ("tubingen_x_the_scream", "the_scream.jpg")
    )
    out = ROOT / "docs"
    out.mkdir(exist_ok=True)
    stem = pair.split("_x_")[1]
    strip(
        [
            ("content", Image.open(SHARED / "tubingen.jpg")),
            ("style", Image.open(SHARED / style)),
            ("engine v1 default", Image.open(OUT / f"{pair}--gatys_v1_defaults.png")),
            ("engine v2 default", Image.open(OUT / f"{pair}--defaults.png")),
        ],
        out / f"look-{stem}.jpg",
    )
    strip(
        [
            (f"strength {s}", Image.open(OUT / f"{pair}--strength_{s}.png"))
            for s in ("0.2", "0.5", "0.8")
        ],
        out / f"strength-{stem}.jpg",
    )


if __name__ == "__main__":
    main()
