"""Export stage 4: every segment's ONNX graph on ONNX Runtime against PyTorch, then the INT8 quality guard.

One ONNX Runtime session at a time: each segment's session is created, checked against PyTorch (and, for
an INT8 group, against its recorded FP outputs), and dropped before the next one is created. Only the
INT8 guard's held-out generation holds every segment's session, as the runtime does. (Before, every
session was held through the check and again through the guard, whose kernel probe opened one more on
top: the stage's peak, 3552 MiB of 3552 at 8 PixArt-α blocks; benchmarks/export_memory.py --sample.)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from deltadit.console import track
from deltadit.errors import DeltaDiTError
from deltadit.plan import DeltaPlan
from deltadit.presets import Preset


def check_onnx(work: Path, manifest: dict, split, traced: dict, entries: list[dict], plan: DeltaPlan, preset: Preset,
               tolerance: float, int8_tolerance: float, int8, int8_info, holdout, report,
               progress: bool, fp16_tolerance: float | None = None) -> None:
    """Stage 4: every segment on ONNX Runtime (CPU) against PyTorch, then (INT8) the quality guard;
    raises listing every failure (the guard's only when every graph passed). Fills each entry's ``check``
    and, for INT8, ``manifest["int8"]``."""
    from deltadit.memory import release_memory
    from deltadit.manifest import Manifest
    from deltadit.runtime.runners.onnxrt import OnnxrtRunner

    if int8_info is not None:  # the runner reads the weight bits (emulated int8 on CPUs that would saturate)
        manifest["int8"] = int8_info
    tolerances = {"fp32": tolerance, "int8": int8_tolerance, "fp16": fp16_tolerance}
    parsed = Manifest.from_dict(manifest)
    failures, guarded = [], {}
    for seg, entry in track(list(zip(split.segments, entries)), "check onnx", enabled=progress, unit="segments"):
        runner = OnnxrtRunner(work, replace(parsed, segments=(parsed.segment(seg.name),)), (seg,))
        try:
            failures += _check_graph(runner, seg, entry, traced[seg.name], tolerances[entry["precision"]], report)
            if int8 is not None and seg.kind == "group":
                guarded[seg.name] = _guard_group(runner, seg, holdout, int8)
        finally:
            runner.deactivate()
            release_memory()
        if seg.name in guarded:  # its own ONNX Runtime session, after the runner's is gone
            guarded[seg.name]["kernels"] = _kernels(work, runner, seg.name, guarded[seg.name].pop("emulated"))
    if int8 is not None and not failures:
        failures += _guard_bundle(work, parsed, split, plan, preset, int8_info, holdout, guarded)
        manifest["int8"] = int8_info
    if failures:
        raise DeltaDiTError("export check failed; the bundle was not written:\n" + "\n".join(failures))


def _check_graph(runner, seg, entry: dict, feeds_and_refs: tuple, tol: float, report) -> list[str]:
    """One segment's graph (the fused-attention one where there is one) on ONNX Runtime vs PyTorch."""
    from deltadit.export.onnx import compare

    args, outs = feeds_and_refs
    errs = compare({k: v.numpy() for k, v in runner.infer(seg.name, args).items()}, outs)
    entry["check"] = report.errors[seg.name] = errs
    where = (f" in its fused-attention graph {entry['ort_graph']['path']} (export with --no-fused-attention "
             "to skip it)") if entry.get("ort_graph") else ""
    return [f"segment {seg.name} output {name} | ONNX Runtime differs from PyTorch by {err['rel']:.2e} "
            f"(relative; max abs {err['max_abs']:.2e}){where}. Expected: <= {tol:.0e}."
            for name, err in errs.items() if err["rel"] > tol]


def _guard_group(runner, seg, holdout: dict, int8) -> dict:
    """The INT8 guard's per-group part on the segment's open session: quality and failure line."""
    from deltadit.export.int8 import group_guard

    quality, failure = group_guard(seg, runner, holdout, int8)
    # On an x86 CPU without VNNI an 8-bit-weight group runs dequantized (exact) instead of int8 kernels.
    return {"quality": quality, "failure": failure, "emulated": seg.name in getattr(runner, "emulated_int8", [])}


def _kernels(work: Path, runner, name: str, emulated: bool) -> dict:
    from deltadit.export.int8 import int8_kernels

    return {**int8_kernels(work / runner.graph_path(runner.entries[name])), "emulated_here": emulated}


def _guard_bundle(work: Path, parsed, split, plan: DeltaPlan, preset: Preset, int8_info: dict, holdout: dict,
                  guarded: dict) -> list[str]:
    """The guard's results into ``int8_info`` (quality, kernels, final latents of the held-out generation
    on every segment's session); returns its failure lines."""
    from deltadit.export.int8 import final_latents
    from deltadit.runtime.runners.onnxrt import OnnxrtRunner

    runner = OnnxrtRunner(work, parsed, split.segments)
    try:
        final = final_latents(split, plan, preset, runner, holdout)
    finally:
        runner.deactivate()
    int8_info.update({"quality": {n: g["quality"] for n, g in guarded.items()},
                      "kernels": {n: g["kernels"] for n, g in guarded.items()},
                      "final_latents": final})
    return [g["failure"] for g in guarded.values() if g["failure"]]
