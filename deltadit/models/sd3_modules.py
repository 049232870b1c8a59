"""SD3 / SD3.5 (diffusers ``SD3Transformer2DModel``, MMDiT) split into head / block groups / tail.

Each segment re-runs exactly the operations of ``SD3Transformer2DModel.forward`` (diffusers 0.42) in
the same order on the same modules, so head -> groups -> tail is bitwise equal to the forward.
Shapes: B batch (the CFG batch), L = (H/p)(W/p) image tokens, D hidden, S context tokens (CLIP 77 + T5).
Two streams run through the joint blocks: hidden_states (B, L, D) and encoder_hidden_states (B, S, D);
the last block is ``context_pre_only`` and returns only hidden_states.
"""

from __future__ import annotations

import torch
from torch import nn


class Head(nn.Module):
    def __init__(self, transformer):
        super().__init__()
        self.pos_embed = transformer.pos_embed
        self.time_text_embed = transformer.time_text_embed
        self.context_embedder = transformer.context_embedder

    def forward(self, sample, timestep, encoder_hidden_states, pooled_projections):
        hidden_states = self.pos_embed(sample).contiguous()  # (B, L, D), positions added
        temb = self.time_text_embed(timestep, pooled_projections)  # (B, D)
        encoder_hidden_states = self.context_embedder(encoder_hidden_states)  # (B, S, D)
        return hidden_states, encoder_hidden_states, temb


class Group(nn.Module):
    """Joint blocks [start, stop); returns both streams, or hidden_states alone when the group ends
    with the context_pre_only block."""

    def __init__(self, transformer, start: int, stop: int):
        super().__init__()
        self.blocks = nn.ModuleList(transformer.transformer_blocks[start:stop])

    def forward(self, hidden_states, encoder_hidden_states, temb):
        for block in self.blocks:
            encoder_hidden_states, hidden_states = block(hidden_states=hidden_states,
                                                         encoder_hidden_states=encoder_hidden_states,
                                                         temb=temb, joint_attention_kwargs=None)
        if encoder_hidden_states is None:
            return hidden_states
        return hidden_states, encoder_hidden_states


class Tail(nn.Module):
    def __init__(self, transformer, grid: tuple[int, int]):
        super().__init__()
        self.norm_out = transformer.norm_out
        self.proj_out = transformer.proj_out
        self.patch_size = transformer.config.patch_size
        self.out_channels = transformer.out_channels
        self.grid = grid

    def forward(self, hidden_states, temb):
        height, width = self.grid
        p, c = self.patch_size, self.out_channels
        hidden_states = self.norm_out(hidden_states, temb)
        hidden_states = self.proj_out(hidden_states)  # (B, L, p*p*C)
        hidden_states = hidden_states.reshape(shape=(hidden_states.shape[0], height, width, p, p, c))
        hidden_states = torch.einsum("nhwpqc->nchpwq", hidden_states)
        return hidden_states.reshape(shape=(hidden_states.shape[0], c, height * p, width * p))  # (B, C, H, W)
