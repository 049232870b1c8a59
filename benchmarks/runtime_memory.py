"""Peak RSS and loop time of a bundle's Δ-DiT loop on ONNX Runtime (CPU) with its CPU memory arena shared
by every session (the runner's default), one per session (ONNX Runtime's default) and off, side by side
in one interleaved run (issue 14: INT8 + Δ-DiT loop ≤ 3 GiB).

    PYTHONPATH=. .venv/bin/python benchmarks/runtime_memory.py BUNDLE --rounds 3 --json OUT.json

Each round runs every setting once, each in a fresh process (peak RSS is per process): load the bundle
(every segment's session opens, then the runner returns the freed FP32 weights with malloc_trim), run one
seeded loop of its plan, report the RSS after loading, the loop's wall time and the process's peak RSS
(VmHWM). The settings alternate within a round, so all see the same machine state.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from deltadit.runtime.runners.onnxrt import ARENAS


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {key} (Linux only)")


def probe(bundle: str, arena: str) -> dict:
    """One fresh process's numbers (run by the parent through ``--_probe``)."""
    from deltadit.bench import run_loop
    from deltadit.runtime import load

    b = load(bundle, memory_arena=arena)
    executor = b.executor()
    b.runner.activate()
    loaded = _status_mib("VmRSS")
    t0 = time.perf_counter()
    run_loop(executor, b)
    return {"loaded_mib": loaded, "loop_s": time.perf_counter() - t0, "peak_mib": _status_mib("VmHWM")}


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--settings", default=",".join(ARENAS), help="arena settings to compare, comma-separated "
                                                                 f"(default {','.join(ARENAS)}; 'session' is the reference)")
    p.add_argument("--json", help="write the per-round numbers and medians here")
    p.add_argument("--_probe", choices=ARENAS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._probe:
        print(json.dumps(probe(args.bundle, args._probe)))
        return 0
    settings = args.settings.split(",")
    if "session" not in settings or not set(settings) <= set(ARENAS):
        p.error(f"--settings | {args.settings!r} must name 'session' and only {', '.join(ARENAS)}")
    runs: dict[str, list[dict]] = {a: [] for a in settings}
    for r in range(args.rounds):
        for setting in runs:
            out = subprocess.run([sys.executable, __file__, args.bundle, "--_probe", setting],
                                 capture_output=True, text=True, check=True)
            runs[setting].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {setting}: {runs[setting][-1]}", flush=True)
    result = {"bundle": args.bundle, "rounds": args.rounds,
              "settings": {s: {k: summary([x[k] for x in xs]) for k in xs[0]} for s, xs in runs.items()}}
    for s, m in result["settings"].items():
        print(f"{s:9s} loaded {m['loaded_mib']['median']:7.0f} MiB  peak {m['peak_mib']['median']:7.0f} MiB "
              f"({m['peak_mib']['min']:.0f}-{m['peak_mib']['max']:.0f})  loop {m['loop_s']['median']:8.2f} s "
              f"({m['loop_s']['min']:.2f}-{m['loop_s']['max']:.2f})")
    base = result["settings"]["session"]
    for s, m in result["settings"].items():
        print(f"{s} vs session (ONNX Runtime's default): loop time {m['loop_s']['median'] / base['loop_s']['median']:.3f}x, "
              f"peak RSS {m['peak_mib']['median'] / base['peak_mib']['median']:.3f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
