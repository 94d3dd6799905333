"""Bad input, round two: numbers that are not finite or out of range, glob syntax errors,
names a file system cannot hold, `~`, `version: true`, YAML merge keys and file names with
`[`. Each is settled at validation: one line naming the key, `nst validate` exit 2.
"""

import json
import logging
import math
from pathlib import Path

import pytest
import yaml
from cli_runner import run_cli
from imagegen import png_bytes, scene, stripes
from pydantic import ValidationError

from nst_core.batch import inbox, storage
from nst_core.batch.manifest import ManifestError, expand, load_plan, parse_manifest
from nst_core.batch.roots import Roots
from nst_core.engine.limits import Limits
from nst_core.engine.params import StyleParams
from nst_core.engine.ranges import MAX_WEIGHT


@pytest.fixture
def work(tmp_path) -> Path:
    """photos/ and paintings/ beside where the manifest goes."""
    (tmp_path / "photos").mkdir()
    (tmp_path / "paintings").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(png_bytes(scene(seed=1)))
    (tmp_path / "paintings" / "s.png").write_bytes(png_bytes(stripes(seed=1)))
    return tmp_path


@pytest.fixture
def touched(monkeypatch) -> dict[str, list[str]]:
    """Every URI the storage layer probes or lists, by operation."""
    calls: dict[str, list[str]] = {}
    for op in ("exists", "size_if_exists", "glob", "glob_sized", "list_prefix"):
        real = getattr(storage, op)

        def spy(uri, *args, _op=op, _real=real, **kwargs):
            calls.setdefault(_op, []).append(str(uri))
            return _real(uri, *args, **kwargs)

        monkeypatch.setattr(storage, op, spy)
    return calls


BASE = {"version": 1, "output": "out", "contents": ["photos/a.png"], "styles": ["paintings/s.png"]}


def write(folder: Path, text: str, name: str = "batch.yaml") -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def manifest(folder: Path, **changes) -> str:
    doc = {k: v for k, v in {**BASE, **changes}.items() if v is not None}
    return write(folder, yaml.safe_dump(doc))


