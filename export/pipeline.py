"""The export, one straight line of named stages:

    load -> split + trace -> (calibrate INT8) -> export ONNX (per segment, reused when unchanged)
         -> check vs PyTorch -> TensorRT engines -> write manifest -> publish

Everything is written into ``OUT.partial/``; the manifest is written last and the folder is renamed to
``OUT`` only when every stage passed (export/publish.py owns OUT, OUT.partial, OUT.old and OUT.lock). A
re-run after an interruption reuses each segment whose content key (weights, I/O, shapes, opset,
versions) is unchanged.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from deltadit import validate
from deltadit.bundle import FORMAT_VERSION, MANIFEST, sha256_file, write_json_atomic
from deltadit.console import Stages, track
from deltadit.errors import DeltaDiTError, raise_if
from deltadit.export.check import check_onnx
from deltadit.memory import mmap_large_blocks, release_memory
from deltadit.export.publish import STAGES_FILE, Output, output_folder
from deltadit.plan import DeltaPlan
from deltadit.presets import Preset

# Opsets accepted for export: the traced attention needs >= 14; 17 is the tested default; ONNX Runtime
# and TensorRT 10 parse up to 21.
OPSET_RANGE = (14, 21)
# --precision: fp32, or fp16 block groups for the CUDA / TensorRT execution providers (export/onnx.py
# to_float16; the head and tail, with the sinusoidal timestep embedding, stay fp32).
PRECISIONS = ("fp32", "fp16")


@dataclass
class ExportReport:
    bundle: Path
    exported: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    errors: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    engines: dict = field(default_factory=dict)


def versions() -> dict:
    import diffusers
    import onnx
    import onnxruntime
    import torch

    from deltadit import __version__

    return {"deltadit": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def segment_key(module, seg, shapes: dict, opset: int, vers: dict) -> str:
    """Content hash of everything an exported segment depends on."""
    code = inspect.getsource(type(module))  # a changed segment class must not reuse an old export
    h = hashlib.sha256(json.dumps([seg.name, seg.inputs, seg.outputs, seg.block_range, shapes, opset, vers, code],
                                  sort_keys=True, default=str).encode())
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def trace_inputs(split, feeds: dict) -> dict:
    """Run the split in PyTorch once; return every segment's input feeds and reference outputs."""
    import torch

    per_segment = {}
    with torch.no_grad():
        values = dict(feeds)
        for seg in split.segments:
            args = {n: values[n] for n in seg.inputs}
            out = split.modules[seg.name](*args.values())
            out = out if isinstance(out, tuple) else (out,)
            per_segment[seg.name] = (args, dict(zip(seg.outputs, out)))
            values.update(zip(seg.outputs, out))
    return per_segment


def _tensor_desc(name, t, onnx_name=None, unbatched=()) -> dict:
    shape = list(t.shape) if name in unbatched else ["batch"] + list(t.shape[1:])
    d = {"name": name, "shape": shape, "dtype": str(t.dtype).replace("torch.", "")}
    if onnx_name is not None:
        d["onnx_name"] = onnx_name
    return d



