"""The per-model spec table: everything that differs between DiT architectures, as data.

A stage that needs to know "which model is this" asks :func:`spec_for` and reads fields; it never
branches on a model name. Adding an architecture means adding one module with its segment classes and
one :class:`ModelSpec` entry in :data:`SPECS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from deltadit.errors import DeltaDiTError


@dataclass(frozen=True)
class Segment:
    """One exported / executed piece of the transformer.

    kind: "head", "group" or "tail".  block_range: [start, stop) for a group, None otherwise.
    inputs / outputs: tensor names in call order (they become the ONNX I/O names).
    """

    name: str
    kind: str
    block_range: tuple[int, int] | None
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def _identity(latents):
    return latents


@dataclass(frozen=True)
class Stage:
    """A run of blocks of one kind: ``attr`` names the transformer's ModuleList (e.g.
    ``transformer_blocks``, FLUX's ``single_transformer_blocks``). Blocks are numbered across stages
    (FLUX: 0-18 dual-stream, 19-56 single-stream); a stage boundary is a forced cut point."""

    name: str
    attr: str
    count: int


@dataclass(frozen=True)
class ModelSpec:
    """How one diffusers transformer class is split, costed and driven.

    arch: short name used in presets and manifests.  diffusers_class: the transformer class name.
    head_inputs(config): the model inputs the head takes, in order (PixArt-1024 adds micro-conditions).
    context: head outputs that every block group takes after ``hidden_states``.
    tail_context: head outputs the tail takes after ``hidden_states``.
    make_head / make_group / make_tail: build segment modules that share the transformer's weights.
    block_macs(config, text_len): linear-layer MACs of one block for one sample (paper's convention).
    conditioning: what turns a prompt or class into head inputs, a key of the runtime's conditioner
        table (deltadit.runtime.conditioning): "t5" (PixArt), "class" (DiT), "sd3" (CLIP-L + CLIP-G + T5),
        "flux" (CLIP-L pooled + T5). "class" models take --class, the others --prompt.
    random_condition(config, text_len, index, count, generator): seeded stand-in (cond, uncond) of the
        right shapes for calibration without a text encoder and for timing (dummy conditioning).
    guidance: combines the CFG batch's prediction into the model output the scheduler steps with.
    cfg_cond_first: the CFG batch is [cond, uncond] (DiT) rather than [uncond, cond] (PixArt).
    step_on_cfg_batch: the scheduler steps the doubled latents (DiTPipeline) instead of one copy.
    from_forward_kwargs: diffusers ``forward(**kwargs)`` -> head feeds (for the pipeline drop-in).
    Every segment tensor has the batch on axis 0 (the axis the exporter makes dynamic).
    example_inputs(config, batch, text_len, side, generator): head feeds (side = latent height = width) of the right shapes and dtypes
        (seeded random), used to trace the export and to check each ONNX segment against PyTorch.
    int8_keep_fp: module-name globs inside a block group that INT8 export leaves in floating point
        (sensitive layers; the head and tail, with the patch/caption/time embeddings and the final
        projection, are never quantized).
    streams: the tensors carried from block to block, each with its own Δ (PixArt: hidden_states;
        SD3 / FLUX: hidden_states and encoder_hidden_states). The head outputs them first.
    stream_ends(config): {stream: block index} for streams the blocks stop producing early (SD3's
        last block is ``context_pre_only`` and returns no encoder_hidden_states): a group ending after
        that block does not output the stream, and a cached range ending there has no Δ for it.
    stages(config): the block stages in order (default: one stage over ``transformer_blocks``).
    unbatched: tensor names without a batch axis (FLUX's position ids and rotary tables).
    token_side(config): latent pixels per token side (the patch size; FLUX packs 2x2 latent pixels
        into one token with patch_size 1): a resolution must be a multiple of it times the VAE factor.
    embedded_guidance: the guidance scale is a model input (FLUX.1-dev), not a CFG batch.
    noise_shape(config, side): per-image shape of the initial noise as the pipeline draws it.
    pack(latents) / unpack(latents, side): noise -> the transformer's latent layout and back before
        decoding (FLUX packs 2x2 patches into tokens; identity elsewhere).
    set_timesteps(scheduler, steps, config, side): the pipeline's timestep setup (FLUX shifts its
        sigmas by the image size).
    timestep_divisor: the model's timestep input = scheduler timestep / this (FLUX: 1000).
    sampling_inputs(config, side, text_len, guidance_scale, batch): per-generation head inputs other
        than the conditioning (FLUX: position ids, the embedded guidance).
    """

    arch: str
    diffusers_class: str
    head_inputs: Callable[[dict], tuple[str, ...]]
    context: tuple[str, ...]
    tail_context: tuple[str, ...]
    make_head: Callable[[Any], Any]
    make_group: Callable[[Any, int, int], Any]
    make_tail: Callable[[Any, tuple[int, int]], Any]
    block_macs: Callable[[dict, int], int]
    guidance: Callable[..., Any]
    cfg_cond_first: bool
    step_on_cfg_batch: bool
    from_forward_kwargs: Callable[..., dict]
    example_inputs: Callable[..., dict]
    conditioning: str
    random_condition: Callable[..., tuple]
    int8_keep_fp: tuple[str, ...] = ()
    streams: tuple[str, ...] = ("hidden_states",)
    stream_ends: Callable[[dict], dict] = lambda config: {}
    stages: Callable[[dict], tuple[Stage, ...]] = lambda config: (Stage("blocks", "transformer_blocks", config["num_layers"]),)
    unbatched: tuple[str, ...] = ()
    token_side: Callable[[dict], int] = lambda config: config["patch_size"]
    embedded_guidance: bool = False
    noise_shape: Callable[[dict, int], tuple] = lambda config, side: (config["in_channels"], side, side)
    pack: Callable[[Any], Any] = _identity
    unpack: Callable[[Any, int], Any] = lambda latents, side: latents
    set_timesteps: Callable[..., None] = lambda scheduler, steps, config, side: scheduler.set_timesteps(steps)
    timestep_divisor: float = 1.0
    sampling_inputs: Callable[..., dict] = lambda config, side, text_len, guidance_scale, batch: {}

    @property
    def prompted(self) -> bool:
        """Conditioned on a text prompt (else on a class label)."""
        return self.conditioning != "class"

    def driver(self, config: dict, side: int) -> dict:
        """How a runtime drives this model, as plain data for the manifest (format 2): a runtime in
        another language (the C++ one) needs no copy of this spec table to run the bundle."""
        learned_sigma = config.get("out_channels") is not None and config.get("in_channels") is not None and \
            config["out_channels"] == 2 * config["in_channels"]
        return {
            "streams": list(self.streams), "conditioning": self.conditioning, "unbatched": list(self.unbatched),
            "cfg_order": "cond_first" if self.cfg_cond_first else "uncond_first",
            "step_on_cfg_batch": self.step_on_cfg_batch, "embedded_guidance": self.embedded_guidance,
            "learned_sigma": bool(learned_sigma), "timestep_divisor": self.timestep_divisor,
            "noise_shape": list(self.noise_shape(config, side)),
            "latent_layout": "packed-2x2" if self.pack is not _identity else "nchw",
        }

    def num_blocks(self, config: dict) -> int:
        return sum(st.count for st in self.stages(config))

    def stage_cuts(self, config: dict) -> tuple[int, ...]:
        """Block indices where a stage starts (other than 0): every block group is cut there."""
        starts, at = [], 0
        for st in self.stages(config)[:-1]:
            at += st.count
            starts.append(at)
        return tuple(starts)

    def streams_after(self, config: dict, block: int) -> tuple[str, ...]:
        """The streams alive after block ``block`` ran (``block`` = -1: the head's output)."""
        ends = self.stream_ends(config)
        return tuple(s for s in self.streams if block < ends.get(s, 1 << 30))

    def segments(self, config: dict, groups) -> tuple[Segment, ...]:
        """Head, one segment per block group, tail; with their tensor names."""
        head_out = self.streams + tuple(n for n in dict.fromkeys(self.context + self.tail_context) if n not in self.streams)
        segs = [Segment("head", "head", None, self.head_inputs(config), head_out)]
        for g in groups:
            segs.append(Segment(g.name, "group", (g.start, g.stop), self.streams_after(config, g.start - 1) + self.context,
                                self.streams_after(config, g.stop - 1)))
        segs.append(Segment("tail", "tail", None, ("hidden_states",) + self.tail_context, ("sample",)))
        return tuple(segs)


def tokens(config: dict, resolution: int | None = None, vae_scale: int = 8) -> int:
    """Image tokens per sample: (latent side / patch)^2. resolution is in pixels (None = config's)."""
    side = config["sample_size"] if resolution is None else resolution // vae_scale
    return (side // config["patch_size"]) ** 2


def attention_macs(q_tokens: int, kv_tokens: int, q_dim: int, kv_dim: int, inner: int) -> int:
    """Linear MACs of one attention layer: to_q, to_k, to_v, to_out (score products excluded)."""
    return q_tokens * q_dim * inner + 2 * kv_tokens * kv_dim * inner + q_tokens * inner * q_dim


def feedforward_macs(n_tokens: int, dim: int, activation: str, mult: int = 4) -> int:
    inner = dim * mult
    first = 2 * inner if activation in ("geglu", "swiglu") else inner
    return n_tokens * dim * first + n_tokens * inner * dim


def random_joint_condition(config: dict, text_len: int, index: int, count: int, generator) -> tuple[dict, dict]:
    """Dummy conditioning of the SD3 / FLUX kind: random prompt and pooled embeddings; the negative is
    a tenth of another draw."""
    import torch

    def draw(scale=1.0):
        return {"encoder_hidden_states": torch.randn(1, text_len, config["joint_attention_dim"], generator=generator) * scale,
                "pooled_projections": torch.randn(1, config["pooled_projection_dim"], generator=generator) * scale}

    return draw(), draw(0.1)


def _registry() -> dict[str, ModelSpec]:
    from deltadit.models import dit, flux, pixart, sd3

    return {s.arch: s for s in (pixart.SPEC, dit.SPEC, sd3.SPEC, flux.SPEC)}


def known_archs() -> tuple[str, ...]:
    return tuple(_registry())


def get_spec(arch: str) -> ModelSpec:
    specs = _registry()
    if arch not in specs:
        raise DeltaDiTError(f"model arch | '{arch}' is not supported. Expected: one of {', '.join(specs)}.")
    return specs[arch]


def spec_for(transformer) -> ModelSpec:
    """The spec of a diffusers transformer instance (matched by class name)."""
    name = type(transformer).__name__
    for spec in _registry().values():
        if spec.diffusers_class == name:
            return spec
    supported = ", ".join(s.diffusers_class for s in _registry().values())
    raise DeltaDiTError(f"transformer | {name} is not supported. Expected: one of {supported}.")
