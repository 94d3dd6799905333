"""A bucket (or folder) inbox: manifests dropped in, claimed exactly once, filed when done.

Layout under the inbox prefix:
    *.yaml / *.yml         manifests waiting (only these, directly under the prefix)
    .claims/NAME.json      a manifest's claim: created with an atomic create-if-absent (S3
                           `If-None-Match: *`, a hard link locally), so of any number of
                           watchers exactly one wins; it then records the flow run
    done/, failed/         manifests filed after their run, each with a JSON beside it

A manifest stays where it was dropped while its batch runs, so its relative URIs still
resolve; a watcher that sees it meanwhile finds the claim and leaves it alone.
No Prefect here; flows/watch.py orchestrates.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from nst_core import storage

CLAIMS, DONE, FAILED = ".claims", "done", "failed"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def list_manifests(inbox: str) -> list[str]:
    """Manifests directly under the inbox (not in its subfolders), sorted."""
    inbox = inbox.rstrip("/")
    found = storage.glob(f"{inbox}/*.yaml") + storage.glob(f"{inbox}/*.yml")
    return sorted(found)


def claim_uri(manifest: str) -> str:
    return f"{storage.parent(manifest)}/{CLAIMS}/{storage.name(manifest)}.json"


def claim(manifest: str, owner: str) -> bool:
    """Atomically claim `manifest` for `owner`; False when another watcher holds it."""
    body = {"manifest": manifest, "owner": owner, "claimed_at": now()}
    return storage.write_if_absent(claim_uri(manifest), json.dumps(body).encode())


def list_claims(inbox: str) -> list[dict]:
    """Every claim under the inbox, with its own URI under `uri`."""
    claims = []
    for uri in storage.list_prefix(f"{inbox.rstrip('/')}/{CLAIMS}"):
        try:
            claims.append({**json.loads(storage.read_bytes(uri)), "uri": uri})
        except (storage.StorageError, ValueError):
            continue  # vanished or half-visible: the next tick sees it whole
    return claims


def record_run(manifest: str, flow_run_id: str, flow_run_name: str) -> None:
    """Note on the claim which flow run processes the manifest."""
    uri = claim_uri(manifest)
    body = json.loads(storage.read_bytes(uri))
    body.update(flow_run_id=flow_run_id, flow_run_name=flow_run_name, started_at=now())
    storage.write_bytes(uri, json.dumps(body).encode())


def release(manifest: str) -> None:
    storage.delete(claim_uri(manifest))


def file_away(manifest: str, outcome: str, details: dict) -> str:
    """Move `manifest` to done/ or failed/ with `details` as JSON beside it; drop its claim.

    Names get a timestamp, so a manifest dropped again under the same name never
    overwrites an earlier one's record.
    """
    inbox = storage.parent(manifest)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    name = storage.name(manifest)
    stem, suffix = storage.stem(manifest), name[len(storage.stem(manifest)) :]
    target = f"{inbox}/{outcome}/{stem}.{stamp}{suffix}"
    details = {"manifest": manifest, "filed_as": target, "outcome": outcome, "at": now(), **details}
    storage.write_bytes(
        f"{inbox}/{outcome}/{stem}.{stamp}.json", json.dumps(details, indent=2).encode()
    )
    if storage.exists(manifest):
        storage.move(manifest, target)
    release(manifest)
    return target
