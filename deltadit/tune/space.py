"""The search space of `deltadit tune`: plan variant, boundary b, cached blocks N_c, interval N, steps T,
and INT8 on / off, pruned by a MACs budget before anything runs.

Every candidate is a :class:`deltadit.plan.DeltaPlan` built by :func:`deltadit.plan.build_plan` (so it
is valid by construction) plus a precision. Candidates whose plans are step-for-step identical are kept
once (e.g. ``delta-dit`` with b >= T is ``deep``). MACs are counted with the paper's cost model
(:mod:`deltadit.costs`) against the *uncached run at the preset's steps*, so "fewer steps" rows compete
on the same axis as caching rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from deltadit.errors import DeltaDiTError, raise_if
from deltadit.plan import DeltaPlan, build_plan

SEARCH_VARIANTS = ("delta-dit", "opposite", "shallow", "middle", "deep", "none")
PAPER_BASELINES = ("fewer-steps", "shallow", "middle", "deep")  # the paper's Table 1 comparison rows


@dataclass(frozen=True)
class Grid:
    """The values searched. steps: T values (uncached ones at T < the preset's steps are the paper's
    "fewer steps" baselines). n_c / b as fractions of the blocks / steps (0.75 of 12 blocks -> 9), so one
    grid fits any model. intervals: cache interval N. int8: precisions to try (False = FP32)."""

    steps: tuple[int, ...] = (20, 16, 12, 10)
    variants: tuple[str, ...] = SEARCH_VARIANTS
    n_c: tuple[float, ...] = (0.5, 0.75)
    b: tuple[float, ...] = (0.6,)  # the paper's b = 12 of 20
    intervals: tuple[int, ...] = (2, 3)
    int8: tuple[bool, ...] = (False,)

    def problems(self) -> list[str]:
        out = []
        bad = [v for v in self.variants if v not in SEARCH_VARIANTS]
        if bad or not self.variants:
            out.append(f"variants | {bad or 'none given'} unknown. Expected: some of {', '.join(SEARCH_VARIANTS)}.")
        for name, values, ok in (("steps", self.steps, lambda x: isinstance(x, int) and x >= 1),
                                 ("intervals", self.intervals, lambda x: isinstance(x, int) and x >= 1),
                                 ("n_c", self.n_c, lambda x: 0 < x <= 1), ("b", self.b, lambda x: 0 <= x <= 1)):
            if not values or not all(ok(v) for v in values):
                out.append(f"grid {name} | {list(values)} has a value out of range. Expected: "
                           + ("integers >= 1." if name in ("steps", "intervals") else "fractions in (0, 1]."))
        return out


@dataclass(frozen=True)
class Candidate:
    """One point of the space: a plan and a precision, with its MACs against the uncached preset run."""

    plan: DeltaPlan
    int8: bool
    macs: int
    macs_ratio: float  # plan MACs / uncached MACs at the preset's steps
    tags: tuple[str, ...] = field(default=())  # paper baselines this candidate is ("fewer-steps", "deep", ...)

    @property
    def name(self) -> str:
        p = self.plan
        base = f"T={p.num_steps} none" if p.n_c == 0 else f"T={p.num_steps} {p.variant} N={p.interval} Nc={p.n_c}"
        if p.variant in ("delta-dit", "opposite") and p.n_c:
            base += f" b={p.b}"
        return base + (" int8" if self.int8 else "")


def candidates(preset, grid: Grid = Grid(), budget: float | None = None) -> list[Candidate]:
    """Every distinct candidate of ``grid`` for ``preset`` whose MACs ratio is within ``budget`` (a fraction
    of the uncached MACs at the preset's steps; None: no pruning), cheapest first. The uncached run at
    the preset's steps (the reference) is always included, whatever the budget, so a table can compare."""
    raise_if(grid.problems(), "tune | invalid search grid:" if len(grid.problems()) > 1 else None)
    if budget is not None and not 0 < budget <= 1:
        raise DeltaDiTError(f"--budget | {budget} is out of range. Expected: a fraction of the uncached MACs in (0, 1].")
    from deltadit.costs import plan_costs

    block, cfg = preset.block_macs(), preset.cfg_batch
    reference = plan_costs(_plan(preset, preset.steps, 0, 0, 1, "none"), block, cfg).plan_macs
    seen: set = set()
    out: list[Candidate] = []
    for plan in _plans(preset, grid):
        key = plan_key(plan)
        if key in seen:
            continue
        seen.add(key)
        macs = plan_costs(plan, block, cfg).plan_macs
        is_reference = plan.num_steps == preset.steps and plan.n_c == 0
        if budget is not None and macs / reference > budget + 1e-9 and not is_reference:
            continue
        for int8 in grid.int8:
            out.append(Candidate(plan, int8, macs, macs / reference, baseline_tags(plan, preset)))
    return sorted(out, key=lambda c: (c.macs, c.int8, c.name))


def _plans(preset, grid: Grid):
    """Every plan of the grid (with repeats; :func:`candidates` drops them)."""
    nb = preset.num_blocks
    for steps in grid.steps:
        for variant in grid.variants:
            if variant == "none":
                yield _plan(preset, steps, 0, 0, 1, "none")
                continue
            for frac_nc in grid.n_c:
                n_c = max(1, round(frac_nc * nb))
                bs = grid.b if variant in ("delta-dit", "opposite") else (0.0,)
                for interval in grid.intervals:
                    if interval == 1 or interval > steps:
                        continue
                    for frac_b in bs:
                        yield _plan(preset, steps, n_c, round(frac_b * steps), interval, variant)


def _plan(preset, steps: int, n_c: int, b: int, interval: int, variant: str) -> DeltaPlan:
    return build_plan(steps, preset.num_blocks, n_c, b, interval, variant, preset.spec.stage_cuts(preset.transformer))


def baseline_tags(plan: DeltaPlan, preset) -> tuple[str, ...]:
    """The paper-style baselines ``plan`` is: uncached with fewer steps than the preset, or one fixed
    range (shallow / middle / deep) at the preset's steps."""
    if plan.n_c == 0:
        return ("fewer-steps",) if plan.num_steps < preset.steps else ("reference",) if plan.num_steps == preset.steps else ()
    if plan.variant in ("shallow", "middle", "deep") and plan.num_steps == preset.steps:
        return (plan.variant,)
    return ()


def estimated_seconds(c: Candidate, reference_seconds: float, int8_speedup: float = 1.0) -> float:
    """A candidate's loop time estimated from the uncached reference loop's measured time: its MACs share,
    divided by ``int8_speedup`` (INT8's per-step speed-up) for INT8 candidates (block MACs dominate a step;
    the estimate only pre-selects, the shortlist is measured)."""
    return reference_seconds * c.macs_ratio / (int8_speedup if c.int8 else 1.0)


def latency_prune(cands: list[Candidate], reference_seconds: float, latency_budget: float,
                  int8_speedup: float = 1.0) -> list[Candidate]:
    """Candidates whose estimated loop time fits ``latency_budget`` seconds (the reference always stays)."""
    return [c for c in cands if "reference" in c.tags and not c.int8
            or estimated_seconds(c, reference_seconds, int8_speedup) <= latency_budget]


def plan_key(plan) -> tuple:
    """What makes two plans the same run: their steps, step for step (an uncached plan's b, N_c and N
    change nothing)."""
    return plan.num_steps, plan.steps
