"""FLUX.1 (diffusers ``FluxTransformer2DModel``) split into head / block groups / tail.

Each segment re-runs exactly the operations of ``FluxTransformer2DModel.forward`` (diffusers 0.42) in
the same order on the same modules, so head -> groups -> tail is bitwise equal to the forward.
Shapes: B batch, L packed image tokens, S text tokens, D hidden, R = rotary width (head dim). Latents
come in packed (B, L, 4C) as FluxPipeline hands them over; position ids have no batch axis.
Blocks are numbered across both stages: 0 .. num_layers-1 are dual-stream, the rest single-stream;
both kinds take and return the two streams (encoder_hidden_states, hidden_states).
"""

from __future__ import annotations

from torch import nn


def all_blocks(transformer) -> list:
    return list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)


class Head(nn.Module):
    def __init__(self, transformer):
        super().__init__()
        self.x_embedder = transformer.x_embedder
        self.time_text_embed = transformer.time_text_embed
        self.context_embedder = transformer.context_embedder
        self.pos_embed = transformer.pos_embed
        self.guidance_embeds = transformer.config.guidance_embeds

    def forward(self, sample, timestep, pooled_projections, encoder_hidden_states, txt_ids, img_ids, guidance=None):
        import torch

        hidden_states = self.x_embedder(sample)  # (B, L, D)
        timestep = timestep.to(hidden_states.dtype) * 1000
        if self.guidance_embeds:
            temb = self.time_text_embed(timestep, guidance.to(hidden_states.dtype) * 1000, pooled_projections)
        else:
            temb = self.time_text_embed(timestep, pooled_projections)  # (B, D)
        encoder_hidden_states = self.context_embedder(encoder_hidden_states)  # (B, S, D)
        rotary_cos, rotary_sin = self.pos_embed(torch.cat((txt_ids, img_ids), dim=0))  # (S + L, R) each, no batch
        return hidden_states, encoder_hidden_states, temb, rotary_cos, rotary_sin


class Group(nn.Module):
    """Blocks [start, stop) of one stage (groups are cut at the stage boundary)."""

    def __init__(self, transformer, start: int, stop: int):
        super().__init__()
        self.blocks = nn.ModuleList(all_blocks(transformer)[start:stop])

    def forward(self, hidden_states, encoder_hidden_states, temb, rotary_cos, rotary_sin):
        for block in self.blocks:
            encoder_hidden_states, hidden_states = block(hidden_states=hidden_states,
                                                         encoder_hidden_states=encoder_hidden_states, temb=temb,
                                                         image_rotary_emb=(rotary_cos, rotary_sin),
                                                         joint_attention_kwargs=None)
        return hidden_states, encoder_hidden_states


class Tail(nn.Module):
    """Final adaptive norm and projection; the output stays packed (B, L, p*p*C) as FLUX returns it."""

    def __init__(self, transformer, grid: tuple[int, int]):
        super().__init__()
        self.norm_out = transformer.norm_out
        self.proj_out = transformer.proj_out

    def forward(self, hidden_states, temb):
        return self.proj_out(self.norm_out(hidden_states, temb))
