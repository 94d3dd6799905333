"""Tiled evaluation: the whole image's objective and gradient, tile by tile."""

import pytest
import torch
import yaml
from imagegen import TINY_MANIFEST, job_records, write_batch

from nst_core.batch import demo, jobs, units
from nst_core.engine import images
from nst_core.engine.layers import reach
from nst_core.engine.loop import _Scales, network_for, stylize
from nst_core.engine.losses import gram
from nst_core.engine.objective import Features
from nst_core.engine.params import StyleParams
from nst_core.engine.steppers import LBFGSSteps
from nst_core.engine.targets import GramCache, Pair, Targets
from nst_core.engine.tiling import TiledObjective, Tiling, tiled_features, tiled_grams

# Shallow layers keep the receptive field (13 px) small enough for several tiles at 96 px.
SHALLOW = {"content_layers": ("relu3_1",), "style_layers": ("relu1_1", "relu2_1", "relu3_1")}
LAYERS = ("relu3_1", "relu1_1", "relu2_1")


@pytest.mark.parametrize("height, width", [(80, 96), (97, 33), (16, 16)])
def test_tiles_partition_the_image_on_the_deepest_stride(height, width):
    tiling = Tiling.for_layers(24, LAYERS)
    assert tiling.align == 4 and tiling.size == 24 and tiling.halo == 16 >= reach(LAYERS)
    covered = torch.zeros(height, width, dtype=torch.int)
    for tile in tiling.tiles(height, width):
        y0, y1, x0, x1 = tile.own
        cy0, cy1, cx0, cx1 = tile.crop
        covered[y0:y1, x0:x1] += 1
        assert y0 % 4 == 0 and x0 % 4 == 0 and cy0 % 4 == 0 and cx0 % 4 == 0
        assert cy0 == max(0, y0 - 16) and cy1 == min(height, y1 + 16)
        assert cx0 == max(0, x0 - 16) and cx1 == min(width, x1 + 16)
    assert (covered == 1).all()


@pytest.fixture(scope="module")
def scene():
    """An objective at 96x80 with a point off the content, and its untiled evaluation."""
    torch.manual_seed(0)
    params = StyleParams(size=96, device="cpu", precision="fp32", **SHALLOW)
    pair = Pair(demo.town(96, 80), [demo.swirls(64, 64)], params)
    features = Features(network_for(params, "cpu"), torch.device("cpu"), "fp32")
    targets = Targets([pair], torch.device("cpu"), features, GramCache(), gram, ("test",))
    objective, content = _Scales(targets, LBFGSSteps, None, 1).objective((96, 80))
    point = (content + 0.1 * torch.randn_like(content)).clamp(0, 1)
    return features, objective, content, point, objective.evaluate(point)


def test_with_a_full_halo_the_tiled_objective_and_gradient_are_the_untiled_ones(scene):
    features, objective, content, point, (total, parts, grad) = scene
    tiling = Tiling.for_layers(24, LAYERS)
    assert len(tiling.tiles(80, 96)) == 16
    tiled_total, tiled_parts, tiled_grad = TiledObjective(objective, tiling).evaluate(point)
    assert torch.allclose(tiled_parts, parts, rtol=1e-5)
    assert torch.allclose(tiled_total, total, rtol=1e-5)
    assert ((tiled_grad - grad).norm() / grad.norm()).item() < 1e-5
    # The targets assembled from tiles are the whole image's too.
    whole = objective.content_targets["relu3_1"]
    assembled = tiled_features(features, content, ("relu3_1",), tiling)["relu3_1"]
    assert ((assembled - whole).abs().max() / whole.abs().max()).item() < 1e-5
    with torch.no_grad():
        untiled = features(point)
    for name, tiled in tiled_grams(features, point, SHALLOW["style_layers"], tiling).items():
        expected = gram(untiled[name])
        assert ((tiled - expected).norm() / expected.norm()).item() < 1e-5


