"""MAC cost model, in the paper's convention: multiply-accumulates of the linear layers inside the
transformer blocks (attention score products and everything outside the blocks excluded), for the whole
CFG batch. Counted from the model config alone; Tables 1-3 of the paper are the reference
(tests/test_costs.py)."""

from __future__ import annotations

from dataclasses import dataclass

from deltadit.plan import DeltaPlan


@dataclass(frozen=True)
class CostReport:
    """block_macs: one block, one sample.  cfg_batch: samples per image (2 with guidance).
    path_macs: per step path ("full" or "cached [s,e)"), MACs for one image at that step.
    baseline_macs: every step full.  plan_macs: the plan.  ratio = plan / baseline.
    speedup_bound = baseline / plan: the speed-up if block MACs were the only cost."""

    block_macs: int
    cfg_batch: int
    path_macs: dict[str, int]
    baseline_macs: int
    plan_macs: int

    @property
    def ratio(self) -> float:
        return self.plan_macs / self.baseline_macs

    @property
    def speedup_bound(self) -> float:
        return self.baseline_macs / self.plan_macs


def path_name(step) -> str:
    return "full" if step.cached is None else f"cached [{step.cached[0]},{step.cached[1]})"


def plan_costs(plan: DeltaPlan, block_macs: int, cfg_batch: int) -> CostReport:
    """Cost of a plan given one block's MACs per sample (e.g. ``spec.block_macs(config, text_len)``)."""
    per_step = block_macs * cfg_batch
    paths: dict[str, int] = {}
    for step in plan:
        paths.setdefault(path_name(step), plan.blocks_run(step) * per_step)
    baseline = plan.num_steps * plan.num_blocks * per_step
    total = sum(plan.blocks_run(s) for s in plan) * per_step
    return CostReport(block_macs, cfg_batch, paths, baseline, total)


def format_macs(macs: float) -> str:
    """85_590_351_544_320 -> '85.590T' (the paper's notation)."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if macs >= scale:
            return f"{macs / scale:.3f}{unit}"
    return f"{macs:.0f}"
