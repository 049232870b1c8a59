"""A bundle that carries its text encoder (`deltadit-export --text-encoder`) encodes prompts itself: the same
head inputs as the pipeline's PyTorch T5, the same final latents, and for the pixel-space `animals` model
prompt -> image with nothing outside the bundle."""

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

from deltadit import cli, runtime
from deltadit.errors import DeltaDiTError
from deltadit.runtime import conditioning
from deltadit.runtime.conditioning import TextConditioner, components_root
from deltadit.runtime.text_encoder import BundleTextConditioner
from tests.conftest import build_text_encoder, build_tokenizer
from tests.export.test_text_encoder import export_with_text_encoder

PROMPTS = ["A red cat", "", "  THE Dog on  ", "a giraffe on the grass with a red dog", "zebra, cat!"]


@pytest.fixture
def exported(tiny_bundle, pixart_folder):
    return export_with_text_encoder(tiny_bundle, pixart_folder)


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_prompt_embeddings_equal_the_pipelines_pytorch_encoder(exported):
    bundle_dir, folder = exported
    bundle = runtime.load(bundle_dir)
    ours = BundleTextConditioner(bundle_dir, bundle.manifest.text_encoder)
    reference = TextConditioner(folder, [], bundle.manifest.export.text_len)
    for prompt in PROMPTS:  # unknown words, upper case, padding, truncation past 5 tokens, the negative ""
        got, want = ours.encode(prompt), reference.encode(prompt)
        assert torch.equal(got["encoder_attention_mask"], want["encoder_attention_mask"]), prompt
        assert rel(got["encoder_hidden_states"], want["encoder_hidden_states"]) <= 1e-5, prompt
    # The graph's batch axis is dynamic: 3 prompts at once equal PyTorch's T5 on the same tokens.
    tokens = build_tokenizer()([p.lower().strip() for p in PROMPTS[:3]], padding="max_length", max_length=5,
                               truncation=True, return_tensors="pt")
    with torch.no_grad():
        want = build_text_encoder()(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    assert rel(ours.embed(tokens.input_ids, tokens.attention_mask), want) <= 1e-5


def test_generate_with_the_bundles_encoder_equals_the_pipelines(exported, monkeypatch, tmp_path):
    bundle_dir, folder = exported
    bundle = runtime.load(bundle_dir)
    reference = runtime.generate(bundle, prompt="a red cat", seed=3, pipeline=folder,
                                 conditioner=TextConditioner(folder, [], 5))

    def no_pytorch_encoder(*args):
        raise AssertionError("the pipeline's text encoder was loaded")

    monkeypatch.setattr(conditioning.TextConditioner, "__init__", no_pytorch_encoder)
    fresh = runtime.load(bundle_dir)
    got = runtime.generate(fresh, prompt="a red cat", seed=3, pipeline=folder)  # the VAE still from the folder
    assert rel(got.latents, reference.latents) <= 1e-4
    assert cli.main(["generate", str(bundle_dir), "--prompt", "a red cat", "--seed", "3", "--pipeline", str(folder),
                     "--out", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").is_file()


def test_pixart_vae_still_needs_the_pipeline(exported):
    with pytest.raises(DeltaDiTError, match=r"Expected: --pipeline DIR"):
        runtime.generate(exported[0], prompt="a cat")


@pytest.mark.slow
def test_animals_bundle_goes_from_prompt_to_image_alone(animals_text_bundle, tmp_path, monkeypatch):
    """The embedded pixel-space model with its text encoder: `deltadit generate BUNDLE --prompt` reads
    nothing outside the bundle, and equals the path through the model's PyTorch T5."""
    from deltadit.cli import build_parser, plan_from_args
    from deltadit.presets import load_preset

    preset = load_preset("animals")
    bundle = runtime.load(animals_text_bundle)  # `deltadit-export --text-encoder`: the default plan
    assert bundle.plan == plan_from_args(build_parser().parse_args(["plan"]))[1]
    reference = runtime.generate(bundle, prompt="a giraffe", seed=1,
                                 conditioner=TextConditioner(*components_root(preset.source), preset.text_len))

    def nothing_outside(*args, **kwargs):
        raise AssertionError("a pipeline folder was looked for")

    monkeypatch.setattr("deltadit.runtime.generation.bundle_components_root", nothing_outside)
    got = runtime.generate(runtime.load(animals_text_bundle), prompt="a giraffe", seed=1)
    assert rel(got.latents, reference.latents) <= 1e-4
    assert cli.main(["generate", str(animals_text_bundle), "--prompt", "a giraffe", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").is_file()
