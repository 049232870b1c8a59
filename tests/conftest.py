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
