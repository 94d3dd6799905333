"""What a batch run shows in Prefect's UI besides its logs: the report, a table of its jobs,
and links to its gallery page and contact sheet.

Artifact keys are per manifest (`nst-{name}-jobs`, `-report`, `-gallery`, `-contact-sheet`):
the UI's Artifacts page keeps one line per key with its history, so each manifest's runs
line up under their own keys instead of every batch overwriting one.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import quote

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from nst_core.batch import report, storage
from nst_core.batch.escape import markdown_text
from nst_core.batch.layout import RunLayout
from nst_core.batch.records import Summary

MAX_NAME_CHARS = 48  # of the manifest's name in a key; keys stay readable in the UI


def artifact_key(manifest_name: str, what: str) -> str:
    """`nst-{name}-{what}` in Prefect's key alphabet (lowercase letters, digits, dashes).

    A name that had to change to fit gets a short hash of itself, so `Team A` and `team-a`
    (or two long names alike in their first 48 characters) keep apart.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", manifest_name.lower()).strip("-")[:MAX_NAME_CHARS]
    slug = slug.strip("-") or "batch"
    if slug != manifest_name:
        slug += "-" + hashlib.sha256(manifest_name.encode()).hexdigest()[:6]
    return f"nst-{slug}-{what}"


def rounded(value: float | None) -> float | None:
    """A loss for people: 4 significant digits (0.04068, not 0.04068025201559067)."""
    return float(f"{value:.4g}") if value is not None else None


def publish(summary: Summary, markdown: str, manifest_name: str) -> None:
    """The report (`markdown`, escaped by report.py) and a table of the jobs. Prefect's UI
    renders a table's cells and description as Markdown, so names go in escaped here too."""
    rows = [
        {
            "job": markdown_text(e.label),
            "status": e.status,
            "seconds": round(e.seconds, 1) if e.seconds is not None else None,
            "style loss": rounded(e.losses.style) if e.losses else None,
            "content loss": rounded(e.losses.content) if e.losses else None,
            "output": markdown_text(e.output if e.status != "failed" else e.error or ""),
        }
        for e in summary.jobs
    ]
    description = markdown_text(summary.run)
    create_table_artifact(rows, key=artifact_key(manifest_name, "jobs"), description=description)
    create_markdown_artifact(
        markdown, key=artifact_key(manifest_name, "report"), description=description
    )


def publish_links(layout: RunLayout, run: str, manifest_name: str) -> None:
    """Links to the run's gallery page and contact sheet, once they are written: a local
    file as a file:// URL, an S3 object as its s3:// URI. Never a presigned URL, which would
    put credentials in Prefect's database; the description says how to browse a bucket's."""
    page, sheet = layout.gallery(run), layout.contact_sheet(run)
    create_link_artifact(
        link=_url(page),
        link_text=markdown_text(page),
        key=artifact_key(manifest_name, "gallery"),
        description=report.gallery_note(layout, run),
    )
    create_link_artifact(
        link=_url(sheet),
        link_text=markdown_text(sheet),
        key=artifact_key(manifest_name, "contact-sheet"),
        description=f"{markdown_text(run)}: styles across, contents down.",
    )


def _url(uri: str) -> str:
    """`uri` as a Markdown link destination: percent-encoded, so no space, parenthesis or
    bracket in a file name can end the link or start another."""
    if storage.is_s3(uri):
        return storage.S3_PREFIX + quote(uri[len(storage.S3_PREFIX) :], safe="/")
    return Path(uri).resolve().as_uri()
