"""ONNX Runtime's OpenVINO execution provider against the two engines deltadit runs (ONNX Runtime's CPU
provider, OpenVINO natively), on one block-group graph of a bundle, in one interleaved run (issue 14).

    .venv/bin/python benchmarks/ort_openvino_ep.py BUNDLE [BUNDLE…] --segment blocks_02_06 \\
        --ovep-python /tmp/ovep/bin/python --rounds 5 --out benchmarks/results/ort-openvino-ep.json

`onnxruntime-openvino` replaces the `onnxruntime` module, so it lives in its own virtual environment
(``python3.11 -m venv /tmp/ovep && /tmp/ovep/bin/pip install onnxruntime-openvino numpy``). Each engine
runs in its own worker process, which loads the graph once, warms up, then times one inference per
request; the parent sends the requests round-robin so every engine sees the same machine state, and
compares each engine's outputs with ONNX Runtime CPU's on the same random inputs. Graphs: ONNX Runtime
CPU opens the bundle's fused-attention graph where there is one (what the runner uses); OpenVINO and the
OpenVINO provider open the plain graph (what the OpenVINO runner uses; the fused graph's
com.microsoft ops are not OpenVINO's).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def worker(engine: str, graph: str, inputs: str, threads: int) -> None:
    """Load ``graph`` on ``engine``; each stdin line runs it once and answers the seconds (or 'out PATH':
    save the outputs there). Imports only numpy and the engine: it runs in the OpenVINO provider's venv."""
    feeds = dict(np.load(inputs))
    if engine == "openvino":
        import openvino as ov

        model = ov.Core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
        request = model.create_infer_request()
        names = [o.get_any_name() for o in model.outputs]

        def run():
            request.infer(feeds)
            return {n: request.get_tensor(n).data.copy() for n in names}
    else:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        if engine == "ort-openvino-ep":
            providers = [("OpenVINOExecutionProvider", {"device_type": "CPU", "precision": "FP32", "num_of_threads": str(threads)})]
        else:
            providers = ["CPUExecutionProvider"]
        session = ort.InferenceSession(graph, opts, providers=providers)
        print(f"# {engine}: {session.get_providers()}", file=sys.stderr, flush=True)

        def run():
            return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    run()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.startswith("out "):
            np.savez(line.split(" ", 1)[1].strip(), **run())
            print("saved", flush=True)
            continue
        tic = time.perf_counter()
        run()
        print(f"{time.perf_counter() - tic:.6f}", flush=True)


def segment_inputs(bundle: Path, segment: str, batch: int, path: Path) -> dict:
    """Random feeds for ``segment`` (shapes from the manifest, ``batch`` for its batch axis) saved to
    ``path``; returns {engine: graph file}."""
    from deltadit.bundle import read_bundle

    entry = {s.name: s for s in read_bundle(bundle).segments}[segment]
    rng = np.random.default_rng(0)
    feeds = {t.name: rng.standard_normal([batch if d == "batch" else d for d in t.shape]).astype(t.dtype)
             for t in entry.inputs}
    np.savez(path, **feeds)
    plain = str(bundle / entry.graph)
    return {"ort-cpu": str(bundle / (entry.ort_graph or entry.graph)), "ort-openvino-ep": plain, "openvino": plain}


def start(engine: str, graph: str, inputs: Path, python: str, threads: int) -> subprocess.Popen:
    cmd = [python, __file__, "--worker", engine, graph, str(inputs), str(threads)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit(f"{engine} worker failed to start on {graph}")
    return proc


def ask(proc: subprocess.Popen, line: str) -> str:
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def measure(bundle: Path, args, tmp: Path) -> dict:
    inputs = tmp / f"{bundle.name}-inputs.npz"
    graphs = segment_inputs(bundle, args.segment, args.batch, inputs)
    pythons = {"ort-cpu": sys.executable, "openvino": sys.executable, "ort-openvino-ep": args.ovep_python}
    workers = {e: start(e, g, inputs, pythons[e], args.threads) for e, g in graphs.items()}
    times = {e: [] for e in workers}
    for _ in range(args.rounds):
        for e, proc in workers.items():
            times[e].append(float(ask(proc, "run")))
    outs = {}
    for e, proc in workers.items():
        ask(proc, f"out {tmp / (e + '.npz')}")
        outs[e] = dict(np.load(tmp / (e + ".npz")))
        proc.stdin.close()
        proc.wait()
    ref, base = outs["ort-cpu"], statistics.median(times["ort-cpu"])
    result = {}
    for e, t in times.items():
        err = max(float(np.linalg.norm(outs[e][k] - v) / np.linalg.norm(v)) for k, v in ref.items())
        result[e] = {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "times_s": t,
                     "vs_ort_cpu": base / statistics.median(t), "rel_err_vs_ort_cpu": err}
        print(f"| {bundle.name} | {e} | {statistics.median(t):.3f} ({min(t):.3f}–{max(t):.3f}) | "
              f"{base / statistics.median(t):.2f}x | {err:.1e} |", flush=True)
    return result


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundles", nargs="+", type=Path)
    p.add_argument("--segment", default="blocks_02_06")
    p.add_argument("--ovep-python", required=True, help="python of a venv with onnxruntime-openvino")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=2, help="the CFG batch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {str(b): measure(b, args, Path(tmp)) for b in args.bundles}
    from deltadit.runtime.cpu import machine

    report = {"machine": machine(), "segment": args.segment, "batch": args.batch, "threads": args.threads,
              "rounds": args.rounds, "bundles": result}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
