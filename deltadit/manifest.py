"""The bundle manifest as typed, validated objects: the one reader every part of deltadit uses.

``Manifest.from_dict`` checks every field once (types, bounds on every size, names, paths) and raises
one :class:`DeltaDiTError` naming the field, so no reader further down meets a KeyError, a TypeError
or a size that would allocate gigabytes. Paths are checked for form here (relative, normalised,
owned by their segment); :func:`deltadit.bundle.read_bundle` checks them against the disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from deltadit.errors import DeltaDiTError
from deltadit.jsonfields import Fields, bad, check_relative_path, kind
from deltadit.manifest_text_encoder import TextEncoderEntry, parse_text_encoder
from deltadit.plan import DeltaPlan
from deltadit.validate import (MAX_BATCH, MAX_BLOCKS, MAX_GUIDANCE, MAX_LATENT_SIDE, MAX_RESOLUTION, MAX_STEPS,
                               MAX_TEXT_LEN, MAX_TRAIN_TIMESTEPS)

FORMAT_VERSION = 2  # 2: carried streams, stage cuts, unbatched tensors, the driver section
SEGMENT_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "bool")
KINDS = ("head", "group", "tail")
PRECISIONS = ("fp32", "fp16", "int8")
MAX_DIM = 1 << 20  # any one tensor axis
MAX_CHANNELS = 4096  # latent channels, caption channels ...


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the bundle root
    sha256: str


@dataclass(frozen=True)
class TensorDesc:
    """shape: ints, with "batch" where the batch axis is (axis 0 for every segment tensor)."""

    name: str
    shape: tuple
    dtype: str
    onnx_name: str | None = None

    def concrete(self, batch: int) -> list[int]:
        return [batch if d == "batch" else d for d in self.shape]


@dataclass(frozen=True)
class SegmentEntry:
    name: str
    kind: str
    block_range: tuple[int, int] | None
    precision: str
    inputs: tuple[TensorDesc, ...]
    outputs: tuple[TensorDesc, ...]
    files: tuple[FileEntry, ...]  # files[0] is the standard graph; the rest its external data / variants
    ort_graph: str | None = None  # path of the fused graph for ONNX Runtime (one of files; export/fuse.py)
    fused_attention: int = 0  # attention nodes fused in it
    fused_gelu: int = 0  # tanh GELUs fused in it
    check: dict = field(default_factory=dict)

    @property
    def graph(self) -> str:
        return self.files[0].path


@dataclass(frozen=True)
class ModelInfo:
    preset: str
    arch: str
    diffusers_class: str
    source: str | None
    random_init: bool
    seed: int | None
    decoder: str
    config: dict
    weights_sha256: str | None


@dataclass(frozen=True)
class ExportInfo:
    opset: int
    opt_batch: int
    max_batch: int
    resolution: int
    vae_scale: int
    latent_side: int
    text_len: int
    tolerance: float
    int8_tolerance: float | None = None


@dataclass(frozen=True)
class Sampling:
    scheduler: str
    scheduler_config: dict
    guidance_scale: float
    steps: int


@dataclass(frozen=True)
class Driver:
    """How to drive the model (``ModelSpec.driver``): carried streams, conditioning kind, tensors without
    a batch axis, CFG batch order, whether the scheduler steps the doubled batch, embedded guidance,
    learned-sigma channels, timestep divisor, initial noise shape and latent layout."""

    streams: tuple[str, ...]
    conditioning: str
    unbatched: tuple[str, ...]
    cfg_order: str
    step_on_cfg_batch: bool
    embedded_guidance: bool
    learned_sigma: bool
    timestep_divisor: float
    noise_shape: tuple[int, ...]
    latent_layout: str

    def to_dict(self) -> dict:
        return {"streams": list(self.streams), "conditioning": self.conditioning, "unbatched": list(self.unbatched),
                "cfg_order": self.cfg_order, "step_on_cfg_batch": self.step_on_cfg_batch,
                "embedded_guidance": self.embedded_guidance, "learned_sigma": self.learned_sigma,
                "timestep_divisor": self.timestep_divisor, "noise_shape": list(self.noise_shape),
                "latent_layout": self.latent_layout}


@dataclass(frozen=True)
class Engines:
    built: bool
    files: dict  # segment name -> FileEntry (engines built at export time)
    reason: str | None = None


@dataclass(frozen=True)
class Manifest:
    format_version: int
    model: ModelInfo
    precision: str
    export: ExportInfo
    sampling: Sampling
    driver: Driver
    plan: DeltaPlan
    segments: tuple[SegmentEntry, ...]
    engines: Engines
    versions: dict
    int8: dict | None = None
    int8_weight_bits: int | None = None  # 8, or 7 (codes within +-64; see deltadit.runtime.cpu)
    text_encoder: TextEncoderEntry | None = None  # exported with --text-encoder (runtime/cpp/TEXT_ENCODER.md)

    def segment(self, name: str) -> SegmentEntry:
        for s in self.segments:
            if s.name == name:
                return s
        raise DeltaDiTError(f"segment | '{name}' is not in this bundle. Expected: one of "
                            + ", ".join(s.name for s in self.segments) + ".")

    def files(self) -> list[tuple[str, FileEntry]]:
        """Every hashed file with the segment that owns it."""
        out = [(s.name, f) for s in self.segments for f in s.files]
        out += [(self.text_encoder.name, f) for f in self.text_encoder.all_files()] if self.text_encoder else []
        return out + [(name, f) for name, f in self.engines.files.items()]

    @classmethod
    def from_dict(cls, data: Any) -> "Manifest":
        """Parse and validate a manifest (the JSON object of manifest.json)."""
        return _parse(Fields(data, ""))


def _parse(m: Fields) -> Manifest:
    version = m.data.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION
        hint = "upgrade deltadit to read it" if newer else "re-export it with this deltadit"
        raise DeltaDiTError(f"manifest | format version {version!r} is not supported by this deltadit (reads version "
                            f"{FORMAT_VERSION}). Expected: {hint}.")
    model = _model(m.obj("model"))
    export = _export(m.obj("export"))
    sampling = _sampling(m.obj("sampling"))
    plan = _plan(m.data.get("plan"))
    driver = _driver(m.obj("driver"))
    _check_against_spec(model, export, sampling, driver, plan)
    segments = tuple(_segment(Fields(s, f"segments[{i}]")) for i, s in enumerate(m.list("segments", MAX_BLOCKS + 2)))
    _check_segments(segments, plan)
    engines = _engines(m.obj("engines", optional=True), {s.name for s in segments})
    versions = m.data.get("versions", {})
    int8 = m.data.get("int8")
    if not isinstance(versions, dict) or (int8 is not None and not isinstance(int8, dict)):
        bad("versions / int8", "are not objects", "objects")
    bits = None
    if int8 is not None:
        options = Fields(int8, "int8").obj("options", optional=True)
        bits = (options.int("weight_bits", 7, 8, optional=True) if options is not None else None) or 8
    return Manifest(version, model, m.str("precision", PRECISIONS), export, sampling, driver, plan, segments, engines,
                    versions, int8, bits, parse_text_encoder(m.obj("text_encoder", optional=True), export.text_len,
                                                             segments[0]))


def _check_against_spec(model: ModelInfo, export: ExportInfo, sampling: Sampling, driver: Driver, plan: DeltaPlan):
    """The plan and driver must be what this deltadit's spec of the model says (blocks, stage cuts, steps)."""
    from deltadit.models.spec import get_spec

    spec = get_spec(model.arch)
    try:
        blocks, cuts = spec.num_blocks(model.config), spec.stage_cuts(model.config)
        expected = spec.driver(model.config, export.latent_side)
    except (KeyError, TypeError) as e:
        bad("model.config", f"lacks what the {model.arch} blocks need ({type(e).__name__}: {e})", "the model's diffusers config")
    if plan.num_blocks != blocks:
        bad("plan.num_blocks", f"is {plan.num_blocks} but the {model.arch} model has {blocks} blocks",
             "a plan built for the model's blocks")
    if not set(cuts) <= set(plan.cut_points):
        bad("plan.cuts", f"are {list(plan.cuts)}", f"the model's stage boundaries {list(cuts)} among the cut points")
    if sampling.steps != plan.num_steps:
        bad("sampling.steps", f"is {sampling.steps} but the plan has {plan.num_steps} steps", "equal step counts")
    if driver.to_dict() != expected:
        bad("driver", f"is {driver.to_dict()}", f"what this deltadit's {model.arch} spec says: {expected}")


