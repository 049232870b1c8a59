"""How the ONNX Runtime runner launches a segment on a CUDA GPU (ONNX Runtime's CUDA execution provider).

Three ways, the runner's ``gpu_launch``:

``sync``
    ONNX Runtime computes on a CUDA stream of its own. Before each run the host waits for torch's stream
    (the Δ add-back's kernels wrote the inputs), and the run returns once its own stream is done: two host
    waits per segment, and the next kernels are launched only after the GPU has drained.
``async``
    ONNX Runtime computes on a CUDA stream the runner owns (its ``user_compute_stream``), ordered against
    torch's current stream by CUDA events both ways, and returns without waiting
    (``disable_synchronize_execution_providers``). The host never waits; it launches the next segment and
    the Δ arithmetic while the GPU works.
``graph``
    As ``async``, and each segment is captured once as a CUDA graph (ONNX Runtime's ``enable_cuda_graph``)
    and replayed: one launch per segment instead of one per kernel. A graph replays fixed addresses, so each
    segment has static input and output buffers: inputs are copied in, outputs copied out (device copies,
    a few MB per segment), and the batch is the bundle's export batch (its symbolic batch dimension is
    fixed so that the shape arithmetic folds away and every node runs on the GPU).

Ordering: inputs written on torch's stream are complete before the runner's stream reads them (it waits
on an event of torch's stream), and torch's stream waits for the runner's before anything reads the
outputs or reuses the inputs' memory, so torch's caching allocator needs no ``record_stream``. Under
``graph`` concurrent callers (a server's threads) take turns per runner for the copy in, the replay and
the copy out, all ordered on torch's current stream, which threads share unless they set their own
streams (then they must not share one ``graph`` runner).
"""

from __future__ import annotations

import threading

from deltadit.errors import DeltaDiTError

GPU_LAUNCHES = ("sync", "async", "graph")


def check_launch(gpu_launch: str, providers: list[str]) -> None:
    if gpu_launch not in GPU_LAUNCHES:
        raise DeltaDiTError(f"gpu_launch | {gpu_launch!r:.40} is unknown. "
                            f"Expected: one of {', '.join(GPU_LAUNCHES)}.")
    if gpu_launch != "sync" and providers[0] != "CUDAExecutionProvider":
        raise DeltaDiTError(f"gpu_launch | {gpu_launch} needs CUDAExecutionProvider first among the providers "
                            f"(got {', '.join(providers)}). "
                            "Expected: the CUDA provider first (--providers CUDAExecutionProvider) or gpu_launch sync.")


class CudaLaunch:
    """The ``async`` / ``graph`` launch of one runner: its CUDA stream and, for graphs, each segment's
    static buffers and binding."""

    def __init__(self, ort, device: str, graph: bool, batch: int):
        import torch

        self.device = device
        self.graph = graph
        self.batch = batch  # the one batch a graph replays
        self.stream = torch.cuda.Stream(device=device)
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        self.static: dict[str, tuple] = {}  # segment -> (binding, static inputs, static outputs)
        self.lock = threading.Lock()

    def provider_options(self) -> dict:
        opts = {"user_compute_stream": str(self.stream.cuda_stream)}
        if self.graph:
            opts["enable_cuda_graph"] = "1"
        return opts

    def run(self, session, segment: str, tensors: dict, bind) -> dict:
        """Run ``session`` on ``tensors`` (name -> torch tensor on the device); ``bind(binding, tensors)``
        binds inputs and allocates and binds the outputs, returning them by name."""
        import torch

        caller = torch.cuda.current_stream(self.device)
        if not self.graph:
            binding = session.io_binding()
            outputs = bind(binding, tensors)
            self.stream.wait_stream(caller)
            session.run_with_iobinding(binding, self.run_options)
            caller.wait_stream(self.stream)
            return outputs
        with self.lock:  # one caller at a time fills, replays and reads a segment's static buffers
            binding, outputs = self._static(session, segment, tensors, bind)
            self.stream.wait_stream(caller)
            session.run_with_iobinding(binding, self.run_options)
            caller.wait_stream(self.stream)
            return {k: v.clone() for k, v in outputs.items()}  # the next replay overwrites the static outputs

    def _static(self, session, segment: str, tensors: dict, bind):
        batch = next(iter(tensors.values())).shape[0]
        if batch != self.batch:
            raise DeltaDiTError(f"segment {segment} | batch {batch} under gpu_launch='graph', which replays the "
                                f"bundle's export batch {self.batch}. "
                                f"Expected: batch {self.batch}, or gpu_launch='async'.")
        held = self.static.get(segment)
        if held is None:
            inputs = {n: t.clone() for n, t in tensors.items()}
            binding = session.io_binding()
            held = self.static[segment] = (binding, inputs, bind(binding, inputs))
        binding, inputs, outputs = held
        for n, t in tensors.items():  # on torch's stream, after the previous replay (it waited on it)
            inputs[n].copy_(t)
        return binding, outputs
