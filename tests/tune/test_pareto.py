"""The Pareto front and the choice of `deltadit tune` on hand-made results."""

from deltadit.plan import build_plan
from deltadit.tune.pareto import Result, best_within, front, table
from deltadit.tune.score import Score
from deltadit.tune.space import Candidate


def result(ratio, psnr, acc=None, steps=10, latency=None):
    plan = build_plan(steps, 12, 6, 0, 2, "deep")
    return Result(Candidate(plan, False, int(ratio * 1000), ratio), Score(psnr, 0.9, acc, 0.0), latency_s=latency)


def test_front_keeps_only_undominated_points_cheapest_first():
    a, b, c, d = result(0.3, 20), result(0.5, 30), result(0.6, 25), result(0.8, 35)
    same_cost_worse = result(0.5, 28)
    assert front([d, c, b, a, same_cost_worse]) == [a, b, d]  # c: b is cheaper and better


def test_best_within_takes_the_cheapest_meeting_every_target():
    rs = [result(0.3, 25), result(0.4, 31, acc=0.5), result(0.5, 32, acc=0.9), result(0.7, 40, acc=0.9)]
    assert best_within(rs, 30) is rs[1]
    assert best_within(rs, 30, min_accuracy=0.8) is rs[2]
    assert best_within(rs, 50) is None
    timed = [result(0.4, 31, latency=2.0), result(0.5, 33, latency=1.5)]
    assert best_within(timed, 30, cost=lambda r: r.latency_s) is timed[1]


def test_table_marks_the_front():
    rs = [result(0.3, 20), result(0.6, 18)]
    rows = [line for line in table(rs, "t").splitlines() if line.startswith("| T=")]
    assert rows[0].endswith("| ● |") and rows[1].endswith("|  |")
