"""`deltadit generate` / runtime.generate on tiny bundles: the ONNX Runtime image equals diffusers' pipeline."""

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")
from diffusers import DiTPipeline, PixArtAlphaPipeline

from deltadit import cli, runtime
from deltadit.errors import DeltaDiTError
from deltadit.export.pipeline import export_bundle
from deltadit.plan import build_plan
from deltadit.runtime import DeltaDiTTransformer, make_scheduler
from deltadit.runtime.conditioning import VaeDecoder
from tests.conftest import (SCHEDULER_CONFIG, build_dit, build_pixart, build_text_encoder, build_tokenizer, build_vae,
                            save_pipeline_folder)
from tests.export.test_bundle import BLOCKS, STEPS, tiny_preset

PLAN = build_plan(STEPS, BLOCKS, 3, 12, 2, "delta-dit")


@pytest.fixture
def pixart_bundle(tiny_bundle, pixart_folder):
    return tiny_bundle("pixart", pipeline=True), pixart_folder  # PLAN on save_pipeline_folder(build_pixart())


def pixart_pipe(folder, plan=None):
    transformer = build_pixart()
    if plan is not None:
        transformer = DeltaDiTTransformer(transformer, plan)
    pipe = PixArtAlphaPipeline(tokenizer=build_tokenizer(), text_encoder=build_text_encoder(), vae=build_vae(),
                               transformer=transformer, scheduler=make_scheduler("dpm-solver++", SCHEDULER_CONFIG))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_pipe(pipe, prompt, seed, output_type):
    return pipe(prompt, num_inference_steps=STEPS, guidance_scale=4.5, height=8, width=8, clean_caption=False,
                use_resolution_binning=False, max_sequence_length=5, output_type=output_type,
                generator=torch.Generator().manual_seed(seed)).images


@pytest.mark.parametrize("cache", [False, True])
def test_pixart_generate_matches_diffusers_pipeline(pixart_bundle, cache):
    bundle_dir, folder = pixart_bundle
    result = runtime.generate(bundle_dir, prompt="A red cat", seed=5, cache=cache, pipeline=folder)
    # The reference: diffusers' own pipeline, uncached, or with the PyTorch drop-in running the same plan.
    pipe = pixart_pipe(folder, PLAN if cache else None)
    latents = run_pipe(pipe, "A red cat", 5, "latent")
    rel = (result.latents - latents).abs().max() / latents.abs().max()
    assert rel <= 1e-4, rel
    if cache:
        pipe.transformer.reset()
    image = run_pipe(pipe, "A red cat", 5, "np")[0]
    assert result.image.shape == image.shape == (8, 8, 3)
    assert np.abs(result.image - image).max() <= 1e-4


def test_cached_and_uncached_differ_and_prompts_matter(pixart_bundle):
    bundle, folder = runtime.load(pixart_bundle[0]), pixart_bundle[1]
    a = runtime.generate(bundle, prompt="a cat", seed=1, pipeline=folder)
    b = runtime.generate(bundle, prompt="a cat", seed=1, cache=False, pipeline=folder)
    c = runtime.generate(bundle, prompt="a dog on the grass", seed=1, pipeline=folder)
    assert not torch.equal(a.latents, b.latents)  # the plan really skipped blocks
    assert (a.latents - c.latents).abs().max() > 1e-3  # the prompt reaches the transformer


