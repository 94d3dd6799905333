"""load_plan: a manifest read from its URI (local path or s3://), with the checks that come
before its bytes are parsed (no device or FIFO, the size limit, a pinned sha256), then parsed,
validated and expanded into a Plan that records the hash of the bytes it was made from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat

from nst_core.batch import storage
from nst_core.batch.manifest.errors import ManifestError
from nst_core.batch.manifest.expand import DEFAULT_MAX_JOBS, expand
from nst_core.batch.manifest.guard import MAX_MANIFEST_BYTES
from nst_core.batch.manifest.plan import Plan
from nst_core.batch.manifest.schema import parse_manifest
from nst_core.batch.roots import Roots
from nst_core.engine.limits import Limits


def load_plan(
    uri: str,
    *,
    overrides: dict | None = None,
    overrides_label: str = "params",
    max_jobs: int = DEFAULT_MAX_JOBS,
    roots: Roots | None = None,
    expect_sha256: str | None = None,
    limits: Limits | None = None,
) -> Plan:
    """Read, validate and expand the manifest at `uri` (local path or s3://).

    `roots` limits what the manifest may read and write; `expect_sha256` refuses a manifest
    whose bytes changed since someone validated it (the inbox pins what it checked);
    `limits` bounds its costs (the settings' NST_MAX_*; default: the built-in bounds).
    """
    storage.check_uri(uri)
    try:
        if not storage.is_s3(uri) and _special_file(uri):  # /dev/zero never ends, a FIFO blocks
            raise ManifestError([f"{uri}: not a regular file"])
        if storage.size(uri) > MAX_MANIFEST_BYTES:
            raise ManifestError(
                [f"{uri}: manifest is larger than the limit of {MAX_MANIFEST_BYTES:,} bytes"]
            )
        data = storage.read_bytes(uri)
    except storage.StorageError as exc:
        raise ManifestError([str(exc)]) from None
    sha = hashlib.sha256(data).hexdigest()
    if expect_sha256 and sha != expect_sha256:
        raise ManifestError(
            [f"{uri}: the manifest changed after it was validated; drop it again to run it"]
        )
    manifest = parse_manifest(data, uri)
    plan = expand(
        manifest,
        uri,
        overrides=overrides,
        overrides_label=overrides_label,
        max_jobs=max_jobs,
        roots=roots,
        limits=limits,
    )
    return dataclasses.replace(plan, sha256=sha)


def _special_file(path: str) -> bool:
    """A device, FIFO or socket: something that exists but is neither a file nor a folder."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False  # missing or unreadable: storage names the cause
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))
