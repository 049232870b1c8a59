"""The executor on dummy blocks with known arithmetic (no model): block i adds (i + 1) * t to the image
stream and 10 * (i + 1) * t to the context stream, t being the step's timestep. A full step records
Δ = (sum over the range) * t_full; a cached step therefore yields the sum outside the range at its own t
plus the range's sum at the t of the full step that recorded it. One stream and two streams (the
second ending early, like SD3's context), interval N = 3 (one full step records two ranges)."""

import pytest
import torch

from deltadit.models.spec import Segment
from deltadit.plan import build_plan
from deltadit.runtime.executor import DeltaDiTExecutor
from deltadit.runtime.runners.base import Runner

BLOCKS = 8


class ArithmeticRunner(Runner):
    def __init__(self, segments, calls):
        super().__init__(segments)
        self.calls = calls

    def _infer_impl(self, seg, feeds):
        self.calls.append(seg.name)
        t = feeds["timestep"] if seg.kind == "head" else feeds.get("t")
        if seg.kind == "head":
            return {"hidden_states": feeds["sample"].clone(), "context": feeds["sample"].clone() * 0, "t": t}
        if seg.kind == "tail":
            return {"sample": feeds["hidden_states"]}
        s, e = seg.block_range
        blocks = torch.arange(s, e, dtype=torch.float64) + 1
        out = {"hidden_states": feeds["hidden_states"] + blocks.sum() * t}
        if "context" in seg.outputs:
            out["context"] = feeds["context"] + 10 * blocks.sum() * t
        return out


def segments(plan, streams, context_ends=None):
    segs = [Segment("head", "head", None, ("sample", "timestep"), streams + ("t",))]
    for g in plan.groups:
        alive_in = tuple(x for x in streams if x == "hidden_states" or context_ends is None or g.start < context_ends)
        alive_out = tuple(x for x in streams if x == "hidden_states" or context_ends is None or g.stop <= context_ends)
        segs.append(Segment(g.name, "group", (g.start, g.stop), alive_in + ("t",), alive_out))
    segs.append(Segment("tail", "tail", None, ("hidden_states",), ("sample",)))
    return tuple(segs)


def expected(plan, index, ts, x0):
    """The image stream after step ``index``, from the Δ-Cache rule written out."""
    step = plan.steps[index]
    total = sum(range(1, BLOCKS + 1))
    if step.cached is None:
        return x0 + total * ts[index]
    s, e = step.cached
    full = max(i for i in range(index) if plan.steps[i].cached is None)
    inside = sum(range(s + 1, e + 1))
    return x0 + (total - inside) * ts[index] + inside * ts[full]


@pytest.mark.parametrize("streams", [("hidden_states",), ("hidden_states", "context")], ids=["one", "two"])
@pytest.mark.parametrize("variant", ["delta-dit", "shallow", "middle", "deep"])
def test_cached_steps_add_the_recorded_delta_per_stream(streams, variant):
    plan = build_plan(9, BLOCKS, 6, 5, interval=3, variant=variant)
    if variant == "delta-dit":  # N = 3 and b = 5: the full step t = 4 records the deep and the shallow range
        assert plan.steps[3].record == ((2, 8), (0, 6))
    calls = []
    segs = segments(plan, streams, context_ends=BLOCKS - 1 if len(streams) > 1 else None)  # context ends early
    ex = DeltaDiTExecutor(plan, segs, ArithmeticRunner(segs, calls))
    ts = [torch.tensor(float(100 - 7 * i), dtype=torch.float64) for i in range(plan.num_steps)]
    x0 = torch.zeros(1, dtype=torch.float64)
    for i in range(plan.num_steps):
        calls.clear()
        got = ex.step(i, {"sample": x0, "timestep": ts[i]})["sample"]
        assert torch.equal(got, expected(plan, i, ts, x0)), (variant, i)
        if plan.steps[i].cached is not None:  # the cached groups did not run
            s, e = plan.steps[i].cached
            assert not any(g.name in calls for g in plan.groups if s <= g.start < e)
    for (s, e), delta in ex.deltas.items():  # a range ending at the last block carries no context Δ
        assert set(delta) == ({"hidden_states"} if e == BLOCKS or len(streams) == 1 else {"hidden_states", "context"})


def test_two_streams_each_get_their_own_delta():
    plan = build_plan(4, BLOCKS, 4, 0, interval=2, variant="shallow")  # cached [0, 4) at step 2
    segs = segments(plan, ("hidden_states", "context"))
    ex = DeltaDiTExecutor(plan, segs, ArithmeticRunner(segs, []))
    ts = [torch.tensor(v, dtype=torch.float64) for v in (10.0, 3.0, 5.0, 1.0)]
    x0 = torch.zeros(1, dtype=torch.float64)
    ex.step(0, {"sample": x0, "timestep": ts[0]})
    assert torch.equal(ex.deltas[(0, 4)]["hidden_states"], x0 + 10 * 10.0)
    assert torch.equal(ex.deltas[(0, 4)]["context"], x0 + 100 * 10.0)
    with pytest.raises(Exception, match=r"no Δ recorded"):
        DeltaDiTExecutor(plan, segs, ArithmeticRunner(segs, [])).step(1, {"sample": x0, "timestep": ts[1]})
