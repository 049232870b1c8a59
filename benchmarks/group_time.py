"""Per-step time of each bundle's first block group on ONNX Runtime CPU, side by side: what keeping layers in
FP32 (`deltadit-export --int8 --int8-keep-fp ...`) costs at run time, or (--fusion) what each fusion of
the ONNX Runtime graph (export/fuse.py) gains.

    PYTHONPATH=. .venv/bin/python benchmarks/group_time.py BUNDLE [BUNDLE ...] --rounds 9 --calls 5 \
        --json benchmarks/results/calibration-animals/keep-fp-group-time.json
    PYTHONPATH=. .venv/bin/python benchmarks/group_time.py BUNDLE [BUNDLE ...] --fusion --threads 2 ...

Every bundle's group gets its own session (1 intra-op thread unless --threads) on the same inputs (the
first bundle's head output for one step's CFG batch). With --fusion each bundle's group runs three times
over: its standard graph, that graph with attention fused, and with attention and GELU fused (made now,
in a scratch folder, by export/fuse.py from the bundle's standard graph). In each of --rounds interleaved
rounds, each session runs --calls times; a round's figure is the median call. Reported: the median and
min–max over rounds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def first_group(bundle):
    return next(s for s in bundle.segments if s.kind == "group")


def group_session(path: Path, threads: int):
    """(an ONNX Runtime session of the graph at path, its input names)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session, [i.name for i in session.get_inputs()]


def fusion_variants(bundle, scratch: Path) -> dict[str, Path]:
    """label -> graph: the first group's standard graph, and the two fusions of it written in scratch next
    to copies of the bundle's files (fuse_for_ort reuses the graph's external data; ONNX's checker refuses
    symbolic and hard links to it)."""
    from deltadit.export.fuse import fuse_for_ort

    root = bundle.runner.root
    group = bundle.runner.entries[first_group(bundle).name]  # the manifest's entry: its files
    scratch.mkdir(parents=True)
    for f in group.files:  # the graph, its weights, its shipped variants: linked under their own names
        shutil.copyfile(root / f.path, scratch / Path(f.path).name)
    standard = scratch / Path(group.graph).name
    attention, both = scratch / "attention.onnx", scratch / "attention-gelu.onnx"
    fuse_for_ort(standard, attention, gelu=False)
    fuse_for_ort(standard, both)
    return {"standard": standard, "attention fused": attention, "attention + GELU fused": both}


def head_output(bundle) -> dict:
    """The head segment's outputs for the bench's step inputs, as contiguous numpy arrays."""
    import numpy as np


    out = bundle.runner.infer(bundle.segments[0].name, bundle.example_feeds())
    return {k: np.ascontiguousarray(v.numpy()) for k, v in out.items()}


def time_groups(paths: list[str], rounds: int, calls: int, threads: int, scratch: Path | None = None) -> dict:
    """Time each bundle's first group as the runner opens it, or (scratch given) in each fusion variant."""
    from deltadit.runtime import load

    bundles = {str(Path(p)): load(p) for p in paths}  # keyed as given: two folders may share a name
    feeds = head_output(next(iter(bundles.values())))
    graphs = {}
    for i, (name, b) in enumerate(bundles.items()):
        if scratch is None:
            graphs[name] = b.runner.root / b.runner.graph_path(b.runner.entries[first_group(b).name])
        else:
            graphs.update({f"{name}: {k}": v for k, v in fusion_variants(b, scratch / str(i)).items()})
    sessions = {}
    for name, path in graphs.items():
        session, inputs = group_session(path, threads)
        sessions[name] = (session, {n: feeds[n] for n in inputs})
    for session, f in sessions.values():  # warm-up
        for _ in range(3):
            session.run(None, f)
    per_round = {k: [] for k in sessions}
    for _ in range(rounds):
        for name, (session, f) in sessions.items():
            calls_s = []
            for _ in range(calls):
                tic = time.perf_counter()
                session.run(None, f)
                calls_s.append(time.perf_counter() - tic)
            per_round[name].append(statistics.median(calls_s) * 1e3)
    results = {k: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v), "rounds_ms": v}
               for k, v in per_round.items()}
    return {"rounds": rounds, "calls_per_round": calls, "threads": threads,
            "inputs": {k: list(v.shape) for k, v in feeds.items()}, "results": results}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundles", nargs="+")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fusion", action="store_true", help="time the standard, attention-fused and attention + GELU "
                   "fused graph of each bundle's first group")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        result = time_groups(args.bundles, args.rounds, args.calls, args.threads,
                             Path(scratch) if args.fusion else None)
    for name, r in result["results"].items():
        print(f"{name:60s} {r['median_ms']:7.1f} ms ({r['min_ms']:.1f}–{r['max_ms']:.1f})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
