"""The per-pair stopping rule: a pair stops at a scale once its best loss so far has improved
by less than `stop_tolerance` (a fraction) over its last `stop_window` evaluations there.

Each pair is judged on its own losses alone, so whether it stops, and when, does not depend
on the pairs that share its batch. A tolerance of 0 never stops a pair early.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from nst_core.engine.params import StyleParams


class Stopping:
    """The rule for the pairs of one batch at one scale."""

    def __init__(self, params: Sequence[StyleParams]) -> None:
        self.tolerance = [p.stop_tolerance for p in params]
        self.window = [p.stop_window for p in params]
        # Per pair, its best loss after each of its evaluations at this scale.
        self.best: list[list[float]] = [[] for _ in params]

    @property
    def enabled(self) -> bool:
        return any(t > 0 for t in self.tolerance)

    def update(self, rows: Sequence[int], losses: Sequence[float]) -> list[int]:
        """Take one evaluation's loss for each pair in `rows`; the pairs that stop now."""
        stopped = []
        for b, loss in zip(rows, losses, strict=True):
            trail = self.best[b]
            loss = loss if math.isfinite(loss) else math.inf
            trail.append(min(loss, trail[-1]) if trail else loss)
            window = self.window[b]
            if self.tolerance[b] > 0 and len(trail) > window:
                before, now = trail[-1 - window], trail[-1]
                if math.isfinite(before) and before - now < self.tolerance[b] * abs(before):
                    stopped.append(b)
        return stopped
