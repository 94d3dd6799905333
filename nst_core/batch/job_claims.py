"""Job claims: a job is computed by one run at a time, whichever runs and workers start it.

Before a run computes a job it creates `{output}/_claims/{key}.{generation}.json` with the
atomic create-if-absent the inbox uses (S3 `If-None-Match: *`, a hard link locally). The
claim holds a lease that its holder renews from a background thread while the job runs; a
run that finds a live claim leaves the job to its holder and reports it as running
elsewhere. A claim whose lease has run out (its run was killed) is taken over by creating
the next generation, so of several takers exactly one wins without anything being
overwritten or deleted first. The holder removes its claims once the job is recorded.
A claim whose lease runs further ahead than any holder can set (MAX_LEASE_S plus a clock
skew allowance) was not written by a run of this tool, or by one with a broken clock: it is
logged with its holder and taken over, so that one planted file cannot stall a job for good.
No Prefect here: the unit runner takes claims, the flow only reports them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nst_core.batch import processes, storage
from nst_core.batch.jobs import Job
from nst_core.batch.layout import RunLayout
from nst_core.errors import NstError
from nst_core.settings import DEFAULT_CLAIM_LEASE_S as DEFAULT_LEASE_S
from nst_core.settings import MAX_CLAIM_LEASE_S as MAX_LEASE_S

# How far hosts' clocks may disagree: a lease that ends later than MAX_LEASE_S plus this from
# now cannot be a real holder's (nor a watcher's inbox claim dated further ahead: inbox.py).
CLOCK_SKEW = timedelta(minutes=5)
_NAME = re.compile(r"^(?P<key>[0-9a-f]{64})\.(?P<generation>\d+)\.json$")
_HOST = socket.gethostname()
# Keys whose claims some JobClaims of this process holds right now.
_HELD_IN_PROCESS: set[str] = set()
_PROCESS_LOCK = threading.Lock()


def job_claims_folder(job: Job) -> str:
    return RunLayout(storage.parent(job.output)).claims


def job_claim_uri(job: Job, generation: int) -> str:
    return f"{job_claims_folder(job)}/{job.key}.{generation}.json"


def generations(folder: str) -> dict[str, list[int]]:
    """Job key -> the generations of its claims found under `folder`, oldest first."""
    found: dict[str, list[int]] = {}
    for uri in storage.list_prefix(folder):
        match = _NAME.match(storage.name(uri))
        if match:
            found.setdefault(match["key"], []).append(int(match["generation"]))
    return {key: sorted(gens) for key, gens in found.items()}


@dataclass
class _Held:
    uri: str
    generation: int
    body: dict
    older: tuple[int, ...]  # the expired generations it took over, removed with it


class JobClaims:
    """The claims one unit holds: take them, keep them alive, drop them when done.

    Use as a context manager: the lease is renewed while the block runs, and every claim
    still held is removed when it ends (a killed process leaves its claims to expire).
    """

    def __init__(
        self, lease_s: float = DEFAULT_LEASE_S, warn: Callable[[str], None] | None = None
    ) -> None:
        if not 0 < lease_s <= MAX_LEASE_S:
            raise NstError(f"a claim lease is at most {MAX_LEASE_S:.0f} s, got {lease_s:g}")
        self.warn = warn or (lambda line: None)
        self.owner = f"{_HOST}:{os.getpid()}:{secrets.token_hex(3)}"
        self.lease_s = lease_s
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> JobClaims:
        self._renewer = threading.Thread(target=self._renew_loop, daemon=True, name="claims")
        self._renewer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._renewer:
            self._renewer.join(timeout=10)
        for key in list(self._held):
            self.release(key)

    def take(self, job: Job, seen: dict[str, list[int]]) -> bool:
        """Claim `job`; False when another run holds a live claim on it. `seen` is a
        `generations()` listing of the job's claims folder, taken before this unit began."""
        gens = seen.get(job.key, [])
        if gens:
            uri = job_claim_uri(job, gens[-1])
            holder = _read(uri)
            if holder is not None and _beyond_any_lease(holder):
                self.warn(
                    f"{uri}: a claim by {str(holder.get('owner'))[:80]!r} on host "
                    f"{str(holder.get('host'))[:80]!r} runs until "
                    f"{str(holder.get('expires_at'))[:40]}, beyond the longest lease "
                    f"({MAX_LEASE_S:.0f} s) plus clock skew ({CLOCK_SKEW.seconds} s); taken over"
                )
            elif holder is not None and _live(holder, job.key):
                return False
        generation = (gens[-1] + 1) if gens else 1
        uri = job_claim_uri(job, generation)
        body = self._body(job)
        # Of several runs taking the same generation, create-if-absent lets one win.
        if not storage.write_if_absent(uri, json.dumps(body).encode()):
            return False
        with self._lock:
            self._held[job.key] = _Held(uri, generation, body, tuple(gens))
        with _PROCESS_LOCK:
            _HELD_IN_PROCESS.add(job.key)
        return True

    def release(self, key: str) -> None:
        """Remove the claim on the job `key` (and the expired generations before it)."""
        with self._lock:
            held = self._held.pop(key, None)
        if held is None:
            return
        with _PROCESS_LOCK:
            _HELD_IN_PROCESS.discard(key)
        folder = storage.parent(held.uri)
        for generation in (held.generation, *held.older):
            # What cannot be removed now, the next taker's listing finds expired anyway.
            with contextlib.suppress(storage.StorageError):
                storage.delete(f"{folder}/{key}.{generation}.json")

    def _body(self, job: Job) -> dict:
        now = datetime.now(UTC)
        return {
            "key": job.key,
            "output": job.output,
            "owner": self.owner,
            "host": _HOST,
            "pid": os.getpid(),
            "claimed_at": now.isoformat(timespec="seconds"),
            "expires_at": (now + timedelta(seconds=self.lease_s)).isoformat(timespec="seconds"),
        }

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            with self._lock:
                held = list(self._held.values())
            expires = datetime.now(UTC) + timedelta(seconds=self.lease_s)
            for claim in held:
                claim.body["expires_at"] = expires.isoformat(timespec="seconds")
                # A failed renewal is tried again at the next, well before the lease ends.
                with contextlib.suppress(storage.StorageError):
                    storage.write_bytes(claim.uri, json.dumps(claim.body).encode())


