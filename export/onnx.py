"""ONNX stages: export one segment (legacy TorchScript exporter, dynamic batch) and check it against PyTorch.

The legacy exporter (``dynamo=False``) is used on purpose: on this stack it matched PyTorch to ~4e-8
on PixArt blocks and is the one ModelOpt-quantized modules export through (../shared/notes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deltadit.models.spec import Segment


def onnx_output_names(seg: Segment) -> list[str]:
    """ONNX forbids a graph output named like an input: such outputs get an ``_out`` suffix."""
    return [f"{n}_out" if n in seg.inputs else n for n in seg.outputs]


_SYMBOLICS: set[int] = set()


def _register_symbolics(opset: int) -> None:
    """aten::rms_norm (diffusers' RMSNorm: SD3.5 / FLUX qk-norm) has no ONNX op before opset 23 in
    the legacy exporter: export it as x / sqrt(mean(x^2) + eps) * weight over the normalised axes."""
    if opset in _SYMBOLICS:
        return
    import torch
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx import symbolic_helper as sh

    def rms_norm(g, x, normalized_shape, weight, eps):
        dims = sh._get_const(normalized_shape, "is", "normalized_shape")
        eps = sh._maybe_get_const(eps, "f")
        eps = 1.1920928955078125e-07 if eps is None or sh._is_none(eps) else float(eps)  # torch's default: float32 eps
        axes = list(range(-len(dims), 0))
        mean = (g.op("ReduceMean", g.op("Mul", x, x), axes_i=axes, keepdims_i=1) if opset < 18 else
                g.op("ReduceMean", g.op("Mul", x, x), g.op("Constant", value_t=torch.tensor(axes)),
                     keepdims_i=1))
        out = g.op("Div", x, g.op("Sqrt", g.op("Add", mean, g.op("Constant", value_t=torch.tensor(eps)))))
        return out if sh._is_none(weight) else g.op("Mul", out, weight)

    register_custom_op_symbolic("aten::rms_norm", rms_norm, opset)
    _SYMBOLICS.add(opset)


def export_segment(module, seg: Segment, feeds: dict, path: Path, opset: int, unbatched=()) -> list[Path]:
    """Write ``seg`` to ``path`` with its weights in ``path.data``; return the files written. Axis 0 of
    every tensor is the dynamic batch, except for the ``unbatched`` names (e.g. FLUX's position ids)."""
    import onnx
    import torch

    if module.training:
        raise ValueError(f"segment {seg.name} is in training mode (dropout / label drop would be traced); call .eval()")
    _register_symbolics(opset)
    tmp = path.with_name(path.stem + ".raw.onnx")
    outs = onnx_output_names(seg)
    with torch.no_grad():
        torch.onnx.export(
            module, tuple(feeds[n] for n in seg.inputs), str(tmp), input_names=list(seg.inputs), output_names=outs,
            dynamic_axes={n: {0: "batch"} for n, base in zip(list(seg.inputs) + outs, list(seg.inputs) + list(seg.outputs))
                          if base not in unbatched}, opset_version=opset,
            do_constant_folding=True, dynamo=False,
        )
    model = onnx.load(str(tmp))
    data = path.with_name(path.name + ".data")
    for f in (path, data):
        f.unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    for f in tmp.parent.glob(tmp.name + "*"):
        f.unlink()
    for f in tmp.parent.glob(tmp.stem + "*.data"):
        f.unlink()
    return [path] + ([data] if data.exists() else [])


def compare(outputs: dict, reference: dict) -> dict:
    """Per output: max abs error and max abs error relative to the reference's max magnitude."""
    report = {}
    for name, ref in reference.items():
        ref = ref.detach().float().numpy() if hasattr(ref, "detach") else np.asarray(ref, dtype=np.float64)
        got = np.asarray(outputs[name], dtype=np.float64)
        err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        report[name] = {"max_abs": err, "rel": err / scale if scale > 0 else err}
    return report
