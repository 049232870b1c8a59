"""Tiny diffusers DiTs built from configs with seeded random weights (no hub, no downloads)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

PIXART_TINY = dict(
    num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=6,
    cross_attention_dim=16, sample_size=8, patch_size=2, caption_channels=32, num_embeds_ada_norm=1000,
    norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    activation_fn="gelu-approximate", attention_bias=True,
)
DIT_TINY = dict(
    num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=6,
    sample_size=8, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
    activation_fn="gelu-approximate", attention_bias=True,
)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")


def build_pixart(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return diffusers.PixArtTransformer2DModel(**{**PIXART_TINY, **overrides}).eval()


def build_dit(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return diffusers.DiTTransformer2DModel(**{**DIT_TINY, **overrides}).eval()


def build_vae(seed: int = 0):
    # One level: vae_scale_factor = 1, so a pipeline's height/width equal the latent size.
    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(
        block_out_channels=(8,), norm_num_groups=8, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
    ).eval()


@pytest.fixture
def pixart():
    return build_pixart()


@pytest.fixture
def dit():
    return build_dit()


def build_tokenizer(words=("a", "red", "cat", "dog", "on", "the", "grass", "giraffe")):
    """A word-level tokenizer saved like T5's (pad 0, eos 1 appended, unk 2); no downloads."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_text_encoder(d_model: int = 32, vocab: int = 11, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=vocab, d_model=d_model, d_kv=8, d_ff=64, num_layers=2,
                                   num_heads=2, relative_attention_num_buckets=8)).eval()


def save_pipeline_folder(root, transformer, text=True):
    """A diffusers-style pipeline folder: transformer/, vae/ and (text=True) tokenizer/ + text_encoder/."""
    transformer.save_pretrained(root / "transformer")
    build_vae().save_pretrained(root / "vae")
    if text:
        build_tokenizer().save_pretrained(root / "tokenizer")
        build_text_encoder().save_pretrained(root / "text_encoder")
    return root


def _gpu_available() -> bool:
    try:
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def pytest_collection_modifyitems(config, items):
    """gpu / tensorrt markers: skip cleanly where no CUDA GPU is visible or tensorrt does not import."""
    import importlib.util

    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "gpu" in item.keywords and not _gpu_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (none visible)"))
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs the tensorrt package (not installable in this workplace)"))


SD3_TINY = dict(sample_size=8, patch_size=2, in_channels=4, num_layers=4, attention_head_dim=8, num_attention_heads=2,
                joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=12, out_channels=4,
                pos_embed_max_size=8)
SD35_TINY = dict(SD3_TINY, dual_attention_layers=(0, 1), qk_norm="rms_norm")
FLOW_CONFIG = dict(num_train_timesteps=1000, shift=3.0)


def build_sd3(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return diffusers.SD3Transformer2DModel(**{**SD3_TINY, **overrides}).eval()


FLUX_TINY = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=8,
                 num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=12, guidance_embeds=True,
                 axes_dims_rope=(2, 2, 4))
FLUX_FLOW_CONFIG = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                        base_image_seq_len=256, max_image_seq_len=4096)


