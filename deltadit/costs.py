"""MAC cost model, in the paper's convention: multiply-accumulates of the linear layers inside the
transformer blocks (attention score products and everything outside the blocks excluded), for the whole
CFG batch. Counted from the model config alone; Tables 1-3 of the paper are the reference
(tests/test_costs.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from deltadit.errors import DeltaDiTError
from deltadit.plan import DeltaPlan


@dataclass(frozen=True)
class CostReport:
    """block_macs: one block, one sample (a tuple, one per block, where blocks differ).  cfg_batch: samples per image (2 with guidance).
    path_macs: per step path ("full" or "cached [s,e)"), MACs for one image at that step.
    baseline_macs: every step full.  plan_macs: the plan.  ratio = plan / baseline.
    speedup_bound = baseline / plan: the speed-up if block MACs were the only cost."""

    block_macs: int | tuple[int, ...]
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


def plan_costs(plan: DeltaPlan, block_macs: int | Sequence[int], cfg_batch: int) -> CostReport:
    """Cost of a plan given the blocks' MACs per sample (``spec.block_macs(config, text_len)``): one
    number when every block costs the same, else one per block (SD3's last block has no context
    output; FLUX's dual- and single-stream stages differ)."""
    per_block = [block_macs] * plan.num_blocks if isinstance(block_macs, int) else [int(m) for m in block_macs]
    if len(per_block) != plan.num_blocks:
        raise DeltaDiTError(f"block MACs | {len(per_block)} blocks costed, but the plan has {plan.num_blocks}. "
                            "Expected: one MAC count per block of the model the plan was built for.")
    full = sum(per_block) * cfg_batch

    def step_macs(step) -> int:
        return full if step.cached is None else full - sum(per_block[step.cached[0]:step.cached[1]]) * cfg_batch

    paths: dict[str, int] = {}
    for step in plan:
        paths.setdefault(path_name(step), step_macs(step))
    uniform = block_macs if isinstance(block_macs, int) else (per_block[0] if len(set(per_block)) == 1 else tuple(per_block))
    return CostReport(uniform, cfg_batch, paths, plan.num_steps * full, sum(step_macs(s) for s in plan))


def format_macs(macs: float) -> str:
    """85_590_351_544_320 -> '85.590T' (the paper's notation)."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if macs >= scale:
            return f"{macs / scale:.3f}{unit}"
    return f"{macs:.0f}"
