"""The `nst` command: the Typer app, every command registered here and nowhere else, and
`main`, which turns every expected failure (bad option, unreadable image, unwritable output,
invalid manifest) into one line on stderr naming the file or option and the fix, with exit
code 2, and nothing written at the output path. NST_DEBUG=1 shows tracebacks of unexpected
errors. This package sits on top: it imports nst_core and flows, and neither imports it.
"""

from __future__ import annotations

import os

# Before anything imports Prefect: its settings are read once, at import. The embedded
# server needs longer than Prefect's default 20 s on a busy 2-core laptop, and must not
# try to send telemetry from machines without internet.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import sys  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from nst_cli import batch, devices, gallery, manifests, stylize  # noqa: E402
from nst_cli.options import EXIT_BAD_INPUT, EXIT_FAILED, debug_enabled  # noqa: E402
from nst_core.errors import NstError  # noqa: E402

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Batch neural style transfer (Gatys et al.).",
)
err_console = Console(stderr=True)

for command in (
    stylize.stylize,
    manifests.validate,
    manifests.plan,
    manifests.schema,
    devices.devices,
    gallery.gallery,
    batch.run,
    batch.demo,
):
    app.command()(command)


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
