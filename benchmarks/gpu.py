"""The GPU check of issue 14: PyTorch fp16 vs the bundle on ONNX Runtime's CUDA execution provider,
each with and without the Δ-DiT plan, in one interleaved run (PixArt-α 512, all 28 blocks, random init).

    PYTHONPATH=... python benchmarks/gpu.py --out DIR [--rounds 3] [--layers N] [--compile]

Exports (or reuses) an FP32 and an FP16 bundle with the preset's plan under bundles/gpu/, then times
whole 20-step loops (batch 1, CFG batch 2) of every configuration, round-robin, with a CUDA sync at the
end of each loop, and checks the FP16 bundle's final latents against PyTorch fp32 on the same noise.
Writes DIR/gpu.json and prints a table (median and min–max per configuration). Runs on CPU too (for a
smoke test with --layers 2), but its numbers are meant for a CUDA GPU.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
from pathlib import Path


def export(preset, plan, out: Path, precision: str) -> Path:
    from deltadit.export.pipeline import export_bundle

    if not (out / "manifest.json").is_file():
        kwargs = {"precision": precision} if precision != "fp32" else {}
        if kwargs and "precision" not in inspect.signature(export_bundle).parameters:
            return None
        tic = time.perf_counter()
        try:
            export_bundle(preset, plan, out, random_init=True, build_engines=False, force=True, progress=False, **kwargs)
        except Exception as e:  # noqa: BLE001 - report and go on with the other configurations
            if precision == "fp32":
                raise
            print(f"{precision} export failed, skipped: {type(e).__name__}: {str(e)[:300]}", flush=True)
            return None
        print(f"exported {precision} bundle in {time.perf_counter() - tic:.0f} s", flush=True)
    return out


def configs(bundles: dict, device: str, compile_: bool, dtype: str) -> dict:
    """name -> executor factory. PyTorch ones run the same seeded weights the exporter used."""
    import torch

    from deltadit.baselines import UnmodifiedExecutor, torch_model as _torch_model
    from deltadit.runtime import load, pytorch_executor

    providers = ["CUDAExecutionProvider"] if device == "cuda" else None
    loaded = {k: load(p, providers=providers) for k, p in bundles.items() if p is not None}
    first = loaded["fp32"]
    model = _torch_model(first).to(device)
    plan = first.plan
    ac = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[dtype]
    out = {
        f"torch-{dtype}": lambda: UnmodifiedExecutor(model, plan, ac),
        f"torch-{dtype}+{plan.variant}": lambda: pytorch_executor(model, plan, autocast=ac),
    }
    for k, b in loaded.items():
        out[f"ort-{device} {k}"] = b.uncached
        out[f"ort-{device} {k}+{plan.variant}"] = b.executor
    if compile_:
        compiled = UnmodifiedExecutor(torch.compile(model), plan, ac)
        out[f"torch-compile-{dtype}"] = lambda: compiled
    return out, first, model, loaded


def loop(executor, bundle, device: str, seed: int = 0):
    import torch

    from deltadit.runtime.sampling import from_manifest, sample

    cond, uncond = bundle.spec.random_condition(bundle.config, bundle.manifest.export.text_len, 1, 2,
                                                torch.Generator().manual_seed(seed + 1))
    x = sample(executor, bundle.spec, bundle.config, from_manifest(bundle.manifest), cond, uncond, seed, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    return x.float().cpu()


def main() -> int:
    import torch

    from deltadit.presets import load_preset

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--layers", type=int)
    p.add_argument("--compile", action="store_true", help="add torch.compile (inductor) fp16")
    p.add_argument("--work", default="bundles/gpu")
    p.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"), help="PyTorch autocast dtype")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    try:
        import onnxruntime as ort

        env.update(onnxruntime=ort.__version__, providers=ort.get_available_providers())
    except ImportError:
        pass
    print(env, flush=True)
    preset = load_preset("pixart")
    if args.layers:
        nb = preset.num_blocks
        preset = preset.with_overrides(transformer={**preset.transformer, "num_layers": args.layers},
                                       nc=round(preset.nc * args.layers / nb))
    plan = preset.plan()
    work = Path(args.work) / f"pixart-{preset.num_blocks}blocks"
    bundles = {k: export(preset, plan, work / k, k) for k in ("fp32", "fp16")}
    table, first, model, loaded = configs(bundles, device, args.compile, args.dtype)
    times = {k: [] for k in table}
    finals = {}
    for k, make in table.items():  # warm-up: sessions, cuDNN / cuBLAS autotuning, compilation
        tic = time.perf_counter()
        finals[k] = loop(make(), first, device)
        print(f"warm-up {k}: {time.perf_counter() - tic:.2f} s", flush=True)
    for k, b in loaded.items():  # ONNX Runtime falls back to CPU silently when the CUDA provider fails to load
        used = sorted({s.get_providers()[0] for s in b.runner.sessions.values()})
        print(f"{k} bundle: sessions run on {used}", flush=True)
        if device == "cuda" and used != ["CUDAExecutionProvider"]:
            raise SystemExit(f"{k} bundle: sessions run on {used}, not (only) the CUDA provider")
    for r in range(args.rounds):
        for k, make in table.items():
            ex = make()
            tic = time.perf_counter()
            loop(ex, first, device)
            times[k].append(time.perf_counter() - tic)
        print(f"round {r + 1} done: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()), flush=True)
    from deltadit.baselines import UnmodifiedExecutor

    ref = loop(UnmodifiedExecutor(model, first.plan), first, device)  # fp32, uncached: the reference
    result = {"env": env, "blocks": preset.num_blocks, "plan": {"variant": plan.variant, "b": plan.b, "n_c": plan.n_c, "interval": plan.interval},
              "rounds": args.rounds, "configs": {}}
    base = statistics.median(times[f"torch-{args.dtype}"])
    for k, v in times.items():
        err = float((finals[k] - ref).norm() / ref.norm())
        result["configs"][k] = {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v),
                                "vs_torch_" + args.dtype: base / statistics.median(v), "rel_err_vs_torch_fp32": err}
        print(f"| {k} | {statistics.median(v):.3f} ({min(v):.3f}–{max(v):.3f}) | {base / statistics.median(v):.2f}x | {err:.2e} |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "gpu.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
