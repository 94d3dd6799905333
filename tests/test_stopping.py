import math

from nst_core.engine.params import StyleParams
from nst_core.engine.stopping import Stopping


def rule(tolerance: float, window: int) -> Stopping:
    return Stopping([StyleParams(stop_tolerance=tolerance, stop_window=window)])


def feed(stopping: Stopping, losses) -> int | None:
    """The evaluation (1-based) at which the pair stops, or None."""
    for k, loss in enumerate(losses, start=1):
        if stopping.update([0], [loss]):
            return k
    return None


def test_stops_once_the_best_loss_moved_less_than_the_tolerance_over_the_window():
    losses = [100, 50, 40, 39.9, 39.8, 39.7]
    # over 2 evaluations: 50 -> 39.9 is 20%; 40 -> 39.8 is 0.5%, under 1%
    assert feed(rule(0.01, 2), losses) == 5
    assert feed(rule(0.001, 2), losses) is None


def test_judges_the_best_loss_so_far_not_the_latest():
    # a line search's worse trial points do not count as lack of progress, nor as progress
    losses = [100, 80, 300, 60, 500, 40]
    assert feed(rule(0.1, 2), losses) is None
    assert feed(rule(0.1, 2), [100, 90, 200, 200, 200]) == 4


def test_zero_tolerance_never_stops_and_non_finite_losses_never_stop_a_pair():
    assert feed(rule(0.0, 1), [5.0] * 50) is None
    assert not rule(0.0, 1).enabled
    assert feed(rule(0.5, 2), [math.inf, math.nan, math.inf, 1.0]) is None


def test_each_pair_is_judged_alone():
    stopping = Stopping(
        [StyleParams(stop_tolerance=0.5, stop_window=1), StyleParams(stop_tolerance=0.0)]
    )
    assert stopping.update([0, 1], [10.0, 10.0]) == []
    assert stopping.update([0, 1], [9.0, 9.0]) == [0]
    assert stopping.update([1], [8.0]) == []
