"""The INT8 stages of the export: calibrate (before ONNX) and guard (after the ONNX Runtime check).

calibrate: record a held-out FP generation (inputs and FP outputs of every group, final latents), then
quantize the groups in place with ModelOpt while the denoising loop runs the plan over the calibration
set. Nothing keeps an FP copy of the model (at 28 PixArt-α blocks the copy was ~2.2 GB of RSS).
guard (export/check.py runs it, one ONNX Runtime session at a time): per quantized group, SQNR / relative
error of the shipped INT8 ONNX on the held-out inputs, measured on the change the group makes
(:func:`group_guard`); which MatMuls ONNX Runtime runs as INT8 kernels (:func:`int8_kernels`); and the
final latents of the held-out generation on the exported bundle against the FP ones (:func:`final_latents`).
"""

from __future__ import annotations

import json
from pathlib import Path

from deltadit.errors import DeltaDiTError
from deltadit.export.quantize import (GroupRecorder, calibration_conditions, group_quality, keep_fp_patterns,
                                      kept_fp_layers, quantize_groups, sqnr)

HOLDOUT_SEED_OFFSET = 1000  # the held-out generation's noise seed, apart from the calibration seeds


def _conditioner(spec, preset, weights, random_init):
    """The model's text encoder when its pipeline folder is on disk (None: the spec's random conditions)."""
    if not spec.prompted or random_init:
        return None, None
    from deltadit.runtime.conditioning import components_root, make_conditioner

    root, looked = components_root(weights or preset.source)
    if root is None:
        return None, None
    try:
        return make_conditioner(spec.conditioning, root, looked, preset.text_len, preset.transformer), root
    except DeltaDiTError:  # a transformer-only folder: no text encoder to calibrate with
        return None, root


def _model_prompts(root) -> tuple[str, ...] | None:
    """A model folder may list its classes (classes.json): calibrate on "a <class>" prompts."""
    if root is not None and (Path(root) / "classes.json").is_file():
        return tuple(f"a {c}" for c in json.loads((Path(root) / "classes.json").read_text()))
    return None


def run_generation(executor, spec, config, preset, cond, uncond, seed):
    """One generation with the preset's sampler from seeded noise (as runtime.generate does)."""
    from deltadit.runtime.sampling import from_preset, sample

    return sample(executor, spec, config, from_preset(preset), cond, uncond, seed)


def calibrate(transformer, fp_split, plan, preset, options, weights, random_init, progress):
    """Quantizes the groups of ``fp_split`` (a split of ``transformer``) in place. Returns (the quantized
    group modules by name, manifest info, held-out data for :func:`guard`: group inputs, the FP groups'
    outputs on them, final latents)."""
    from deltadit.console import track
    from deltadit.runtime.executor import DeltaDiTExecutor
    from deltadit.runtime.runners.torch import TorchRunner

    spec, config = fp_split.spec, fp_split.config
    conditioner, root = _conditioner(spec, preset, weights, random_init)
    prompts = options.prompts or _model_prompts(root)
    conds = calibration_conditions(spec, config, options.count + 1, options.seed, preset.text_len, conditioner, prompts)
    calib, (h_cond, h_uncond) = conds[:-1], conds[-1]  # the last one is held out

    # Held-out FP generation: each group's inputs (spread over the steps), its outputs, the final latents.
    with GroupRecorder(fp_split, plan.num_steps) as rec:
        fp_executor = DeltaDiTExecutor(plan, fp_split.segments, TorchRunner(fp_split))
        fp_latents = run_generation(fp_executor, spec, config, preset, h_cond, h_uncond, options.seed + HOLDOUT_SEED_OFFSET)

    # Quantize the groups (in place) while the plan's loop runs over the calibration set.
    groups = {seg.name: fp_split.modules[seg.name] for seg in fp_split.segments if seg.kind == "group"}
    q_executor = DeltaDiTExecutor(plan, fp_split.segments, TorchRunner(fp_split))

    def forward_loop():
        for i, (cond, uncond) in enumerate(track(calib, "calibrate", enabled=progress, unit="generations")):
            run_generation(q_executor, spec, config, preset, cond, uncond, options.seed + i)

    chosen = keep_fp_patterns(groups, transformer, options.keep_fp)
    layers = quantize_groups(groups, options, spec.int8_keep_fp + chosen, forward_loop)
    info = {
        "options": options.to_dict(),
        "calibration": {
            "generations": len(calib), "steps_each": plan.num_steps, "plan": plan.variant,
            "conditioning": ("prompts" if conditioner is not None else
                             "random caption embeddings (no text encoder on disk)" if spec.prompted
                             else "class labels"),
            "prompts": list(prompts or ()) if conditioner is not None else None,
        },
        "quantized": layers,
        "kept_fp": {name: kept_fp_layers(m, spec.int8_keep_fp) for name, m in groups.items()},
        "kept_fp_chosen": list(options.keep_fp),  # --int8-keep-fp, over the transformer's module names
        "kept_fp_segments": [seg.name for seg in fp_split.segments if seg.kind != "group"],
    }
    holdout = {"samples": rec.samples, "references": rec.references, "latents": fp_latents, "cond": h_cond, "uncond": h_uncond,
               "seed": options.seed + HOLDOUT_SEED_OFFSET}
    return groups, info, holdout


