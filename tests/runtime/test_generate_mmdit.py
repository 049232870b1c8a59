"""runtime.generate on tiny SD3 / FLUX / PixArt-Σ bundles equals diffusers' own pipelines (prompt encoding,
noise, schedule, guidance and decoding), uncached and with the Δ-DiT plan (the PyTorch drop-in as reference)."""

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")
from diffusers import FluxPipeline, PixArtSigmaPipeline, StableDiffusion3Pipeline

from deltadit import runtime
from deltadit.errors import DeltaDiTError
from deltadit.export.pipeline import export_bundle
from deltadit.presets import Preset
from deltadit.runtime import DeltaDiTTransformer, make_scheduler
from deltadit.runtime.conditioning import VaeDecoder, make_conditioner
from tests.conftest import (FLOW_CONFIG, FLUX_FLOW_CONFIG, FLUX_TINY, PIXART_TINY, SCHEDULER_CONFIG, SD3_TINY,
                            build_flux, build_pixart, build_sd3, build_shifted_vae, build_text_encoder, build_tokenizer,
                            build_vae, flux_text_components, save_components, save_pipeline_folder, sd3_text_components)

STEPS, SIDE, PROMPT, SEED = 6, 8, "A red cat on the grass", 3
SD3_T5_LEN, FLUX_T5_LEN = 8, 8  # T5 tokens: the prompts fit, nothing is truncated
SD3_VAE, FLUX_VAE = dict(scaling_factor=1.5305, shift_factor=0.0609), dict(scaling_factor=0.3611, shift_factor=0.1159)


def mmdit_preset(arch, transformer, scheduler_config, guidance_scale, text_len):
    # One-level VAE (vae_scale 1): the resolution is the latent side.
    return Preset(name=f"tiny-{arch}", description="tiny", arch=arch, source="", transformer=transformer, steps=STEPS,
                  b=3, nc=2, interval=2, variant="delta-dit", scheduler="flow-euler", guidance_scale=guidance_scale,
                  text_len=text_len, resolution=SIDE, vae_scale=1, scheduler_config=scheduler_config).check()


def export(root, preset, folder):
    plan = preset.plan()
    export_bundle(preset, plan, root / "bundle", weights=str(folder), progress=False)
    return runtime.load(root / "bundle"), plan


@pytest.fixture(scope="module")
def sd3_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd3")
    folder = save_components(root / "pipe", build_sd3(), build_shifted_vae(**SD3_VAE), sd3_text_components())
    return (*export(root, mmdit_preset("sd3", SD3_TINY, FLOW_CONFIG, 5.0, 77 + SD3_T5_LEN), folder), folder)


@pytest.fixture(scope="module")
def flux_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux")
    folder = save_components(root / "pipe", build_flux(), build_shifted_vae(**FLUX_VAE), flux_text_components())
    return (*export(root, mmdit_preset("flux", FLUX_TINY, FLUX_FLOW_CONFIG, 3.5, FLUX_T5_LEN), folder), folder)


def generate(bundle, **kwargs):
    return runtime.generate(bundle, **kwargs)


def drop_in(transformer, plan):
    return transformer if plan is None else DeltaDiTTransformer(transformer, plan)


def sd3_pipe(plan=None, t5=True):
    pipe = StableDiffusion3Pipeline(transformer=drop_in(build_sd3(), plan), vae=build_shifted_vae(**SD3_VAE),
                                    scheduler=make_scheduler("flow-euler", FLOW_CONFIG), **sd3_text_components(t5))
    pipe.set_progress_bar_config(disable=True)
    return pipe, dict(guidance_scale=5.0, max_sequence_length=SD3_T5_LEN)


