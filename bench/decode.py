"""Peak memory of batches whose photos are far larger than their outputs, through `nst run`.

Two folders, made here: six 9000 x 9000 PNGs of about 260 KB each (flat colour with a few
shapes: small files, 81 megapixels decoded) stylised at `size: 48`, and six 24-megapixel
JPEGs (6000 x 4000, the sample photos of ../shared/images enlarged, or drawn scenes when
that folder is missing) at `size: 512`. Each runs as `nst run` in its own process with the
CPU's 4 GB budget; the figure is that process's peak RSS (the embedded Prefect server is a
process of its own and not counted). Iterations are few: memory, not the look, is measured.

    python -m bench.decode [--case pngs|jpegs] [--no-write]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

from bench.common import machine, write_section

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("NST_BENCH_IMAGES", ROOT.parent / "shared" / "images"))
BUDGET_GB = 4.0
CASES = {
    # name: (size, iterations, how many contents)
    "pngs": (48, 4, 6),
    "jpegs": (512, 3, 6),
}


def flat_png(path: Path, seed: int) -> None:
    image = Image.new("RGB", (9000, 9000), (40 + seed * 30, 120, 200))
    draw = ImageDraw.Draw(image)
    for k in range(6):
        x = 900 * k + 300 * seed
        draw.ellipse([x, 1000 + 500 * k, x + 2500, 3500 + 500 * k], fill=(230, 60 + 20 * k, 40))
    image.save(path, optimize=True)


def camera_jpeg(path: Path, seed: int) -> None:
    photos = sorted(SHARED.glob("*.jpg")) + sorted((SHARED / "tuning").glob("*.jpg"))
    if photos:
        base = Image.open(photos[seed % len(photos)]).convert("RGB")
    else:
        from nst_core.batch import demo

        base = demo.town(600, 400)
    base.resize((6000, 4000), Image.Resampling.BICUBIC).save(path, quality=92)


def style_png(path: Path) -> None:
    from nst_core.batch import demo

    demo.swirls(512, 512).save(path)


def run_case(name: str, area: Path) -> dict:
    size, iterations, count = CASES[name]
    photos = area / "photos"
    photos.mkdir(parents=True)
    make = flat_png if name == "pngs" else camera_jpeg
    suffix = "png" if name == "pngs" else "jpg"
    for i in range(count):
        make(photos / f"p{i}.{suffix}", i)
    style_png(area / "style.png")
    manifest = area / "batch.yaml"
    manifest.write_text(
        f"version: 1\nname: {name}\noutput: out\nformat: png\n"
        f"defaults: {{size: {size}, iterations: {iterations}, device: cpu}}\n"
        f"contents: [photos/*.{suffix}]\nstyles: [style.png]\n"
    )
    inputs = sorted(photos.iterdir())
    env = os.environ | {"NST_MEMORY_BUDGET_GB": str(BUDGET_GB)}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "nst_cli", "run", str(manifest)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    records = [json.loads(p.read_text()) for p in (area / "out").glob("*.json")]
    return {
        "inputs": len(inputs),
        "input_px": list(Image.open(inputs[0]).size),
        "input_kb": round(sum(p.stat().st_size for p in inputs) / len(inputs) / 1024),
        "size": size,
        "exit": done.returncode,
        "completed": sum(r.get("status") == "completed" for r in records),
        # The largest process this one waited for: `nst run` (its server is smaller).
        "peak_rss_mb": round(peak_kb / 1024),
        "budget_mb": round(BUDGET_GB * 1024),
        "wall_s": round(time.perf_counter() - started, 1),
        "tail": done.stdout.strip().splitlines()[-1:] + done.stderr.strip().splitlines()[-2:],
    }


def report(results: dict) -> str:
    lines = [
        f"`python -m bench.decode` on {machine()}; each case one `nst run` process, "
        f"NST_MEMORY_BUDGET_GB={BUDGET_GB:g}, peak RSS of that process (the embedded "
        "Prefect server not counted). The planner's model of a decode: "
        f"{images_bytes_per_pixel()} bytes per input pixel.",
        "",
        "| case | inputs | size | jobs completed | peak RSS | budget | wall |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        w, h = r["input_px"]
        lines.append(
            f"| {name} | {r['inputs']} x {w}x{h} ({r['input_kb']:,} KB each) | {r['size']} | "
            f"{r['completed']} of {r['inputs']} | {r['peak_rss_mb']:,} MB | "
            f"{r['budget_mb']:,} MB | {r['wall_s']} s |"
        )
    return "\n".join(lines)


def images_bytes_per_pixel() -> str:
    from nst_core.batch.memory_model import DECODE_BYTES_PER_PIXEL

    return ", ".join(f"{n} {how}" for how, n in DECODE_BYTES_PER_PIXEL.items())


def main() -> None:
    args = sys.argv[1:]
    if "--one" in args:  # in a process of its own, so its children's peak is this case's
        with tempfile.TemporaryDirectory() as area:
            print(json.dumps(run_case(args[args.index("--one") + 1], Path(area))))
        return
    names = [args[args.index("--case") + 1]] if "--case" in args else list(CASES)
    results = {}
    for name in names:
        one = [sys.executable, "-m", "bench.decode", "--one", name]
        out = subprocess.run(one, cwd=ROOT, capture_output=True, text=True, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(name, json.dumps(results[name]), flush=True)
    if "--no-write" not in args:
        write_section("decode", report(results))


if __name__ == "__main__":
    main()
