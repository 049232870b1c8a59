"""`deltadit-export`: load -> split -> ONNX -> check -> bundle."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from deltadit.cli import add_plan_args, plan_from_args
from deltadit.errors import DeltaDiTError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deltadit-export", description="Export a DiT with its Δ-DiT plan as an ONNX bundle.")
    add_plan_args(p)
    p.add_argument("--out", help="bundle folder to write (default bundles/MODEL, bundles/MODEL-int8 with --int8)")
    p.add_argument("--weights", help="local diffusers model folder or a hub id already in the local cache (default: the preset's source)")
    p.add_argument("--random-init", action="store_true", help="seeded random weights (speed work only; marked in the manifest)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, help="image size in pixels (default: the preset's)")
    p.add_argument("--max-batch", type=int, help="largest batch an engine must accept (default: the CFG batch)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-engines", action="store_true", help="do not build TensorRT engines even where TensorRT is available")
    p.add_argument("--no-fused-attention", action="store_true",
                   help="do not write the ONNX Runtime fused-attention graphs (<group>.ort.onnx)")
    q = p.add_argument_group("INT8 (NVIDIA ModelOpt; install the [int8] extra)")
    q.add_argument("--int8", action="store_true", help="quantize the block groups to INT8 (QDQ ONNX; TensorRT engines where available)")
    q.add_argument("--calibration", default="max", help="max | percentile | smoothquant (default max)")
    q.add_argument("--percentile", type=float, default=99.99, help="activation percentile for --calibration percentile")
    q.add_argument("--smoothquant-alpha", type=float, default=0.5, help="SmoothQuant alpha (default 0.5)")
    q.add_argument("--calib-count", type=int, default=4, help="calibration generations, one prompt / class each (default 4)")
    q.add_argument("--calib-prompts", help="text file, one calibration prompt per line (PixArt)")
    q.add_argument("--int8-min-sqnr", type=float, default=15.0, help="fail when a group's held-out SQNR is lower (dB, default 15)")
    return p


def int8_options(args):
    if not args.int8:
        return None
    try:
        import modelopt.torch.quantization  # noqa: F401 - availability check only
    except ImportError as e:
        raise DeltaDiTError(f"--int8 | NVIDIA ModelOpt does not import ({e}). Expected: pip install 'deltadit[int8]' "
                            "(nvidia-modelopt).") from None
    from deltadit.export.quantize import Int8Options

    prompts = None
    if args.calib_prompts:
        path = Path(args.calib_prompts)
        if not path.is_file():
            raise DeltaDiTError(f"--calib-prompts | {path} does not exist. Expected: a text file, one prompt per line.")
        prompts = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
        if not prompts:
            raise DeltaDiTError(f"--calib-prompts | {path} has no prompts. Expected: one prompt per line.")
    return Int8Options(calibration=args.calibration, percentile=args.percentile, alpha=args.smoothquant_alpha,
                       count=args.calib_count, prompts=prompts, seed=args.seed, min_sqnr_db=args.int8_min_sqnr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        int8 = int8_options(args)
        preset, plan = plan_from_args(args)
        preset = preset.with_overrides(resolution=args.resolution)
        from deltadit.export.pipeline import export_bundle

        tic = time.perf_counter()
        out = Path(args.out or f"bundles/{preset.name}{'-int8' if args.int8 else ''}")
        report = export_bundle(preset, plan, out, weights=args.weights, random_init=args.random_init,
                               seed=args.seed, opset=args.opset, max_batch=args.max_batch, int8=int8,
                               build_engines=not args.no_engines, fuse=not args.no_fused_attention)
    except DeltaDiTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"bundle: {report.bundle}" + ("  [RANDOM-INIT WEIGHTS: for speed work only]" if args.random_init else ""))
    print(f"segments exported: {', '.join(report.exported) or '-'}; reused: {', '.join(report.reused) or '-'}")
    import json

    fused = {s["name"]: s["ort_graph"]["fused_attention"]
             for s in json.loads((report.bundle / "manifest.json").read_text())["segments"] if s.get("ort_graph")}
    for name, outs in report.errors.items():
        worst = max(outs.values(), key=lambda e: e["rel"])
        size = sum(f.stat().st_size for f in (report.bundle / "onnx").glob(f"{name}.onnx*"))
        print(f"  {name:<14} {size / 2**20:9.1f} MiB   max rel err vs PyTorch {worst['rel']:.1e}"
              + (f"   ONNX Runtime graph: {fused[name]} attention(s) fused" if name in fused else ""))
    from deltadit.costs import format_macs, plan_costs
    from deltadit.models import get_spec

    spec = get_spec(preset.arch)
    costs = plan_costs(plan, spec.block_macs(preset.transformer, preset.text_len, preset.macs_resolution), preset.cfg_batch)
    print(f"plan: {plan.variant}, {plan.num_steps} steps, b={plan.b}, N_c={plan.n_c}, N={plan.interval}; block MACs "
          f"{format_macs(costs.plan_macs)} vs {format_macs(costs.baseline_macs)} uncached (bound {costs.speedup_bound:.2f}x)")
    if int8 is not None:
        import json

        info = json.loads((report.bundle / "manifest.json").read_text())["int8"]
        print(f"int8 ({int8.calibration} calibration, {info['calibration']['generations']} generations with the plan on; "
              f"conditioning: {info['calibration']['conditioning']}):")
        for name, q in info["quality"].items():
            k = info["kernels"][name]
            print(f"  {name:<14} SQNR {q['sqnr_db']:5.1f} dB  rel err {q['rel_err']:.2e} (on the group's change, "
                  f"{q['samples']} held-out inputs)  {len(info['quantized'][name])} linears INT8, "
                  f"ORT int8 kernels {k['int8_matmuls']}, quantized-but-FP32 MatMuls {k['fp_matmuls_with_qdq']}")
        f = info["final_latents"]
        print(f"  final latents vs FP after {f['steps']} steps: max rel err {f['max_rel_err']:.2e}, SQNR {f['sqnr_db']:.1f} dB")
    if report.engines.get("built"):
        print(f"TensorRT engines: {', '.join(report.engines['files'].values())}")
    else:
        print(report.engines.get("reason", ""))
    print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in report.seconds.items())
          + f"; total {time.perf_counter() - tic:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
