"""The watch-inbox flow: turn manifests dropped into a bucket (or folder) into batch runs.

Each tick (the `inbox` deployment runs it every minute; its concurrency limit of one,
CANCEL_NEW, cancels a tick that finds another running):
0. cancels the ticks of its inbox that are still waiting although their time has passed
   (missed while no worker ran): this tick does their work. The limit alone lets a missed
   tick through when it is proposed just after the previous one finished;
1. settles earlier claims: a manifest whose batch run has ended is filed in done/ or
   failed/ with a JSON naming the flow run and its summary;
2. claims every new manifest exactly once, validates it inside the inbox's read and write
   roots (an invalid one, or one reaching outside them, goes to failed/ with its errors,
   and an `nst.inbox.manifest.rejected` event tells automations: flows/events.py)
   and starts one run of the `adhoc` deployment for it, pinned to the manifest's bytes and
   held to the same roots, without waiting, so many manifests spread over many workers.
Whoever can write the inbox writes everything this flow reads there: one bad object, claim
or manifest is logged and skipped, and never stops the others or the next tick.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.runtime import flow_run
from prefect.states import Cancelled

from flows import events
from flows.execute import RunLogger
from flows.shards import ADHOC
from nst_core.batch import inbox as drop_box
from nst_core.batch.escape import log_text
from nst_core.batch.job_claims import CLOCK_SKEW
from nst_core.batch.layout import RunLayout
from nst_core.batch.manifest import ManifestError, load_plan
from nst_core.batch.roots import Roots
from nst_core.batch.storage import StorageError
from nst_core.engine.limits import Limits
from nst_core.settings import Settings

# A claim that never got its flow run (its watcher died) is released after this long.
STALE_CLAIM = timedelta(minutes=10)
MISSED_TICK = "a missed inbox tick, covered by"


@flow(name="watch-inbox", log_prints=False)
def watch_inbox(
    inbox: str,
    deployment: str = ADHOC,
    read_roots: list[str] | None = None,
    write_roots: list[str] | None = None,
) -> dict:
    """Settle finished batches, then claim and start the new manifests under `inbox`.

    Manifests may read only under `read_roots` and write only under `write_roots` (by
    default the inbox's own bucket, or a local inbox folder's parent folder).
    """
    logger = get_run_logger()
    limits = Settings.from_env().limits  # this tick's NST_* bounds
    roots = drop_box.roots_for(inbox, read_roots, write_roots)
    _drop_missed_ticks(inbox, logger)
    settled, held = _settle(inbox, logger)
    started: list[str] = []
    rejected: list[str] = []
    me = str(flow_run.id)
    for manifest in drop_box.list_manifests(inbox):
        try:
            claim_id = drop_box.claim_manifest(manifest, me)
            if claim_id is None:  # another watcher has it, or its batch is running
                logger.info("%s: left alone: %s", log_text(manifest), _held_by(held.get(manifest)))
                continue
            outcome = _start(manifest, claim_id, deployment, roots, limits, logger)
            (started if outcome == "started" else rejected).append(manifest)
        except Exception as exc:  # one bad file never stops the watcher
            logger.error("%s: %s", log_text(manifest), log_text(exc))
    return {"started": started, "rejected": rejected, "settled": settled}


def _start(
    manifest: str,
    claim_id: str,
    deployment: str,
    roots: Roots,
    limits: Limits,
    logger: RunLogger,
) -> str:
    try:
        plan = load_plan(manifest, roots=roots, limits=limits)
    except ManifestError as exc:
        filed = drop_box.file_away(manifest, drop_box.FAILED, {"errors": exc.problems}, claim_id)
        logger.warning(
            "%s: invalid, filed in failed/ (%d problems)", log_text(manifest), len(exc.problems)
        )
        events.manifest_rejected(manifest, exc.problems, filed)
        return "rejected"
    except Exception as exc:
        if isinstance(exc, StorageError) and exc.transient:
            raise  # S3 unreachable: the claim goes stale and a later tick tries again
        # Validation itself failed (a bug): kept in the inbox, the manifest's claim would go
        # stale, be released and fail the same way every ten minutes, and its writer would
        # never hear why. Filed with the error, it is answered like any invalid manifest.
        problem = f"{manifest}: validation failed unexpectedly ({type(exc).__name__}: {exc})"
        filed = drop_box.file_away(manifest, drop_box.FAILED, {"errors": [problem]}, claim_id)
        logger.error("%s; filed in failed/", log_text(problem))
        events.manifest_rejected(manifest, [problem], filed)
        return "rejected"
    # Called from a sync flow, run_deployment returns the run, not a coroutine.
    run = cast(
        FlowRun,
        run_deployment(
            deployment,
            parameters={
                "manifest": manifest,
                # The run reads the manifest again: it must be these bytes, within these roots.
                "manifest_sha256": plan.sha256,
                "read_roots": list(roots.read or ()),
                "write_roots": list(roots.write or ()),
            },
            timeout=0,
            as_subflow=False,
            # A second watcher that somehow got here too would get this same run back.
            idempotency_key=f"inbox:{manifest}:{plan.sha256}",
        ),
    )
    drop_box.record_run(manifest, str(run.id), run.name, plan.output)
    logger.info(
        "%s: %s started as %s (%s)", log_text(manifest), plan.summary(), run.name, deployment
    )
    return "started"


def _held_by(claim: drop_box.InboxClaim | None) -> str:
    """Why a manifest is not this tick's to start, from its claim as this tick found it."""
    if claim is None:
        return "claimed by another watcher during this tick"
    since = f"claimed by {claim.owner[:80]!r} at {claim.claimed_at.isoformat()}"
    if claim.flow_run_name:
        return f"{since}; its batch {claim.flow_run_name} has not ended"
    return f"{since}; its batch is being started"