def _model(f: Fields) -> ModelInfo:
    from deltadit.models.spec import known_archs

    cfg = f.obj("config")
    config = dict(cfg.data)
    # The sizes the runtime allocates from: bounded here, the rest of the config is the model's own.
    cfg.int("num_layers", 1, MAX_BLOCKS)
    cfg.int("num_single_layers", 0, MAX_BLOCKS, optional=True)
    for key in ("in_channels", "out_channels"):
        cfg.int(key, 1, MAX_CHANNELS, optional=True)
    cfg.int("num_embeds_ada_norm", 1, 1 << 20, optional=True)
    cfg.int("sample_size", 1, MAX_LATENT_SIDE, optional=True)
    cfg.int("patch_size", 1, 64, optional=True)
    random_init = f.bool("random_init")
    if not random_init and f.data.get("weights_sha256") is None:
        # Without it a --pipeline with other weights could not be recognised: the check is not optional.
        bad(f"{f.where}.weights_sha256", "is missing for a bundle of real weights", "the source weights' sha256")
    return ModelInfo(
        preset=f.str("preset"), arch=f.str("arch", known_archs()), diffusers_class=f.str("diffusers_class"),
        source=f.str("source", optional=True), random_init=random_init,
        seed=f.int("seed", 0, 2**63 - 1, optional=True), decoder=f.str("decoder", ("vae", "pixels")), config=config,
        weights_sha256=f.str("weights_sha256", optional=True, pattern=SHA256),
    )


