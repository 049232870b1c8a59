import itertools
import json

import pytest

from deltadit.errors import DeltaDiTError
from deltadit.plan import VARIANTS, DeltaPlan, build_plan, plan_from_budget


def expected_range(variant, t, b, n_c, n_b):
    """The paper's rule, written out independently of deltadit.plan."""
    shallow, deep = (0, n_c), (n_b - n_c, n_b)
    middle = ((n_b - n_c) // 2, (n_b - n_c) // 2 + n_c)
    return {
        "delta-dit": deep if t <= b else shallow,
        "opposite": shallow if t <= b else deep,
        "shallow": shallow, "middle": middle, "deep": deep,
    }[variant]


CASES = list(itertools.product([1, 2, 4, 5, 13, 20], [1, 6, 28], [0, 1, 3, 21, 28], [0, 1, 6, 12, 20], [1, 2, 3], VARIANTS))
CASES = [c for c in CASES if c[3] <= c[0] and c[2] <= c[1]]


def test_plan_semantics_over_a_grid_of_settings():
    """One property check over ~3000 (T, N_b, N_c, b, N, variant) settings (a loop, not 3000 test ids)."""
    assert len(CASES) > 1000
    for case in CASES:
        check_plan_semantics(*case)


def check_plan_semantics(steps, n_b, n_c, b, interval, variant):
    plan = build_plan(steps, n_b, n_c, b, interval, variant)
    assert len(plan) == steps and [s.t for s in plan] == list(range(1, steps + 1))
    stored = set()
    for i, s in enumerate(plan):
        full = (s.t - 1) % interval == 0 or n_c == 0 or variant == "none"
        assert s.is_full == full
        if full:
            stored = set(s.record)
            # It records exactly the ranges the following cached steps use.
            later = []
            for nxt in plan.steps[i + 1 :]:
                if nxt.is_full:
                    break
                later.append(nxt.cached)
            assert set(s.record) == set(later)
        else:
            assert s.cached == expected_range(variant, s.t, b, n_c, n_b)
            assert s.cached in stored, "a cached step must reuse a Δ recorded by the last full step"
            assert plan.blocks_run(s) == n_b - n_c
    # Groups tile the blocks and every cached range is a union of whole groups.
    groups = plan.groups
    assert groups[0].start == 0 and groups[-1].stop == n_b
    assert all(a.stop == b_.start for a, b_ in zip(groups, groups[1:]))
    for start, stop in plan.ranges:
        assert start in plan.cut_points and stop in plan.cut_points
    assert DeltaPlan.from_json(plan.to_json()) == plan
    assert json.loads(plan.to_json()) == json.loads(DeltaPlan.from_json(plan.to_json()).to_json())


def test_paper_pixart_groups_and_boundary():
    plan = build_plan(20, 28, 21, b=12, interval=2)
    assert [(g.start, g.stop) for g in plan.groups] == [(0, 7), (7, 21), (21, 28)]
    cached = {s.t: s.cached for s in plan if not s.is_full}
    assert cached[12] == (7, 28) and cached[14] == (0, 21)
    assert sum(plan.blocks_run(s) for s in plan) == 10 * 28 + 10 * 7


def test_limit_group_blocks_splits_long_groups_only():
    from deltadit.plan import DeltaPlan, limit_group_blocks

    plan = build_plan(20, 28, 21, b=12, interval=2, cuts=(19,))  # groups [0,7) [7,19) [19,21) [21,28)
    split = limit_group_blocks(plan, 5)
    assert [(g.start, g.stop) for g in split.groups] == [(0, 3), (3, 7), (7, 11), (11, 15), (15, 19), (19, 21),
                                                         (21, 24), (24, 28)]
    assert split.steps == plan.steps and set(plan.cut_points) <= set(split.cut_points)
    assert DeltaPlan.from_json(split.to_json()) == split  # the extra cuts survive the manifest round trip
    assert limit_group_blocks(plan, 28) == plan
    with pytest.raises(DeltaDiTError, match=r"max group blocks \| 0 is not a positive integer"):
        limit_group_blocks(plan, 0)


def test_boundary_extremes():
    assert {s.cached for s in build_plan(20, 28, 21, b=0) if not s.is_full} == {(0, 21)}
    assert {s.cached for s in build_plan(20, 28, 21, b=20) if not s.is_full} == {(7, 28)}


def test_cache_all_blocks():
    plan = build_plan(6, 28, 28, b=3)
    assert plan.groups[0].start == 0 and plan.groups[-1].stop == 28 and len(plan.groups) == 1
    assert all(plan.blocks_run(s) == 0 for s in plan if not s.is_full)


def test_lcm_four_steps():
    plan = build_plan(4, 28, 4, b=2, interval=2)
    assert [s.cached for s in plan] == [None, (24, 28), None, (0, 4)]
    assert [s.record for s in plan] == [((24, 28),), (), ((0, 4),), ()]


def test_interval_three_crossing_boundary_records_both_ranges():
    plan = build_plan(7, 10, 4, b=2, interval=3)
    assert plan.steps[0].record == ((6, 10), (0, 4))  # t=2 deep, t=3 shallow


def test_none_and_zero_nc_run_everything():
    for plan in (build_plan(10, 28, 21, 5, 2, "none"), build_plan(10, 28, 0, 5, 2)):
        assert all(s.is_full and not s.record for s in plan)
        assert [(g.start, g.stop) for g in plan.groups] == [(0, 28)]


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_steps=20, num_blocks=28, n_c=29), r"nc \(N_c\) \| 29 is out of range .* \[0, 28\]"),
    (dict(num_steps=20, num_blocks=28, n_c=-1), r"nc \(N_c\) \| -1"),
    (dict(num_steps=20, num_blocks=28, n_c=21, b=21), r"b \| 21 is out of range for 20 steps.*\[0, 20\]"),
    (dict(num_steps=20, num_blocks=28, n_c=21, b=-1), r"b \| -1 is out of range"),
    (dict(num_steps=20, num_blocks=28, n_c=21, interval=0), r"interval \(N\) \| 0 is out of range.*\[1, 1000\]"),
    (dict(num_steps=0, num_blocks=28, n_c=21), r"steps \| 0 is not a valid step count.*\[1, 1000\]"),
    (dict(num_steps=20, num_blocks=0, n_c=0), r"num_blocks \| 0"),
    # Sizes past the bounds fail before any list is built (10**9 steps used to allocate gigabytes).
    (dict(num_steps=10**9, num_blocks=28, n_c=21), r"steps \| 1000000000 is not a valid step count.*\[1, 1000\]"),
    (dict(num_steps=20, num_blocks=10**6, n_c=21), r"num_blocks \| 1000000 is not a valid block count.*\[1, 512\]"),
    (dict(num_steps=True, num_blocks=28, n_c=21), r"steps \| True is not a valid step count"),
    (dict(num_steps=20, num_blocks=28, n_c=21, variant="fast"), r"variant \| 'fast' is unknown.*delta-dit"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(DeltaDiTError, match=match):
        build_plan(**kwargs)


def test_all_problems_reported_at_once():
    with pytest.raises(DeltaDiTError) as err:
        build_plan(20, 28, 40, b=30, interval=0)
    text = str(err.value)
    assert "nc (N_c)" in text and "b | 30" in text and "interval (N)" in text


def test_tampered_plan_json_rejected():
    d = build_plan(20, 28, 21, 12).to_dict()
    d["steps"][1]["cached"] = [0, 21]
    with pytest.raises(DeltaDiTError, match="stored steps do not match"):
        DeltaPlan.from_dict(d)
    d = build_plan(20, 28, 21, 12).to_dict()
    d["format"] = 99
    with pytest.raises(DeltaDiTError, match="format 99 is not supported"):
        DeltaPlan.from_dict(d)


def test_budget_reproduces_paper_setting():
    plan = plan_from_budget(20, 28, 0.625, b=12)
    assert (plan.interval, plan.n_c) == (2, 21)
    assert plan == build_plan(20, 28, 21, 12, 2)


@pytest.mark.parametrize("steps,n_b,budget", [(20, 28, f / 100) for f in range(15, 101, 7)] + [(4, 28, 0.93), (13, 28, 0.5), (7, 12, 0.3)])
def test_budget_never_exceeded(steps, n_b, budget):
    plan = plan_from_budget(steps, n_b, budget, b=steps // 2)
    assert sum(plan.blocks_run(s) for s in plan) <= budget * steps * n_b + 1e-9


@pytest.mark.parametrize("steps,budget,expected", [
    (20, 0.625, (2, 21)),          # paper Table 1: 53.532T / 85.651T
    (4, 104 / 112, (2, 4)),        # paper Table 3: 7.953T / 8.565T
    (4, 100 / 112, (2, 6)),        # paper Table 3: 7.647T / 8.565T
    (20, 0.34, (4, 25)),           # Eq. 6 gives N = 3, whose 7 full steps alone cost 0.35 -> N = 4
    (20, 1.0, (1, 0)),
])
def test_budget_hand_computed(steps, budget, expected):
    plan = plan_from_budget(steps, 28, budget, b=2)
    assert (plan.interval, plan.n_c) == expected


def test_budget_errors():
    with pytest.raises(DeltaDiTError, match=r"budget \| 0 is out of range"):
        plan_from_budget(20, 28, 0)
    with pytest.raises(DeltaDiTError, match=r"budget \| 1.5 is out of range"):
        plan_from_budget(20, 28, 1.5)
    with pytest.raises(DeltaDiTError, match="cannot be met"):
        plan_from_budget(3, 28, 0.3)


def test_budget_refuses_sizes_past_the_bounds():
    with pytest.raises(DeltaDiTError, match=r"steps \| 1000000000 is not a valid step count"):
        plan_from_budget(10**9, 28, 0.5)
    with pytest.raises(DeltaDiTError, match=r"num_blocks \| 4096 is not a valid block count"):
        plan_from_budget(20, 4096, 0.5)
    with pytest.raises(DeltaDiTError, match=r"budget \| nan is out of range"):
        plan_from_budget(20, 28, float("nan"))


def _stored(**changes) -> dict:
    d = build_plan(4, 12, 9, 2).to_dict()
    for key, value in changes.items():
        if value is KeyError:
            del d[key]
        else:
            d[key] = value
    return d


@pytest.mark.parametrize("d,match", [
    ([1, 2], r"plan \| list is not a plan"),
    (_stored(n_c=KeyError, b=KeyError), r"plan \| missing field\(s\) n_c, b"),
    (_stored(num_steps="4"), r"steps \| '4' is not a valid step count"),
    (_stored(num_steps=10**12), r"steps \| 1000000000000 is not a valid step count"),
    (_stored(variant=["delta-dit"]), r"variant \| \['delta-dit'\] is unknown"),
    (_stored(steps={"t": 1}), r"plan steps \| a dict for num_steps 4"),
    (_stored(steps=[{"t": 1}] * 4), r"plan steps\[0\] \| .* is not a step"),
    (_stored(steps=[{"t": "1", "cached": None, "record": []}] * 4), r"plan steps\[0\]\.t \| '1' is not an integer"),
    (_stored(steps=[{"t": 1, "cached": [0, 2, 3], "record": []}] * 4), r"plan steps\[0\]\.cached \| \[0, 2, 3\] is not a block range"),
    (_stored(steps=[{"t": 1, "cached": None, "record": [[0, "9"]]}] * 4), r"plan steps\[0\]\.record \|"),
])
def test_malformed_plan_dict_names_the_field(d, match):
    with pytest.raises(DeltaDiTError, match=match):
        DeltaPlan.from_dict(d)
    with pytest.raises(DeltaDiTError, match=match):
        DeltaPlan.from_json(json.dumps(d))


def test_plan_json_that_does_not_parse():
    with pytest.raises(DeltaDiTError, match=r"plan \| not valid JSON"):
        DeltaPlan.from_json('{"num_steps": 4,')
