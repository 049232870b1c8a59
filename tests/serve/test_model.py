"""The serving model without Triton: request checks, batched runs, the repository writer."""

import re

import numpy as np
import pytest
import torch

from deltadit import cli
from deltadit.errors import DeltaDiTError
from deltadit.serve.model import ServedModel, parse


def request(prompt=b"a cat", seed=0, **extra):
    arrays = {"prompt": np.array([[prompt]], dtype=object), "seed": np.array([[seed]], dtype=np.int64)}
    return {**arrays, **{k: np.array([[v]]) for k, v in extra.items()}}


@pytest.mark.parametrize("arrays, message", [
    (request(seed=-1), "seed | -1 is out of range"),
    (request(guidance=np.float32(np.nan)), "guidance | nan is out of range"),
    (request(guidance=np.float32(101)), "guidance | 101.0 is out of range"),
    (request(prompt=b"x" * 40_001), "prompt | 40001 bytes"),
    (request(prompt=b"  "), "prompt | is empty"),
    (request(prompt=b"\xff\xfe"), "prompt | is not UTF-8"),
    ({"class_id": np.array([[-2]], np.int32), "seed": np.array([[0]], np.int64)}, "class_id | -2 is out of range"),
    ({**request(), "seed": np.array([[0], [1]], np.int64)}, "prompt | 1 values for 2 seeds"),
])
def test_parse_names_the_bad_value(arrays, message):
    with pytest.raises(DeltaDiTError, match=re.escape(message)):
        parse(arrays)


def test_parse_reads_every_row():
    items = parse({"prompt": np.array([[b"a cat"], ["a dog".encode()]], dtype=object), "seed": np.array([[4], [5]]),
                   "guidance": np.array([[2.0], [1.0]], np.float32), "cache": np.array([[True], [False]])})
    assert [(i.prompt, i.seed, i.guidance, i.cache) for i in items] == [("a cat", 4, 2.0, True), ("a dog", 5, 1.0, False)]


def test_batched_noise_per_seed_equals_single_draws():
    from deltadit.presets import load_preset
    from deltadit.runtime.sampling import from_preset, initial_latents
    from deltadit.models.spec import get_spec

    preset = load_preset("animals")
    spec, setup = get_spec(preset.arch), from_preset(preset)
    _, batch, generators = initial_latents(spec, preset.transformer, setup, [3, 8])
    assert isinstance(generators, list) and len(generators) == 2  # the step noise of a stochastic scheduler, too
    for k, seed in enumerate([3, 8]):
        torch.testing.assert_close(batch[k:k + 1], initial_latents(spec, preset.transformer, setup, seed)[1], rtol=0, atol=0)


@pytest.mark.slow
def test_run_batches_equal_singles_and_isolate_bad_requests(animals_bundle):
    from deltadit import runtime

    model = ServedModel(animals_bundle)
    assert model.max_images == 4  # max_batch 8 over the CFG batch 2
    good = [request(p.encode(), s) for s, p in enumerate(("a cat", "a dog", "a bird", "a cow", "a horse"))]
    answers = model.run([request(seed=-5), *good, request(guidance=np.float32(np.inf))])
    assert isinstance(answers[0], DeltaDiTError) and isinstance(answers[-1], DeltaDiTError)
    for arrays, answer in zip(good, answers[1:-1]):  # 5 images: a loop of 4 and a loop of 1
        alone = runtime.generate(model.bundle, prompt=arrays["prompt"][0, 0].decode(), seed=int(arrays["seed"][0, 0]))
        np.testing.assert_array_equal(answer[0].image, alone.pixels())
        np.testing.assert_array_equal(answer[0].latents, alone.latents[0].numpy())


