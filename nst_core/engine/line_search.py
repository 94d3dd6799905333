"""The strong-Wolfe line search of one sample, as a generator: it yields the next step to
try and is sent (loss, directional derivative) there, so a batch of samples can each run
their own search while their evaluations stay one batched call (optim.py)."""

from __future__ import annotations

import math
from collections.abc import Generator

LineSearch = Generator[float, tuple[float, float], None]


def _cubic_minimum(
    x1: float, f1: float, g1: float, x2: float, f2: float, g2: float, low: float, high: float
) -> float:
    """Minimiser of the cubic through two points with slopes, clipped to [low, high]."""
    if not all(math.isfinite(v) for v in (f1, g1, f2, g2)) or x1 == x2:
        return (low + high) / 2
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 * d1 - g1 * g2
    if d2_square < 0:
        return (low + high) / 2
    d2 = math.sqrt(d2_square)
    if x1 <= x2:
        t = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        t = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    if not math.isfinite(t):
        return (low + high) / 2
    return min(max(t, low), high)


def strong_wolfe(
    f0: float,
    gtd0: float,
    t: float,
    *,
    c1: float = 1e-4,
    c2: float = 0.9,
    max_evals: int = 25,
    tolerance: float = 1e-9,
) -> LineSearch:
    """Line search for one sample (Nocedal & Wright, algorithms 3.5 and 3.6).

    Yields trial steps, receives (loss, directional derivative) at each, and stops when
    the strong Wolfe conditions hold or its budget is spent. The caller keeps the lowest
    loss that satisfied sufficient decrease; that is the point this search accepts in
    every case, so the generator needs to return nothing.
    """
    t_prev, f_prev, g_prev = 0.0, f0, gtd0
    evals = 0
    while True:  # bracketing: grow the step until the minimum is bracketed
        f, g = yield t
        evals += 1
        if not math.isfinite(f) or f > f0 + c1 * t * gtd0 or (evals > 1 and f >= f_prev):
            low, high = (t_prev, f_prev, g_prev), (t, f, g)
            break
        if abs(g) <= -c2 * gtd0 or evals >= max_evals:
            return
        if g >= 0:
            low, high = (t, f, g), (t_prev, f_prev, g_prev)
            break
        t_next = _cubic_minimum(t_prev, f_prev, g_prev, t, f, g, t + 0.01 * (t - t_prev), 10 * t)
        t_prev, f_prev, g_prev, t = t, f, g, t_next
    while evals < max_evals:  # zoom: shrink the bracket around the minimum
        (t_lo, f_lo, g_lo), (t_hi, f_hi, g_hi) = low, high
        if abs(t_hi - t_lo) < tolerance:
            return
        a, b = min(t_lo, t_hi), max(t_lo, t_hi)
        t = _cubic_minimum(t_lo, f_lo, g_lo, t_hi, f_hi, g_hi, a + 0.1 * (b - a), b - 0.1 * (b - a))
        f, g = yield t
        evals += 1
        if not math.isfinite(f) or f > f0 + c1 * t * gtd0 or f >= f_lo:
            high = (t, f, g)
        else:
            if abs(g) <= -c2 * gtd0:
                return
            if g * (t_hi - t_lo) >= 0:
                high = low
            low = (t, f, g)
