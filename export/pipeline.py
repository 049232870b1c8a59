"""The export, one straight line of named stages:

    load -> split -> export ONNX (per segment, reused when unchanged) -> check vs PyTorch -> write bundle

Everything is written into ``OUT.partial/``; the manifest is written last and the folder is renamed to
``OUT`` only when every stage passed. A re-run after an interruption reuses each segment whose content
key (weights, I/O, shapes, opset, versions) is unchanged.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from deltadit.bundle import FORMAT_VERSION, MANIFEST, sha256_file, write_json_atomic
from deltadit.errors import DeltaDiTError
from deltadit.plan import DeltaPlan
from deltadit.presets import Preset

STAGES_FILE = "stages.json"  # inside OUT.partial/: finished segment exports and their keys


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


def _tensor_desc(name, t, onnx_name=None) -> dict:
    shape = ["batch"] + list(t.shape[1:])
    d = {"name": name, "shape": shape, "dtype": str(t.dtype).replace("torch.", "")}
    if onnx_name is not None:
        d["onnx_name"] = onnx_name
    return d


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
) -> ExportReport:
    """Export ``preset``'s transformer, split at ``plan.groups``, as an ONNX bundle in ``out``.

    tolerance: largest accepted ONNX-vs-PyTorch error per output, relative to the output's max
    magnitude. int8_tolerance: the same for INT8 groups against ModelOpt's fake quantization. The two
    implementations round some activations to neighbouring levels: measured 1.3e-4 on tiny random
    models and 1.25e-3 on the trained 12-block model; a wrong graph (a traced label dropout) gave 0.28.
    INT8-vs-FP quality is the separate SQNR guard. max_batch: recorded for engine builders (the ONNX batch axis is dynamic); default the
    CFG batch, which is also the optimisation point. int8: an :class:`Int8Options` to quantize the
    block groups with ModelOpt (calibrated along the plan's trajectory), or None for FP32. fuse: also
    write each group's ONNX Runtime fused-attention graph (export/fuse.py), checked like the others.
    """
    import torch
    from tqdm import tqdm

    from deltadit.export.load import load_transformer
    from deltadit.sources import weights_fingerprint
    from deltadit.export.fuse import fuse_attention
    from deltadit.export.onnx import compare, export_segment, onnx_output_names
    from deltadit.models import check_plan_fits
    from deltadit.models import split as split_model
    from deltadit.runtime.runners.onnxrt import OnnxrtRunner

    out = Path(out)
    work = out.with_name(out.name + ".partial")
    (work / "onnx").mkdir(parents=True, exist_ok=True)
    report = ExportReport(out)
    batch = preset.cfg_batch
    side = preset.latent_side
    patch = preset.transformer["patch_size"]
    tic = time.perf_counter()

    if int8 is not None:
        int8.validate()
    stages_bar = tqdm(total=6 if int8 is not None else 5, desc="stages", disable=not progress, bar_format="{desc}: {n}/{total} {postfix}")
    stages_bar.set_postfix_str("load")
    # 1. load
    transformer = load_transformer(preset, weights, random_init, seed)
    check_plan_fits(plan, transformer)
    report.seconds["load"] = time.perf_counter() - tic
    stages_bar.update(1)
    stages_bar.set_postfix_str("split + trace")

    # 2. split, and trace every segment's inputs once
    tic = time.perf_counter()
    s = split_model(transformer, plan.groups, (side // patch, side // patch))
    feeds = s.spec.example_inputs(s.config, batch, preset.text_len, side, torch.Generator().manual_seed(seed))
    traced = trace_inputs(s, feeds)
    report.seconds["split"] = time.perf_counter() - tic
    stages_bar.update(1)

    # 2b. INT8: calibrate quantized copies of the groups along the plan's trajectory
    modules, int8_info, holdout = dict(s.modules), None, None
    if int8 is not None:
        stages_bar.set_postfix_str("calibrate int8")
        tic = time.perf_counter()
        from deltadit.export.int8 import calibrate

        qmodules, int8_info, holdout = calibrate(transformer, s, plan, preset, int8, weights, random_init, progress)
        modules.update(qmodules)
        with torch.no_grad():  # the quantized groups' own outputs are what their ONNX must match
            for name in qmodules:
                args, _ = traced[name]
                traced[name] = (args, {"hidden_states": qmodules[name](*args.values())})
        report.seconds["calibrate"] = time.perf_counter() - tic
        stages_bar.update(1)
    stages_bar.set_postfix_str("export onnx")

    # 3. export ONNX, reusing finished segments whose key is unchanged
    tic = time.perf_counter()
    vers = versions()
    stages_path = work / STAGES_FILE
    stages = json.loads(stages_path.read_text()) if stages_path.is_file() else {}
    entries = []
    for seg in tqdm(s.segments, desc="export onnx", disable=not progress):
        args, outs = traced[seg.name]
        shapes = {n: list(t.shape) for n, t in args.items()}
        key = segment_key(modules[seg.name], seg, shapes, opset, vers) + ("-fused" if fuse else "")
        path = work / "onnx" / f"{seg.name}.onnx"
        done = stages.get(seg.name)
        if done and done["key"] == key and all((work / f["path"]).is_file() and sha256_file(work / f["path"]) == f["sha256"]
                                               for f in done["files"]):
            report.reused.append(seg.name)
            files, ort_graph = done["files"], done.get("ort_graph")
        else:
            written = export_segment(modules[seg.name], seg, args, path, opset)
            ort_graph = None
            if fuse and seg.kind == "group":  # ONNX Runtime variant with fused attention (export/fuse.py)
                fused_path = path.with_name(f"{seg.name}.ort.onnx")
                fused = fuse_attention(path, fused_path)
                if fused:
                    written.append(fused_path)
                    ort_graph = {"path": str(fused_path.relative_to(work)), "fused_attention": fused}
            files = [{"path": str(f.relative_to(work)), "sha256": sha256_file(f)} for f in written]
            stages[seg.name] = {"key": key, "files": files, "ort_graph": ort_graph}
            write_json_atomic(stages_path, stages)
            report.exported.append(seg.name)
        entries.append({
            "name": seg.name, "kind": seg.kind, "block_range": list(seg.block_range) if seg.block_range else None,
            "inputs": [_tensor_desc(n, t) for n, t in args.items()],
            "outputs": [_tensor_desc(n, outs[n], o) for n, o in zip(seg.outputs, onnx_output_names(seg))],
            "files": files,
            "precision": "int8" if int8_info and seg.name in int8_info["quantized"] else "fp32",
            **({"ort_graph": ort_graph} if ort_graph else {}),
        })
    report.seconds["export"] = time.perf_counter() - tic
    stages_bar.update(1)
    stages_bar.set_postfix_str("check vs pytorch")

    # 4. check every segment on ONNX Runtime (CPU) against PyTorch
    tic = time.perf_counter()
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": {"preset": preset.name, "arch": preset.arch, "diffusers_class": s.spec.diffusers_class,
                  "source": weights or preset.source, "random_init": random_init,
                  "weights_sha256": None if random_init else weights_fingerprint(weights or preset.source),
                  "decoder": preset.decoder,
                  "seed": seed if random_init else None,
                  "config": {k: v for k, v in s.config.items() if not k.startswith("_")}},  # no _name_or_path etc.
        "precision": "int8" if int8 is not None else "fp32",
        "export": {"opset": opset, "opt_batch": batch, "max_batch": max_batch or batch, "resolution": preset.resolution,
                   "vae_scale": preset.vae_scale, "latent_side": side, "text_len": preset.text_len, "tolerance": tolerance,
                   **({"int8_tolerance": int8_tolerance} if int8 is not None else {})},
        "sampling": {"scheduler": preset.scheduler, "scheduler_config": preset.scheduler_config,
                     "guidance_scale": preset.guidance_scale, "steps": plan.num_steps},
        "plan": plan.to_dict(),
        "segments": entries,
        "versions": vers,
    }
    runner = OnnxrtRunner(work, manifest, s.segments)
    failures = []
    for seg, entry in tqdm(list(zip(s.segments, entries)), desc="check onnx", disable=not progress):
        args, outs = traced[seg.name]
        got = runner.infer(seg.name, args)
        entry["check"] = compare({k: v.numpy() for k, v in got.items()}, outs)
        report.errors[seg.name] = entry["check"]
        for name, err in entry["check"].items():
            tol = int8_tolerance if entry["precision"] == "int8" else tolerance
            if err["rel"] > tol:
                fused = (f" in its fused-attention graph {entry['ort_graph']['path']} (export with --no-fused-attention "
                         "to skip it)") if entry.get("ort_graph") else ""
                failures.append(f"segment {seg.name} output {name} | ONNX Runtime differs from PyTorch by {err['rel']:.2e} "
                                f"(relative; max abs {err['max_abs']:.2e}){fused}. Expected: <= {tol:.0e}.")
    if int8 is not None and not failures:
        from deltadit.export.int8 import guard

        int8_info.update(guard(s, plan, preset, runner, work, manifest, holdout, int8, progress))
        manifest["int8"] = int8_info
        failures += int8_info.pop("failures")
    runner.deactivate()
    report.seconds["check"] = time.perf_counter() - tic
    stages_bar.update(1)
    stages_bar.set_postfix_str("write bundle")
    if failures:
        stages_bar.close()
        raise DeltaDiTError("export check failed; the bundle was not written:\n" + "\n".join(failures))

    # 4b. TensorRT engines where tensorrt imports and a GPU is visible (else the reason, stated)
    from deltadit.runtime.engines import ensure_engines, unavailable_reason

    reason = unavailable_reason() if build_engines else "TensorRT engines were not built: disabled (--no-engines)."
    if reason is None:
        stages_bar.set_postfix_str("tensorrt engines")
        tic = time.perf_counter()
        paths = ensure_engines(work, manifest)
        manifest["engines"] = {"built": True, "files": {k: str(v.relative_to(work)) for k, v in paths.items()}}
        report.seconds["engines"] = time.perf_counter() - tic
    else:
        manifest["engines"] = {"built": False, "reason": reason}
    report.engines = manifest["engines"]

    # 5. write the manifest last, then publish the folder in one rename
    write_json_atomic(work / MANIFEST, manifest)
    stages_path.unlink(missing_ok=True)
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        work.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        work.rename(out)
    stages_bar.update(1)
    stages_bar.close()
    return report
