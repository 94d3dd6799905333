"""What the benchmarks share: inputs, the fixed fp32 quality evaluator, trace arithmetic."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

from nst_core.batch import demo
from nst_core.batch.jobs import InputFile, Job
from nst_core.engine import images
from nst_core.engine.execution import Execution
from nst_core.engine.loop import network_for
from nst_core.engine.losses import content_loss, gram, style_loss
from nst_core.engine.params import StyleParams

# The project's sample photos; NST_BENCH_IMAGES points elsewhere (a device machine, where
# only the repository travels and the photos come as a carried folder).
SHARED = Path(
    os.environ.get("NST_BENCH_IMAGES")
    or Path(__file__).resolve().parent.parent.parent / "shared" / "images"
)


def inputs() -> tuple[object, object, str]:
    """(content, style, description): the sample photos when present, else drawn images."""
    content, style = SHARED / "tubingen.jpg", SHARED / "starry_night.jpg"
    if content.exists() and style.exists():
        return (
            images.decode_image(content.read_bytes(), str(content)),
            images.decode_image(style.read_bytes(), str(style)),
            "tubingen.jpg x starry_night.jpg",
        )
    return demo.town(1024, 768), demo.swirls(1024, 1024), "drawn town x drawn swirls"


def input_files(folder: Path) -> tuple[Path, Path]:
    """The inputs of `inputs()` as files, for commands: the photos themselves when present,
    else the drawn images written into `folder`."""
    content, style = SHARED / "tubingen.jpg", SHARED / "starry_night.jpg"
    if content.exists() and style.exists():
        return content, style
    drawn_content, drawn_style, _ = inputs()
    content, style = folder / "town.png", folder / "swirls.png"
    drawn_content.save(content)
    drawn_style.save(style)
    return content, style


def tensors(content, style, size: int, style_scale: float = 1.0):
    """Content and style as (1, 3, H, W) tensors at the output size (longest side `size`)."""
    width, height = images.fit_size(*content.size, size)
    content_t = images.to_tensor(images.resize(content, (width, height)))
    longest = round(size * style_scale)
    style_t = images.to_tensor(images.resize(style, images.fit_size(*style.size, longest)))
    return content_t, style_t


class Evaluator:
    """The one yardstick: content_weight * content + style_weight * style, fp32, at size."""

    def __init__(self, content, style, params: StyleParams):
        self.params = params
        self.vgg = network_for(params, "cpu")
        content_t, style_t = tensors(content, style, params.size, params.style_scale)
        with torch.no_grad():
            self.content_targets = {n: self.vgg(content_t)[n] for n in params.content_layers}
            feats = self.vgg(style_t)
            self.style_targets = {n: gram(feats[n]) for n in params.style_layers}

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> float:
        feats = self.vgg(image.float().clamp(0, 1))
        content = content_loss(feats, self.content_targets).sum().item()
        style = style_loss(feats, self.style_targets, self.params.layer_weights()).sum().item()
        return self.params.content_weight * content + self.params.resolved_style_weight() * style


def time_to_loss(trace: list[tuple[float, float]], target: float) -> float | None:
    """Seconds until the running minimum of (seconds, loss) reaches `target`, or None."""
    best = float("inf")
    for seconds, loss in trace:
        best = min(best, loss)
        if best <= target:
            return seconds
    return None


def loss_at(trace: list[tuple[float, float]], seconds: float) -> float:
    """The best loss reached by `seconds`."""
    reached = [loss for t, loss in trace if t <= seconds]
    return min(reached) if reached else float("inf")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = next(line for line in lines if line.startswith("flags"))
        cpu += " (AMX)" if "amx_bf16" in flags else " (no AMX)"
    except (OSError, StopIteration):
        pass
    try:
        memory = subprocess.run(["free", "-g"], capture_output=True, text=True).stdout.split()[7]
    except (OSError, IndexError):
        memory = "?"
    return (
        f"{cpu}, {torch.get_num_threads()} threads, {memory} GiB RAM; Python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )


def write_section(name: str, body: str) -> None:
    """Replace the text between BENCHMARKS.md's `<!-- NAME:begin/end -->` markers."""
    path = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    path.write_text(f"{head}{begin}\n{body}\n{end}{rest.split(end, 1)[1]}")


def planning_job(params: StyleParams, width: int, height: int) -> Job:
    """A job of `params` on a content of width x height, for the planner (units.py) alone:
    its URIs and hashes are placeholders, never read."""
    return Job(
        content_file=InputFile("c", "0" * 64, pixels=(width, height)),
        style_files=(InputFile("s", "1" * 64),),
        weights=(1.0,),
        params=params,
        key="k",
        output="o",
        record="r",
        execution=Execution.asked(params),
    )
