"""The stylize-batch flow against a real (temporary) Prefect API, on local disk and on S3."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from imagegen import ONE_JOB_PER_UNIT_GB, TINY_MANIFEST, job_records, png_bytes, scene, write_batch
from PIL import Image

from flows.batch import BatchFailed, stylize_batch
from nst_core.batch import storage
from nst_core.engine import images

MANIFEST = TINY_MANIFEST


def make_batch(root: str, manifest: str = MANIFEST) -> str:
    """2 contents x 2 styles under `root` (a folder or an s3:// prefix); the manifest URI."""
    return write_batch(root, manifest)


def run_folder(summary) -> str:
    return summary.run_folder


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_2x2_batch_writes_images_records_and_a_report(backend, tmp_path, prefect_server, request):
    root = str(tmp_path) if backend == "local" else request.getfixturevalue("s3_bucket")
    summary = stylize_batch(make_batch(root))
    assert summary.totals.completed == 4 and summary.totals.failed == 0
    found = job_records(root)
    assert len(found) == 4
    for record in found.values():
        assert record["status"] == "completed"
        image = images.decode_image(storage.read_bytes(record["output"]), record["output"])
        assert image.size == (40, 30)
    folder = run_folder(summary)
    assert folder.startswith(f"{root}/out/_runs/batch-")  # the flow run: manifest stem + time
    written = json.loads(storage.read_bytes(f"{folder}/summary.json"))
    assert written["totals"]["jobs"] == 4 and written["totals"]["images_per_hour"] > 0
    assert {e["status"] for e in written["jobs"]} == {"completed"}
    assert all(e["losses"]["style"] > 0 for e in written["jobs"])
    assert "4 completed, 0 failed, 0 skipped" in storage.read_bytes(f"{folder}/report.md").decode()
    sheet = Image.open(io.BytesIO(storage.read_bytes(f"{folder}/contact_sheet.jpg")))
    assert sheet.format == "JPEG" and sheet.size[0] >= 3 * 150
    assert storage.read_bytes(f"{folder}/losses.png").startswith(b"\x89PNG")


def test_a_corrupt_content_fails_its_jobs_only(tmp_path, prefect_server):
    uri = make_batch(str(tmp_path))
    (tmp_path / "photos" / "b.png").write_bytes(png_bytes(scene(seed=2))[:200])
    state = stylize_batch(uri, return_state=True)
    assert state.is_failed()
    with pytest.raises(BatchFailed, match="2 of 4 jobs failed"):
        state.result()
    summary_uri = next(
        u for u in storage.list_prefix(f"{tmp_path}/out/_runs") if u.endswith("summary.json")
    )
    summary = json.loads(storage.read_bytes(summary_uri))
    assert summary["totals"] == {**summary["totals"], "completed": 2, "failed": 2, "skipped": 0}
    failed = [e for e in summary["jobs"] if e["status"] == "failed"]
    assert all("b.png" in e["content"] and "truncated or corrupt" in e["error"] for e in failed)
    statuses = sorted(r["status"] for r in job_records(str(tmp_path)).values())
    assert statuses == ["completed", "completed", "failed", "failed"]
    for record in job_records(str(tmp_path)).values():
        if record["status"] == "failed":
            assert not Path(record["output"]).exists()  # no image for a failed job


def test_rerun_skips_done_jobs_and_force_recomputes(tmp_path, prefect_server):
    uri = make_batch(str(tmp_path))
    stylize_batch(uri)
    first = {u: r["created_at"] for u, r in job_records(str(tmp_path)).items()}
    again = stylize_batch(uri)
    assert again.totals.skipped == 4 and again.totals.completed == 0
    assert {u: r["created_at"] for u, r in job_records(str(tmp_path)).items()} == first
    time.sleep(1.1)  # created_at has one-second resolution
    forced = stylize_batch(uri, force=True)
    assert forced.totals.completed == 4
    assert all(r["created_at"] != first[u] for u, r in job_records(str(tmp_path)).items())


def test_params_override_the_manifest_defaults(tmp_path, prefect_server):
    uri = make_batch(str(tmp_path))
    summary = stylize_batch(uri, params={"iterations": 3, "size": 32})
    assert summary.totals.completed == 4
    for record in job_records(str(tmp_path)).values():
        assert record["params"]["iterations"] == 3
        assert record["output_size"] == [32, 24]
        assert record["losses"]["history"][-1]["evaluation"] == 3


def test_dry_run_writes_nothing(tmp_path, prefect_server):
    uri = make_batch(str(tmp_path))
    plan = stylize_batch(uri, dry_run=True)
    assert plan.jobs == 4 and len(plan.pending) == 4
    assert not (tmp_path / "out").exists()


def test_batched_units_match_one_by_one(tmp_path, prefect_server, monkeypatch):
    together, alone = tmp_path / "together", tmp_path / "alone"
    stylize_batch(make_batch(str(together)))
    monkeypatch.setenv("NST_MEMORY_BUDGET_GB", ONE_JOB_PER_UNIT_GB)  # one job per unit
    stylize_batch(make_batch(str(alone)))
    pairs = 0
    for uri, record in job_records(str(together)).items():
        assert record["batch_size"] == 4
        twin = json.loads(Path(uri.replace(str(together), str(alone))).read_text())
        assert twin["batch_size"] == 1
        a = images.to_tensor(Image.open(record["output"]).convert("RGB"))
        b = images.to_tensor(Image.open(twin["output"]).convert("RGB"))
        assert (a - b).abs().mean().item() < 0.05
        pairs += 1
    assert pairs == 4


def test_killed_run_resumes_and_completes_every_job_once(tmp_path, spawn):
    """`nst run` on its embedded server, SIGKILLed mid-batch (while it may hold the device's
    concurrency slot), then run again: every job completes exactly once."""
    uri = make_batch(str(tmp_path), MANIFEST.replace("iterations: 6", "iterations: 40"))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "NST_MEMORY_BUDGET_GB": ONE_JOB_PER_UNIT_GB,  # one job per unit: records one by one
    }
    nst = [sys.executable, "-m", "nst_cli", "run", uri]
    log = tmp_path / "first.log"
    with log.open("wb") as output:
        first = spawn.popen(
            nst, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 240
    while not job_records(str(tmp_path)) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
    assert first.poll() is None, f"the first run ended by itself:\n{log.read_text()[-3000:]}"
    os.killpg(first.pid, signal.SIGKILL)  # the run and its embedded server
    first.wait(timeout=30)
    done_before = set(job_records(str(tmp_path)))
    assert 1 <= len(done_before) < 4, "the kill should land mid-batch"
    for record in job_records(str(tmp_path)).values():  # nothing half-written
        assert Path(record["output"]).exists()
    second = spawn.run(nst, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-2000:]
    found = job_records(str(tmp_path))
    assert len(found) == 4 and all(r["status"] == "completed" for r in found.values())
    summary_uri = sorted(
        u for u in storage.list_prefix(f"{tmp_path}/out/_runs") if u.endswith("summary.json")
    )[-1]
    totals = json.loads(storage.read_bytes(summary_uri))["totals"]
    assert totals["skipped"] == len(done_before) and totals["completed"] == 4 - len(done_before)
    for record in found.values():
        Image.open(record["output"]).load()  # every image decodes
    leftovers = [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".part")]
    assert leftovers == []


