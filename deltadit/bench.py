"""`deltadit bench`: latency of every way to run one model, side by side in one run.

Configurations (those whose inputs are given):
  torch-<dtype>[+<plan>]          the unmodified diffusers forward / the PyTorch Δ-DiT runner, eager, per
  torch-compile-<dtype>[+<plan>]  --torch-dtypes (fp32, bf16), and with --compile under torch.compile
                                  (see deltadit.baselines)
  <bundle>, <bundle>+<plan>       each bundle uncached (every step in full on its segments) and with its plan

Measured with warm-up and ``repeats`` rounds; in each round every configuration runs once, in turn, so
drift on a noisy machine hits all of them alike; medians are reported. Per configuration: the whole
denoising loop of one image (batch 1, CFG batch 2), each step path (full / cached range) and, for
bundles, each segment; the runtime's overhead is a step's time over the sum of its segments' medians.
With --torch-per-step the PyTorch configurations time step paths only and their loop is estimated as
the sum over the plan's steps of each path's median (marked "est." in the report). Medians come with
min–max; the result records the CPU model and its vector / matrix ISA flags.
Peak memory is the peak RSS of a fresh process running one loop of that configuration (--memory).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from deltadit.bench_report import chart, format_report
from deltadit.runtime.cpu import machine
from deltadit.errors import DeltaDiTError


BUNDLE_BACKENDS = ("onnxrt", "openvino", "openvino-f32", "openvino-bf16")  # openvino: its precision="auto"; -f32, -bf16: that precision
SHORT = {"torch": "torch", "onnxrt": "ort", "openvino": "ov", "openvino-f32": "ov-f32", "openvino-bf16": "ov-bf16"}  # name prefixes


def probe_kind(c) -> str:
    """The memory probe's name for a configuration (one fresh process per kind)."""
    return SHORT[c.backend] + ("-cached" if c.cached else "") + ("-bf16" if c.backend == "torch" and "bf16" in c.name else "")


def engine(backend: str) -> tuple[str, dict]:
    """(the runtime backend, its options) of a bench backend name (BUNDLE_BACKENDS)."""
    engine_name, _, precision = backend.partition("-")
    return (engine_name, {"precision": precision}) if precision else (backend, {})


@dataclass
class Config:
    name: str
    executor_factory: object  # () -> executor with .plan, .step(i, feeds), .reset()
    backend: str
    cached: bool
    bundle: object = None
    plan: object = None
    results: dict = field(default_factory=dict)
    loops: bool = True  # whole loops timed (else estimated from step paths)


def _conditions(bundle, gen):
    """Seeded (cond, uncond) of the bundle's shapes (the text encoder is not part of the timing)."""
    return bundle.spec.random_condition(bundle.config, bundle.manifest.export.text_len, 1, 2, gen)


def synchronizer(device: str):
    """What makes a timer's stop honest on this device: CUDA work is asynchronous, CPU work is not."""
    import torch

    return torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)


def run_loop(executor, bundle, seed: int = 0, device: str = "cpu"):
    import torch

    from deltadit.runtime.sampling import from_manifest, sample

    cond, uncond = _conditions(bundle, torch.Generator().manual_seed(seed + 1))
    x = sample(executor, bundle.spec, bundle.config, from_manifest(bundle.manifest), cond, uncond, seed, device=device)
    synchronizer(device)()
    return x


def path_steps(plan) -> dict:
    """One representative step index per step path, plus the full step that must precede it."""
    from deltadit.costs import path_name

    out = {}
    for i, s in enumerate(plan.steps):
        out.setdefault(path_name(s), i)
    return out


