"""Manifest v1: parsing, strict validation with key paths, resolution and expansion."""

import json
from pathlib import Path

import pytest
import yaml
from imagegen import png_bytes, scene, stripes

from nst_core.batch import manifest as mf
from nst_core.batch.manifest import ManifestError, expand, load_plan, parse_manifest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def batch(tmp_path) -> Path:
    """A folder with photos/ and paintings/, as a data team would have it."""
    for name in ("b.png", "a.png", "notes.txt"):
        (tmp_path / "photos").mkdir(exist_ok=True)
        (tmp_path / "photos" / name).write_bytes(png_bytes(scene(seed=len(name))))
    (tmp_path / "paintings").mkdir()
    (tmp_path / "paintings" / "starry.png").write_bytes(png_bytes(stripes(seed=1)))
    (tmp_path / "paintings" / "scream.png").write_bytes(png_bytes(stripes(seed=2)))
    return tmp_path


def write(folder: Path, text: str, name: str = "batch.yaml") -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


VALID = """
version: 1
output: out/{name}
defaults: {size: 64, iterations: 5}
contents: [photos/*.png]
styles: [paintings/starry.png, paintings/scream.png]
pairs:
  - content: photos/a.png
    style:
      - {uri: paintings/scream.png, weight: 0.7}
      - paintings/starry.png
    params: {iterations: 9}
"""


def problems_of(uri: str, **kwargs) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_plan(uri, **kwargs)
    return info.value.problems


def test_valid_manifest_expands_the_cross_product_and_pairs(batch):
    plan = load_plan(write(batch, VALID))
    assert plan.summary() == "5 jobs (2 contents x 2 styles + 1 pairs)"
    assert plan.name == "batch"
    assert plan.output == str(batch / "out" / "batch")
    # globs expand sorted, relative URIs resolve beside the manifest
    assert [j.content for j in plan.jobs[:2]] == [str(batch / "photos" / "a.png")] * 2
    assert plan.jobs[2].content == str(batch / "photos" / "b.png")
    pair = plan.jobs[4]
    assert pair.styles == (
        (str(batch / "paintings" / "scream.png"), 0.7),
        (str(batch / "paintings" / "starry.png"), 1.0),
    )
    assert pair.params.iterations == 9 and pair.params.size == 64
    assert plan.jobs[0].params.iterations == 5


def test_parameters_merge_defaults_then_overrides_then_pair_params(batch):
    plan = load_plan(write(batch, VALID), overrides={"iterations": 50, "style_weight": 7})
    cross, pair = plan.jobs[0], plan.jobs[4]
    assert cross.params.iterations == 50 and cross.params.style_weight == 7
    assert pair.params.iterations == 9 and pair.params.style_weight == 7


def test_every_problem_is_reported_at_once_with_its_key_path(batch):
    text = """
version: 1
output: out
defaults: {size: big, colour: red}
contents: [photos/a.png]
styles: [paintings/starry.png]
pairs:
  - content: photos/a.png
    style: paintings/starry.png
    params: {iterations: 0}
  - content: photos/a.png
    style: [{uri: paintings/starry.png, weight: -1}]
"""
    uri = write(batch, text)
    found = problems_of(uri)
    assert all(p.startswith(f"{uri}: ") for p in found)
    joined = "\n".join(found)
    assert "defaults.size: Input should be a valid integer" in joined and "'big'" in joined
    assert "defaults.colour: Extra inputs are not permitted" in joined
    assert "pairs[0].params.iterations: Input should be greater than or equal to 1, got 0" in joined
    assert "pairs[1].style[0].weight: Input should be greater than or equal to 0, got -1" in joined
    assert len(found) == 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 2\noutput: o\n", "version: Input should be 1"),
        ("output: o\ncontents: [a]\n", "version: Field required"),
        ("version: 1\noutput: o\nstyles: [x]\nstyle: [y]\n", "style: Extra inputs"),
        ("version: 1\noutput: o\ncontents: a.png\n", "contents: Input should be a valid list"),
        ("version: 1\noutput: o\npairs: [{content: a.png}]\n", "pairs[0].style: Field required"),
        ("version: 1\noutput: o\nformat: gif\n", "format: Input should be 'jpg', 'png' or 'webp'"),
        ("version: 1\nname: ../up\noutput: o\n", "name: String should match pattern"),
        ("version: 1\noutput: o\ndefaults: {style_layers: [relu9_1]}\n", "unknown VGG19 layer"),
    ],
)
def test_schema_rejections_name_the_key(batch, text, expected):
    found = problems_of(write(batch, text))
    assert any(expected in p for p in found), found


def test_duplicate_keys_are_rejected_with_their_line(batch):
    found = problems_of(write(batch, "version: 1\noutput: a\noutput: b\n"))
    assert len(found) == 1 and "line 3" in found[0] and "duplicate key 'output'" in found[0]


