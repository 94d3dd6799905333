"""The benchmark's own arithmetic and baseline (speed itself is measured in bench/, not here)."""

import json
import sys
from pathlib import Path

import pytest
from imagegen import scene, stripes

from bench.baseline import run_baseline
from bench.common import Evaluator, loss_at, tensors, time_to_loss
from nst_core.engine.params import StyleParams

ROOT = Path(__file__).resolve().parent.parent


def test_time_to_loss_uses_the_best_loss_so_far():
    trace = [(1.0, 10.0), (2.0, 6.0), (3.0, 7.0), (4.0, 4.0)]
    assert time_to_loss(trace, 6.0) == 2.0
    assert time_to_loss(trace, 5.0) == 4.0
    assert time_to_loss(trace, 1.0) is None
    assert loss_at(trace, 3.5) == 6.0
    assert loss_at(trace, 0.5) == float("inf")


def test_baseline_spends_exactly_its_evaluations_and_lowers_the_evaluated_loss():
    params = StyleParams(size=48, device="cpu")
    content, style = scene(), stripes()
    content_t, style_t = tensors(content, style, 48)
    image, trace = run_baseline(content_t, style_t, params, evaluations=30)
    assert [evaluation for _, evaluation, _ in trace] == list(range(1, 31))
    evaluate = Evaluator(content, style, params)
    assert evaluate(image) < 0.5 * evaluate(content_t)
    assert image.min() >= 0 and image.max() <= 1


def test_gpu_benchmark_runs_every_section_end_to_end_at_toy_sizes(tmp_path, spawn):
    # The GPU script only runs on a lent machine, minutes of which are scarce: it must not
    # reach one broken. --dry-run takes every section's code path at 32 px on the CPU.
    out = tmp_path / "gpu.json"
    done = spawn.run(
        [sys.executable, "-m", "bench.gpu", str(out), "--dry-run", "--no-compile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    sections = ["describe", "ceilings", "grams_only", "baseline", "engine", "quality"]
    sections += ["convergence", "levers", "memory_model", "look", "profile", "batch_sweep"]
    sections += ["network_only", "tiled_large"]
    for name in sections:
        assert "error" not in report[name] and "skipped" not in report[name], report[name]
    # What could not run here is named, not silently left out.
    assert report["skipped_sections"] == ["cuda_graphs", "torch_compile", "compile_unit_thread"]
    assert report["engine"]["image_iterations_per_s"] > 0
    assert {"defaults", "equal_evaluations", "towards_equal_time"} <= set(report["look"])
    assert report["profile"]["categories_ms"]["convolution forward"] > 0
    # The poster section planned its toy sizes in tiles under its toy budget and ran them.
    assert report["tiled_large"]["192"]["tiling"][-1]["tiles"] > 1, report["tiled_large"]
    assert report["profile"]["top_ops"]
    assert len(report["quality"]["baseline_losses"]) == 8
    assert set(report["levers"]) >= {"default", "fp32_grams", "tf32_grams", "fp32"}


def test_the_look_metric_reads_the_photo_as_no_style_and_the_painting_as_all_style():
    from bench.look import STYLE_LAYERS, LookMetric
    from nst_core.batch import demo

    content, style = demo.town(96, 64), demo.swirls(96, 64)
    metric = LookMetric(content, style, size=64)
    photo = metric(content)
    assert all(v == pytest.approx(1.0) for v in photo.layers.values())
    assert photo.style == pytest.approx(1.0) and photo.colour == pytest.approx(1.0)
    assert photo.content == 0.0
    painting = metric(style)  # the same size as the photo here, so the Grams are the style's
    assert set(painting.layers) == set(STYLE_LAYERS)
    assert painting.style < 1e-6 and painting.colour < 1e-6 and painting.content > 0.5
