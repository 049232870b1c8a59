"""TensorRT engines from a bundle's ONNX segments (optional: needs the ``tensorrt`` package and a GPU).

One engine per segment: explicit quantization from the Q/DQ nodes of INT8 groups, FP16 elsewhere,
one optimisation profile over the batch axis (1..max, opt = the CFG batch), a timing cache shared by
the segments, and an engine cache keyed by ONNX hash + TensorRT version + GPU compute capability +
profile + precision. A bundle copied to another GPU (or TensorRT version) finds no engine under its key
and rebuilds from the ONNX on first load instead of failing.

Everything here that does not touch TensorRT itself (profiles, keys, flag translation, the reason
engines were not built) is plain Python and unit-tested; building needs ``tensorrt`` and a GPU.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

ENGINES_DIR = "engines"
TIMING_CACHE = "timing.cache"


def profile_for(entry: dict, opt_batch: int, max_batch: int, min_batch: int = 1) -> dict:
    """{input name: (min, opt, max) shapes} for one manifest segment; only the batch axis varies."""
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"profile | need 1 <= min {min_batch} <= opt {opt_batch} <= max {max_batch}")
    out = {}
    for spec in entry["inputs"]:
        def shape(b, _s=spec["shape"]):
            return tuple(b if d == "batch" else int(d) for d in _s)
        out[spec["name"]] = (shape(min_batch), shape(opt_batch), shape(max_batch))
    return out


def precision_flags(segment_precision: str) -> list[str]:
    """TensorRT builder flags for a segment: FP16 everywhere (INT8 layers come from the Q/DQ nodes;
    the INT8 flag lets the builder use them in TensorRT versions that still need it)."""
    if segment_precision == "int8":
        return ["FP16", "INT8"]
    if segment_precision in ("fp32", "fp16"):
        return ["FP16"]
    raise ValueError(f"precision | '{segment_precision}' is unknown. Expected: fp32, fp16 or int8.")


def engine_key(onnx_sha256: str, trt_version: str, compute_capability: tuple[int, int], profile: dict,
               flags: list[str]) -> str:
    """The engine cache key: anything that makes an engine invalid changes it."""
    payload = {"onnx": onnx_sha256, "tensorrt": trt_version, "sm": list(compute_capability),
               "profile": {k: [list(s) for s in v] for k, v in sorted(profile.items())}, "flags": sorted(flags)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def engine_path(root: Path, segment: str, key: str) -> Path:
    return Path(root) / ENGINES_DIR / f"{segment}-{key}.engine"


def unavailable_reason() -> str | None:
    """Why engines cannot be built here (None when they can)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        return (f"TensorRT engines were not built: the tensorrt package does not import ({e}). The bundle holds the "
                "(QDQ) ONNX; install 'deltadit[tensorrt]' on a GPU machine and engines build on first load.")
    try:
        import torch

        if not torch.cuda.is_available():
            return "TensorRT engines were not built: no CUDA GPU is visible. They build on first load on a GPU machine."
    except ImportError:
        return "TensorRT engines were not built: torch is not installed (needed to query the GPU)."
    return None


def gpu_compute_capability(device: int = 0) -> tuple[int, int]:
    import torch

    return tuple(torch.cuda.get_device_capability(device))


def _translate_flags(trt, config, flags: list[str]) -> None:
    for name in flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is not None:  # INT8 is deprecated (and may be absent) where Q/DQ alone is enough
            config.set_flag(flag)


def build_engine(trt, onnx_path: Path, profile: dict, flags: list[str], timing_cache: Path | None = None,
                 workspace_bytes: int | None = None) -> bytes:
    """Parse ``onnx_path`` (external data next to it) and build a serialized engine with one profile.
    ``trt`` is the imported tensorrt module (passed in so the config translation is testable)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    network = builder.create_network(0 if explicit is None else 1 << int(explicit))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    _translate_flags(trt, config, flags)
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    opt_profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        lo, opt, hi = profile[name]
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=True)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path} (see the TensorRT log above)")
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def ensure_engines(root: Path, manifest: dict, device: int = 0, out_root: Path | None = None, trt=None) -> dict:
    """Engines for every segment of the bundle at ``root`` for this GPU: reuse those whose key matches,
    build the others from the ONNX (into ``out_root``/engines, default the bundle). Returns
    {segment: engine path}."""
    if trt is None:
        import tensorrt as trt
    out_root = Path(out_root or root)
    ex = manifest["export"]
    sm = gpu_compute_capability(device)
    paths = {}
    for entry in manifest["segments"]:
        profile = profile_for(entry, ex["opt_batch"], ex["max_batch"])
        flags = precision_flags(entry.get("precision", "fp32"))
        onnx_file = entry["files"][0]
        key = engine_key(onnx_file["sha256"], trt.__version__, sm, profile, flags)
        path = engine_path(out_root, entry["name"], key)
        if not path.is_file():
            data = build_engine(trt, Path(root) / onnx_file["path"], profile, flags, out_root / ENGINES_DIR / TIMING_CACHE)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".partial")
            tmp.write_bytes(data)
            tmp.replace(path)  # a half-written engine never carries a valid name
        paths[entry["name"]] = path
    return paths
