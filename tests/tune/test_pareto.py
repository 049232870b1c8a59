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


def test_shortlist_takes_each_precisions_own_front_so_int8_is_measured():
    """INT8 twins cost the same MACs and score lower: on one joint front they never appear."""
    import dataclasses

    from deltadit.tune.cli import shortlist

    fp32 = [result(0.3, 24), result(0.5, 31), result(0.6, 36), result(0.8, 38), result(1.0, 99)]
    reference = dataclasses.replace(fp32[-1], candidate=dataclasses.replace(fp32[-1].candidate, tags=("reference",)))
    fp32[-1] = reference
    int8 = [dataclasses.replace(r, candidate=dataclasses.replace(r.candidate, int8=True),
                                score=dataclasses.replace(r.score, psnr_db=r.score.psnr_db - 4)) for r in fp32[:4]]
    picks = shortlist(fp32 + int8, 30.0, 2)
    assert [(r.candidate.int8, r.candidate.macs_ratio) for r in picks] == [(False, 0.5), (False, 0.6), (True, 0.6), (True, 0.8)]
    assert shortlist(fp32 + int8, 40.0, 2) == []
