"""What a batch is optimised towards: its pairs, their content and style targets and starting
images, and the Gram cache through which pairs and batches share style targets."""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from nst_core.engine import images
from nst_core.engine.layers import min_side
from nst_core.engine.losses import blend_grams
from nst_core.engine.objective import FeaturesOf
from nst_core.engine.params import StyleParams
from nst_core.engine.temporal import TemporalTarget, TemporalTerm
from nst_core.engine.tiles import Tiling
from nst_core.engine.tiling import tiled_features, tiled_grams
from nst_core.errors import ImageError

Grams = dict[str, torch.Tensor]


@dataclass
class Pair:
    """One job for the engine: a content image and one or more weighted style images."""

    content: Image.Image
    styles: Sequence[Image.Image]
    params: StyleParams = field(default_factory=StyleParams)
    style_weights: Sequence[float] | None = None
    content_name: str = "content"
    style_names: Sequence[str] = ()
    style_ids: Sequence[str] = ()  # stable identities (e.g. sha256) for the Gram cache
    content_id: str | None = None  # the content's stable identity (e.g. its bytes' sha256)
    # A video frame's pull towards the previous stylised frame (temporal.py); None: a still.
    temporal: TemporalTarget | None = None

    def content_identity(self) -> str:
        """What colour-preserving style targets are cached under: the caller's identity for
        the content, else a hash of its pixels. Never id(): a freed image's address is
        reused by the next one, which would then get another content's targets."""
        if self.content_id is not None:
            return self.content_id
        digest = hashlib.sha256(f"{self.content.mode}{self.content.size}".encode())
        digest.update(self.content.tobytes())
        return digest.hexdigest()

    def style_id(self, index: int) -> str | None:
        return self.style_ids[index] if index < len(self.style_ids) else None

    def blend_weights(self) -> list[float]:
        return list(self.style_weights) if self.style_weights else [1.0] * len(self.styles)

    def style_name(self, index: int) -> str:
        return self.style_names[index] if index < len(self.style_names) else f"style[{index}]"


class GramCache:
    """Style Gram targets, computed once per style image, size and network; reused by pairs.

    A style is known by the caller's identity for it (its bytes' hash, so batches that
    decode the same file again still hit), else by the image object; entries hold the
    image, so an id() is never reused while its entry lives. The least recently used
    entries go first past `max_entries` (each is a few MB of device memory).
    """

    def __init__(self, max_entries: int = 64) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, tuple[Image.Image, Grams]] = OrderedDict()

    def get(
        self,
        key: tuple,
        image: Image.Image,
        compute: Callable[[], Grams],
        ident: str | None = None,
    ) -> Grams:
        full_key = (ident if ident is not None else id(image), *key)
        if full_key in self._entries:
            self._entries.move_to_end(full_key)
        else:
            self._entries[full_key] = (image, compute())
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return self._entries[full_key][1]


def check_sizes(
    pairs: Sequence[Pair], schedule: Sequence[tuple[int, int]], layers: Collection[str]
) -> None:
    """Every image must stay at least 1x1 at the deepest layer, at every scale."""
    need = min_side(layers)
    deepest = max(layers, key=lambda name: min_side([name]))
    for pair in pairs:
        checks = [(pair.content_name, size) for size in schedule]
        for index, style in enumerate(pair.styles):
            for w, h in schedule:
                longest = round(max(w, h) * pair.params.style_scale)
                checks.append((pair.style_name(index), images.fit_size(*style.size, longest)))
        for name, (w, h) in checks:
            if min(w, h) < need:
                raise ImageError(
                    f"{name}: too small for layer {deepest} at {w}x{h} px; it needs at least "
                    f"{need} px on each side: raise size (or scales), or use shallower layers"
                )


