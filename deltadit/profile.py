"""Where a bundle's step time goes on ONNX Runtime, by operator kind (GEMMs, attention, normalisation,
elementwise, quantize): ONNX Runtime's own profiler on one full step of the bundle's segments.

    .venv/bin/python -m deltadit.profile BUNDLE [--repeats 3]
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
KIND_OF = {op: kind for kind, ops in KINDS.items() for op in ops}


def aggregate(events: list[dict]) -> dict:
    """{kind: microseconds} and {op type: microseconds} from ONNX Runtime profile events (node runs only)."""
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + float(e.get("dur", 0))
    by_kind: dict[str, float] = {}
    for op, us in by_op.items():
        by_kind[KIND_OF.get(op, "other")] = by_kind.get(KIND_OF.get(op, "other"), 0.0) + us
    return {"by_kind": by_kind, "by_op": by_op}


def profile_bundle(bundle_path: str | Path, repeats: int = 3) -> dict:
    """Profile every segment of one full step (the bundle's ONNX Runtime graphs, CPU, all optimisations)."""
    import onnxruntime as ort
    import torch

    from deltadit import runtime

    bundle = runtime.load(bundle_path)
    ex = bundle.manifest.export
    feeds = bundle.spec.example_inputs(bundle.config, ex.opt_batch, ex.text_len, ex.latent_side,
                                       torch.Generator().manual_seed(0))
    executor = bundle.uncached()
    executor.step(0, feeds)  # warm-up on the runner's own sessions; traces the segments' inputs below
    captured = {}
    runner = bundle.runner
    original = runner.infer

    def record(name, f):
        captured[name] = {k: v.clone() for k, v in f.items()}
        return original(name, f)

    runner.infer = record
    executor.step(0, feeds)
    runner.infer = original
    total = {"by_kind": {}, "by_op": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for seg in bundle.manifest.segments:
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(tmp) / seg.name)
            if seg.name in runner.emulated_int8:  # the runner runs these dequantized on this CPU: profile the same
                opts.add_session_config_entry("session.disable_quant_qdq", "1")
            sess = ort.InferenceSession(str(bundle.root / runner.graph_path(seg)), opts, providers=["CPUExecutionProvider"])
            wanted = {i.name for i in sess.get_inputs()}
            dtypes = {i.name: getattr(torch, i.dtype) for i in seg.inputs}
            arrays = {k: v.to(dtypes[k]).numpy() for k, v in captured[seg.name].items() if k in wanted}
            for _ in range(repeats):
                sess.run(None, arrays)
            part = aggregate(json.loads(Path(sess.end_profiling()).read_text()))
            for key in ("by_kind", "by_op"):
                for k, v in part[key].items():
                    total[key][k] = total[key].get(k, 0.0) + v / repeats
    return total


def format_profile(result: dict) -> str:
    all_us = sum(result["by_kind"].values()) or 1.0
    lines = ["| kind | ms per full step | share |", "|---|---|---|"]
    for kind, us in sorted(result["by_kind"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {kind} | {us / 1e3:.1f} | {100 * us / all_us:.1f} % |")
    lines += ["", "| op type | ms | share |", "|---|---|---|"]
    for op, us in sorted(result["by_op"].items(), key=lambda kv: -kv[1])[:12]:
        lines.append(f"| {op} | {us / 1e3:.1f} | {100 * us / all_us:.1f} % |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from deltadit import validate
    from deltadit.cli import ArgumentParser, flag

    p = ArgumentParser(prog="python -m deltadit.profile", description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--repeats", type=flag(validate.integer, "--repeats", 1, validate.MAX_REPEATS, parse=int), default=3)
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    result = profile_bundle(args.bundle, args.repeats)
    print(format_profile(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
