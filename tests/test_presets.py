"""Presets from .toml files and from your own diffusers folders (deltadit/presets.py, deltadit/byo.py)."""

import json

import pytest

from deltadit.cli import main
from deltadit.errors import DeltaDiTError
from deltadit.presets import available, load_preset, unknown_keys
from tests.conftest import FLOW_CONFIG, PIXART_TINY, SCHEDULER_CONFIG, build_flux, build_pixart, build_sd3

CONFIGS = load_preset.__globals__["resources"].files("deltadit.configs")


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def pipeline_folder(root, transformer, pipeline, scheduler, scheduler_config, vae_levels=None):
    """transformer/ (save_pretrained) + scheduler/scheduler_config.json + model_index.json [+ vae/config.json]."""
    transformer.save_pretrained(root / "transformer")
    write_json(root / "scheduler" / "scheduler_config.json", {"_class_name": scheduler, **scheduler_config})
    write_json(root / "model_index.json", {"_class_name": pipeline, "_diffusers_version": "0.42.1",
                                           "transformer": ["diffusers", type(transformer).__name__],
                                           "scheduler": ["diffusers", scheduler]})
    if vae_levels:
        write_json(root / "vae" / "config.json", {"_class_name": "AutoencoderKL",
                                                  "block_out_channels": [8] * vae_levels})
    return root


@pytest.fixture(scope="module")
def sigma_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("models") / "my-sigma"
    return pipeline_folder(root, build_pixart(), "PixArtSigmaPipeline", "DPMSolverMultistepScheduler",
                           SCHEDULER_CONFIG, vae_levels=1)


def test_pipeline_folder_gives_arch_dims_scheduler_and_scaled_plan(sigma_folder):
    p = load_preset(str(sigma_folder))
    assert (p.name, p.arch, p.source) == ("my-sigma", "pixart", str(sigma_folder))
    assert "read from" in p.description and str(sigma_folder) in p.description
    assert {k: p.transformer[k] for k in PIXART_TINY} == PIXART_TINY
    assert not any(k.startswith("_") for k in p.transformer)
    assert (p.scheduler, p.scheduler_config) == ("dpm-solver++", SCHEDULER_CONFIG)
    # PixArt-Σ pipeline: 300 caption tokens; a one-level vae (2**0 = x1): sample_size 8 -> 8 px
    assert (p.steps, p.guidance_scale, p.text_len, p.vae_scale, p.resolution) == (20, 4.5, 300, 1, 8)
    # 6 blocks: N_c = 3/4 x 6 = 4.5, rounded half up to 5; b = 0.6 x 20 = 12
    plan = p.plan()
    assert (plan.num_blocks, plan.n_c, plan.b, plan.interval, plan.variant) == (6, 5, 12, 2, "delta-dit")
    assert p.plan(budget=0.7).num_blocks == 6


def test_flow_pipeline_and_bare_transformer_folder_use_the_arch_table(tmp_path):
    sd3 = load_preset(str(pipeline_folder(tmp_path / "sd3", build_sd3(), "StableDiffusion3Pipeline",
                                          "FlowMatchEulerDiscreteScheduler", FLOW_CONFIG)))
    assert (sd3.arch, sd3.scheduler, sd3.scheduler_config) == ("sd3", "flow-euler", FLOW_CONFIG)
    # no vae/: x8; 4 blocks -> N_c 3; 28 steps -> b = 16.8 -> 17
    assert (sd3.steps, sd3.guidance_scale, sd3.text_len, sd3.resolution, sd3.nc, sd3.b) == (28, 7.0, 333, 64, 3, 17)

    build_flux(guidance_embeds=False).save_pretrained(tmp_path / "schnell")  # a transformer folder, no pipeline
    flux = load_preset(str(tmp_path / "schnell"))
    assert (flux.arch, flux.transformer["num_single_layers"], flux.scheduler_config) == ("flux", 3, {})
    # FLUX without guidance embeds (schnell): 4 steps, no guidance, 256 T5 tokens; 5 blocks -> N_c = 3.75 -> 4
    assert (flux.steps, flux.guidance_scale, flux.text_len, flux.resolution) == (4, 0.0, 256, 1024)
    assert (flux.nc, flux.b) == (4, 2)
    assert flux.scheduler == "flow-euler" and flux.cfg_batch == 1


