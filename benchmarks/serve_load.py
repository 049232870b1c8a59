"""Bounded load test of `deltadit serve` on 127.0.0.1 with tritonclient (gRPC): latency, throughput, errors, memory.

Two servers run the same bundle: Triton's dynamic batching (up to the bundle's max batch per denoising loop)
and batch 1 (--max-batch 1). Rounds are interleaved (round r: every server and every concurrency), so slow
drift of a shared machine hits both alike. Each cell sends --requests requests from C client threads
(one gRPC client each). Before timing, the first seeds served by each server are compared with
runtime.generate in this process (must be equal bit for bit).

    .venv/bin/python benchmarks/serve_load.py bundles/animals-int8 --concurrency 1,4,16 --requests 32 --rounds 3

Prints a Markdown table (medians over rounds, min-max in brackets) and writes --json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

PROMPTS = ("a cat", "a dog", "a bird", "a horse", "a zebra", "a cow", "a sheep", "a bear")


def start(bundle: Path, log: Path, *flags: str):
    from deltadit.serve.process import ServeProcess

    return ServeProcess(bundle, log, *flags).wait_ready()


def request(seed: int):
    import tritonclient.grpc as grpc

    prompt = grpc.InferInput("prompt", [1, 1], "BYTES")
    prompt.set_data_from_numpy(np.array([[PROMPTS[seed % len(PROMPTS)].encode()]], dtype=object))
    seeds = grpc.InferInput("seed", [1, 1], "INT64")
    seeds.set_data_from_numpy(np.array([[seed]], dtype=np.int64))
    return [prompt, seeds]


def load(server, concurrency: int, requests: int) -> dict:
    """Send ``requests`` requests from ``concurrency`` threads; latencies (s), wall time, errors."""
    import tritonclient.grpc as grpc

    latencies, errors, lock = [], [], threading.Lock()
    seeds = iter(range(requests))

    def worker():
        client = grpc.InferenceServerClient(server.at.grpc)
        while True:
            with lock:
                seed = next(seeds, None)
            if seed is None:
                return
            tic = time.perf_counter()
            try:
                client.infer(server.model, request(seed), outputs=[grpc.InferRequestedOutput("image")])
                with lock:
                    latencies.append(time.perf_counter() - tic)
            except Exception as e:  # noqa: BLE001 - counted, reported
                with lock:
                    errors.append(str(e))

    tic = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - tic
    q = np.percentile(latencies, [50, 95, 99]) if latencies else [float("nan")] * 3
    return {"p50": q[0], "p95": q[1], "p99": q[2], "images_per_s": len(latencies) / wall, "errors": len(errors)}


def rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants (deltadit serve + tritonserver + stubs), MiB."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,rss="], capture_output=True, text=True).stdout.split()
    rows = [tuple(map(int, out[i:i + 3])) for i in range(0, len(out), 3)]
    tree, total, grew = {pid}, 0, True
    while grew:
        new = {p for p, pp, _ in rows if pp in tree} - tree
        grew, tree = bool(new), tree | new
    total = sum(r for p, _, r in rows if p in tree)
    return total / 1024


def check_equal(server, bundle, seeds) -> None:
    import tritonclient.grpc as grpc

    from deltadit import runtime

    client = grpc.InferenceServerClient(server.at.grpc)
    for seed in seeds:
        served = client.infer(server.model, request(seed)).as_numpy("image")[0]
        want = runtime.generate(bundle, prompt=PROMPTS[seed % len(PROMPTS)], seed=seed).pixels()
        if not np.array_equal(served, want):
            raise SystemExit(f"served image for seed {seed} differs from runtime.generate")


def summary(cells: list[dict]) -> dict:
    out = {}
    for key in ("p50", "p95", "p99", "images_per_s", "rss_mib"):
        values = [c[key] for c in cells]
        out[key] = (statistics.median(values), min(values), max(values))
    out["errors"] = sum(c["errors"] for c in cells)
    return out


def table(results: dict, concurrency: list[int]) -> str:
    lines = ["| server | concurrency | p50 s | p95 s | p99 s | images/s | errors | server RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def cell(v, fmt):
        return f"{v[0]:{fmt}} [{v[1]:{fmt}}–{v[2]:{fmt}}]"

    for name, per in results.items():
        for c in concurrency:
            s = per[str(c)]
            lines.append(f"| {name} | {c} | {cell(s['p50'], '.2f')} | {cell(s['p95'], '.2f')} | {cell(s['p99'], '.2f')} | "
                         f"{cell(s['images_per_s'], '.2f')} | {s['errors']} | {cell(s['rss_mib'], '.0f')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--requests", type=int, default=32, help="requests per cell (default 32)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--check", type=int, default=2, help="seeds compared with runtime.generate per server")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/serve_load.json"))
    args = p.parse_args(argv)
    from deltadit import runtime
    from deltadit.runtime.generation import max_images

    concurrency = [int(c) for c in args.concurrency.split(",")]
    bundle = runtime.load(args.bundle)
    batch = max_images(bundle.manifest)
    queue = str(max(concurrency) * 2)
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    servers = {f"dynamic batching (max {batch})": start(args.bundle, logs / "serve_load_dyn.log", "--queue", queue),
               "batch 1": start(args.bundle, logs / "serve_load_b1.log", "--max-batch", "1", "--queue", queue)}
    try:
        for server in servers.values():
            check_equal(server, bundle, range(args.check))
        cells = {name: {str(c): [] for c in concurrency} for name in servers}
        for r in range(args.rounds):
            for name, server in servers.items():
                for c in concurrency:
                    cell = load(server, c, args.requests)
                    cell["rss_mib"] = rss_mib(server.process.pid)
                    cells[name][str(c)].append(cell)
                    print(f"round {r + 1} {name} c={c}: {cell['images_per_s']:.2f} images/s, p50 {cell['p50']:.2f} s, "
                          f"errors {cell['errors']}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    results = {name: {c: summary(v) for c, v in per.items()} for name, per in cells.items()}
    print(table(results, concurrency))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"bundle": str(args.bundle), "requests": args.requests, "rounds": args.rounds,
                                     "results": results}, indent=2))
    errors = sum(s["errors"] for per in results.values() for s in per.values())
    return 1 if errors else 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
