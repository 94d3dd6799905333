"""`nst gallery TARGET`: where a run's gallery page is (written first when the run has none,
as runs from before pages have); TARGET is a batch's output folder or its manifest (their
newest finished run) or one run's folder. With --serve, the page and the files it links are
served read-only on 127.0.0.1, so a private bucket's run can be browsed.
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
    target: str = typer.Argument(
        ...,
        metavar="FOLDER|MANIFEST",
        help="A batch's output folder (local or s3://) or its manifest: the newest finished "
        "run; or a run folder, OUTPUT/_runs/NAME.",
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
    base, run = find_run(target)
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
    """(the batch's output folder, the run's name) for a run folder, a batch's output folder
    (its newest finished run) or a manifest (its output folder's)."""
    storage.check_uri(target)
    if not storage.is_s3(target):
        target = os.path.abspath(target)  # `.` or `NAME` inside _runs name a run too
    if target.lower().endswith(MANIFEST_SUFFIXES) or os.path.isfile(target):
        return _latest_of_manifest(target)
    from nst_core.batch.gallery import split_run_folder

    try:
        base, run = split_run_folder(target)
    except ValueError:
        return _latest_of_output(target)
    if not storage.exists(RunLayout(base).summary(run)):
        raise NstError(
            f"{target}: no summary.json in this run folder; give a finished run's folder "
            f"(`ls {shlex.quote(RunLayout(base).runs)}`), the batch's output folder or manifest"
        )
    return base, run


def _latest_of_manifest(manifest: str) -> tuple[str, str]:
    from nst_core.batch.manifest import load_plan

    base = load_plan(manifest).output
    newest = latest_run(base)
    if newest is None:
        raise NstError(
            f"{manifest}: no finished run of this batch in {RunLayout(base).runs}; "
            f"run it first (`nst run {shlex.quote(manifest)}`)"
        )
    return base, newest


def _latest_of_output(folder: str) -> tuple[str, str]:
    base = folder.rstrip("/")
    if storage.name(base) == RUNS:  # OUTPUT/_runs itself: the runs of OUTPUT
        base = storage.parent(base)
    newest = latest_run(base)
    if newest is not None:
        return base, newest
    if not storage.is_s3(base) and not os.path.isdir(base):
        what = "no such folder"
    else:
        what = f"no finished run here (no {RUNS}/NAME/summary.json)"
    raise NstError(
        f"{folder}: {what}; give a batch's output folder once `nst run` has finished there, "
        f"a run folder (OUTPUT/{RUNS}/NAME) or the batch's manifest (.yaml)"
    )


def latest_run(output: str) -> str | None:
    """The name of the newest run under OUTPUT/_runs/ that wrote its summary, if any."""
    runs = RunLayout(output).runs
    finished = [
        storage.name(storage.parent(uri))
        for uri in storage.list_prefix(runs)
        if storage.name(uri) == "summary.json" and storage.parent(storage.parent(uri)) == runs
    ]
    if not finished:
        return None
    return max(finished, key=lambda name: ((m[1] if (m := _RUN_TIME.search(name)) else ""), name))