def refused(uri: str, capsys) -> str:
    """`nst validate URI` exits 2 with exactly one error line, which is returned."""
    code, out, err = run_cli(["validate", uri], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "", (code, out, err)
    assert len(lines) == 1, lines
    assert "Traceback" not in err and "unexpected error" not in err
    return lines[0]


# -- 1. numbers: finite, and within a stated range ------------------------------------------
NON_FINITE = [
    ("defaults: {content_weight: .inf}", "defaults.content_weight", "inf", "0 to 1e9"),
    ("defaults: {style_weight: .inf}", "defaults.style_weight", "inf", "0 to 1e9"),
    ("defaults: {tv_weight: .nan}", "defaults.tv_weight", "nan", "0 to 1e9"),
    ("defaults: {strength: -.inf}", "defaults.strength", "-inf", "0 to 1"),
    ("defaults: {learning_rate: .inf}", "defaults.learning_rate", "inf", "above 0, up to 10"),
    (
        "defaults: {stop_tolerance: .nan}",
        "defaults.stop_tolerance",
        "nan",
        "0 up to but not including 1",
    ),
    ("defaults: {style_scale: .inf}", "defaults.style_scale", "inf", "above 0, up to 4"),
    ("defaults: {size: .inf}", "defaults.size", "inf", "16 to 8,192"),
    (
        "defaults: {style_layer_weights: [1, 1, .inf, 1, 1]}",
        "defaults.style_layer_weights[2]",
        "inf",
        "0 to 1e9",
    ),
    ("defaults: {content_weight: 1e999}", "defaults.content_weight", "'1e999'", "0 to 1e9"),
    (
        "pairs: [{content: photos/a.png, style: [paintings/s.png, {uri: paintings/s.png, "
        "weight: .inf}]}]",
        "pairs[0].style[1].weight",
        "inf",
        "0 to 1e9",
    ),
]


@pytest.mark.parametrize(("line", "key", "value", "allowed"), NON_FINITE)
def test_a_non_finite_number_is_refused_with_its_key_value_and_range(
    work, capsys, line, key, value, allowed
):
    uri = write(work, f"version: 1\noutput: out\n{line}\n")
    found = refused(uri, capsys)
    expected = f"Input should be a finite number, got {value} (allowed: {allowed})"
    assert found == f"error: {uri}: {key}: {expected}"


@pytest.mark.parametrize(
    ("line", "key", "expected"),
    [
        (
            "defaults: {style_weight: 1.0e+10}",
            "defaults.style_weight",
            "Input should be less than or equal to 1000000000, got 10000000000.0 "
            "(allowed: 0 to 1e9)",
        ),
        # The blend that ran to "style loss 2e18": each weight finite, their sum not.
        (
            "pairs: [{content: photos/a.png, style: [{uri: paintings/s.png, weight: 1.0e+308},"
            " {uri: paintings/s.png, weight: 1.0e+308}]}]",
            "pairs[0].style[0].weight",
            "Input should be less than or equal to 1000000000, got 1e+308 (allowed: 0 to 1e9)",
        ),
        (
            "defaults: {history_every: 1000000}",
            "defaults.history_every",
            "Input should be less than or equal to 100000, got 1000000 (allowed: 1 to 100,000)",
        ),
    ],
)
def test_a_finite_number_beyond_its_bound_is_refused_with_the_range(
    work, capsys, line, key, expected
):
    uri = write(work, f"version: 1\noutput: out\n{line}\n")
    code, out, err = run_cli(["validate", uri], capsys)
    assert code == 2
    assert f"error: {uri}: {key}: {expected}" in err.splitlines()


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_non_finite_override_is_refused_before_anything_runs(work, capsys, monkeypatch, command):
    import flows.batch

    def started(*args, **kwargs):
        pytest.fail("the flow started with a non-finite parameter")

    monkeypatch.setattr(flows.batch, "stylize_batch", started)
    uri = manifest(work)
    code, out, err = run_cli([command, uri, "-p", "content_weight=1e999"], capsys)
    assert code == 2, (out, err)
    assert err.strip() == (
        f"error: {uri}: --param.content_weight: Input should be a finite number, got '1e999' "
        "(allowed: 0 to 1e9)"
    )


def test_every_entry_point_gets_finite_parameters():
    # Flows, the CLI and the API all build StyleParams: the model itself refuses them.
    for field in ("content_weight", "style_weight", "tv_weight", "learning_rate"):
        with pytest.raises(ValidationError, match="finite number"):
            StyleParams(**{field: math.inf})
    # What a record later writes with allow_nan=False is therefore finite.
    top = StyleParams(
        content_weight=MAX_WEIGHT,
        style_weight=MAX_WEIGHT,
        tv_weight=MAX_WEIGHT,
        style_layer_weights=(MAX_WEIGHT,) * 5,
    )
    json.dumps(top.model_dump(), allow_nan=False)
    assert top.layer_weights() == dict.fromkeys(top.style_layers, 0.2)


def test_the_largest_blend_validates_and_its_weights_sum_finitely(work):
    styles = [{"uri": "paintings/s.png", "weight": MAX_WEIGHT}] * Limits().max_blend_styles
    pairs = [{"content": "photos/a.png", "style": styles}]
    plan = load_plan(manifest(work, contents=None, styles=None, pairs=pairs))
    weights = [w for _, w in plan.jobs[0].styles]
    assert math.isfinite(sum(weights)) and weights[0] / sum(weights) == 1 / len(weights)


def test_every_weight_at_its_bound_still_gives_finite_losses():
    from nst_core.engine.loop import stylize
    from nst_core.engine.targets import Pair

    # The plain loss (gatys) has the largest magnitudes; blend weights are at the bound too.
    params = StyleParams(
        size=32,
        iterations=6,
        scales=None,
        device="cpu",
        precision="fp32",
        loss="gatys",
        content_weight=MAX_WEIGHT,
        style_weight=MAX_WEIGHT,
        tv_weight=MAX_WEIGHT,
        history_every=1,
    )
    pair = Pair(scene(seed=1), [stripes(seed=1), stripes(seed=2)], params, [MAX_WEIGHT] * 2)
    result = stylize(pair)
    assert result.final.total < 1e17  # fp32 ends at 3e38: 20 orders of magnitude to spare
    rows = [result.final.model_dump(), *(row.model_dump() for row in result.history)]
    json.dumps(rows, allow_nan=False)  # what the record writer refuses, it never sees


# -- 2. glob syntax errors are validation errors --------------------------------------------
def test_a_reversed_glob_range_is_a_validation_error_before_anything_is_listed(
    work, capsys, touched
):
    uri = manifest(work, contents=["photos/[z-a].jpg"])
    assert refused(uri, capsys) == (
        f"error: {uri}: contents[0]: glob 'photos/[z-a].jpg' is not a valid pattern (bad "
        "character range z-a): write a range in [...] low to high, as [a-z]; to match a "
        "literal '[', write [[]"
    )
    assert not touched.get("glob_sized") and not touched.get("list_prefix")


def test_a_reversed_glob_range_in_an_s3_manifest_is_refused_without_a_request(touched):
    uri = "s3://inbox-bucket/manifests/dropped.yaml"
    doc = {**BASE, "contents": ["photos/[z-a].jpg"], "styles": ["s3://inbox-bucket/[9-0]/*.png"]}
    with pytest.raises(ManifestError) as info:
        expand(parse_manifest(yaml.safe_dump(doc).encode(), uri), uri)
    assert info.value.problems == [
        f"{uri}: contents[0]: glob 'photos/[z-a].jpg' is not a valid pattern (bad character "
        "range z-a): write a range in [...] low to high, as [a-z]; to match a literal '[', "
        "write [[]",
        f"{uri}: styles[0]: glob 's3://inbox-bucket/[9-0]/*.png' is not a valid pattern (bad "
        "character range 9-0): write a range in [...] low to high, as [a-z]; to match a "
        "literal '[', write [[]",
    ]
    assert not touched  # refused before any S3 request (no server runs here)


@pytest.fixture
def local_inbox(tmp_path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(png_bytes(scene(seed=1)))
    return folder


def start_one(folder: Path, name: str = "bad.yaml") -> tuple[str, str]:
    """Claim the manifest `name` of the inbox and hand it to the watcher's start step, as a
    tick does; returns (manifest, what the step answered)."""
    from flows import watch

    uri = str(folder / name)
    claim_id = inbox.claim_manifest(uri, "test-watcher")
    assert claim_id is not None
    roots = inbox.roots_for(str(folder))
    outcome = watch._start(uri, claim_id, "adhoc", roots, Limits(), logging.getLogger("t"))
    return uri, outcome


def filed(folder: Path) -> dict:
    (record,) = (folder / "failed").glob("*.json")
    return json.loads(record.read_text())


def test_the_inbox_files_a_manifest_with_a_glob_syntax_error_in_failed(local_inbox):
    body = {**BASE, "contents": ["../photos/[z-a].png"], "styles": ["../photos/a.png"]}
    (local_inbox / "bad.yaml").write_text(yaml.safe_dump(body))
    uri, outcome = start_one(local_inbox)
    assert outcome == "rejected"
    assert filed(local_inbox)["errors"] == [
        f"{uri}: contents[0]: glob '../photos/[z-a].png' is not a valid pattern (bad character "
        "range z-a): write a range in [...] low to high, as [a-z]; to match a literal '[', "
        "write [[]"
    ]
    assert not (local_inbox / "bad.yaml").exists()
    assert not list((local_inbox / inbox.CLAIMS).iterdir())  # its claim is released


def test_the_inbox_files_a_manifest_whose_validation_broke_and_releases_its_claim(
    local_inbox, monkeypatch
):
    from flows import watch

    def broken(*args, **kwargs):
        raise RuntimeError("bad character range z-a at position 7")

    monkeypatch.setattr(watch, "load_plan", broken)
    (local_inbox / "bad.yaml").write_text(yaml.safe_dump(BASE))
    uri, outcome = start_one(local_inbox)
    assert outcome == "rejected"
    assert filed(local_inbox)["errors"] == [
        f"{uri}: validation failed unexpectedly (RuntimeError: bad character range z-a at "
        "position 7)"
    ]
    assert not list((local_inbox / inbox.CLAIMS).iterdir())


def test_the_inbox_keeps_the_claim_when_s3_is_unreachable_while_validating(
    local_inbox, monkeypatch
):
    from flows import watch

    def unreachable(uri, *args, **kwargs):
        raise storage.StorageError(uri, "cannot reach the S3 endpoint", transient=True)

    monkeypatch.setattr(watch, "load_plan", unreachable)
    (local_inbox / "bad.yaml").write_text(yaml.safe_dump(BASE))
    with pytest.raises(storage.StorageError):
        start_one(local_inbox)
    assert (local_inbox / "bad.yaml").exists() and not (local_inbox / "failed").exists()
    assert len(list((local_inbox / inbox.CLAIMS).iterdir())) == 1  # a later tick retries


# -- 3. what cannot be written, or means something else --------------------------------------
@pytest.mark.parametrize(
    ("changes", "key", "name", "size"),
    [
        ({"output": "out/" + "x" * 300}, "output", "x" * 37 + "...", 300),
        ({"output": "out/" + "é" * 128}, "output", "é" * 37 + "...", 256),
        ({"contents": ["photos/" + "y" * 256 + ".png"]}, "contents[0]", "y" * 37 + "...", 260),
        ({"styles": ["s3://bucket/" + "z" * 300 + "/*.png"]}, "styles[0]", "z" * 37 + "...", 300),
    ],
)
def test_a_name_over_255_bytes_is_refused_at_validation(
    work, capsys, touched, changes, key, name, size
):
    uri = manifest(work, **changes)
    assert refused(uri, capsys) == (
        f"error: {uri}: {key}: the name {name!r} is {size:,} bytes; a file or folder name may "
        "be at most 255 bytes: shorten it"
    )
    probed = [u for op in touched.values() for u in op]
    assert not any(("x" * 255) in u or ("z" * 255) in u or ("y" * 255) in u for u in probed)


def test_a_name_of_255_bytes_is_fine(work):
    plan = load_plan(manifest(work, output="out/" + "x" * 255))
    assert Path(plan.output).name == "x" * 255


@pytest.mark.parametrize(
    ("changes", "key", "shown"),
    [
        ({"output": "~/nst-out"}, "output", "'~/nst-out'"),
        ({"output": "~"}, "output", "'~'"),
        ({"contents": ["~alice/photos/*.png"]}, "contents[0]", "'~alice/photos/*.png'"),
    ],
)
def test_a_path_starting_with_a_tilde_is_refused_with_the_fix(work, capsys, changes, key, shown):
    uri = manifest(work, **changes)
    assert refused(uri, capsys) == (
        f"error: {uri}: {key}: {shown} starts with '~', which is not expanded in a manifest: "
        "write the full path (/home/you/...) or a path relative to the manifest"
    )
    assert not (work / "~").exists()


def test_a_tilde_in_an_s3_manifest_is_refused_without_a_request(touched):
    uri = "s3://inbox-bucket/manifests/dropped.yaml"
    doc = {"version": 1, "output": "~/out"}
    with pytest.raises(ManifestError) as info:
        expand(parse_manifest(yaml.safe_dump(doc).encode(), uri), uri)
    assert info.value.problems == [
        f"{uri}: output: '~/out' starts with '~', which is not expanded in a manifest: "
        "write the full s3:// URI or a path relative to the manifest"
    ]
    assert not touched


def test_a_folder_named_tilde_is_still_reachable_as_dot_slash(work):
    (work / "~").mkdir()
    (work / "~" / "b.png").write_bytes(png_bytes(scene(seed=2)))
    plan = load_plan(manifest(work, contents=["./~/b.png"]))
    assert plan.jobs[0].content == str(work / "~" / "b.png")


@pytest.mark.parametrize(("value", "shown"), [("true", "True"), ("1.0", "1.0")])
def test_version_must_be_the_integer_1(work, capsys, value, shown):
    uri = write(work, f"version: {value}\noutput: out\ncontents: [photos/a.png]\n")
    code, out, err = run_cli(["validate", uri], capsys)
    assert code == 2
    assert err.splitlines()[0] == (
        f"error: {uri}: version: Input should be the integer 1, got {shown}"
    )


MERGED = """
version: 1
output: out
pairs:
  - content: photos/a.png
    style: paintings/s.png
    params: &shared {size: 64, iterations: 5, content_weight: 2}
  - content: photos/a.png
    style: paintings/s.png
    params:
      <<: *shared
      iterations: 9
"""


def test_yaml_merge_keys_merge_and_the_mapping_s_own_keys_win(work, capsys):
    uri = write(work, MERGED)
    plan = load_plan(uri)
    merged = plan.jobs[1].params
    assert (merged.size, merged.iterations, merged.content_weight) == (64, 9, 2.0)
    assert plan.jobs[0].params.iterations == 5
    code, out, _ = run_cli(["validate", uri], capsys)
    assert code == 0 and out.startswith("OK: 2 jobs")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: &a {x: 1}\nb: {<<: *a, <<: *a}\n", "line 2, column 13: duplicate key <<"),
        ("a: &a {x: 1}\nb: {<<: *a, y: 1, y: 2}\n", "line 2, column 19: duplicate key 'y'"),
        ("a: &a 3\nb: {<<: *a}\n", "expected a mapping or list of mappings for merging"),
        (
            "a: &a {k0: 0, k1: 1, k2: 2, k3: 3, k4: 4, k5: 5, k6: 6, k7: 7, k8: 8, k9: 9}\n"
            + "".join(
                f"{c}: &{c} {{<<: [{', '.join(['*' + p] * 10)}]}}\n"
                for p, c in zip("abcdefgh", "bcdefghi", strict=True)
            ),
            "expands to more than 200,000 values",
        ),
    ],
    ids=["two-merge-keys", "duplicate-beside-merge", "merge-of-a-scalar", "merge-bomb"],
)
def test_merge_keys_keep_the_strict_loader_s_protections(work, capsys, text, expected):
    uri = write(work, text)
    line = refused(uri, capsys)
    assert line.startswith(f"error: {uri}: ") and expected in line


