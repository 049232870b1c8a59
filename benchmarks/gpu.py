"""The GPU check of issue 14: PyTorch (eager and, with --compile, torch.compile) vs the FP32 and FP16 bundles
on ONNX Runtime's CUDA execution provider, each with and without the Δ-DiT plan, in one interleaved run
(PixArt-α 512, all 28 blocks, random init).

    PYTHONPATH=... python benchmarks/gpu.py --out DIR [--rounds 5] [--layers N] [--compile] [--dtype fp16]

Exports (or reuses) an FP32 and an FP16 bundle with the preset's plan under --work, then runs `deltadit
bench`'s measurement on the GPU (deltadit.bench with device "cuda", a CUDA sync before each timer stops): in
each round every configuration's step paths, its bundle's segments and one whole 20-step loop (batch 1, CFG
batch 2), round-robin. That gives medians with min–max and, per step path of each bundle, the runtime's own
work (the step's time minus its segment calls, over the segments' sum). Then each configuration's final
latents against PyTorch fp32 uncached on the same noise. Refuses to report bundle rows whose sessions did
not all run on the CUDA provider (ONNX Runtime falls back to the CPU silently). Writes DIR/gpu.json and
DIR/gpu.md. Runs on CPU too (a smoke test with --layers 1), but its numbers are meant for a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def export(preset, plan, out: Path, precision: str) -> Path | None:
    """The bundle at ``out``, exported unless already there; None when a non-FP32 export fails."""
    from deltadit.export.pipeline import export_bundle

    if (out / "manifest.json").is_file():
        return out
    tic = time.perf_counter()
    try:
        export_bundle(preset, plan, out, random_init=True, build_engines=False, force=True, progress=False,
                      precision=precision)
    except Exception as e:  # noqa: BLE001 - report and go on with the other configurations
        if precision == "fp32":
            raise
        print(f"{precision} export failed, skipped: {type(e).__name__}: {str(e)[:300]}", flush=True)
        return None
    print(f"exported {precision} bundle in {time.perf_counter() - tic:.0f} s", flush=True)
    return out


def check_providers(configs, device: str) -> None:
    """Every bundle session on the CUDA provider, or stop before reporting (call after the sessions opened)."""
    for c in configs:
        if c.backend == "torch":
            continue
        used = sorted({s.get_providers()[0] for s in c.bundle.runner.sessions.values()})
        print(f"{c.name}: sessions run on {used}", flush=True)
        if device == "cuda" and used != ["CUDAExecutionProvider"]:
            raise SystemExit(f"{c.name}: sessions run on {used}, not (only) the CUDA provider")


def working(configs, device: str) -> list:
    """The configurations that run: each compiled PyTorch baseline's step paths and each bundle's segments
    under a non-default GPU launch, once (compiling / capturing them). One that fails (a CUDA graph ONNX
    Runtime or torch.compile cannot capture, say) is reported and left out; the others still run."""
    from deltadit.bench import time_paths, time_segments

    broken = set()
    for c in configs:
        runner = c.bundle.runner if c.backend != "torch" else None
        if (runner is None and "compile" not in c.name) or (runner is not None and runner.gpu_launch == "sync"):
            continue
        key = c.name if runner is None else id(c.bundle)
        try:
            if runner is None:
                time_paths(c.executor_factory(), c.bundle.example_feeds(device))
            elif key not in broken:
                time_segments(c.bundle, c.bundle.example_feeds(device))
        except Exception as e:  # noqa: BLE001 - report it and go on with the others
            print(f"{c.name}: left out, it failed: {type(e).__name__}: {str(e)[:400]}", flush=True)
            broken.add(key)
    return [c for c in configs if (c.name if c.backend == "torch" else id(c.bundle)) not in broken]


def final_errors(configs, device: str) -> dict:
    """Relative L2 of each configuration's final latents against PyTorch fp32 uncached, same noise."""
    from deltadit.baselines import UnmodifiedExecutor, torch_model
    from deltadit.bench import run_loop

    first = configs[0].bundle
    ref = run_loop(UnmodifiedExecutor(torch_model(first).to(device), first.plan), first, device=device).float().cpu()
    out, seen = {}, {}
    for c in configs:
        x = run_loop(c.executor, c.bundle, device=device).float().cpu()
        out[c.name] = {"rel_err_vs_torch_fp32": float((x - ref).norm() / ref.norm())}
        if c.backend != "torch":  # the same bundle and plan under another launch: should be the same numbers
            key = (str(c.bundle.root), c.cached)
            if key in seen:
                out[c.name]["rel_err_vs_first_launch"] = float((x - seen[key]).norm() / seen[key].norm())
            seen.setdefault(key, x)
    return out