class Targets:
    """The inputs of one batch, built pair by pair so that no pair's start or targets depend
    on the other pairs in its batch."""

    def __init__(
        self,
        pairs: Sequence[Pair],
        device: torch.device,
        features: FeaturesOf,
        cache: GramCache,
        gram_of: Callable[[torch.Tensor], torch.Tensor],
        network_key: tuple,
    ) -> None:
        self.pairs = pairs
        self.params = pairs[0].params
        self.device = device
        self.features = features
        self.cache = cache
        self.gram_of = gram_of
        self.network_key = network_key  # what besides the style makes its Grams differ
        self._temporal: dict[tuple[int, int], TemporalTerm | None] = {}

    def contents(self, size: tuple[int, int], *, luma: bool) -> torch.Tensor:
        """Content images at `size`; with `luma`, grey for the pairs that preserve colour."""
        tensors = []
        for pair in self.pairs:
            tensor = images.to_tensor(images.resize(pair.content, size))
            if luma and pair.params.preserve_color:
                tensor = images.luminance(tensor)
            tensors.append(tensor)
        return torch.cat(tensors).to(self.device)

    def content_features(
        self, content: torch.Tensor, tiling: Tiling | None = None
    ) -> dict[str, torch.Tensor]:
        if tiling is not None:
            return tiled_features(self.features, content, self.params.content_layers, tiling)
        with torch.no_grad():
            feats = self.features(content)
            return {n: feats[n].float() for n in self.params.content_layers}

    def style_grams(
        self, size: tuple[int, int], content: torch.Tensor, tiling: Tiling | None = None
    ) -> Grams:
        """Each pair's (blended) style Grams at `size`, stacked along the batch; style images
        too large to pass whole are summed tile by tile (`tiling`)."""
        per_pair = [
            self._pair_grams(pair, size, content[b], tiling) for b, pair in enumerate(self.pairs)
        ]
        layers = self.params.style_layers
        return {name: torch.cat([g[name] for g in per_pair]) for name in layers}

    def _pair_grams(
        self, pair: Pair, size: tuple[int, int], content: torch.Tensor, tiling: Tiling | None
    ) -> Grams:
        # Colour preservation matches each style to its content, so only then does the
        # target depend on the content image.
        luma_key = pair.content_identity() if pair.params.preserve_color else None
        key = (size, pair.params.style_scale, luma_key, *self.network_key)

        def compute(style: Image.Image) -> Grams:
            tensor = self._style_tensor(pair, style, size, content)
            if tiling is not None and max(tensor.shape[-2:]) > tiling.size:
                return tiled_grams(self.features, tensor, self.params.style_layers, tiling)
            with torch.no_grad():
                feats = self.features(tensor)
                return {name: self.gram_of(feats[name]) for name in self.params.style_layers}

        grams = [
            self.cache.get(key, style, functools.partial(compute, style), pair.style_id(index))
            for index, style in enumerate(pair.styles)
        ]
        return blend_grams(grams, pair.blend_weights())

    def _style_tensor(
        self, pair: Pair, style: Image.Image, size: tuple[int, int], content: torch.Tensor
    ) -> torch.Tensor:
        longest = round(max(size) * pair.params.style_scale)
        tensor = images.to_tensor(images.resize(style, images.fit_size(*style.size, longest)))
        tensor = tensor.to(self.device)
        if pair.params.preserve_color:
            tensor = images.match_luminance(images.luminance(tensor), content)
        return tensor

    def style_layer_weights(self) -> dict[str, torch.Tensor]:
        """Style layer -> (B,) weights, since each pair may weight its layers differently."""
        per_pair = [p.params.layer_weights() for p in self.pairs]
        return {
            name: torch.tensor([w[name] for w in per_pair], device=self.device)
            for name in self.params.style_layers
        }

    def loss_weights(self) -> torch.Tensor:
        """(B, 3): each pair's content, style and total-variation weights."""
        return torch.tensor(
            [
                [p.params.content_weight, p.params.resolved_style_weight(), p.params.tv_weight]
                for p in self.pairs
            ],
            device=self.device,
        )

    def balanced(self) -> torch.Tensor:
        """(B,): the pairs whose losses are balanced (params.loss)."""
        return torch.tensor([p.params.loss == "balanced" for p in self.pairs], device=self.device)

    def temporal(self, size: tuple[int, int]) -> TemporalTerm | None:
        """The batch's temporal term at `size`, or None when no pair has a target; kept per
        size, since the start, the objective and the result all ask for it."""
        if size not in self._temporal:
            self._temporal[size] = TemporalTerm.at_scale(
                [pair.temporal for pair in self.pairs],
                size,
                self.device,
                [pair.params.preserve_color for pair in self.pairs],
            )
        return self._temporal[size]

    def initial_image(self, size: tuple[int, int], content: torch.Tensor) -> torch.Tensor:
        """Each pair's start: its content, its first style stretched to size, or its noise;
        for a pair with a temporal target, the warped previous output where it is reliable."""
        w, h = size
        starts = []
        for b, pair in enumerate(self.pairs):
            if pair.params.init == "content":
                start = content[b : b + 1].clone()
            elif pair.params.init == "palette":
                start = images.match_colours(content[b : b + 1], *self._palette(pair, size))
            elif pair.params.init == "style":
                start = images.to_tensor(images.resize(pair.styles[0], size)).to(self.device)
                if pair.params.preserve_color:
                    start = images.match_luminance(images.luminance(start), content[b])
            else:
                generator = torch.Generator().manual_seed(pair.params.seed)
                start = torch.rand(1, 3, h, w, generator=generator).to(self.device)
            starts.append(start)
        temporal = self.temporal(size)
        return torch.cat(starts) if temporal is None else temporal.start(torch.cat(starts))

    def _palette(self, pair: Pair, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The colour mean and covariance of the pair's styles, as a blend weighs them."""
        weights = pair.blend_weights()
        total = sum(weights)
        mean = torch.zeros(3, dtype=torch.float64)
        covariance = torch.zeros(3, 3, dtype=torch.float64)
        for style, weight in zip(pair.styles, weights, strict=True):
            fitted = images.resize(style, images.fit_size(*style.size, max(size)))
            m, c = images.colour_statistics(images.to_tensor(fitted))
            mean += m * (weight / total)
            covariance += c * (weight / total)
        return mean, covariance

    def recombine_colours(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Put the content colours back for the pairs that asked to preserve them."""
        keep = [p.params.preserve_color for p in self.pairs]
        if not any(keep):
            return x
        mask = torch.tensor(keep, device=x.device).view(-1, 1, 1, 1)
        return torch.where(mask, images.recombine_colour(x, self.contents(size, luma=False)), x)
