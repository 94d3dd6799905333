"""What the loop tells its caller while it runs: the evaluations done, at every evaluation,
and each pair's latest losses, at the history cadence.

The count is a host-side integer, so it costs nothing to report every time. The losses are
on the device, and reading them waits for the device to finish its queued work (on a GPU, a
sync that stalls the pipeline), so they are read only where the history reads them anyway
(`history_every`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from nst_core.engine.trace import LossValues

# Progress callback: (evaluations done, evaluations in all, each pair's losses at its latest
# record: None for a pair that has none yet). Called from the first evaluation on, with a
# count that only grows; it reaches the total when the run ends, since a scale that stops
# early has still used up its part of the budget.
Progress = Callable[[int, int, list[LossValues | None]], None]


def losses_by_pair(values: torch.Tensor) -> list[LossValues]:
    """(4, B) losses, in LOSS_NAMES order -> each pair's."""
    return [LossValues.of(values[:, b].tolist()) for b in range(values.shape[1])]


class Reporter:
    """Calls `progress` (when there is one) as the loop evaluates."""

    def __init__(self, progress: Progress | None, pairs: int, total: int) -> None:
        self.progress = progress
        self.total = total
        self.latest: list[LossValues | None] = [None] * pairs
        self.reported = 0

    def losses(self, row: torch.Tensor, rows: list[int]) -> None:
        """The (4, rows) losses of the pairs optimising now, kept for the next report."""
        if self.progress is None:
            return  # nobody asked: nothing leaves the device for this
        for b, losses in zip(rows, losses_by_pair(row.cpu()), strict=True):
            self.latest[b] = losses

    def evaluated(self, done: int) -> None:
        """`done` evaluations of the budget are behind us."""
        if self.progress is None or done <= self.reported:
            return
        self.reported = done
        self.progress(done, self.total, list(self.latest))
