"""What a finished job leaves behind: the metadata record written beside its image."""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone
from importlib import metadata

from nst_core.params import StyleParams
from nst_core.transfer import Result

# Bump when a change to the engine changes its outputs for the same inputs and params.
ENGINE_VERSION = "1"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("nst-batch", "torch", "torchvision", "pillow", "prefect"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def build_record(
    *,
    output: str,
    content: dict,
    styles: list[dict],
    params: StyleParams,
    result: Result,
    timings: dict[str, float],
    status: str = "completed",
) -> dict:
    """The metadata record of one output (fields documented in README.md).

    `content` and each of `styles` are {"uri", "sha256"} (styles also "weight").
    """
    return {
        "status": status,
        "output": output,
        "engine_version": ENGINE_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": {"content": content, "styles": styles},
        "params": params.model_dump(mode="json"),
        "output_size": list(result.image.size),
        "device": result.device,
        "precision": result.precision,
        "weights": params.weights,
        "batch_size": result.batch_size,
        "losses": {"final": result.final, "history": result.history},
        "timings": {name: round(value, 3) for name, value in timings.items()},
        "versions": package_versions(),
    }


def json_bytes(record: dict) -> bytes:
    return (json.dumps(record, indent=2, allow_nan=False) + "\n").encode()
