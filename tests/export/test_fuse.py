"""The ONNX Runtime fused graph variant: attention and GELU (export/fuse.py)."""

import json

from deltadit.bundle import read_bundle
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from deltadit import runtime
from deltadit.errors import DeltaDiTError
from deltadit.export.fuse import count_ops, fuse_for_ort
from deltadit.export.pipeline import export_bundle
from deltadit.plan import build_plan
from tests.export.test_bundle import BLOCKS, STEPS, generate, tiny_preset


@pytest.fixture(params=["pixart", "dit"])
def bundle(request, tiny_bundle):
    return request.param, tiny_bundle(request.param)  # the delta-dit plan; shared, never changed in place


def test_groups_get_a_fused_graph_with_one_mha_per_self_attention(bundle):
    arch, root = bundle
    m = json.loads((root / "manifest.json").read_text())
    for seg in m["segments"]:
        if seg["kind"] != "group":
            assert "ort_graph" not in seg  # head and tail have no attention
            continue
        blocks = seg["block_range"][1] - seg["block_range"][0]
        fused = root / seg["ort_graph"]["path"]
        assert seg["ort_graph"]["fused_attention"] == blocks
        assert count_ops(fused, "MultiHeadAttention") == blocks
        assert seg["ort_graph"]["fused_gelu"] == count_ops(fused, "FastGelu") == blocks  # one per feed-forward
        assert count_ops(fused, "Tanh") == 0 and count_ops(root / seg["files"][0]["path"], "Tanh") == blocks
        # PixArt's cross-attention carries the caption mask and stays unfused; DiT has none
        assert count_ops(fused, "Softmax") == (blocks if arch == "pixart" else 0)
        assert count_ops(root / seg["files"][0]["path"], "Softmax") == blocks * (2 if arch == "pixart" else 1)
        assert seg["ort_graph"]["path"] in {f["path"] for f in seg["files"]}  # under the integrity check


def test_fused_and_standard_graphs_agree_and_the_default_is_fused(bundle):
    arch, root = bundle
    fused, plain = runtime.load(root), runtime.load(root, fused_attention=False)
    assert fused.runner.fused_attention and not plain.runner.fused_attention
    preset = tiny_preset(arch)
    a = generate(fused.executor(), preset, fused.config)
    b = generate(plain.executor(), preset, plain.config)
    rel = float((a - b).abs().max() / b.abs().max())
    assert rel < 1e-5, rel


def test_tensorrt_provider_opens_the_standard_graph(bundle):
    from deltadit.runtime.runners.onnxrt import OnnxrtRunner

    _, root = bundle
    m = read_bundle(root)
    group = next(s for s in m.segments if s.kind == "group")
    trt = OnnxrtRunner(root, m, (), providers=["TensorrtExecutionProvider", "CPUExecutionProvider"])
    cpu = OnnxrtRunner(root, m, ())
    assert trt.graph_path(group) == group.files[0].path == f"onnx/{group.name}.onnx"
    assert cpu.graph_path(group) == group.ort_graph == f"onnx/{group.name}.ort.onnx"


def test_a_changed_fused_graph_fails_the_integrity_check(bundle, tmp_path):
    _, root = bundle
    copy = tmp_path / "b"
    shutil.copytree(root, copy)
    m = json.loads((copy / "manifest.json").read_text())
    fused = copy / next(s for s in m["segments"] if s["kind"] == "group")["ort_graph"]["path"]
    fused.write_bytes(fused.read_bytes() + b"\0")
    with pytest.raises(DeltaDiTError, match="sha256 does not match"):
        runtime.load(copy)


def test_graph_without_attention_or_gelu_is_left_alone(bundle, tmp_path):
    _, root = bundle
    shutil.copytree(root / "onnx", tmp_path / "onnx")
    tail = tmp_path / "onnx" / "tail.onnx"  # final norm, projection, unpatchify
    assert fuse_for_ort(tail, tail.with_name("tail.ort.onnx")) == {"fused_attention": 0, "fused_gelu": 0}
    assert not tail.with_name("tail.ort.onnx").exists()


def test_fused_graph_must_sit_next_to_its_weights(bundle, tmp_path):
    _, root = bundle
    m = json.loads((root / "manifest.json").read_text())
    src = root / next(s for s in m["segments"] if s["kind"] == "group")["files"][0]["path"]
    with pytest.raises(ValueError, match="must be next to"):
        fuse_for_ort(src, tmp_path / "elsewhere.onnx")


