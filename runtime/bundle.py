"""Load a bundle and run its plan: ``deltadit.runtime.load(path)``.

A loaded :class:`Bundle` is meant to be shared: its runner's sessions are created once, and the text
encoder / decoder that :func:`deltadit.runtime.generate` needs are loaded once per pipeline folder and
reused (:meth:`Bundle.components`). Concurrent generations each get their own executor (deltas are
per generation), so many threads can call ``generate`` on one bundle.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from deltadit.bundle import read_bundle
from deltadit.errors import DeltaDiTError
from deltadit.manifest import Manifest
from deltadit.models.spec import ModelSpec, Segment, get_spec
from deltadit.plan import DeltaPlan, StepAction
from deltadit.runtime.executor import DeltaDiTExecutor

BACKENDS = ("onnxrt", "openvino", "tensorrt", "auto")


@dataclass
class Bundle:
    root: Path
    manifest: Manifest
    plan: DeltaPlan
    spec: ModelSpec
    segments: tuple[Segment, ...]
    runner: object
    choice: dict | None = None  # backend="auto": {"backend", "seconds" per engine, "measured"} (runtime/choose.py)
    _components: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def config(self) -> dict:
        return self.manifest.model.config

    def executor(self, plan: DeltaPlan | None = None) -> DeltaDiTExecutor:
        """An executor for the bundle's plan (or another plan cut at the same block groups). One per
        generation: it holds that generation's deltas."""
        return DeltaDiTExecutor(plan or self.plan, self.segments, self.runner)

    def example_feeds(self, device: str = "cpu") -> dict:
        """Seeded example inputs of one step (the head's feeds at the bundle's CFG batch, text length and
        latent size): what timings, profiles and checks run a step on."""
        import torch

        ex = self.manifest.export
        feeds = self.spec.example_inputs(self.config, ex.opt_batch, ex.text_len, ex.latent_side,
                                         torch.Generator().manual_seed(0))
        return {k: v.to(device) for k, v in feeds.items()}

    def uncached(self) -> DeltaDiTExecutor:
        """Run every step in full on the same segments (the --no-cache path)."""
        return DeltaDiTExecutor(FullPlan(self.plan), self.segments, self.runner)

    def components(self, key, load):
        """The object cached under ``key``, made by ``load()`` on first use (once, even when many
        threads ask at the same time)."""
        with self._lock:
            if key not in self._components:
                self._components[key] = load()
            return self._components[key]


class FullPlan:
    """The bundle's plan with every step turned into a full step that records nothing (same groups)."""

    def __init__(self, plan: DeltaPlan):
        self.num_steps, self.num_blocks, self.groups = plan.num_steps, plan.num_blocks, plan.groups
        self.steps = tuple(StepAction(t=s.t) for s in plan.steps)


def segments_of(manifest: Manifest) -> tuple[Segment, ...]:
    return tuple(Segment(s.name, s.kind, s.block_range, tuple(i.name for i in s.inputs), tuple(o.name for o in s.outputs))
                 for s in manifest.segments)


def load(bundle: str | Path, providers: list[str] | None = None, io_binding: bool = True,
         backend: str = "onnxrt", **runner_options) -> Bundle:
    """Check and open a bundle. providers: ONNX Runtime providers, e.g. ["CUDAExecutionProvider",
    "CPUExecutionProvider"]; default CPU. io_binding: bind tensors by pointer so hidden states and
    deltas stay on the execution provider's device (False: copy through numpy). backend: "onnxrt",
    "openvino" (runner_options: device="CPU", precision="auto" | "f32" | "bf16", threads; see
    :class:`OpenVinoRunner`) or "tensorrt" (engines from the bundle, or built from its ONNX into a cache on first load; runner_options
    go to :class:`TensorRTRunner`, e.g. cuda_graph=True; for "onnxrt", fused_attention=False opens the
    standard graphs instead of the fused-attention variants, and memory_arena="shared" (CPU default: one
    ONNX Runtime arena for all segments), "session" (one per segment) or "off") -- or "auto": the faster installed
    CPU engine for this bundle on this machine, measured once and cached (:mod:`deltadit.runtime.choose`; the
    record in ``Bundle.choice``). Every file is verified before use
    (:func:`deltadit.bundle.read_bundle`); raises DeltaDiTError naming what is wrong."""
    if backend not in BACKENDS:
        raise DeltaDiTError(f"backend | '{backend}' is unknown. Expected: one of {', '.join(BACKENDS)}.")
    root = Path(bundle)
    manifest = read_bundle(root)
    segments = segments_of(manifest)
    spec = get_spec(manifest.model.arch)

    def on(engine: str) -> Bundle:
        runner = _runner(engine, root, manifest, segments, providers, io_binding, runner_options)
        return Bundle(root, manifest, manifest.plan, spec, segments, runner)

    if backend != "auto":
        return on(backend)
    if providers or runner_options:
        raise DeltaDiTError("backend | 'auto' chooses among the CPU engines with their defaults. Expected: no providers "
                            "or engine options with it (name the backend to pass them).")
    from deltadit.runtime.choose import choose

    bundle, record = choose(root, on)
    bundle.choice = record
    return bundle


def _runner(backend: str, root: Path, manifest: Manifest, segments, providers, io_binding: bool, runner_options: dict):
    if backend == "onnxrt":
        from deltadit.runtime.runners.onnxrt import OnnxrtRunner

        return OnnxrtRunner(root, manifest, segments, providers, io_binding=io_binding, **runner_options)
    if backend == "openvino":
        from deltadit.runtime.runners.openvino import OpenVinoRunner

        return OpenVinoRunner(root, manifest, segments, **runner_options)
    from deltadit.runtime.runners.tensorrt import TensorRTRunner

    return TensorRTRunner(root, manifest, segments, **runner_options)
