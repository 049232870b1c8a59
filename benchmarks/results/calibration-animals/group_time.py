"""Per-step time of the 12-block group (the whole step's transformer work bar head/tail), ONNX Runtime CPU,
1 intra-op thread, each bundle's own session; R interleaved rounds of K calls; median and min-max of the
per-round medians, and the per-bundle minimum (the least load-affected figure)."""
import json, statistics, sys, time
import numpy as np, onnxruntime as ort
from deltadit.runtime import load
from deltadit.bench import step_feeds
R, K = int(sys.argv[1]), int(sys.argv[2]); paths = sys.argv[4:]; out = sys.argv[3]
sessions, feeds = {}, None
for p in paths:
    b = load(p)
    runner = b.runner; runner.activate() if hasattr(runner, "activate") else None
    group = next(s for s in b.segments if s.kind == "group")
    if feeds is None:
        head_out = runner.infer(b.segments[0].name, step_feeds(b))
        feeds = {k: np.ascontiguousarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in head_out.items()}
    o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    path = str(runner.root / runner.graph_path(runner.entries[group.name]))
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    sessions[p.rstrip("/").split("/")[-1]] = (s, {n: feeds[n] for n in names})
for s, f in sessions.values():
    for _ in range(3): s.run(None, f)
rounds = {k: [] for k in sessions}
for r in range(R):
    for k, (s, f) in sessions.items():
        t = []
        for _ in range(K):
            tic = time.perf_counter(); s.run(None, f); t.append(time.perf_counter() - tic)
        rounds[k].append(statistics.median(t) * 1e3)
res = {k: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v), "rounds_ms": v} for k, v in rounds.items()}
for k, v in res.items():
    print(f"{k:45s} {v['median_ms']:7.1f} ms ({v['min_ms']:.1f}–{v['max_ms']:.1f})")
json.dump({"rounds": R, "calls_per_round": K, "threads": 1, "inputs": {k: list(v.shape) for k, v in feeds.items()},
           "results": res}, open(out, "w"), indent=1)
