"""The batch commands, which run the Prefect flow: `nst run` and `nst demo`."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from nst_cli.options import (
    EXIT_FAILED,
    READ_ROOT_HELP,
    WRITE_ROOT_HELP,
    parse_overrides,
    roots_of,
    settings,
)
from nst_core.batch.layout import RunLayout
from nst_core.batch.records import DryRun, Summary
from nst_core.errors import NstError


def run(
    manifest: str = typer.Argument(..., help="Manifest path or s3:// URI."),
    param: list[str] | None = typer.Option(
        None, "--param", "-p", help="Override a default: key=value."
    ),
    force: bool = typer.Option(False, "--force", help="Recompute jobs that are done."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Plan only; write nothing."),
    task_runner: str | None = typer.Option(
        None,
        "--task-runner",
        help="Where units run: thread (default, or NST_TASK_RUNNER) or ray (NST_RAY_ADDRESS).",
    ),
    shards: int = typer.Option(
        1,
        "--shards",
        min=1,
        help="Split the pending jobs into N child runs of the stylize-shard/shard deployment "
        "(needs a Prefect server with workers: PREFECT_API_URL).",
    ),
    shard_timeout: float | None = typer.Option(
        None, "--shard-timeout", min=1, help="Seconds to wait for the shards [a day]."
    ),
    read_root: list[str] | None = typer.Option(None, "--read-root", help=READ_ROOT_HELP),
    write_root: list[str] | None = typer.Option(None, "--write-root", help=WRITE_ROOT_HELP),
) -> None:
    """Run the batch flow in this process (Prefect's embedded server unless PREFECT_API_URL).

    Exit 0 when every job completed, 1 when any failed, 2 when the manifest is invalid.
    """
    from flows.runners import task_runner_name
    from nst_core.batch.manifest import load_plan

    overrides = parse_overrides(param)
    roots = roots_of(read_root, write_root)
    env = settings()
    # Exit 2 before Prefect starts: the manifest, and an unknown runner.
    plan = load_plan(
        manifest, overrides=overrides, overrides_label="--param", roots=roots, limits=env.limits
    )
    runner_name = task_runner_name(task_runner, env)  # the flow takes it in lowercase
    embedded = not os.environ.get("PREFECT_API_URL")
    if shards > 1 and embedded:
        raise NstError(
            "--shards needs a Prefect server whose workers run the stylize-shard/shard "
            "deployment: set PREFECT_API_URL (see `make up`)"
        )
    if embedded:
        from flows import embedded as embedded_server

        # The server Prefect starts for this run ends with this process, however it ends
        # (SIGKILL included), and is the only one whose device slots the flow may reset.
        embedded_server.install()
    from flows.batch import stylize_batch
    from nst_cli import batch_progress

    # The flow runs here, on threads: its units' progress shows on stderr as they run.
    batch_progress.install()

    state = stylize_batch(
        manifest=manifest,
        params=overrides or None,
        force=force,
        dry_run=dry_run,
        task_runner=runner_name if task_runner else None,
        shards=shards,
        read_roots=list(roots.read) if roots.read is not None else None,
        write_roots=list(roots.write) if roots.write is not None else None,
        # The flow runs the bytes validated here, or refuses a manifest changed since.
        manifest_sha256=plan.sha256,
        # Unset, the flow's own default applies: one place says how long a batch may take.
        **({"shard_timeout_s": shard_timeout} if shard_timeout else {}),
        return_state=True,
    )
    if not state.is_completed():
        typer.echo(f"FAILED: {state.message}", err=True)
        raise typer.Exit(EXIT_FAILED)
    result = state.result()
    if isinstance(result, DryRun):
        typer.echo(_dry_run_text(result))
    else:
        typer.echo(_finished_text(result, plan.output))


def _dry_run_text(plan: DryRun) -> str:
    lines = [
        f"dry run: {plan.jobs} jobs, {plan.done} done, "
        f"{len(plan.pending)} would run in {len(plan.units)} units"
        + (f" over {len(plan.shards)} shards" if plan.shards else "")
    ]
    lines += [f"pending  {output}" for output in plan.pending]
    lines += [f"would fail (over the memory budget)  {output}" for output in plan.cannot_fit]
    return "\n".join(lines)


def _finished_text(summary: Summary, output: str) -> str:
    layout, totals = RunLayout(output), summary.totals
    return (
        f"{totals.line()} in {totals.wall_seconds:.1f} s"
        f"\nsummary:       {layout.summary(summary.run)}"
        f"\ncontact sheet: {layout.contact_sheet(summary.run)}"
        f"\ngallery:       {layout.gallery(summary.run)}"
    )


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
