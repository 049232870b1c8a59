"""The export's memory: no FP copy of the model for INT8, every PyTorch weight dropped once its segment's
ONNX is written (benchmarks/export_memory.py measures the peak RSS per stage at full size)."""

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


def test_no_pytorch_weight_outlives_the_onnx_export(tmp_path, monkeypatch):
    seen = _watch_weights(monkeypatch)
    pipeline.export_bundle(tiny_preset("pixart"), PLAN, tmp_path / "b", random_init=True, progress=False)
    assert len(seen["refs"]) > 0 and seen["alive_at_check"] == 0


@pytest.mark.slow
def test_int8_export_quantizes_the_splits_own_groups_and_drops_them(tmp_path, monkeypatch):
    pytest.importorskip("modelopt.torch.quantization")
    from deltadit.export.quantize import Int8Options

    seen = _watch_weights(monkeypatch)
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
