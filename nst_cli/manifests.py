"""The manifest commands: `nst validate`, `nst plan` and `nst schema`."""

from __future__ import annotations

import typer

from nst_cli.options import (
    MAX_JOBS_HELP,
    READ_ROOT_HELP,
    WRITE_ROOT_HELP,
    parse_overrides,
    roots_of,
    settings,
)


def validate(
    manifest: str = typer.Argument(..., help="Manifest path or s3:// URI."),
    max_jobs: int = typer.Option(10_000, help=MAX_JOBS_HELP),
    read_root: list[str] | None = typer.Option(None, "--read-root", help=READ_ROOT_HELP),
    write_root: list[str] | None = typer.Option(None, "--write-root", help=WRITE_ROOT_HELP),
) -> None:
    """Check a manifest; print OK with its job count, or every problem (exit 2)."""
    from nst_core.batch.manifest import load_plan

    roots, limits = roots_of(read_root, write_root), settings().limits
    plan = load_plan(manifest, max_jobs=max_jobs, roots=roots, limits=limits)
    typer.echo(f"OK: {plan.summary()}")


def plan(
    manifest: str = typer.Argument(..., help="Manifest path or s3:// URI."),
    param: list[str] | None = typer.Option(
        None, "--param", "-p", help="Override a default: key=value."
    ),
    max_jobs: int = typer.Option(10_000, help=MAX_JOBS_HELP),
    read_root: list[str] | None = typer.Option(None, "--read-root", help=READ_ROOT_HELP),
    write_root: list[str] | None = typer.Option(None, "--write-root", help=WRITE_ROOT_HELP),
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


def schema() -> None:
    """Print the manifest JSON Schema (the source of manifests/schema.json)."""
    import json

    from nst_core.batch.manifest import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))
