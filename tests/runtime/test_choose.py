"""backend="auto": the faster installed CPU engine, measured once per bundle and machine, then read from the cache."""

import json

import pytest
import torch

pytest.importorskip("onnxruntime")

from deltadit import runtime
from deltadit.errors import DeltaDiTError
from deltadit.runtime import choose


def step(bundle):
    return bundle.uncached().step(0, bundle.example_feeds())["sample"]


def test_the_faster_engine_is_chosen_stored_and_read_back(tiny_bundle, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv("DELTADIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(choose, "installed", lambda: ("onnxrt", "openvino"))
    timed = []

    def seconds(bundles, rounds=choose.ROUNDS):
        timed.append(sorted(bundles))
        return {"onnxrt": 2.0, "openvino": 1.0}  # OpenVINO measured faster

    monkeypatch.setattr(choose, "full_step_seconds", seconds)
    first = runtime.load(tiny_bundle("pixart"), backend="auto")
    assert first.runner.name == "openvino" and first.choice == {"backend": "openvino", "measured": True,
                                                                "seconds": {"onnxrt": 2.0, "openvino": 1.0}}
    again = runtime.load(tiny_bundle("pixart"), backend="auto")
    assert again.runner.name == "openvino" and again.choice["measured"] is False and len(timed) == 1  # not measured again
    assert torch.allclose(step(again), step(runtime.load(tiny_bundle("pixart"), backend="openvino")), atol=0)


def test_each_bundle_and_a_damaged_record_are_measured_afresh(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("DELTADIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(choose, "installed", lambda: ("onnxrt", "openvino"))
    monkeypatch.setattr(choose, "full_step_seconds", lambda bundles, rounds=3: {"onnxrt": 1.0, "openvino": 3.0})
    a, b = tiny_bundle("pixart"), tiny_bundle("pixart", variant="none")
    assert choose.choice_key(a, ("onnxrt", "openvino")) != choose.choice_key(b, ("onnxrt", "openvino"))
    assert choose.choice_key(a, ("onnxrt",)) != choose.choice_key(a, ("onnxrt", "openvino"))  # the engines count
    assert runtime.load(a, backend="auto").choice["measured"] is True
    record = next((tmp_path / "cache" / "backend").glob("*.json"))
    assert json.loads(record.read_text())["backend"] == "onnxrt"
    record.write_text("{not json")
    chosen = runtime.load(a, backend="auto")
    assert chosen.choice["measured"] is True and chosen.runner.name == "onnxrt"
    assert runtime.load(b, backend="auto").choice["measured"] is True


def test_measured_on_the_real_engines(tiny_bundle, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv("DELTADIT_CACHE", str(tmp_path / "cache"))
    chosen = runtime.load(tiny_bundle("pixart"), backend="auto")
    seconds = chosen.choice["seconds"]
    assert set(seconds) == {"onnxrt", "openvino"} and all(s > 0 for s in seconds.values())
    assert chosen.runner.name == min(seconds, key=seconds.get)
    assert torch.isfinite(step(chosen)).all()


def test_one_engine_is_chosen_without_measuring(tiny_bundle, tmp_path, monkeypatch, capsys):
    from deltadit.cli import choice_line

    monkeypatch.setenv("DELTADIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(choose, "installed", lambda: ("onnxrt",))
    chosen = runtime.load(tiny_bundle("pixart"), backend="auto")
    assert chosen.runner.name == "onnxrt" and chosen.choice["seconds"] == {"onnxrt": None}
    assert choice_line(chosen.choice) == "backend auto: onnxrt (the only CPU engine installed)"


def test_auto_refuses_engine_options(tiny_bundle):
    with pytest.raises(DeltaDiTError, match=r"backend \| 'auto' chooses among the CPU engines with their defaults"):
        runtime.load(tiny_bundle("pixart"), providers=["CPUExecutionProvider"], backend="auto")
    with pytest.raises(DeltaDiTError, match=r"backend \| 'auto' chooses"):
        runtime.load(tiny_bundle("pixart"), backend="auto", threads=1)


def test_an_unwritable_cache_still_chooses(tiny_bundle, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("DELTADIT_CACHE", str(blocker))  # a file where the cache folder would be
    monkeypatch.setattr(choose, "installed", lambda: ("onnxrt",))
    assert runtime.load(tiny_bundle("pixart"), backend="auto").runner.name == "onnxrt"
    assert blocker.is_file()  # left as it was