def test_plan_command_on_a_folder(sigma_folder, capsys):
    assert main(["plan", "--model", str(sigma_folder), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["preset"], d["plan"]["n_c"], d["plan"]["b"], d["plan"]["num_blocks"]) == ("my-sigma", 5, 12, 6)
    assert main(["plan", "--model", str(sigma_folder), "--nc", "2", "--steps", "10", "--b", "4"]) == 0
    assert "(my-sigma): 6 blocks, 10 steps, variant delta-dit, N = 2, N_c = 2, b = 4" in capsys.readouterr().out


def test_exporter_loads_weights_from_the_folder(sigma_folder):
    import torch

    from deltadit.export.load import load_transformer

    loaded = load_transformer(load_preset(str(sigma_folder)), weights=None, random_init=False)
    for name, tensor in build_pixart().state_dict().items():  # the seed the folder was saved with
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_hub_id_in_the_local_cache(tmp_path, monkeypatch, sigma_folder):
    import shutil

    import huggingface_hub.constants

    snapshot = tmp_path / "models--me--tiny-sigma" / "snapshots" / ("0" * 40)
    shutil.copytree(sigma_folder, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    p = load_preset("me/tiny-sigma")
    assert (p.name, p.source, p.arch, p.text_len) == ("tiny-sigma", str(snapshot), "pixart", 300)
    with pytest.raises(DeltaDiTError, match=r"'me/other' is not a preset, a .toml file, a model folder or a hub id "
                                            r"in the local cache. Expected: .*downloads nothing"):
        load_preset("me/other")


UNET_CONFIG = {"_class_name": "UNet2DConditionModel", "sample_size": 64}


@pytest.mark.parametrize("files, match", [
    ({"weights.bin": ""},
     r"has neither model_index.json \(a diffusers pipeline\) nor config.json .* Expected: a folder"),
    ({"model_index.json": {"_class_name": "StableDiffusionPipeline"}, "unet/config.json": UNET_CONFIG},
     r"this StableDiffusionPipeline folder has no transformer/config.json \(its folders: unet\)\. Expected: a "
     r"pipeline of a diffusion transformer \(PixArtTransformer2DModel, DiTTransformer2DModel"),
    ({"config.json": UNET_CONFIG},
     r"config.json \| holds a UNet2DConditionModel, not a diffusion transformer deltadit supports\. Expected: the "
     r"config.json of one of PixArtTransformer2DModel, DiTTransformer2DModel, SD3Transformer2DModel, "
     r"FluxTransformer2DModel"),
    ({"config.json": "{not json"},
     r"config.json \| is not readable JSON .* Expected: the files as diffusers' save_pretrained"),
    ({"config.json": {"_class_name": "DiTTransformer2DModel", "_diffusers_version": "9.0", "num_layers": 2,
                      "new_knob": 1}},
     r"missing num_attention_heads, attention_head_dim, patch_size, in_channels, out_channels, num_embeds_ada_norm"
     r"(.|\n)*'new_knob' is not an argument of diffusers DiTTransformer2DModel\. Expected: the diffusers version that "
     r"wrote .*config.json \(9.0\) or newer"),
])
def test_bad_folders_name_the_problem_and_the_fix(tmp_path, files, match):
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(DeltaDiTError, match=match):
        load_preset(str(tmp_path))


def test_toml_relative_source_resolves_against_its_folder(tmp_path, monkeypatch):
    text = (CONFIGS / "pixart.toml").read_text()
    (tmp_path / "cfg" / "weights").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # the working directory is not the .toml's folder
    for source, expected in [("weights", tmp_path / "cfg" / "weights"), ("../other", tmp_path / "other"),
                             ("PixArt-alpha/PixArt-XL-2-512x512", "PixArt-alpha/PixArt-XL-2-512x512")]:
        (tmp_path / "cfg" / "mine.toml").write_text(text.replace('source = "PixArt-alpha/PixArt-XL-2-512x512"',
                                                                 f'source = "{source}"'))
        assert load_preset("cfg/mine.toml").source == str(expected)
    with pytest.raises(DeltaDiTError, match=r"model \| the preset file cfg/nope.toml does not exist"):
        load_preset("cfg/nope.toml")


def test_toml_transformer_keys_are_checked_against_diffusers(tmp_path):
    text = (CONFIGS / "flux-dev.toml").read_text()
    assert "num_single_layers = 38" in text
    bad = tmp_path / "mine.toml"
    bad.write_text(text.replace("num_single_layers = 38", "num_singel_layers = 38"))
    with pytest.raises(DeltaDiTError) as e:
        load_preset(str(bad))
    assert "transformer | missing num_single_layers" in str(e.value)
    assert ("transformer | 'num_singel_layers' (did you mean 'num_single_layers'?) is not an argument of diffusers "
            "FluxTransformer2DModel") in str(e.value)


def test_packaged_presets_match_the_diffusers_classes():
    # named presets skip this check when loading (it imports diffusers and torch): check them here
    for name in available():
        p = load_preset(name)
        assert unknown_keys(p.arch, p.transformer, "{cls}") == [], name


def test_with_blocks_cuts_the_model_and_scales_n_c():
    from deltadit.presets import load_preset

    p = load_preset("pixart")
    assert p.with_blocks(None) is p and p.with_blocks(28) is p
    eight = p.with_blocks(8)
    assert (eight.num_blocks, eight.nc, eight.b, eight.steps) == (8, 6, p.b, p.steps)  # 21 / 28 of 8 blocks
    assert eight.transformer["attention_head_dim"] == p.transformer["attention_head_dim"]  # full width kept