def main() -> int:
    import torch

    from deltadit import bench
    from deltadit.bench_report import format_report
    from deltadit.runtime.cpu import machine
    from deltadit.presets import load_preset

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--layers", type=int)
    p.add_argument("--compile", action="store_true", help="add torch.compile (inductor), with and without the plan")
    p.add_argument("--work", default="bundles/gpu")
    p.add_argument("--precisions", default="fp32,fp16", help="bundles to export and run, comma-separated")
    p.add_argument("--gpu-launch", default="sync", help="the ONNX Runtime runner's launches, comma-separated: each "
                                                       "bundle runs once per launch (sync, async, graph)")
    p.add_argument("--compile-mode", help="torch.compile's mode for the compiled baselines, e.g. reduce-overhead "
                                          "(CUDA graphs); default: torch.compile's default")
    p.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"), help="PyTorch autocast dtype")
    p.add_argument("--export-only", action="store_true", help="export the bundles and stop (e.g. while the GPU's "
                                                                "onnxruntime is still being installed)")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    try:
        import onnxruntime as ort

        env.update(onnxruntime=ort.__version__, providers=ort.get_available_providers())
    except ImportError:
        pass
    print(env, flush=True)
    preset = load_preset("pixart").with_blocks(args.layers)
    plan = preset.plan()
    work = Path(args.work) / f"pixart-{preset.num_blocks}blocks"
    paths = [str(b) for b in (export(preset, plan, work / k, k) for k in args.precisions.split(",")) if b is not None]
    if args.export_only:
        return 0
    configs = bench.build_configs(paths, (args.dtype,), args.compile, ("onnxrt",), True, device,
                                  tuple(args.gpu_launch.split(",")), args.compile_mode)
    configs = working(configs, device)
    first = configs[0].bundle
    ex = first.manifest.export
    tic = time.perf_counter()
    bench.bench(configs, args.rounds, args.warmup, device=device, progress=False)
    check_providers(configs, device)  # sessions open on first use, in the warm-up
    summary = bench.summarize(configs, first.spec.block_macs(first.config, ex.text_len, ex.latent_side * 8), ex.opt_batch)
    summary.update({"env": env, "machine": machine(), "blocks": preset.num_blocks, "repeats": args.rounds,
                    "warmup": args.warmup, "bench_s": time.perf_counter() - tic,
                    "plan": {"variant": plan.variant, "b": plan.b, "n_c": plan.n_c, "interval": plan.interval}})
    write(args.out, summary, format_report(summary))  # the timings are kept even if the error check fails
    for name, errs in final_errors(configs, device).items():
        summary["configs"][name].update(errs)
    rows = [f"| {k} | {r['rel_err_vs_torch_fp32']:.2e} | {r.get('rel_err_vs_first_launch', float('nan')):.2e} |"
            for k, r in summary["configs"].items()]
    write(args.out, summary, format_report(summary) + "\n\n| configuration | final latents vs torch fp32, rel. L2 | vs the "
          "same bundle's first launch |\n|---|---|---|\n" + "\n".join(rows))
    return 0


def write(out: str, summary: dict, report: str) -> None:
    print(report, flush=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, "gpu.json").write_text(json.dumps(summary, indent=2))
    Path(out, "gpu.md").write_text(report + "\n")


if __name__ == "__main__":
    sys.exit(main())
