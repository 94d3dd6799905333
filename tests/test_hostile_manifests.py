"""Hostile manifests: each is rejected quickly with one line naming the problem, and nothing
is read or written beyond the manifest itself.

What a manifest may touch: a local manifest is run by its owner and may name any local path
(`../` climbs, absolute paths are fine) or s3:// URI; a manifest stored in S3 (a bucket
inbox, say) reaches only S3. Outputs always land directly in `output`, under names the
batch derives itself. tests/test_manifest.py covers the plainer schema rejections.
"""

import os
import resource
import sys
import time
from pathlib import Path

import pytest
import yaml
from cli_runner import run_cli
from imagegen import png_bytes, scene, stripes

from nst_core.batch import jobs, storage
from nst_core.batch import manifest as mf
from nst_core.batch.manifest import ManifestError, expand, load_plan, parse_manifest

ROOT = Path(__file__).resolve().parent.parent
# "Quickly", in CPU seconds of this process: what other processes do on the machine does not
# count, so a busy machine cannot make these tests red; the work itself is 10-400 ms, and the
# bugs they guard against took 12 s and more.
QUICK_S = 2.0


@pytest.fixture
def area(tmp_path) -> Path:
    """work/ holds the manifest's inputs; outside/ is a neighbour no manifest should reach.
    Both sit one level below tmp_path, so `tree(area.parent.parent)` sees writes beside and
    above them and nothing of the session's servers (SeaweedFS's data folder under the
    session's temporary root grows on its own)."""
    sandbox = tmp_path / "sandbox"
    work = sandbox / "work"
    (work / "photos").mkdir(parents=True)
    (work / "paintings").mkdir()
    (work / "photos" / "a.png").write_bytes(png_bytes(scene(seed=1)))
    (work / "paintings" / "s.png").write_bytes(png_bytes(stripes(seed=1)))
    (sandbox / "outside").mkdir()
    (sandbox / "outside" / "secret.png").write_bytes(png_bytes(scene(seed=9)))
    return work


@pytest.fixture
def touched(monkeypatch) -> dict[str, list[str]]:
    """Every URI the storage layer reads, writes, lists or probes, by operation."""
    calls: dict[str, list[str]] = {}
    ops = ("read_bytes", "write_bytes", "write_if_absent", "exists", "size_if_exists")
    for op in (*ops, "glob", "glob_sized", "list_prefix"):
        real = getattr(storage, op)

        def spy(uri, *args, _op=op, _real=real, **kwargs):
            calls.setdefault(_op, []).append(str(uri))
            return _real(uri, *args, **kwargs)

        monkeypatch.setattr(storage, op, spy)
    return calls


@pytest.fixture
def no_flow(monkeypatch):
    """`nst run` must stop at validation: starting the flow fails the test at once."""
    import flows.batch

    def started(*args, **kwargs):
        pytest.fail("nst run started the flow for an invalid manifest")

    monkeypatch.setattr(flows.batch, "stylize_batch", started)


