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


def export_segment(module, seg: Segment, feeds: dict, path: Path, opset: int) -> list[Path]:
    """Write ``seg`` to ``path`` with its weights in ``path.data``; return the files written."""
    import onnx
    import torch

    if module.training:
        raise ValueError(f"segment {seg.name} is in training mode (dropout / label drop would be traced); call .eval()")
    tmp = path.with_name(path.stem + ".raw.onnx")
    outs = onnx_output_names(seg)
    with torch.no_grad():
        torch.onnx.export(
            module, tuple(feeds[n] for n in seg.inputs), str(tmp), input_names=list(seg.inputs), output_names=outs,
            dynamic_axes={n: {0: "batch"} for n in list(seg.inputs) + outs}, opset_version=opset,
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
