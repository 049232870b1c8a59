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

from deltadit.errors import DeltaDiTError
from deltadit.manifest import SEGMENT_NAME, Manifest
from deltadit.sources import user_cache

ENGINES_DIR = "engines"
TIMING_CACHE = "timing.cache"


def default_cache_dir() -> Path:
    """Where engines built on first load go (:func:`deltadit.sources.user_cache`); never the bundle itself,
    which stays as exported (and may be read-only)."""
    return user_cache(ENGINES_DIR)


def profile_for(entry, opt_batch: int, max_batch: int, min_batch: int = 1) -> dict:
    """{input name: (min, opt, max) shapes} for one manifest segment; only the batch axis varies."""
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"profile | need 1 <= min {min_batch} <= opt {opt_batch} <= max {max_batch}")
    return {spec.name: tuple(tuple(spec.concrete(b)) for b in (min_batch, opt_batch, max_batch)) for spec in entry.inputs}


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


def engine_name(segment: str, key: str) -> str:
    """File name of a segment's engine; segment names are checked so a name cannot leave the folder."""
    if not SEGMENT_NAME.match(segment) or not key.isalnum():
        raise DeltaDiTError(f"engine | segment {segment!r} / key {key!r} cannot name a file. Expected: a bundle "
                            "written by deltadit-export.")
    return f"{segment}-{key}.engine"


def engine_path(folder: Path, segment: str, key: str) -> Path:
    return Path(folder) / engine_name(segment, key)


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


def plan_engines(manifest: Manifest, trt_version: str, sm: tuple[int, int]) -> dict:
    """{segment: (key, profile, flags, onnx path)}: what every segment's engine must be on this GPU."""
    ex = manifest.export
    out = {}
    for entry in manifest.segments:
        profile = profile_for(entry, ex.opt_batch, ex.max_batch)
        flags = precision_flags(entry.precision)
        out[entry.name] = (engine_key(entry.files[0].sha256, trt_version, sm, profile, flags), profile, flags, entry.graph)
    return out


def _write_engine(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    tmp.replace(path)  # a half-written engine never carries a valid name
    side = path.with_name(path.name + ".sha256")
    side.write_text(hashlib.sha256(data).hexdigest())


def _cached_engine_ok(path: Path) -> bool:
    """An engine in the cache is used only when its sidecar hash matches (a truncated or swapped file is rebuilt)."""
    from deltadit.bundle import sha256_file

    side = path.with_name(path.name + ".sha256")
    return path.is_file() and side.is_file() and side.read_text().strip() == sha256_file(path)


def build_bundle_engines(root: Path, manifest: Manifest, device: int = 0, trt=None) -> dict:
    """Export time: build every segment's engine into ``root``/engines (the timing cache beside them).
    Returns {segment: relative path}; the exporter hashes them into the manifest."""
    if trt is None:
        import tensorrt as trt
    folder = Path(root) / ENGINES_DIR
    out = {}
    for name, (key, profile, flags, graph) in plan_engines(manifest, trt.__version__, gpu_compute_capability(device)).items():
        path = engine_path(folder, name, key)
        _write_engine(path, build_engine(trt, Path(root) / graph, profile, flags, folder / TIMING_CACHE))
        path.with_name(path.name + ".sha256").unlink()  # in a bundle the manifest holds the hash
        out[name] = f"{ENGINES_DIR}/{path.name}"
    return out


def ensure_engines(root: Path, manifest: Manifest, device: int = 0, cache_dir: Path | None = None, trt=None) -> dict:
    """Load time: an engine for every segment of the bundle at ``root`` on this GPU. The bundle's own
    engine (verified with the bundle) is used when its key matches; otherwise one from ``cache_dir``
    (default :func:`default_cache_dir`) whose sidecar hash matches; otherwise it is built from the ONNX
    into the cache. A bundle copied to another GPU or TensorRT version rebuilds instead of failing.
    Returns {segment: engine path}."""
    if trt is None:
        import tensorrt as trt
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    paths = {}
    for name, (key, profile, flags, graph) in plan_engines(manifest, trt.__version__, gpu_compute_capability(device)).items():
        bundled = manifest.engines.files.get(name)
        if bundled is not None and bundled.path == f"{ENGINES_DIR}/{engine_name(name, key)}":
            paths[name] = Path(root) / bundled.path
            continue
        path = engine_path(cache, name, key)
        if not _cached_engine_ok(path):
            _write_engine(path, build_engine(trt, Path(root) / graph, profile, flags, cache / TIMING_CACHE))
        paths[name] = path
    return paths


def read_engine(path: Path, manifest: Manifest, segment: str) -> bytes:
    """The engine's bytes, checked right before use against the manifest's hash (an engine in the bundle)
    or its sidecar (an engine in the cache): nothing unverified reaches the deserializer."""
    data = Path(path).read_bytes()
    bundled = manifest.engines.files.get(segment)
    side = Path(path).with_name(Path(path).name + ".sha256")
    expected = bundled.sha256 if bundled is not None and Path(path).name == Path(bundled.path).name else (
        side.read_text().strip() if side.is_file() else None)
    if expected != hashlib.sha256(data).hexdigest():
        raise DeltaDiTError(f"engine {path} | does not match its recorded sha256. Expected: delete it (it is rebuilt "
                            "from the ONNX on the next load) or re-export the bundle.")
    return data
