"""C++ vs Python generation loop on one bundle, side by side in one run.

Same bundle, conditioning and initial noise; rounds interleaved (Python, C++, Python, C++, ...) after one
warm-up each. Prints per-side medians with min-max, and the C++ runtime's own work per step (everything
outside ONNX Runtime's Run: scheduler, CFG, Δ arithmetic, tensor copies) as a fraction of segment time.

    .venv/bin/python benchmarks/cpp_vs_python.py BUNDLE [--rounds 5] [--json out.json]

Needs the C++ build (tests/cpp builds it into build/cpp; or cmake -S runtime/cpp -B build/cpp -G Ninja).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} s ({min(values):.3f}-{max(values):.3f})"


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from deltadit import runtime
    from deltadit.runtime.sampling import from_manifest, sample
    from tests.cpp.cpp_build import CppRuntime, build

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    lib = CppRuntime(build(ROOT / "build" / "cpp") / "libdeltadit.so")
    py = runtime.load(args.bundle)
    cond, uncond = py.spec.random_condition(py.config, py.manifest.export.text_len, 0, 1, torch.Generator().manual_seed(3))
    shape = py.manifest.driver.noise_shape
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed)).numpy()
    handle = lib.open(args.bundle)

    def run_python():
        t = time.perf_counter()
        out = sample(py.executor(), py.spec, py.config, from_manifest(py.manifest), cond, uncond, args.seed)
        return time.perf_counter() - t, out.numpy()

    def run_cpp():
        t = time.perf_counter()
        out, times = lib.generate(handle, cond=cond, uncond=uncond, noise=noise, seed=args.seed)
        return time.perf_counter() - t, out, times

    run_python(), run_cpp()  # warm-up: first-run allocations on both sides
    py_s, cpp_s, own, seg = [], [], [], []
    for _ in range(args.rounds):
        a, want = run_python()
        b, got, times = run_cpp()
        py_s.append(a)
        cpp_s.append(b)
        seg.append(times["segments"])
        own.append((times["total"] - times["segments"]) / times["segments"])
    steps = py.manifest.sampling.steps
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    result = {"bundle": str(args.bundle), "steps": steps, "rounds": args.rounds, "python_s": py_s, "cpp_s": cpp_s,
              "cpp_segments_s": seg, "cpp_own_fraction": own, "max_rel_diff": rel}
    print(f"{args.bundle} ({py.manifest.model.arch}, {steps} steps, plan {py.plan.variant}), {args.rounds} interleaved rounds")
    print(f"  Python loop  {spread(py_s)}")
    print(f"  C++ loop     {spread(cpp_s)}   (inside ONNX Runtime: {spread(seg)})")
    print(f"  C++ own work per step: {100 * statistics.median(own):.3f} % of segment time "
          f"({100 * min(own):.3f}-{100 * max(own):.3f} %)")
    print(f"  C++ vs Python final latents: max relative difference {rel:.1e}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    lib.close(handle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
