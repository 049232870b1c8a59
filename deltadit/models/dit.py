"""DiT (diffusers ``DiTTransformer2DModel``): its spec-table entry, MAC formula and CFG convention.

The segment modules live in dit_modules.py (torch is imported only when a model is split).
"""

from __future__ import annotations

from deltadit.errors import DeltaDiTError
from deltadit.models.spec import ModelSpec, attention_macs, feedforward_macs, tokens


def _modules():
    # torch-only part, imported on first use so plans and costs do not import torch.
    from deltadit.models import dit_modules

    return dit_modules


def block_macs(config: dict, text_len: int = 0, resolution: int | None = None) -> int:
    """Self-attention and feed-forward linears over the image tokens, plus the block's own adaLN-Zero:
    timestep MLP (256 -> D -> D) and modulation (D -> 6D), once per sample."""
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    n = tokens(config, resolution)
    ada = 256 * dim + dim * dim + dim * 6 * dim
    return attention_macs(n, n, dim, dim, dim) + feedforward_macs(n, dim, config.get("activation_fn", "gelu-approximate")) + ada


def guidance(noise_pred, config: dict, scale: float | None):
    """DiTPipeline's combination: batch [cond, null], guided eps duplicated to both halves."""
    import torch

    c = config["in_channels"]
    if scale is not None:
        eps, rest = noise_pred[:, :c], noise_pred[:, c:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + scale * (cond_eps - uncond_eps)
        eps = torch.cat([half_eps, half_eps], dim=0)
        noise_pred = torch.cat([eps, rest], dim=1)
    if config["out_channels"] // 2 == c:
        noise_pred, _ = torch.split(noise_pred, c, dim=1)
    return noise_pred


def from_forward_kwargs(hidden_states, timestep=None, class_labels=None, cross_attention_kwargs=None, **_):
    if cross_attention_kwargs:
        raise DeltaDiTError("cross_attention_kwargs | custom attention kwargs are not supported by the split transformer.")
    return {"sample": hidden_states, "timestep": timestep, "class_labels": class_labels}


def example_inputs(config: dict, batch: int, text_len: int, side: int, generator=None) -> dict:
    import torch

    labels = torch.arange(batch, dtype=torch.int64) % config["num_embeds_ada_norm"]
    return {
        "sample": torch.randn(batch, config["in_channels"], side, side, generator=generator),
        "timestep": torch.full((batch,), 500, dtype=torch.int64),
        "class_labels": labels,
    }


def random_condition(config: dict, text_len: int, index: int, count: int, generator) -> tuple[dict, dict]:
    """Class ``index`` of ``count`` spread over the label range (plus a seeded offset); null class for uncond."""
    import torch

    classes = config["num_embeds_ada_norm"]
    label = (index * classes) // count + int(torch.randint(0, max(1, classes // count), (), generator=generator))
    return {"class_labels": torch.tensor([label % classes])}, {"class_labels": torch.tensor([classes])}


SPEC = ModelSpec(
    arch="dit",
    diffusers_class="DiTTransformer2DModel",
    head_inputs=lambda config: ("sample", "timestep", "class_labels"),
    context=("timestep", "class_labels"),
    tail_context=("timestep", "class_labels"),
    make_head=lambda transformer: _modules().Head(transformer),
    make_group=lambda transformer, start, stop: _modules().Group(transformer, start, stop),
    make_tail=lambda transformer, grid: _modules().Tail(transformer, grid),
    block_macs=block_macs,
    guidance=guidance,
    cfg_cond_first=True,
    step_on_cfg_batch=True,
    from_forward_kwargs=from_forward_kwargs,
    example_inputs=example_inputs,
    conditioning="class",
    random_condition=random_condition,
    # Each DiT block carries its own timestep/class embedding and adaLN-Zero projection (norm1.emb,
    # norm1.linear): the paper's "time/adaLN embedding" layers, kept in floating point.
    int8_keep_fp=("*norm1*",),
)
