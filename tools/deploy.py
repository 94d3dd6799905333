"""Deploying prefect.yaml again without undoing what a user did in the meantime.

`prefect deploy` sends every deployment as not paused and replaces its schedules with those
of prefect.yaml, `active` included: run as it is, a second `make up` would turn back on a
schedule or deployment the user had paused. So the stack reads each deployment's state
first and deploys a copy of prefect.yaml (HOME/deploy.yaml) whose `paused` and schedules'
`active` say that state; prefect.yaml's own values apply only to a deployment that is new.
The state is never wrong in between, so the scheduler never sees a paused schedule active.

A schedule keeps its state by its `slug` (prefect.yaml gives each one), or, with no slug, when
the deployment has exactly one schedule before and after.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.api import call

Key = tuple[str, str]  # (deployment name, entrypoint): what identifies one across deploys


@dataclass(frozen=True)
class Deployed:
    paused: bool
    schedules: tuple[tuple[str | None, bool], ...]  # (slug, active)


def current_states(api_url: str) -> dict[Key, Deployed]:
    """Every deployment on the server, by name and entrypoint."""
    found: dict[Key, Deployed] = {}
    offset = 0
    while True:
        page = call(api_url, "POST", "deployments/filter", {"offset": offset, "limit": 200})
        for deployment in page:
            key = (deployment["name"], deployment.get("entrypoint") or "")
            found[key] = Deployed(
                paused=bool(deployment.get("paused")),
                schedules=tuple(
                    (s.get("slug"), bool(s.get("active"))) for s in deployment.get("schedules", [])
                ),
            )
        if len(page) < 200:
            return found
        offset += 200


def key_of(deployment: dict[str, Any]) -> Key:
    return (str(deployment["name"]), str(deployment.get("entrypoint") or ""))


def _kept_active(schedules: list[dict[str, Any]], before: Deployed) -> list[bool | None]:
    """Each of prefect.yaml's schedules' state on the server (None: a schedule it lacks)."""
    by_slug = {slug: active for slug, active in before.schedules if slug}
    kept: list[bool | None] = []
    for schedule in schedules:
        slug = schedule.get("slug")
        if slug:
            kept.append(by_slug.get(slug))
        elif len(schedules) == 1 and len(before.schedules) == 1:
            kept.append(before.schedules[0][1])
        else:
            kept.append(None)
    return kept


def with_states(
    project: dict[str, Any], states: dict[Key, Deployed], turn_on: set[str]
) -> dict[str, Any]:
    """prefect.yaml's content (`project`) with each deployment's state on the server;
    new deployments named in `turn_on` get their schedules turned on."""
    config = copy.deepcopy(project)
    for deployment in config.get("deployments") or []:
        schedules = deployment.get("schedules") or []
        before = states.get(key_of(deployment))
        if before is None:
            if deployment["name"] in turn_on:
                for schedule in schedules:
                    schedule["active"] = True
            continue
        deployment["paused"] = before.paused
        for schedule, active in zip(schedules, _kept_active(schedules, before), strict=True):
            if active is not None:
                schedule["active"] = active
    return config


def planned_states(config: dict[str, Any]) -> dict[Key, Deployed]:
    """The state each deployment of `config` has once deployed (Prefect's defaults:
    not paused, schedules active)."""
    return {
        key_of(d): Deployed(
            paused=bool(d.get("paused", False)),
            schedules=tuple(
                (s.get("slug"), bool(s.get("active", True))) for s in d.get("schedules") or []
            ),
        )
        for d in config.get("deployments") or []
    }


def differences(planned: dict[Key, Deployed], actual: dict[Key, Deployed]) -> list[str]:
    """What the server shows differently from what was deployed (schedule order aside)."""
    problems = []
    for key, want in planned.items():
        have = actual.get(key)
        if have is None:
            problems.append(f"{key[0]} ({key[1]}) is not on the server")
        elif have.paused != want.paused or sorted(have.schedules, key=str) != sorted(
            want.schedules, key=str
        ):
            problems.append(f"{key[0]}: deployed {want}, the server shows {have}")
    return problems


def fingerprint(config: dict[str, Any], code: list[Path]) -> str:
    """A digest of what a deploy sends: the config and the Python source under `code`, from
    which `prefect deploy` reads each flow's parameters. The same digest, with every
    deployment on the server as planned, means deploying again would change nothing."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for folder in code:
        for path in sorted(folder.rglob("*.py")):
            digest.update(str(path.relative_to(folder.parent)).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()
