"""PixArt-α (diffusers ``PixArtTransformer2DModel``): its spec-table entry, MAC formula and CFG convention.

The segment modules live in pixart_modules.py (torch is imported only when a model is split).
"""

from __future__ import annotations

from deltadit.errors import DeltaDiTError
from deltadit.models.spec import ModelSpec, attention_macs, feedforward_macs, tokens


def _modules():
    # torch-only part, imported on first use so plans and costs do not import torch.
    from deltadit.models import pixart_modules

    return pixart_modules


def head_inputs(config: dict) -> tuple[str, ...]:
    base = ("sample", "timestep", "encoder_hidden_states", "encoder_attention_mask")
    return base + (("resolution", "aspect_ratio") if _additional(config) else ())


def _additional(config: dict) -> bool:
    flag = config.get("use_additional_conditions")
    return config["sample_size"] == 128 if flag is None else bool(flag)


def block_macs(config: dict, text_len: int, resolution: int | None = None) -> int:
    """Self-attention, cross-attention (K/V over the projected caption) and feed-forward linears."""
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    n = tokens(config, resolution)
    kv_dim = config.get("cross_attention_dim") or dim
    return (
        attention_macs(n, n, dim, dim, dim)
        + attention_macs(n, text_len, dim, kv_dim, dim)
        + feedforward_macs(n, dim, config.get("activation_fn", "gelu-approximate"))
    )


def guidance(noise_pred, config: dict, scale: float | None):
    """PixArtAlphaPipeline's combination: batch [uncond, cond]; drop the learned-sigma channels."""
    if scale is not None:
        uncond, cond = noise_pred.chunk(2)
        noise_pred = uncond + scale * (cond - uncond)
    if config["out_channels"] // 2 == config["in_channels"]:
        noise_pred = noise_pred.chunk(2, dim=1)[0]
    return noise_pred


def from_forward_kwargs(hidden_states, encoder_hidden_states=None, timestep=None, added_cond_kwargs=None,
                        cross_attention_kwargs=None, attention_mask=None, encoder_attention_mask=None, **_):
    problems = []
    if attention_mask is not None:
        problems.append("attention_mask | a self-attention mask is not supported by the split transformer.")
    if cross_attention_kwargs:
        problems.append("cross_attention_kwargs | custom attention kwargs are not supported by the split transformer.")
    if encoder_attention_mask is not None and encoder_attention_mask.ndim != 2:
        problems.append("encoder_attention_mask | expected a (batch, tokens) keep-mask, got a bias of shape "
                        f"{tuple(encoder_attention_mask.shape)}.")
    if problems:
        raise DeltaDiTError("\n".join(problems))
    if encoder_attention_mask is None:
        import torch

        encoder_attention_mask = torch.ones(encoder_hidden_states.shape[:2], dtype=hidden_states.dtype,
                                            device=hidden_states.device)
    feeds = {"sample": hidden_states, "timestep": timestep, "encoder_hidden_states": encoder_hidden_states,
             "encoder_attention_mask": encoder_attention_mask}
    if added_cond_kwargs and added_cond_kwargs.get("resolution") is not None:
        feeds["resolution"] = added_cond_kwargs["resolution"]
        feeds["aspect_ratio"] = added_cond_kwargs["aspect_ratio"]
    return feeds


def example_inputs(config: dict, batch: int, text_len: int, side: int, generator=None) -> dict:
    import torch

    mask = torch.ones(batch, text_len)
    mask[0, text_len // 2 :] = 0  # exercise the padding path
    feeds = {
        "sample": torch.randn(batch, config["in_channels"], side, side, generator=generator),
        "timestep": torch.full((batch,), 500, dtype=torch.int64),
        "encoder_hidden_states": torch.randn(batch, text_len, config["caption_channels"], generator=generator),
        "encoder_attention_mask": mask,
    }
    if _additional(config):
        px = float(side * 8)
        feeds["resolution"] = torch.tensor([[px, px]]).repeat(batch, 1)
        feeds["aspect_ratio"] = torch.tensor([[1.0]]).repeat(batch, 1)
    return feeds


def random_condition(config: dict, text_len: int, index: int, count: int, generator) -> tuple[dict, dict]:
    """Random caption embeddings with a random kept length; the negative keeps one token."""
    import torch

    keep = int(torch.randint(1, text_len + 1, (), generator=generator))
    mask = torch.zeros(1, text_len)
    mask[0, :keep] = 1
    emb = torch.randn(1, text_len, config["caption_channels"], generator=generator)
    neg = torch.zeros(1, text_len)
    neg[0, :1] = 1
    return ({"encoder_hidden_states": emb, "encoder_attention_mask": mask},
            {"encoder_hidden_states": torch.randn(1, text_len, config["caption_channels"], generator=generator) * 0.1,
             "encoder_attention_mask": neg})


SPEC = ModelSpec(
    arch="pixart",
    diffusers_class="PixArtTransformer2DModel",
    head_inputs=head_inputs,
    context=("encoder_hidden_states", "timestep_emb", "encoder_attention_bias"),
    tail_context=("embedded_timestep",),
    make_head=lambda transformer: _modules().Head(transformer),
    make_group=lambda transformer, start, stop: _modules().Group(transformer, start, stop),
    make_tail=lambda transformer, grid: _modules().Tail(transformer, grid),
    block_macs=block_macs,
    guidance=guidance,
    cfg_cond_first=False,
    step_on_cfg_batch=False,
    from_forward_kwargs=from_forward_kwargs,
    example_inputs=example_inputs,
    conditioning="t5",
    random_condition=random_condition,
)