def test_a_merged_mapping_overriding_its_own_merge_is_no_duplicate(work):
    # `defaults` merges `inner` and is shallower, so the loader flattens `inner` (its key
    # list then holds the merged `size` and its own) before it builds `inner` itself: that
    # must not then read as a duplicate key.
    text = (
        "version: 1\noutput: out\n"
        "pairs:\n"
        "  - {content: photos/a.png, style: paintings/s.png, params: &base {size: 64}}\n"
        "  - {content: photos/a.png, style: paintings/s.png,"
        " params: &inner {<<: *base, size: 32}}\n"
        "defaults: {<<: *inner, iterations: 3}\n"
    )
    plan = load_plan(write(work, text))
    assert [(job.params.size, job.params.iterations) for job in plan.jobs] == [(64, 3), (32, 3)]


@pytest.fixture
def bracketed(work) -> Path:
    for name in ("img[1].png", "img1.png", "img2.png"):
        (work / "photos" / name).write_bytes(png_bytes(scene(seed=len(name))))
    return work


def test_a_file_named_with_a_bracket_is_named_plainly(bracketed):
    plan = load_plan(manifest(bracketed, contents=["photos/img[1].png"]))
    assert [job.content for job in plan.jobs] == [str(bracketed / "photos" / "img[1].png")]