def time_paths(executor, feeds, runner=None, sync=lambda: None) -> tuple[dict, dict]:
    """Wall time of one step of each path (a cached step runs right after its plan's preceding full step),
    and, given the executor's runner, the time of each segment call inside that step. sync: waits for the
    device's queued work (see synchronizer)."""
    out, inside = {}, {}
    for name, i in path_steps(executor.plan).items():
        if executor.plan.steps[i].cached is not None:
            executor.step(max(j for j in range(i) if executor.plan.steps[j].cached is None), feeds)
        if runner is not None:
            runner.trace = []
        sync()
        tic = time.perf_counter()
        executor.step(i, feeds)
        sync()
        out[name] = time.perf_counter() - tic
        if runner is not None:
            inside[name] = dict(runner.trace)  # segment -> seconds inside this step (each runs once per step)
            runner.trace = None
    return out, inside


def time_segments(bundle, feeds, sync=lambda: None) -> dict:
    """Each segment once on traced inputs (head output feeds the groups and tail); sync: waits for the
    device's queued work (an asynchronous launch returns before its segment has run)."""
    runner = bundle.runner
    times, out = {}, feeds
    for seg in bundle.segments:
        sync()
        tic = time.perf_counter()
        result = runner.infer(seg.name, out)
        sync()
        times[seg.name] = time.perf_counter() - tic
        out = result if seg is bundle.segments[0] else out
    return times


def segment_sum(plan_step, times: dict, bundle) -> float:
    """Sum of the segment medians a step of this kind runs."""
    total = 0.0
    for seg in bundle.segments:
        if seg.kind == "group" and plan_step.cached is not None:
            s, e = plan_step.cached
            if s <= seg.block_range[0] < e:
                continue
        total += times[seg.name]
    return total


def bench(configs: list[Config], repeats: int, warmup: int, loops: bool = True, progress: bool = True,
          device: str = "cpu") -> None:
    """Time every configuration round-robin (see the module's docstring) with its inputs on ``device``."""
    from deltadit.console import track

    sync = synchronizer(device)
    for c in configs:
        c.results = {"loop": [], "paths": {}, "segments": {}, "in_step": {}}
        c.executor = c.executor_factory()
        c.feeds = c.bundle.example_feeds(device)
    for c in configs:  # warm-up (sessions, allocators, autocast caches)
        for _ in range(warmup):
            time_paths(c.executor, c.feeds, sync=sync)
            if c.backend in BUNDLE_BACKENDS:
                time_segments(c.bundle, c.feeds, sync)
    timed_segments = {}
    for c in configs:
        if c.backend in BUNDLE_BACKENDS:
            timed_segments.setdefault(id(c.bundle), c)
    rounds = [c for _ in range(repeats) for c in configs]
    for c in track(rounds, "bench rounds", enabled=progress, unit="runs"):
        paths, inside = time_paths(c.executor, c.feeds, c.bundle.runner if c.backend in BUNDLE_BACKENDS else None, sync)
        for k, v in paths.items():
            c.results["paths"].setdefault(k, []).append(v)
        for k, segs in inside.items():
            c.results["in_step"].setdefault(k, []).append(segs)
        if c is timed_segments.get(id(c.bundle)):  # once per bundle and round
            for k, v in time_segments(c.bundle, c.feeds, sync).items():
                c.results["segments"].setdefault(k, []).append(v)
        if loops and c.loops:
            tic = time.perf_counter()
            run_loop(c.executor, c.bundle, device=device)
            c.results["loop"].append(time.perf_counter() - tic)


def loop_stats(c: Config) -> dict:
    """Median and min–max of the whole loop: measured, or (a configuration timed per step) the sum over
    the plan's steps of each step path's median / min / max."""
    from deltadit.costs import path_name

    if c.results["loop"]:
        v = c.results["loop"]
        return {"loop_s": statistics.median(v), "loop_min_s": min(v), "loop_max_s": max(v), "loop_estimated": False}
    paths = c.results["paths"]
    if not paths:
        return {"loop_s": None}
    steps = [path_name(s) for s in (c.plan if c.cached else c.executor.plan).steps]
    return {"loop_s": sum(statistics.median(paths[n]) for n in steps), "loop_min_s": sum(min(paths[n]) for n in steps),
            "loop_max_s": sum(max(paths[n]) for n in steps), "loop_estimated": True}


