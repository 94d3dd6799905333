"""`nst stylize CONTENT STYLES... -o OUT`: one job from local files, through the unit runner
a batch uses. Its options beyond -o and --style-weights are StyleParams' fields, generated
from the model (param_options.py) with their descriptions and defaults in the help."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

from nst_cli import param_options
from nst_cli.options import settings
from nst_core.engine.ranges import MAX_WEIGHT
from nst_core.errors import ParamsError


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
    style_weights: str | None = typer.Option(
        None, metavar="W1,W2", help="Blend weights, one per style image [equal]."
    ),
    **options: Any,
) -> None:
    """Stylise CONTENT with one or more STYLES and write OUT plus OUT's .json record."""
    from nst_cli.stylize_job import check_output, fit_memory, one_job, stylize_file
    from nst_core.engine.params_parsing import parse_params

    env = settings()
    values = param_options.given_values(options)
    params = parse_params(values, label=param_options.option_name, limits=env.limits)
    blend = _parse_blend(style_weights, len(styles))
    check_output(out)
    typer.echo(stylize_file(fit_memory(one_job(content, styles, blend, params, out), env), env))


# Typer reads a command's options from its signature: the declared ones above, then one per
# StyleParams field in place of **options (eval_str: this module's annotations are strings).
_declared = inspect.signature(stylize, eval_str=True).parameters.values()
stylize.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [p for p in _declared if p.kind is not p.VAR_KEYWORD] + param_options.parameters(),
    return_annotation=None,
)
