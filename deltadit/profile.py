"""Where a bundle's step time goes, by operator kind (GEMMs, attention, normalisation, elementwise,
quantize): the engine's own profiler on one full step of the bundle's segments -- ONNX Runtime's
(``--backend onnxrt``, the default) or OpenVINO's per-node performance counters (``--backend openvino``,
which also name the kernel each node ran, e.g. ``brgemm_avx512_amx_I8``: whether AMX did the GEMMs).

    .venv/bin/python -m deltadit.profile BUNDLE [--repeats 3] [--backend openvino]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

# ONNX Runtime op type -> kind (everything else counts as "other").
KINDS = {
    "gemm": ("MatMul", "MatMulIntegerToFloat", "MatMulInteger", "Gemm", "FusedMatMul", "QLinearMatMul",
             "DynamicQuantizeMatMul", "FusedGemm", "Conv", "FusedConv"),
    "attention": ("MultiHeadAttention", "Attention", "Softmax"),
    "normalisation": ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                      "ReduceMean", "Sqrt", "Pow"),
    "quantize": ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"),
    "elementwise": ("Add", "Mul", "Sub", "Div", "Tanh", "Gelu", "FastGelu", "BiasGelu", "Erf", "Sigmoid", "Cast",
                    "Where", "Exp", "Neg", "Sin", "Cos"),
    "layout": ("Reshape", "Transpose", "Concat", "Slice", "Gather", "Unsqueeze", "Squeeze", "Shape", "Expand",
               "Split", "Tile", "Identity"),
}
# OpenVINO CPU plugin node types (after its own fusions) -> kind. "Subgraph" is a fused elementwise chain
# (its snippets), FakeQuantize the activations' quantization, Reorder a layout change.
OV_KINDS = {
    "gemm": ("FullyConnected", "FullyConnectedQuantizedLegacy", "FullyConnectedQuantized", "MatMul", "Convolution"),
    "attention": ("ScaledDotProductAttention", "MHA", "Softmax", "SoftMax"),
    "normalisation": ("MVN", "NormalizeL2", "RMS", "ReduceMean", "Sqrt", "Power"),
    "quantize": ("FakeQuantize",),
    "elementwise": ("Eltwise", "Subgraph", "Multiply", "Add", "Subtract", "Divide", "Gelu", "Tanh", "Convert", "Math",
                    "PowerStatic"),
    "layout": ("Reorder", "Reshape", "Transpose", "Concatenation", "Concat", "StridedSlice", "Gather", "Broadcast",
               "Split", "Tile", "ShapeOf", "Squeeze", "Unsqueeze"),
}
for kind, ops in OV_KINDS.items():
    KINDS[kind] = KINDS[kind] + tuple(op for op in ops if op not in KINDS[kind])
KIND_OF = {op: kind for kind, ops in KINDS.items() for op in ops}


def aggregate(events: list[dict]) -> dict:
    """{kind: microseconds} and {op type: microseconds} from ONNX Runtime profile events (node runs only)."""
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + float(e.get("dur", 0))
    return {"by_kind": by_kind(by_op), "by_op": by_op}


def by_kind(by_op: dict[str, float]) -> dict[str, float]:
    """{kind: microseconds} of {op type: microseconds} (either engine's op types; unknown ones: "other")."""
    kinds: dict[str, float] = {}
    for op, us in by_op.items():
        kinds[KIND_OF.get(op, "other")] = kinds.get(KIND_OF.get(op, "other"), 0.0) + us
    return kinds


def captured_inputs(bundle) -> dict:
    """{segment: its inputs} of one full step of ``bundle`` on example inputs (run on the bundle's runner)."""
    feeds = bundle.example_feeds()
    executor = bundle.uncached()
    executor.step(0, feeds)  # warm-up on the runner's own sessions; traces the segments' inputs below
    captured = {}
    runner = bundle.runner
    original = runner.infer

    def record(name, f):
        captured[name] = {k: v.clone() for k, v in f.items()}
        return original(name, f)

    runner.infer = record
    try:
        executor.step(0, feeds)
    finally:
        runner.infer = original
    return captured


def _arrays(entry, inputs: dict, wanted: set) -> dict:
    import torch

    dtypes = {i.name: getattr(torch, i.dtype) for i in entry.inputs}
    return {k: v.to(dtypes[k]).numpy() for k, v in inputs.items() if k in wanted}


def _add(total: dict, part: dict, repeats: int) -> None:
    for key in ("by_kind", "by_op"):
        for k, v in part[key].items():
            total[key][k] = total[key].get(k, 0.0) + v / repeats


def profile_bundle(bundle_path: str | Path, repeats: int = 3, backend: str = "onnxrt", **runner_options) -> dict:
    """Profile every segment of one full step on ``backend`` (CPU, the runner's graphs and settings;
    runner_options as for runtime.load, e.g. precision="f32" for OpenVINO)."""
    from deltadit import runtime

    bundle = runtime.load(bundle_path, backend=backend, **runner_options)
    captured = captured_inputs(bundle)
    profile = _profile_openvino if backend == "openvino" else _profile_onnxrt
    total = {"by_kind": {}, "by_op": {}, "kernels": {}}
    for seg in bundle.manifest.segments:
        profile(bundle, seg, captured[seg.name], repeats, total)
    return total


def _profile_onnxrt(bundle, seg, inputs: dict, repeats: int, total: dict) -> None:
    import onnxruntime as ort

    runner = bundle.runner
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / seg.name)
        if seg.name in runner.emulated_int8:  # the runner runs these dequantized on this CPU: profile the same
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
        sess = ort.InferenceSession(str(bundle.root / runner.graph_path(seg)), opts, providers=["CPUExecutionProvider"])
        arrays = _arrays(seg, inputs, {i.name for i in sess.get_inputs()})
        for _ in range(repeats):
            sess.run(None, arrays)
        _add(total, aggregate(json.loads(Path(sess.end_profiling()).read_text())), repeats)


