"""The Δ-DiT executor: runs one denoising step of a plan on any runner.

Full step: head, every group, tail; before the first group of each recorded range [s, e) it keeps the
hidden state, after the group ending at e it stores Δ = h_e - h_s (paper Eq. 3, the underlined term).
Cached step: head; groups outside the cached range run; where the range starts, Δ is added instead of
running its groups; tail. Decisions come only from the plan, never from tensor values, so a step has
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
        """Run plan step ``index`` (0-based) on the head's input ``feeds``; return the tail's outputs."""
        action = self.plan.steps[index]
        run, rt = self.runner.infer, self.runner
        head = run(self.head.name, feeds)
        h = head["hidden_states"]
        if action.cached is None:
            if index == 0:
                self.reset()
            starts = {s for s, _ in action.record}
            marks = {}
            for g in self.groups:
                start, stop = g.block_range
                if start in starts:
                    marks[start] = h
                h = run(g.name, {**head, "hidden_states": h})["hidden_states"]
                for s, e in action.record:
                    if e == stop:
                        self.deltas[(s, e)] = rt.sub(h, marks[s])
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
                    h = rt.add(h, self.deltas[(s, e)])
                if s <= start < e:
                    continue
                h = run(g.name, {**head, "hidden_states": h})["hidden_states"]
        return run(self.tail.name, {**head, "hidden_states": h})
