"""FP32 ONNX vs INT8 QDQ ONNX block groups on ONNX Runtime CPU, side by side in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/int8_groups.py [--blocks 2] [--repeats 7]

PixArt-α 512 dimensions (hidden 1152, 16 heads, 1024 tokens, caption 120), random seeded weights,
batch 2 (the CFG batch). Exports one group of ``--blocks`` blocks twice with deltadit-export's stages
(FP32, and INT8 calibrated with the plan on), then times each group session on the same inputs:
warm-up runs, then the median of ``--repeats`` interleaved rounds; each ONNX group runs both as exported and
as the fused-attention variant ONNX Runtime loads by default (export/fuse.py). PyTorch eager fp32 and bf16 autocast of the
same FP group are timed alongside for reference. Prints a table and the ratios; --json writes them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def interleaved_medians(fns: dict, warmup: int, repeats: int) -> dict:
    """ms per call, median over ``repeats`` rounds; each round runs every variant once, so drift on a shared
    machine hits all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            tic = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - tic) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--calib-steps", type=int, default=4, help="steps of the calibration generation (random weights)")
    p.add_argument("--threads", type=int, default=0, help="ORT / torch intra-op threads (0 = default)")
    p.add_argument("--json", help="write the results here")
    return p.parse_args()


def export_pair(preset, plan, tmp: Path) -> float:
    """An FP32 and an INT8 bundle of the same seeded weights in tmp/fp and tmp/q; the seconds taken."""
    from deltadit.export.pipeline import export_bundle
    from deltadit.export.quantize import Int8Options

    tic = time.perf_counter()
    export_bundle(preset, plan, tmp / "fp", random_init=True, progress=False, build_engines=False)
    export_bundle(preset, plan, tmp / "q", random_init=True, progress=False, build_engines=False,
                  int8=Int8Options(count=1, min_sqnr_db=0.0))
    return time.perf_counter() - tic


def group_functions(preset, plan, tmp: Path, threads: int) -> dict:
    """name -> one call of the group on the same inputs: ONNX Runtime on each bundle's plain and fused
    graph, PyTorch eager fp32 and bf16 autocast."""
    import onnxruntime as ort
    import torch

    from deltadit.bundle import read_bundle
    from deltadit.export.load import load_transformer
    from deltadit.export.pipeline import trace_inputs
    from deltadit.models import split

    group = plan.groups[0].name
    model = load_transformer(preset, None, True, 0)
    s = split(model, plan.groups, (preset.latent_side // 2, preset.latent_side // 2))
    feeds = s.spec.example_inputs(s.config, 2, preset.text_len, preset.latent_side, torch.Generator().manual_seed(0))
    args_in, _ = trace_inputs(s, feeds)[group]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    fns = {}
    for name in ("fp", "q"):
        entry = read_bundle(tmp / name).segment(group)
        for suffix, rel in {"": entry.graph, "_mha": entry.ort_graph}.items():
            if rel is None:
                continue
            sess = ort.InferenceSession(str(tmp / name / rel), opts, providers=["CPUExecutionProvider"])
            wanted = {i.name for i in sess.get_inputs()}
            np_in = {k: v.numpy() for k, v in args_in.items() if k in wanted}
            fns[("ort_fp32" if name == "fp" else "ort_int8") + suffix] = lambda s=sess, f=np_in: s.run(None, f)
    module = s.modules[group]

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            module(*args_in.values())

    fns["torch_fp32"] = lambda: module(*args_in.values())
    fns["torch_bf16"] = bf16
    return fns


def report(args, results: dict, q_info: dict, group: str, export_s: float) -> None:
    import onnxruntime as ort
    import torch

    ref = results["ort_fp32"]
    print(f"{args.blocks} PixArt-α blocks at 512 px (1024 tokens, hidden 1152), batch 2, random init; "
          f"median of {args.repeats} after {args.warmup} warm-up; ORT {ort.__version__}, torch {torch.__version__}")
    print(f"{'variant':<28}{'ms':>10}{'speed-up vs ORT FP32':>24}")
    labels = {"ort_fp32": "ONNX Runtime FP32", "ort_fp32_mha": "  + fused attention", "ort_int8": "ONNX Runtime INT8 QDQ",
              "ort_int8_mha": "  + fused attention", "torch_fp32": "PyTorch eager fp32", "torch_bf16": "PyTorch bf16 autocast"}
    for k, label in labels.items():
        if k in results:
            print(f"{label:<28}{results[k]:>10.1f}{ref / results[k]:>23.2f}x")
    for k in ("fp32", "int8"):
        if f"ort_{k}_mha" in results:
            print(f"fused attention ({k}): {results[f'ort_{k}'] / results[f'ort_{k}_mha']:.2f}x on the group")
    k = q_info["kernels"][group]
    print(f"INT8 ratio (ORT FP32 / ORT INT8): {ref / results['ort_int8']:.2f}x; int8 kernels {k['int8_matmuls']}, "
          f"quantized-but-FP32 MatMuls {k['fp_matmuls_with_qdq']}; held-out SQNR {q_info['quality'][group]['sqnr_db']:.1f} dB "
          f"(export of both bundles {export_s:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"ms": results, "int8_vs_fp32": ref / results["ort_int8"],
                                               "kernels": k, "blocks": args.blocks, "repeats": args.repeats}, indent=2))


def main() -> None:
    args = parse_args()
    import torch

    from deltadit.bundle import read_bundle
    from deltadit.plan import build_plan
    from deltadit.presets import load_preset

    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_preset("pixart")
    preset = base.with_overrides(transformer={**base.transformer, "num_layers": args.blocks}, steps=args.calib_steps,
                                 nc=0, b=0)  # the preset's plan is not used: one uncached group below
    plan = build_plan(args.calib_steps, args.blocks, 0, 0, 2, "none")  # one group: all blocks
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export_s = export_pair(preset, plan, tmp)
        q_info = read_bundle(tmp / "q").int8
        fns = group_functions(preset, plan, tmp, args.threads)
        with torch.no_grad():
            results = interleaved_medians(fns, args.warmup, args.repeats)
    report(args, results, q_info, plan.groups[0].name, export_s)


if __name__ == "__main__":
    main()
