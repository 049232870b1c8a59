"""DiT (diffusers ``DiTTransformer2DModel``, class-conditional, adaLN-Zero) split into segments.

In diffusers every DiT block embeds (timestep, class label) itself through ``norm1.emb``, so the
groups take the raw timestep and labels; the tail re-embeds them with block 0's embedder, as
``DiTTransformer2DModel.forward`` does. Same operations, same order: bitwise equal to the original.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Head(nn.Module):
    def __init__(self, transformer):
        super().__init__()
        self.pos_embed = transformer.pos_embed

    def forward(self, sample, timestep, class_labels):
        # timestep and class_labels pass through: every block and the tail embed them again.
        return self.pos_embed(sample), timestep, class_labels  # (B, L, D), (B,), (B,)


class Group(nn.Module):
    def __init__(self, transformer, start: int, stop: int):
        super().__init__()
        self.blocks = nn.ModuleList(transformer.transformer_blocks[start:stop])

    def forward(self, hidden_states, timestep, class_labels):
        for block in self.blocks:
            hidden_states = block(
                hidden_states,
                attention_mask=None,
                encoder_hidden_states=None,
                encoder_attention_mask=None,
                timestep=timestep,
                cross_attention_kwargs=None,
                class_labels=class_labels,
            )
        return hidden_states


class Tail(nn.Module):
    def __init__(self, transformer, grid: tuple[int, int]):
        super().__init__()
        self.emb = transformer.transformer_blocks[0].norm1.emb
        self.proj_out_1 = transformer.proj_out_1
        self.proj_out_2 = transformer.proj_out_2
        self.norm_out = transformer.norm_out
        self.patch_size = transformer.patch_size
        self.out_channels = transformer.out_channels
        self.grid = grid

    def forward(self, hidden_states, timestep, class_labels):
        height, width = self.grid
        p, c = self.patch_size, self.out_channels
        conditioning = self.emb(timestep, class_labels, hidden_dtype=hidden_states.dtype)
        shift, scale = self.proj_out_1(F.silu(conditioning)).chunk(2, dim=1)
        hidden_states = self.norm_out(hidden_states) * (1 + scale[:, None]) + shift[:, None]
        hidden_states = self.proj_out_2(hidden_states)
        hidden_states = hidden_states.reshape(shape=(-1, height, width, p, p, c))
        hidden_states = torch.einsum("nhwpqc->nchpwq", hidden_states)
        return hidden_states.reshape(shape=(-1, c, height * p, width * p))