def tree(root: Path) -> dict[str, tuple]:
    """Every file and folder under `root` with its size and modification time; called on
    the test's own tmp_path, above the manifest's folder, so writes beside it show too."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            info = path.lstat()
            found[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns)
    return found


def write(folder: Path, text: str | bytes, name: str = "batch.yaml") -> Path:
    path = folder / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def rejected_by_cli(manifest, capsys) -> tuple[list[str], list[str]]:
    """`nst validate` and `nst run` on `manifest`: both exit 2, quickly; their error lines."""
    lines = []
    for command in (["validate", manifest], ["run", manifest]):
        started = time.process_time()
        code, out, err = run_cli(command, capsys)
        elapsed = time.process_time() - started
        assert code == 2 and out == "", (command, out, err)
        assert elapsed < QUICK_S, f"{command[0]} took {elapsed:.1f} s"
        lines.append(err.strip().splitlines())
    assert lines[0] == lines[1]  # run says exactly what validate says
    assert all(line.startswith("error: ") for line in lines[0])
    return lines[0], lines[1]


# -- size, structure, encoding -------------------------------------------------------------
def test_10_mb_of_yaml_is_refused_before_it_is_read(area, touched, capsys, no_flow):
    body = "version: 1\noutput: out\ncontents:\n" + "- photos/a.png\n" * 700_000
    manifest = write(area, body)
    assert manifest.stat().st_size > 10_000_000
    before = tree(area.parent.parent)

    started = time.process_time()
    with pytest.raises(ManifestError) as info:
        load_plan(str(manifest))
    assert time.process_time() - started < QUICK_S
    assert info.value.problems == [
        f"{manifest}: manifest is larger than the limit of {mf.MAX_MANIFEST_BYTES:,} bytes"
    ]
    lines, _ = rejected_by_cli(manifest, capsys)
    assert lines == [f"error: {info.value.problems[0]}"]
    assert "read_bytes" not in touched  # its size alone decided
    assert tree(area.parent.parent) == before
    # Bytes that arrive some other way are measured before they are decoded or parsed.
    started = time.process_time()
    with pytest.raises(ManifestError, match="bytes; the limit is"):
        parse_manifest(manifest.read_bytes(), "inbox/big.yaml")
    assert time.process_time() - started < QUICK_S


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n"
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(BOMB, "expands to more than 200,000 values", id="alias-bomb"),
        # A megabyte of one-character values, under the size limit: took 12.6 s to refuse
        # when it was parsed into Python objects first; the event pass refuses it in ~0.4 s.
        pytest.param(
            "contents: [" + "x," * (mf.MAX_MANIFEST_BYTES // 2 - 8) + "]\n",
            "expands to more than 200,000 values",
            id="megabyte-of-values",
        ),
        pytest.param("[" * 100_000 + "]" * 100_000, "nested", id="deep-flow"),
        pytest.param("- " * 5_000 + "x\n", "nested", id="deep-block"),
        pytest.param(
            "a:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(200)),
            "nested",
            id="deep-mapping",
        ),
        pytest.param("a: &a [*a]\n", "nested", id="recursive-alias"),
        pytest.param(
            "a: &a " + "[" * 20 + "x" + "]" * 20 + "\nb: " + "[" * 15 + "*a" + "]" * 15 + "\n",
            "nested",
            id="alias-deeper-than-allowed",
        ),
        pytest.param(b"version: 1\noutput: \xff\xfe\n", "not UTF-8 text (byte 19)", id="latin-1"),
        pytest.param("version: 1\n".encode("utf-16"), "not UTF-8 text (byte 0)", id="utf-16"),
        pytest.param("version: 1\n---\nversion: 1\n", "another document", id="two-documents"),
        pytest.param(
            "version: 1\nx: !!python/object:os.system ls\n", "could not determine", id="tag"
        ),
    ],
)
def test_hostile_yaml_is_refused_quickly_with_one_line(area, text, expected, capsys, no_flow):
    manifest = write(area, text)
    before = tree(area.parent.parent)
    started = time.process_time()
    with pytest.raises(ManifestError) as info:
        load_plan(str(manifest))
    assert time.process_time() - started < QUICK_S
    assert len(info.value.problems) == 1 and expected in info.value.problems[0]
    lines, _ = rejected_by_cli(manifest, capsys)
    assert len(lines) == 1 and expected in lines[0]
    assert tree(area.parent.parent) == before


def test_thousands_of_problems_are_listed_up_to_a_cap(area, capsys, no_flow):
    keys = "".join(f"  bogus{i}: 1\n" for i in range(5_000))
    manifest = write(area, f"version: 1\noutput: out\ndefaults:\n{keys}")
    with pytest.raises(ManifestError) as info:
        load_plan(str(manifest))
    problems = info.value.problems
    assert len(problems) == mf.MAX_PROBLEMS + 1
    assert problems[-1] == f"... and {5_000 - mf.MAX_PROBLEMS:,} more problems"
    assert problems[0] == f"{manifest}: defaults.bogus0: Extra inputs are not permitted"
    lines, _ = rejected_by_cli(manifest, capsys)
    assert len(lines) == mf.MAX_PROBLEMS + 1


@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_a_manifest_that_is_not_a_regular_file_is_refused_without_reading(tmp_path, special, spawn):
    # A FIFO would block the reader and /dev/zero never ends: in a subprocess with a timeout
    # and a memory cap, so that a regression fails instead of eating the machine's memory.
    path = str(tmp_path / "pipe.yaml") if special == "fifo" else special
    if special == "fifo":
        os.mkfifo(path)

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    out = spawn.run(
        [sys.executable, "-m", "nst_cli", "validate", path],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=cap_memory,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {path}: not a regular file"


# -- where URIs may point -----------------------------------------------------------------
MANIFEST = {
    "version": 1,
    "output": "out",
    "contents": ["photos/a.png"],
    "styles": ["paintings/s.png"],
}


def manifest_with(**changes) -> str:
    doc = {**MANIFEST, **changes}
    return yaml.safe_dump({k: v for k, v in doc.items() if v is not None})


@pytest.mark.parametrize(
    ("changes", "key", "expected"),
    [
        ({"output": "out\0x"}, "output", "control character '\\x00'"),
        ({"output": "out\nINFO all done"}, "output", "control character '\\n'"),
        ({"contents": ["photos/a.png\x1b[2J"]}, "contents[0]", "control character '\\x1b'"),
        ({"styles": ["x" * 5_000]}, "styles[0]", "5,000 characters long; the limit is 4,096"),
        ({"output": "s3://bucket/out/../../other-bucket"}, "output", "'.' or '..' segments"),
        ({"output": "s3://bucket/./out"}, "output", "'.' or '..' segments"),
        ({"contents": ["s3://bucket/photos/../../x.png"]}, "contents[0]", "'..' segments"),
        ({"styles": ["s3://bucket/a/../b/*.png"]}, "styles[0]", "'..' segments"),
        (
            {"pairs": [{"content": "s3://b/../c.png", "style": "paintings/s.png"}]},
            "pairs[0].content",
            "'..' segments",
        ),
        (
            {"pairs": [{"content": "photos/a.png", "style": [{"uri": "s3://b/x/../../y.png"}]}]},
            "pairs[0].style[0]",
            "'..' segments",
        ),
        ({"contents": ["FILE:///etc/passwd"]}, "contents[0]", "only local paths and s3://"),
        ({"styles": ["S3://bucket/s.png"]}, "styles[0]", "only local paths and s3://"),
        ({"output": "ftp://host/out"}, "output", "only local paths and s3://"),
        (
            {"pairs": [{"content": "photos/a.png", "style": "gs://bucket/s.png"}]},
            "pairs[0].style[0]",
            "only local paths and s3://",
        ),
        (
            {"pairs": [{"content": "https://example.com/a.png", "style": "paintings/s.png"}]},
            "pairs[0].content",
            "only local paths and s3://",
        ),
        ({"name": ".."}, "name", "should match pattern"),
        ({"name": "../../outside"}, "name", "should match pattern"),
        ({"name": "a/b"}, "name", "should match pattern"),
        ({"output": "out/{name}/{secret}"}, "output", "only the placeholder {name}"),
        ({"output": "out/*"}, "output", "not a glob"),
    ],
)
def test_uris_that_may_not_be_used_are_refused_before_anything_is_touched(
    area, touched, changes, key, expected, capsys, no_flow
):
    manifest = write(area, manifest_with(**changes))
    before = tree(area.parent.parent)
    lines, _ = rejected_by_cli(manifest, capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {manifest}: {key}: ") and expected in lines[0], lines
    assert set(touched.get("read_bytes", [])) == {str(manifest)}
    assert not touched.get("write_bytes") and not touched.get("write_if_absent")
    # The bad URI itself was never probed or listed.
    probes = ("exists", "size_if_exists", "glob", "glob_sized", "list_prefix")
    probed = [uri for op in probes for uri in touched.get(op, [])]
    assert all("outside" not in uri and "s3://" not in uri for uri in probed), probed
    assert tree(area.parent.parent) == before


def test_a_manifest_named_dotdot_has_no_usable_batch_name(area, capsys, no_flow):
    manifest = write(area, manifest_with(), name="..yaml")
    lines, _ = rejected_by_cli(manifest, capsys)
    assert lines == [
        f"error: {manifest}: name: the file stem '.' is not a valid batch name; set name"
    ]


LOCAL_PAIR = {"pairs": [{"content": "/etc/hostname", "style": [{"uri": "/etc/hosts"}]}]}
LOCAL_IN_S3 = [
    ("output", {"output": "/tmp/nst-hostile-output"}),
    ("contents[0]", {"contents": ["/etc/passwd"]}),
    ("styles[0]", {"styles": ["/etc/*.conf"]}),
    ("pairs[0].content", LOCAL_PAIR),
    ("pairs[0].style[0]", LOCAL_PAIR),
]


@pytest.mark.parametrize(("key", "changes"), LOCAL_IN_S3, ids=[k for k, _ in LOCAL_IN_S3])
def test_a_manifest_in_s3_cannot_reach_local_disk(key, changes, touched):
    # Only local paths and a relative output: nothing of the manifest is valid in S3, so
    # expansion needs no server, and it must stop before touching anything.
    doc = {"version": 1, "output": "out", **changes}
    uri = "s3://inbox-bucket/manifests/dropped.yaml"
    with pytest.raises(ManifestError) as info:
        expand(parse_manifest(yaml.safe_dump(doc).encode(), uri), uri)
    mine = [p for p in info.value.problems if p.startswith(f"{uri}: {key}: ")]
    assert len(mine) == 1 and "a manifest in S3 may name only s3:// URIs" in mine[0]
    assert not touched  # neither the local path nor anything in S3 was touched
    assert not Path("/tmp/nst-hostile-output").exists()


def test_an_s3_manifest_climbing_above_its_bucket_is_refused(touched):
    uri = "s3://inbox-bucket/manifests/dropped.yaml"
    doc = {
        "version": 1,
        "output": "../../other-bucket/out",
        "contents": ["../../../etc/passwd"],
        "styles": ["../../other-bucket/*.png"],
    }
    with pytest.raises(ManifestError) as info:
        expand(parse_manifest(yaml.safe_dump(doc).encode(), uri), uri)
    for key in ("output", "contents[0]", "styles[0]"):
        assert any(
            p.startswith(f"{uri}: {key}: ") and "above the bucket" in p for p in info.value.problems
        )
    assert not touched


def test_s3_manifest_with_local_paths_end_to_end(s3_bucket, capsys, no_flow, tmp_path):
    """The same through `nst validate` / `nst run` on a manifest that really lives in S3."""
    storage.write_bytes(f"{s3_bucket}/in/s.png", png_bytes(stripes()))
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes(scene()))
    doc = {
        "version": 1,
        "output": str(tmp_path / "stolen"),
        "contents": [str(secret)],
        "styles": ["s.png"],
    }
    uri = f"{s3_bucket}/in/dropped.yaml"
    storage.write_bytes(uri, yaml.safe_dump(doc).encode())
    before = tree(tmp_path)
    lines, _ = rejected_by_cli(uri, capsys)
    assert [line.split(": ", 3)[2] for line in lines] == ["output", "contents[0]"]
    assert all("a manifest in S3 may name only s3:// URIs" in line for line in lines)
    assert tree(tmp_path) == before


# -- globs and the job limit --------------------------------------------------------------
def test_a_glob_past_the_job_limit_is_refused_without_reading_an_image(area, touched, capsys):
    photos = area / "photos"
    for i in range(mf.DEFAULT_MAX_JOBS + 1):  # not even images: none may be opened
        (photos / f"p{i:05d}.png").write_bytes(b"")
    manifest = write(area, manifest_with(contents=["photos/*.png"]))
    before = tree(area.parent.parent)
    started = time.process_time()
    code, out, err = run_cli(["validate", manifest], capsys)
    elapsed = time.process_time() - started
    assert code == 2 and out == ""
    assert err.strip() == (
        f"error: {manifest}: expands to {mf.DEFAULT_MAX_JOBS + 2:,} jobs; the limit is "
        f"{mf.DEFAULT_MAX_JOBS:,} (split the manifest, or raise the limit)"
    )
    assert elapsed < 5 * QUICK_S, f"{elapsed:.1f} s"  # listing 10,002 files
    assert touched["read_bytes"] == [str(manifest)]
    assert tree(area.parent.parent) == before


def test_a_glob_just_past_a_lower_limit_names_the_count(area, touched, capsys, no_flow):
    for i in range(60):
        (area / "photos" / f"q{i:02d}.png").write_bytes(b"not an image")
    manifest = write(area, manifest_with(contents=["photos/q*.png"]))
    code, _, err = run_cli(["validate", manifest, "--max-jobs", "50"], capsys)
    assert code == 2
    assert err.strip().endswith(
        "expands to 60 jobs; the limit is 50 (split the manifest, or raise the limit)"
    )
    assert touched["read_bytes"] == [str(manifest)]


# -- output names -------------------------------------------------------------------------
def test_output_names_stay_in_the_output_folder_whatever_the_input_names(area):
    odd = [
        "..png",
        "...png",
        "-rf.png",
        "a b;rm -rf ~.png",
        ".hidden.png",
        "ünïcode.png",
        "x" * 200 + ".png",
    ]
    for seed, name in enumerate(odd, start=10):
        (area / "photos" / name).write_bytes(png_bytes(scene(seed=seed)))
    (area / "paintings" / "..%2F..%2Fup.png").write_bytes(png_bytes(stripes(seed=3)))
    manifest = write(area, manifest_with(contents=["photos/*.png"], styles=["paintings/*.png"]))
    plan = load_plan(str(manifest))
    keyed = jobs.build_jobs(plan)
    assert len(keyed) == (len(odd) + 1) * 2
    out = Path(plan.output)
    assert out == area / "out"
    for job in keyed:
        for written in (Path(job.output), Path(job.record)):
            assert written.parent == out, written
            assert os.path.normpath(written) == str(written)
            assert not written.name.startswith(".") and "/" not in written.name
            assert len(written.name) < 255


# -- what must still pass -----------------------------------------------------------------
def test_the_largest_legitimate_manifest_still_passes(area):
    """10,000 explicit pairs (the job limit) sharing parameters through aliases: under the
    size limit and the value budget, accepted."""
    pair = "  - {content: photos/a.png, style: paintings/s.png, params: %s}\n"
    text = (
        "version: 1\noutput: out\npairs:\n"
        + pair % "&p0 {iterations: 3}"
        + pair % "&p1 {iterations: 4}"
        + "".join(pair % f"*p{i % 2}" for i in range(2, mf.DEFAULT_MAX_JOBS))
    )
    manifest = write(area, text)
    assert manifest.stat().st_size < mf.MAX_MANIFEST_BYTES
    started = time.process_time()
    plan = load_plan(str(manifest))
    elapsed = time.process_time() - started
    assert len(plan.jobs) == mf.DEFAULT_MAX_JOBS
    assert {j.params.iterations for j in plan.jobs} == {3, 4}
    assert elapsed < 10 * QUICK_S, f"{elapsed:.1f} s"
