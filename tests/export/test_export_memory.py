"""The export's memory: no FP copy of the model for INT8, every PyTorch weight dropped once its segment's
ONNX is written, one ONNX Runtime session at a time in the check stage (benchmarks/export_memory.py
measures the peak RSS per stage at full size)."""

import gc
import weakref

import pytest
import torch

pytest.importorskip("onnxruntime")

import deltadit.export.pipeline as pipeline
from deltadit.export.quantize import GroupRecorder
from deltadit.models import split
from deltadit.plan import build_plan
from tests.conftest import build_pixart
from tests.export.test_bundle import BLOCKS, STEPS, tiny_preset

PLAN = build_plan(STEPS, BLOCKS, 3, 12, 2, "delta-dit")


def _watch_weights(monkeypatch) -> dict:
    """Weak references to every parameter of the split, taken right after split + trace, and the number
    of them still alive when the check stage (ONNX Runtime) starts."""
    seen = {"refs": [], "alive_at_check": None}
    original_split, original_check = pipeline.split_and_trace, pipeline.check_onnx

    def split_and_trace(*args, **kwargs):
        s, traced = original_split(*args, **kwargs)
        seen["refs"] = [weakref.ref(p) for m in s.modules.values() for p in m.parameters()]
        return s, traced

    def check_onnx(*args, **kwargs):
        gc.collect()
        seen["alive_at_check"] = sum(r() is not None for r in seen["refs"])
        return original_check(*args, **kwargs)

    monkeypatch.setattr(pipeline, "split_and_trace", split_and_trace)
    monkeypatch.setattr(pipeline, "check_onnx", check_onnx)
    return seen


def _watch_sessions(monkeypatch) -> list:
    """(held-out generation running, sessions alive) at every ONNX Runtime session the export creates."""
    import onnxruntime

    import deltadit.export.int8 as int8

    alive, created, state = weakref.WeakSet(), [], {"generation": False}
    original_session, original_final = onnxruntime.InferenceSession, int8.final_latents

    class Session(original_session):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            alive.add(self)
            created.append((state["generation"], len(alive)))

    def final_latents(*args, **kwargs):
        state["generation"] = True
        try:
            return original_final(*args, **kwargs)
        finally:
            state["generation"] = False

    monkeypatch.setattr(onnxruntime, "InferenceSession", Session)
    monkeypatch.setattr(int8, "final_latents", final_latents)
    return created


def _watch_traces(monkeypatch, seen: dict) -> list:
    """(parameters of the module traced, parameters of the split alive then) at every ONNX trace."""
    import deltadit.export.onnx as onnx_stage

    traced, original = [], onnx_stage._trace

    def trace(module, *args, **kwargs):
        gc.collect()
        traced.append((sum(p.numel() for p in module.parameters()), sum(r().numel() for r in seen["refs"] if r() is not None)))
        return original(module, *args, **kwargs)

    monkeypatch.setattr(onnx_stage, "_trace", trace)
    return traced


def test_export_traces_largest_last_drops_every_weight_and_checks_one_session_at_a_time(tmp_path, monkeypatch):
    seen, sessions = _watch_weights(monkeypatch), _watch_sessions(monkeypatch)
    traces = _watch_traces(monkeypatch, seen)
    pipeline.export_bundle(tiny_preset("pixart"), PLAN, tmp_path / "b", random_init=True, progress=False)
    assert len(seen["refs"]) > 0 and seen["alive_at_check"] == 0
    # the largest group's trace needs ~3x its weights on top: it comes last, when no other module is left
    assert [n for n, _ in traces] == sorted(n for n, _ in traces) and traces[-1][1] == traces[-1][0]
    assert len(sessions) == len(PLAN.groups) + 2 and all(n == 1 for _, n in sessions)  # every segment, one at a time


@pytest.mark.slow
def test_int8_export_quantizes_the_splits_own_groups_and_drops_them(tmp_path, monkeypatch):
    pytest.importorskip("modelopt.torch.quantization")
    from deltadit.export.quantize import Int8Options

    seen, sessions = _watch_weights(monkeypatch), _watch_sessions(monkeypatch)
    original = pipeline.calibrate_int8

    def calibrate_int8(transformer, s, *args, **kwargs):
        out = original(transformer, s, *args, **kwargs)
        before = {id(r()) for r in seen["refs"] if r() is not None}
        seen["copied"] = [n for m in s.modules.values() for n, p in m.named_parameters() if id(p) not in before]
        seen["quantized"] = any(type(m).__name__.startswith("Quant") for m in s.modules["blocks_00_03"].modules())
        return out

    monkeypatch.setattr(pipeline, "calibrate_int8", calibrate_int8)
    pipeline.export_bundle(tiny_preset("pixart"), PLAN, tmp_path / "q", random_init=True, progress=False,
                           int8=Int8Options(count=1, min_sqnr_db=-100.0))
    assert seen["quantized"] and seen["copied"] == []  # in place: the exported groups are the split's own weights
    assert len(seen["refs"]) > 0 and seen["alive_at_check"] == 0
    # check + guard one session at a time (each group's check, then its kernel probe); only the held-out
    # generation holds every segment's session, as the runtime does
    segments = len(PLAN.groups) + 2
    assert [n for gen, n in sessions if not gen] == [1] * (segments + len(PLAN.groups))
    assert [n for gen, n in sessions if gen] == list(range(1, segments + 1))


def test_recorder_keeps_each_sampled_input_with_the_groups_output_on_it():
    s = split(build_pixart(), PLAN.groups)
    name = next(seg.name for seg in s.segments if seg.kind == "group")
    seg = next(seg for seg in s.segments if seg.name == name)
    g = torch.Generator().manual_seed(0)
    calls = [[torch.randn(2, 16, 16, generator=g), torch.randn(2, 5, 16, generator=g), torch.randn(2, 96, generator=g),
              torch.zeros(2, 1, 5)] for _ in range(4)]
    with GroupRecorder(s, steps=4, keep=2) as rec:  # every 2nd call of each group is kept
        outs = [s.modules[name](*args) for args in calls]
    assert len(rec.samples[name]) == len(rec.references[name]) == 2
    for i, (feeds, ref) in zip((0, 2), zip(rec.samples[name], rec.references[name])):
        assert list(feeds) == list(seg.inputs) and list(ref) == list(seg.outputs)
        assert torch.equal(feeds["hidden_states"], calls[i][0]) and torch.equal(ref["hidden_states"], outs[i])
        outs[i].add_(1.0)  # what the executor does with an output later cannot reach the recorded copy
        assert not torch.equal(ref["hidden_states"], outs[i])