def test_units_on_one_device_never_overlap(tmp_path, prefect_server, monkeypatch):
    """The device's Prefect concurrency limit (1 slot) serialises units, even across threads."""
    from prefect.client.orchestration import get_client

    from flows import execute

    windows = []
    real = execute.runner.run_unit

    def timed(*args, **kwargs):
        start = time.monotonic()
        time.sleep(0.3)  # widen the window so overlaps cannot hide
        outcomes = real(*args, **kwargs)
        windows.append((start, time.monotonic()))
        return outcomes

    monkeypatch.setattr(execute.runner, "run_unit", timed)
    monkeypatch.setenv("NST_MEMORY_BUDGET_GB", ONE_JOB_PER_UNIT_GB)
    summary = stylize_batch(make_batch(str(tmp_path)))
    assert summary.totals.completed == 4 and len(windows) == 4
    windows.sort()
    assert all(
        a_end <= b_start for (_, a_end), (b_start, _) in zip(windows, windows[1:], strict=False)
    )
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(execute.device_limit_name("cpu"))
    assert limit.limit == 1


def test_nst_run_exit_codes_and_paths(tmp_path, prefect_server, capsys):
    from cli_runner import run_cli

    uri = make_batch(str(tmp_path))
    code, out, _ = run_cli(["run", uri, "-p", "iterations=3"], capsys)
    assert code == 0
    assert "4 completed, 0 failed, 0 skipped" in out
    assert "contact sheet: " in out and "contact_sheet.jpg" in out
    code, out, _ = run_cli(["run", uri, "-p", "iterations=3"], capsys)
    assert code == 0 and "0 completed, 0 failed, 4 skipped" in out
    (tmp_path / "photos" / "a.png").write_bytes(b"not a png")
    code, _, err = run_cli(["run", uri, "-p", "iterations=4"], capsys)
    assert code == 1 and "2 of 4 jobs failed" in err
    (tmp_path / "batch.yaml").write_text("version: 1\noutput: out\nbogus: 1\n")
    code, _, err = run_cli(["run", uri], capsys)
    assert code == 2 and "bogus: Extra inputs are not permitted" in err


