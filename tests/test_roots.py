"""Read and write roots on local disk: `--read-root` / `--write-root` on validate, plan and run,
and the flow's `read_roots` / `write_roots` / `manifest_sha256` parameters.

tests/test_inbox_hostile.py covers roots on S3 through the inbox.
"""

import time
from pathlib import Path

import pytest
from cli_runner import run_cli
from imagegen import png_bytes, scene, stripes

from nst_core.batch import jobs, storage

QUICK_S = 2.0  # CPU seconds of this process (a busy machine does not count against it)


@pytest.fixture
def area(tmp_path) -> Path:
    """work/ holds a team's photos and paintings; outside/ is a neighbour it may not reach."""
    work = tmp_path / "work"
    for folder in ("photos", "paintings", "team", "teamb"):
        (work / folder).mkdir(parents=True)
    (work / "photos" / "a.png").write_bytes(png_bytes(scene(seed=1)))
    (work / "paintings" / "s.png").write_bytes(png_bytes(stripes(seed=1)))
    (work / "teamb" / "b.png").write_bytes(png_bytes(scene(seed=2)))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.png").write_bytes(png_bytes(scene(seed=9)))
    return work


@pytest.fixture
def touched(monkeypatch) -> list[str]:
    """Every URI the storage layer reads, lists or probes."""
    calls: list[str] = []
    for op in (
        "read_bytes",
        "exists",
        "size_if_exists",
        "glob",
        "glob_sized",
        "list_prefix",
        "size",
    ):
        real = getattr(storage, op)

        def spy(uri, *args, _real=real, **kwargs):
            calls.append(str(uri))
            return _real(uri, *args, **kwargs)

        monkeypatch.setattr(storage, op, spy)
    return calls


@pytest.fixture
def no_flow(monkeypatch):
    import flows.batch

    monkeypatch.setattr(flows.batch, "stylize_batch", lambda *a, **k: pytest.fail("flow started"))


def manifest(folder: Path, contents: list[str], output: str = "out", extra: str = "") -> Path:
    path = folder / "batch.yaml"
    listed = ", ".join(f'"{c}"' for c in contents)
    path.write_text(
        f"version: 1\noutput: {output}\ncontents: [{listed}]\nstyles: [paintings/s.png]\n{extra}"
    )
    return path


def errors(args, capsys) -> list[str]:
    code, out, err = run_cli(args, capsys)
    assert code == 2 and out == "", (out, err)
    return err.strip().splitlines()


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_an_input_outside_the_read_roots_is_refused_without_touching_it(
    area, touched, capsys, command, no_flow
):
    path = manifest(area, ["photos/a.png", "../outside/secret.png"])
    roots = ["--read-root", str(area), "--write-root", str(area / "out")]
    lines = errors([command, path, *roots], capsys)
    secret = area.parent / "outside" / "secret.png"
    assert lines == [f"error: {path}: contents[1]: '{secret}' lies outside the read roots ({area})"]
    assert not [uri for uri in touched if uri.startswith(str(secret.parent))]
    # Without roots a local run by its own user is unrestricted, as before.
    code, out, _ = run_cli(["validate", path], capsys)
    assert code == 0 and out.startswith("OK: 2 jobs")


def test_roots_match_whole_segments(area, capsys):
    path = manifest(area, ["teamb/b.png"])
    root = area / "team"
    lines = errors(
        ["validate", path, "--read-root", root, "--read-root", area / "paintings"], capsys
    )
    assert lines == [
        f"error: {path}: contents[0]: '{area}/teamb/b.png' lies outside the read roots "
        f"({root}, {area / 'paintings'})"
    ]


def test_a_symlink_inside_a_root_cannot_lead_out_of_it(area, capsys):
    secret = area.parent / "outside" / "secret.png"
    (area / "photos" / "link.png").symlink_to(secret)
    (area / "escape").symlink_to(area.parent / "outside")
    path = manifest(area, ["photos/link.png", "photos/*.png", "escape/secret.png"])
    lines = errors(["validate", path, "--read-root", area], capsys)
    link = area / "photos" / "link.png"
    outside = f"(resolves to {secret}) lies outside the read roots ({area})"
    assert lines == [
        f"error: {path}: contents[0]: '{link}' {outside}",
        f"error: {path}: contents[1]: '{link}' {outside}",  # a match of the glob
        f"error: {path}: contents[2]: '{area}/escape/secret.png' {outside}",
    ]