def build_flux(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return diffusers.FluxTransformer2DModel(**{**FLUX_TINY, **overrides}).eval()


CLIP_WORDS = ("a", "red", "cat", "dog", "on", "the", "grass", "giraffe")


def build_clip_tokenizer(words=CLIP_WORDS):
    """A word-level tokenizer saved like CLIP's (bos 0, eos = pad 1, model_max_length 77); no downloads."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>", model_max_length=77)


def build_clip_encoder(hidden: int = 8, projection: int | None = 6, seed: int = 0):
    """Tiny CLIP text encoder: CLIPTextModelWithProjection (SD3) or, projection=None, CLIPTextModel (FLUX)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(CLIP_WORDS) + 3, hidden_size=hidden, intermediate_size=16,
                            num_hidden_layers=2, num_attention_heads=2, projection_dim=projection or hidden,
                            max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return (CLIPTextModel(config) if projection is None else CLIPTextModelWithProjection(config)).eval()


def sd3_text_components(t5: bool = True) -> dict:
    """StableDiffusion3Pipeline's text parts for SD3_TINY: CLIP hidden 8 + 8 <= joint_attention_dim 16,
    pooled 6 + 6 = pooled_projection_dim 12, T5 d_model 16 (text_encoder_3 None: the T5 part is zeros)."""
    return dict(tokenizer=build_clip_tokenizer(), text_encoder=build_clip_encoder(8, 6, seed=1),
                tokenizer_2=build_clip_tokenizer(), text_encoder_2=build_clip_encoder(8, 6, seed=2),
                tokenizer_3=build_tokenizer() if t5 else None,
                text_encoder_3=build_text_encoder(16, seed=3) if t5 else None)


def flux_text_components() -> dict:
    """FluxPipeline's text parts for FLUX_TINY: CLIPTextModel pooled (hidden 12 = pooled_projection_dim),
    T5 d_model 16 = joint_attention_dim."""
    return dict(tokenizer=build_clip_tokenizer(), text_encoder=build_clip_encoder(12, None, seed=1),
                tokenizer_2=build_tokenizer(), text_encoder_2=build_text_encoder(16, seed=2))


def build_shifted_vae(scaling_factor: float = 1.5305, shift_factor: float = 0.0609, seed: int = 0):
    """build_vae with a latent shift, as SD3's (the defaults) and FLUX's (0.3611, 0.1159) VAEs have."""
    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(
        block_out_channels=(8,), norm_num_groups=8, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        scaling_factor=scaling_factor, shift_factor=shift_factor,
    ).eval()


def save_components(root, transformer, vae, components: dict):
    """A diffusers-style pipeline folder with transformer/, vae/ and each named text part (None: left out)."""
    transformer.save_pretrained(root / "transformer")
    vae.save_pretrained(root / "vae")
    for name, part in components.items():
        if part is not None:
            part.save_pretrained(root / name)
    return root


@pytest.fixture(scope="session")
def pixart_folder(tmp_path_factory):
    """save_pipeline_folder(build_pixart()) once per session. Shared: pass it as weights / --pipeline; a test
    that changes it works on its own shutil.copytree."""
    return save_pipeline_folder(tmp_path_factory.mktemp("pixart-pipe"), build_pixart())


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, pixart_folder):
    """tiny_bundle(arch, variant="delta-dit", pipeline=False, name="b", **export_args) -> the folder of
    tests/export's tiny bundle: plan build_plan(STEPS, BLOCKS, 3, 12, 2, variant), random-init weights (or,
    pipeline=True, the pixart_folder's), folder called ``name`` (bench names configurations after it).
    Exported once per session per distinct arguments; tiny_bundle.reports[folder] is its ExportReport.
    Shared across modules: a test that changes the bundle works on its own shutil.copytree."""
    from deltadit.export.pipeline import export_bundle
    from deltadit.plan import build_plan
    from tests.export.test_bundle import BLOCKS, STEPS, tiny_preset

    exported = {}

    def get(arch: str = "pixart", variant: str = "delta-dit", pipeline: bool = False, name: str = "b", **export_args):
        assert arch == "pixart" or not pipeline, "pixart_folder holds a PixArt pipeline"
        key = (arch, variant, pipeline, name, tuple(sorted(export_args.items())))
        if key not in exported:
            out = tmp_path_factory.mktemp(f"tiny-{arch}-{variant}") / name
            source = {"weights": str(pixart_folder)} if pipeline else {"random_init": True}
            get.reports[out] = export_bundle(tiny_preset(arch), build_plan(STEPS, BLOCKS, 3, 12, 2, variant), out,
                                             progress=False, **source, **export_args)
            exported[key] = out
        return exported[key]

    get.reports = {}  # bundle folder -> its ExportReport
    return get


@pytest.fixture(scope="session")
def animals_text_bundle(tmp_path_factory):
    """The embedded model's bundle with its text encoder, exported by the `deltadit-export --text-encoder`
    command (a real subprocess: the entry point as installed). Shared, never changed."""
    import os
    import subprocess
    from pathlib import Path

    out = tmp_path_factory.mktemp("animals") / "bundle"
    venv = Path(os.environ.get("VIRTUAL_ENV", Path(__file__).resolve().parents[1] / ".venv"))
    export = venv / "bin" / "deltadit-export"
    subprocess.run([str(export), "--text-encoder", "--out", str(out)], check=True, capture_output=True, timeout=900)
    return out
