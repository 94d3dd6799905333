"""`nst gallery RUN_FOLDER`: where a run's gallery page is (written first when the run has
none, as runs from before pages have), and with --serve, the page and the files it links
served read-only on 127.0.0.1 so a private bucket's run can be browsed.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

import typer

from nst_core.batch import storage
from nst_core.batch.layout import RUNS, RunLayout
from nst_core.errors import NstError

# Run folders are named `{manifest stem}-{YYYYmmdd-HHMMSS}-{id}` (flows/batch.py): the
# newest is the one with the latest time, whatever the manifest was called then.
_RUN_TIME = re.compile(r"-(\d{8}-\d{6})-[0-9a-f]+$")
MANIFEST_SUFFIXES = (".yaml", ".yml")


def gallery(
    run_folder: str = typer.Argument(
        ...,
        help="A run folder, OUTPUT/_runs/NAME (local or s3://), or a manifest: its latest run.",
    ),
    serve: bool = typer.Option(
        False,
        "--serve",
        help="Serve the page and the files it links, read-only, on 127.0.0.1.",
    ),
    port: int = typer.Option(
        0, "--port", min=0, max=65535, help="Port for --serve [a free one, picked]."
    ),
) -> None:
    """Print where a run's gallery page is; with --serve, serve it to a browser."""
    base, run = find_run(run_folder)
    layout = RunLayout(base)
    page = layout.gallery(run)
    if not storage.exists(page):
        from nst_core.batch.gallery import rebuild

        rebuild(layout.run_folder(run))
        typer.echo("wrote the page: the run had none")
    typer.echo(f"gallery: {page}")
    if not serve:
        if storage.is_s3(page):
            typer.echo(f"browse:  nst gallery {shlex.quote(layout.run_folder(run))} --serve")
        else:
            typer.echo(f"open:    {Path(page).resolve().as_uri()}")
        return
    _serve(base, run, port)


def _serve(base: str, run: str, port: int) -> None:
    from nst_core.batch.gallery_server import GalleryServer

    try:
        server = GalleryServer(base, f"{RUNS}/{run}/index.html", port)
    except OSError as exc:
        raise NstError(
            f"--port {port}: cannot listen on 127.0.0.1:{port} ({exc.strerror or exc}); "
            "pick another port or leave --port out"
        ) from None
    typer.echo(f"serving the gallery of {run} from {base} read-only at {server.url} (Ctrl-C stops)")
    typer.echo(f"open:    {server.page_url}")
    sys.stdout.flush()  # a caller reading our stdout through a pipe needs the URL now
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def find_run(target: str) -> tuple[str, str]:
    """(the batch's output folder, the run's name) for a run folder or a manifest."""
    storage.check_uri(target)
    if not storage.is_s3(target):
        target = os.path.abspath(target)  # `.` or `NAME` inside _runs name a run too
    if target.lower().endswith(MANIFEST_SUFFIXES) or os.path.isfile(target):
        return _latest_run(target)
    from nst_core.batch.gallery import split_run_folder

    try:
        base, run = split_run_folder(target)
    except ValueError:
        raise NstError(
            f"{target}: not a run folder (OUTPUT/{RUNS}/NAME) nor a manifest (.yaml); "
            "give the folder a run wrote its summary.json in, or the batch's manifest"
        ) from None
    if not storage.exists(RunLayout(base).summary(run)):
        raise NstError(
            f"{target}: no summary.json in this run folder; give a finished run's folder "
            f"(`ls {shlex.quote(RunLayout(base).runs)}`) or the batch's manifest"
        )
    return base, run


def _latest_run(manifest: str) -> tuple[str, str]:
    from nst_core.batch.manifest import load_plan

    base = load_plan(manifest).output
    runs = RunLayout(base).runs
    finished = [
        storage.name(storage.parent(uri))
        for uri in storage.list_prefix(runs)
        if storage.name(uri) == "summary.json" and storage.parent(storage.parent(uri)) == runs
    ]
    if not finished:
        raise NstError(
            f"{manifest}: no finished run of this batch in {runs}; "
            f"run it first (`nst run {shlex.quote(manifest)}`)"
        )
    newest = max(finished, key=lambda name: ((m[1] if (m := _RUN_TIME.search(name)) else ""), name))
    return base, newest
