"""Manifests that live in S3 (a real SeaweedFS server started by the test session)."""

import pytest
from cli_runner import run_cli
from imagegen import png_bytes, scene, stripes

from nst_core.batch import jobs, storage
from nst_core.batch.manifest import ManifestError, load_plan

MANIFEST = b"""version: 1
output: ../outputs/{name}
defaults: {size: 48, iterations: 3}
contents: ['photos/*.png']
styles: [../paintings/starry.png]
pairs:
  - content: photos/a.png
    style: [{uri: ../paintings/starry.png, weight: 0.5}, s3://BUCKET/paintings/scream.png]
"""


@pytest.fixture
def s3_manifest(s3_bucket) -> str:
    storage.write_bytes(f"{s3_bucket}/team/photos/a.png", png_bytes(scene(seed=1)))
    storage.write_bytes(f"{s3_bucket}/team/photos/b.png", png_bytes(scene(seed=2)))
    storage.write_bytes(f"{s3_bucket}/paintings/starry.png", png_bytes(stripes(seed=1)))
    storage.write_bytes(f"{s3_bucket}/paintings/scream.png", png_bytes(stripes(seed=2)))
    uri = f"{s3_bucket}/team/masters.yaml"
    storage.write_bytes(uri, MANIFEST.replace(b"s3://BUCKET", s3_bucket.encode()))
    return uri


def test_relative_uris_resolve_in_the_bucket(s3_manifest, s3_bucket):
    plan = load_plan(s3_manifest)
    assert plan.summary() == "3 jobs (2 contents x 1 styles + 1 pairs)"
    assert plan.output == f"{s3_bucket}/outputs/masters"
    assert [j.content for j in plan.jobs[:2]] == [
        f"{s3_bucket}/team/photos/a.png",
        f"{s3_bucket}/team/photos/b.png",
    ]
    assert plan.jobs[0].styles == ((f"{s3_bucket}/paintings/starry.png", 1.0),)
    keyed = jobs.build_jobs(plan)
    assert all(j.output.startswith(f"{s3_bucket}/outputs/masters/") for j in keyed)
    assert keyed[0].content_size == (64, 48)


def test_missing_s3_input_is_a_validation_error(s3_manifest, s3_bucket):
    storage.delete(f"{s3_bucket}/paintings/starry.png")
    with pytest.raises(ManifestError) as info:
        load_plan(s3_manifest)
    assert any(
        "styles[0]: no such file '../paintings/starry.png'" in p for p in info.value.problems
    )


def test_validate_and_plan_an_s3_manifest(s3_manifest, capsys):
    code, out, _ = run_cli(["validate", s3_manifest], capsys)
    assert (code, out.strip()) == (0, "OK: 3 jobs (2 contents x 1 styles + 1 pairs)")
    code, out, _ = run_cli(["plan", s3_manifest], capsys)
    assert code == 0 and out.count("pending  s3://") == 3


def test_wrong_credentials_give_one_clear_line(s3_manifest, monkeypatch, capsys):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong-secret")
    storage.reset_clients()
    try:
        code, out, err = run_cli(["validate", s3_manifest], capsys)
    finally:
        monkeypatch.undo()
        storage.reset_clients()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: {s3_manifest}: ")
    assert "rejected the credentials (check AWS_ACCESS_KEY_ID" in lines[0]
    assert "definitely-wrong-secret" not in err and "Traceback" not in err
