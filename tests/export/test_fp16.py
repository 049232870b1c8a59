"""--precision fp16: float16 block groups (for CUDA / TensorRT), float32 I/O, checked on ONNX Runtime CPU."""

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from deltadit import runtime
from deltadit.export.pipeline import export_bundle
from deltadit.manifest import Manifest
from deltadit.plan import build_plan
from deltadit.runtime import engines
from tests.export.test_bundle import BLOCKS, STEPS, generate, tiny_preset
from tests.export.test_export_cli import one_error_line, run_cli, write_tiny_toml

PLAN = build_plan(STEPS, BLOCKS, 3, 12, 2, "delta-dit")
GROUPS = ("blocks_00_03", "blocks_03_06")
FLOAT, HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module", params=["pixart", "dit"])
def bundles(request, tmp_path_factory):
    """(preset, FP32 bundle, FP16 bundle) of the same seeded tiny model."""
    root, preset = tmp_path_factory.mktemp(request.param), tiny_preset(request.param)
    export_bundle(preset, PLAN, root / "fp32", random_init=True, progress=False)
    export_bundle(preset, PLAN, root / "fp16", random_init=True, progress=False, precision="fp16")
    return preset, root / "fp32", root / "fp16"


def test_manifest_says_fp16_for_the_groups_only(bundles):
    _, _, fp16 = bundles
    m = json.loads((fp16 / "manifest.json").read_text())
    assert m["precision"] == "fp16" and m["export"]["fp16_tolerance"] == 1e-2
    assert {s["name"]: s["precision"] for s in m["segments"]} == {"head": "fp32", **dict.fromkeys(GROUPS, "fp16"),
                                                                 "tail": "fp32"}
    for s in m["segments"]:  # float32 at every boundary: the runners feed an FP16 bundle like an FP32 one
        assert {t["dtype"] for t in s["inputs"] + s["outputs"]} <= {"float32", "int64"}
        if s["precision"] == "fp16":  # each group's check ran at the fp16 tolerance and passed it
            assert 0 < max(e["rel"] for e in s["check"].values()) <= 1e-2
    assert Manifest.from_dict(m).segment(GROUPS[0]).precision == "fp16"


def _initializer_elements(path) -> dict:
    model = onnx.load(str(path))  # with the external data: every weight is counted
    out = {FLOAT: 0, HALF: 0}
    for t in model.graph.initializer:
        if t.data_type in out:
            out[t.data_type] += int(np.prod(t.dims))
    return out, model


@pytest.mark.parametrize("graph", ["{}.onnx", "{}.ort.onnx"])
def test_group_weights_are_float16_and_io_float32(bundles, graph):
    _, fp32, fp16 = bundles
    for name in GROUPS:
        counts, model = _initializer_elements(fp16 / "onnx" / graph.format(name))
        ref, _ = _initializer_elements(fp32 / "onnx" / graph.format(name))
        assert counts[HALF] >= 0.99 * ref[FLOAT] and counts[FLOAT] <= 0.01 * ref[FLOAT], (name, counts, ref)
        io = [v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)]
        assert HALF not in io and FLOAT in io
        # the matmuls run in fp16; DiT's sinusoidal timestep embedding (inside its blocks) does not
        dtypes = _value_types(model)
        assert {dtypes[n.input[0]] for n in model.graph.node if n.op_type == "MatMul"} == {HALF}
        assert {dtypes[n.input[0]] for n in model.graph.node if n.op_type in ("Sin", "Cos")} <= {FLOAT}


def _value_types(model) -> dict:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name: v.type.tensor_type.elem_type for v in values} | {t.name: t.data_type for t in model.graph.initializer}


def test_head_and_tail_stay_float32(bundles):
    _, _, fp16 = bundles
    for name in ("head", "tail"):
        counts, _ = _initializer_elements(fp16 / "onnx" / f"{name}.onnx")
        assert counts[HALF] == 0 and counts[FLOAT] > 0


def test_fp16_final_latents_close_to_fp32_on_onnxruntime_cpu(bundles):
    """20 steps with the plan; 1e-2 relative to the largest latent is 20 x fp16's unit roundoff (2^-11):
    one rounding of the largest value per step. Measured 9e-5 (PixArt) and 1.8e-3 (DiT). ONNX Runtime's
    CPU provider runs many fp16 nodes through float32 kernels (it inserts Casts), so this bounds the
    fp16 weights and the fp16 values between kernels, not fp16 arithmetic inside every op (a GPU's)."""
    preset, fp32, fp16 = bundles
    b32, b16 = runtime.load(fp32), runtime.load(fp16)
    ref = generate(b32.executor(), preset, b32.config)
    got = generate(b16.executor(), preset, b16.config)
    assert got.dtype == ref.dtype and bool(got.isfinite().all())
    rel = ((got - ref).abs().max() / ref.abs().max()).item()
    assert 0 < rel <= 1e-2, f"relative error of final latents {rel:.2e}"


def test_tensorrt_builds_fp16_groups_with_fp16_enabled(bundles):
    _, _, fp16 = bundles
    manifest = runtime.load(fp16).manifest
    planned = engines.plan_engines(manifest, "10.3.0", (8, 9))
    assert all(planned[name][2] == ["FP16"] for name in GROUPS)


@pytest.mark.parametrize("flags, message", [
    (["--precision", "bf16"], "--precision | 'bf16' is unknown. Expected: one of fp32, fp16"),
    (["--precision", "fp16", "--int8"], "--precision fp16 | cannot be combined with --int8. Expected: --int8 alone"),
])
def test_bad_precision_is_one_line_error_before_any_work(tmp_path, capsys, monkeypatch, flags, message):
    import deltadit.export.pipeline as pipeline

    monkeypatch.setattr(pipeline, "load", lambda *a, **k: pytest.fail("the export started"))
    code, out, err = run_cli(capsys, "--model", write_tiny_toml(tmp_path), "--random-init", "--out", tmp_path / "b",
                             *flags)
    assert code == 2 and out == ""
    assert one_error_line(err).startswith("error: " + message)


def test_duplicate_casts_from_the_float16_converter_are_merged_and_conflicts_refused():
    """ONNX Runtime's converter emitted one `<t>_cast_to_fp32` Cast per consumer on torch 2.11's PixArt
    graph (an H200 run): the export failed ONNX's SSA check. Exact repeats are dropped; a tensor written
    by two different nodes is an error."""
    from onnx import helper as h

    from deltadit.export.onnx import _drop_duplicate_nodes

    cast = dict(op_type="Cast", inputs=["a"], outputs=["a_cast_to_fp32"], to=FLOAT)
    nodes = [h.make_node(**cast), h.make_node("Sqrt", ["a_cast_to_fp32"], ["s"]), h.make_node(**cast),
             h.make_node("Exp", ["a_cast_to_fp32"], ["e"])]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("a", HALF, [2])], [])
    _drop_duplicate_nodes(graph)
    assert [n.op_type for n in graph.node] == ["Cast", "Sqrt", "Exp"]
    graph.node.append(h.make_node("Cast", ["a"], ["a_cast_to_fp32"], to=HALF))
    with pytest.raises(ValueError, match="a_cast_to_fp32 is produced by two different nodes"):
        _drop_duplicate_nodes(graph)
