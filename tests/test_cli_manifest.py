"""`nst validate` and `nst plan`."""

import shutil
from pathlib import Path

import pytest
from cli_runner import run_cli
from imagegen import completed_record, png_bytes, scene, stripes

from nst_core.batch import jobs
from nst_core.batch.manifest import load_plan

ROOT = Path(__file__).resolve().parent.parent

MANIFEST = """version: 1
output: out
defaults: {size: 48, iterations: 3}
contents: [c1.png, c2.png]
styles: [s.png]
pairs:
  - {content: c1.png, style: [s.png, {uri: s2.png, weight: 2}]}
"""


@pytest.fixture
def manifest(tmp_path):
    tmp_path.joinpath("c1.png").write_bytes(png_bytes(scene(seed=1)))
    tmp_path.joinpath("c2.png").write_bytes(png_bytes(scene(seed=2)))
    tmp_path.joinpath("s.png").write_bytes(png_bytes(stripes(seed=1)))
    tmp_path.joinpath("s2.png").write_bytes(png_bytes(stripes(seed=2)))
    path = tmp_path / "batch.yaml"
    path.write_text(MANIFEST)
    return path


def test_validate_prints_the_job_count(manifest, capsys):
    code, out, _ = run_cli(["validate", manifest], capsys)
    assert code == 0
    assert out.strip() == "OK: 3 jobs (2 contents x 1 styles + 1 pairs)"


def test_validate_lists_every_error_and_exits_2(manifest, capsys):
    manifest.write_text(MANIFEST.replace("size: 48", "size: 2").replace("c2.png", "c9.png"))
    code, out, err = run_cli(["validate", manifest], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == ""
    assert len(lines) == 2
    assert all(line.startswith(f"error: {manifest}: ") for line in lines)
    assert any("defaults.size: Input should be greater than or equal to 16" in x for x in lines)
    assert any("contents[1]: no such file 'c9.png'" in x for x in lines)


def test_plan_shows_done_and_pending_jobs(manifest, capsys):
    plan_jobs = jobs.build_jobs(load_plan(str(manifest)))
    first = plan_jobs[0]
    (manifest.parent / "out").mkdir()
    (manifest.parent / "out" / first.record.rsplit("/", 1)[1]).write_bytes(
        completed_record(first).to_json()
    )
    code, out, _ = run_cli(["plan", manifest], capsys)
    lines = out.strip().splitlines()
    assert code == 0
    assert lines[0] == f"done     {first.output}"
    assert [x.split()[0] for x in lines[1:3]] == ["pending", "pending"]
    assert lines[-1].startswith("3 jobs: 1 done, 2 pending")


def test_plan_param_overrides_change_the_keys(manifest, capsys):
    _, before, _ = run_cli(["plan", manifest], capsys)
    code, after, _ = run_cli(["plan", manifest, "--param", "iterations=4"], capsys)
    assert code == 0
    assert before.splitlines()[0] != after.splitlines()[0]
    code, _, err = run_cli(["plan", manifest, "--param", "iterations=zero"], capsys)
    assert code == 2 and "--param.iterations: Input should be a valid integer" in err


def test_the_local_example_runs_on_what_the_demo_draws(tmp_path, monkeypatch, capsys):
    """README's first batch, `nst run manifests/local.yaml` after `make demo`: local.yaml
    names the pictures `nst demo` draws, so it validates in a copy of the checkout (manifests/
    and what the demo draws, where it draws it) and fails plainly before the demo has run."""
    from nst_cli import batch
    from nst_core.batch import demo

    draw = demo.write_demo_inputs
    drawn: list[Path] = []
    monkeypatch.setattr(demo, "write_demo_inputs", lambda folder: drawn.append(folder) or [])
    monkeypatch.setattr(batch, "run", lambda manifest, **options: None)
    code, _, err = run_cli(["demo"], capsys)  # where the real `nst demo` draws, nothing run
    assert code == 0, err
    where = drawn[0].relative_to(ROOT)
    copy = tmp_path / "manifests"
    shutil.copytree(ROOT / "manifests", copy)
    code, _, err = run_cli(["validate", copy / "local.yaml"], capsys)
    assert code == 2 and "content-*.png' matched no files" in err  # before the demo
    draw(tmp_path / where)
    code, out, err = run_cli(["validate", copy / "local.yaml"], capsys)
    assert code == 0, err
    assert out.strip() == "OK: 4 jobs (2 contents x 2 styles + 0 pairs)"
    assert _inputs(copy / "local.yaml") == _inputs(copy / "demo.yaml")


def _inputs(manifest: Path) -> set[str]:
    return {
        uri for job in load_plan(str(manifest)).jobs for uri in (job.content, *dict(job.styles))
    }