def _export(f: Fields) -> ExportInfo:
    opt = f.int("opt_batch", 1, MAX_BATCH)
    return ExportInfo(
        opset=f.int("opset", 7, 30), opt_batch=opt, max_batch=f.int("max_batch", opt, MAX_BATCH),
        resolution=f.int("resolution", 1, MAX_RESOLUTION), vae_scale=f.int("vae_scale", 1, 64),
        latent_side=f.int("latent_side", 1, MAX_LATENT_SIDE), text_len=f.int("text_len", 0, MAX_TEXT_LEN),
        tolerance=f.float("tolerance", 0, 1), int8_tolerance=f.float("int8_tolerance", 0, 1, optional=True),
    )


def _sampling(f: Fields) -> Sampling:
    from deltadit.schedulers import SCHEDULER_NAMES

    cfg = f.obj("scheduler_config")
    cfg.int("num_train_timesteps", 1, MAX_TRAIN_TIMESTEPS, optional=True)
    for key in ("beta_start", "beta_end"):
        cfg.float(key, 0, 1, optional=True)
    return Sampling(scheduler=f.str("scheduler", SCHEDULER_NAMES), scheduler_config=dict(cfg.data),
                    guidance_scale=f.float("guidance_scale", 0, MAX_GUIDANCE), steps=f.int("steps", 1, MAX_STEPS))


def _driver(f: Fields) -> Driver:
    def names(key):
        v = f.list(key, 64)
        if not all(isinstance(x, str) and SEGMENT_NAME.match(x) for x in v):
            bad(f"driver.{key}", f"is {v!r:.80}", "a list of tensor names")
        return tuple(v)

    shape = f.list("noise_shape", 4)
    if not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_DIM for d in shape):
        bad("driver.noise_shape", f"is {shape!r:.80}", "positive integers")
    return Driver(names("streams"), f.str("conditioning"), names("unbatched"), f.str("cfg_order", ("uncond_first", "cond_first")),
                  f.bool("step_on_cfg_batch"), f.bool("embedded_guidance"), f.bool("learned_sigma"),
                  f.float("timestep_divisor", 1e-6, 1e6), tuple(shape), f.str("latent_layout", ("nchw", "packed-2x2")))


def _plan(data) -> DeltaPlan:
    if not isinstance(data, dict):
        bad("plan", f"is {kind(data)}", "an object")
    for key in ("num_steps", "num_blocks"):
        v = data.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= (MAX_STEPS if key == "num_steps" else MAX_BLOCKS):
            bad(f"plan.{key}", f"is {v!r}", f"an integer in [1, {MAX_STEPS if key == 'num_steps' else MAX_BLOCKS}]")
    try:
        return DeltaPlan.from_dict(data)
    except DeltaDiTError as e:
        raise DeltaDiTError(f"manifest field plan | {e}") from None
    except (KeyError, TypeError, ValueError, IndexError) as e:
        bad("plan", f"is malformed ({type(e).__name__}: {e})", "a plan written by deltadit")


def _tensor(f: Fields) -> TensorDesc:
    raw = f.list("shape", 8)
    shape = []
    for i, d in enumerate(raw):
        if d == "batch" and i == 0:
            shape.append(d)
        elif isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_DIM:
            shape.append(d)
        else:
            bad(f"{f.where}.shape[{i}]", f"is {d!r}", f"'batch' on axis 0, else an integer in [1, {MAX_DIM}]")
    return TensorDesc(f.str("name", pattern=SEGMENT_NAME), tuple(shape), f.str("dtype", DTYPES),
                      f.str("onnx_name", optional=True))