def test_brackets_still_glob_when_no_such_file_exists_or_with_other_wildcards(bracketed):
    plan = load_plan(manifest(bracketed, contents=["photos/img[12].png", "photos/img[1]*"]))
    assert sorted(Path(job.content).name for job in plan.jobs) == [
        "img1.png",
        "img2.png",
    ]
    escaped = load_plan(manifest(bracketed, contents=["photos/img[[]1].png"]))
    assert [Path(job.content).name for job in escaped.jobs] == ["img[1].png"]


def test_a_bracketed_name_outside_the_read_roots_is_not_probed(bracketed, touched):
    secret = bracketed.parent / "secret[1].png"
    secret.write_bytes(png_bytes(scene(seed=9)))
    uri = manifest(bracketed, contents=[str(secret)])
    with pytest.raises(ManifestError) as info:
        load_plan(uri, roots=Roots.of(read=[str(bracketed)], write=[str(bracketed)]))
    assert any("outside the read roots" in p for p in info.value.problems)
    probed = [u for op in touched.values() for u in op]
    assert str(secret) not in probed  # whether it exists is not found out


@pytest.mark.parametrize(
    ("value", "line"),
    [
        (
            {"tile": "huge"},
            "defaults.tile: Input should be a valid integer or 'auto' or 'off', got 'huge'",
        ),
        ({"scales": "x"}, "defaults.scales: Input should be a valid tuple or 'auto', got 'x'"),
    ],
)
def test_a_value_of_no_allowed_kind_is_one_line_naming_every_kind(value, line):
    from nst_core.engine.params_parsing import parse_params
    from nst_core.errors import ParamsError

    with pytest.raises(ParamsError) as info:
        parse_params(value, where="defaults")
    assert info.value.problems == [line]
