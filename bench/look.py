"""The look metric: how far an output moved towards its style, layer by layer, and how much
of its content it kept, scored by a fixed fp32 VGG19 (caffe weights) that is blind to the
loss the engine optimised.

- style, per layer: the output's Gram distance (mean squared) to the style's Gram, divided
  by the content image's own distance there: 1.0 means no style moved at that layer, 0 is
  the style's statistics exactly. `style` is their geometric mean, so no one layer hides
  the others (a total loss is dominated by whichever layer is largest in magnitude).
- colour: the distance of the per-channel RGB mean and standard deviation to the style's,
  relative to the content's.
- content: the squared distance of the output's relu4_2 features to the content's, relative
  to the content features' energy (0 = the photo unchanged).

Every image is scored at one size (longest side `size`, LANCZOS), the style image included.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from nst_core.engine import images
from nst_core.engine.losses import gram
from nst_core.engine.vgg import load_vgg

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYER = "relu4_2"


@dataclass
class Look:
    layers: dict[str, float]  # per style layer: output's Gram distance / content's
    style: float  # geometric mean of `layers`
    colour: float  # colour statistics distance / content's
    content: float  # relu4_2 distance to the content / content energy

    def row(self) -> str:
        per_layer = " | ".join(f"{self.layers[name]:.3g}" for name in STYLE_LAYERS)
        return f"{per_layer} | {self.style:.3g} | {self.colour:.2f} | {self.content:.2f}"


HEADER = (
    "| relu1_1 | relu2_1 | relu3_1 | relu4_1 | relu5_1 | style (geo. mean) | colour | content |"
)


class LookMetric:
    """Scores outputs of one content x style pair at one size."""

    def __init__(self, content: Image.Image, style: Image.Image, size: int = 256) -> None:
        self.size = size
        self.vgg = load_vgg((*STYLE_LAYERS, CONTENT_LAYER), "caffe", "max", "cpu")
        self.content_t = self._tensor(content)
        style_t = images.to_tensor(images.resize(style, images.fit_size(*style.size, size)))
        with torch.no_grad():
            feats = self.vgg(self.content_t)
            self.content_features = feats[CONTENT_LAYER]
            self.content_grams = {n: gram(feats[n]) for n in STYLE_LAYERS}
            style_feats = self.vgg(style_t)
            self.style_grams = {n: gram(style_feats[n]) for n in STYLE_LAYERS}
        self.style_colour = _colour(style_t)
        self.content_colour = _colour(self.content_t)

    def _tensor(self, image: Image.Image) -> torch.Tensor:
        size = images.fit_size(*image.size, self.size)
        return images.to_tensor(images.resize(image.convert("RGB"), size))

    @torch.no_grad()
    def __call__(self, output: Image.Image) -> Look:
        x = self._tensor(output)
        if x.shape != self.content_t.shape:
            x = torch.nn.functional.interpolate(x, size=self.content_t.shape[-2:], mode="area")
        feats = self.vgg(x)
        layers = {}
        for name in STYLE_LAYERS:
            moved = _mse(gram(feats[name]), self.style_grams[name])
            layers[name] = moved / _mse(self.content_grams[name], self.style_grams[name])
        style = math.exp(sum(math.log(max(v, 1e-12)) for v in layers.values()) / len(layers))
        colour = _distance(_colour(x), self.style_colour) / _distance(
            self.content_colour, self.style_colour
        )
        content = _mse(feats[CONTENT_LAYER], self.content_features) / float(
            self.content_features.square().mean()
        )
        return Look(layers, style, colour, content)


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).square().mean())


def _colour(x: torch.Tensor) -> torch.Tensor:
    """Per-channel mean and standard deviation of a (1, 3, H, W) image."""
    flat = x.flatten(2)
    return torch.cat([flat.mean(dim=2), flat.std(dim=2)], dim=1)


def _distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm())


def _open(path: Path) -> Image.Image:
    return images.decode_image(path.read_bytes(), str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description="Score outputs of one pair with the look metric.")
    parser.add_argument("content", type=Path)
    parser.add_argument("style", type=Path)
    parser.add_argument("outputs", type=Path, nargs="+")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    metric = LookMetric(_open(args.content), _open(args.style), args.size)
    print("| output " + HEADER)
    print("| --- " * 9 + "|")
    for path in args.outputs:
        print(f"| {path.name} | {metric(_open(path)).row()} |")


if __name__ == "__main__":
    main()
