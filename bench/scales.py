"""Single-scale against `scales: auto` at a large size: time, the look metric, and crops of
both at full resolution side by side, to choose `scales`' default by looking and measuring.

At large sizes one scale paints strokes of the network's receptive field, a few tens of
pixels: small against the picture. `auto` starts at 512 px and doubles, so the coarse scales
lay down strokes at the picture's scale, which the finer ones keep.

    python -m bench.scales [--size 1024] [--iterations N] [--out docs/scales-1024.jpg]
    python -m bench.scales --equal-time [--size 1024] [--iterations N]

`--equal-time` adds one scale given the time `auto` took (its iterations scaled by the
measured ratio), so the schedule is not judged against a run that simply stopped sooner; the
two rows measured before with the same size and iterations are read back from
bench/results/scales.json rather than run again.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from PIL import Image, ImageDraw

from bench.common import SHARED, inputs, machine, write_section
from bench.look import LookMetric
from nst_core.engine.loop import stylize
from nst_core.engine.params import StyleParams
from nst_core.engine.targets import Pair

ROOT = Path(__file__).resolve().parent.parent
CROP = 320  # pixels of the output shown per crop, at full resolution
LOOK_SIZE = 512  # the look metric's scoring size: large enough to see strokes
RESULTS = ROOT / "bench" / "results" / "scales.json"


def run(size: int, scales, iterations: int) -> dict:
    content, style, description = inputs()
    params = StyleParams(size=size, device="cpu", scales=scales, iterations=iterations)
    started = time.perf_counter()
    result = stylize(Pair(content, [style], params))
    seconds = time.perf_counter() - started
    look = LookMetric(content, style, LOOK_SIZE)(result.image)
    print(f"scales {scales}: {seconds:.0f} s, {result.evaluations} evaluations, {look}", flush=True)
    return {
        "scales": scales or "single",
        "iterations": iterations,
        "schedule": params.schedule(),
        "seconds": seconds,
        "evaluations": result.evaluations,
        "style": look.style,
        "colour": look.colour,
        "content": look.content,
        "pairs": description,
        "image": result.image,
    }


def _measured_before(saved: list[dict], size: int, iterations: int) -> list[dict]:
    """The single and auto rows of an earlier run at this size and iterations, if any."""
    found = [
        row
        for row in saved
        if row["scales"] in ("single", "auto")
        and row["schedule"][-1] == size
        and row.get("iterations") == iterations
    ]
    return found if [r["scales"] for r in found] == ["single", "auto"] else []


def side_by_side(rows: list[dict], out: Path) -> None:
    """Crops of the same place in each output, full resolution, labelled."""
    width, height = rows[0]["image"].size
    # The sample photo's houses and river: where stroke size shows best.
    left, top = int(width * 0.55), int(height * 0.45)
    box = (left, top, min(width, left + CROP), min(height, top + CROP))
    crops = [row["image"].crop(box) for row in rows]
    sheet = Image.new(
        "RGB", (sum(c.width for c in crops) + 8 * (len(crops) - 1), CROP + 24), "white"
    )
    x = 0
    for row, crop in zip(rows, crops, strict=True):
        sheet.paste(crop, (x, 24))
        label = f"scales: {row['scales']} {row['schedule']}, {row['evaluations']} evaluations"
        ImageDraw.Draw(sheet).text((x + 4, 6), label, fill="black")
        x += crop.width + 8
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument(
        "--iterations", type=int, default=StyleParams().iterations, help="per scale, at most"
    )
    parser.add_argument("--out", type=Path, help="where to write the crops side by side")
    parser.add_argument("--equal-time", action="store_true", help="add one scale given auto's time")
    args = parser.parse_args()
    measured = []
    if args.equal_time and RESULTS.exists():
        measured = _measured_before(json.loads(RESULTS.read_text()), args.size, args.iterations)
    rows = measured or [
        run(args.size, None, args.iterations),
        run(args.size, "auto", args.iterations),
    ]
    if args.equal_time:
        single, auto = rows[0], rows[1]
        iterations = round(args.iterations * auto["seconds"] / single["seconds"])
        rows.append(run(args.size, None, iterations) | {"scales": "single, auto's time"})
    if args.out and all("image" in row for row in rows):
        side_by_side(rows, args.out)
    results = [{k: v for k, v in row.items() if k != "image"} for row in rows]
    RESULTS.write_text(json.dumps(results, indent=2))
    lines = [
        f"`python -m bench.scales --size {args.size} --iterations {args.iterations}"
        f"{' --equal-time' if args.equal_time else ''}` on "
        f"{machine()}; {results[0]['pairs']}"
        f"{'' if (SHARED / 'tubingen.jpg').exists() else ' (the sample photos were missing)'}"
        f"; look scored at {LOOK_SIZE} px:",
        "",
        "| scales | schedule | seconds | evaluations | style | colour | content |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['scales']} | {r['schedule']} | {r['seconds']:.0f} | {r['evaluations']} | "
        f"{r['style']:.4f} | {r['colour']:.2f} | {r['content']:.2f} |"
        for r in results
    ]
    write_section("scales", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
