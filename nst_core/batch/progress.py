"""Where a work unit stands while it runs, and when to pass that on.

The runner reports a unit's progress at every evaluation of the pairs it is stylising and at
every job it finishes (`UnitTracker`); whoever shows it (the flow's progress artifact, a
terminal, a log) decides how often it is worth showing (`Throttle`): an API call or a log
line per evaluation would be thousands per unit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from nst_core.engine.trace import LossValues


@dataclass(frozen=True)
class UnitProgress:
    """A unit at one moment: its jobs, and the evaluations of those being stylised now."""

    jobs: int  # in the unit
    finished: int = 0  # completed, failed, skipped or left to another run
    running: int = 0  # being stylised together now (0 between two batches)
    evaluations: int = 0  # evaluations done of the running jobs' budget
    budget: int = 0  # that budget (0 until the engine's first report)
    losses: tuple[LossValues | None, ...] = ()  # the running pairs' latest, at the cadence

    @property
    def jobs_done(self) -> float:
        """Jobs finished, plus the running ones' share of their budget spent."""
        spent = self.evaluations / self.budget if self.budget else 0.0
        return min(self.finished + self.running * spent, float(self.jobs))


UnitReport = Callable[[UnitProgress], None]


class UnitTracker:
    """A unit's progress as its runner sees it; every change goes to `report`."""

    def __init__(self, jobs: int, report: UnitReport) -> None:
        self.report = report
        self.now = UnitProgress(jobs)

    def _set(self, now: UnitProgress) -> None:
        self.now = now
        self.report(now)

    def stylising(self, jobs: int) -> None:
        """`jobs` of the unit start their optimisation together."""
        self._set(replace(self.now, running=jobs, evaluations=0, budget=0, losses=()))

    def evaluated(self, done: int, total: int, losses: list[LossValues | None]) -> None:
        """The engine's progress callback (nst_core/engine/progress.py)."""
        self._set(replace(self.now, evaluations=done, budget=total, losses=tuple(losses)))

    def gave_up(self) -> None:
        """The running jobs stopped short (out of memory: they are split and run again)."""
        self._set(replace(self.now, running=0, evaluations=0, budget=0, losses=()))

    def job_finished(self) -> None:
        now = self.now
        self._set(replace(now, finished=now.finished + 1, running=max(now.running - 1, 0)))


class Throttle:
    """Whether progress is worth passing on now: at once when more jobs finished than last
    time (with `per_job`), else when it moved and `every_s` passed since the last time
    (counted from the first report with `first_at_once`, else from when the throttle was
    made), or when it moved and the caller says `at_once`."""

    def __init__(
        self,
        every_s: float,
        *,
        per_job: bool = True,
        first_at_once: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every_s = every_s
        self.per_job = per_job
        self.clock = clock
        self.last: float | None = None if first_at_once else clock()
        self.finished = 0
        self.value = 0.0

    def due(self, finished: int, value: float, *, at_once: bool = False) -> bool:
        now = self.clock()
        moved = value > self.value or finished > self.finished
        job_done = self.per_job and finished > self.finished
        waited = at_once or self.last is None or now - self.last >= self.every_s
        if not (job_done or (moved and waited)):
            return False
        self.last, self.finished, self.value = now, finished, max(value, self.value)
        return True
