"""TensorRT backend: one engine per bundle segment, behind the same runner interface.

On activate, engines are taken from the bundle (hash-checked with it) or from the engine cache (built
from the bundle's ONNX when none matches this GPU / TensorRT version: see :mod:`deltadit.runtime.engines`). Tensors are torch CUDA tensors; each
segment's input and output buffers are allocated once per batch size, all work goes to one stream
through ``execute_async_v3``, and with ``cuda_graph=True`` each segment's launch is captured once in a
CUDA graph and replayed. Needs ``tensorrt`` and a CUDA build of torch.

Not run in this project's CI (no GPU there): its tests carry the ``gpu`` / ``tensorrt`` markers.
"""

from __future__ import annotations

import threading
from pathlib import Path

from deltadit.errors import DeltaDiTError
from deltadit.manifest import Manifest
from deltadit.models.spec import Segment
from deltadit.runtime.runners.base import Runner


class TensorRTRunner(Runner):
    name = "tensorrt"

    def __init__(self, root: Path, manifest: Manifest, segments: tuple[Segment, ...], device: int = 0,
                 engine_dir: Path | None = None, cuda_graph: bool = False):
        super().__init__(segments)
        self.root = Path(root)
        self.manifest = manifest
        self.entries = {s.name: s for s in manifest.segments}
        # Static per-segment buffers and one execution context per engine: one generation at a time.
        self._serial = threading.Lock()
        self.device_index = device
        self.device = f"cuda:{device}"
        self.engine_dir = engine_dir
        self.cuda_graph = cuda_graph
        self.engines, self.contexts, self.buffers, self.graphs = {}, {}, {}, {}

    def _activate_impl(self) -> None:
        from deltadit.runtime.engines import ensure_engines, read_engine, unavailable_reason

        reason = unavailable_reason()
        if reason is not None:
            raise DeltaDiTError(f"tensorrt runner | {reason}")
        import tensorrt as trt
        import torch

        self.trt = trt
        torch.cuda.set_device(self.device_index)
        self.stream = torch.cuda.Stream()
        paths = ensure_engines(self.root, self.manifest, self.device_index, self.engine_dir)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        for name, path in paths.items():
            engine = runtime.deserialize_cuda_engine(read_engine(path, self.manifest, name))
            if engine is None:
                raise DeltaDiTError(f"engine {path} | TensorRT could not deserialize it. Expected: delete it to rebuild.")
            self.engines[name] = engine
            self.contexts[name] = engine.create_execution_context()

    def _deactivate_impl(self) -> None:
        self.graphs.clear()
        self.buffers.clear()
        self.contexts.clear()
        self.engines.clear()

    def _io(self, name: str, batch: int):
        """Static input/output buffers of one segment for one batch size (allocated once)."""
        import torch

        key = (name, batch)
        if key not in self.buffers:
            trt, engine, ctx, entry = self.trt, self.engines[name], self.contexts[name], self.entries[name]
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            ins = {i.name: i for i in entry.inputs if i.name in names}
            outs = {o.onnx_name: o for o in entry.outputs}
            bufs = {"in": {}, "out": {}}
            for n, spec in ins.items():
                shape = spec.concrete(batch)
                bufs["in"][n] = torch.empty(shape, dtype=getattr(torch, spec.dtype), device=self.device)
                ctx.set_input_shape(n, shape)
                ctx.set_tensor_address(n, bufs["in"][n].data_ptr())
            for n, spec in outs.items():
                shape = spec.concrete(batch)
                bufs["out"][spec.name] = torch.empty(shape, dtype=getattr(torch, spec.dtype), device=self.device)
                ctx.set_tensor_address(n, bufs["out"][spec.name].data_ptr())
            missing = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT and n not in ins]
            if missing:
                raise DeltaDiTError(f"engine {name} | inputs {missing} are not in the manifest. Expected: a matching bundle.")
            self.buffers[key] = bufs
        return self.buffers[key]

    def _infer_impl(self, segment: Segment, feeds: dict) -> dict:
        with self._serial:
            return self._infer_serial(segment, feeds)

    def _infer_serial(self, segment: Segment, feeds: dict) -> dict:
        import torch

        batch = next(iter(feeds.values())).shape[0]
        bufs = self._io(segment.name, batch)
        with torch.cuda.stream(self.stream):
            for n, buf in bufs["in"].items():
                buf.copy_(feeds[n], non_blocking=True)
            ctx = self.contexts[segment.name]
            if not self.cuda_graph:
                ctx.execute_async_v3(self.stream.cuda_stream)
            else:
                key = (segment.name, batch)
                if key not in self.graphs:
                    ctx.execute_async_v3(self.stream.cuda_stream)  # warm-up outside capture (allocations)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, stream=self.stream):
                        ctx.execute_async_v3(self.stream.cuda_stream)
                    self.graphs[key] = graph
                self.graphs[key].replay()
        torch.cuda.current_stream().wait_stream(self.stream)
        # Outputs are the static buffers: the next call of this segment overwrites them, so hand out clones
        # (the executor keeps hidden states and deltas across segment calls).
        return {n: t.clone() for n, t in bufs["out"].items()}