def int8_kernels(path: Path) -> dict:
    """Which MatMuls ONNX Runtime (CPU, all optimisations) runs as INT8 kernels in the ONNX at ``path``:
    counts of integer MatMul kernels, and of float MatMuls still fed by a DequantizeLinear (a quantized
    linear layer ORT left in FP32; should be 0)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(opts.optimized_model_filepath, load_external_data=False).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    int8_ops = ("MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul", "QGemm")
    counts = {"int8_matmuls": sum(n.op_type in int8_ops for n in graph.node),
              "fp_matmuls_with_qdq": sum(n.op_type in ("MatMul", "Gemm") and any(producer.get(i) == "DequantizeLinear" for i in n.input)
                                         for n in graph.node),
              "fp_matmuls": sum(n.op_type in ("MatMul", "Gemm") for n in graph.node)}
    return counts


def group_guard(seg, runner, holdout: dict, options) -> tuple[dict, str | None]:
    """One quantized group as exported (``runner``: ONNX Runtime) against the FP outputs recorded by
    :func:`calibrate` on the held-out inputs, on the change it makes. Returns (quality, failure line or None)."""
    q = group_quality(holdout["references"].get(seg.name, []),
                      lambda feeds: {k: v.numpy() for k, v in runner.infer(seg.name, feeds).items()},
                      holdout["samples"].get(seg.name, []), seg.outputs)
    if q["sqnr_db"] >= options.min_sqnr_db:
        return q, None
    return q, (f"segment {seg.name} | INT8 SQNR {q['sqnr_db']:.1f} dB on held-out inputs (relative error "
               f"{q['rel_err']:.2e} on the group's change) is below {options.min_sqnr_db} dB. Expected: "
               "try --calibration percentile or smoothquant, more --calib-count, or keep more layers FP.")


def final_latents(split, plan, preset, runner, holdout: dict) -> dict:
    """The held-out generation end to end on the exported bundle (``runner``: every segment) against the
    FP latents recorded by :func:`calibrate` (``split`` supplies only segments, spec and config)."""
    from deltadit.runtime.executor import DeltaDiTExecutor

    executor = DeltaDiTExecutor(plan, split.segments, runner)
    latents = run_generation(executor, split.spec, split.config, preset, holdout["cond"], holdout["uncond"], holdout["seed"])
    ref = holdout["latents"]
    rel = float((latents - ref).abs().max() / ref.abs().max())
    final = sqnr(ref.numpy(), latents.numpy())
    return {"max_rel_err": rel, "sqnr_db": final["sqnr_db"], "steps": plan.num_steps,
            "against": "FP PyTorch with the same plan (the FP bundle matches it within the export tolerance)"}