def _settle(inbox_uri: str, logger: RunLogger) -> tuple[list[str], dict[str, drop_box.InboxClaim]]:
    """File the manifests whose batches ended; release claims that can never lead to a
    batch. Returns what was filed, and the claims still held, by manifest."""
    settled: list[str] = []
    held: dict[str, drop_box.InboxClaim] = {}
    claims, foreign = drop_box.list_inbox_claims(inbox_uri)
    for line in foreign:
        logger.warning("%s", log_text(line))
    now = datetime.now(UTC)
    with get_client(sync_client=True) as client:
        for claim in claims:
            try:
                if claim.flow_run_id is None:
                    if claim.claimed_at - now > CLOCK_SKEW:
                        # No watcher writes that: a planted or broken claim would hold its
                        # manifest for good.
                        logger.warning(
                            "%s: claimed by %r at %s, in the future beyond the clock skew "
                            "allowance (%s); released",
                            log_text(claim.uri),
                            claim.owner[:80],
                            claim.claimed_at.isoformat(),
                            CLOCK_SKEW,
                        )
                        drop_box.release_manifest(claim.manifest)
                    elif now - claim.claimed_at > STALE_CLAIM:
                        logger.warning(
                            "%s: claimed at %s and never started (its watcher died?); released",
                            log_text(claim.uri),
                            claim.claimed_at.isoformat(),
                        )
                        drop_box.release_manifest(claim.manifest)
                    else:
                        held[claim.manifest] = claim
                    continue
                run = client.read_flow_run(UUID(claim.flow_run_id))
                if not run.state or not run.state.is_final():
                    held[claim.manifest] = claim
                    continue
                outcome = drop_box.DONE if run.state.is_completed() else drop_box.FAILED
                drop_box.file_away(
                    claim.manifest, outcome, _run_details(claim, run), claim.claim_id
                )
                settled.append(claim.manifest)
                logger.info(
                    "%s: %s, filed in %s/", log_text(claim.manifest), run.state.name, outcome
                )
            except Exception as exc:  # one bad claim never stops the watcher
                logger.error("%s: cannot settle its claim: %s", log_text(claim.uri), log_text(exc))
                held[claim.manifest] = claim
    return settled, held


def _run_details(claim: drop_box.InboxClaim, run: FlowRun) -> dict[str, str | None]:
    """What the filed manifest's JSON says of its run (one that has ended, so has a state)."""
    assert run.state is not None
    details: dict[str, str | None] = {
        "flow_run_id": str(run.id),
        "flow_run_name": run.name,
        "state": run.state.name,
        "message": run.state.message,
    }
    if claim.output:  # recorded at the start: the manifest may have changed since
        details["summary"] = RunLayout(claim.output).summary(run.name)
    return details


def _drop_missed_ticks(inbox: str, logger: RunLogger) -> None:
    """Cancel this deployment's ticks for the same inbox that still wait although their time
    has passed: replaying them one by one would only start a process per missed minute."""
    with get_client(sync_client=True) as client:
        me = client.read_flow_run(flow_run.id)
        if me.deployment_id is None:
            return  # called directly, not from the inbox deployment
        waiting = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[me.deployment_id]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                expected_start_time=FlowRunFilterExpectedStartTime(before_=datetime.now(UTC)),
            )
        )
        missed = [r for r in waiting if r.id != me.id and r.parameters.get("inbox") == inbox]
        for run in missed:
            client.set_flow_run_state(run.id, Cancelled(message=f"{MISSED_TICK} {me.name}"))
    if missed:
        logger.info("dropped %d missed ticks of this inbox", len(missed))