def test_empty_job_list_is_an_error(batch):
    found = problems_of(write(batch, "version: 1\noutput: o\n"))
    assert found[0].endswith("no jobs: list contents and styles, or pairs")


def test_contents_without_styles_is_an_error(batch):
    found = problems_of(write(batch, "version: 1\noutput: o\ncontents: [photos/a.png]\n"))
    assert any("styles: contents are listed but no styles" in p for p in found)


def test_glob_matching_nothing_is_an_error(batch):
    text = "version: 1\noutput: o\ncontents: ['photos/*.jpg']\nstyles: [paintings/starry.png]\n"
    found = problems_of(write(batch, text))
    assert found == [f"{batch / 'batch.yaml'}: contents[0]: glob 'photos/*.jpg' matched no files"]


def test_missing_input_is_named(batch):
    text = "version: 1\noutput: o\ncontents: [photos/nope.png]\nstyles: [paintings/starry.png]\n"
    found = problems_of(write(batch, text))
    assert len(found) == 1 and "contents[0]: no such file 'photos/nope.png'" in found[0]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("contents", "http://example.com/a.jpg"),
        ("contents", "file:///etc/passwd"),
        ("styles", "gs://bucket/s.jpg"),
        ("output", "https://example.com/out"),
    ],
)
def test_other_uri_schemes_are_rejected(batch, field, value):
    doc = {
        "version": 1,
        "output": "o",
        "contents": ["photos/a.png"],
        "styles": ["paintings/starry.png"],
    }
    doc[field] = value if field == "output" else [value]
    found = problems_of(write(batch, yaml.safe_dump(doc)))
    key = field if field == "output" else f"{field}[0]"
    assert any(f": {key}: " in p and "s3://" in p for p in found), found


def test_manifest_over_the_size_limit_is_rejected_before_parsing(batch):
    uri = write(batch, "version: 1\n# " + "x" * mf.MAX_MANIFEST_BYTES + "\n")
    found = problems_of(uri)
    assert "limit" in found[0] and str(mf.MAX_MANIFEST_BYTES)[:3] in found[0].replace(",", "")


def test_job_count_over_the_limit_is_rejected(batch):
    found = problems_of(write(batch, VALID), max_jobs=4)
    assert any("expands to 5 jobs; the limit is 4" in p for p in found)


def test_glob_never_picks_up_earlier_outputs(batch):
    (batch / "photos" / "out").mkdir()
    (batch / "photos" / "out" / "c.png").write_bytes(png_bytes(scene()))
    text = (
        "version: 1\noutput: photos/out\ncontents: ['photos/**/*.png']\n"
        "styles: [paintings/starry.png]\n"
    )
    plan = load_plan(write(batch, text))
    assert [Path(j.content).name for j in plan.jobs] == ["a.png", "b.png"]


def test_alias_bomb_and_deep_nesting_fail_fast():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    with pytest.raises(ManifestError, match="expands to more than"):
        parse_manifest(bomb.encode(), "bomb.yaml")
    with pytest.raises(ManifestError, match="nested"):
        parse_manifest(("[" * 5000 + "]" * 5000).encode(), "deep.yaml")


def test_non_utf8_is_rejected():
    with pytest.raises(ManifestError, match="not UTF-8"):
        parse_manifest(b"version: 1\noutput: \xff\xfe\n", "latin.yaml")


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just text"])
def test_top_level_must_be_a_mapping(text):
    with pytest.raises(ManifestError, match="expected a mapping"):
        parse_manifest(text.encode(), "m.yaml")


def test_schema_file_is_in_sync_with_the_model():
    on_disk = json.loads((ROOT / "manifests" / "schema.json").read_text())
    assert on_disk == mf.json_schema(), "regenerate: nst schema > manifests/schema.json"


@pytest.mark.parametrize("name", ["local.yaml", "s3.yaml", "demo.yaml"])
def test_example_manifests_parse(name):
    path = ROOT / "manifests" / name
    manifest = parse_manifest(path.read_bytes(), str(path))
    assert manifest.version == 1


def test_s3_example_shows_globs_pairs_blends_and_params():
    path = ROOT / "manifests" / "s3.yaml"
    manifest = parse_manifest(path.read_bytes(), str(path))
    assert manifest.output.startswith("s3://")
    assert any("**" in c for c in manifest.contents)
    blend = manifest.pairs[0].style
    assert len(blend) == 2 and blend[0].weight == 0.7
    assert manifest.pairs[0].params == {
        "iterations": 500,
        "preserve_color": True,
    }


def test_expand_takes_a_parsed_manifest(batch):
    manifest = parse_manifest(VALID.encode(), "x")
    plan = expand(manifest, str(batch / "other.yaml"))
    assert plan.name == "other" and len(plan.jobs) == 5