def summarize(configs: list[Config], block_macs: int, cfg_batch: int) -> dict:
    from deltadit.costs import plan_costs

    med = statistics.median
    by_name = {c.name: c for c in configs}
    out = {"configs": {}}
    seg_medians = {}
    for c in configs:
        if c.results["segments"]:
            seg_medians[id(c.bundle)] = {k: med(v) for k, v in c.results["segments"].items()}
    for c in configs:
        costs = plan_costs(c.plan, block_macs, cfg_batch)
        r = {"backend": c.backend, "cached": c.cached, **loop_stats(c),
             "paths_s": {k: med(v) for k, v in c.results["paths"].items()},
             "paths_range_s": {k: [min(v), max(v)] for k, v in c.results["paths"].items()},
             "macs": costs.plan_macs if c.cached else costs.baseline_macs, "bound": costs.speedup_bound if c.cached else 1.0}
        segs = seg_medians.get(id(c.bundle)) if c.backend in BUNDLE_BACKENDS else None
        if segs:
            r["segments_s"] = segs
            overhead, runtime_share, in_sequence = {}, {}, {}
            for name, i in path_steps(c.plan if c.cached else c.executor.plan).items():
                step = (c.plan if c.cached else c.executor.plan).steps[i]
                total = segment_sum(step, segs, c.bundle)
                overhead[name] = r["paths_s"][name] / total - 1
                if c.results["in_step"].get(name):
                    rounds = c.results["in_step"][name]
                    inside = med(sum(x.values()) for x in rounds)
                    r.setdefault("segments_in_step_s", {})[name] = {k: med(x[k] for x in rounds) for k in rounds[0]}
                    # the profile of that overhead: the runtime's own work (Python, Δ arithmetic, binding)
                    # vs the same segment calls being slower inside a step than when timed alone
                    runtime_share[name] = (r["paths_s"][name] - inside) / total
                    in_sequence[name] = inside / total - 1
            r["overhead_vs_segments"] = overhead
            if runtime_share:
                r["overhead_runtime"] = runtime_share
                r["overhead_segments_in_step"] = in_sequence
        out["configs"][c.name] = r
    base = next((n for n in ("torch-fp32",) if n in by_name), configs[0].name)
    for name, r in out["configs"].items():
        if r["loop_s"]:
            r["speedup_vs_" + base] = out["configs"][base]["loop_s"] / r["loop_s"]
            same = next((n for n, c in by_name.items() if c.bundle is by_name[name].bundle and c.backend == by_name[name].backend
                         and not c.cached and n.split("+")[0] == name.split("+")[0]), None)
            if same:
                r["speedup_vs_uncached_same_backend"] = out["configs"][same]["loop_s"] / r["loop_s"]
    out["baseline"] = base
    return out


