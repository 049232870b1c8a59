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


def export_segment(module, seg: Segment, feeds: dict, path: Path, opset: int, unbatched=(), fp16: bool = False
                   ) -> list[Path]:
    """Write ``seg`` to ``path`` with its weights in ``path.data``; return the files written. Axis 0 of
    every tensor is the dynamic batch, except for the ``unbatched`` names (e.g. FLUX's position ids).
    module: the segment's module, or a dict holding it under ``seg.name``: then it is taken out once
    traced, so its weights can be freed before the ONNX is loaded back (the export's peak memory).
    fp16: the graph through :func:`to_float16`."""
    import gc

    if isinstance(module, dict):
        tmp = _trace(module.pop(seg.name), seg, feeds, path, opset, unbatched)
        gc.collect()  # a module caught in a reference cycle frees its weights now
    else:
        tmp = _trace(module, seg, feeds, path, opset, unbatched)
    return _externalize(tmp, path, fp16)


def _trace(module, seg: Segment, feeds: dict, path: Path, opset: int, unbatched=()) -> Path:
    """The traced graph, weights inline, in a temporary file next to ``path`` (returned)."""
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
    return tmp


def _externalize(tmp: Path, path: Path, fp16: bool = False) -> list[Path]:
    """``tmp`` re-saved as ``path`` with its weights in ``path.data`` (one file, tensors over 1 KiB), the
    temporaries removed; returns the files written."""
    import onnx

    model = onnx.load(str(tmp))
    if fp16:
        model = to_float16(model)
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


# Kept in float32 inside FP16 graphs: reductions and roots whose fp16 intermediates overflow (65504) or
# lose the small variances of a normalisation (the decomposed LayerNorm of opsets < 17, the RMSNorm
# above), and the Sin / Cos / Exp / Range of sinusoidal timestep embeddings (inside DiT's blocks), whose
# arguments reach ~1000 where fp16 steps by 0.5. ONNX's fused LayerNormalization (opset >= 17) keeps its
# mean and variance in float32 by itself (stash_type = 1) and Softmax kernels subtract the row max and
# accumulate in float32, so both run in fp16; a Cast around the attention Softmax would also split the
# MatMul-Softmax-MatMul that TensorRT fuses into one kernel.
FP16_KEEP_FP32 = ("ReduceMean", "ReduceSum", "ReduceSumSquare", "Sqrt", "Reciprocal", "Sin", "Cos", "Exp", "Range")


def to_float16(model):
    """``model`` (an ONNX ModelProto) with float16 weights and activations for GPU execution providers
    (CUDA, TensorRT); graph inputs and outputs stay float32 with Casts at the boundary, so a runner feeds
    an FP16 segment exactly like an FP32 one. The ops in :data:`FP16_KEEP_FP32` and the squares feeding a
    reduction (x * x or Pow: a variance, which overflows fp16 from |x| > 256) stay float32; ONNX
    Runtime's converter inserts the Casts. (GELU's x ** 3 stays fp16: tanh saturates before it overflows.)"""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    reduced = {i for n in model.graph.node if n.op_type.startswith("Reduce") for i in n.input}
    squares = [n.name for n in model.graph.node if n.output[0] in reduced and (
        n.op_type == "Pow" or (n.op_type == "Mul" and len(n.input) == 2 and n.input[0] == n.input[1]))]
    model = convert_float_to_float16(model, keep_io_types=True, op_block_list=DEFAULT_OP_BLOCK_LIST + list(FP16_KEEP_FP32),
                                     node_block_list=squares)
    _drop_duplicate_nodes(model.graph)
    _sort_nodes(model.graph)  # the converter appends the input Casts last; ONNX (and TensorRT's parser) want order
    return model


def _drop_duplicate_nodes(graph) -> None:
    """Remove nodes that repeat an earlier node exactly (op, inputs, attributes, outputs). ONNX Runtime's
    float16 converter inserts one ``<tensor>_cast_to_fp32`` Cast per consumer on some graphs (seen on
    torch 2.11's export of PixArt's cross-attention), which breaks single static assignment."""
    seen, kept = {}, []
    for node in graph.node:
        key = (node.op_type, tuple(node.input), tuple(a.SerializeToString() for a in node.attribute))
        clash = [o for o in node.output if o in seen]
        if clash and all(seen[o] == key for o in node.output):
            continue
        if clash:
            raise ValueError(f"graph {graph.name} | tensor {clash[0]} is produced by two different nodes")
        seen.update((o, key) for o in node.output)
        kept.append(node)
    graph.ClearField("node")
    graph.node.extend(kept)


def _sort_nodes(graph) -> None:
    """Order ``graph``'s nodes topologically (stable: a node keeps its place unless an input comes later)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        waiting = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise ValueError(f"graph {graph.name} | has a cycle or an undefined input at node {waiting[0].name}")
        pending = waiting
    graph.ClearField("node")
    graph.node.extend(ordered)


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
