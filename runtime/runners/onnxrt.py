"""ONNX Runtime backend: one InferenceSession per bundle segment.

Tensors in and out are torch tensors, so the executor's Δ arithmetic is a torch op on the runner's
device. With IO binding (the default) inputs are bound by pointer and each output is written straight
into a torch tensor the runner allocates on that device: on the CUDA / TensorRT execution providers the
hidden states and the stored deltas never leave the GPU (that needs a CUDA build of torch next to
onnxruntime-gpu); on CPU nothing is copied. Without IO binding, tensors cross as numpy arrays.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np

from deltadit.errors import DeltaDiTError
from deltadit.manifest import Manifest, SegmentEntry
from deltadit.memory import trim_heap
from deltadit.models.spec import Segment
from deltadit.runtime.runners.base import Runner
from deltadit.runtime.runners.onnxrt_cuda import CudaLaunch, check_launch

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
ARENAS = ("shared", "session", "off")
_shared_arena = threading.Lock()
_shared_arena_registered = []


def _register_shared_arena(ort) -> None:
    """Once per process: a CPU arena allocator in ONNX Runtime's environment, grown by what is requested
    (not to the next power of two), for every session opened with ``session.use_env_allocators``."""
    with _shared_arena:
        if not _shared_arena_registered:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
            _shared_arena_registered.append(True)


class OnnxrtRunner(Runner):
    name = "onnxrt"

    def __init__(self, root: Path, manifest: Manifest | dict, segments: tuple[Segment, ...],
                 providers: list[str] | None = None, io_binding: bool = True, device_id: int = 0,
                 fused_attention: bool = True, memory_arena: str | None = None, gpu_launch: str | None = None):
        super().__init__(segments)
        self.root = Path(root)
        if isinstance(manifest, dict):  # the exporter checks its graphs before the manifest is written
            manifest = Manifest.from_dict(manifest)
        self.entries = {s.name: s for s in manifest.segments}
        self.int8_weight_bits = manifest.int8_weight_bits
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.io_binding = io_binding
        on_gpu = any(p in GPU_PROVIDERS for p in self.providers)
        self.device = f"cuda:{device_id}" if on_gpu else "cpu"
        self.device_id = device_id
        # The fused graph (com.microsoft.MultiHeadAttention, FastGelu) where the bundle has one; not under
        # TensorRT's execution provider, which would hand the contrib op back to CUDA and split the graph.
        self.fused_attention = fused_attention and "TensorrtExecutionProvider" not in self.providers
        # ONNX Runtime's CPU arena keeps each session's largest activations for the session's lifetime (a
        # 4-block PixArt-α INT8 group: +430 MiB per session). "shared": one arena in ONNX Runtime's
        # environment that every session of the process draws from, so the activations of one segment at a
        # time are held; "session": ONNX Runtime's default; "off": plain malloc per run (slower: large
        # buffers are mmapped afresh each run). benchmarks/runtime_memory.py measures all three.
        if memory_arena not in (None, *ARENAS):
            raise DeltaDiTError(f"memory_arena | {memory_arena!r:.40} is unknown. Expected: one of {', '.join(ARENAS)}.")
        self.memory_arena = memory_arena or ("session" if on_gpu else "shared")
        # How segments are launched on the CUDA provider (see onnxrt_cuda): "sync", "async" or "graph".
        # Default: async where the CUDA provider comes first (same numbers as sync, the host never waits;
        # "graph" is faster still but replays one batch), else sync.
        cuda_first = self.providers[0] == "CUDAExecutionProvider"
        self.gpu_launch = gpu_launch or ("async" if cuda_first and io_binding else "sync")
        self._launch_asked = gpu_launch is not None
        check_launch(self.gpu_launch, self.providers)
        if self.gpu_launch != "sync" and not io_binding:
            raise DeltaDiTError(f"gpu_launch | {self.gpu_launch} needs IO binding. Expected: io_binding=True.")
        self.opt_batch = manifest.export.opt_batch
        self.launch: CudaLaunch | None = None
        self.sessions: dict = {}

    def _activate_impl(self) -> None:
        import onnxruntime as ort
        import torch

        available = ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise DeltaDiTError(f"providers | {', '.join(missing)} not available in this onnxruntime "
                                f"(has {', '.join(available)}). Expected: install onnxruntime-gpu for CUDA / TensorRT.")
        if self.device != "cpu" and not torch.cuda.is_available():
            # Deltas cannot live on the GPU as torch tensors; fall back to host tensors (copies per segment).
            self.device, self.io_binding = "cpu", False
        if self.gpu_launch != "sync" and self.device == "cpu" and not self._launch_asked:
            self.gpu_launch = "sync"  # no CUDA torch: host tensors (above), nothing to launch asynchronously
        if self.gpu_launch != "sync":
            if self.device == "cpu":
                raise DeltaDiTError(f"gpu_launch | {self.gpu_launch} needs a CUDA build of torch that sees the GPU. "
                                    "Expected: gpu_launch='sync'.")
            self.launch = CudaLaunch(ort, self.device, self.gpu_launch == "graph", self.opt_batch)
        provider_options = [{"device_id": self.device_id} if p in GPU_PROVIDERS else {} for p in self.providers]
        if self.launch is not None:
            provider_options[0].update(self.launch.provider_options())
        self.emulated_int8 = [n for n, e in self.entries.items() if e.precision == "int8" and self._emulate_int8()]
        if self.emulated_int8:
            warnings.warn("ONNX Runtime's int8 kernel on this CPU (x86 without VNNI) saturates on the bundle's 8-bit "
                          "weights, so its INT8 segments run dequantized in FP32: correct, without the INT8 speed-up. "
                          "Export with --int8-weight-bits 7 (the default on such a CPU) for int8 kernels here.",
                          RuntimeWarning, stacklevel=3)
        self._provider_options = provider_options
        for name, entry in self.entries.items():
            self.sessions[name] = self._open(name, str(self.root / self.graph_path(entry)))

    def _open(self, name: str, graph, external_folder: Path | None = None):
        """An ONNX Runtime session of segment ``name`` on ``graph`` (a path, or serialized ONNX bytes whose
        external weights lie in ``external_folder``), with this runner's options."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_cpu_mem_arena = self.memory_arena != "off"
        if self.memory_arena == "shared":
            _register_shared_arena(ort)
            opts.add_session_config_entry("session.use_env_allocators", "1")
        if self.gpu_launch == "graph":  # a fixed batch (the exporter's "batch" axis) folds the shape
            opts.add_free_dimension_override_by_name("batch", self.opt_batch)  # arithmetic: all on the GPU
        if name in self.emulated_int8:
            opts.add_session_config_entry("session.disable_quant_qdq", "1")  # Q/DQ stay float ops: exact
        if external_folder is not None:
            opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(external_folder))
        session = ort.InferenceSession(graph, opts, providers=self.providers, provider_options=self._provider_options)
        trim_heap()  # the FP32 weights the session folded into its own (int8) copies leave the RSS
        return session

    def reopen(self, name: str, graph: bytes) -> None:
        """Run segment ``name`` on another graph of the same interface from now on: serialized ONNX whose
        external weights are the bundle's own (deltadit tune's sensitivity: the bundle's INT8 graph with some
        layers' Q/DQ removed). Nothing is written; the bundle's files are read as they are."""
        if name not in self.sessions:
            raise DeltaDiTError(f"reopen | segment '{name}' is not open. Expected: one of {', '.join(self.sessions)} "
                                "(activate the runner first).")
        if self.launch is not None:
            raise DeltaDiTError(f"reopen | segment '{name}': a session launched with gpu_launch={self.gpu_launch} "
                                "keeps its captured state. Expected: gpu_launch='sync'.")
        folder = (self.root / self.graph_path(self.entries[name])).parent
        self.sessions[name] = self._open(name, graph, folder)

    def _emulate_int8(self) -> bool:
        from deltadit.runtime.cpu import int8_gemm_saturates

        return self.providers[0] == "CPUExecutionProvider" and self.int8_weight_bits == 8 and int8_gemm_saturates()

    def graph_path(self, entry: SegmentEntry) -> str:
        """The ONNX file this runner opens for a manifest segment entry (always one of its hashed files)."""
        if self.fused_attention and entry.ort_graph:
            return entry.ort_graph
        return entry.graph

    def _deactivate_impl(self) -> None:
        self.sessions.clear()
        self.launch = None

    def _sync(self) -> None:
        if self.device != "cpu":
            import torch

            torch.cuda.synchronize(self.device)

    def _check_shapes(self, entry: SegmentEntry, feeds: dict) -> None:
        problems = []
        for spec in entry.inputs:
            got = tuple(feeds[spec.name].shape)
            want = spec.shape
            if len(got) != len(want) or any(w != "batch" and g != w for g, w in zip(got, want)):
                problems.append(f"input {spec.name} of segment {entry.name} | shape {list(got)} does not match "
                                f"the bundle. Expected: {list(want)} (the bundle was exported for this shape; re-export "
                                "with --resolution / text length to change it).")
        batches = {tuple(feeds[s.name].shape)[0] for s in entry.inputs if s.shape and s.shape[0] == "batch"}
        if len(batches) > 1:
            problems.append(f"segment {entry.name} | inputs disagree on the batch size {sorted(batches)}.")
        if problems:
            raise DeltaDiTError("\n".join(problems))

    def _infer_impl(self, segment: Segment, feeds: dict) -> dict:
        import torch

        entry = self.entries[segment.name]
        self._check_shapes(entry, feeds)
        session = self.sessions[segment.name]
        wanted = {i.name for i in session.get_inputs()}  # the exporter drops inputs a graph does not use
        dtypes = {i.name: getattr(torch, i.dtype) for i in entry.inputs}
        # The bundle's input dtypes are the contract (e.g. a tokenizer's int64 mask becomes float32).
        tensors = {n: t.to(device=self.device, dtype=dtypes[n]).contiguous() for n, t in feeds.items() if n in wanted}
        if not self.io_binding:
            arrays = {n: t.detach().cpu().numpy() for n, t in tensors.items()}
            results = session.run([o.onnx_name for o in entry.outputs], arrays)
            return {o.name: torch.from_numpy(r) for o, r in zip(entry.outputs, results)}
        batch = next(feeds[i.name].shape[0] for i in entry.inputs if i.shape and i.shape[0] == "batch")
        kind, index = ("cuda", self.device_id) if self.device != "cpu" else ("cpu", 0)

        def bind(binding, inputs: dict) -> dict:
            for name, t in inputs.items():
                binding.bind_input(name, kind, index, _np_dtype(t.dtype), list(t.shape), t.data_ptr())
            outputs = {}
            for o in entry.outputs:
                shape = o.concrete(batch)
                out = torch.empty(shape, dtype=getattr(torch, o.dtype), device=self.device)
                binding.bind_output(o.onnx_name, kind, index, _np_dtype(out.dtype), shape, out.data_ptr())
                outputs[o.name] = out
            return outputs

        if self.launch is not None:
            return self.launch.run(session, segment.name, tensors, bind)
        binding = session.io_binding()
        outputs = bind(binding, tensors)
        if self.device != "cpu":
            # ONNX Runtime computes on its own CUDA stream: the torch kernels that wrote these inputs (the Δ
            # add-back, say) must have finished. Run returns after its stream is done, so the outputs are ready.
            torch.cuda.current_stream(self.device).synchronize()
        session.run_with_iobinding(binding)
        return outputs


def _np_dtype(torch_dtype):
    import torch

    return {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.int32: np.int32,
            torch.bool: np.bool_}[torch_dtype]
