"""OpenVINO backend: one compiled model per bundle segment, from the bundle's standard ONNX graphs.

OpenVINO reads the (QDQ) ONNX files as they are, so a bundle needs nothing new. Each segment is compiled
once on activate; each call makes its own infer request, so concurrent generations on one bundle do not
share request state. INT8 QDQ segments run their quantized layers as OpenVINO's int8 in every precision;
``precision`` says what the rest of a block group runs in (attention, normalisation, elementwise):
- "f32": f32; "bf16": bf16 (OpenVINO's default on AMX CPUs, not this runner's);
- "auto" (the default): bf16 for INT8 groups on a CPU where OpenVINO has bf16 (AMX / AVX512-BF16), f32 for
  FP32 groups and on other CPUs. FP32 bundles thus run in f32 unless bf16 is asked for.
The head and the tail always run in f32 (BF16_KINDS). In bf16 the head's sinusoidal timestep embedding
(sin/cos of t up to 999) and the tail's output projection lost most of the precision: one 28-block PixArt-α
step fell to 27 dB SQNR against f32 with every segment in bf16; with the head and tail in f32 it is 63 dB for
the FP32 bundle and 45 dB for the INT8 bundle, the same as the INT8 bundle in f32, for a few ms of a 1.5 s
step (README, "OpenVINO's bf16").
Compiled blobs go to OpenVINO's model cache in ``$DELTADIT_CACHE/openvino/<precision>`` (default
``~/.cache/deltadit/openvino/f32``), never into the bundle; OpenVINO keys them by graph and device. One
folder per precision: OpenVINO 2026.4 crashes (segmentation fault in infer) when one process compiles the
same INT8 graph in f32 and then in bf16 against a shared cache folder; separate folders avoid it.
The fused-attention graphs (``com.microsoft`` ops, ONNX Runtime only) are not used here.
Activation also runs the bindings' one-time set-up on one thread (:func:`warm_bindings`): without it,
concurrent first inferences could stall for good.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

from deltadit.errors import DeltaDiTError
from deltadit.memory import trim_heap
from deltadit.manifest import Manifest
from deltadit.models.spec import Segment
from deltadit.runtime.runners.base import Runner
from deltadit.sources import user_cache
from deltadit.validate import OPENVINO_PRECISIONS

BF16_KINDS = ("group",)  # segment kinds that may run in bf16; the rest stay in f32


class OpenVinoRunner(Runner):
    name = "openvino"

    def __init__(self, root: Path, manifest: Manifest, segments: tuple[Segment, ...], device: str = "CPU",
                 precision: str = "auto", threads: int | None = None, cache_dir: Path | None = None):
        super().__init__(segments)
        if precision not in OPENVINO_PRECISIONS:
            raise DeltaDiTError(f"precision | '{precision}' is unknown for OpenVINO. Expected: one of "
                                f"{', '.join(OPENVINO_PRECISIONS)}.")
        self.root = Path(root)
        self.entries = {s.name: s for s in manifest.segments}
        self.device_name, self.precision, self.threads = device, precision, threads
        self.cache_dir = Path(cache_dir) if cache_dir is not None else user_cache("openvino")
        self.compiled: dict = {}

    def _activate_impl(self) -> None:
        try:
            import openvino as ov
        except ImportError as e:
            raise DeltaDiTError(f"openvino runner | the openvino package does not import ({e}). Expected: "
                                "pip install 'deltadit[openvino]'.") from None
        core = ov.Core()
        if self.device_name not in core.available_devices:
            raise DeltaDiTError(f"openvino device | '{self.device_name}' is not available (has "
                                f"{', '.join(core.available_devices)}). Expected: one of those.")
        for name, entry in self.entries.items():
            config = self.compile_config(entry)
            cache = self.cache_dir / config["INFERENCE_PRECISION_HINT"]
            cache.mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache)
            self.compiled[name] = core.compile_model(str(self.root / entry.graph), self.device_name, config)
            trim_heap()  # what reading the ONNX left in the heap (46 MiB of a 4-block INT8 group)
        warm_bindings({p.get_element_type() for m in self.compiled.values() for p in (*m.inputs, *m.outputs)})

    def segment_precision(self, entry) -> str:
        """OpenVINO's inference precision (f32 or bf16) for this manifest segment."""
        if entry.kind not in BF16_KINDS or self.precision == "f32":
            return "f32"
        if self.precision == "bf16":
            return "bf16"
        return "bf16" if entry.precision == "int8" and has_bf16(self.device_name) else "f32"

    def compile_config(self, entry) -> dict:
        """OpenVINO's compile settings of this runner for this manifest segment (the model cache aside)."""
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": self.segment_precision(entry)}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        return config

    def _deactivate_impl(self) -> None:
        self.compiled.clear()

    def _infer_impl(self, segment: Segment, feeds: dict) -> dict:
        import torch

        entry = self.entries[segment.name]
        model = self.compiled[segment.name]
        wanted = {name for port in model.inputs for name in port.get_names()}
        dtypes = {i.name: getattr(torch, i.dtype) for i in entry.inputs}
        # The bundle's input dtypes are the contract (a tokenizer's int64 mask becomes float32, ...).
        arrays = {n: t.detach().to(device="cpu", dtype=dtypes[n]).contiguous().numpy()
                  for n, t in feeds.items() if n in wanted}
        result = model.create_infer_request().infer(arrays)
        out = {}
        for o in entry.outputs:
            port = model.output(o.onnx_name)
            out[o.name] = torch.from_numpy(result[port].copy()).to(getattr(torch, o.dtype))
        return out


_WARM_LOCK = threading.Lock()
_warmed: set = set()


def warm_bindings(element_types) -> None:
    """Read ``Tensor.data`` once per element type, on this thread, before any concurrent inference.

    openvino 2026.4's Python bindings set up a function-local static on the first ``Tensor.data`` of a
    process (every ``infer`` reads its request tensors through it). Where that set-up first takes numpy's C
    API, it releases the GIL inside the static's guard; a second thread entering ``Tensor.data`` then
    waits on the guard while holding the GIL, and both threads wait for good, with no CPU used. Seen with
    three concurrent generations on one bundle (native stacks:
    benchmarks/results/openvino-stall-stacks.txt). After this call the set-up is done, and a first
    inference has nothing left to race for.
    """
    import openvino as ov

    with _WARM_LOCK:
        for element_type in (ov.Type.f32, *element_types):  # f32 first: numpy views it on every build
            if element_type in _warmed or not element_type.is_static():
                continue
            try:
                ov.Tensor(element_type, ov.Shape([1])).data
            except (RuntimeError, TypeError, ValueError):  # a type numpy has no view of (string, u1): skipped
                pass
            _warmed.add(element_type)


@functools.cache
def has_bf16(device: str = "CPU") -> bool:
    """Whether OpenVINO computes in bf16 natively on this device (AMX or AVX512-BF16 on a CPU)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property(device, "OPTIMIZATION_CAPABILITIES")