def check_values(preset: Preset, *, seed: int, opset: int, max_batch: int | None, int8=None,
                 precision: str = "fp32", int8_requested: bool | None = None) -> None:
    """Refuse an export's values before any work starts: one :class:`DeltaDiTError` listing every problem.
    int8_requested: whether an INT8 export is asked for (default: ``int8`` is given; the CLI checks its
    INT8 options even without --int8)."""
    problems: list[str] = []

    def collect(check, *args) -> None:
        try:
            check(*args)
        except DeltaDiTError as e:
            problems.append(str(e))

    collect(validate.seed, seed, "--seed")
    collect(validate.integer, "--opset", opset, *OPSET_RANGE, " (17 is the tested default)")
    if max_batch is not None:
        collect(validate.integer, "--max-batch", max_batch, preset.cfg_batch, validate.MAX_BATCH,
                f" (from the CFG batch {preset.cfg_batch}, the optimisation point)")
    # The latent (resolution / VAE factor) must split into whole patches.
    patch, vae = preset.transformer["patch_size"], preset.vae_scale
    step = patch * vae
    hint = f" and a multiple of {step} (patch size {patch} x VAE factor {vae})"
    try:
        res = validate.integer("--resolution", preset.resolution, step, validate.MAX_RESOLUTION, hint)
        if res % step:
            problems.append(f"--resolution | {res} is not a multiple of {step} (patch size {patch} x VAE factor {vae}). "
                            f"Expected: a multiple of {step}, e.g. {max(step, res // step * step)}.")
    except DeltaDiTError as e:
        problems.append(str(e))
    if precision not in PRECISIONS:
        problems.append(f"--precision | {precision!r} is unknown. Expected: one of {', '.join(PRECISIONS)} (fp16: "
                        "block groups in float16 for CUDA / TensorRT).")
    elif precision == "fp16" and (int8 is not None if int8_requested is None else int8_requested):
        problems.append("--precision fp16 | cannot be combined with --int8. Expected: --int8 alone (TensorRT builds "
                        "INT8 bundles with FP16 enabled, so their float layers run in fp16 already) or fp16 alone.")
    if int8 is not None:
        problems += int8.problems()
    raise_if(problems, "export | invalid values:" if len(problems) > 1 else None)


def export_bundle(
    preset: Preset,
    plan: DeltaPlan,
    out: str | Path,
    *,
    weights: str | None = None,
    random_init: bool = False,
    seed: int = 0,
    opset: int = 17,
    max_batch: int | None = None,
    tolerance: float = 1e-4,
    int8_tolerance: float = 1e-2,
    build_engines: bool = True,
    fuse: bool = True,
    progress: bool = True,
    int8=None,
    force: bool = False,
    text_encoder: bool = False,
    precision: str = "fp32",
    fp16_tolerance: float = 1e-2,
) -> ExportReport:
    """Export ``preset``'s transformer, split at ``plan.groups``, as an ONNX bundle in ``out``.

    tolerance: largest accepted ONNX-vs-PyTorch error per output, relative to the output's max
    magnitude. int8_tolerance: the same for INT8 groups against ModelOpt's fake quantization. The two
    implementations round some activations to neighbouring levels: measured 1.3e-4 on tiny random
    models and 1.25e-3 on the trained 12-block model; a wrong graph (a traced label dropout) gave 0.28.
    INT8-vs-FP quality is the separate SQNR guard. max_batch: recorded for engine builders (the ONNX batch axis is dynamic); default the
    CFG batch, which is also the optimisation point. int8: an :class:`Int8Options` to quantize the
    block groups with ModelOpt (calibrated along the plan's trajectory), or None for FP32. fuse: also
    write each group's ONNX Runtime graph with attention and GELU fused (export/fuse.py), checked like the others.
    force: replace ``out`` when it is already a bundle (else refused); a folder that is not a bundle is
    never replaced (export/publish.py). On any failure ``out`` is as before; ``out.partial`` is kept only
    when it holds finished segments a re-run reuses, and the exception carries a note saying which.
    text_encoder: also put the caption encoder and its tokenizer in the bundle (export/text_encoder.py).
    precision: "fp32", or "fp16" to store the block groups in float16 for GPU execution providers (I/O
    stays float32; see export/onnx.py to_float16); fp16_tolerance replaces ``tolerance`` for those groups.
    """
    from deltadit.export.text_encoder import check_text_encoder, export_text_encoder
    from deltadit.sources import resolve_source

    check_values(preset, seed=seed, opset=opset, max_batch=max_batch, int8=int8, precision=precision)
    if text_encoder:
        check_text_encoder(preset, weights, random_init)
    source = None if random_init else resolve_source(weights or preset.source)
    stages = Stages(6 + (int8 is not None) + text_encoder, enabled=progress)
    with stages, output_folder(out, force=force, source=source) as target:
        report = ExportReport(target.out)
        with _stage(stages, report, "load", "load"):
            transformer = load(preset, plan, weights, random_init, seed)
        with _stage(stages, report, "split", "split + trace"):
            split, traced = split_and_trace(transformer, plan, preset, seed)
        int8_info, holdout = None, None
        if int8 is not None:
            with _stage(stages, report, "calibrate", "calibrate int8"):
                int8_info, holdout = calibrate_int8(transformer, split, traced, plan, preset, int8, weights, random_init,
                                                    progress)
        del transformer  # split.modules now hold every weight; export_onnx drops each segment's once it is written
        release_memory()  # calibration's activations leave the RSS before the ONNX export's peak
        target.segments = len(split.segments)
        vers = versions()
        with mmap_large_blocks():  # the exporter's and the sessions' large transients leave the RSS when freed
            with _stage(stages, report, "export", "export onnx"):
                entries = export_onnx(split, traced, target, opset, vers, fuse, int8_info, report, progress, precision)
            manifest = build_manifest(preset, plan, split, entries, vers, weights=weights, random_init=random_init,
                                      seed=seed, opset=opset, max_batch=max_batch, tolerance=tolerance,
                                      int8_tolerance=int8_tolerance, int8=int8, fp16_tolerance=fp16_tolerance)
            with _stage(stages, report, "check", "check vs pytorch"):
                check_onnx(target.work, manifest, split, traced, entries, plan, preset, tolerance, int8_tolerance,
                           int8, int8_info, holdout, report, progress, fp16_tolerance)
        if text_encoder:
            with _stage(stages, report, "text_encoder", "export text encoder"):
                manifest["text_encoder"] = export_text_encoder(target, preset, weights or preset.source, opset, tolerance)
        stages.start("tensorrt engines")
        engines(target, manifest, build_engines, report)
        stages.start("write bundle")
        write_bundle(target, manifest)
    return report


