"""FLUX.1 (diffusers ``FluxTransformer2DModel``): spec-table entry, MACs per stage, guidance.

Two streams through 19 dual-stream and 38 single-stream blocks (two stages: groups are cut at the
boundary, a cached range may span it). FLUX.1-dev embeds its distilled guidance scale as an input
(no CFG batch); FLUX.1-schnell has no guidance input. Latents are packed 2x2 patches (B, L, 4C), and
the text / image position ids have no batch axis. The segment modules are in flux_modules.py.
"""

from __future__ import annotations

from deltadit.errors import DeltaDiTError
from deltadit.models.spec import ModelSpec, Stage, attention_macs, feedforward_macs, random_joint_condition


def _modules():
    from deltadit.models import flux_modules

    return flux_modules


def packed_tokens(side: int) -> int:
    """Image tokens for a latent side (the VAE's latent, 2x2 patches packed into one token)."""
    return (side // 2) ** 2


def block_macs(config: dict, text_len: int, resolution: int | None = None) -> tuple[int, ...]:
    """Dual-stream block: image and context attention projections, both feed-forwards, two adaLN-Zero
    modulations. Single-stream block over the joined S + L tokens: q/k/v, the MLP in (4D), the fused
    output projection (5D -> D), one adaLN modulation (D -> 3D)."""
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    n = packed_tokens((resolution or 1024) // 8)
    dual = (attention_macs(n, n, dim, dim, dim) + attention_macs(text_len, text_len, dim, dim, dim)
            + feedforward_macs(n, dim, "gelu-approximate") + feedforward_macs(text_len, dim, "gelu-approximate")
            + 2 * dim * 6 * dim)
    joined = n + text_len
    single = joined * dim * (3 * dim + 4 * dim) + joined * 5 * dim * dim + dim * 3 * dim
    return (dual,) * config["num_layers"] + (single,) * config["num_single_layers"]


def guidance(noise_pred, config: dict, scale: float | None):
    """FLUX's guidance is distilled into the model (an input); there is no CFG combination."""
    if scale is not None:
        raise DeltaDiTError("guidance | FLUX runs without a CFG batch. Expected: guidance passed as the model input.")
    return noise_pred


def head_inputs(config: dict) -> tuple[str, ...]:
    base = ("sample", "timestep", "pooled_projections", "encoder_hidden_states", "txt_ids", "img_ids")
    return base + (("guidance",) if config.get("guidance_embeds") else ())


def from_forward_kwargs(hidden_states, encoder_hidden_states=None, pooled_projections=None, timestep=None, img_ids=None,
                        txt_ids=None, guidance=None, joint_attention_kwargs=None, controlnet_block_samples=None,
                        controlnet_single_block_samples=None, **_):
    problems = [f"{name} | not supported by the split transformer." for name, v in
                (("joint_attention_kwargs", joint_attention_kwargs), ("controlnet_block_samples", controlnet_block_samples),
                 ("controlnet_single_block_samples", controlnet_single_block_samples)) if v]
    if problems:
        raise DeltaDiTError("\n".join(problems))
    feeds = {"sample": hidden_states, "timestep": timestep, "pooled_projections": pooled_projections,
             "encoder_hidden_states": encoder_hidden_states, "txt_ids": txt_ids if txt_ids.ndim == 2 else txt_ids[0],
             "img_ids": img_ids if img_ids.ndim == 2 else img_ids[0]}
    if guidance is not None:
        feeds["guidance"] = guidance
    return feeds


def image_ids(side: int):
    """FluxPipeline._prepare_latent_image_ids for a latent side: (L, 3) = (0, row, column) per token."""
    import torch

    h = w = side // 2
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w)[None, :]
    return ids.reshape(h * w, 3)


def pack(latents):
    """FluxPipeline._pack_latents: (B, C, H, W) -> (B, H/2 * W/2, 4C)."""
    b, c, h, w = latents.shape
    latents = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return latents.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(latents, side: int):
    """FluxPipeline._unpack_latents for a latent side: (B, L, 4C) -> (B, C, side, side)."""
    b, _, channels = latents.shape
    latents = latents.view(b, side // 2, side // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return latents.reshape(b, channels // 4, side, side)


def set_timesteps(scheduler, steps: int, config: dict, side: int) -> None:
    """FluxPipeline's schedule: sigmas 1 -> 1/T, shifted by mu from the image token count."""
    import numpy as np

    sigmas = np.linspace(1.0, 1 / steps, steps)
    cfg = scheduler.config
    if not cfg.get("use_dynamic_shifting"):
        scheduler.set_timesteps(sigmas=sigmas)
        return
    seq, lo, hi = packed_tokens(side), cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
    m = (cfg.get("max_shift", 1.15) - cfg.get("base_shift", 0.5)) / (hi - lo)  # FluxPipeline's calculate_shift
    scheduler.set_timesteps(sigmas=sigmas, mu=seq * m + cfg.get("base_shift", 0.5) - m * lo)


def sampling_inputs(config: dict, side: int, text_len: int, guidance_scale: float, batch: int) -> dict:
    """Position ids (text rows all zero, image rows (0, row, column)) and the embedded guidance."""
    import torch

    feeds = {"txt_ids": torch.zeros(text_len, 3), "img_ids": image_ids(side)}
    if config.get("guidance_embeds"):
        feeds["guidance"] = torch.full((batch,), float(guidance_scale))
    return feeds


def example_inputs(config: dict, batch: int, text_len: int, side: int, generator=None) -> dict:
    import torch

    feeds = {
        "sample": torch.randn(batch, packed_tokens(side), config["in_channels"], generator=generator),
        "timestep": torch.full((batch,), 0.5),
        "pooled_projections": torch.randn(batch, config["pooled_projection_dim"], generator=generator),
        "encoder_hidden_states": torch.randn(batch, text_len, config["joint_attention_dim"], generator=generator),
        "txt_ids": torch.zeros(text_len, 3),
        "img_ids": image_ids(side),
    }
    if config.get("guidance_embeds"):
        feeds["guidance"] = torch.full((batch,), 3.5)
    return feeds


SPEC = ModelSpec(
    arch="flux",
    diffusers_class="FluxTransformer2DModel",
    head_inputs=head_inputs,
    context=("temb", "rotary_cos", "rotary_sin"),
    tail_context=("temb",),
    make_head=lambda transformer: _modules().Head(transformer),
    make_group=lambda transformer, start, stop: _modules().Group(transformer, start, stop),
    make_tail=lambda transformer, grid: _modules().Tail(transformer, grid),
    block_macs=block_macs,
    guidance=guidance,
    cfg_cond_first=False,
    step_on_cfg_batch=False,
    from_forward_kwargs=from_forward_kwargs,
    example_inputs=example_inputs,
    conditioning="flux",
    random_condition=random_joint_condition,
    int8_keep_fp=("*norm1*", "*norm1_context*", "*.norm.*"),
    streams=("hidden_states", "encoder_hidden_states"),
    stages=lambda config: (Stage("dual", "transformer_blocks", config["num_layers"]),
                           Stage("single", "single_transformer_blocks", config["num_single_layers"])),
    unbatched=("txt_ids", "img_ids", "rotary_cos", "rotary_sin"),
    token_side=lambda config: 2,
    embedded_guidance=True,
    noise_shape=lambda config, side: (config["in_channels"] // 4, side, side),
    pack=pack,
    unpack=unpack,
    set_timesteps=set_timesteps,
    timestep_divisor=1000.0,
    sampling_inputs=sampling_inputs,
)
