"""Model adapters: split a diffusers DiT into head / block groups / tail modules (shared weights)."""

from __future__ import annotations

from dataclasses import dataclass

from deltadit.errors import DeltaDiTError
from deltadit.models.spec import ModelSpec, Segment, get_spec, spec_for


@dataclass
class Split:
    """A transformer cut into segments. ``modules[seg.name]`` runs ``seg`` with positional inputs in
    ``seg.inputs`` order and returns its outputs in ``seg.outputs`` order (a tensor when there is one)."""

    spec: ModelSpec
    config: dict
    segments: tuple[Segment, ...]
    modules: dict
    grid: tuple[int, int]


def check_plan_fits(plan, transformer) -> None:
    """Raise if ``plan`` was built for another block count than ``transformer`` has."""
    n = spec_for(transformer).num_blocks(dict(transformer.config))
    if plan.num_blocks != n:
        raise DeltaDiTError(
            f"plan | built for {plan.num_blocks} blocks, but the transformer has {n}. "
            f"Expected: a plan with num_blocks={n}; for a weights folder of another size, --model DIR reads the "
            "dimensions from the folder and scales the plan to its blocks (instead of --model PRESET --weights DIR)."
        )


def split(transformer, groups, grid: tuple[int, int] | None = None) -> Split:
    """Cut ``transformer`` at the plan's groups (``plan.groups``). grid: the (h, w) token grid the tail
    unpatchifies to; by default the config's square ``sample_size / patch_size``."""
    spec = spec_for(transformer)
    config = dict(transformer.config)
    n_blocks = spec.num_blocks(config)
    covered = [(g.start, g.stop) for g in groups]
    expected_starts = [0] + [stop for _, stop in covered[:-1]]
    if [a for a, _ in covered] != expected_starts or not covered or covered[-1][1] != n_blocks:
        raise DeltaDiTError(
            f"block groups | {covered} do not tile the model's {n_blocks} blocks. "
            "Expected: contiguous ranges from 0 to the block count (use plan.groups of a plan built for this model)."
        )
    starts = {a for a, _ in covered}
    missing = [c for c in spec.stage_cuts(config) if c not in starts]
    if missing:
        raise DeltaDiTError(
            f"block groups | {covered} run across the model's stage boundary at block(s) {missing}. "
            "Expected: groups cut there too (a plan built with this model's stage cuts).")
    if grid is None and "sample_size" in config:  # FLUX has none: its tail returns packed tokens
        side = config["sample_size"] // config["patch_size"]
        grid = (side, side)
    segments = spec.segments(config, groups)
    modules = {"head": spec.make_head(transformer), "tail": spec.make_tail(transformer, grid)}
    for g in groups:
        modules[g.name] = spec.make_group(transformer, g.start, g.stop)
    for m in modules.values():
        m.eval()
    return Split(spec, config, segments, modules, grid)


__all__ = ["check_plan_fits", "ModelSpec", "Segment", "Split", "get_spec", "spec_for", "split"]