def test_explicit_scale_constants_become_the_scale_attribute(tmp_path):
    """A hand-built attention whose q and k are scaled by constants (not SDPA's default): the fused node
    must carry their product, and match the unfused graph numerically."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    B, S, H, D = 2, 6, 2, 4
    E = H * D
    init = [numpy_helper.from_array(np.array([B, -1, H, D], np.int64), "s4"),
            numpy_helper.from_array(np.array([B, -1, E], np.int64), "s3"),
            numpy_helper.from_array(np.array(0.7, np.float32), "cq"),
            numpy_helper.from_array(np.array(0.3, np.float32), "ck")]
    nodes = []
    for n, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [helper.make_node("Reshape", [n, "s4"], [n + "r"]), helper.make_node("Transpose", [n + "r"], [n + "t"], perm=perm)]
    nodes += [helper.make_node("Mul", ["qt", "cq"], ["qs"]), helper.make_node("Mul", ["kt", "ck"], ["ks"]),
              helper.make_node("MatMul", ["qs", "ks"], ["scores"]), helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vt"], ["ctx"]), helper.make_node("Transpose", ["ctx"], ["ctxt"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ctxt", "s3"], ["out"])]
    graph = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [B, S, E]) for n in "qkv"],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [B, S, E])], initializer=init)
    src = tmp_path / "attn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(src))
    dst = tmp_path / "attn.ort.onnx"
    assert fuse_for_ort(src, dst) == {"fused_attention": 1, "fused_gelu": 0}
    node = next(n for n in onnx.load(str(dst)).graph.node if n.op_type == "MultiHeadAttention")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["num_heads"] == H and attrs["scale"] == pytest.approx(0.21)
    feeds = {n: np.random.default_rng(i).standard_normal((B, S, E)).astype(np.float32) for i, n in enumerate("qkv")}
    ref, got = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0] for p in (src, dst))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_export_without_fusion_writes_only_standard_graphs(tmp_path):
    export_bundle(tiny_preset("pixart"), build_plan(STEPS, BLOCKS, 3, 12, 2, "delta-dit"), tmp_path / "b",
                  random_init=True, progress=False, fuse=False)
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert not any("ort_graph" in s for s in m["segments"])
    assert not list((tmp_path / "b" / "onnx").glob("*.ort.onnx"))
    b = runtime.load(tmp_path / "b")
    assert b.runner.graph_path(b.manifest.segments[1]) == m["segments"][1]["files"][0]["path"]


def _gelu_graph(tmp_path, form: str):
    """A hand-built tanh GELU of x = a + b, spelled as exporters write it. form: "x-then-half"
    (Mul(Mul(1 + t, x), 0.5), the legacy exporter's order), "half-x" (Mul(1 + t, 0.5 * x)), or "pow"
    (x^3 as Pow(x, 3)); "shared" is x-then-half with the cube also used as a graph output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    consts = {"c3": 3.0, "k": 0.044715, "s": 0.7978845608028654, "one": 1.0, "half": 0.5}
    init = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in consts.items()]
    nodes = [helper.make_node("Add", ["a", "b"], ["x"])]
    if form == "pow":
        nodes.append(helper.make_node("Pow", ["x", "c3"], ["x3"]))
    else:
        nodes += [helper.make_node("Mul", ["x", "x"], ["x2"]), helper.make_node("Mul", ["x", "x2"], ["x3"])]
    nodes += [helper.make_node("Mul", ["k", "x3"], ["kx3"]), helper.make_node("Add", ["x", "kx3"], ["in"]),
              helper.make_node("Mul", ["s", "in"], ["sin"]), helper.make_node("Tanh", ["sin"], ["t"]),
              helper.make_node("Add", ["t", "one"], ["t1"])]
    if form == "half-x":
        nodes += [helper.make_node("Mul", ["x", "half"], ["hx"]), helper.make_node("Mul", ["t1", "hx"], ["y"])]
    else:
        nodes += [helper.make_node("Mul", ["x", "t1"], ["xt"]), helper.make_node("Mul", ["half", "xt"], ["y"])]
    shape = [2, 3, 8]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)]
    if form == "shared":
        outputs.append(helper.make_tensor_value_info("x3", TensorProto.FLOAT, shape))
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "ab"],
                              outputs, initializer=init)
    src = tmp_path / f"gelu-{form}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(src))
    return src


def test_tanh_gelu_in_each_spelling_becomes_one_fastgelu(tmp_path):
    import onnxruntime as ort
    from deltadit.export.fuse import fuse_for_ort

    feeds = {n: np.random.default_rng(i).standard_normal((2, 3, 8)).astype(np.float32) * 3 for i, n in enumerate("ab")}
    for form in ("x-then-half", "half-x", "pow"):
        src = _gelu_graph(tmp_path, form)
        dst = src.with_name(src.stem + ".ort.onnx")
        assert fuse_for_ort(src, dst) == {"fused_attention": 0, "fused_gelu": 1}, form
        assert count_ops(dst, "FastGelu") == 1 and count_ops(dst, "Tanh") == 0
        assert [n for n in ("Mul", "Pow") if count_ops(dst, n)] == []  # the decomposition is gone
        ref, got = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0] for p in (src, dst))
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_gelu_whose_parts_have_other_users_is_left_alone(tmp_path):
    from deltadit.export.fuse import fuse_for_ort

    src = _gelu_graph(tmp_path, "shared")  # x^3 is also a graph output: fusing would save nothing
    dst = src.with_name("shared.ort.onnx")
    assert fuse_for_ort(src, dst) == {"fused_attention": 0, "fused_gelu": 0}
    assert not dst.exists()
