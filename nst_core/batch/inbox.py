"""A bucket (or folder) inbox: manifests dropped in, claimed exactly once, filed when done.

Layout under the inbox prefix:
    *.yaml / *.yml         manifests waiting (only these, directly under the prefix)
    .claims/NAME.json      a manifest's claim: created with an atomic create-if-absent (S3
                           `If-None-Match: *`, a hard link locally), so of any number of
                           watchers exactly one wins; it then records the flow run
    done/, failed/         manifests filed after their run, each with a JSON beside it

A manifest stays where it was dropped while its batch runs, so its relative URIs still
resolve; a watcher that sees it meanwhile finds the claim and leaves it alone.

Everything under the prefix is written by whoever can write the inbox, so nothing found
there is trusted: a claim counts only when it is well-formed, small, and about a manifest
of this inbox under its own name; anything else is reported and left alone. The inbox's
manifests read and write only inside its roots (`roots_for`), never its own folders.
No Prefect here; flows/watch.py orchestrates.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from nst_core.batch import storage
from nst_core.batch.roots import Roots

CLAIMS, DONE, FAILED = ".claims", "done", "failed"
MAX_CLAIM_BYTES = 64 * 1024  # a claim is a few hundred bytes; anything bigger is not ours


class InboxClaim(BaseModel):
    """A claim's JSON body, as the watcher writes it."""

    model_config = ConfigDict(extra="ignore")
    manifest: str
    owner: str
    claimed_at: datetime
    claim_id: str = ""
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    started_at: datetime | None = None
    output: str | None = None  # the batch's output folder, as validated at the start
    uri: str = ""  # where the claim itself lies (not stored)

    @field_validator("claimed_at", "started_at")
    @classmethod
    def _aware(cls, when: datetime | None) -> datetime | None:
        """A time without a zone is UTC, as every watcher writes it."""
        return when.replace(tzinfo=UTC) if when is not None and when.tzinfo is None else when


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def roots_for(inbox: str, read: list[str] | None = None, write: list[str] | None = None) -> Roots:
    """The roots an inbox's manifests run under: by default the inbox's own bucket (for a
    local inbox folder, its parent folder); never the inbox itself or its control folders."""
    inbox = inbox.rstrip("/")
    home = _bucket(inbox) if storage.is_s3(inbox) else storage.parent(inbox)
    reserved = [f"{inbox}/{folder}" for folder in (CLAIMS, DONE, FAILED)]
    return Roots.of(read=read or [home], write=write or [home], reserved=reserved)


def _bucket(uri: str) -> str:
    return storage.S3_PREFIX + uri[len(storage.S3_PREFIX) :].partition("/")[0]


def list_manifests(inbox: str) -> list[str]:
    """Manifests directly under the inbox (not in its subfolders), sorted."""
    inbox = inbox.rstrip("/")
    found = storage.glob(f"{inbox}/*.yaml") + storage.glob(f"{inbox}/*.yml")
    return sorted(found)


def inbox_claim_uri(manifest: str) -> str:
    return f"{storage.parent(manifest)}/{CLAIMS}/{storage.name(manifest)}.json"


def claim_manifest(manifest: str, owner: str) -> str | None:
    """Atomically claim `manifest` for `owner`: the claim's id, or None when another
    watcher holds it. The id names the manifest's filing, so two manifests filed in one
    second never collide."""
    claim_id = secrets.token_hex(4)
    body = {"manifest": manifest, "owner": owner, "claimed_at": now(), "claim_id": claim_id}
    won = storage.write_if_absent(inbox_claim_uri(manifest), json.dumps(body).encode())
    return claim_id if won else None


def list_inbox_claims(inbox: str) -> tuple[list[InboxClaim], list[str]]:
    """The inbox's claims, and one line for each object under .claims/ that is not one."""
    claims, foreign = [], []
    for uri in storage.list_prefix(f"{inbox.rstrip('/')}/{CLAIMS}"):
        try:
            found = _read_claim(uri)
        except storage.StorageError:
            continue  # vanished since the listing: its owner filed it
        if isinstance(found, str):
            foreign.append(f"{uri}: {found}; left alone")
        else:
            claims.append(found)
    return claims, foreign


def _read_claim(uri: str) -> InboxClaim | str:
    """The claim at `uri`, or why it is not one of ours."""
    if storage.parent(uri).rpartition("/")[2] != CLAIMS or not uri.endswith(".json"):
        return "not a claim (claims are .claims/NAME.json)"
    if storage.size(uri) > MAX_CLAIM_BYTES:
        return f"larger than a claim ({MAX_CLAIM_BYTES:,} bytes at most)"
    try:
        found = InboxClaim.model_validate_json(storage.read_bytes(uri))
    except ValidationError as exc:
        return f"not a claim ({exc.error_count()} problems, e.g. {exc.errors()[0]['msg']})"
    if inbox_claim_uri(found.manifest) != uri:
        # A claim names its manifest; one naming another file (another bucket, say) would
        # make the watcher move or delete that file when it settles.
        return "a claim for a manifest that is not this inbox's own"
    return found.model_copy(update={"uri": uri})


def record_run(manifest: str, flow_run_id: str, flow_run_name: str, output: str) -> None:
    """Note on the claim which flow run processes the manifest, and where it writes."""
    uri = inbox_claim_uri(manifest)
    body = json.loads(storage.read_bytes(uri))
    body.update(
        flow_run_id=flow_run_id, flow_run_name=flow_run_name, started_at=now(), output=output
    )
    storage.write_bytes(uri, json.dumps(body).encode())


def release_manifest(manifest: str) -> None:
    storage.delete(inbox_claim_uri(manifest))


def file_away(manifest: str, outcome: str, details: dict, claim_id: str = "") -> str:
    """Move `manifest` to done/ or failed/ with `details` as JSON beside it; drop its claim.

    Names carry the time and the claim, and the JSON is created only if absent: a manifest
    dropped again under the same name, or `x.yaml` and `x.yml` filed in the same second,
    never overwrite an earlier one's record.
    """
    inbox = storage.parent(manifest)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    name = storage.name(manifest)
    stem, suffix = storage.stem(manifest), name[len(storage.stem(manifest)) :]
    claim_id = claim_id or secrets.token_hex(4)
    while True:
        target = f"{inbox}/{outcome}/{stem}.{stamp}.{claim_id}{suffix}"
        body = {"manifest": manifest, "filed_as": target, "outcome": outcome, "at": now()}
        body |= details
        if storage.write_if_absent(f"{target}.json", json.dumps(body, indent=2).encode()):
            break
        claim_id = secrets.token_hex(4)  # taken (a forged claim id?): another name
    if storage.exists(manifest):
        storage.move(manifest, target)
    release_manifest(manifest)
    return target
