"""Running one work unit without Prefect: isolation, out-of-memory splitting, write order."""

from dataclasses import replace

import pytest
import torch
from imagegen import is_done, job_for, png_bytes, scene, stripes

from nst_core.batch import jobs, records, runner, storage
from nst_core.engine.params import StyleParams

PARAMS = StyleParams(size=40, iterations=3, device="cpu", precision="fp32")


def make_jobs(tmp_path, contents) -> list[jobs.Job]:
    style = tmp_path / "style.png"
    style.write_bytes(png_bytes(stripes()))
    made = []
    for name, data in contents.items():
        path = tmp_path / name
        path.write_bytes(data)
        made.append(
            job_for(
                str(path),
                ((str(style), 1.0),),
                PARAMS,
                output_dir=str(tmp_path / "out"),
                fmt="png",
            )
        )
    return made


def test_a_job_the_engine_rejects_fails_alone(tmp_path):
    unit = make_jobs(
        tmp_path,
        {
            "a.png": png_bytes(scene(seed=1)),
            "thin.png": png_bytes(scene(400, 4)),  # 40x1 at size 40: too small for relu5_1
            "b.png": png_bytes(scene(seed=2)),
        },
    )
    outcomes = runner.run_unit(unit, "cpu")
    assert [o.status for o in outcomes] == ["completed", "failed", "completed"]
    assert "too small for layer relu5_1" in outcomes[1].error
    assert records.read_record(unit[1].record).status == "failed"
    assert all(is_done(j) for j in (unit[0], unit[2]))


def test_out_of_memory_splits_the_unit_until_it_fits(tmp_path, monkeypatch):
    unit = make_jobs(tmp_path, {f"{i}.png": png_bytes(scene(seed=i)) for i in range(4)})
    real = runner.stylize_pairs
    sizes = []

    def small_device(pairs, **kwargs):
        sizes.append(len(pairs))
        if len(pairs) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(pairs, **kwargs)

    monkeypatch.setattr(runner, "stylize_pairs", small_device)
    outcomes = runner.run_unit(unit, "cpu")
    assert [o.status for o in outcomes] == ["completed"] * 4
    assert sizes == [4, 2, 1, 1, 2, 1, 1]
    assert all(records.read_record(j.record).batch_size == 1 for j in unit)


def test_out_of_memory_for_a_single_job_fails_it_with_the_reason(tmp_path, monkeypatch):
    unit = make_jobs(tmp_path, {"a.png": png_bytes(scene())})

    def no_memory(pairs, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(runner, "stylize_pairs", no_memory)
    (outcome,) = runner.run_unit(unit, "cpu")
    assert outcome.status == "failed" and "out of memory" in outcome.error


def test_the_image_is_written_before_its_record(tmp_path, monkeypatch):
    unit = make_jobs(tmp_path, {"a.png": png_bytes(scene())})
    order = []
    real = storage.write_bytes

    def spy(uri, data, content_type=None):
        if "/_runs/_thumbs/" not in uri:  # the gallery's thumbnails, made from memory
            order.append(uri.rsplit(".", 1)[1])
        real(uri, data, content_type)

    monkeypatch.setattr(storage, "write_bytes", spy)
    runner.run_unit(unit, "cpu")
    assert order == ["png", "json"]


def test_transient_storage_errors_propagate_for_a_retry(tmp_path, monkeypatch):
    unit = make_jobs(tmp_path, {"a.png": png_bytes(scene())})

    def unreachable(uri, data, content_type=None):
        raise storage.StorageError(uri, "cannot reach the S3 endpoint", transient=True)

    monkeypatch.setattr(storage, "write_bytes", unreachable)
    with pytest.raises(storage.StorageError, match="cannot reach"):
        runner.run_unit(unit, "cpu")


def test_a_retried_unit_skips_what_it_already_wrote(tmp_path):
    unit = make_jobs(tmp_path, {"a.png": png_bytes(scene()), "b.png": png_bytes(scene(seed=3))})
    runner.run_unit(unit[:1], "cpu")
    outcomes = runner.run_unit(unit, "cpu")
    assert [o.status for o in outcomes] == ["skipped", "completed"]


def test_a_job_whose_losses_leave_the_finite_numbers_fails_alone_with_no_image(
    tmp_path, monkeypatch
):
    unit = make_jobs(tmp_path, {"a.png": png_bytes(scene(seed=1)), "b.png": png_bytes(scene())})
    real = runner.stylize_pairs

    def first_diverges(pairs, **kwargs):
        results = real(pairs, **kwargs)
        final = results[0].final.model_copy(update={"total": float("inf")})
        return [replace(results[0], final=final), *results[1:]]

    monkeypatch.setattr(runner, "stylize_pairs", first_diverges)
    outcomes = runner.run_unit(unit, "cpu")
    assert [o.status for o in outcomes] == ["failed", "completed"]
    assert outcomes[0].error == (
        "the losses did not stay finite (inf); lower content_weight, style_weight or tv_weight"
    )
    assert not storage.exists(unit[0].output)  # no image without its record
    assert records.read_record(unit[0].record).status == "failed"
    assert is_done(unit[1])