@pytest.mark.slow
def test_triton_repo_writes_a_valid_model_config(animals_bundle, tmp_path):
    model_config = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    assert cli.main(["triton-repo", str(animals_bundle), str(tmp_path), "--max-batch", "3", "--queue", "7"]) == 0
    config = text_format.Parse((tmp_path / "animals-s4" / "config.pbtxt").read_text(), model_config.ModelConfig())
    assert (config.backend, config.max_batch_size) == ("python", 3)
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 7
    assert [(i.name, i.optional) for i in config.input] == [("prompt", False), ("seed", False), ("guidance", True),
                                                            ("cache", True)]
    assert list(config.output[1].dims) == [1, 28, 28]  # latents of the 28-pixel, 1-channel animals model
    assert config.parameters["bundle"].string_value == str(animals_bundle.resolve())
    assert config.parameters["backend"].string_value == "onnxrt"
    assert (tmp_path / "animals-s4" / "1" / "model.py").read_text().startswith('"""Triton Python-backend model')
    assert cli.main(["triton-repo", str(animals_bundle), str(tmp_path / "ov"), "--backend", "openvino"]) == 0
    assert 'key: "backend" value: { string_value: "openvino" }' in (tmp_path / "ov" / "animals-s4" / "config.pbtxt").read_text()


@pytest.mark.slow
def test_triton_repo_refuses_providers_for_another_engine(animals_bundle, tmp_path, capsys):
    assert cli.main(["triton-repo", str(animals_bundle), str(tmp_path / "r"), "--backend", "openvino",
                     "--providers", "CUDAExecutionProvider"]) != 0
    assert "--providers | applies to --backend onnxrt, not openvino. Expected: drop --providers." in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_served_on_openvino_equals_generate_on_openvino(animals_bundle):
    pytest.importorskip("openvino")
    from deltadit import runtime

    model = ServedModel(animals_bundle, backend="openvino")
    assert model.bundle.runner.name == "openvino"
    answer = model.run([request(b"a zebra", 3)])[0]
    alone = runtime.generate(runtime.load(animals_bundle, backend="openvino"), prompt="a zebra", seed=3)
    np.testing.assert_array_equal(answer[0].latents, alone.latents[0].numpy())


@pytest.mark.slow
def test_triton_repo_rewrites_its_own_model_and_leaves_others_alone(animals_bundle, tmp_path, capsys):
    assert cli.main(["triton-repo", str(animals_bundle), str(tmp_path), "--queue", "7"]) == 0
    (tmp_path / "animals-s4" / "notes.txt").write_text("mine")
    assert cli.main(["triton-repo", str(animals_bundle), str(tmp_path), "--queue", "9"]) == 0  # ours: rewritten
    assert "max_queue_size: 9" in (tmp_path / "animals-s4" / "config.pbtxt").read_text()
    assert (tmp_path / "animals-s4" / "notes.txt").read_text() == "mine"
    foreign = 'name: "animals-s4"\nbackend: "onnxruntime"\n'
    (tmp_path / "animals-s4" / "config.pbtxt").write_text(foreign)  # another tool's model of the same name
    assert cli.main(["triton-repo", str(animals_bundle), str(tmp_path)]) == 2
    assert "holds a model that deltadit did not write" in capsys.readouterr().err
    assert (tmp_path / "animals-s4" / "config.pbtxt").read_text() == foreign


@pytest.mark.slow
def test_triton_repo_refuses_too_large_a_batch(animals_bundle, tmp_path, capsys):
    assert cli.main(["triton-repo", str(animals_bundle), str(tmp_path), "--max-batch", "5"]) == 2
    assert "--max-batch | 5 is out of range. Expected: an integer in [1, 4]" in capsys.readouterr().err


def test_serve_without_the_extra_says_what_to_install(monkeypatch, tmp_path, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "pytriton", None)  # as if nvidia-pytriton were not installed
    monkeypatch.setitem(sys.modules, "pytriton.utils.distribution", None)
    assert cli.main(["serve", str(tmp_path)]) == 2
    assert "serve | nvidia-pytriton is not installed. Expected: pip install 'deltadit[serve]'" in capsys.readouterr().err


def test_workspace_is_removed_with_those_of_dead_servers(monkeypatch, tmp_path):
    import subprocess
    import sys
    import tempfile

    from deltadit.serve.server import workspace

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f"deltadit-serve-{int(dead.stdout)}-abc"  # what a SIGKILLed server leaves behind
    (left / "models").mkdir(parents=True)
    alive = tmp_path / "deltadit-serve-1-abc"  # pid 1 is alive: not ours to remove
    alive.mkdir()
    with workspace() as folder:
        assert folder.is_dir() and not left.exists() and alive.exists()
    assert not folder.exists()