def test_nst_run_rejects_an_unknown_runner_and_shards_without_a_server(
    tmp_path, capsys, monkeypatch
):
    from cli_runner import run_cli

    uri = make_batch(str(tmp_path))
    code, _, err = run_cli(["run", uri, "--task-runner", "dask"], capsys)
    assert code == 2
    assert err.strip() == (
        "error: task_runner: 'dask' is not one of thread, ray; set the flow parameter "
        "task_runner or NST_TASK_RUNNER"
    )
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    code, _, err = run_cli(["run", uri, "--shards", "2"], capsys)
    assert code == 2 and "--shards needs a Prefect server" in err
    assert not (tmp_path / "out").exists()  # nothing was written


def test_sharded_dry_run_shows_the_split(tmp_path, prefect_server):
    summary = stylize_batch(make_batch(str(tmp_path)), dry_run=True, shards=3)
    assert sorted(summary.shards) == [1, 1, 2] and summary.units == [4]


def test_out_of_memory_splits_units_and_the_batch_still_finishes(
    tmp_path, prefect_server, monkeypatch
):
    """A budget that fits two jobs per unit, and a device that in fact holds only one: every
    unit runs out of memory once, is split, and every job completes at batch size 1."""
    from nst_core.batch import memory_model, runner
    from nst_core.engine.params import StyleParams

    two_jobs = 2 * memory_model.estimate_bytes(40, 30, StyleParams(size=40))
    # Plus the largest input's decode, which the planner counts once per unit: a 64 px style.
    decode = memory_model.decode_bytes((64, 64), 160)
    monkeypatch.setenv("NST_MEMORY_BUDGET_GB", str((two_jobs + decode + 1) / 1024**3))
    real, batch_sizes = runner.stylize_pairs, []

    def one_pair_fits(pairs, **kwargs):
        batch_sizes.append(len(pairs))
        if len(pairs) > 1:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory (injected)")
        return real(pairs, **kwargs)

    monkeypatch.setattr(runner, "stylize_pairs", one_pair_fits)
    summary = stylize_batch(make_batch(str(tmp_path)))
    assert summary.totals.completed == 4 and summary.totals.failed == 0
    assert sorted(batch_sizes) == [1, 1, 1, 1, 2, 2]  # two units of 2, each split once
    assert all(r["batch_size"] == 1 for r in job_records(str(tmp_path)).values())


def test_units_still_running_at_the_batch_timeout_are_reported_failed(
    tmp_path, prefect_server, monkeypatch
):
    from nst_core.batch import runner

    def stuck(pairs, **kwargs):
        time.sleep(4)
        raise RuntimeError("should have been given up on")

    monkeypatch.setattr(runner, "stylize_pairs", stuck)
    monkeypatch.setenv("NST_BATCH_TIMEOUT_S", "1")
    state = stylize_batch(make_batch(str(tmp_path)), return_state=True)
    assert state.is_failed()
    (summary_uri,) = storage.glob(f"{tmp_path}/out/_runs/*/summary.json")
    entries = json.loads(storage.read_bytes(summary_uri))["jobs"]
    assert [e["error"] for e in entries] == ["not finished within 1 s (NST_BATCH_TIMEOUT_S)"] * 4
