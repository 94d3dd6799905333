"""StyleParams: every tunable of one style-transfer job, with defaults and validation.

One model serves the `nst stylize` options, a manifest's `defaults` and per-pair `params`,
and the Prefect flow's overrides, so a name means the same thing everywhere.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from nst_core.engine.layers import LAYER_NAMES
from nst_core.engine.ranges import Range, Weight

DEFAULT_CONTENT_LAYERS = ("relu4_2",)
DEFAULT_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
# strength s in [0, 1] -> balanced style weight 10 ** (low + (high - low) * s), chosen by the
# look metric on the sample pairs (BENCHMARKS.md, "look").
STRENGTH_CURVE = (-1.0, 3.0)  # 0.1 to 1000; strength 0.5 is 10
DEFAULT_STRENGTH = 0.5
GATYS_STYLE_WEIGHT = 50.0  # the style weight of `loss: gatys` when none is given
# The stopping rule (stopping.py): on the sample pairs at 256 px it saved 12-35% of the
# evaluations with outputs the eye cannot tell from a full run (BENCHMARKS.md, "stopping").
DEFAULT_STOP_TOLERANCE = 0.01
DEFAULT_STOP_WINDOW = 20
# `scales: auto` (the default) starts here and doubles up to `size`: strokes keep a painting's
# size on large outputs instead of turning into fine texture. At 1024 px it brought the look
# metric's style distance from 0.089 to 0.049 for 1.4x the time (BENCHMARKS.md, "scales").
AUTO_SCALES_FROM = 512
# Weight sources that name no file: the only ones an untrusted manifest may choose.
BUILTIN_WEIGHTS = ("caffe", "torchvision")


class StyleParams(BaseModel):
    """Tunables of the Gatys et al. optimisation. Unknown fields are errors."""

    # Every number has a finite Range; allow_inf_nan also guards any float added without one.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    size: Annotated[int, Range(16, 8192)] = Field(
        default=512, description="Longest side of the output, pixels."
    )
    iterations: Annotated[int, Range(1, 100_000)] = Field(
        default=200,
        description="Loss evaluations (forward+backward) per scale, at most: the stopping rule "
        "ends a scale sooner once the loss no longer moves.",
    )
    stop_tolerance: Annotated[float, Range(0, 1, high_open=True)] = Field(
        default=DEFAULT_STOP_TOLERANCE,
        description="Stop a pair early at a scale once its best loss improved by less than this "
        "fraction over its last stop_window evaluations there; 0 runs every iteration.",
    )
    stop_window: Annotated[int, Range(1, 10_000)] = Field(
        default=DEFAULT_STOP_WINDOW,
        description="Evaluations the stopping rule looks back over.",
    )
    content_layers: tuple[str, ...] = Field(
        default=DEFAULT_CONTENT_LAYERS,
        min_length=1,
        description="VGG19 layers whose features are kept.",
    )
    style_layers: tuple[str, ...] = Field(
        default=DEFAULT_STYLE_LAYERS,
        min_length=1,
        description="VGG19 layers whose Gram matrices match.",
    )
    style_layer_weights: tuple[Weight, ...] | None = Field(
        default=None, description="One weight per style layer; default: equal weights summing to 1."
    )
    content_weight: Weight = Field(default=1.0, description="Weight of the content loss.")
    strength: Annotated[float, Range(0, 1)] = Field(
        default=DEFAULT_STRENGTH,
        description="How far to stylise, 0 (the photo) to 1 (mostly the painting's textures); "
        "sets the style weight unless style_weight is given.",
    )
    style_weight: Weight | None = Field(
        default=None,
        description="Weight of the style loss, for experts; when set it wins over strength.",
    )
    tv_weight: Weight = Field(default=0.0, description="Weight of the total-variation loss.")
    loss: Literal["gatys", "balanced"] = Field(
        default="balanced",
        description="gatys: plain MSE of features and Grams; balanced: each content and style "
        "layer's error relative to its target's energy, so no layer dominates by magnitude.",
    )
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    lbfgs_history: Annotated[int, Range(1, 200)] = Field(
        default=20, description="L-BFGS curvature pairs kept per image."
    )
    learning_rate: Annotated[float, Range(0, 10, low_open=True)] = Field(
        default=0.02, description="Adam step size, in units of the 0-1 image range."
    )
    init: Literal["content", "palette", "noise", "style"] = Field(
        default="content",
        description="The start: content (the photo), palette (the photo in the painting's "
        "colour mean and covariance), noise, or style (the painting stretched to size).",
    )
    seed: Annotated[int, Range(0, 2**63 - 1)] = Field(
        default=0, description="Seeds noise init; same seed, same run."
    )
    # Bounded by its validators (16 px up to `size`): a Range here would split one problem
    # into an error per branch of the union.
    scales: tuple[int, ...] | Literal["auto"] | None = Field(
        default="auto",
        description="Coarse-to-fine sizes run before `size` (smaller ones first; `size` is "
        "always the last scale); auto: from 512 px up by doubling (one scale up to 512 px); "
        "null or [] for `size` alone.",
    )
    preserve_color: bool = Field(
        default=False, description="Transfer luminance only; keep content colours."
    )
    style_scale: Annotated[float, Range(0, 4, low_open=True)] = Field(
        default=1.0, description="Style image size relative to the output size."
    )
    weights: str = Field(
        default="caffe",
        min_length=1,
        description="VGG19 weights: caffe, torchvision or a state-dict path.",
    )
    pooling: Literal["max", "avg"] = "max"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:N or mps.")
    # Above the evaluation bound a larger value records nothing more: only the last row.
    history_every: Annotated[int, Range(1, 100_000)] = Field(
        default=10, description="Record losses every N evaluations."
    )
    lbfgs_history_on: Literal["auto", "device", "host"] = Field(
        default="auto",
        description="Where L-BFGS's history lives: auto keeps it on the device unless the "
        "planner finds a GPU job fits its memory budget only with the history in host memory.",
    )
    tile: int | Literal["auto", "off"] = Field(
        default="auto",
        description="How a scale too large for the device's memory runs: auto tiles it when "
        "the planner finds it does not fit; a size in pixels tiles every scale larger than "
        "that; off never tiles.",
    )

    @field_validator("content_layers", "style_layers")
    @classmethod
    def _known_layers(cls, layers: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [name for name in layers if name not in LAYER_NAMES]
        if unknown:
            raise ValueError(
                f"unknown VGG19 layer {', '.join(unknown)}; "
                "use convB_C, reluB_C or poolB (e.g. relu4_2)"
            )
        if len(set(layers)) != len(layers):
            raise ValueError("a layer is listed twice")
        return layers

    @field_validator("style_layer_weights")
    @classmethod
    def _not_all_zero(cls, weights: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if weights is not None and sum(weights) <= 0:
            raise ValueError("weights must not all be zero")
        return weights

    @field_validator("device")
    @classmethod
    def _device_name(cls, device: str) -> str:
        base, _, index = device.partition(":")
        if base not in ("auto", "cpu", "cuda", "mps") or (index and not index.isdigit()):
            raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
        if index and base != "cuda":
            raise ValueError("only cuda takes a device index (cuda:N)")
        return device

    @field_validator("tile")
    @classmethod
    def _tile(cls, tile: int | str) -> int | str:
        if isinstance(tile, int) and not 16 <= tile <= 8192:
            raise ValueError("a tile is 16 to 8192 pixels (or auto, or off)")
        return tile

    @field_validator("scales")
    @classmethod
    def _scales(
        cls, scales: tuple[int, ...] | Literal["auto"] | None
    ) -> tuple[int, ...] | Literal["auto"] | None:
        if scales == "auto":
            return scales
        if not scales:
            return None  # `[]` (`--scales ''`) asks, like null, for `size` alone
        if any(s < 16 for s in scales):
            raise ValueError("every scale must be at least 16 px")
        return scales

    @model_validator(mode="after")
    def _consistent(self) -> StyleParams:
        if self.style_layer_weights is not None and len(self.style_layer_weights) != len(
            self.style_layers
        ):
            raise ValueError(
                f"style_layer_weights has {len(self.style_layer_weights)} entries "
                f"but style_layers has {len(self.style_layers)}"
            )
        if isinstance(self.scales, tuple) and max(self.scales) > self.size:
            raise ValueError(f"scales must not exceed size ({self.size}), got {max(self.scales)}")
        return self

    def resolved_style_weight(self) -> float:
        """The style weight the optimisation uses: style_weight when given, else strength's
        (STRENGTH_CURVE), or the Gatys default with the plain loss."""
        if self.style_weight is not None:
            return self.style_weight
        if self.loss == "gatys":
            return GATYS_STYLE_WEIGHT
        low, high = STRENGTH_CURVE
        return 10 ** (low + (high - low) * self.strength)

    def notes(self) -> list[str]:
        """What a record should say about how these settings were read."""
        if self.style_weight is not None:
            return [f"style_weight {self.style_weight:g} was given, so strength is ignored"]
        return []

    def schedule(self) -> list[int]:
        """The sizes actually run, coarse to fine; always ends at `size`."""
        if self.scales == "auto":
            coarse = [AUTO_SCALES_FROM * 2**k for k in range(12)]
            return [s for s in coarse if s < self.size] + [self.size]
        coarse = sorted({s for s in self.scales or () if s < self.size})
        return [*coarse, self.size]

    def layer_weights(self) -> dict[str, float]:
        """Style layer -> weight, normalised to sum to 1."""
        raw = self.style_layer_weights or (1.0,) * len(self.style_layers)
        total = sum(raw)
        return {name: w / total for name, w in zip(self.style_layers, raw, strict=True)}

    def together_key(self) -> tuple:
        """What must be equal for two jobs to be optimised in one batch.

        Loss weights may differ per pair; everything that shapes the network, the schedule
        or the optimiser's steps may not.
        """
        return (
            self.size,
            self.iterations,
            self.content_layers,
            self.style_layers,
            self.optimizer,
            self.lbfgs_history,
            self.learning_rate,
            self.scales,
            self.weights,
            self.pooling,
            self.precision,
            self.device,
            self.history_every,
            self.tile,
            self.lbfgs_history_on,
        )


def network_layers(params: StyleParams) -> tuple[str, ...]:
    """The layers the network must return for these settings, content layers first."""
    return tuple(dict.fromkeys(params.content_layers + params.style_layers))
