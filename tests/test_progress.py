"""Progress while work runs: the engine's count at every evaluation, a unit's progress through
the runner, the throttles that keep the artifact and the log lines from flooding (on a fake
clock: updates are counted, not timed), and `nst run`'s display."""

import io
import logging
import math

import pytest
from imagegen import png_bytes, scene, stripes
from rich.console import Console

from flows import progress
from nst_cli import batch_progress, stylize_job
from nst_core.batch import runner
from nst_core.batch.progress import Throttle, UnitProgress, UnitTracker
from nst_core.engine.loop import stylize
from nst_core.engine.params import StyleParams
from nst_core.engine.targets import Pair


def test_the_engine_reports_every_evaluation_and_losses_at_the_history_cadence():
    calls = []
    params = StyleParams(
        size=48,
        scales=None,  # one scale: 12 evaluations
        iterations=12,
        history_every=5,
        stop_tolerance=0,
        device="cpu",
        precision="fp32",
    )
    stylize(Pair(scene(), [stripes()], params), progress=lambda *args: calls.append(args))
    assert [done for done, _, _ in calls] == list(range(1, 13))  # from the first evaluation
    assert {total for _, total, _ in calls} == {12}
    losses = [latest[0] for _, _, latest in calls]
    assert losses[:4] == [None] * 4  # nothing read off the device before the cadence
    assert all(row is not None and math.isfinite(row.total) for row in losses[4:])
    # Read again only at evaluations 10 and 12 (the last): unchanged in between.
    assert losses[4] == losses[8] and losses[9] == losses[10] != losses[8]
    assert losses[11] != losses[10]


def test_the_count_reaches_the_total_when_the_stopping_rule_ends_a_scale_early():
    calls = []
    params = StyleParams(
        size=48,
        scales=(24,),
        iterations=40,
        stop_tolerance=0.5,  # stops after the first window: far below the budget
        stop_window=3,
        device="cpu",
        precision="fp32",
    )
    stylize(Pair(scene(), [stripes()], params), progress=lambda *args: calls.append(args))
    done = [d for d, _, _ in calls]
    assert done[0] == 1 and done == sorted(set(done))  # from the first, only ever up
    assert done[-1] == 80 and len(done) < 80  # the scales stopped early, yet it ends at 80


def unit_jobs(tmp_path, names):
    from imagegen import job_for

    style = tmp_path / "style.png"
    style.write_bytes(png_bytes(stripes()))
    made = []
    for seed, name in enumerate(names):
        path = tmp_path / name
        path.write_bytes(png_bytes(scene(seed=seed)))
        params = StyleParams(size=40, iterations=3, scales=None, device="cpu", precision="fp32")
        made.append(job_for(str(path), ((str(style), 1.0),), params, output_dir=str(tmp_path)))
    return made


def test_a_unit_reports_its_evaluations_and_each_job_it_finishes(tmp_path):
    seen: list[UnitProgress] = []
    unit = unit_jobs(tmp_path, ["a.png", "b.png"])
    options = runner.UnitOptions(progress=seen.append)
    outcomes = runner.run_unit(unit, "cpu", options=options)
    assert [o.status for o in outcomes] == ["completed", "completed"]
    assert seen[0] == UnitProgress(jobs=2, running=2)  # both start together
    assert [(p.evaluations, p.budget) for p in seen[1:4]] == [(1, 3), (2, 3), (3, 3)]
    assert [(p.finished, p.running) for p in seen[4:]] == [(1, 1), (2, 0)]
    done = [p.jobs_done for p in seen]
    assert done == sorted(done) and done[-1] == 2


def test_a_split_unit_counts_each_job_once(tmp_path, monkeypatch):
    seen: list[UnitProgress] = []
    real = runner.stylize_pairs

    def one_pair_fits(pairs, **kwargs):
        if len(pairs) > 1:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory (injected)")
        return real(pairs, **kwargs)

    monkeypatch.setattr(runner, "stylize_pairs", one_pair_fits)
    unit = unit_jobs(tmp_path, ["a.png", "b.png"])
    runner.run_unit(unit, "cpu", options=runner.UnitOptions(progress=seen.append))
    assert seen[1] == UnitProgress(jobs=2)  # gave up on the pair: nothing running
    assert seen[-1].finished == 2 and seen[-1].jobs_done == 2
    assert max(p.finished + p.running for p in seen) == 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(tally: progress.Tally, clock: FakeClock, units, seconds_per_eval: float):
    """Run `units` (each: its jobs, evaluations per job batch) one after another on the fake
    clock, reporting as the runner does."""
    for index, (jobs, evaluations) in enumerate(units):
        label = f"unit {index + 1}"
        tracker = UnitTracker(jobs, lambda p, label=label: tally.unit(label, p))
        tracker.stylising(jobs)
        for done in range(1, evaluations + 1):
            clock.now += seconds_per_eval
            tracker.evaluated(done, evaluations, [None] * jobs)
        for _ in range(jobs):
            clock.now += 0.05  # writing the image and its record
            tracker.job_finished()
        tally.unit_returned(label, jobs)


