"""The ONNX Runtime runner's GPU launches (sync / async / CUDA graph): checked options everywhere, the same
latents on a CUDA GPU (skipped where none is visible)."""

import pytest

from deltadit import runtime
from deltadit.errors import DeltaDiTError
from deltadit.runtime.runners.base import Runner


def test_gpu_launch_is_checked_before_anything_runs(tiny_bundle):
    bundle = tiny_bundle("pixart")
    with pytest.raises(DeltaDiTError, match=r"gpu_launch \| 'fast' is unknown\. Expected: one of sync, async, graph"):
        runtime.load(bundle, gpu_launch="fast")
    with pytest.raises(DeltaDiTError, match=r"gpu_launch \| graph needs CUDAExecutionProvider first among the "
                                            r"providers \(got CPUExecutionProvider\)\. Expected: the CUDA provider first"):
        runtime.load(bundle, gpu_launch="graph")
    assert runtime.load(bundle).runner.gpu_launch == "sync"  # the default on the CPU provider


def test_cli_gpu_launch_is_for_onnx_runtime(tiny_bundle, capsys):
    from deltadit import cli

    args = ["generate", str(tiny_bundle("dit")), "--class", "1", "--backend", "openvino", "--gpu-launch", "async"]
    assert cli.main(args) == 2
    assert "--gpu-launch | applies to --backend onnxrt, not openvino. Expected: drop --gpu-launch." in capsys.readouterr().err


def test_a_traced_call_waits_for_the_device_before_and_after():
    """bench's per-segment times are the device's work even when the runner launches asynchronously."""
    events = []

    class Async(Runner):
        def _infer_impl(self, segment, feeds):
            events.append("launch")
            return {}

        def _sync(self):
            events.append("sync")

    from deltadit.models.spec import Segment

    r = Async((Segment("head", "head", None, ("x",), ("y",)),))
    r.infer("head", {"x": 0})
    r.trace = []
    r.infer("head", {"x": 0})
    assert events == ["launch", "sync", "launch", "sync"] and [name for name, _ in r.trace] == ["head"]


@pytest.mark.gpu
def test_every_gpu_launch_gives_the_sync_latents(tiny_bundle):
    """async and graph change when the host waits and how kernels are launched, never the numbers: the
    same final latents as the synchronous launch, a CUDA graph replayed across the whole loop; a graph
    refuses a batch other than the one it replays."""
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu")
    from deltadit.bench import run_loop

    bundle, cuda = tiny_bundle("pixart"), ["CUDAExecutionProvider"]
    ref_bundle = runtime.load(bundle, providers=cuda, gpu_launch="sync")
    ref = run_loop(ref_bundle.executor(), ref_bundle, device="cuda")
    for launch in ("async", "graph"):
        b = runtime.load(bundle, providers=cuda, gpu_launch=launch)
        got = run_loop(b.executor(), b, device="cuda")
        assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-6, launch
    feeds = {k: v[:1] for k, v in b.runner.launch.static[b.segments[0].name][1].items()}
    with pytest.raises(DeltaDiTError, match=r"under gpu_launch='graph', which replays the bundle's export batch"):
        b.runner.infer(b.segments[0].name, feeds)
