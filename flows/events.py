"""The Prefect events a team's automations can act on (notify a channel, open a ticket).

    nst.batch.finished            a batch wrote its results (or tried to): counts, the first
                                  failed jobs, where the summary and gallery are
    nst.inbox.manifest.rejected   the inbox filed a dropped manifest in failed/ without
                                  running it: how many problems, and the first

Both are about a manifest: the resource is `nst.manifest.{uri}`, named after the manifest,
so one automation can watch every manifest (`nst.manifest.*`) or one bucket's. The resource
of nst.batch.finished also carries `nst.outcome` (`completed` or `failed`), which an
automation's trigger can match on: payloads are for the message, resource labels for the
match. Emitted inside a flow run, each event is related to that run by Prefect itself.
"""

from __future__ import annotations

from typing import Any

from prefect.events import emit_event

from nst_core.batch import storage
from nst_core.batch.layout import RunLayout
from nst_core.batch.records import Summary

BATCH_FINISHED = "nst.batch.finished"
MANIFEST_REJECTED = "nst.inbox.manifest.rejected"
FAILED_JOBS_LISTED = 5
# Text from a manifest (a problem line, a job label) is capped: an event has a size limit,
# and a notification needs the start of a line, not a whole file name of 255 bytes.
MAX_TEXT_CHARS = 500


def manifest_resource(uri: str, name: str, **labels: str) -> dict[str, str]:
    return {"prefect.resource.id": f"nst.manifest.{uri}", "prefect.resource.name": name} | labels


def batch_finished(
    summary: Summary, manifest_name: str, layout: RunLayout | None, written: bool
) -> None:
    """The batch's outcome. `layout` and `written` say where its files are: under the run
    folder when they were written, else only in the flow run's artifacts."""
    totals = summary.totals
    failed = [_short(e.label) for e in summary.jobs if e.status == "failed"]
    where: dict[str, str | None] = {"summary": None, "gallery": None, "contact_sheet": None}
    if layout is not None and written:
        where = {
            "summary": layout.summary(summary.run),
            "gallery": layout.gallery(summary.run),
            "contact_sheet": layout.contact_sheet(summary.run),
        }
    payload: dict[str, Any] = {
        "manifest": summary.manifest,
        "run": summary.run,
        "counts": {
            "jobs": totals.jobs,
            "completed": totals.completed,
            "failed": totals.failed,
            "skipped": totals.skipped,
            "elsewhere": totals.elsewhere,
        },
        "failed_jobs": failed[:FAILED_JOBS_LISTED],
        "failed_jobs_not_listed": max(len(failed) - FAILED_JOBS_LISTED, 0),
        "wall_seconds": totals.wall_seconds,
        **where,
    }
    outcome = "failed" if totals.failed or not written else "completed"
    emit_event(
        BATCH_FINISHED,
        resource=manifest_resource(summary.manifest, manifest_name, **{"nst.outcome": outcome}),
        payload=payload,
    )


def manifest_rejected(manifest: str, problems: list[str], filed_as: str) -> None:
    """A dropped manifest filed in failed/ without a run: its problems' count and the first.
    It is named by its file name: a manifest this broken may have no readable `name`."""
    emit_event(
        MANIFEST_REJECTED,
        resource=manifest_resource(manifest, storage.name(manifest)),
        payload={
            "manifest": manifest,
            "problems": len(problems),
            "first_problem": _short(problems[0]) if problems else None,
            "filed_as": filed_as,
        },
    )


def _short(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 3] + "..."
