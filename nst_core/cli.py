"""The `nst` command without Prefect: flows/cli.py adds `run` and `demo` to this app.

Every expected failure (bad option, unreadable image, unwritable output) ends as one line on
stderr naming the file or option and the fix, with exit code 2, and nothing written at the
output path. Set NST_DEBUG=1 to see tracebacks of unexpected errors.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from nst_core.cli_gallery import gallery
from nst_core.cli_options import debug_enabled, parse_overrides, roots_of, settings
from nst_core.errors import NstError, ParamsError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Batch neural style transfer (Gatys et al.).",
)
err_console = Console(stderr=True)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
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
    if any(w < 0 for w in parsed) or sum(parsed) <= 0:
        raise ParamsError(["--style-weights: weights must be >= 0 and not all zero"])
    return parsed


@app.command()
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
    from nst_core.cli_stylize import check_output, fit_memory, one_job, stylize_file
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


MAX_JOBS_HELP = "Refuse manifests that expand to more jobs than this."
READ_ROOT_HELP = (
    "Inputs must lie under this folder or s3:// prefix (repeatable); default: anywhere."
)
WRITE_ROOT_HELP = (
    "The output must lie under this folder or s3:// prefix (repeatable); default: anywhere."
)


@app.command()
def validate(
    manifest: str = typer.Argument(..., help="Manifest path or s3:// URI."),
    max_jobs: int = typer.Option(10_000, help=MAX_JOBS_HELP),
    read_root: list[str] = typer.Option(None, "--read-root", help=READ_ROOT_HELP),
    write_root: list[str] = typer.Option(None, "--write-root", help=WRITE_ROOT_HELP),
) -> None:
    """Check a manifest; print OK with its job count, or every problem (exit 2)."""
    from nst_core.batch.manifest import load_plan

    roots, limits = roots_of(read_root, write_root), settings().limits
    plan = load_plan(manifest, max_jobs=max_jobs, roots=roots, limits=limits)
    typer.echo(f"OK: {plan.summary()}")


@app.command()
def plan(
    manifest: str = typer.Argument(..., help="Manifest path or s3:// URI."),
    param: list[str] = typer.Option(None, "--param", "-p", help="Override a default: key=value."),
    max_jobs: int = typer.Option(10_000, help=MAX_JOBS_HELP),
    read_root: list[str] = typer.Option(None, "--read-root", help=READ_ROOT_HELP),
    write_root: list[str] = typer.Option(None, "--write-root", help=WRITE_ROOT_HELP),
) -> None:
    """List every job of a manifest as done or pending, with its output URI, and totals."""
    from nst_core.batch import jobs, records
    from nst_core.batch.manifest import load_plan

    limits = settings().limits
    loaded = load_plan(
        manifest,
        overrides=parse_overrides(param),
        overrides_label="--param",
        max_jobs=max_jobs,
        roots=roots_of(read_root, write_root),
        limits=limits,
    )
    done = 0
    all_jobs = jobs.build_jobs(loaded, max_input_bytes=limits.max_input_bytes)
    for job in all_jobs:
        finished = records.done(job, records.read_record(job.record))
        done += finished
        typer.echo(f"{'done   ' if finished else 'pending'}  {job.output}")
    typer.echo(
        f"{len(all_jobs)} jobs: {done} done, {len(all_jobs) - done} pending; outputs in "
        f"{loaded.output}"
    )


@app.command()
def devices(
    recalibrate: bool = typer.Option(
        False, "--recalibrate", help="Time fp32 and bf16 again instead of the remembered result."
    ),
) -> None:
    """List the devices a batch may use and what `precision: auto` means on each, and why."""
    import torch

    from nst_core.engine import calibration
    from nst_core.engine.devices import devices_for

    override = settings().precision
    for name in devices_for("auto"):
        device = torch.device(name)
        decision = calibration.decide(device, fresh=recalibrate, override=override)
        timings = (
            f"; fp32 {decision['fp32_s']:.3f} s, bf16 {decision['bf16_s']:.3f} s per "
            f"forward + input gradient at {decision['shape']}"
            if "fp32_s" in decision
            else ""
        )
        typer.echo(
            f"{name}: {calibration.device_model(device)}, torch {torch.__version__}"
            f"\n  auto = {decision['precision']} "
            f"({decision['source']}{timings})"
        )
    typer.echo(f"decisions kept in {calibration.cache_path()}")


@app.command()
def schema() -> None:
    """Print the manifest JSON Schema (the source of manifests/schema.json)."""
    import json

    from nst_core.batch.manifest import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


app.command()(gallery)


def main() -> None:
    try:
        app()
    except NstError as exc:
        for line in getattr(exc, "problems", None) or [str(exc)]:
            err_console.print(f"error: {line}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        err_console.print("interrupted; nothing was written for the unfinished output")
        sys.exit(130)
    except Exception as exc:
        if debug_enabled():
            raise
        err_console.print(
            f"error: unexpected {type(exc).__name__}: {exc} (set NST_DEBUG=1 for a traceback)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
