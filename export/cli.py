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
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--weights", help="local diffusers model folder or a hub id already in the local cache (default: the preset's source)")
    p.add_argument("--random-init", action="store_true", help="seeded random weights (speed work only; marked in the manifest)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, help="image size in pixels (default: the preset's)")
    p.add_argument("--max-batch", type=int, help="largest batch an engine must accept (default: the CFG batch)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--int8", action="store_true", help="INT8 block groups (not implemented yet)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.int8:
            raise DeltaDiTError("--int8 | INT8 export is not implemented yet. Expected: run without --int8 for an FP32 bundle.")
        preset, plan = plan_from_args(args)
        preset = preset.with_overrides(resolution=args.resolution)
        from deltadit.export.pipeline import export_bundle

        tic = time.perf_counter()
        report = export_bundle(preset, plan, Path(args.out), weights=args.weights, random_init=args.random_init,
                               seed=args.seed, opset=args.opset, max_batch=args.max_batch)
    except DeltaDiTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"bundle: {report.bundle}" + ("  [RANDOM-INIT WEIGHTS: for speed work only]" if args.random_init else ""))
    print(f"segments exported: {', '.join(report.exported) or '-'}; reused: {', '.join(report.reused) or '-'}")
    for name, outs in report.errors.items():
        worst = max(outs.values(), key=lambda e: e["rel"])
        size = sum(f.stat().st_size for f in (report.bundle / "onnx").glob(f"{name}.onnx*"))
        print(f"  {name:<14} {size / 2**20:9.1f} MiB   max rel err vs PyTorch {worst['rel']:.1e}")
    from deltadit.costs import format_macs, plan_costs
    from deltadit.models import get_spec

    spec = get_spec(preset.arch)
    costs = plan_costs(plan, spec.block_macs(preset.transformer, preset.text_len, preset.resolution), preset.cfg_batch)
    print(f"plan: {plan.variant}, {plan.num_steps} steps, b={plan.b}, N_c={plan.n_c}, N={plan.interval}; block MACs "
          f"{format_macs(costs.plan_macs)} vs {format_macs(costs.baseline_macs)} uncached (bound {costs.speedup_bound:.2f}x)")
    print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in report.seconds.items())
          + f"; total {time.perf_counter() - tic:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
