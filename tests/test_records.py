"""The typed record and summary: records on disk from earlier versions stay readable and are
written back byte for byte, and done-ness is read through them."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
from imagegen import completed_record, is_done, job_for

from nst_core.batch import jobs, records
from nst_core.batch.records import JobEntry, Record, Summary, Timings
from nst_core.engine.params import StyleParams
from nst_core.engine.trace import HistoryRow, LossValues

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["record-completed-v0.json", "record-failed-v0.json"])
def test_records_written_before_the_typed_models_read_and_write_back_unchanged(name, tmp_path):
    # Written by the code before this module existed (jobs.build_record / failed_record).
    original = (DATA / name).read_bytes()
    (tmp_path / name).write_bytes(original)
    record = records.read_record(str(tmp_path / name))
    assert record is not None
    assert record.status == json.loads(original)["status"]
    assert record.to_json() == original


def test_the_old_completed_record_gives_its_losses_and_inputs():
    record = records.read_record(str(DATA / "record-completed-v0.json"))
    assert record.losses.final.total == pytest.approx(2320773.75)
    assert record.inputs.styles[0].weight == 1.0
    assert record.losses.history[0].evaluation == 10  # ints stay ints
    assert isinstance(record.losses.history[0].evaluation, int)


def job(tmp_path) -> jobs.Job:
    return job_for(
        str(tmp_path / "c.png"),
        ((str(tmp_path / "s.png"), 1.0),),
        StyleParams(size=64),
        output_dir=str(tmp_path / "out"),
        fmt="png",
        sha_of=lambda uri: "0" * 64,
    )


def test_done_means_a_completed_record_with_the_same_key(tmp_path):
    one = job(tmp_path)
    assert not is_done(one)
    (tmp_path / "out").mkdir()
    path = Path(one.record)
    path.write_bytes(Record.failed(one, "bad pixels").to_json())
    assert not is_done(one)
    path.write_bytes(completed_record(one, key="other").to_json())
    assert not is_done(one)
    path.write_text("{truncated")
    assert not is_done(one)
    path.write_text(json.dumps({"status": "completed", "key": one.key}))  # not a record
    assert not is_done(one)
    path.write_bytes(completed_record(one).to_json())
    assert is_done(one)


def test_a_summary_leaves_histories_and_its_run_folder_out_of_its_json(tmp_path):
    one = job(tmp_path)
    entry = JobEntry.of(one, "failed", error="bad pixels")
    entry.history = [
        HistoryRow(evaluation=1, scale=32, seconds=0.1, total=2.0, content=1.0, style=1.0, tv=0.0)
    ]
    summary = Summary.of("run-1", "m.yaml", [entry, JobEntry.of(one, "skipped")], 3.0)
    summary.run_folder = "out/_runs/run-1"
    written = json.loads(Summary.of("run-1", "m.yaml", [entry], 3.0).to_json())
    assert "history" not in written["jobs"][0] and "run_folder" not in written
    assert written["jobs"][0]["error"] == "bad pixels" and written["jobs"][0]["losses"] is None
    assert summary.totals.line() == "0 completed, 1 failed, 1 skipped"
    assert summary.totals.images_per_hour == 0.0


def test_a_record_keeps_strength_and_style_weight_and_says_which_won(tmp_path):
    from PIL import Image

    from nst_core.engine.loop import Result

    one = job(tmp_path)
    final = LossValues(total=1.0, content=0.5, style=0.5, tv=0.0)
    result = Result(Image.new("RGB", (4, 3)), [], final, 0.1, 40, [], 1, "cpu", "fp32")
    timings = Timings(read_s=0.0, optimize_s=0.1, write_s=0.0)

    def made_with(params: StyleParams) -> dict:
        record = Record.completed(replace(one, params=params), result=result, timings=timings)
        return json.loads(record.to_json())

    expert = made_with(StyleParams(strength=0.3, style_weight=80))
    assert expert["params"]["strength"] == 0.3 and expert["params"]["style_weight"] == 80
    assert expert["notes"] == ["style_weight 80 was given, so strength is ignored"]
    assert "notes" not in made_with(StyleParams(strength=0.3))
