"""The watch-inbox flow: turn manifests dropped into a bucket (or folder) into batch runs.

Each tick (the `inbox` deployment runs it every minute):
1. settles earlier claims: a manifest whose batch run has ended is filed in done/ or
   failed/ with a JSON naming the flow run and its summary;
2. claims every new manifest exactly once, validates it (an invalid one goes to failed/
   with its errors) and starts one run of the `adhoc` deployment for it, without waiting,
   so many manifests spread over many workers.
The watcher itself never fails because of one bad file.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from flows.shards import ADHOC
from nst_core import inbox as drop_box
from nst_core import jobs, storage
from nst_core.errors import NstError
from nst_core.manifest import ManifestError, load_plan

# A claim that never got its flow run (its watcher died) is released after this long.
STALE_CLAIM = timedelta(minutes=10)


@flow(name="watch-inbox", log_prints=False)
def watch_inbox(inbox: str, deployment: str = ADHOC) -> dict:
    """Settle finished batches, then claim and start the new manifests under `inbox`."""
    logger = get_run_logger()
    settled = _settle(inbox, logger)
    started, rejected = [], []
    me = str(flow_run.id)
    for manifest in drop_box.list_manifests(inbox):
        try:
            if not drop_box.claim(manifest, me):
                continue  # another watcher has it, or its batch is running
            outcome = _start(manifest, deployment, logger)
            (started if outcome == "started" else rejected).append(manifest)
        except Exception as exc:  # one bad file never stops the watcher
            logger.error("%s: %s", manifest, exc)
    return {"started": started, "rejected": rejected, "settled": settled}


def _start(manifest: str, deployment: str, logger) -> str:
    try:
        plan = load_plan(manifest)
    except ManifestError as exc:
        drop_box.file_away(manifest, drop_box.FAILED, {"errors": exc.problems})
        logger.warning("%s: invalid, filed in failed/ (%d problems)", manifest, len(exc.problems))
        return "rejected"
    sha = jobs.sha256(storage.read_bytes(manifest))
    run = run_deployment(
        deployment,
        parameters={"manifest": manifest},
        timeout=0,
        as_subflow=False,
        # A second watcher that somehow got here too would get this same run back.
        idempotency_key=f"inbox:{manifest}:{sha}",
    )
    drop_box.record_run(manifest, str(run.id), run.name)
    logger.info("%s: %s started as %s (%s)", manifest, plan.summary(), run.name, deployment)
    return "started"


def _settle(inbox_uri: str, logger) -> list[str]:
    settled = []
    with get_client(sync_client=True) as client:
        for claim in drop_box.list_claims(inbox_uri):
            manifest = claim["manifest"]
            try:
                if "flow_run_id" not in claim:
                    claimed = datetime.fromisoformat(claim["claimed_at"])
                    if datetime.now(UTC) - claimed > STALE_CLAIM:
                        drop_box.release(manifest)
                    continue
                run = client.read_flow_run(claim["flow_run_id"])
                if not run.state or not run.state.is_final():
                    continue
                outcome = drop_box.DONE if run.state.is_completed() else drop_box.FAILED
                drop_box.file_away(manifest, outcome, _run_details(manifest, run))
                settled.append(manifest)
                logger.info("%s: %s, filed in %s/", manifest, run.state.name, outcome)
            except Exception as exc:  # one bad claim never stops the watcher
                logger.error("%s: cannot settle its claim: %s", manifest, exc)
    return settled


def _run_details(manifest: str, run) -> dict:
    details = {
        "flow_run_id": str(run.id),
        "flow_run_name": run.name,
        "state": run.state.name,
        "message": run.state.message,
    }
    try:
        output = load_plan(manifest).output
        details["summary"] = f"{output}/_runs/{run.name}/summary.json"
    except NstError:
        pass  # the manifest changed or vanished since; the run id still says everything
    return details
