"""The Δ-DiT executor: runs one denoising step of a plan on any runner.

Full step: head, every group, tail; before the first group of each recorded range [s, e) it keeps the
carried streams, after the group ending at e it stores Δ = h_e - h_s per stream (paper Eq. 3, the
underlined term). Cached step: head; groups outside the cached range run; where the range starts, Δ is
added instead of running its groups; tail. Decisions come only from the plan, never from tensor values, so a step has
no host syncs beyond what the backend itself does.
"""

from __future__ import annotations

from deltadit.errors import DeltaDiTError
from deltadit.models.spec import Segment
from deltadit.plan import DeltaPlan
from deltadit.runtime.runners.base import Runner


class DeltaDiTExecutor:
    def __init__(self, plan: DeltaPlan, segments: tuple[Segment, ...], runner: Runner):
        self.plan = plan
        self.runner = runner
        self.head = next(s for s in segments if s.kind == "head")
        self.tail = next(s for s in segments if s.kind == "tail")
        self.groups = tuple(s for s in segments if s.kind == "group")
        # Carried streams: what a group hands to the next (its outputs); everything else is context.
        self.streams = {name for g in self.groups for name in g.outputs}
        have = tuple(s.block_range for s in self.groups)
        want = tuple((g.start, g.stop) for g in plan.groups)
        if have != want:
            raise DeltaDiTError(
                f"segments | block groups {list(have)} do not match the plan's cut points {list(want)}. "
                "Expected: segments split at plan.groups (re-export the bundle for this plan)."
            )
        self.deltas: dict[tuple[int, int], object] = {}
        self.last_full: int | None = None

    def reset(self) -> None:
        """Forget stored deltas (start of a new generation)."""
        self.deltas.clear()
        self.last_full = None

    def step(self, index: int, feeds: dict) -> dict:
        """Run plan step ``index`` (0-based) on the head's input ``feeds``; return the tail's outputs.

        The carried streams (the head's outputs that the first group takes back, e.g. hidden_states,
        or hidden_states + encoder_hidden_states for two-stream blocks) are a dict; a full step stores
        one Δ per stream a recorded range outputs, a cached step adds each back and drops streams the
        range no longer produces (SD3's context stream ends at its last block)."""
        action = self.plan.steps[index]
        run, rt = self.runner.infer, self.runner
        head = run(self.head.name, feeds)
        state = {k: head[k] for k in self.groups[0].inputs if k in self.streams}
        if action.cached is None:
            if index == 0:
                self.reset()
            starts = {s for s, _ in action.record}
            marks = {}
            for g in self.groups:
                start, stop = g.block_range
                if start in starts:
                    marks[start] = state
                out = run(g.name, {**head, **state})
                state = {k: out[k] for k in g.outputs}
                for s, e in action.record:
                    if e == stop:
                        self.deltas[(s, e)] = {k: rt.sub(v, marks[s][k]) for k, v in state.items()}
            self.last_full = index
        else:
            s, e = action.cached
            if (s, e) not in self.deltas or self.last_full is None or self.last_full >= index:
                raise DeltaDiTError(
                    f"step {index} | cached step over blocks [{s},{e}) has no Δ recorded by an earlier full step. "
                    "Expected: steps run in order from step 0 (call reset() before a new generation)."
                )
            for g in self.groups:
                start, stop = g.block_range
                if start == s:
                    state = {k: rt.add(state[k], d) for k, d in self.deltas[(s, e)].items()}
                if s <= start < e:
                    continue
                out = run(g.name, {**head, **state})
                state = {k: out[k] for k in g.outputs}
        return run(self.tail.name, {**head, **state})
