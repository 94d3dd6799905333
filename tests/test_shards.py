"""How a batch is cut into shards, and how a shard decides what is done (no server needed)."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from imagegen import completed_record

from flows import shards
from nst_core.batch import jobs, records, units
from nst_core.batch.records import Record, Timings
from nst_core.engine.params import StyleParams


def job(index: int, size: int = 64) -> jobs.Job:
    return jobs.Job(
        content_file=jobs.InputFile(f"in/c{index}.png", f"{index:064x}", pixels=(size, size)),
        style_files=(jobs.InputFile("in/s.png", "0" * 64),),
        weights=(1.0,),
        params=StyleParams(size=size),
        key=f"{index:064x}",
        output=f"out/c{index}.png",
        record=f"out/c{index}.json",
    )


@pytest.mark.parametrize("count,wanted", [(1, 2), (4, 2), (7, 3), (10, 4)])
def test_shards_are_disjoint_complete_and_balanced(count, wanted):
    pending = [job(i) for i in range(count)]
    work = units.pack_units(pending, budget_bytes=10**12)
    lists = shards.split(work, wanted)
    assert len(lists) == min(count, wanted)
    keys = [j.key for shard in lists for j in shard]
    assert sorted(keys) == sorted(j.key for j in pending)  # every job, once
    sizes = [len(shard) for shard in lists]
    assert max(sizes) - min(sizes) <= 1


def test_shards_balance_pixels_not_job_counts():
    big, small = [job(i, size=128) for i in range(2)], [job(10 + i, size=32) for i in range(8)]
    work = units.pack_units(big + small, budget_bytes=10**12)
    lists = shards.split(work, 2)
    pixels = [sum(shards._pixels(j) for j in shard) for shard in lists]
    # One 128 px job outweighs all eight 32 px ones (16384 vs 8 x 1024 px).
    assert max(pixels) <= 2 * min(pixels), pixels


def completed_at(one: jobs.Job, at: datetime, **fields) -> Record:
    return completed_record(one, created_at=at.isoformat(timespec="seconds"), **fields)


def test_a_retried_forced_shard_skips_what_its_first_attempt_finished():
    started = datetime.now(UTC)
    one = job(1)
    before = completed_at(one, started - timedelta(hours=1))
    after = completed_at(one, started + timedelta(seconds=5))
    since = started.isoformat(timespec="seconds")

    def done(job, record):
        return records.done(job, record, since=since)

    assert not done(one, before)  # older than the forced batch: recompute
    assert done(one, after)  # written by this batch's first attempt: skip
    assert not done(one, None) and not done(one, after.model_copy(update={"key": "other"}))
    assert records.done(one, before)  # without a cutoff, any completed record of it counts


def test_entries_come_from_the_records_a_shard_left(tmp_path):
    at = [replace(job(i), record=str(tmp_path / f"{i}.json")) for i in range(4)]
    done, failed, missing, stale = at
    old = Record.failed(stale, "an earlier run's error")
    (tmp_path / stale.record).write_bytes(old.to_json())
    timings = Timings(read_s=0.0, optimize_s=2.0, write_s=0.1)
    finished = completed_at(done, datetime.now(UTC), timings=timings)
    (tmp_path / done.record).write_bytes(finished.to_json())
    (tmp_path / failed.record).write_bytes(Record.failed(failed, "bad pixels").to_json())
    entries = shards.entries_after(
        [done, failed, missing, stale],
        before={stale.key: old},
        unfinished={missing.key: "its shard ended crashed"},
    )
    by_key = {e.key: e for e in entries}
    assert by_key[done.key].status == "completed" and by_key[done.key].seconds == 2.0
    assert by_key[failed.key].status == "failed" and by_key[failed.key].error == "bad pixels"
    assert by_key[missing.key].error == "not run: its shard ended crashed"
    # An old failed record is not this run's outcome.
    assert by_key[stale.key].error == "not run: its shard completed without it"
