"""`nst stylize CONTENT STYLES... -o OUT`: one job from local files, through the unit runner
a batch uses; its options are StyleParams' fields, with their defaults in the help."""

from __future__ import annotations

from pathlib import Path

import typer

from nst_cli.options import settings
from nst_core.engine.params import MAX_WEIGHT
from nst_core.errors import ParamsError

# `nst stylize` options given as comma-separated lists.
LIST_OPTIONS = ("content_layers", "style_layers", "style_layer_weights", "scales")


def _default(field: str) -> str:
    """A StyleParams default as the help text shows it, so help never drifts from the model."""
    from nst_core.engine.params import StyleParams

    value = StyleParams.model_fields[field].default
    return ",".join(value) if isinstance(value, tuple) else str(value)


def _option_label(field: str) -> str:
    return f"--{field.replace('_', '-')}" if field else "options"


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [part.strip() for part in value.split(",") if part.strip()]


def _parse_blend(weights: str | None, count: int) -> list[float] | None:
    values = _split(weights)
    if values is None:
        return None
    try:
        parsed = [float(v) for v in values]
    except ValueError:
        raise ParamsError(
            [f"--style-weights: expected numbers like 0.7,0.3, got {weights!r}"]
        ) from None
    if len(parsed) != count:
        raise ParamsError([f"--style-weights: {len(parsed)} weights for {count} style images"])
    # `not 0 <= w` also holds for NaN, which no comparison is true of.
    if any(not 0 <= w <= MAX_WEIGHT for w in parsed) or sum(parsed) <= 0:
        raise ParamsError(
            [
                f"--style-weights: each weight is a number from 0 to {MAX_WEIGHT:g}, not all "
                f"zero; got {weights!r}"
            ]
        )
    return parsed


def stylize(
    content: Path = typer.Argument(..., help="Content image (photo)."),
    styles: list[Path] = typer.Argument(..., help="One or more style images (paintings)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output image: .png, .jpg or .webp."),
    size: str | None = typer.Option(
        None, metavar="N", help=f"Longest output side [{_default('size')}]."
    ),
    iterations: str | None = typer.Option(
        None, metavar="N", help=f"Loss evaluations per scale [{_default('iterations')}]."
    ),
    stop_tolerance: str | None = typer.Option(
        None,
        metavar="F",
        help="Stop once the loss improves by less than this fraction over --stop-window "
        f"evaluations; 0 never stops early [{_default('stop_tolerance')}].",
    ),
    stop_window: str | None = typer.Option(None, metavar="N", help=f"[{_default('stop_window')}]"),
    content_weight: str | None = typer.Option(
        None, metavar="W", help=f"Content weight [{_default('content_weight')}]."
    ),
    strength: str | None = typer.Option(
        None, metavar="S", help=f"How far to stylise, 0 to 1 [{_default('strength')}]."
    ),
    style_weight: str | None = typer.Option(
        None, metavar="W", help="Style weight, for experts: wins over --strength [from strength]."
    ),
    loss: str | None = typer.Option(
        None, metavar="balanced|gatys", help=f"Loss form [{_default('loss')}]."
    ),
    tv_weight: str | None = typer.Option(
        None, metavar="W", help=f"Total-variation weight [{_default('tv_weight')}]."
    ),
    style_weights: str | None = typer.Option(
        None, metavar="W1,W2", help="Blend weights, one per style image [equal]."
    ),
    content_layers: str | None = typer.Option(
        None, metavar="L,..", help=f"[{_default('content_layers')}]"
    ),
    style_layers: str | None = typer.Option(
        None, metavar="L,..", help=f"[{_default('style_layers')}]"
    ),
    style_layer_weights: str | None = typer.Option(
        None, metavar="W,..", help="One weight per style layer [equal]."
    ),
    optimizer: str | None = typer.Option(
        None, metavar="lbfgs|adam", help=f"[{_default('optimizer')}]"
    ),
    learning_rate: str | None = typer.Option(
        None, metavar="LR", help=f"Adam step size [{_default('learning_rate')}]."
    ),
    init: str | None = typer.Option(
        None, metavar="content|noise|style", help=f"[{_default('init')}]"
    ),
    seed: str | None = typer.Option(None, metavar="N", help=f"Random seed [{_default('seed')}]."),
    scales: str | None = typer.Option(
        None,
        metavar="S,..",
        help="Coarse-to-fine sizes run before --size, e.g. 256,512; '' for --size alone "
        "[auto: from 512 px up by doubling].",
    ),
    style_scale: str | None = typer.Option(
        None,
        metavar="F",
        help=f"Style image size relative to the output [{_default('style_scale')}].",
    ),
    preserve_color: bool = typer.Option(
        False, "--preserve-color", help="Keep the content's colours."
    ),
    weights: str | None = typer.Option(
        None, metavar="caffe|torchvision|PATH", help=f"VGG19 weights [{_default('weights')}]."
    ),
    pooling: str | None = typer.Option(None, metavar="max|avg", help=f"[{_default('pooling')}]"),
    device: str | None = typer.Option(None, metavar="D", help="auto, cpu, cuda, cuda:N, mps."),
    precision: str | None = typer.Option(
        None, metavar="auto|fp32|bf16", help=f"[{_default('precision')}]"
    ),
) -> None:
    """Stylise CONTENT with one or more STYLES and write OUT plus OUT's .json record."""
    from nst_cli.stylize_job import check_output, fit_memory, one_job, stylize_file
    from nst_core.engine.params import StyleParams
    from nst_core.engine.params_parsing import parse_params

    # Every option named like a StyleParams field is that field; lists come comma-separated.
    given = {k: v for k, v in locals().items() if k in StyleParams.model_fields}
    given |= {k: _split(given[k]) for k in LIST_OPTIONS if given[k] != "auto"}
    given["preserve_color"] = preserve_color or None
    env = settings()
    values = {k: v for k, v in given.items() if v is not None}
    params = parse_params(values, label=_option_label, limits=env.limits)
    blend = _parse_blend(style_weights, len(styles))
    check_output(out)
    typer.echo(stylize_file(fit_memory(one_job(content, styles, blend, params, out), env), env))
