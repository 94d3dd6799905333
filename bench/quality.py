"""`python -m bench.quality`: what outputs look like, by the look metric (bench/look.py), for
the sample pairs at 256 px: the engine under named settings, and neural-style's published
outputs where `../shared/images/reference/` has them.

Each setting's outputs are written to bench/results/look/ for eyes; the table goes to
bench/results/quality.json and into BENCHMARKS.md between the `look` markers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.common import SHARED, machine, write_section
from bench.look import HEADER, LookMetric
from nst_core.batch import demo
from nst_core.engine import images
from nst_core.engine.loop import stylize
from nst_core.engine.params import StyleParams
from nst_core.engine.targets import Pair

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "look"
SIZE = 256
# (label, content, style, reference): the sample pairs, else the demo's drawn pair.
PAIRS = (
    ("tubingen x starry_night", "tubingen.jpg", "starry_night.jpg", "tubingen_starry.png"),
    ("tubingen x the_scream", "tubingen.jpg", "the_scream.jpg", "tubingen_scream.png"),
)
# Named settings: what a user gets from each (the defaults of this version among them).
SETTINGS: dict[str, dict] = {
    "gatys (v1 defaults)": {"loss": "gatys"},  # style weight 50 with this loss
    "defaults": {},
}


def pairs() -> list[tuple[str, object, object, object | None]]:
    found = []
    for label, content, style, reference in PAIRS:
        c, s, r = SHARED / content, SHARED / style, SHARED / "reference" / reference
        if c.exists() and s.exists():
            found.append((label, _open(c), _open(s), _open(r) if r.exists() else None))
    if not found:
        found.append(("drawn town x drawn swirls", demo.town(512, 384), demo.swirls(), None))
    return found


def _open(path: Path):
    return images.decode_image(path.read_bytes(), str(path))


def run(settings: dict[str, dict], size: int = SIZE) -> list[dict]:
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, content, style, reference in pairs():
        metric = LookMetric(content, style, size)
        if reference is not None:
            rows.append(
                {"pair": label, "setting": "neural-style (published)", **_look(metric(reference))}
            )
        for name, overrides in settings.items():
            params = StyleParams(size=size, device="cpu", precision="fp32", **overrides)
            started = time.perf_counter()
            result = stylize(Pair(content, [style], params))
            seconds = time.perf_counter() - started
            stem = f"{label}--{name}".replace(" ", "_").replace("(", "").replace(")", "")
            result.image.save(OUT / f"{stem}.png")
            rows.append(
                {
                    "pair": label,
                    "setting": name,
                    "seconds": round(seconds, 1),
                    **_look(metric(result.image)),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _look(look) -> dict:
    return {
        "layers": look.layers,
        "style": look.style,
        "colour": look.colour,
        "content": look.content,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| pair | setting " + HEADER,
        "| --- " * 10 + "|",
    ]
    for r in rows:
        per_layer = " | ".join(f"{v:.3g}" for v in r["layers"].values())
        lines.append(
            f"| {r['pair']} | {r['setting']} | {per_layer} | {r['style']:.3g} | "
            f"{r['colour']:.2f} | {r['content']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="Score these settings instead of the named ones.",
    )
    parser.add_argument("--no-write", action="store_true", help="Leave BENCHMARKS.md alone.")
    args = parser.parse_args()
    settings = SETTINGS
    if args.setting:
        settings = {}
        for item in args.setting:
            name, _, body = item.partition("=")
            settings[name] = json.loads(body)
    rows = run(settings)
    print(table(rows))
    if not args.no_write:
        (ROOT / "bench" / "results" / "quality.json").write_text(json.dumps(rows, indent=2))
        body = (
            f"Look metric (bench/look.py) at {SIZE} px, fp32, on {machine()}; outputs in "
            "bench/results/look/.\n\n" + table(rows)
        )
        write_section("look", body)


if __name__ == "__main__":
    main()
