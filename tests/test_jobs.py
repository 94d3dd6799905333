"""Job identity, output names and the done check that makes reruns idempotent."""

import json
import re

import pytest
from imagegen import job_for

from nst_core.batch import jobs
from nst_core.engine.params import StyleParams

PARAMS = StyleParams(size=64, iterations=5)


def key(content="c" * 64, styles=(("s" * 64, 1.0),), params=PARAMS, fmt="jpg"):
    return jobs.job_key(content, list(styles), params, fmt)


def test_same_inputs_and_params_give_the_same_key():
    assert key() == key()
    assert key(params=StyleParams(size=64, iterations=5)) == key()


@pytest.mark.parametrize(
    "change",
    [
        {"content": "d" * 64},
        {"styles": (("t" * 64, 1.0),)},
        {"styles": (("s" * 64, 0.5),)},
        {"styles": (("s" * 64, 1.0), ("t" * 64, 1.0))},
        {"params": StyleParams(size=64, iterations=6)},
        {"params": StyleParams(size=64, iterations=5, style_weight=51)},
        {"fmt": "png"},
    ],
)
def test_any_change_gives_a_new_key(change):
    assert key(**change) != key()


def test_engine_version_is_part_of_the_key(monkeypatch):
    before = key()
    monkeypatch.setattr(jobs, "ENGINE_VERSION", "999")
    assert key() != before


def test_where_it_runs_is_not_part_of_the_key():
    assert key(params=StyleParams(size=64, iterations=5, device="cpu", history_every=3)) == key()


def test_output_layout_and_names(tmp_path):
    shas = {"/in/my photo.jpg": "a" * 64, "/in/starry.png": "b" * 64, "/in/scream.png": "c" * 64}
    job = job_for(
        "/in/my photo.jpg",
        (("/in/starry.png", 0.7), ("/in/scream.png", 0.3)),
        PARAMS,
        output_dir="s3://bucket/out/",
        fmt="webp",
        sha_of=shas.__getitem__,
    )
    assert re.fullmatch(r"s3://bucket/out/my_photo--starry\+scream--[0-9a-f]{16}\.webp", job.output)
    assert job.record == job.output.removesuffix(".webp") + ".json"
    assert job.output.split("--")[-1].startswith(job.key[:16])
    assert job.style_shas == ("b" * 64, "c" * 64)


@pytest.mark.parametrize(
    "uri", ["/x/../../etc.passwd", "s3://b/..", "/x/.hidden.png", "/x/a b/c?.png"]
)
def test_output_stems_cannot_escape_the_output_folder(uri):
    stem = jobs.safe_stem(uri)
    assert "/" not in stem and not stem.startswith(".") and ".." not in stem.strip("_")
    assert stem


def test_strength_sets_the_style_weight_unless_an_expert_gives_one():
    weights = [StyleParams(strength=s).resolved_style_weight() for s in (0.0, 0.25, 0.5, 1.0)]
    assert weights == sorted(weights) and weights[0] < weights[-1]
    assert key(params=StyleParams(size=64, iterations=5, strength=0.2)) != key()
    # What was resolved is the identity: a given style weight makes strength irrelevant.
    given = {"size": 64, "iterations": 5, "style_weight": 80.0}
    assert key(params=StyleParams(**given, strength=0.1)) == key(
        params=StyleParams(**given, strength=0.9)
    )
    assert StyleParams(**given).resolved_style_weight() == 80.0
    assert "strength is ignored" in StyleParams(**given).notes()[0]
    assert StyleParams().notes() == []
    # The plain Gatys loss keeps its own weight when none is given.
    assert StyleParams(loss="gatys").resolved_style_weight() == 50.0
    same = StyleParams(loss="balanced", strength=0.5).resolved_style_weight()
    assert key(params=StyleParams(size=64, iterations=5, loss="balanced", style_weight=same)) == (
        key(params=StyleParams(size=64, iterations=5, loss="balanced", strength=0.5))
    )


def test_the_stopping_rule_is_in_the_key_only_when_it_can_stop_a_pair():
    on = StyleParams(size=64, iterations=5, stop_tolerance=0.01)
    assert key(params=on.model_copy(update={"stop_window": 7})) != key(params=on)
    assert key(params=on.model_copy(update={"stop_tolerance": 0.02})) != key(params=on)
    off = StyleParams(size=64, iterations=5, stop_tolerance=0.0)
    assert key(params=off) != key(params=on)
    assert key(params=off.model_copy(update={"stop_window": 7})) == key(params=off)
    # Off, the key holds no trace of the rule: it is the identity of the params without it.
    fields = off.model_dump(mode="json")
    for name in ("device", "history_every", "tile", "lbfgs_history_on", "strength"):
        fields.pop(name)
    for name in ("stop_tolerance", "stop_window"):
        fields.pop(name)
    fields["style_weight"] = off.resolved_style_weight()
    fields["scales"] = None  # auto, at 64 px: the size alone
    identity = {
        "engine": jobs.ENGINE_VERSION,
        "content": "c" * 64,
        "styles": [["s" * 64, 1.0]],
        "params": fields,
        "format": "jpg",
    }
    assert key(params=off) == jobs.sha256(json.dumps(identity, sort_keys=True).encode())


def test_tiling_is_how_a_job_runs_not_what_it_is():
    for tile in ("off", 512, 64):
        assert key(params=PARAMS.model_copy(update={"tile": tile})) == key()
    for where in ("device", "host"):
        assert key(params=PARAMS.model_copy(update={"lbfgs_history_on": where})) == key()


def test_auto_scales_are_the_default_and_keep_the_keys_of_one_scale_up_to_512_px():
    assert StyleParams().scales == "auto"
    for size in (64, 512):
        single = StyleParams(size=size, iterations=5, scales=None)
        assert key(params=StyleParams(size=size, iterations=5)) == key(params=single)
        assert key(params=single.model_copy(update={"scales": ()})) == key(params=single)
    # Above 512 px auto runs coarse to fine: another output, another key.
    large = StyleParams(size=1024, iterations=5)
    assert large.schedule() == [512, 1024]
    assert key(params=large) != key(params=large.model_copy(update={"scales": None}))
    assert key(params=large) == key(params=large.model_copy(update={"scales": (512,)}))
