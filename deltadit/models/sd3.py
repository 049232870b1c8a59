"""SD3 / SD3.5 (diffusers ``SD3Transformer2DModel``): spec-table entry, MAC formula, CFG convention.

Two carried streams (image and context tokens); the last joint block is ``context_pre_only`` (no
context output), so a cached range ending there carries a Δ for hidden_states only. SD3.5's dual
attention layers (``dual_attention_layers``) and qk-norm live inside the blocks and need nothing here.
The segment modules are in sd3_modules.py (torch is imported only when a model is split).
"""

from __future__ import annotations

from deltadit.errors import DeltaDiTError
from deltadit.models.spec import ModelSpec, attention_macs, feedforward_macs, random_joint_condition, tokens


def _modules():
    from deltadit.models import sd3_modules

    return sd3_modules


def block_macs(config: dict, text_len: int, resolution: int | None = None) -> tuple[int, ...]:
    """Per block: joint attention (image q/k/v/out, context q/k/v and out except on the last block),
    SD3.5's second image attention where present, both feed-forwards (no context one on the last
    block) and the adaLN modulations (one token per sample)."""
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    n, layers = tokens(config, resolution), config["num_layers"]
    dual = set(config.get("dual_attention_layers") or ())
    out = []
    for i in range(layers):
        last = i == layers - 1
        macs = attention_macs(n, n, dim, dim, dim) + feedforward_macs(n, dim, "gelu-approximate")
        macs += 3 * text_len * dim * dim + (0 if last else text_len * dim * dim)  # add_q/k/v, to_add_out
        macs += 0 if last else feedforward_macs(text_len, dim, "gelu-approximate")
        macs += dim * (9 if i in dual else 6) * dim + dim * (2 if last else 6) * dim  # norm1, norm1_context
        macs += attention_macs(n, n, dim, dim, dim) if i in dual else 0
        out.append(macs)
    return tuple(out)


def guidance(noise_pred, config: dict, scale: float | None):
    """StableDiffusion3Pipeline's combination: batch [uncond, cond]."""
    if scale is None:
        return noise_pred
    uncond, cond = noise_pred.chunk(2)
    return uncond + scale * (cond - uncond)


def from_forward_kwargs(hidden_states, encoder_hidden_states=None, pooled_projections=None, timestep=None,
                        block_controlnet_hidden_states=None, joint_attention_kwargs=None, skip_layers=None, **_):
    problems = [f"{name} | not supported by the split transformer." for name, v in
                (("block_controlnet_hidden_states", block_controlnet_hidden_states),
                 ("joint_attention_kwargs", joint_attention_kwargs), ("skip_layers", skip_layers)) if v]
    if problems:
        raise DeltaDiTError("\n".join(problems))
    return {"sample": hidden_states, "timestep": timestep, "encoder_hidden_states": encoder_hidden_states,
            "pooled_projections": pooled_projections}


def example_inputs(config: dict, batch: int, text_len: int, side: int, generator=None) -> dict:
    import torch

    return {
        "sample": torch.randn(batch, config["in_channels"], side, side, generator=generator),
        "timestep": torch.full((batch,), 500.0),
        "encoder_hidden_states": torch.randn(batch, text_len, config["joint_attention_dim"], generator=generator),
        "pooled_projections": torch.randn(batch, config["pooled_projection_dim"], generator=generator),
    }


SPEC = ModelSpec(
    arch="sd3",
    diffusers_class="SD3Transformer2DModel",
    head_inputs=lambda config: ("sample", "timestep", "encoder_hidden_states", "pooled_projections"),
    context=("temb",),
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
    conditioning="sd3",
    random_condition=random_joint_condition,
    # The adaLN modulation linears (timestep + pooled text -> shift/scale/gate) stay in floating point.
    int8_keep_fp=("*norm1*", "*norm1_context*"),
    streams=("hidden_states", "encoder_hidden_states"),
    stream_ends=lambda config: {"encoder_hidden_states": config["num_layers"] - 1},
)
