"""deltadit.profile: ONNX Runtime's profiler over one full step, summed by operator kind."""

import pytest

pytest.importorskip("onnxruntime")

from deltadit.profile import aggregate, format_profile, main, profile_bundle


def test_aggregate_sums_node_kernel_times_by_kind():
    events = [{"cat": "Node", "name": "a_kernel_time", "dur": 30, "args": {"op_name": "MatMul"}},
              {"cat": "Node", "name": "b_kernel_time", "dur": 10, "args": {"op_name": "Softmax"}},
              {"cat": "Node", "name": "b_fence_before", "dur": 99, "args": {"op_name": "Softmax"}},  # not a kernel
              {"cat": "Session", "name": "model_run", "dur": 1000},
              {"cat": "Node", "name": "c_kernel_time", "dur": 5, "args": {"op_name": "SomethingNew"}}]
    r = aggregate(events)
    assert r["by_kind"] == {"gemm": 30.0, "attention": 10.0, "other": 5.0}
    assert "| gemm | 0.0 | 66.7 % |" in format_profile(r)


def test_profile_a_bundle_step(tiny_bundle, capsys):
    bundle = tiny_bundle("pixart")  # the preset's plan: delta-dit
    r = profile_bundle(bundle, repeats=1)
    assert r["by_kind"]["gemm"] > 0 and r["by_op"].get("MultiHeadAttention", 0) > 0  # the fused graphs ran
    assert main([str(bundle), "--repeats", "1"]) == 0 and "| kind |" in capsys.readouterr().out


def test_profile_a_bundle_step_on_openvino(tiny_bundle, capsys):
    pytest.importorskip("openvino")
    bundle = tiny_bundle("pixart")
    r = profile_bundle(bundle, repeats=2, backend="openvino")
    assert r["by_kind"]["gemm"] > 0 and "MultiHeadAttention" not in r["by_op"]  # OpenVINO's own node types
    assert r["kernels"] and sum(r["kernels"].values()) == pytest.approx(sum(r["by_op"].values()))  # both per step
    assert main([str(bundle), "--repeats", "1", "--backend", "openvino"]) == 0
    assert "| node type: kernel |" in capsys.readouterr().out
    assert main([str(bundle), "--repeats", "1", "--backend", "openvino", "--precision", "bf16"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main([str(bundle), "--precision", "f32"])
    assert stop.value.code == 2
    assert "--precision | applies to --backend openvino, not onnxrt. Expected: drop --precision." in capsys.readouterr().err