def test_cli_generate_writes_png(pixart_bundle, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "img.png"
    assert cli.main(["generate", str(pixart_bundle[0]), "--prompt", "a giraffe", "--seed", "2", "--out", str(out),
                     "--pipeline", str(pixart_bundle[1])]) == 0
    assert Image.open(out).size == (8, 8)
    text = capsys.readouterr().out
    assert "wrote" in text and "Δ-DiT plan (delta-dit" in text and "MACs" in text


def test_a_gpu_provider_this_onnxruntime_lacks_is_named_before_any_tensor_moves(pixart_bundle, tmp_path, capsys):
    """--providers CUDAExecutionProvider on a CPU build: the missing provider in one line (not torch's
    'not compiled with CUDA' from moving the latents to the runner's device first)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    out = tmp_path / "img.png"
    assert cli.main(["generate", str(pixart_bundle[0]), "--prompt", "a cat", "--out", str(out), "--pipeline",
                     str(pixart_bundle[1]), "--providers", "CUDAExecutionProvider"]) == 2
    assert "error: providers | CUDAExecutionProvider not available in this onnxruntime" in capsys.readouterr().err
    assert not out.exists()


def test_missing_text_encoder_says_where_it_looked(tmp_path):
    folder = save_pipeline_folder(tmp_path / "pipe", build_pixart(), text=False)
    export_bundle(tiny_preset("pixart"), PLAN, tmp_path / "b", weights=str(folder), progress=False)
    with pytest.raises(DeltaDiTError, match=r"tokenizer \| not found. Looked in: .*pipe.*--pipeline DIR"):
        runtime.generate(tmp_path / "b", prompt="a cat", pipeline=folder)
    assert cli.main(["generate", str(tmp_path / "b"), "--prompt", "a cat", "--out", str(tmp_path / "x.png"),
                     "--pipeline", str(folder)]) == 2
    assert not (tmp_path / "x.png").exists()


def test_random_init_bundle_needs_pipeline(tiny_bundle):
    with pytest.raises(DeltaDiTError, match="no --pipeline given"):
        runtime.generate(tiny_bundle("pixart"), prompt="a cat")


def test_wrong_condition_kind(pixart_bundle):
    with pytest.raises(DeltaDiTError, match="conditioned on text. Expected: --prompt"):
        runtime.generate(pixart_bundle[0], class_label=3)


def test_dit_generate_matches_diffusers_pipeline(tmp_path):
    folder = save_pipeline_folder(tmp_path / "pipe", build_dit(), text=False)
    export_bundle(tiny_preset("dit"), PLAN, tmp_path / "b", weights=str(folder), progress=False)
    bundle = runtime.load(tmp_path / "b")
    result = runtime.generate(bundle, class_label=3, seed=4, cache=False, pipeline=folder)
    pipe = DiTPipeline(transformer=build_dit(), vae=build_vae(), scheduler=make_scheduler("dpm-solver++", SCHEDULER_CONFIG))
    pipe.set_progress_bar_config(disable=True)
    image = pipe([3], guidance_scale=4.0, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(4),
                 output_type="np").images[0]
    assert np.abs(result.image - image).max() <= 1e-4
    with pytest.raises(DeltaDiTError, match=r"--class \| 1000 is out of range"):
        runtime.generate(bundle, class_label=1000, pipeline=folder)
    # The decoder can be reused across calls; numpy (no IO binding) gives the same image.
    plain = runtime.load(tmp_path / "b", io_binding=False)
    again = runtime.generate(plain, class_label=3, seed=4, cache=False, decoder=VaeDecoder(folder, []))
    assert np.abs(again.image - result.image).max() <= 1e-6


def test_bundle_from_other_weights_than_the_pipeline_holds_is_refused(pixart_bundle, tmp_path):
    """The text encoder comes from the --pipeline folder; if its weights are not those the bundle was
    exported from, its encoder does not match the exported transformer: refused unless overridden."""
    import shutil

    from deltadit.sources import weights_fingerprint

    path, shared = pixart_bundle
    folder = shutil.copytree(shared, tmp_path / "pipe")  # a copy of the weights the bundle came from, to replace
    bundle = runtime.load(path)
    assert bundle.manifest.model.weights_sha256 == weights_fingerprint(str(folder))
    runtime.generate(bundle, prompt="a cat", seed=0, pipeline=folder)  # unchanged: fine
    shutil.rmtree(folder / "transformer")
    build_pixart(seed=1).save_pretrained(folder / "transformer")  # retrained / replaced weights
    fresh = runtime.load(path)
    with pytest.raises(DeltaDiTError, match=r"--pipeline .* \| holds other transformer / text-encoder weights"):
        runtime.generate(fresh, prompt="a cat", seed=0, pipeline=folder)
    runtime.generate(fresh, prompt="a cat", seed=0, pipeline=folder, allow_other_weights=True)  # the user's explicit call


def test_manifest_source_is_never_opened_without_the_user_naming_it(pixart_bundle):
    """A manifest naming a folder (here: the real pipeline) does not make generate load from it."""
    with pytest.raises(DeltaDiTError, match=r"does not open on a manifest's word\. Expected: --pipeline DIR"):
        runtime.generate(pixart_bundle[0], prompt="a cat")
