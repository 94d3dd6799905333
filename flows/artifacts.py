"""What a batch run shows in Prefect's UI besides its logs: the report and a table of its jobs."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from nst_core.batch.escape import markdown_text
from nst_core.batch.records import Summary


def publish(summary: Summary, markdown: str) -> None:
    """The report (`markdown`, escaped by report.py) and a table of the jobs. Prefect's UI
    renders a table's cells and description as Markdown, so names go in escaped here too."""

    rows = [
        {
            "job": markdown_text(e.label),
            "status": e.status,
            "seconds": round(e.seconds, 1) if e.seconds is not None else None,
            "style loss": e.losses.style if e.losses else None,
            "content loss": e.losses.content if e.losses else None,
            "output": markdown_text(e.output if e.status != "failed" else e.error or ""),
        }
        for e in summary.jobs
    ]
    description = markdown_text(summary.run)
    create_table_artifact(rows, key="stylize-batch-jobs", description=description)
    create_markdown_artifact(markdown, key="stylize-batch-report")
