"""``backend="auto"``: the faster CPU engine for this bundle on this machine, measured once, then remembered.

Which engine is faster depends on the CPU and on the model. On an AVX2 CPU without VNNI, ONNX Runtime
runs the INT8 bundles faster than OpenVINO; on a Xeon with AMX, OpenVINO runs the wide PixArt-α groups'
INT8 GEMMs on AMX tiles while, on the embedded 128-wide model, its per-node cost makes it the slower one
(README, "All 28 blocks on an AMX Xeon" and "--backend auto" under Generate). So the choice is measured, not assumed: every installed CPU engine
(ONNX Runtime; OpenVINO with the ``[openvino]`` extra) opens the bundle and runs one full (uncached) step
on the bundle's example inputs -- one warm-up, then :data:`ROUNDS` timed steps, the engines alternating --
and the lower median wins. The result is stored in the user cache (``$DELTADIT_CACHE/backend``, never in
the bundle), keyed by the bundle's manifest, the CPU model and ISA flags, the engines' versions and default
settings (:data:`SETTINGS`) and the thread count, so later loads read it instead of measuring. OpenVINO runs
at its default precision ("auto": bf16 for INT8 groups on CPUs with bf16).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from pathlib import Path

from deltadit.bundle import write_json_atomic
from deltadit.errors import DeltaDiTError

PACKAGES = {"onnxrt": "onnxruntime", "openvino": "openvino"}  # CPU engine -> its Python package (ONNX Runtime first)
ROUNDS = 3
SETTINGS = 2  # the engines' default settings, in the key: raise it when one changes (2: OpenVINO's precision="auto")


def installed() -> tuple[str, ...]:
    """The CPU engines whose Python package imports here (ONNX Runtime first)."""
    import importlib.util

    return tuple(e for e, package in PACKAGES.items() if importlib.util.find_spec(package))


def _versions(engines: tuple[str, ...]) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for engine in engines:
        try:
            out[engine] = version(PACKAGES[engine])
        except PackageNotFoundError:
            out[engine] = "?"
    return out


def choice_key(root: Path, engines: tuple[str, ...]) -> str:
    """What the measured choice depends on: the bundle (its manifest, which hashes every file), the CPU,
    the engines and their versions, and the threads this process may use."""
    from deltadit.runtime.cpu import machine

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = {"manifest": hashlib.sha256((Path(root) / "manifest.json").read_bytes()).hexdigest(),
             "machine": machine(), "engines": _versions(engines), "settings": SETTINGS, "threads": threads}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def full_step_seconds(bundles: dict, rounds: int = ROUNDS) -> dict[str, float]:
    """{engine: median seconds of one full step} of the loaded ``bundles`` ({engine: Bundle}), on the bundle's
    example inputs; one warm-up step each, then ``rounds`` rounds with the engines in turn."""
    feeds = next(iter(bundles.values())).example_feeds()
    executors = {e: b.uncached() for e, b in bundles.items()}
    for executor in executors.values():
        executor.step(0, feeds)
    times: dict[str, list[float]] = {e: [] for e in bundles}
    for _ in range(rounds):
        for engine, executor in executors.items():
            tic = time.perf_counter()
            executor.step(0, feeds)
            times[engine].append(time.perf_counter() - tic)
    return {e: statistics.median(t) for e, t in times.items()}


def choose(root: Path, load_engine, cache_dir: Path | None = None) -> tuple[object, dict]:
    """(the bundle loaded on the chosen engine, the choice record {"backend", "seconds", "measured"}).
    load_engine(engine) -> a loaded Bundle on that engine. Reads the cached choice when there is one;
    otherwise measures every installed engine and stores the result (a cache that cannot be written is
    skipped: the choice is then measured again next time)."""
    from deltadit.sources import user_cache

    engines = installed()
    if not engines:
        raise DeltaDiTError("backend | 'auto' found no CPU engine. Expected: pip install 'deltadit[onnx]' (ONNX Runtime) "
                            "or 'deltadit[openvino]'.")
    path = (cache_dir or user_cache("backend")) / f"{choice_key(root, engines)}.json"
    try:
        record = json.loads(path.read_text())
        if record.get("backend") in engines:
            return load_engine(record["backend"]), {**record, "measured": False}
    except (OSError, ValueError):
        pass
    bundles = {e: load_engine(e) for e in engines}
    seconds = full_step_seconds(bundles) if len(bundles) > 1 else {engines[0]: None}
    best = min(engines, key=lambda e: seconds[e] if seconds[e] is not None else 0.0)
    for engine, bundle in bundles.items():
        if engine != best:
            bundle.runner.deactivate()  # free the other engine's sessions
    record = {"backend": best, "seconds": seconds}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, record)
    except OSError:
        pass
    return bundles[best], {**record, "measured": True}