def _live(holder: dict, key: str) -> bool:
    """Whether a claim still stands: its lease runs, and when its holder is a process on
    this host, that process is alive and (if it is this one) still working on the job. So a
    run killed here frees its jobs at once for the next run, and a unit retried by its own
    process takes back what its first attempt could not remove."""
    if _expires(holder) <= datetime.now(UTC):
        return False
    if holder.get("host") != _HOST or not isinstance(holder.get("pid"), int):
        return True
    if holder["pid"] == os.getpid():
        with _PROCESS_LOCK:
            return key in _HELD_IN_PROCESS
    return processes.alive(holder["pid"])


def _beyond_any_lease(holder: dict) -> bool:
    """Whether a claim's lease ends later than any holder could have set it to."""
    latest = datetime.now(UTC) + timedelta(seconds=MAX_LEASE_S) + CLOCK_SKEW
    return _expires(holder) > latest


def _read(uri: str) -> dict | None:
    try:
        body = json.loads(storage.read_bytes(uri, max_bytes=64 * 1024))
    except (storage.StorageError, ValueError):
        return None  # gone (its job was recorded) or unreadable: not a live claim
    return body if isinstance(body, dict) else None


def _expires(body: dict) -> datetime:
    try:
        expires = datetime.fromisoformat(str(body.get("expires_at")))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return expires if expires.tzinfo else expires.replace(tzinfo=UTC)
