"""TensorRT path: everything that does not need a GPU, against a recording stand-in for the tensorrt
module; the engine build and runner themselves run only where tensorrt imports and a GPU is visible."""

import json
import types

import pytest

pytest.importorskip("onnxruntime")

from deltadit import runtime
from deltadit.runtime import engines as trtx
from deltadit.export.pipeline import export_bundle
from deltadit.bundle import read_bundle
from deltadit.errors import DeltaDiTError
from deltadit.manifest import SegmentEntry, TensorDesc
from deltadit.plan import build_plan
from tests.export.test_bundle import BLOCKS, STEPS, tiny_preset

PLAN = build_plan(STEPS, BLOCKS, 3, 12, 2, "delta-dit")
ENTRY = SegmentEntry("blocks_00_03", "group", (0, 3), "fp32", inputs=(
    TensorDesc("hidden_states", ("batch", 16, 16), "float32"), TensorDesc("timestep", ("batch",), "int64")),
    outputs=(), files=())


def test_profile_spans_batch_one_to_max_with_cfg_batch_optimum():
    prof = trtx.profile_for(ENTRY, opt_batch=2, max_batch=8)
    assert prof == {"hidden_states": ((1, 16, 16), (2, 16, 16), (8, 16, 16)), "timestep": ((1,), (2,), (8,))}
    with pytest.raises(ValueError, match="opt 4 <= max 2"):
        trtx.profile_for(ENTRY, opt_batch=4, max_batch=2)


def test_precision_translation():
    assert trtx.precision_flags("int8") == ["FP16", "INT8"]
    assert trtx.precision_flags("fp32") == ["FP16"]
    with pytest.raises(ValueError, match="'bf8' is unknown"):
        trtx.precision_flags("bf8")


def test_engine_key_changes_with_everything_that_invalidates_an_engine():
    prof = trtx.profile_for(ENTRY, 2, 2)
    base = trtx.engine_key("abc", "10.3.0", (9, 0), prof, ["FP16"])
    assert base == trtx.engine_key("abc", "10.3.0", (9, 0), prof, ["FP16"])
    others = [trtx.engine_key("abd", "10.3.0", (9, 0), prof, ["FP16"]),
              trtx.engine_key("abc", "10.4.0", (9, 0), prof, ["FP16"]),
              trtx.engine_key("abc", "10.3.0", (8, 7), prof, ["FP16"]),  # e.g. a Jetson Orin
              trtx.engine_key("abc", "10.3.0", (9, 0), trtx.profile_for(ENTRY, 2, 4), ["FP16"]),
              trtx.engine_key("abc", "10.3.0", (9, 0), prof, ["FP16", "INT8"])]
    assert len({base, *others}) == 6