def _peak_rss_kib() -> float:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over execve,
    so a child started from a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1])
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def peak_rss_mib(args: list[str]) -> float:
    """Peak RSS of a fresh process running one loop of one configuration."""
    import subprocess

    out = subprocess.run([sys.executable, "-m", "deltadit.bench", "--_memory-probe", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise DeltaDiTError(f"bench --memory | probe failed: {out.stderr.strip()[-500:]}")
    return float(out.stdout.strip().splitlines()[-1])


def build_configs(bundles: list[str], torch_dtypes: tuple[str, ...] = ("fp32", "bf16"), compile_: bool = False,
                  backends: tuple[str, ...] = ("onnxrt",), torch_loops: bool = True, device: str = "cpu",
                  gpu_launches: tuple[str, ...] = ("sync",), compile_mode: str | None = None) -> list[Config]:
    """Configurations from bundle paths: each on every backend, uncached and with its plan; PyTorch
    baselines (deltadit.baselines) from the first bundle's source weights (or its random-init seed).
    device "cuda": bundles on ONNX Runtime's CUDA execution provider, PyTorch on the GPU, each bundle once
    per ``gpu_launches`` (the runner's gpu_launch: sync, async, graph)."""
    from deltadit.runtime import load

    if device != "cpu" and set(backends) != {"onnxrt"}:
        raise DeltaDiTError(f"bench --device | {device} runs bundles on ONNX Runtime only. Expected: --backends onnxrt.")
    if device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise DeltaDiTError(f"bench --device | {device}: PyTorch sees no CUDA GPU here. Expected: a CUDA build of "
                                "torch with a visible GPU (and onnxruntime-gpu), or --device cpu.")
    providers = ["CUDAExecutionProvider"] if device != "cpu" else None
    if device == "cpu" and tuple(gpu_launches) != ("sync",):
        raise DeltaDiTError("bench --gpu-launch | needs --device cuda. Expected: --device cuda, or no --gpu-launch.")
    variants = [(backend, {"gpu_launch": g} if device != "cpu" else {}, f" {g}" if len(gpu_launches) > 1 else "")
                for backend in backends for g in gpu_launches]  # on CPU: ("sync",), checked above
    configs, first = [], None
    for path in bundles:
        for backend, options, suffix in variants:
            runtime_backend, engine_options = engine(backend)
            b = load(path, providers=providers, backend=runtime_backend, **options, **engine_options)
            first = first or b
            label = f"{SHORT[backend]} {Path(path).name} ({b.manifest.precision}){suffix}"
            configs.append(Config(label, b.uncached, backend, False, b, b.plan))
            configs.append(Config(f"{label}+{b.plan.variant}", b.executor, backend, True, b, b.plan))
    if torch_dtypes and first is not None:
        from deltadit.baselines import baselines, torch_model

        torch_configs = [Config(t.name, t.factory, "torch", t.cached, first, first.plan, loops=torch_loops)
                         for t in baselines(torch_model(first).to(device), first.plan, torch_dtypes, compile_, compile_mode)]
        configs = torch_configs + configs
    return configs


def select_configs(configs: list[Config], patterns: str) -> list[Config]:
    import fnmatch

    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    kept = [c for c in configs if any(fnmatch.fnmatchcase(c.name, p) for p in wanted)]
    if not kept:
        raise DeltaDiTError(f"bench --configs | '{patterns}' matches no configuration. Expected: patterns over "
                            + ", ".join(repr(c.name) for c in configs) + ".")
    return kept


def _names(kind: str, allowed: tuple[str, ...], empty: str = ""):
    """A flag check: a comma-separated list of distinct ``allowed`` names (``empty``: what '' means, if allowed)."""

    def check(name: str, text: str) -> str:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if (not names and not empty) or any(n not in allowed for n in names) or len(set(names)) < len(names):
            raise DeltaDiTError(f"{name} | {text!r} is not a list of {kind}. Expected: some of {', '.join(allowed)}, "
                                f"each once{', or ' + repr('') + ' for ' + empty if empty else ''}.")
        return ",".join(names)

    return check


def main(argv: list[str] | None = None) -> int:
    import argparse

    from deltadit import validate
    from deltadit.baselines import DTYPES
    from deltadit.cli import ArgumentParser, flag
    from deltadit.runtime.runners.onnxrt_cuda import GPU_LAUNCHES

    p = ArgumentParser(prog="deltadit bench", description="Latency per configuration, side by side.")
    p.add_argument("bundles", nargs="*")
    p.add_argument("--repeats", type=flag(validate.integer, "--repeats", 1, validate.MAX_REPEATS, parse=int), default=5,
                   help=f"timed rounds, in [1, {validate.MAX_REPEATS}] (default 5)")
    p.add_argument("--warmup", type=flag(validate.integer, "--warmup", 0, validate.MAX_REPEATS, parse=int), default=1,
                   help="untimed rounds first (default 1)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baselines")
    p.add_argument("--torch-dtypes", default="fp32,bf16", type=flag(_names("dtypes", DTYPES, "no PyTorch baselines"), "--torch-dtypes"),
                   help="PyTorch baselines' precisions, comma-separated: fp32, bf16, fp16 (default fp32,bf16)")
    p.add_argument("--compile", action="store_true", help="add torch.compile (inductor) baselines, with and without "
                                                          "the plan (compiled in the warm-up round)")
    p.add_argument("--torch-per-step", action="store_true",
                   help="PyTorch baselines: time step paths only and estimate the loop from them")
    p.add_argument("--no-loops", action="store_true", help="time step paths and segments only (no whole loops)")
    p.add_argument("--memory", nargs="?", const="*", metavar="PATTERNS",
                   help="peak RSS per configuration (one fresh process each, running one loop); optionally only "
                        "for the configurations matching these comma-separated patterns")
    p.add_argument("--configs", help="only the configurations whose names match these comma-separated shell patterns, "
                                     "e.g. 'ort *' or 'torch-bf16*,ort int8*' (names as in the report)")
    p.add_argument("--backends", default="onnxrt", type=flag(_names("backends", BUNDLE_BACKENDS), "--backends"),
                   help="engines that run each bundle, comma-separated: onnxrt, openvino (its default precision: "
                        "bf16 outside the INT8 layers of INT8 groups on CPUs with bf16, else f32), openvino-f32, "
                        "openvino-bf16 (OpenVINO with that precision for the block groups' non-INT8 work) "
                        "(default onnxrt)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="cuda: bundles on ONNX Runtime's CUDA provider (onnxruntime-gpu), PyTorch on the GPU")
    p.add_argument("--gpu-launch", type=flag(_names("launches", GPU_LAUNCHES), "--gpu-launch"),
                   help="with --device cuda: how the ONNX Runtime runner launches segments, comma-separated, each "
                        "bundle once per launch: sync, async, graph (CUDA graphs); see runtime/runners/onnxrt_cuda.py")
    p.add_argument("--json", help="write the summary here")
    p.add_argument("--chart", help="write a PNG bar chart of loop speed-ups here")
    p.add_argument("--_memory-probe", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._memory_probe:
        bundle_path, kind = args._memory_probe[0], args._memory_probe[1]
        backend = {s: b for b, s in SHORT.items()}.get(kind.replace("-cached", ""), "onnxrt")
        dtypes = ("fp32", "bf16") if kind.startswith("torch") else ()  # bundle probes load no torch model
        configs = build_configs([bundle_path], dtypes, False, (backend,))
        c = {probe_kind(c): c for c in configs}[kind]
        run_loop(c.executor_factory(), c.bundle)
        print(_peak_rss_kib() / 1024)
        return 0
    if not args.bundles:
        raise DeltaDiTError("bench | no bundle given. Expected: deltadit bench BUNDLE [BUNDLE...] (e.g. an FP and an INT8 export).")
    dtypes = () if args.no_torch else tuple(n for n in args.torch_dtypes.split(",") if n)
    launches = tuple(args.gpu_launch.split(",")) if args.gpu_launch else ("sync",)
    configs = build_configs(args.bundles, dtypes, args.compile, tuple(args.backends.split(",")), not args.torch_per_step,
                            args.device, launches)
    if args.configs:
        configs = select_configs(configs, args.configs)
    first = configs[0].bundle
    ex = first.manifest.export
    block = first.spec.block_macs(first.config, ex.text_len, ex.latent_side * 8)
    bench(configs, args.repeats, args.warmup, loops=not args.no_loops, device=args.device)
    summary = summarize(configs, block, ex.opt_batch)
    summary.update({"machine": machine(), "repeats": args.repeats, "warmup": args.warmup, "bundles": args.bundles,
                    "random_init": first.manifest.model.random_init, "model": first.manifest.model.preset})
    if args.memory:
        for c in select_configs(configs, args.memory):
            if "compile" in c.name:
                continue  # the probe runs eager configurations only
            summary["configs"][c.name]["peak_rss_mib"] = peak_rss_mib([str(c.bundle.root), probe_kind(c)])
    print(format_report(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    if args.chart:
        chart(summary, Path(args.chart))
    return 0


if __name__ == "__main__":
    sys.exit(main())
