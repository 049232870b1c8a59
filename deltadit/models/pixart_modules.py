"""PixArt-α (diffusers ``PixArtTransformer2DModel``) split into head / block groups / tail.

Each segment re-runs exactly the operations of ``PixArtTransformer2DModel.forward`` (diffusers 0.42)
in the same order on the same modules, so head -> groups -> tail is bitwise equal to the original
forward on the same device and dtype (checked by tests/models/test_split.py).
Shapes: B batch (the CFG batch), L = (H/p)(W/p) image tokens, D hidden, S caption tokens.
"""

from __future__ import annotations

import torch
from torch import nn


class Head(nn.Module):
    def __init__(self, transformer):
        super().__init__()
        self.pos_embed = transformer.pos_embed
        self.adaln_single = transformer.adaln_single
        self.caption_projection = transformer.caption_projection
        self.use_additional_conditions = transformer.use_additional_conditions

    def forward(self, sample, timestep, encoder_hidden_states, encoder_attention_mask, resolution=None, aspect_ratio=None):
        batch_size = sample.shape[0]
        # mask (B, S), 1 = keep -> additive bias (B, 1, S), as diffusers does.
        encoder_attention_bias = (1 - encoder_attention_mask.to(sample.dtype)) * -10000.0
        encoder_attention_bias = encoder_attention_bias.unsqueeze(1)
        hidden_states = self.pos_embed(sample)  # (B, L, D)
        added = {"resolution": resolution, "aspect_ratio": aspect_ratio}
        timestep_emb, embedded_timestep = self.adaln_single(
            timestep, added, batch_size=batch_size, hidden_dtype=hidden_states.dtype
        )  # (B, 6D), (B, D)
        if self.caption_projection is not None:
            encoder_hidden_states = self.caption_projection(encoder_hidden_states)
            encoder_hidden_states = encoder_hidden_states.view(batch_size, -1, hidden_states.shape[-1])  # (B, S, D)
        return hidden_states, encoder_hidden_states, timestep_emb, encoder_attention_bias, embedded_timestep


class Group(nn.Module):
    """transformer_blocks[start:stop] with explicit tensor inputs and one output."""

    def __init__(self, transformer, start: int, stop: int):
        super().__init__()
        self.blocks = nn.ModuleList(transformer.transformer_blocks[start:stop])

    def forward(self, hidden_states, encoder_hidden_states, timestep_emb, encoder_attention_bias):
        for block in self.blocks:
            hidden_states = block(
                hidden_states,
                attention_mask=None,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_bias,
                timestep=timestep_emb,
                cross_attention_kwargs=None,
                class_labels=None,
            )
        return hidden_states


class Tail(nn.Module):
    """Final norm, adaLN-single modulation, projection and unpatchify for a (h, w) token grid."""

    def __init__(self, transformer, grid: tuple[int, int]):
        super().__init__()
        self.scale_shift_table = transformer.scale_shift_table
        self.norm_out = transformer.norm_out
        self.proj_out = transformer.proj_out
        self.patch_size = transformer.config.patch_size
        self.out_channels = transformer.out_channels
        self.grid = grid

    def forward(self, hidden_states, embedded_timestep):
        height, width = self.grid
        p, c = self.patch_size, self.out_channels
        shift, scale = (self.scale_shift_table[None] + embedded_timestep[:, None].to(self.scale_shift_table.device)).chunk(2, dim=1)
        hidden_states = self.norm_out(hidden_states)
        hidden_states = hidden_states * (1 + scale.to(hidden_states.device)) + shift.to(hidden_states.device)
        hidden_states = self.proj_out(hidden_states)  # (B, L, p*p*C)
        # diffusers squeezes dim 1 here, a no-op for L > 1; left out because with a dynamic batch the
        # exporter turns it into an If node that ONNX Runtime's shape inference rejects.
        hidden_states = hidden_states.reshape(shape=(-1, height, width, p, p, c))
        hidden_states = torch.einsum("nhwpqc->nchpwq", hidden_states)
        return hidden_states.reshape(shape=(-1, c, height * p, width * p))  # (B, C_out, H, W)
