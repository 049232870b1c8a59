"""The Δ-DiT plan: which blocks each denoising step runs, fixed before the loop.

Paper: Δ-DiT (Chen et al.), section 4.1 (Δ-Cache, Eq. 3) and 4.2 (alignment, Eq. 6-7).

* Steps are counted t = 1..T from the first (noisiest) step. With cache interval N, step t is a *full*
  step when (t - 1) % N == 0, so t = 1 is always full; the N - 1 steps after it are *cached*.
* A full step runs every block and records Δ = h_out(e) - h_in(s) for each block range [s, e) that the
  following cached steps will reuse.
* A cached step runs every block outside its range and, where the range starts, adds the recorded Δ
  instead of running blocks s..e-1.
* Variant ``delta-dit``: a cached step with t <= b reuses Δ over the deep blocks [N_b - N_c, N_b);
  later cached steps over the shallow blocks [0, N_c). ``opposite`` swaps the two (paper Table 5).
  ``shallow`` / ``middle`` / ``deep`` cache one fixed range at every cached step (paper Table 1 rows;
  middle = blocks 4-24 of 28, i.e. [(N_b - N_c) // 2, +N_c)). ``none`` runs every step in full.

Blocks are 0-indexed here; ranges are half-open [start, stop).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace

from deltadit.errors import DeltaDiTError, raise_if
from deltadit.validate import MAX_BLOCKS, MAX_STEPS, fraction

VARIANTS = ("delta-dit", "opposite", "shallow", "middle", "deep", "none")
PLAN_FORMAT = 1

BlockRange = tuple[int, int]


@dataclass(frozen=True)
class StepAction:
    """What one denoising step does.

    t: step number, 1-based (t = 1 is the first, noisiest step).
    cached: for a cached step, the block range [start, stop) whose Δ it adds back; None for a full step.
    record: for a full step, the block ranges whose Δ it must store for the cached steps after it.
    """

    t: int
    cached: BlockRange | None = None
    record: tuple[BlockRange, ...] = ()

    @property
    def is_full(self) -> bool:
        return self.cached is None


@dataclass(frozen=True)
class BlockGroup:
    """A contiguous range of transformer blocks exported and run as one segment."""

    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"blocks_{self.start:02d}_{self.stop:02d}"


@dataclass(frozen=True)
class DeltaPlan:
    """A complete, input-independent Δ-DiT schedule (serialisable to JSON, stored in bundles).

    num_steps: denoising steps T.  num_blocks: transformer blocks N_b.  n_c: cached blocks N_c.
    b: boundary step (t <= b caches deep blocks for ``delta-dit``).  interval: cache interval N.
    variant: one of :data:`VARIANTS`.  steps: one :class:`StepAction` per step.
    cuts: block indices where the model must be cut (a stage boundary, e.g. FLUX's dual- to
    single-stream blocks at 19; or a split of a long group, :func:`limit_group_blocks`): block groups
    never span them; a cached range may.
    """

    num_steps: int
    num_blocks: int
    n_c: int
    b: int
    interval: int
    variant: str
    steps: tuple[StepAction, ...]
    cuts: tuple[int, ...] = ()

    def __iter__(self):
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def ranges(self) -> tuple[BlockRange, ...]:
        """Distinct block ranges that some cached step reuses, in first-use order."""
        seen: dict[BlockRange, None] = {}
        for step in self.steps:
            if step.cached is not None:
                seen.setdefault(step.cached, None)
        return tuple(seen)

    @property
    def cut_points(self) -> tuple[int, ...]:
        """Block indices where the transformer must be cut so every cached range is whole groups."""
        cuts = {0, self.num_blocks, *self.cuts}
        for start, stop in self.ranges:
            cuts.update((start, stop))
        return tuple(sorted(cuts))

    @property
    def groups(self) -> tuple[BlockGroup, ...]:
        """Block groups between consecutive cut points (28 blocks, N_c = 21 -> [0,7) [7,21) [21,28))."""
        cuts = self.cut_points
        return tuple(BlockGroup(i, a, z) for i, (a, z) in enumerate(zip(cuts[:-1], cuts[1:])))

    def blocks_run(self, step: StepAction) -> int:
        """Number of transformer blocks a step executes."""
        if step.cached is None:
            return self.num_blocks
        return self.num_blocks - (step.cached[1] - step.cached[0])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["format"] = PLAN_FORMAT
        d["cuts"] = list(self.cuts)
        d["steps"] = [
            {"t": s.t, "cached": list(s.cached) if s.cached else None, "record": [list(r) for r in s.record]}
            for s in self.steps
        ]
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict) -> "DeltaPlan":
        """The plan stored as ``d`` (from :meth:`to_dict`, e.g. a bundle manifest's), rebuilt from its
        parameters and checked step by step; a malformed dict raises a DeltaDiTError naming the field."""
        if not isinstance(d, dict):
            raise DeltaDiTError(f"plan | {type(d).__name__} is not a plan. Expected: a JSON object as written by deltadit.")
        fmt = d.get("format", PLAN_FORMAT)
        if fmt != PLAN_FORMAT:
            raise DeltaDiTError(f"plan | format {fmt!r} is not supported. Expected: format {PLAN_FORMAT}.")
        missing = [k for k in ("num_steps", "num_blocks", "n_c", "b", "interval", "variant", "steps") if k not in d]
        if missing:
            raise DeltaDiTError(f"plan | missing field(s) {', '.join(missing)}. Expected: a plan written by deltadit.")
        # build_plan checks the parameters' types and bounds, so a huge num_steps fails before any work.
        cuts = d.get("cuts", [])
        if not isinstance(cuts, list):
            raise DeltaDiTError(f"plan cuts | {_describe(cuts)}. Expected: a list of block indices.")
        plan = build_plan(d["num_steps"], d["num_blocks"], d["n_c"], d["b"], d["interval"], d["variant"], tuple(cuts))
        if not isinstance(d["steps"], list) or len(d["steps"]) != plan.num_steps:
            raise DeltaDiTError(f"plan steps | {_describe(d['steps'])} for num_steps {plan.num_steps}. "
                                f"Expected: a list of {plan.num_steps} step objects.")
        steps = tuple(_step_from_dict(i, s) for i, s in enumerate(d["steps"]))
        if steps != plan.steps:
            raise DeltaDiTError(
                "plan | the stored steps do not match what its parameters produce. "
                "Expected: a plan written by deltadit (re-create it with `deltadit plan`)."
            )
        return plan

    @classmethod
    def from_json(cls, text: str) -> "DeltaPlan":
        try:
            d = json.loads(text)
        except ValueError as e:
            raise DeltaDiTError(f"plan | not valid JSON ({e}). Expected: a plan written by deltadit.") from None
        return cls.from_dict(d)


def _describe(value) -> str:
    return f"{len(value)} entries" if isinstance(value, list) else f"a {type(value).__name__}"


def _block_range(value) -> BlockRange | None:
    if (isinstance(value, list) and len(value) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_BLOCKS for x in value)):
        return (value[0], value[1])
    return None


def _step_from_dict(i: int, s) -> StepAction:
    """One stored step ({"t", "cached": [start, stop] | null, "record": [[start, stop], ...]})."""
    where = f"plan steps[{i}]"
    if not isinstance(s, dict) or not {"t", "cached", "record"} <= s.keys():
        raise DeltaDiTError(f"{where} | {s!r:.80} is not a step. Expected: an object with t, cached, record.")
    if not isinstance(s["t"], int) or isinstance(s["t"], bool):
        raise DeltaDiTError(f"{where}.t | {s['t']!r:.40} is not an integer. Expected: the step number {i + 1}.")
    cached = None if s["cached"] is None else _block_range(s["cached"])
    if s["cached"] is not None and cached is None:
        raise DeltaDiTError(f"{where}.cached | {s['cached']!r:.60} is not a block range. "
                            f"Expected: null or [start, stop] with 0 <= start, stop <= {MAX_BLOCKS}.")
    record = s["record"]
    if not isinstance(record, list) or len(record) > MAX_BLOCKS or any(_block_range(r) is None for r in record):
        raise DeltaDiTError(f"{where}.record | {record!r:.60} is not a list of block ranges. "
                            "Expected: a list of [start, stop] pairs.")
    return StepAction(s["t"], cached, tuple(_block_range(r) for r in record))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _range_for(variant: str, t: int, b: int, n_c: int, n_b: int) -> BlockRange:
    shallow, deep = (0, n_c), (n_b - n_c, n_b)
    if variant == "delta-dit":
        return deep if t <= b else shallow
    if variant == "opposite":
        return shallow if t <= b else deep
    if variant == "shallow":
        return shallow
    if variant == "deep":
        return deep
    if variant == "middle":
        start = (n_b - n_c) // 2
        return (start, start + n_c)
    raise AssertionError(variant)


def validate(num_steps: int, num_blocks: int, n_c: int, b: int, interval: int, variant: str) -> None:
    """Check plan parameters; raise one DeltaDiTError naming every bad one and its valid range."""
    problems = plan_problems(num_steps, num_blocks, n_c, b, interval, variant)
    raise_if(problems, "Invalid Δ-DiT plan parameters:" if len(problems) > 1 else None)


def plan_problems(num_steps: int, num_blocks: int, n_c: int, b: int, interval: int, variant: str) -> list[str]:
    """What :func:`validate` would refuse, one message per bad parameter (for callers that collect)."""
    problems = []
    if not isinstance(variant, str) or variant not in VARIANTS:
        problems.append(f"variant | {variant!r:.40} is unknown. Expected: one of {', '.join(VARIANTS)}.")
    steps_ok = _is_int(num_steps) and 1 <= num_steps <= MAX_STEPS
    blocks_ok = _is_int(num_blocks) and 1 <= num_blocks <= MAX_BLOCKS
    if not steps_ok:
        problems.append(f"steps | {num_steps!r:.40} is not a valid step count. Expected: an integer in [1, {MAX_STEPS}].")
    if not blocks_ok:
        problems.append(f"num_blocks | {num_blocks!r:.40} is not a valid block count. "
                        f"Expected: an integer in [1, {MAX_BLOCKS}].")
    if not (_is_int(interval) and 1 <= interval <= MAX_STEPS):
        problems.append(f"interval (N) | {interval!r:.40} is out of range. "
                        f"Expected: an integer in [1, {MAX_STEPS}] (2 in the paper).")
    if blocks_ok:
        if not _is_int(n_c) or not 0 <= n_c <= num_blocks:
            problems.append(
                f"nc (N_c) | {n_c!r:.40} is out of range for a model with {num_blocks} blocks. "
                f"Expected: an integer in [0, {num_blocks}]."
            )
    if steps_ok:
        if not _is_int(b) or not 0 <= b <= num_steps:
            problems.append(
                f"b | {b!r:.40} is out of range for {num_steps} steps. Expected: an integer in [0, {num_steps}] "
                "(cached steps with t <= b use the deep blocks; t counts from 1)."
            )
    return problems


def build_plan(
    num_steps: int,
    num_blocks: int,
    n_c: int,
    b: int = 0,
    interval: int = 2,
    variant: str = "delta-dit",
    cuts: tuple[int, ...] = (),
) -> DeltaPlan:
    """Build the per-step plan. See the module docstring for the semantics of each parameter; cuts: the
    model's forced cut points (``spec.stage_cuts(config)``)."""
    validate(num_steps, num_blocks, n_c, b, interval, variant)
    if not all(isinstance(c, int) and not isinstance(c, bool) and 0 < c < num_blocks for c in cuts):
        raise DeltaDiTError(f"cuts | {list(cuts)!r:.80} are not block indices inside the model. "
                            f"Expected: integers in [1, {num_blocks - 1}].")
    cuts = tuple(sorted(set(cuts)))
    if variant == "none":
        n_c = 0
    kinds: list[BlockRange | None] = []
    for t in range(1, num_steps + 1):
        full = (t - 1) % interval == 0 or n_c == 0
        kinds.append(None if full else _range_for(variant, t, b, n_c, num_blocks))
    steps = []
    for i, cached in enumerate(kinds):
        record: tuple[BlockRange, ...] = ()
        if cached is None:
            # Every range reused before the next full step, in order, without repeats.
            later: dict[BlockRange, None] = {}
            for nxt in kinds[i + 1 :]:
                if nxt is None:
                    break
                later.setdefault(nxt, None)
            record = tuple(later)
        steps.append(StepAction(t=i + 1, cached=cached, record=record))
    return DeltaPlan(num_steps, num_blocks, n_c, b, interval, variant, tuple(steps), cuts)


def limit_group_blocks(plan: DeltaPlan, max_blocks: int) -> DeltaPlan:
    """``plan`` with extra cut points so that no block group has more than ``max_blocks`` blocks (a long
    group is split into near-equal parts); the steps are unchanged, a cached range then spans several
    groups. Smaller groups lower the export's peak memory (the largest group's graph is serialised whole)."""
    if isinstance(max_blocks, bool) or not isinstance(max_blocks, int) or max_blocks < 1:
        raise DeltaDiTError(f"max group blocks | {max_blocks!r:.40} is not a positive integer. Expected: e.g. 7.")
    extra = []
    for g in plan.groups:
        n = g.stop - g.start
        parts = -(-n // max_blocks)
        extra += [g.start + (i * n) // parts for i in range(1, parts)]
    return replace(plan, cuts=tuple(sorted({*plan.cuts, *extra})))


def plan_from_budget(
    num_steps: int,
    num_blocks: int,
    budget: float,
    b: int = 0,
    variant: str = "delta-dit",
    cuts: tuple[int, ...] = (),
) -> DeltaPlan:
    """Choose N and N_c from a compute budget, as the paper's Eq. 6-7.

    budget: the target cost M_g as a fraction of the uncached cost T * N_b * M_b (0 < budget <= 1;
    0.625 is the paper's 1.6x setting). Eq. 6: N = ceil(T N_b M_b / M_g). Eq. 7: with the
    T mod N remainder steps counted as full, each of the floor(T / N) groups of N steps may spend
    G = (M_g - (T mod N) N_b M_b) / floor(T / N); one full step costs N_b M_b and each of the N - 1
    cached steps (N_b - N_c) M_b, so N_c = N_b - floor((G - N_b M_b) / ((N - 1) M_b)).
    The resulting plan never exceeds the budget (checked), and the remainder steps follow the same
    full/cached pattern as the rest, so they cost at most what Eq. 7 assumed. If Eq. 6's N cannot meet
    the budget even with N_c = N_b, the next larger N is tried.
    """
    budget = fraction("budget", budget, " of the uncached MACs, e.g. 0.625 for the paper's 1.6x setting")
    validate(num_steps, num_blocks, 0, b, 1, variant)
    total = num_steps * num_blocks  # in units of M_b
    m_g = budget * total
    # Eq. 6 gives the first N to try; where its full steps alone already exceed the budget (few steps,
    # small budget) the next larger N is tried, which the paper does not need for its settings.
    first = max(1, math.ceil(total / m_g - 1e-9))
    for interval in range(min(first, num_steps), num_steps + 1):
        n_c = 0
        if interval > 1:
            groups = num_steps // interval
            per_group = (m_g - (num_steps % interval) * num_blocks) / groups
            computed = math.floor((per_group - num_blocks) / (interval - 1) + 1e-9)
            n_c = min(num_blocks, max(0, num_blocks - computed))
        plan = build_plan(num_steps, num_blocks, n_c, b, interval, variant, cuts)
        cost = sum(plan.blocks_run(s) for s in plan)
        if cost <= m_g + 1e-6:
            return plan
    raise DeltaDiTError(
        f"budget | {budget} of the uncached cost cannot be met with {num_steps} steps: even caching every block "
        f"at every step but the first costs {cost / total:.3f}. Expected: a larger budget or more steps."
    )