def _profile_openvino(bundle, seg, inputs: dict, repeats: int, total: dict) -> None:
    """OpenVINO's performance counters of the runner's compiled settings, PERF_COUNT on."""
    import openvino as ov

    runner = bundle.runner
    config = {**runner.compile_config(seg), "PERF_COUNT": True}
    model = ov.Core().compile_model(str(bundle.root / seg.graph), runner.device_name, config)
    request = model.create_infer_request()
    arrays = _arrays(seg, inputs, {name for port in model.inputs for name in port.get_names()})
    request.infer(arrays)  # warm-up
    by_op: dict[str, float] = {}
    for _ in range(repeats):
        request.infer(arrays)
        for node in request.profiling_info:
            us = node.real_time.total_seconds() * 1e6
            if node.status == node.Status.EXECUTED and us > 0:
                by_op[node.node_type] = by_op.get(node.node_type, 0.0) + us
                total["kernels"][f"{node.node_type}: {node.exec_type}"] = \
                    total["kernels"].get(f"{node.node_type}: {node.exec_type}", 0.0) + us / repeats
    _add(total, {"by_kind": by_kind(by_op), "by_op": by_op}, repeats)


def format_profile(result: dict) -> str:
    all_us = sum(result["by_kind"].values()) or 1.0
    lines = ["| kind | ms per full step | share |", "|---|---|---|"]
    for kind, us in sorted(result["by_kind"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {kind} | {us / 1e3:.1f} | {100 * us / all_us:.1f} % |")
    lines += ["", "| op type | ms | share |", "|---|---|---|"]
    for op, us in sorted(result["by_op"].items(), key=lambda kv: -kv[1])[:12]:
        lines.append(f"| {op} | {us / 1e3:.1f} | {100 * us / all_us:.1f} % |")
    if result.get("kernels"):
        lines += ["", "| node type: kernel | ms | share |", "|---|---|---|"]
        for name, us in sorted(result["kernels"].items(), key=lambda kv: -kv[1])[:12]:
            lines.append(f"| {name} | {us / 1e3:.1f} | {100 * us / all_us:.1f} % |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from deltadit import validate
    from deltadit.cli import ArgumentParser, add_precision_arg, flag

    p = ArgumentParser(prog="python -m deltadit.profile", description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--repeats", type=flag(validate.integer, "--repeats", 1, validate.MAX_REPEATS, parse=int), default=3)
    p.add_argument("--backend", choices=("onnxrt", "openvino"), default="onnxrt", help="the engine to profile on")
    add_precision_arg(p)
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    problem = validate.backend_only("--precision", args.precision, args.backend, "openvino")
    if problem:
        p.error(problem)
    result = profile_bundle(args.bundle, args.repeats, args.backend,
                            **({"precision": args.precision} if args.precision else {}))
    print(format_profile(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
