"""The `nst` command.

Every expected failure (bad option, unreadable image, unwritable output) ends as one line on
stderr naming the file or option and the fix, with exit code 2, and nothing written at the
output path. Set NST_DEBUG=1 to see tracebacks of unexpected errors.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nst_core.errors import ImageError, NstError, ParamsError

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


def _default(field: str) -> str:
    """A StyleParams default as the help text shows it, so help never drifts from the model."""
    from nst_core.engine.params import StyleParams

    value = StyleParams.model_fields[field].default
    return ",".join(value) if isinstance(value, tuple) else str(value)


def _option_label(field: str) -> str:
    return f"--{field.replace('_', '-')}" if field else "options"


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [part.strip() for part in value.split(",") if part.strip()]


def _read_input(path: Path, role: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such {role} file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, expected a {role} image file") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied reading the {role} image") from None


def _check_output(out: Path) -> None:
    """Fail before any work when OUT cannot be written."""
    from nst_core.engine.images import format_for

    format_for(out.name)
    folder = out.parent
    if not folder.is_dir():
        raise ImageError(f"{out}: output folder {folder} does not exist; create it first")
    if out.is_dir():
        raise ImageError(f"{out}: is a folder; give a file name such as {out / 'out.png'}")
    if not os.access(folder, os.W_OK):
        raise ImageError(f"{out}: output folder {folder} is not writable")


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


def _progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]stylising"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("evals"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[losses]}"),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


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
    content_weight: str | None = typer.Option(
        None, metavar="W", help=f"Content weight [{_default('content_weight')}]."
    ),
    style_weight: str | None = typer.Option(
        None, metavar="W", help=f"Style weight [{_default('style_weight')}]."
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
        None, metavar="S,..", help="Coarse-to-fine sizes run before --size, e.g. 256,512."
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
    from nst_core.engine.params import parse_params

    given = {
        "size": size,
        "iterations": iterations,
        "content_weight": content_weight,
        "style_weight": style_weight,
        "tv_weight": tv_weight,
        "content_layers": _split(content_layers),
        "style_layers": _split(style_layers),
        "style_layer_weights": _split(style_layer_weights),
        "optimizer": optimizer,
        "learning_rate": learning_rate,
        "init": init,
        "seed": seed,
        "scales": _split(scales),
        "style_scale": style_scale,
        "preserve_color": preserve_color or None,
        "weights": weights,
        "pooling": pooling,
        "device": device,
        "precision": precision,
    }
    params = parse_params({k: v for k, v in given.items() if v is not None}, label=_option_label)
    blend = _parse_blend(style_weights, len(styles))
    _check_output(out)
    _stylize_files(content, styles, blend, params, out)


def _stylize_files(content: Path, styles: list[Path], blend, params, out: Path) -> None:
    from nst_core.batch import jobs, storage
    from nst_core.engine import images
    from nst_core.engine.transfer import Pair, stylize

    started = time.perf_counter()
    content_bytes = _read_input(content, "content")
    style_bytes = [_read_input(path, "style") for path in styles]
    pair = Pair(
        content=images.decode_image(content_bytes, str(content)),
        styles=[
            images.decode_image(data, str(p)) for data, p in zip(style_bytes, styles, strict=True)
        ],
        params=params,
        style_weights=blend,
        content_name=str(content),
        style_names=[str(p) for p in styles],
    )
    read_s = time.perf_counter() - started

    console = Console(stderr=True)
    with _progress_bar(console) as bar:
        task = bar.add_task("stylise", total=None, losses="")

        def progress(done: int, total: int, losses: list[dict[str, float]]) -> None:
            row = losses[0]
            text = (
                f"total {row['total']:.4g}  content {row['content']:.4g}  style {row['style']:.4g}"
            )
            bar.update(task, completed=done, total=total, losses=text)

        result = stylize(pair, progress=progress)
    optimise_s = time.perf_counter() - started - read_s

    storage.atomic_write(out, images.encode_image(result.image, out.name))
    weights = blend or [1.0] * len(styles)
    content_sha = jobs.sha256(content_bytes)
    style_shas = [jobs.sha256(data) for data in style_bytes]
    key = jobs.job_key(
        content_sha,
        list(zip(style_shas, weights, strict=True)),
        params,
        out.suffix.lstrip(".").lower(),
    )
    record = jobs.build_record(
        key=key,
        output=str(out),
        inputs=jobs.record_inputs(
            str(content),
            content_sha,
            [(str(p), w) for p, w in zip(styles, weights, strict=True)],
            style_shas,
        ),
        params=params,
        result=result,
        timings={
            "read_s": read_s,
            "optimize_s": optimise_s,
            "total_s": time.perf_counter() - started,
        },
    )
    # The record goes last: its presence says the image beside it is complete.
    storage.atomic_write(out.with_suffix(".json"), jobs.json_bytes(record))
    final = result.final
    w, h = result.image.size
    typer.echo(
        f"wrote {out} ({w}x{h}) in {time.perf_counter() - started:.1f} s on {result.device} "
        f"({result.precision}); style loss {final['style']:.4g}, content loss "
        f"{final['content']:.4g}; record {out.with_suffix('.json')}"
    )


def _parse_overrides(pairs: list[str] | None) -> dict:
    """`key=value` options -> dict; values are YAML scalars or lists (50, 1e4, [a, b])."""
    import yaml

    overrides = {}
    for item in pairs or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParamsError([f"--param: expected key=value, got {item!r}"])
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            overrides[key.strip()] = value
    return overrides


MAX_JOBS_HELP = "Refuse manifests that expand to more jobs than this."
READ_ROOT_HELP = (
    "Inputs must lie under this folder or s3:// prefix (repeatable); default: anywhere."
)
WRITE_ROOT_HELP = (
    "The output must lie under this folder or s3:// prefix (repeatable); default: anywhere."
)


def _roots(read_root: list[str] | None, write_root: list[str] | None):
    from nst_core.batch.roots import Roots

    return Roots.of(read_root or None, write_root or None)


@app.command()
def validate(
    manifest: str = typer.Argument(..., help="Manifest path or s3:// URI."),
    max_jobs: int = typer.Option(10_000, help=MAX_JOBS_HELP),
    read_root: list[str] = typer.Option(None, "--read-root", help=READ_ROOT_HELP),
    write_root: list[str] = typer.Option(None, "--write-root", help=WRITE_ROOT_HELP),
) -> None:
    """Check a manifest; print OK with its job count, or every problem (exit 2)."""
    from nst_core.batch.manifest import load_plan

    plan = load_plan(manifest, max_jobs=max_jobs, roots=_roots(read_root, write_root))
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
    from nst_core.batch import jobs
    from nst_core.batch.manifest import load_plan

    loaded = load_plan(
        manifest,
        overrides=_parse_overrides(param),
        overrides_label="--param",
        max_jobs=max_jobs,
        roots=_roots(read_root, write_root),
    )
    done = 0
    all_jobs = jobs.build_jobs(loaded)
    for job in all_jobs:
        finished = jobs.is_done(job)
        done += finished
        typer.echo(f"{'done   ' if finished else 'pending'}  {job.output}")
    typer.echo(
        f"{len(all_jobs)} jobs: {done} done, {len(all_jobs) - done} pending; outputs in "
        f"{loaded.output}"
    )


@app.command()
def schema() -> None:
    """Print the manifest JSON Schema (the source of manifests/schema.json)."""
    import json

    from nst_core.batch.manifest import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


@app.command()
def run(
    manifest: str = typer.Argument(..., help="Manifest path or s3:// URI."),
    param: list[str] = typer.Option(None, "--param", "-p", help="Override a default: key=value."),
    force: bool = typer.Option(False, "--force", help="Recompute jobs that are done."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Plan only; write nothing."),
    task_runner: str = typer.Option(
        None,
        "--task-runner",
        help="Where units run: thread (default, or NST_TASK_RUNNER) or ray (NST_RAY_ADDRESS).",
    ),
    shards: int = typer.Option(
        1,
        "--shards",
        min=1,
        help="Split the pending jobs into N child runs of the adhoc deployment (needs a "
        "Prefect server with workers: PREFECT_API_URL).",
    ),
    shard_timeout: float | None = typer.Option(
        None, "--shard-timeout", min=1, help="Seconds to wait for the shards [a day]."
    ),
    read_root: list[str] = typer.Option(None, "--read-root", help=READ_ROOT_HELP),
    write_root: list[str] = typer.Option(None, "--write-root", help=WRITE_ROOT_HELP),
) -> None:
    """Run the batch flow in this process (Prefect's embedded server unless PREFECT_API_URL).

    Exit 0 when every job completed, 1 when any failed, 2 when the manifest is invalid.
    """
    # Before anything imports Prefect: its settings are read once, at import. The embedded
    # server needs longer than Prefect's default 20 s on a busy 2-core laptop, and must not
    # try to send telemetry from machines without internet.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.runners import task_runner_name
    from nst_core.batch.manifest import load_plan

    overrides = _parse_overrides(param)
    roots = _roots(read_root, write_root)
    # Exit 2 before Prefect starts.
    load_plan(manifest, overrides=overrides, overrides_label="--param", roots=roots)
    task_runner_name(task_runner)  # exit 2 on an unknown runner, before Prefect starts
    if shards > 1 and not os.environ.get("PREFECT_API_URL"):
        raise NstError(
            "--shards needs a Prefect server whose workers run the adhoc deployment: "
            "set PREFECT_API_URL (see `make up`)"
        )
    if not os.environ.get("PREFECT_API_URL"):
        os.environ["NST_EMBEDDED_SERVER"] = "1"  # see flows.batch._ensure_device_limits
    from flows.batch import stylize_batch

    state = stylize_batch(
        manifest=manifest,
        params=overrides or None,
        force=force,
        dry_run=dry_run,
        task_runner=task_runner,
        shards=shards,
        read_roots=list(roots.read) if roots.read is not None else None,
        write_roots=list(roots.write) if roots.write is not None else None,
        # Unset, the flow's own default applies: one place says how long a batch may take.
        **({"shard_timeout_s": shard_timeout} if shard_timeout else {}),
        return_state=True,
    )
    if not state.is_completed():
        typer.echo(f"FAILED: {state.message}", err=True)
        raise typer.Exit(EXIT_FAILED)
    summary = state.result()
    if dry_run:
        typer.echo(
            f"dry run: {summary['jobs']} jobs, {summary['done']} done, "
            f"{len(summary['pending'])} would run in {len(summary['units'])} units"
            + (f" over {len(summary['shards'])} shards" if summary["shards"] else "")
        )
        for output in summary["pending"]:
            typer.echo(f"pending  {output}")
        for output in summary["cannot_fit"]:
            typer.echo(f"would fail (over the memory budget)  {output}")
        return
    from nst_core.batch.report import totals_line

    totals, folder = summary["totals"], summary["run_folder"]
    typer.echo(
        f"{totals_line(totals)} in {totals['wall_seconds']:.1f} s"
        f"\nsummary:       {folder}/summary.json"
        f"\ncontact sheet: {folder}/contact_sheet.jpg"
    )


@app.command()
def demo() -> None:
    """Draw 2 contents and 2 styles, then run manifests/demo.yaml on this machine."""
    from nst_core.batch.demo import write_demo_inputs

    manifest = Path(__file__).resolve().parent.parent / "manifests" / "demo.yaml"
    if not manifest.exists():
        raise NstError(f"{manifest}: the demo needs a source checkout (manifests/demo.yaml)")
    # demo.yaml reads its inputs from ../outputs/demo-inputs, beside the manifests folder.
    write_demo_inputs(manifest.parent.parent / "outputs" / "demo-inputs")
    run(
        str(manifest),
        param=[],
        force=False,
        dry_run=False,
        task_runner=None,
        shards=1,
        shard_timeout=None,
        read_root=None,
        write_root=None,
    )


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
        if os.environ.get("NST_DEBUG"):
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