def test_without_the_halo_tiles_only_approximate_the_gradient(scene):
    _, objective, _, point, (_, _, grad) = scene
    tiled = TiledObjective(objective, Tiling.for_layers(24, LAYERS, halo=0))
    _, _, tiled_grad = tiled.evaluate(point)
    assert ((tiled_grad - grad).norm() / grad.norm()).item() > 0.05


def test_a_tiled_run_follows_the_untiled_one_and_says_how_each_scale_ran():
    settings = dict(size=96, iterations=12, device="cpu", precision="fp32", scales=(32,))
    pair = Pair(demo.town(96, 80), [demo.swirls(64, 64)], StyleParams(**settings, **SHALLOW))
    untiled = stylize(pair)
    tiled = stylize(Pair(pair.content, pair.styles, pair.params.model_copy(update={"tile": 32})))
    assert untiled.tiling == [{"scale": 32}, {"scale": 96}]
    assert tiled.tiling == [{"scale": 32}, {"scale": 96, "tile": 32, "halo": 16, "tiles": 9}]
    difference = images.to_tensor(tiled.image) - images.to_tensor(untiled.image)
    assert difference.abs().mean().item() < 0.01
    assert tiled.final["total"] == pytest.approx(untiled.final["total"], rel=0.02)


def big_job(**params) -> jobs.Job:
    settings = StyleParams(size=2048, **params)
    return jobs.Job(
        content="photo.jpg",
        content_sha="a" * 64,
        styles=(("painting.jpg", 1.0),),
        style_shas=("b" * 64,),
        params=settings,
        key="k" * 64,
        output="out.png",
        record="out.json",
        content_size=(4000, 3000),
    )


def test_the_planner_runs_a_job_too_large_whole_in_the_largest_tiles_that_fit():
    budget = 4 * 2**30
    job = big_job()
    assert units.job_bytes(job) > budget
    (planned,), unfit = units.split_unfit([job], budget)
    assert unfit == []
    assert planned.key == job.key and planned.params.tile == 512
    assert units.job_bytes(planned) <= budget
    larger = planned.params.model_copy(update={"tile": 1024})
    assert units.tiled_bytes(2048, 1536, larger, 1024) > budget
    # Forbidden to tile, or too large even in the smallest tiles: it fails alone, saying so.
    ((_, need),) = units.split_unfit([big_job(tile="off")], budget)[1]
    assert units.unfit_reason(big_job(tile="off"), need, budget).endswith(
        "lower size or style_scale, or let it run in tiles (tile: auto)"
    )
    ((_, need),) = units.split_unfit([job], 2**30)[1]
    assert "even alone and in tiles" in units.unfit_reason(job, need, 2**30)


def test_a_batch_job_that_does_not_fit_whole_runs_in_tiles_and_its_record_says_so(
    tmp_path, prefect_server, monkeypatch
):
    from flows.batch import stylize_batch

    doc = yaml.safe_load(TINY_MANIFEST)
    doc["defaults"] |= {"size": 96, **{k: list(v) for k, v in SHALLOW.items()}}
    doc["pairs"] = [{"content": "photos/a.png", "style": "paintings/s1.png"}]
    del doc["contents"], doc["styles"]
    uri = write_batch(str(tmp_path), yaml.safe_dump(doc))
    params = StyleParams(size=96, **SHALLOW)
    whole = units.estimate_bytes(96, 72, params)
    tiled = units.tiled_bytes(96, 72, params, 32)
    assert tiled < whole
    monkeypatch.setenv("NST_MEMORY_BUDGET_GB", str((tiled + whole) / 2 / 2**30))
    state = stylize_batch(uri, return_state=True)
    assert state.is_completed()
    (record,) = job_records(str(tmp_path)).values()
    assert record["status"] == "completed" and record["params"]["tile"] == 32
    assert record["tiling"] == [{"scale": 96, "tile": 32, "halo": 16, "tiles": 9}]


def test_auto_scales_double_from_512_px_up_to_size():
    assert StyleParams(size=4096, scales="auto").schedule() == [512, 1024, 2048, 4096]
    assert StyleParams(size=1500, scales="auto").schedule() == [512, 1024, 1500]
    assert StyleParams(size=400, scales="auto").schedule() == [400]