class FakeTRT:
    """Records what build_engine asks of TensorRT (names as in the TensorRT 10 Python API)."""

    __version__ = "10.9.0"

    def __init__(self):
        self.calls = []
        rec = self.calls

        class Enum:
            def __init__(self, *names):
                for n in names:
                    setattr(self, n, n)

        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, lvl: None})
        self.BuilderFlag = Enum("FP16", "INT8")
        self.NetworkDefinitionCreationFlag = Enum()
        self.MemoryPoolType = Enum("WORKSPACE")

        class Network:
            names = ["hidden_states", "timestep"]

            @property
            def num_inputs(self):
                return len(self.names)

            def get_input(self, i):
                return types.SimpleNamespace(name=self.names[i])

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                rec.append(("set_shape", name, lo, opt, hi))

        class Cache:
            def serialize(self):
                return b"timing"

        class Config:
            def set_flag(self, f):
                rec.append(("set_flag", f))

            def add_optimization_profile(self, p):
                rec.append(("add_profile",))

            def create_timing_cache(self, data):
                rec.append(("timing_cache_in", data))
                return Cache()

            def set_timing_cache(self, c, ignore_mismatch):
                pass

            def get_timing_cache(self):
                return Cache()

            def set_memory_pool_limit(self, pool, size):
                rec.append(("workspace", size))

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                rec.append(("create_network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                rec.append(("build",))
                return b"ENGINE"

        class Parser:
            num_errors = 0

            def __init__(self, network, logger):
                self.network = network

            def parse_from_file(self, path):
                rec.append(("parse", path))
                if path.endswith(".onnx") and __import__("os").path.exists(path):  # a real file: its inputs
                    import onnx

                    self.network.names = [i.name for i in onnx.load(path, load_external_data=False).graph.input]
                return True

        self.Builder, self.OnnxParser = Builder, Parser


def test_build_engine_translates_profile_flags_and_timing_cache(tmp_path):
    trt = FakeTRT()
    cache = tmp_path / "engines" / "timing.cache"
    data = trtx.build_engine(trt, tmp_path / "g.onnx", trtx.profile_for(ENTRY, 2, 4), ["FP16", "INT8"], cache)
    assert data == b"ENGINE" and cache.read_bytes() == b"timing"
    assert ("set_flag", "FP16") in trt.calls and ("set_flag", "INT8") in trt.calls
    assert ("set_shape", "hidden_states", (1, 16, 16), (2, 16, 16), (4, 16, 16)) in trt.calls
    assert ("set_shape", "timestep", (1,), (2,), (4,)) in trt.calls
    assert ("timing_cache_in", b"") in trt.calls
    trtx.build_engine(trt, tmp_path / "g.onnx", trtx.profile_for(ENTRY, 2, 4), ["FP16"], cache)
    assert ("timing_cache_in", b"timing") in trt.calls  # the second build starts from the first's cache


@pytest.fixture
def bundle_dir(tiny_bundle):
    return tiny_bundle("pixart")  # PLAN; shared with other modules, never changed in place


def test_export_states_why_engines_were_not_built(bundle_dir):
    engines = json.loads((bundle_dir / "manifest.json").read_text())["engines"]
    if trtx.unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are available here: engines were built")
    assert engines["built"] is False
    assert engines["reason"].startswith("TensorRT engines were not built: ")
    assert "tensorrt package does not import" in engines["reason"] or "no CUDA GPU" in engines["reason"]


def test_engine_cache_reuses_and_rebuilds_for_another_gpu(bundle_dir, tmp_path, monkeypatch):
    manifest = read_bundle(bundle_dir)
    trt = FakeTRT()
    monkeypatch.setattr(trtx, "gpu_compute_capability", lambda device=0: (9, 0))
    first = trtx.ensure_engines(bundle_dir, manifest, cache_dir=tmp_path, trt=trt)
    builds = sum(c == ("build",) for c in trt.calls)
    assert builds == 4 and all(p.read_bytes() == b"ENGINE" for p in first.values())
    assert trtx.ensure_engines(bundle_dir, manifest, cache_dir=tmp_path, trt=trt) == first
    assert sum(c == ("build",) for c in trt.calls) == 4  # all four reused
    monkeypatch.setattr(trtx, "gpu_compute_capability", lambda device=0: (8, 7))  # the bundle moved to a Jetson Orin
    moved = trtx.ensure_engines(bundle_dir, manifest, cache_dir=tmp_path, trt=trt)
    assert sum(c == ("build",) for c in trt.calls) == 8 and set(moved.values()).isdisjoint(first.values())
    int8_flags = [c for c in trt.calls if c[0] == "set_flag" and c[1] == "INT8"]
    assert int8_flags == []  # an FP bundle: FP16 only


def test_tensorrt_runner_without_tensorrt_says_why(bundle_dir):
    if trtx.unavailable_reason() is None:
        pytest.skip("TensorRT is available here")
    from deltadit.errors import DeltaDiTError

    b = runtime.load(bundle_dir, backend="tensorrt")
    with pytest.raises(DeltaDiTError, match=r"tensorrt runner \| TensorRT engines were not built"):
        b.runner.activate()


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_runner_matches_onnxruntime(bundle_dir, tmp_path):
    """GPU integration: engines built on first load (FP16) run the plan close to ONNX Runtime CPU."""
    from tests.export.test_bundle import generate

    trt_bundle = runtime.load(bundle_dir, backend="tensorrt", engine_dir=tmp_path)
    ort_bundle = runtime.load(bundle_dir)
    preset = tiny_preset("pixart")
    a = generate(trt_bundle.executor(), preset, trt_bundle.config).cpu()
    b = generate(ort_bundle.executor(), preset, ort_bundle.config)
    assert float((a - b).abs().max() / b.abs().max()) < 2e-2  # FP16 engines vs FP32


def test_cached_engine_with_a_wrong_hash_is_rebuilt_not_loaded(bundle_dir, tmp_path, monkeypatch):
    manifest = read_bundle(bundle_dir)
    trt = FakeTRT()
    monkeypatch.setattr(trtx, "gpu_compute_capability", lambda device=0: (9, 0))
    paths = trtx.ensure_engines(bundle_dir, manifest, cache_dir=tmp_path, trt=trt)
    head = paths["head"]
    assert trtx.read_engine(head, manifest, "head") == b"ENGINE"
    head.write_bytes(b"EVIL")  # swapped or truncated in the cache
    with pytest.raises(DeltaDiTError, match=r"head-.*\.engine \| does not match its recorded sha256"):
        trtx.read_engine(head, manifest, "head")
    trtx.ensure_engines(bundle_dir, manifest, cache_dir=tmp_path, trt=trt)
    assert sum(c == ("build",) for c in trt.calls) == 5 and head.read_bytes() == b"ENGINE"  # only that one rebuilt


def test_engines_built_on_load_go_to_the_cache_not_into_the_bundle(bundle_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DELTADIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(trtx, "gpu_compute_capability", lambda device=0: (9, 0))
    before = sorted(p.name for p in bundle_dir.rglob("*"))
    paths = trtx.ensure_engines(bundle_dir, read_bundle(bundle_dir), trt=FakeTRT())
    assert all(p.is_relative_to(tmp_path / "cache" / "engines") for p in paths.values())
    assert sorted(p.name for p in bundle_dir.rglob("*")) == before


def test_engine_file_names_cannot_leave_their_folder():
    with pytest.raises(DeltaDiTError, match=r"engine \| segment '\.\./\.\./x'"):
        trtx.engine_path("/cache", "../../x", "abc123")


def test_engines_built_at_export_are_hashed_in_the_manifest_and_used_on_load(tmp_path, monkeypatch):
    """With TensorRT (a recording stand-in here) the export builds engines into the bundle and lists each
    with its sha256; on load the bundle's engines are used (no rebuild), a swapped one is refused."""
    import sys

    fake = FakeTRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trtx, "unavailable_reason", lambda: None)
    monkeypatch.setattr(trtx, "gpu_compute_capability", lambda device=0: (9, 0))
    export_bundle(tiny_preset("pixart"), PLAN, tmp_path / "b", random_init=True, progress=False)
    m = read_bundle(tmp_path / "b")
    assert m.engines.built and set(m.engines.files) == {s.name for s in m.segments}
    builds = sum(c == ("build",) for c in fake.calls)
    paths = trtx.ensure_engines(tmp_path / "b", m, cache_dir=tmp_path / "cache", trt=fake)
    assert sum(c == ("build",) for c in fake.calls) == builds  # nothing rebuilt
    assert all(p.parent == tmp_path / "b" / "engines" for p in paths.values())
    assert trtx.read_engine(paths["head"], m, "head") == b"ENGINE"
    paths["head"].write_bytes(b"SWAPPED")
    with pytest.raises(DeltaDiTError, match=r"sha256 does not match the manifest"):
        read_bundle(tmp_path / "b")
