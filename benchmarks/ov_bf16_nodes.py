"""Which part of a bundle loses precision in OpenVINO's bf16 mode (issue 14): one block group compiled in bf16
with chosen node types held in f32, and one full step with whole segments held in f32.

    PYTHONPATH=. .venv/bin/python benchmarks/ov_bf16_nodes.py bundles/bench/pixart \\
        --json benchmarks/results/ov-bf16-nodes-amx.json

The folder holds `fp32` and `int8` bundles of one model (benchmarks/matrix.py's). Part 1, per node type: the
INT8 bundle's first group on its bundle's example group inputs (the head's outputs), converted to an OpenVINO
IR in a temporary folder whose layers of the listed types carry OpenVINO's `precise` attribute (no conversion
to a lower precision: the CPU plugin keeps them in f32), compiled in bf16; its SQNR against the same graph in
f32 and its median time of 3 calls. Part 2, per segment: one full step of each bundle with the segments of the
listed kinds compiled in f32 and the others in bf16, SQNR against ONNX Runtime FP32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

NODE_SETS = {"none": (), "MVN": ("MVN",), "MVN, Add": ("MVN", "Add"), "MVN, Add, Multiply": ("MVN", "Add", "Multiply"),
             "all but MatMul, Softmax": "-MatMul,Softmax"}
F32_KINDS = {"none": (), "head": ("head",), "head, tail": ("head", "tail")}


def _sqnr(ref, x) -> float:
    from deltadit.export.quantize import sqnr

    return sqnr(ref, x)["sqnr_db"]


def _mark(xml_in: Path, xml_out: Path, types) -> int:
    """Copy the IR with OpenVINO's `precise` (DisablePrecisionConversion, any to any) on the listed layer types
    (a "-A,B" string: every type but those)."""
    but = isinstance(types, str)
    listed = set(types.lstrip("-").split(",")) if but else set(types)
    tree, n = ET.parse(xml_in), 0
    for layer in tree.getroot().iter("layer"):
        kind = layer.get("type")
        if kind in ("Parameter", "Result", "Const") or (kind in listed) == but:
            continue
        rt = layer.find("rt_info")
        rt = ET.SubElement(layer, "rt_info") if rt is None else rt
        ET.SubElement(rt, "attribute", {"name": "precise", "version": "0", "value": "dynamic:dynamic"})
        n += 1
    tree.write(xml_out)
    return n


def _run(core, model, precision: str, feeds: dict):
    compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()
    out = request.infer(feeds)[compiled.output(0)].copy()
    times = []
    for _ in range(3):
        tic = time.perf_counter()
        request.infer(feeds)
        times.append(time.perf_counter() - tic)
    return out, statistics.median(times)


def per_node(root: Path) -> dict:
    import openvino as ov

    from deltadit.runtime import load

    bundle = load(root / "int8", backend="openvino", precision="f32")
    head, group = bundle.manifest.segments[0], bundle.manifest.segments[1]
    feeds = {**bundle.example_feeds(), **bundle.runner.infer(head.name, bundle.example_feeds())}
    wanted = {i.name for i in group.inputs}
    feeds = {k: v.numpy() for k, v in feeds.items() if k in wanted}
    core, out = ov.Core(), {"group": group.name, "inputs_from": head.name}
    reference, out["f32_s"] = _run(core, str(bundle.root / group.graph), "f32", feeds)
    with tempfile.TemporaryDirectory() as tmp:
        ir = Path(tmp) / "g.xml"
        ov.save_model(core.read_model(str(bundle.root / group.graph)), str(ir), compress_to_fp16=False)
        for label, types in NODE_SETS.items():
            marked = _mark(ir, Path(tmp) / "m.xml", types)
            got, seconds = _run(core, core.read_model(str(Path(tmp) / "m.xml"), str(ir.with_suffix(".bin"))), "bf16", feeds)
            out[label] = {"marked_f32": marked, "sqnr_db_vs_f32": _sqnr(reference, got), "seconds": seconds}
            print(label, out[label], flush=True)
    return out


def per_segment(root: Path) -> dict:
    from deltadit.runtime import load
    from deltadit.runtime.runners import openvino as ov_runner

    def step(b):
        return b.uncached().step(0, b.example_feeds())["sample"].numpy()

    reference, out = step(load(root / "fp32")), {}
    kinds = ov_runner.BF16_KINDS
    try:
        for label, f32 in F32_KINDS.items():
            ov_runner.BF16_KINDS = tuple(k for k in ("head", "group", "tail") if k not in f32)
            for name in ("fp32", "int8"):
                got = step(load(root / name, backend="openvino", precision="bf16"))
                out[f"{name}, f32: {label}"] = _sqnr(reference, got)
                print(name, "f32:", label, out[f"{name}, f32: {label}"], flush=True)
    finally:
        ov_runner.BF16_KINDS = kinds
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("root", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    from deltadit.runtime.cpu import machine

    result = {"machine": machine(), "per_node_type": per_node(args.root), "per_segment": per_segment(args.root)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