def _segment(f: Fields) -> SegmentEntry:
    name = f.str("name", pattern=SEGMENT_NAME)
    kind = f.str("kind", KINDS)
    br = f.data.get("block_range")
    if kind == "group":
        if (not isinstance(br, list) or len(br) != 2 or any(isinstance(x, bool) or not isinstance(x, int) for x in br)
                or not 0 <= br[0] < br[1] <= MAX_BLOCKS):
            bad(f"{f.where}.block_range", f"is {br!r}", "[start, stop) with 0 <= start < stop")
        block_range = (br[0], br[1])
    elif br is not None:
        bad(f"{f.where}.block_range", f"is {br!r} on a {kind}", "null for the head and tail")
    else:
        block_range = None
    files = []
    for i, raw in enumerate(f.list("files", 8)):
        ff = Fields(raw, f"{f.where}.files[{i}]")
        path = check_relative_path(ff.str("path"), f"{ff.where}.path")
        # A segment owns only files named after it: entries cannot be swapped between segments.
        if not path.startswith(f"onnx/{name}."):
            bad(f"{ff.where}.path", f"is {path!r}, which is not a file of segment {name}",
                 f"onnx/{name}.onnx and its companions")
        files.append(FileEntry(path, ff.str("sha256", pattern=SHA256)))
    if not files or files[0].path != f"onnx/{name}.onnx":
        bad(f"{f.where}.files", "does not start with the segment's graph", f"onnx/{name}.onnx first")
    ort = f.obj("ort_graph", optional=True)
    ort_path = None
    if ort is not None:
        ort_path = check_relative_path(ort.str("path"), f"{ort.where}.path")
        if ort_path not in {x.path for x in files}:
            bad(f"{ort.where}.path", f"is {ort_path!r}, which is not among the segment's hashed files",
                 "one of the segment's files")
    check = f.data.get("check", {})
    return SegmentEntry(
        name=name, kind=kind, block_range=block_range, precision=f.str("precision", PRECISIONS, optional=True) or "fp32",
        inputs=tuple(_tensor(Fields(t, f"{f.where}.inputs[{i}]")) for i, t in enumerate(f.list("inputs", 32))),
        outputs=tuple(_tensor(Fields(t, f"{f.where}.outputs[{i}]")) for i, t in enumerate(f.list("outputs", 32))),
        files=tuple(files), ort_graph=ort_path,
        fused_attention=ort.int("fused_attention", 0, 1 << 16) if ort is not None else 0,
        fused_gelu=ort.int("fused_gelu", 0, 1 << 16, optional=True) or 0 if ort is not None else 0,
        check=check if isinstance(check, dict) else {},
    )


def _check_segments(segments: tuple[SegmentEntry, ...], plan: DeltaPlan) -> None:
    names = [s.name for s in segments]
    if len(set(names)) != len(names):
        bad("segments", "repeat a name", "unique segment names")
    paths = [f.path for s in segments for f in s.files]
    if len(set(paths)) != len(paths):
        bad("segments[].files", "list one file twice", "each file once")
    kinds = [s.kind for s in segments]
    if kinds.count("head") != 1 or kinds.count("tail") != 1 or kinds[0] != "head" or kinds[-1] != "tail":
        bad("segments", f"are {kinds}", "one head first, block groups, one tail last")
    have = [s.block_range for s in segments if s.kind == "group"]
    want = [(g.start, g.stop) for g in plan.groups]
    if have != want:
        bad("segments", f"cut the blocks at {have}", f"the plan's block groups {want}")


def _engines(f: Fields | None, segment_names: set[str]) -> Engines:
    if f is None:
        return Engines(False, {}, "no engines recorded")
    built = f.bool("built")
    files = {}
    raw = f.data.get("files") or {}
    if not isinstance(raw, dict):
        bad("engines.files", f"is {kind(raw)}", "an object: segment -> {path, sha256}")
    for name, entry in raw.items():
        if name not in segment_names:
            bad(f"engines.files.{name}", "names no segment of this bundle", "a segment name")
        ff = Fields(entry, f"engines.files.{name}")
        path = check_relative_path(ff.str("path"), f"{ff.where}.path")
        if not (path.startswith(f"engines/{name}-") and path.endswith(".engine") and "/" not in path[len("engines/"):]):
            bad(f"{ff.where}.path", f"is {path!r}", f"engines/{name}-<key>.engine")
        files[name] = FileEntry(path, ff.str("sha256", pattern=SHA256))
    reason = f.data.get("reason")
    return Engines(built, files, reason if isinstance(reason, str) else None)
