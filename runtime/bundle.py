"""Load a bundle and run its plan: ``deltadit.runtime.load(path)``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deltadit.bundle import read_manifest
from deltadit.errors import DeltaDiTError
from deltadit.models.spec import ModelSpec, Segment, get_spec
from deltadit.plan import DeltaPlan
from deltadit.runtime.executor import DeltaDiTExecutor


@dataclass
class Bundle:
    root: Path
    manifest: dict
    plan: DeltaPlan
    spec: ModelSpec
    segments: tuple[Segment, ...]
    runner: object

    @property
    def config(self) -> dict:
        return self.manifest["model"]["config"]

    def executor(self, plan: DeltaPlan | None = None) -> DeltaDiTExecutor:
        """An executor for the bundle's plan (or another plan cut at the same block groups)."""
        return DeltaDiTExecutor(plan or self.plan, self.segments, self.runner)

    def uncached(self) -> DeltaDiTExecutor:
        """Run every step in full on the same segments (the --no-cache path)."""
        return DeltaDiTExecutor(FullPlan(self.plan), self.segments, self.runner)


class FullPlan:
    """The bundle's plan with every step turned into a full step that records nothing (same groups)."""

    def __init__(self, plan: DeltaPlan):
        from deltadit.plan import StepAction

        self.num_steps, self.num_blocks, self.groups = plan.num_steps, plan.num_blocks, plan.groups
        self.steps = tuple(StepAction(t=s.t) for s in plan.steps)


def load(bundle: str | Path, providers: list[str] | None = None, io_binding: bool = True,
         backend: str = "onnxrt", **runner_options) -> Bundle:
    """Check and open a bundle on ONNX Runtime. providers: e.g. ["CUDAExecutionProvider",
    "CPUExecutionProvider"]; default CPU. io_binding: bind tensors by pointer so hidden states and
    deltas stay on the execution provider's device (False: copy through numpy). backend: "onnxrt" or
    "tensorrt" (engines from the bundle's cache, built from the ONNX on first load; runner_options go
    to :class:`TensorRTRunner`, e.g. cuda_graph=True; for "onnxrt", fused_attention=False opens the standard
    graphs instead of the fused-attention variants). Raises DeltaDiTError for a missing/corrupt file, a missing
    manifest or an unsupported format version."""
    from deltadit.runtime.runners.onnxrt import OnnxrtRunner

    root = Path(bundle)
    manifest = read_manifest(root)
    plan = DeltaPlan.from_dict(manifest["plan"])
    segments = tuple(
        Segment(s["name"], s["kind"], tuple(s["block_range"]) if s["block_range"] else None,
                tuple(i["name"] for i in s["inputs"]), tuple(o["name"] for o in s["outputs"]))
        for s in manifest["segments"]
    )
    if backend == "onnxrt":
        runner = OnnxrtRunner(root, manifest, segments, providers, io_binding=io_binding, **runner_options)
    elif backend == "tensorrt":
        from deltadit.runtime.runners.tensorrt import TensorRTRunner

        runner = TensorRTRunner(root, manifest, segments, **runner_options)
    else:
        raise DeltaDiTError(f"backend | '{backend}' is unknown. Expected: onnxrt or tensorrt.")
    return Bundle(root, manifest, plan, get_spec(manifest["model"]["arch"]), segments, runner)
