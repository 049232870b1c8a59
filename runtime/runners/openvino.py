"""OpenVINO backend: one compiled model per bundle segment, from the bundle's standard ONNX graphs.

OpenVINO reads the (QDQ) ONNX files as they are, so a bundle needs nothing new. Each segment is compiled
once on activate; each call makes its own infer request, so concurrent generations on one bundle do not
share request state. FP32 segments run in f32 unless the caller asks for bf16 (``precision="bf16"``,
OpenVINO's default on AMX CPUs, about 4e-4 relative error); INT8 QDQ segments run as OpenVINO's int8.
Compiled blobs go to OpenVINO's model cache in ``$DELTADIT_CACHE/openvino/<precision>`` (default
``~/.cache/deltadit/openvino/f32``), never into the bundle; OpenVINO keys them by graph and device. One
folder per precision: OpenVINO 2026.4 crashes (segmentation fault in infer) when one process compiles the
same INT8 graph in f32 and then in bf16 against a shared cache folder; separate folders avoid it.
The fused-attention graphs (``com.microsoft`` ops, ONNX Runtime only) are not used here.
"""

from __future__ import annotations

from pathlib import Path

from deltadit.errors import DeltaDiTError
from deltadit.memory import trim_heap
from deltadit.manifest import Manifest
from deltadit.models.spec import Segment
from deltadit.runtime.runners.base import Runner
from deltadit.sources import user_cache

PRECISIONS = ("f32", "bf16")


class OpenVinoRunner(Runner):
    name = "openvino"

    def __init__(self, root: Path, manifest: Manifest, segments: tuple[Segment, ...], device: str = "CPU",
                 precision: str = "f32", threads: int | None = None, cache_dir: Path | None = None):
        super().__init__(segments)
        if precision not in PRECISIONS:
            raise DeltaDiTError(f"precision | '{precision}' is unknown for OpenVINO. Expected: one of {', '.join(PRECISIONS)}.")
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
        cache = self.cache_dir / self.precision
        cache.mkdir(parents=True, exist_ok=True)
        config = {**self.compile_config(), "CACHE_DIR": str(cache)}
        for name, entry in self.entries.items():
            self.compiled[name] = core.compile_model(str(self.root / entry.graph), self.device_name, config)
            trim_heap()  # what reading the ONNX left in the heap (46 MiB of a 4-block INT8 group)

    def compile_config(self) -> dict:
        """OpenVINO's compile settings of this runner (the model cache aside)."""
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": self.precision}
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