@pytest.mark.parametrize(
    "units, seconds_per_eval",
    [
        ([(4, 400)], 0.6),  # the demo: one unit of 4 jobs, 4 minutes of work
        ([(1, 200)] * 5, 0.2),  # one job per unit, 40 s each
        ([(2, 30)] * 6, 0.1),  # short units: jobs finish every 3 s
    ],
)
def test_the_artifact_moves_per_job_and_every_30_s_of_work_and_no_more(units, seconds_per_eval):
    clock = FakeClock()
    published: list[tuple[float, float, int]] = []  # (time, percent, jobs finished)
    tally = progress.Tally(
        sum(jobs for jobs, _ in units),
        lambda value: published.append((clock.now, value, tally.shown.finished)),
        clock=clock,
    )
    simulate(tally, clock, units, seconds_per_eval)
    jobs = sum(j for j, _ in units)
    work_s = clock.now
    times = [0.0] + [t for t, _, _ in published]
    assert (
        max(b - a for a, b in zip(times, times[1:], strict=False)) <= 30
    )  # never 30 s without one
    # Each job finished is published as it finishes.
    assert sorted({f for _, _, f in published} - {0}) == list(range(1, jobs + 1))
    values = [v for _, v, _ in published]
    assert values == sorted(values) and values[-1] == 100
    # No more than needed: one per job, plus one per PUBLISH_EVERY_S of work.
    assert len(published) <= jobs + work_s / progress.PUBLISH_EVERY_S + 1


def test_the_throttle_waits_for_movement_and_time():
    clock = FakeClock()
    throttle = Throttle(15, clock=clock)
    assert not throttle.due(0, 0.0)
    clock.now = 20
    assert not throttle.due(0, 0.0)  # nothing moved
    assert throttle.due(0, 0.1)
    clock.now = 21
    assert not throttle.due(0, 0.2)  # moved, too soon
    assert throttle.due(1, 0.2)  # a job finished: at once
    assert throttle.due(1, 0.3, at_once=True)
    lines = Throttle(15, per_job=False, first_at_once=True, clock=clock)
    assert lines.due(0, 0.01)  # the first report, at once
    assert not lines.due(1, 1.0)  # a job, but no line per job


def test_plain_lines_start_at_the_first_evaluation_and_keep_coming_but_not_too_often():
    clock = FakeClock()
    lines: list[tuple[float, str]] = []
    display = batch_progress.Lines(lambda line: lines.append((clock.now, line)), clock=clock)
    tally = progress.Tally(8, lambda value: None, display, clock=clock)
    simulate(tally, clock, [(4, 300), (4, 300)], seconds_per_eval=0.5)
    assert lines[0][0] == 0.5  # the first evaluation
    assert lines[0][1] == "progress: 0/8 jobs done (0%); unit 1: 1/300 evaluations"
    times = [t for t, _ in lines]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= batch_progress.LINE_EVERY_S and max(gaps) <= 30
    assert lines[-1][0] >= clock.now - 30  # not silent at the end either


def test_bars_show_units_and_print_log_lines_above_them():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    bars = batch_progress.Bars(console)
    log_console = Console(file=io.StringIO(), force_terminal=True)
    handler = logging.StreamHandler()
    handler.console = log_console  # as Prefect's console handler holds one
    logger = logging.getLogger("test-progress-bars")
    logger.addHandler(handler)
    try:
        bars.show(
            progress.BatchView(4, 1, 2.5, {"unit 1/2: [b]a.png": UnitProgress(4, 1, 3, 50, 100)})
        )
        assert handler.console is not log_console
        handler.console.print("a log line")
        assert not log_console.file.getvalue()  # printed through the bars' console
        assert "a log line" in out.getvalue()
        task = bars.bars.tasks[1]
        assert (task.description, task.completed, task.total) == ("unit 1/2: [b]a.png", 50, 100)
        bars.bars.refresh()
        assert "unit 1/2: [b]a.png" in out.getvalue()  # a name, not markup
        assert "50/100 evals of 3 jobs" in out.getvalue()
        bars.show(progress.BatchView(4, 4, 4.0, {}))
        assert len(bars.bars.tasks) == 1  # the unit returned: its bar is gone
    finally:
        bars.close()
        logger.removeHandler(handler)
    assert handler.console is log_console


def test_stylize_bar_counts_from_the_first_evaluation(tmp_path, monkeypatch):
    counts = []
    real = stylize_job.bar_progress

    def spied(bar, task):
        show = real(bar, task)

        def both(progress):
            show(progress)
            counts.append(bar.tasks[0].completed)

        return both

    monkeypatch.setattr(stylize_job, "bar_progress", spied)
    (job,) = unit_jobs(tmp_path, ["a.png"])
    stylize_job.stylize_file(job, runner.UnitOptions().settings)
    assert counts[:4] == [0, 1, 2, 3]  # before the engine's first report, then each one
