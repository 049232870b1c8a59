"""deltadit bench on a tiny bundle: every configuration is timed and the summary is consistent."""

import json

import pytest

pytest.importorskip("onnxruntime")

from deltadit import bench
from deltadit.costs import path_name
from deltadit.plan import build_plan
from tests.export.test_bundle import BLOCKS, STEPS


def test_bench_times_every_configuration(tiny_bundle, tmp_path, capsys):
    fp = tiny_bundle("pixart", name="fp", build_engines=False)  # configurations "ort fp ..."
    out = tmp_path / "bench.json"
    assert bench.main([str(fp), "--repeats", "2", "--json", str(out), "--chart", str(tmp_path / "c.png")]) == 0
    s = json.loads(out.read_text())
    names = list(s["configs"])
    assert names == ["torch-fp32", "torch-fp32+delta-dit", "torch-bf16", "torch-bf16+delta-dit", "ort fp (fp32)",
                     "ort fp (fp32)+delta-dit"]
    for name, r in s["configs"].items():
        assert r["loop_s"] > 0 and r["paths_s"]["full"] > 0
        assert r["loop_min_s"] <= r["loop_s"] <= r["loop_max_s"] and not r["loop_estimated"]
    assert s["machine"]["cpus"] >= 1 and "isa_flags" in s["machine"]
    cached = s["configs"]["ort fp (fp32)+delta-dit"]
    # The plan has two cached paths (deep range while t <= b, shallow after), each timed and costed.
    assert set(cached["paths_s"]) == {"full", "cached [3,6)", "cached [0,3)"}
    assert set(cached["overhead_vs_segments"]) == set(cached["paths_s"])
    # The overhead's profile: the runtime's own share (each step's time minus its segment calls, so > 0)
    # plus the segment calls being slower in the step than alone; the two add up to the overhead.
    for path, over in cached["overhead_vs_segments"].items():
        assert cached["overhead_runtime"][path] > 0
        assert cached["overhead_runtime"][path] + cached["overhead_segments_in_step"][path] == pytest.approx(over)
    # per segment inside each step: a cached step skips the groups of its range
    assert set(cached["segments_in_step_s"]["full"]) == {"head", "blocks_00_03", "blocks_03_06", "tail"}
    assert set(cached["segments_in_step_s"]["cached [3,6)"]) == {"head", "blocks_00_03", "tail"}
    assert set(cached["segments_in_step_s"]["cached [0,3)"]) == {"head", "blocks_03_06", "tail"}
    assert cached["bound"] == pytest.approx(120 / 90)  # 20 steps x 6 blocks vs 10 x 6 + 10 x 3
    assert "overhead_vs_segments" not in s["configs"]["torch-fp32"]
    assert s["configs"]["torch-fp32"]["speedup_vs_torch-fp32"] == 1.0
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert "| ort fp (fp32)+delta-dit |" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_compiled_baselines_per_step(tiny_bundle, tmp_path):
    """torch.compile baselines (whole forward, and each split segment under the plan) compute what eager
    does, and --torch-per-step estimates their loop from the step paths' medians."""
    import torch

    from deltadit.baselines import baselines, torch_model
    from deltadit.runtime import load

    plan = build_plan(STEPS, BLOCKS, 3, 12, 2, "delta-dit")
    fp = tiny_bundle("pixart", name="fp", build_engines=False)
    b = load(fp)
    by_name = {x.name: x for x in baselines(torch_model(b), b.plan, ("fp32",), compile_=True)}
    assert list(by_name) == ["torch-fp32", "torch-fp32+delta-dit", "torch-compile-fp32", "torch-compile-fp32+delta-dit"]
    eager, compiled = by_name["torch-fp32+delta-dit"].factory(), by_name["torch-compile-fp32+delta-dit"].factory()
    torch.testing.assert_close(bench.run_loop(compiled, b), bench.run_loop(eager, b), rtol=1e-4, atol=1e-5)
    out = tmp_path / "bench.json"
    assert bench.main([str(fp), "--repeats", "2", "--warmup", "1", "--torch-dtypes", "fp32", "--compile",
                       "--torch-per-step", "--configs", "torch-compile*", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["configs"]["torch-compile-fp32+delta-dit"]
    steps = [path_name(s) for s in plan.steps]
    assert r["loop_estimated"] and r["loop_s"] == pytest.approx(sum(r["paths_s"][n] for n in steps))


def test_bench_rejects_unknown_torch_dtype(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main([str(tmp_path), "--torch-dtypes", "fp8"])
    assert e.value.code == 2
    assert "--torch-dtypes | 'fp8' is not a list of dtypes. Expected: some of fp32, bf16, fp16" in capsys.readouterr().err


def test_bench_needs_a_bundle():
    from deltadit.errors import DeltaDiTError

    with pytest.raises(DeltaDiTError, match="no bundle given"):
        bench.main([])


def test_bench_configs_filter(tiny_bundle, tmp_path, capsys):
    fp = tiny_bundle("pixart", name="fp", build_engines=False)
    out = tmp_path / "bench.json"
    assert bench.main([str(fp), "--repeats", "1", "--configs", "ort *+delta-dit,torch-bf16", "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    assert list(s["configs"]) == ["torch-bf16", "ort fp (fp32)+delta-dit"]
    # segments are timed once per bundle even when only its cached configuration runs
    assert "overhead_vs_segments" in s["configs"]["ort fp (fp32)+delta-dit"]
    from deltadit.errors import DeltaDiTError

    with pytest.raises(DeltaDiTError, match="matches no configuration.*'ort fp \\(fp32\\)'"):
        bench.main([str(fp), "--no-torch", "--configs", "nothing*"])


def test_bench_memory_for_selected_configurations(tiny_bundle, tmp_path):
    fp = tiny_bundle("pixart", name="fp", build_engines=False)
    out = tmp_path / "bench.json"
    assert bench.main([str(fp), "--no-torch", "--repeats", "1", "--no-loops", "--memory", "ort *+delta-dit",
                       "--json", str(out)]) == 0
    s = json.loads(out.read_text())["configs"]
    assert "peak_rss_mib" not in s["ort fp (fp32)"]
    assert s["ort fp (fp32)+delta-dit"]["peak_rss_mib"] > 50  # a fresh Python with torch + onnxruntime


def test_bench_runs_every_bundle_on_each_backend_side_by_side(tiny_bundle, tmp_path, monkeypatch, capsys):
    pytest.importorskip("openvino")
    monkeypatch.setenv("DELTADIT_CACHE", str(tmp_path / "cache"))
    fp = tiny_bundle("pixart", name="fp", build_engines=False)
    out = tmp_path / "bench.json"
    assert bench.main([str(fp), "--no-torch", "--repeats", "1", "--backends", "onnxrt,openvino,openvino-bf16",
                       "--memory", "ov *+delta-dit,ov-bf16 *+delta-dit", "--json", str(out)]) == 0
    s = json.loads(out.read_text())["configs"]
    assert list(s) == ["ort fp (fp32)", "ort fp (fp32)+delta-dit", "ov fp (fp32)", "ov fp (fp32)+delta-dit",
                       "ov-bf16 fp (fp32)", "ov-bf16 fp (fp32)+delta-dit"]
    assert s["ov fp (fp32)+delta-dit"]["speedup_vs_uncached_same_backend"] > 0
    for name in ("ov fp (fp32)+delta-dit", "ov-bf16 fp (fp32)+delta-dit"):  # each probe loads its own engine setting
        assert "overhead_vs_segments" in s[name] and s[name]["peak_rss_mib"] > 50
    assert sorted(p.name for p in (tmp_path / "cache" / "openvino").iterdir()) == ["bf16", "f32"]
    with pytest.raises(SystemExit) as stop:
        bench.main([str(fp), "--backends", "tensorrtx"])
    assert stop.value.code == 2 and "--backends | 'tensorrtx' is not a list of backends" in capsys.readouterr().err


def test_bench_on_cuda_runs_bundles_on_onnx_runtime_only(tmp_path):
    from deltadit.errors import DeltaDiTError

    with pytest.raises(DeltaDiTError, match=r"bench --device \| cuda runs bundles on ONNX Runtime only\. Expected: --backends onnxrt"):
        bench.main([str(tmp_path), "--device", "cuda", "--backends", "onnxrt,openvino"])


def test_bench_gpu_launches_need_the_cuda_device(tmp_path, capsys):
    from deltadit.errors import DeltaDiTError

    with pytest.raises(DeltaDiTError, match=r"bench --gpu-launch \| needs --device cuda\. Expected: --device cuda"):
        bench.main([str(tmp_path), "--gpu-launch", "async,graph"])
    with pytest.raises(SystemExit):
        bench.main([str(tmp_path), "--gpu-launch", "graph,graph"])
    assert "--gpu-launch | 'graph,graph' is not a list of launches. Expected: some of sync, async, graph, each once" \
        in capsys.readouterr().err


def test_step_timer_waits_for_the_device():
    """A step's timer stops after the device's queued work: sync runs right before the clock reads."""
    events = []

    class Executor:
        plan = build_plan(STEPS, BLOCKS, 0, 0, 1, "none")

        def step(self, i, feeds):
            events.append("step")

    bench.time_paths(Executor(), {}, sync=lambda: events.append("sync"))
    assert events == ["sync", "step", "sync"]


def test_segment_timer_waits_for_the_device():
    """Segments timed alone stop their timers after the device's work too: an asynchronous launch returns
    before its segment has run. The head's outputs feed every later segment."""
    events = []

    class Runner:
        def infer(self, name, feeds):
            events.append((name, sorted(feeds)))
            return {"h": 1}

    class Seg:
        def __init__(self, name):
            self.name = name

    bundle = type("B", (), {"runner": Runner(), "segments": [Seg("head"), Seg("g0"), Seg("tail")]})()
    times = bench.time_segments(bundle, {"x": 0}, sync=lambda: events.append("sync"))
    assert list(times) == ["head", "g0", "tail"]
    assert events == ["sync", ("head", ["x"]), "sync", "sync", ("g0", ["h"]), "sync", "sync", ("tail", ["h"]), "sync"]


def test_bench_on_cuda_needs_a_visible_gpu(tmp_path, monkeypatch):
    import torch

    from deltadit.errors import DeltaDiTError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeltaDiTError, match=r"bench --device \| cuda: PyTorch sees no CUDA GPU here\. Expected: a CUDA build"):
        bench.main([str(tmp_path), "--device", "cuda"])
