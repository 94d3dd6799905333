"""Small synthetic images, so no test needs files from outside the repo."""

from __future__ import annotations

import io
import json
import random

import numpy as np
from PIL import Image, ImageDraw


def scene(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """A content-like picture: sky, ground and a few coloured blocks."""
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height), (120, 170, 230))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, height * 2 // 3, width, height], fill=(60, 130, 60))
    for _ in range(4 if min(width, height) >= 24 else 0):
        x, y = rng.randrange(width - 8), rng.randrange(height // 3, height - 8)
        colour = tuple(rng.randrange(256) for _ in range(3))
        draw.rectangle([x, y, x + rng.randrange(6, 16), y + rng.randrange(6, 16)], fill=colour)
    return image


def stripes(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    """A style-like picture: bold diagonal strokes in a small palette."""
    rng = random.Random(seed)
    palette = [(20, 40, 120), (240, 200, 50), (200, 60, 40), (30, 120, 140)]
    image = Image.new("RGB", (width, height), palette[0])
    draw = ImageDraw.Draw(image)
    for _ in range(60):
        x, y = rng.randrange(-width, width), rng.randrange(height)
        draw.line([(x, y), (x + width // 2, y + height // 3)], fill=rng.choice(palette), width=3)
    return image


def sinusoids(
    height: int,
    width: int,
    waves: int,
    periods: tuple[float, float],
    seed: int = 0,
    shift: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """(H, W, 3) float sums of `waves` random sinusoids per channel (periods in px, every
    orientation), sampled at points moved by `shift` = (dx, dy): a texture defined
    everywhere, so a shifted frame is exact at any sub-pixel shift and optical flow has
    detail to match in every direction."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    xs, ys = xs - shift[0], ys - shift[1]
    out = np.zeros((height, width, 3))
    for channel in range(3):
        for _ in range(waves):
            k = 2 * np.pi / rng.uniform(*periods)
            theta, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
            out[..., channel] += np.sin(k * (np.cos(theta) * xs + np.sin(theta) * ys) + phase)
    return out


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# 2 contents x 2 styles at 40 px, few iterations: the batch most flow tests run.
TINY_MANIFEST = """version: 1
name: tiny
output: out
format: png
defaults: {size: 40, iterations: 6, device: cpu, precision: fp32}
contents: [photos/*.png]
styles: [paintings/*.png]
"""


# NST_MEMORY_BUDGET_GB that holds one job of the tiny batches (40-48 px) but not two, so
# units hold one job each and records land one by one.
ONE_JOB_PER_UNIT_GB = "0.04"


def write_batch(root: str, manifest: str, name: str = "batch.yaml") -> str:
    """photos/{a,b}.png and paintings/{s1,s2}.png under `root` (a folder or an s3:// prefix),
    plus the manifest as `name`; returns the manifest's URI."""
    from nst_core.batch import storage

    storage.write_bytes(f"{root}/photos/a.png", png_bytes(scene(64, 48, seed=1)))
    storage.write_bytes(f"{root}/photos/b.png", png_bytes(scene(64, 48, seed=2)))
    storage.write_bytes(f"{root}/paintings/s1.png", png_bytes(stripes(seed=1)))
    storage.write_bytes(f"{root}/paintings/s2.png", png_bytes(stripes(seed=2)))
    storage.write_bytes(f"{root}/{name}", manifest.encode())
    return f"{root}/{name}"


def job_records(root: str) -> dict[str, dict]:
    """{URI: record} of every job record under root/out (not run folders or job claims)."""
    from nst_core.batch import storage

    return {
        uri: json.loads(storage.read_bytes(uri))
        for uri in storage.list_prefix(f"{root}/out")
        if uri.endswith(".json") and "/_runs/" not in uri and "/_claims/" not in uri
    }


def completed_record(job, **fields):
    """A record that says `job` completed, as the runner writes one (without running it)."""
    from nst_core.batch.records import Record

    record = Record.failed(job, "").model_copy(update={"status": "completed", "error": None})
    return record.model_copy(update=fields)


def job_for(content, styles, params, *, output_dir, fmt="png", sha_of=None, **kwargs):
    """A planned job over `content` and `styles` ((uri, weight) pairs), as the planner makes
    one: each input hashed and probed from its bytes in storage, or, with `sha_of`, given
    that hash and no bytes at all (nothing is read)."""
    from nst_core.batch import jobs, storage

    def planned(uri: str):
        if sha_of is not None:
            return jobs.InputFile(uri=uri, sha256=sha_of(uri))
        return jobs.probe_input(uri, storage.read_bytes(uri))

    return jobs.make_job(
        planned(str(content)),
        tuple((planned(str(uri)), weight) for uri, weight in styles),
        params,
        output_dir=output_dir,
        fmt=fmt,
        **kwargs,
    )


def is_done(job) -> bool:
    """Whether the record beside `job`'s output says it is done (read once, as a run does)."""
    from nst_core.batch import records

    return records.done(job, records.read_record(job.record))
