"""Export stage 4: every segment's ONNX graph on ONNX Runtime against PyTorch, then the INT8 quality guard."""

from __future__ import annotations

from pathlib import Path

from deltadit.console import track
from deltadit.errors import DeltaDiTError
from deltadit.plan import DeltaPlan
from deltadit.presets import Preset


def check_onnx(work: Path, manifest: dict, split, traced: dict, entries: list[dict], plan: DeltaPlan, preset: Preset,
               tolerance: float, int8_tolerance: float, int8, int8_info, holdout, report,
               progress: bool, fp16_tolerance: float | None = None) -> None:
    """Stage 4: every segment on ONNX Runtime (CPU) against PyTorch, then (INT8) the quality guard;
    raises listing every failure. Fills each entry's ``check`` and, for INT8, ``manifest["int8"]``."""
    from deltadit.runtime.runners.onnxrt import OnnxrtRunner

    if int8_info is not None:  # the runner reads the weight bits (emulated int8 on CPUs that would saturate)
        manifest["int8"] = int8_info
    tolerances = {"fp32": tolerance, "int8": int8_tolerance, "fp16": fp16_tolerance}
    failures = _check_graphs(work, manifest, split, traced, entries, tolerances, report, progress)
    if int8 is not None and not failures:
        from deltadit.export.int8 import guard

        runner = OnnxrtRunner(work, manifest, split.segments)
        try:
            int8_info.update(guard(split, plan, preset, runner, work, manifest, holdout, int8, progress))
        finally:
            runner.deactivate()
        manifest["int8"] = int8_info
        failures += int8_info.pop("failures")
    if failures:
        raise DeltaDiTError("export check failed; the bundle was not written:\n" + "\n".join(failures))


def _check_graphs(work, manifest, split, traced, entries, tolerances: dict, report, progress) -> list[str]:
    """Each segment's graph (the fused-attention one where there is one) on ONNX Runtime vs PyTorch,
    within ``tolerances[its precision]``."""
    from deltadit.export.onnx import compare
    from deltadit.runtime.runners.onnxrt import OnnxrtRunner

    failures, runner = [], OnnxrtRunner(work, manifest, split.segments)
    try:
        for seg, entry in track(list(zip(split.segments, entries)), "check onnx", enabled=progress, unit="segments"):
            args, outs = traced[seg.name]
            errs = compare({k: v.numpy() for k, v in runner.infer(seg.name, args).items()}, outs)
            entry["check"] = report.errors[seg.name] = errs
            tol = tolerances[entry["precision"]]
            where = (f" in its fused-attention graph {entry['ort_graph']['path']} (export with --no-fused-attention "
                     "to skip it)") if entry.get("ort_graph") else ""
            failures += [f"segment {seg.name} output {name} | ONNX Runtime differs from PyTorch by {err['rel']:.2e} "
                         f"(relative; max abs {err['max_abs']:.2e}){where}. Expected: <= {tol:.0e}."
                         for name, err in errs.items() if err["rel"] > tol]
    finally:
        runner.deactivate()
    return failures
