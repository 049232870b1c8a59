"""INT8 sensitivity measured on the exported graph: the bundle's own QDQ ONNX on ONNX Runtime.

A layer is switched to floating point by removing its Q/DQ pairs from the group graph: the QDQ graph
keeps each Linear's float weight in front of its weight quantizer (ONNX Runtime folds it into int8 when
the session opens), so a stripped layer computes exactly what the FP32 layer does, SmoothQuant's
pre-scale included (the scaled input times the inversely scaled weight). The variants are graph-only
bytes whose weights ONNX Runtime reads from the bundle's own files: nothing is written, the bundle stays
closed. Layers are named as the transformer's modules, the names ``--int8-keep-fp`` takes, so the
keep-set found here is an export option as it stands.
"""

from __future__ import annotations

from collections import defaultdict

from deltadit.errors import DeltaDiTError

QUANTIZERS = ("/input_quantizer/", "/weight_quantizer/")  # ModelOpt's scopes of a Linear's two quantizers


def quantized_layers(model) -> dict[str, list[tuple[object, object]]]:
    """{Linear module name within the graph's module (e.g. 'blocks.0.attn1.to_q'): the (QuantizeLinear,
    DequantizeLinear) pairs of its input and weight quantizers} of an ONNX model exported from ModelOpt fake
    quantization. The layer is named by its weight, the float initializer its weight quantizer reads."""
    producers = {out: n for n in model.graph.node for out in n.output}
    initializers = {i.name for i in model.graph.initializer}
    scopes: dict[str, list] = defaultdict(list)
    for dq in model.graph.node:
        marker = next((m for m in QUANTIZERS if m in dq.name), None)
        if dq.op_type != "DequantizeLinear" or marker is None:
            continue
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            raise DeltaDiTError(f"int8 graph | {dq.name} is not fed by a QuantizeLinear. Expected: the QDQ ONNX of "
                                "deltadit-export --int8.")
        scopes[dq.name.split(marker)[0]].append((q, dq))
    layers = {}
    for scope, pairs in scopes.items():
        weights = [q.input[0] for q, dq in pairs if "/weight_quantizer/" in dq.name and q.input[0] in initializers]
        if len(weights) != 1 or not weights[0].endswith(".weight"):
            raise DeltaDiTError(f"int8 graph | the quantized layer {scope} has no named float weight. Expected: the "
                                "QDQ ONNX of deltadit-export --int8 (float weights in front of their quantizers).")
        layers[weights[0].removesuffix(".weight")] = pairs
    return layers


def strip(model, pairs: list[tuple[object, object]]):
    """A copy of ``model`` without these (Q, DQ) pairs: each DQ's consumers read the Q's float input, and
    the constants (scales, zero points) only they used are dropped."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    source = {dq.output[0]: q.input[0] for q, dq in pairs}
    removed = {(n.name, n.op_type) for pair in pairs for n in pair}
    kept = [n for n in out.graph.node if (n.name, n.op_type) not in removed]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in source:
                node.input[i] = source[name]
    used = {name for n in kept for name in n.input} | {o.name for o in out.graph.output}
    kept = [n for n in kept if n.op_type != "Constant" or any(o in used for o in n.output)]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    return out


def module_names(transformer, bundle) -> dict[str, dict[str, str]]:
    """{segment: {Linear name within its group module: the transformer's module name}} for ``bundle``'s
    groups, from the split of ``transformer`` at the bundle's own groups."""
    from torch import nn

    from deltadit.models import split

    s = split(transformer, bundle.plan.groups)
    absolute = {id(m): n for n, m in transformer.named_modules()}
    return {seg.name: {rel: absolute[id(m)] for rel, m in s.modules[seg.name].named_modules()
                       if isinstance(m, nn.Linear) and id(m) in absolute}
            for seg in s.segments if seg.kind == "group"}


class GraphLayers:
    """Per-layer switches on a loaded INT8 bundle on ONNX Runtime: ``names`` its quantized Linears (the
    transformer's module names); ``set(on)`` leaves exactly those quantized and runs the others in float,
    by reopening each group whose set changed on its graph with the other layers' Q/DQ removed."""

    def __init__(self, bundle, transformer):
        import onnx

        from deltadit.runtime.runners.onnxrt import OnnxrtRunner

        if not isinstance(bundle.runner, OnnxrtRunner):
            raise DeltaDiTError(f"int8 graph sensitivity | runs on ONNX Runtime, not {bundle.runner.name}. Expected: "
                                "the bundle loaded with backend='onnxrt'.")
        self.runner = bundle.runner.activate()
        names = module_names(transformer, bundle)
        self.graphs, self.layers = {}, {}
        for entry in bundle.manifest.segments:
            if entry.precision == "int8":
                graph = onnx.load(str(bundle.root / self.runner.graph_path(entry)), load_external_data=False)
                self.graphs[entry.name] = graph
                for rel, pairs in quantized_layers(graph).items():
                    self.layers[names[entry.name][rel]] = (entry.name, pairs)
        if not self.layers:
            raise DeltaDiTError(f"int8 graph sensitivity | {bundle.root} has no quantized layer. Expected: a bundle "
                                "from deltadit-export --int8.")
        self.names = list(self.layers)
        self._off = dict.fromkeys(self.graphs, frozenset())  # per group: the layers now in float (as shipped: none)

    def set(self, on: set[str]) -> None:
        for seg, graph in self.graphs.items():
            off = frozenset(n for n, (s, _) in self.layers.items() if s == seg and n not in on)
            if off != self._off[seg]:
                variant = strip(graph, [pair for n in sorted(off) for pair in self.layers[n][1]])
                self.runner.reopen(seg, variant.SerializeToString())
                self._off[seg] = off


def bundle_switches(preset, transformer, screen, root, options):
    """(GraphLayers, generate) for the sensitivity on the exported graph: the uncached INT8 bundle of
    ``preset`` at its T (the eval's "int8" row, ``options`` = the export's Int8Options) exported or reused
    under ``root``; generate() -> ``screen``'s held-out images on it with the layers as now switched."""
    from deltadit.eval.run import Row, bundle_for
    from deltadit.runtime import load
    from deltadit.tune.calibration import bundle_latents
    from deltadit.tune.score import _reference_plan

    row = Row("int8", _reference_plan(preset), True, options.calibration, options.alpha)
    bundle = load(bundle_for(row, preset, root, options))
    return GraphLayers(bundle, transformer), lambda: screen.decode(bundle_latents(bundle, screen))
