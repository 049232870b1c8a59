"""`deltadit tune`'s search space: distinct valid plans, MACs against the uncached reference, budget pruning."""

import pytest

from deltadit.costs import plan_costs
from deltadit.errors import DeltaDiTError
from deltadit.presets import load_preset
from deltadit.tune.space import Grid, candidates, estimated_seconds, latency_prune

PRESET = load_preset("animals")  # 12 blocks, T = 20


def test_every_candidate_is_distinct_and_costed_against_the_uncached_reference():
    cands = candidates(PRESET, Grid(steps=(20, 10)))
    keys = [(c.plan.num_steps, c.plan.steps, c.int8) for c in cands]
    assert len(keys) == len(set(keys))
    reference = plan_costs(PRESET.plan(), PRESET.block_macs(), PRESET.cfg_batch).baseline_macs  # T=20, every step full
    for c in cands:
        assert c.macs == plan_costs(c.plan, PRESET.block_macs(), PRESET.cfg_batch).plan_macs
        assert c.macs_ratio == pytest.approx(c.macs / reference)
    assert [c.macs for c in cands] == sorted(c.macs for c in cands)
    tags = {t: [c.name for c in cands if t in c.tags] for t in ("reference", "fewer-steps", "deep")}
    assert tags["reference"] == ["T=20 none"] and tags["fewer-steps"] == ["T=10 none"]
    assert all(n.startswith("T=20 deep") for n in tags["deep"]) and tags["deep"]


def test_identical_plans_are_kept_once():
    # delta-dit with b >= T caches the deep blocks at every cached step: the same steps as "deep"
    cands = candidates(PRESET, Grid(steps=(8,), variants=("deep", "delta-dit"), n_c=(0.5,), b=(1.0,), intervals=(2,)))
    assert [c.name for c in cands] == ["T=8 deep N=2 Nc=6"]


def test_budget_prunes_by_macs_but_keeps_the_reference():
    full = candidates(PRESET, Grid(steps=(20, 12)))
    cut = candidates(PRESET, Grid(steps=(20, 12)), budget=0.6)
    assert {c.name for c in cut} == {c.name for c in full if c.macs_ratio <= 0.6 or "reference" in c.tags}
    assert 0 < len(cut) < len(full) and any(c.macs_ratio > 0.6 for c in full)
    assert "T=20 none" in {c.name for c in cut}


def test_int8_doubles_the_space_and_latency_budget_uses_the_int8_speedup():
    cands = candidates(PRESET, Grid(steps=(10,), int8=(False, True)))
    assert sum(c.int8 for c in cands) == sum(not c.int8 for c in cands) > 0
    one = next(c for c in cands if c.int8)
    assert estimated_seconds(one, 10.0, int8_speedup=2.0) == pytest.approx(10.0 * one.macs_ratio / 2)
    kept = latency_prune(cands, 10.0, latency_budget=10.0 * one.macs_ratio / 2, int8_speedup=2.0)
    assert one in kept and all(estimated_seconds(c, 10.0, 2.0) <= 10.0 * one.macs_ratio / 2 + 1e-12 for c in kept)


@pytest.mark.parametrize("grid, budget, match", [
    (Grid(variants=("sideways",)), None, r"variants \| \['sideways'\] unknown"),
    (Grid(n_c=(1.5,)), None, r"grid n_c \| \[1\.5\] has a value out of range"),
    (Grid(), 1.5, r"--budget \| 1\.5 is out of range"),
])
def test_bad_grid_or_budget_is_one_clear_error(grid, budget, match):
    with pytest.raises(DeltaDiTError, match=match):
        candidates(PRESET, grid, budget)
