"""What taking and releasing a device slot costs, on a Prefect server on SQLite and on one on
PostgreSQL (the stack's).

    .venv/bin/python -m tools.slot_bench [--cycles 40] [--out FILE.json]

For each database: a fresh server (and cluster) in a temporary home, then one process that
takes and releases the flow's per-device slot (flows/execute.py: `concurrency(name,
occupy=1, lease_duration=LEASE_S)`) again and again, twice over:

- bare: nothing else talks to the server;
- after a task: inside a flow, each cycle first runs a tiny task and then takes the slot at
  once, as a unit's task does right after the one before it ended: the server is then
  writing that task's state events.

Per cycle: the time to acquire and the time to release, and how many times Prefect's client
was answered a retryable status (its DEBUG log line) and waited before asking again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tools.process_control import free_ports, stop_process
from tools.stack import LocalStack

SLOT = "nst-slot-bench"


def _measure(cycles: int) -> dict[str, Any]:
    """In the child: both scenarios against PREFECT_API_URL."""
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    retries = {"count": 0}

    class CountRetries(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "retryable status code" in record.getMessage():
                retries["count"] += 1

    client_log = logging.getLogger("prefect.client")
    client_log.setLevel(logging.DEBUG)
    client_log.addHandler(CountRetries())

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(SLOT, 1)

    def cycle() -> dict[str, float]:
        before = retries["count"]
        asked = time.perf_counter()
        with concurrency(SLOT, occupy=1, lease_duration=60, timeout_seconds=120):
            held = time.perf_counter()
        return {
            "acquire_s": held - asked,
            "release_s": time.perf_counter() - held,
            "retried": retries["count"] - before,
        }

    @task
    def tiny() -> int:
        return 1

    @flow
    def after_tasks() -> list[dict[str, float]]:
        rows = []
        for _ in range(cycles):
            tiny()
            rows.append(cycle())
        return rows

    cycle()  # the first call pays imports and connections
    bare = [cycle() for _ in range(cycles)]
    return {"bare": bare, "after a task": after_tasks()}


def _summary(rows: list[dict[str, float]]) -> dict[str, float]:
    def quantiles(key: str) -> tuple[float, float, float]:
        values = sorted(row[key] for row in rows)
        tenth = values[max(0, len(values) // 10 - 1)]
        ninetieth = values[min(len(values) - 1, len(values) * 9 // 10)]
        return statistics.median(values), tenth, ninetieth

    acquire, release = quantiles("acquire_s"), quantiles("release_s")
    total = [row["acquire_s"] + row["release_s"] for row in rows]
    return {
        "cycles": len(rows),
        "acquire_median_s": acquire[0],
        "acquire_p10_s": acquire[1],
        "acquire_p90_s": acquire[2],
        "acquire_max_s": max(row["acquire_s"] for row in rows),
        "release_median_s": release[0],
        "release_p90_s": release[2],
        "total_median_s": statistics.median(total),
        "total_mean_s": statistics.fmean(total),
        "cycles_retried": sum(1 for row in rows if row["retried"]),
        "retries": sum(row["retried"] for row in rows),
    }


def _run_against(database: str, cycles: int) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix=f"nst-slot-bench-{database}-"))
    home.chmod(0o755)  # PostgreSQL's user must reach its folder
    prefect_port, postgres_port = free_ports(2)
    stack = LocalStack(
        home=home,
        port=prefect_port,
        database="postgresql" if database == "postgresql" else "sqlite",
        local_s3=False,
        postgres_port=postgres_port,
    )
    server = None
    try:
        if database == "postgresql":
            stack.postgres().start()
        server = stack.start_server()
        child = subprocess.run(
            [sys.executable, "-m", "tools.slot_bench", "--measure", str(cycles)],
            env=stack.environment(),
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if child.returncode != 0:
            raise RuntimeError(child.stderr[-3000:])
        rows = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        if server is not None:
            stop_process(server)
        if database == "postgresql":
            stack.postgres().stop()
    return {scenario: _summary(found) | {"raw": found} for scenario, found in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.slot_bench")
    parser.add_argument("--cycles", type=int, default=40)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(_measure(args.measure)))
        return
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    results = {db: _run_against(db, args.cycles) for db in ("sqlite", "postgresql")}
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    print(
        "| database | scenario | acquire median (p10-p90, max), s | release median, s | "
        "cycles with a retry |"
    )
    print("| --- | --- | --- | --- | --- |")
    for database, scenarios in results.items():
        for scenario, s in scenarios.items():
            print(
                f"| {database} | {scenario} | {s['acquire_median_s']:.3f} "
                f"({s['acquire_p10_s']:.3f}-{s['acquire_p90_s']:.3f}, {s['acquire_max_s']:.2f}) "
                f"| {s['release_median_s']:.3f} | {s['cycles_retried']}/{s['cycles']} |"
            )


if __name__ == "__main__":
    main()