def flux_pipe(plan=None):
    pipe = FluxPipeline(transformer=drop_in(build_flux(), plan), vae=build_shifted_vae(**FLUX_VAE),
                        scheduler=make_scheduler("flow-euler", FLUX_FLOW_CONFIG), **flux_text_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe, dict(guidance_scale=3.5, max_sequence_length=FLUX_T5_LEN)


def assert_matches_pipeline(result, pipe, kwargs, seed=SEED):
    """result (runtime.generate) equals pipe's latents (<= 1e-4 relative) and image (<= 1e-4 absolute)."""
    def run(output_type):
        if isinstance(pipe.transformer, DeltaDiTTransformer):
            pipe.transformer.reset()
        return pipe(PROMPT, num_inference_steps=STEPS, height=SIDE, width=SIDE, output_type=output_type,
                    generator=torch.Generator().manual_seed(seed), **kwargs).images

    latents = run("latent")
    assert result.latents.shape == latents.shape
    rel = (result.latents - latents).abs().max() / latents.abs().max()
    assert rel <= 1e-4, rel
    image = run("np")[0]
    assert result.image.shape == image.shape == (SIDE, SIDE, 3)
    assert np.abs(result.image - image).max() <= 1e-4


@pytest.mark.parametrize("cache", [False, True])
def test_sd3_generate_matches_diffusers_pipeline(sd3_bundle, cache):
    bundle, plan, folder = sd3_bundle
    result = runtime.generate(bundle, prompt=PROMPT, seed=SEED, cache=cache, pipeline=folder)
    assert_matches_pipeline(result, *sd3_pipe(plan if cache else None))


@pytest.mark.parametrize("cache", [False, True])
def test_flux_generate_matches_diffusers_pipeline(flux_bundle, cache):
    bundle, plan, folder = flux_bundle
    result = generate(bundle, prompt=PROMPT, seed=SEED, cache=cache, pipeline=folder)
    # FluxPipeline's output_type="latent" returns the packed (1, L, 4C) latents, as the bundle's are.
    assert_matches_pipeline(result, *flux_pipe(plan if cache else None))


def test_sd3_without_t5_encodes_like_the_pipeline(sd3_bundle, tmp_path):
    """A folder without text_encoder_3/ runs SD3 as the pipeline does with text_encoder_3=None (zeros)."""
    import shutil

    bundle, _, folder = sd3_bundle
    shutil.copytree(folder, tmp_path / "pipe", ignore=lambda d, names: [n for n in names if n.endswith("_3")])
    with pytest.warns(UserWarning, match="no text_encoder_3/"):
        result = runtime.generate(bundle, prompt=PROMPT, seed=SEED, cache=False, pipeline=tmp_path / "pipe",
                                  allow_other_weights=True)
    assert_matches_pipeline(result, *sd3_pipe(t5=False))


@pytest.mark.parametrize("name", ["sd3_bundle", "flux_bundle"])
def test_prompts_reach_the_mmdit_transformers(request, name):
    bundle, _, folder = request.getfixturevalue(name)
    a = generate(bundle, prompt="a cat", seed=1, pipeline=folder)
    b = generate(bundle, prompt="a dog on the grass", seed=1, pipeline=folder)
    assert (a.latents - b.latents).abs().max() > 1e-3


def test_missing_text_parts_are_all_named(sd3_bundle, tmp_path):
    import shutil

    bundle, _, folder = sd3_bundle
    shutil.copytree(folder, tmp_path / "pipe", ignore=lambda d, names: [n for n in names if n.endswith("_2")])
    with pytest.raises(DeltaDiTError, match=r"CLIP-G tokenizer, CLIP-G text encoder \| not found\. Looked in: .*pipe.*"
                                            r"Expected: --pipeline DIR, .* with tokenizer_2/, text_encoder_2/ in it"):
        runtime.generate(bundle, prompt="a cat", pipeline=tmp_path / "pipe", allow_other_weights=True)


def test_text_encoders_of_another_width_are_refused(tmp_path):
    from tests.conftest import build_clip_encoder

    parts = {**flux_text_components(), "text_encoder": build_clip_encoder(8, None)}
    save_components(tmp_path / "pipe", build_flux(), build_shifted_vae(**FLUX_VAE), parts)
    with pytest.raises(DeltaDiTError, match=r"its text encoders give .*pooled_projections \(1, 8\), but the bundle's "
                                            r"transformer takes .*pooled_projections \(1, 12\)"):
        make_conditioner("flux", tmp_path / "pipe", [], FLUX_T5_LEN, FLUX_TINY)
    save_components(tmp_path / "sd3", build_sd3(), build_shifted_vae(**SD3_VAE), sd3_text_components())
    with pytest.raises(DeltaDiTError, match=r"caption length 77 leaves no T5 tokens after CLIP's 77"):
        make_conditioner("sd3", tmp_path / "sd3", [], 77, SD3_TINY)


def test_pipeline_conditioner_is_thread_safe(sd3_bundle):
    from concurrent.futures import ThreadPoolExecutor

    conditioner = make_conditioner("sd3", sd3_bundle[2], [], 77 + SD3_T5_LEN, SD3_TINY)
    prompts = ["a cat", "a dog on the grass", "the red giraffe", PROMPT] * 4
    alone = [conditioner(p) for p in prompts]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(conditioner, prompts))
    for (c1, u1), (c2, u2) in zip(alone, together):
        assert all(torch.equal(c1[k], c2[k]) and torch.equal(u1[k], u2[k]) for k in c1)


def test_vae_shift_factor(tmp_path):
    """latents / scaling_factor + shift_factor, as SD3 / FLUX pipelines decode; no shift: unchanged."""
    build_shifted_vae(**FLUX_VAE).save_pretrained(tmp_path / "vae")
    decoder = VaeDecoder(tmp_path, [])
    latents = torch.randn(1, 4, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = decoder.vae.decode(latents / 0.3611 + 0.1159, return_dict=False)[0]
    assert np.abs(decoder(latents) - (expected / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()[0]).max() == 0


PIXART_SIGMA_TINY = dict(PIXART_TINY, interpolation_scale=2, use_additional_conditions=False)


@pytest.fixture(scope="module")
def pixart_sigma_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("sigma")
    folder = save_pipeline_folder(root / "pipe", build_pixart(**PIXART_SIGMA_TINY))
    preset = Preset(name="tiny-sigma", description="tiny", arch="pixart", source="", transformer=PIXART_SIGMA_TINY,
                    steps=STEPS, b=3, nc=2, interval=2, variant="delta-dit", scheduler="dpm-solver++",
                    guidance_scale=4.5, text_len=5, resolution=SIDE, vae_scale=1,
                    scheduler_config=SCHEDULER_CONFIG).check()
    return (*export(root, preset, folder), folder)


@pytest.mark.parametrize("cache", [False, True])
def test_pixart_sigma_generate_matches_diffusers_pipeline(pixart_sigma_bundle, cache):
    """PixArt-Σ: the "t5" conditioner, the bundle's caption length as the pipeline's max_sequence_length."""
    bundle, plan, folder = pixart_sigma_bundle
    result = runtime.generate(bundle, prompt=PROMPT, seed=5, cache=cache, pipeline=folder)
    pipe = PixArtSigmaPipeline(tokenizer=build_tokenizer(), text_encoder=build_text_encoder(), vae=build_vae(),
                               transformer=drop_in(build_pixart(**PIXART_SIGMA_TINY), plan if cache else None),
                               scheduler=make_scheduler("dpm-solver++", SCHEDULER_CONFIG))
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(guidance_scale=4.5, clean_caption=False, use_resolution_binning=False, max_sequence_length=5)
    assert_matches_pipeline(result, pipe, kwargs, seed=5)
