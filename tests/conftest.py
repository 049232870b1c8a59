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