@contextmanager
def _stage(stages: Stages, report: ExportReport, key: str, label: str):
    stages.start(label)
    tic = time.perf_counter()
    yield
    report.seconds[key] = time.perf_counter() - tic


def load(preset: Preset, plan: DeltaPlan, weights: str | None, random_init: bool, seed: int):
    """Stage 1: the transformer (local weights or seeded random), checked against the plan."""
    from deltadit.export.load import load_transformer
    from deltadit.models import check_plan_fits

    transformer = load_transformer(preset, weights, random_init, seed)
    check_plan_fits(plan, transformer)
    return transformer


def split_and_trace(transformer, plan: DeltaPlan, preset: Preset, seed: int):
    """Stage 2: split at the plan's groups; run it once on seeded example inputs at the CFG batch.
    Returns (split, {segment: (input feeds, reference outputs)})."""
    import torch

    from deltadit.models import split as split_model

    side, patch = preset.latent_side, preset.spec.token_side(preset.transformer)
    s = split_model(transformer, plan.groups, (side // patch, side // patch))
    feeds = s.spec.example_inputs(s.config, preset.cfg_batch, preset.text_len, side, torch.Generator().manual_seed(seed))
    return s, trace_inputs(s, feeds)


def calibrate_int8(transformer, split, traced: dict, plan: DeltaPlan, preset: Preset, int8, weights, random_init,
                   progress: bool):
    """Stage 2b: the split's groups quantized in place, calibrated along the plan's trajectory. Their own
    outputs replace the references in ``traced`` (what their ONNX must match).
    Returns (manifest int8 info, held-out data for the guard)."""
    import torch

    from deltadit.export.int8 import calibrate

    qmodules, int8_info, holdout = calibrate(transformer, split, plan, preset, int8, weights, random_init, progress)
    outputs = {seg.name: seg.outputs for seg in split.segments}
    with torch.no_grad():
        for name in qmodules:
            args, _ = traced[name]
            out = qmodules[name](*args.values())
            traced[name] = (args, dict(zip(outputs[name], out if isinstance(out, tuple) else (out,))))
    return int8_info, holdout


def export_onnx(split, traced: dict, target: Output, opset: int, vers: dict, fuse: bool, int8_info,
                report: ExportReport, progress: bool, precision: str = "fp32") -> list[dict]:
    """Stage 3: every segment to ONNX in ``target.work``, reusing finished segments whose key is
    unchanged (stages.json). Returns the manifest's segment entries (without checks).
    Consumes ``split.modules``: each segment's module is dropped once its ONNX is written (the later
    stages use ``traced`` and the ONNX), so the weights are not held in PyTorch and ONNX Runtime at once.
    Segments are traced smallest first: the largest group's trace (~3x its weights on top) then runs
    with no other module left (benchmarks/export_memory.py --sample measures the peak per step)."""
    from deltadit.export.onnx import onnx_output_names

    work = target.work
    target.claim(STAGES_FILE, STAGES_FILE + ".tmp")
    stages_path = work / STAGES_FILE
    stages = json.loads(stages_path.read_text()) if stages_path.is_file() else {}
    entries = {}
    for seg in track(sorted(split.segments, key=lambda s: _weight_bytes(split.modules[s.name])), "export onnx",
                     enabled=progress, unit="segments"):
        args, outs = traced[seg.name]
        shapes = {n: list(t.shape) for n, t in args.items()}
        fp16 = precision == "fp16" and seg.kind == "group"
        key = segment_key(split.modules[seg.name], seg, shapes, opset, vers) + ("-fused-mha-gelu" if fuse else "") + (
            "-fp16" if fp16 else "")
        done = stages.get(seg.name)
        if done and done["key"] == key and all((work / f["path"]).is_file() and sha256_file(work / f["path"]) == f["sha256"]
                                               for f in done["files"]):
            report.reused.append(seg.name)
            files, ort_graph = done["files"], done.get("ort_graph")
            del split.modules[seg.name]
        else:
            files, ort_graph = _export_segment(split.modules, seg, args, target, opset, fuse, split.spec.unbatched, fp16)
            stages[seg.name] = {"key": key, "files": files, "ort_graph": ort_graph}
            write_json_atomic(stages_path, stages)
            report.exported.append(seg.name)
        release_memory()  # the dropped module's weights and the trace's buffers leave the RSS now
        entries[seg.name] = {
            "name": seg.name, "kind": seg.kind, "block_range": list(seg.block_range) if seg.block_range else None,
            "inputs": [_tensor_desc(n, t, None, split.spec.unbatched) for n, t in args.items()],
            "outputs": [_tensor_desc(n, outs[n], o, split.spec.unbatched) for n, o in zip(seg.outputs, onnx_output_names(seg))],
            "files": files,
            "precision": "int8" if int8_info and seg.name in int8_info["quantized"] else "fp16" if fp16 else "fp32",
            **({"ort_graph": ort_graph} if ort_graph else {}),
        }
    order = [seg.name for seg in split.segments]  # traced by size, reported in the model's order
    report.exported.sort(key=order.index)
    report.reused.sort(key=order.index)
    return [entries[name] for name in order]


def _weight_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _export_segment(modules: dict, seg, args: dict, target: Output, opset: int, fuse: bool, unbatched=(),
                    fp16: bool = False):
    """One segment's ONNX (and, for groups, its fused ONNX Runtime graph); its module is taken out of
    ``modules`` and dropped once traced, before the ONNX is loaded back. Returns (files, ort_graph)."""
    from deltadit.export.fuse import fuse_for_ort
    from deltadit.export.onnx import export_segment

    work, n = target.work, seg.name
    # every name export_segment and fuse_for_ort write, temporaries included, before they write it
    target.claim(f"onnx/{n}.onnx", f"onnx/{n}.onnx.data", f"onnx/{n}.raw*", f"onnx/{n}.ort.onnx", f"onnx/{n}.ort.onnx.tmp")
    path = work / "onnx" / f"{n}.onnx"
    path.parent.mkdir(exist_ok=True)
    written = export_segment(modules, seg, args, path, opset, unbatched, fp16)
    ort_graph = None
    if fuse and seg.kind == "group":  # ONNX Runtime variant with fused attention and GELU (export/fuse.py)
        fused_path = path.with_name(f"{n}.ort.onnx")
        fused = fuse_for_ort(path, fused_path)
        if any(fused.values()):
            written.append(fused_path)
            ort_graph = {"path": str(fused_path.relative_to(work)), **fused}
    return [{"path": str(f.relative_to(work)), "sha256": sha256_file(f)} for f in written], ort_graph


def build_manifest(preset: Preset, plan: DeltaPlan, s, entries: list[dict], vers: dict, *, weights, random_init,
                   seed, opset, max_batch, tolerance, int8_tolerance, int8, fp16_tolerance=None) -> dict:
    """The bundle's manifest.json (checks, int8 and engines are added by the later stages)."""
    from deltadit.sources import weights_fingerprint

    batch, side = preset.cfg_batch, preset.latent_side
    return {
        "format_version": FORMAT_VERSION,
        "model": {"preset": preset.name, "arch": preset.arch, "diffusers_class": s.spec.diffusers_class,
                  "source": weights or preset.source, "random_init": random_init,
                  "weights_sha256": None if random_init else weights_fingerprint(weights or preset.source),
                  "decoder": preset.decoder,
                  "seed": seed if random_init else None,
                  "config": {k: v for k, v in s.config.items() if not k.startswith("_")}},  # no _name_or_path etc.
        "precision": "int8" if int8 is not None else "fp16" if any(e["precision"] == "fp16" for e in entries) else "fp32",
        "export": {"opset": opset, "opt_batch": batch, "max_batch": max_batch or batch, "resolution": preset.resolution,
                   "vae_scale": preset.vae_scale, "latent_side": side, "text_len": preset.text_len, "tolerance": tolerance,
                   **({"int8_tolerance": int8_tolerance} if int8 is not None else {}),
                   **({"fp16_tolerance": fp16_tolerance} if any(e["precision"] == "fp16" for e in entries) else {})},
        "sampling": {"scheduler": preset.scheduler, "scheduler_config": preset.scheduler_config,
                     "guidance_scale": preset.guidance_scale, "steps": plan.num_steps},
        "driver": s.spec.driver(s.config, side),
        "plan": plan.to_dict(),
        "segments": entries,
        "versions": vers,
    }


def engines(target: Output, manifest: dict, build: bool, report: ExportReport) -> None:
    """Stage 5: TensorRT engines where tensorrt imports and a GPU is visible (else the reason, stated)."""
    from deltadit.manifest import Manifest
    from deltadit.runtime.engines import ENGINES_DIR, build_bundle_engines, unavailable_reason

    reason = unavailable_reason() if build else "TensorRT engines were not built: disabled (--no-engines)."
    if reason is None:
        tic = time.perf_counter()
        target.claim(f"{ENGINES_DIR}/*")
        paths = build_bundle_engines(target.work, Manifest.from_dict(manifest))
        manifest["engines"] = {"built": True, "files": {k: {"path": v, "sha256": sha256_file(target.work / v)}
                                                        for k, v in paths.items()}}
        report.seconds["engines"] = time.perf_counter() - tic
    else:
        manifest["engines"] = {"built": False, "reason": reason}
    report.engines = manifest["engines"]


def write_bundle(target: Output, manifest: dict) -> None:
    """Stage 6: the manifest last, then the folder published in one rename (export/publish.py)."""
    target.claim(MANIFEST, MANIFEST + ".tmp")
    write_json_atomic(target.work / MANIFEST, manifest)
    target.publish()