def test_a_glob_reaching_above_the_roots_is_refused_before_it_is_listed(area, touched, capsys):
    path = manifest(area, ["/**/*.jpg", "../*/secret.png"])
    started = time.process_time()
    lines = errors(["validate", path, "--read-root", area], capsys)
    assert time.process_time() - started < QUICK_S
    assert lines == [
        f"error: {path}: contents[0]: glob '/**/*.jpg' would list '/', outside the read roots "
        f"({area}); start it under one of them",
        f"error: {path}: contents[1]: glob '{area.parent}/*/secret.png' would list "
        f"'{area.parent}', outside the read roots ({area}); start it under one of them",
    ]
    # The manifest and its style were read or probed; no glob was listed.
    assert set(touched) == {str(path), str(area / "paintings" / "s.png")}


def test_the_output_must_lie_under_a_write_root(area, capsys):
    path = manifest(area, ["photos/a.png"], output="../elsewhere")
    lines = errors(["validate", path, "--write-root", area / "out"], capsys)
    assert lines == [
        f"error: {path}: output: '{area.parent}/elsewhere' lies outside the write roots "
        f"({area / 'out'})"
    ]
    path = manifest(area, ["photos/a.png"], output="out/{name}")
    code, out, _ = run_cli(["validate", path, "--write-root", area / "out"], capsys)
    assert code == 0, out


@pytest.mark.parametrize(
    "root, expected",
    [
        ("http://host/x", "read roots: http://host/x: only local paths and s3://bucket/key"),
        ("s3://bucket/a/../b", "read roots: 's3://bucket/a/../b' has a '.' or '..' segment"),
        ("photos/*", "read roots: 'photos/*' is a glob"),
    ],
)
def test_a_bad_root_is_one_clear_line(area, capsys, root, expected):
    path = manifest(area, ["photos/a.png"])
    lines = errors(["validate", path, "--read-root", root], capsys)
    assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), lines


def test_a_weights_file_needs_a_run_without_roots(area, capsys):
    path = manifest(area, ["photos/a.png"], extra="defaults: {weights: /proc/self/environ}\n")
    code, out, _ = run_cli(["validate", path], capsys)  # its own user may name any file
    assert code == 0, out
    lines = errors(["validate", path, "--read-root", area], capsys)
    assert lines == [
        f"error: {path}: defaults.weights: a manifest from S3 or run with read/write roots may "
        "name only the built-in weights (caffe, torchvision); weights files are for local runs"
    ]
    # The operator's own override is theirs to make, roots or not.
    path = manifest(area, ["photos/a.png"])
    code, out, _ = run_cli(["plan", path, "--read-root", area, "-p", "weights=/x.pth"], capsys)
    assert code == 0 and "1 jobs: 0 done, 1 pending" in out, out


def test_the_flow_enforces_roots_and_the_pinned_manifest(area, prefect_server):
    from flows.batch import stylize_batch

    path = str(manifest(area, ["photos/a.png", "../outside/secret.png"]))
    state = stylize_batch(path, read_roots=[str(area)], dry_run=True, return_state=True)
    assert state.is_failed() and "lies outside the read roots" in state.message

    path = str(manifest(area, ["photos/a.png"]))
    state = stylize_batch(path, manifest_sha256="0" * 64, dry_run=True, return_state=True)
    assert state.is_failed() and "the manifest changed after it was validated" in state.message
    pinned = jobs.sha256(storage.read_bytes(path))
    roots = {"read_roots": [str(area)], "write_roots": [str(area)]}
    summary = stylize_batch(path, manifest_sha256=pinned, dry_run=True, **roots)
    assert summary.jobs == 1
