"""ONNX Runtime backend: one InferenceSession per bundle segment.

Tensors in and out are torch tensors (the executor's Δ arithmetic stays in torch); on CPU they cross
to ONNX Runtime as zero-copy numpy views. Execution providers are selectable (CPU, CUDA, TensorRT EP
where the installed onnxruntime has them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deltadit.errors import DeltaDiTError
from deltadit.models.spec import Segment
from deltadit.runtime.runners.base import Runner


class OnnxrtRunner(Runner):
    name = "onnxrt"

    def __init__(self, root: Path, manifest: dict, segments: tuple[Segment, ...], providers: list[str] | None = None):
        super().__init__(segments)
        self.root = Path(root)
        self.entries = {s["name"]: s for s in manifest["segments"]}
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.sessions: dict = {}

    def _activate_impl(self) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise DeltaDiTError(f"providers | {', '.join(missing)} not available in this onnxruntime "
                                f"(has {', '.join(available)}). Expected: install onnxruntime-gpu for CUDA / TensorRT.")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        for name, entry in self.entries.items():
            self.sessions[name] = ort.InferenceSession(str(self.root / entry["files"][0]["path"]), opts,
                                                       providers=self.providers)

    def _deactivate_impl(self) -> None:
        self.sessions.clear()

    def _check_shapes(self, entry: dict, feeds: dict) -> None:
        problems = []
        for spec in entry["inputs"]:
            got = tuple(feeds[spec["name"]].shape)
            want = spec["shape"]
            if len(got) != len(want) or any(w != "batch" and g != w for g, w in zip(got, want)):
                shown = ["batch" if w == "batch" else w for w in want]
                problems.append(f"input {spec['name']} of segment {entry['name']} | shape {list(got)} does not match "
                                f"the bundle. Expected: {shown} (the bundle was exported for this shape; re-export "
                                "with --resolution / text length to change it).")
        batches = {tuple(feeds[s["name"]].shape)[0] for s in entry["inputs"] if feeds[s["name"]].dim() > 0}
        if len(batches) > 1:
            problems.append(f"segment {entry['name']} | inputs disagree on the batch size {sorted(batches)}.")
        if problems:
            raise DeltaDiTError("\n".join(problems))

    def _infer_impl(self, segment: Segment, feeds: dict) -> dict:
        import torch

        entry = self.entries[segment.name]
        self._check_shapes(entry, feeds)
        session = self.sessions[segment.name]
        wanted = {i.name for i in session.get_inputs()}  # the exporter drops inputs a graph does not use
        arrays = {n: np.ascontiguousarray(t.detach().cpu().numpy()) for n, t in feeds.items() if n in wanted}
        names = [o["onnx_name"] for o in entry["outputs"]]
        results = session.run(names, arrays)
        return {o["name"]: torch.from_numpy(r) for o, r in zip(entry["outputs"], results)}
