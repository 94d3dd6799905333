"""What runs is what was planned: inputs checked where they are used, names that cannot
collide, claims that cannot stall a job, and each input and record read as few times as a
run needs. Each test here stages a break found on e0305f3 (issue [1/6]) and fails there."""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from imagegen import (
    ONE_JOB_PER_UNIT_GB,
    TINY_MANIFEST,
    job_for,
    job_records,
    png_bytes,
    scene,
    stripes,
    write_batch,
)

from nst_core.batch import jobs, runner, storage
from nst_core.batch.job_claims import job_claim_uri
from nst_core.batch.manifest import load_plan
from nst_core.batch.roots import Roots
from nst_core.engine.params import StyleParams
from nst_core.errors import NstError

PARAMS = StyleParams(size=40, iterations=2, device="cpu", precision="fp32")


def _failed_with(outcome: runner.Outcome, text: str) -> None:
    assert outcome.status == "failed" and text in outcome.error, outcome.error
    assert not storage.exists(outcome.job.output)
    record = json.loads(storage.read_bytes(outcome.job.record))
    assert record["status"] == "failed" and text in record["error"]


def test_a_link_repointed_outside_the_read_roots_after_planning_is_not_read(tmp_path):
    """A symlink under the read root, re-pointed at a file outside it between planning and
    the unit: the job fails on the file it opened, even when the bytes are the same."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "photos").mkdir(parents=True)
    outside.mkdir()
    photo = png_bytes(scene(48, 40, seed=1))
    (root / "photos" / "real.png").write_bytes(photo)
    (outside / "secret.png").write_bytes(photo)  # same bytes: only the roots can tell
    (root / "s.png").write_bytes(png_bytes(stripes(seed=1)))
    link = root / "photos" / "a.png"
    link.symlink_to(root / "photos" / "real.png")
    manifest = root / "batch.yaml"
    manifest.write_text("version: 1\noutput: out\ncontents: [photos/a.png]\nstyles: [s.png]\n")
    roots = Roots.of(read=[str(root)], write=[str(root)])
    plan = load_plan(str(manifest), overrides={"size": 40, "iterations": 2}, roots=roots)
    (job,) = jobs.build_jobs(plan, read_roots=roots.read)

    link.unlink()
    link.symlink_to(outside / "secret.png")
    (outcome,) = runner.run_unit([job], "cpu")
    _failed_with(outcome, "outside the read roots")


def test_an_s3_object_overwritten_after_planning_fails_its_job_and_never_counts_done(s3_bucket):
    content, style = f"{s3_bucket}/a.png", f"{s3_bucket}/s.png"
    storage.write_bytes(content, png_bytes(scene(48, 40, seed=1)))
    storage.write_bytes(style, png_bytes(stripes(seed=1)))
    job = job_for(content, ((style, 1.0),), PARAMS, output_dir=f"{s3_bucket}/out")
    original = storage.read_bytes(content)

    storage.write_bytes(content, png_bytes(scene(48, 40, seed=2)))  # someone's new upload
    (outcome,) = runner.run_unit([job], "cpu")
    _failed_with(outcome, f"input changed since it was planned: {content}")
    assert json.loads(storage.read_bytes(job.record))["key"] == job.key

    # The planned bytes back: the job was never done, so it runs now, under its own key.
    storage.write_bytes(content, original)
    (outcome,) = runner.run_unit([job], "cpu")
    assert outcome.status == "completed" and storage.exists(job.output)


def _eight_digit_collision(content_sha: str, style_sha: str) -> tuple[int, int]:
    """Two seeds whose keys share their first 8 hex digits for this pair: found the way a
    sweep would meet one (a birthday search, ~82,000 keys expected)."""
    seen: dict[str, int] = {}
    base = PARAMS
    for seed in range(1_000_000):
        params = base.model_copy(update={"seed": seed})  # no validation: speed only
        prefix = jobs.job_key(content_sha, [(style_sha, 1.0)], params, "png")[:8]
        if prefix in seen:
            return seen[prefix], seed
        seen[prefix] = seed
    raise AssertionError("no 8-digit collision in a million seeds")


def test_two_jobs_that_met_in_eight_digit_names_keep_both_outputs(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(scene(48, 40, seed=1)))
    (tmp_path / "s1.png").write_bytes(png_bytes(stripes(seed=1)))
    content_sha = jobs.sha256((tmp_path / "a.png").read_bytes())
    style_sha = jobs.sha256((tmp_path / "s1.png").read_bytes())
    first, second = _eight_digit_collision(content_sha, style_sha)
    manifest = tmp_path / "sweep.yaml"
    manifest.write_text(
        "version: 1\noutput: out\nformat: png\n"
        "defaults: {size: 40, iterations: 2, device: cpu, precision: fp32}\n"
        f"pairs:\n  - {{content: a.png, style: s1.png, params: {{seed: {first}}}}}\n"
        f"  - {{content: a.png, style: s1.png, params: {{seed: {second}}}}}\n"
    )
    plan = load_plan(str(manifest))

    # Named with 8 digits (injected), the planner refuses the pair, naming both jobs.
    with pytest.raises(NstError) as refused:
        jobs.build_jobs(plan, key_digits=8)
    (line,) = str(refused.value).splitlines()
    assert line.startswith("two different jobs would write ")
    keys = [j.key for j in jobs.build_jobs(plan)]
    assert all(key in line for key in keys) and keys[0][:8] == keys[1][:8]

    # Named as they are now, both run and both outputs stay.
    built = jobs.build_jobs(plan)
    outcomes = runner.run_unit(built, "cpu")
    assert [o.status for o in outcomes] == ["completed", "completed"]
    assert len({j.output for j in built}) == 2 and all(Path(j.output).exists() for j in built)
    for job in built:
        assert json.loads(Path(job.record).read_text())["params"]["seed"] == job.params.seed


def _planted_claim(job: jobs.Job, **body) -> None:
    storage.write_bytes(job_claim_uri(job, 1), json.dumps({"key": job.key, **body}).encode())


@pytest.mark.parametrize("force", [False, True])
def test_a_claim_leased_past_any_real_lease_is_taken_over_and_said(tmp_path, force):
    (tmp_path / "a.png").write_bytes(png_bytes(scene(48, 40, seed=1)))
    (tmp_path / "s.png").write_bytes(png_bytes(stripes(seed=1)))
    job = job_for(
        tmp_path / "a.png", ((tmp_path / "s.png", 1.0),), PARAMS, output_dir=str(tmp_path)
    )
    year = datetime.now(UTC) + timedelta(days=365)
    _planted_claim(
        job,
        owner="gpu-box-7:4242:abc",
        host="gpu-box-7",
        pid=4242,
        expires_at=year.isoformat(timespec="seconds"),
    )
    said: list[str] = []
    options = runner.UnitOptions(force=force, warn=said.append)
    (outcome,) = runner.run_unit([job], "cpu", options=options)
    assert outcome.status == "completed" and Path(job.output).exists()
    (line,) = said
    assert "gpu-box-7" in line and "taken over" in line and job_claim_uri(job, 1) in line


def test_a_live_claim_within_the_longest_lease_still_holds(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(scene(48, 40, seed=1)))
    (tmp_path / "s.png").write_bytes(png_bytes(stripes(seed=1)))
    job = job_for(
        tmp_path / "a.png", ((tmp_path / "s.png", 1.0),), PARAMS, output_dir=str(tmp_path)
    )
    soon = datetime.now(UTC) + timedelta(minutes=30)
    _planted_claim(job, owner="gpu-box-7:1:x", host="gpu-box-7", expires_at=soon.isoformat())
    (outcome,) = runner.run_unit([job], "cpu")
    assert outcome.status == "elsewhere" and not Path(job.output).exists()


def test_a_claim_lease_setting_past_its_bound_is_refused_in_one_line(monkeypatch):
    from nst_core.settings import Settings

    monkeypatch.setenv("NST_CLAIM_LEASE_S", str(10 * 365 * 86400))
    with pytest.raises(NstError) as refused:
        Settings.from_env()
    assert str(refused.value) == (
        "NST_CLAIM_LEASE_S: input should be less than or equal to 3600, got '315360000'"
    )


def test_an_inbox_claim_dated_in_the_future_is_released_and_its_manifest_starts(
    s3_bucket, fake_deployment, caplog
):
    from flows import watch
    from nst_core.batch import inbox

    box = f"{s3_bucket}/drop"
    storage.write_bytes(f"{box}/photos/a.png", png_bytes(scene(seed=1)))
    storage.write_bytes(f"{box}/paintings/s.png", png_bytes(stripes(seed=1)))
    manifest = f"{box}/job.yaml"
    storage.write_bytes(
        manifest, b"version: 1\noutput: out\ncontents: [photos/a.png]\nstyles: [paintings/s.png]\n"
    )
    future = (datetime.now(UTC) + timedelta(days=365)).isoformat()
    planted = {"manifest": manifest, "owner": "nobody", "claimed_at": future}
    storage.write_bytes(inbox.inbox_claim_uri(manifest), json.dumps(planted).encode())
    fake_deployment.outcome["state"] = fake_deployment.Running  # its batch goes on

    with caplog.at_level("INFO"):
        result = watch.watch_inbox(box)
    assert result["started"] == [manifest] and fake_deployment.calls == [manifest]
    assert any(
        "in the future" in r.getMessage() and "released" in r.getMessage() for r in caplog.records
    )
    # The next tick leaves it to its batch, and says why.
    caplog.clear()
    with caplog.at_level("INFO"):
        assert watch.watch_inbox(box)["started"] == []
    assert any(
        r.getMessage().startswith(f"{manifest}: left alone: claimed by ") for r in caplog.records
    )


def _count_reads(monkeypatch) -> Counter:
    """Every storage read by URI (the facade's read_bytes: every backend read goes through it)."""
    reads: Counter = Counter()
    real = storage.read_bytes

    def counted(uri, max_bytes=None, **kwargs):
        reads[str(uri)] += 1
        return real(uri, max_bytes, **kwargs)

    monkeypatch.setattr(storage, "read_bytes", counted)
    return reads


def test_a_run_reads_each_input_and_record_no_more_than_it_needs(
    s3_bucket, prefect_server, monkeypatch
):
    """4 jobs over 4 inputs on S3, one job per unit: each input read once to plan and once
    per unit that uses it; each record at most twice; a rerun reads each input once and no
    output image."""
    from flows.batch import stylize_batch

    uri = write_batch(f"{s3_bucket}/b", TINY_MANIFEST)
    monkeypatch.setenv("NST_MEMORY_BUDGET_GB", ONE_JOB_PER_UNIT_GB)
    inputs = [f"{s3_bucket}/b/{p}" for p in ("photos/a.png", "photos/b.png")] + [
        f"{s3_bucket}/b/paintings/{p}" for p in ("s1.png", "s2.png")
    ]
    reads = _count_reads(monkeypatch)
    summary = stylize_batch(uri)
    assert summary.totals.completed == 4
    for path in inputs:  # each input is in 2 of the 4 one-job units
        assert reads[path] == 1 + 2, (path, reads[path])
    records = [e.record for e in summary.jobs]
    assert all(reads[r] <= 2 for r in records), {r: reads[r] for r in records}

    reads.clear()
    again = stylize_batch(uri)
    assert again.totals.skipped == 4
    assert all(reads[path] == 1 for path in inputs), {p: reads[p] for p in inputs}
    outputs = [e.output for e in again.jobs]
    assert not any(reads[o] for o in outputs), {o: reads[o] for o in outputs}
    assert all(reads[r] == 1 for r in records), {r: reads[r] for r in records}


def test_records_keep_the_users_params_and_say_how_the_planner_ran_them(tmp_path, prefect_server):
    from flows.batch import stylize_batch

    manifest = TINY_MANIFEST.replace("device: cpu, ", "")  # device: auto, as users leave it
    uri = write_batch(str(tmp_path), manifest)
    stylize_batch(uri)
    for record in job_records(str(tmp_path)).values():
        assert record["params"]["device"] == "auto" and record["params"]["tile"] == "auto"
        assert record["params"]["lbfgs_history_on"] == "auto"
        execution = record["execution"]
        assert execution["device"] == "cpu" and execution["tile"] is None
        assert execution["history_on"] == "device" and execution["unit"].startswith("unit 1/1")


def test_keys_written_by_engine_version_3_are_unchanged():
    """Keys recomputed by the OutputIdentity model equal those the deny-list code wrote."""
    data = json.loads((Path(__file__).parent / "data" / "keys-engine-v3.json").read_text())
    assert len(data["keys"]) >= 8
    for case in data["keys"]:
        styles = [(sha, weight) for sha, weight in case["styles"]]
        params = StyleParams(**case["params"])
        key = jobs.job_key(case["content_sha256"], styles, params, case["format"])
        assert key == case["key"], case["case"]


def test_every_style_param_either_shapes_the_output_or_says_how_it_runs():
    """A new StyleParams field must be classified: in the key, or one of the fields that
    choose where and how a job runs (which the planner turns into its Execution)."""
    runs_how = {"device", "tile", "lbfgs_history_on", "history_every", "strength"}
    assert set(StyleParams.model_fields) == set(jobs.OutputIdentity.model_fields) | runs_how
    assert not set(jobs.OutputIdentity.model_fields) & runs_how


def test_nothing_in_the_planner_or_runner_rewrites_a_users_params():
    root = Path(__file__).resolve().parent.parent
    planner_and_runner = [
        root / "nst_core" / "batch" / name
        for name in ("jobs.py", "units.py", "memory_fit.py", "runner.py", "unit_inputs.py")
    ] + [root / "flows" / name for name in os.listdir(root / "flows") if name.endswith(".py")]
    for path in planner_and_runner:
        assert "model_copy" not in path.read_text(), path


def test_the_readme_lists_every_setting_as_the_model_defines_it():
    from nst_core.settings import table

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    listed = readme.split("<!-- settings-table -->\n", 1)[1].split("\n<!-- /settings-table -->")[0]
    assert listed == table()


def test_style_params_are_valid_or_not_whatever_the_environment(monkeypatch):
    from nst_core.engine.limits import Limits
    from nst_core.engine.params_parsing import parse_params
    from nst_core.errors import ParamsError

    monkeypatch.setenv("NST_MAX_SCALES", "1")
    monkeypatch.setenv("NST_MAX_EVALUATIONS", "1")
    asked = {"size": 128, "scales": [16, 32, 64], "iterations": 50}
    assert StyleParams(**asked).schedule() == [16, 32, 64, 128]
    assert parse_params(asked).scales == (16, 32, 64)  # the built-in bounds
    with pytest.raises(ParamsError) as refused:
        parse_params(asked, where="defaults", limits=Limits(max_scales=1))
    assert refused.value.problems == ["defaults.scales: at most 1 scales (NST_MAX_SCALES); 3 given"]


def test_no_module_but_the_settings_reads_an_nst_variable():
    root = Path(__file__).resolve().parent.parent
    sources = [*root.glob("nst_core/**/*.py"), *root.glob("flows/*.py"), *root.glob("tools/*.py")]
    for path in sources:
        if path.name == "settings.py":
            continue
        for line in path.read_text().splitlines():
            reads = "environ" in line or "getenv" in line
            assert not (reads and "NST_" in line), f"{path}: {line.strip()}"
