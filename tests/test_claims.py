"""One computation per job, even from two runs: job claims with leases (batch/job_claims.py)."""

import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest
from imagegen import (
    ONE_JOB_PER_UNIT_GB,
    TINY_MANIFEST,
    is_done,
    job_for,
    job_records,
    png_bytes,
    scene,
    write_batch,
)

from nst_core.batch import job_claims, jobs, runner, storage
from nst_core.engine.params import StyleParams

PARAMS = StyleParams(size=40, iterations=3, device="cpu", precision="fp32")


@pytest.fixture
def unit(tmp_path) -> list[jobs.Job]:
    """Four jobs (two contents x two styles) with their inputs on disk."""
    for name, seed in (("a.png", 1), ("b.png", 2), ("s1.png", 3), ("s2.png", 4)):
        (tmp_path / name).write_bytes(png_bytes(scene(seed=seed)))
    return [
        job_for(
            str(tmp_path / content),
            ((str(tmp_path / style), 1.0),),
            PARAMS,
            output_dir=str(tmp_path / "out"),
            fmt="png",
        )
        for content in ("a.png", "b.png")
        for style in ("s1.png", "s2.png")
    ]


@pytest.fixture
def engine_calls(monkeypatch) -> list[str]:
    """The output of every pair the engine optimises, from any thread; each call is slowed
    so that two runs started together overlap."""
    calls: list[str] = []
    real = runner.stylize_pairs

    def counted(pairs, **kwargs):
        calls.extend(pair.content_name for pair in pairs)
        threading.Event().wait(0.5)
        return real(pairs, **kwargs)

    monkeypatch.setattr(runner, "stylize_pairs", counted)
    return calls


def plant(job: jobs.Job, generation: int, expires_in_s: float, host: str = "other-host") -> str:
    now = datetime.now(UTC)
    body = {
        "key": job.key,
        "owner": f"{host}:1:abc",
        "host": host,
        "pid": 1,
        "claimed_at": now.isoformat(),
        "expires_at": (now + timedelta(seconds=expires_in_s)).isoformat(),
    }
    uri = job_claims.job_claim_uri(job, generation)
    storage.write_bytes(uri, json.dumps(body).encode())
    return uri


def test_two_runs_of_one_unit_at_once_compute_each_job_once(unit, engine_calls):
    barrier = threading.Barrier(2)
    results: list[list[runner.Outcome]] = []

    def run():
        barrier.wait()
        results.append(runner.run_unit(unit, "cpu"))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(engine_calls) == 4 and len(set(engine_calls)) == 2  # 2 contents x 2 styles
    for index, job in enumerate(unit):
        statuses = sorted(result[index].status for result in results)
        assert statuses in (["completed", "elsewhere"], ["completed", "skipped"]), statuses
        assert is_done(job)
    assert storage.list_prefix(job_claims.job_claims_folder(unit[0])) == []  # removed once recorded


def test_a_live_claim_leaves_the_job_to_its_holder_even_with_force(unit, engine_calls):
    live = plant(unit[0], 1, expires_in_s=600)
    outcomes = runner.run_unit(unit, "cpu", options=runner.UnitOptions(force=True))
    assert [o.status for o in outcomes] == ["elsewhere", "completed", "completed", "completed"]
    assert not is_done(unit[0]) and len(engine_calls) == 3
    assert storage.exists(live)  # the holder's claim is untouched


def test_an_expired_claim_is_taken_over_and_removed(unit, engine_calls):
    stale = [plant(unit[0], 1, expires_in_s=-3600), plant(unit[0], 2, expires_in_s=-60)]
    outcomes = runner.run_unit(unit[:1], "cpu")
    assert [o.status for o in outcomes] == ["completed"] and is_done(unit[0])
    assert not any(storage.exists(uri) for uri in stale)
    assert storage.list_prefix(job_claims.job_claims_folder(unit[0])) == []


def test_a_claim_of_a_dead_process_on_this_host_is_taken_over_at_once(unit, engine_calls, spawn):
    dead = spawn.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    uri = plant(unit[0], 1, expires_in_s=600, host=job_claims._HOST)
    body = json.loads(storage.read_bytes(uri)) | {"pid": int(dead.stdout)}
    storage.write_bytes(uri, json.dumps(body).encode())
    assert [o.status for o in runner.run_unit(unit[:1], "cpu")] == ["completed"]


def test_two_nst_runs_started_together_compute_each_job_once(tmp_path, spawn):
    """Two `nst run` of one manifest, each on its own embedded Prefect server (two laptops'
    terminals, or a cron job and a person): 4 jobs, 4 optimisations, both exit 0."""
    uri = write_batch(str(tmp_path), TINY_MANIFEST.replace("iterations: 6", "iterations: 60"))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "NST_MEMORY_BUDGET_GB": ONE_JOB_PER_UNIT_GB,
    }
    runs = [
        spawn.popen(
            [sys.executable, "-m", "nst_cli", "run", uri],
            env=env | {"PREFECT_HOME": str(tmp_path / f"home-{n}")},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for n in range(2)
    ]
    outputs = [run.communicate(timeout=400)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    completions = [
        line.split(" - completed ", 1)[1].split(" in ")[0]
        for output in outputs
        for line in output.splitlines()
        if " - completed " in line
    ]
    assert sorted(completions) == sorted(set(completions)) and len(completions) == 4, outputs
    assert len(job_records(str(tmp_path))) == 4
