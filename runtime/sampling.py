"""The one sampling driver: seeded noise -> the plan's denoising loop -> final latents.

Used by generate, INT8 calibration, bench and eval, so that every one of them draws the same noise for
the same seed, sets the scheduler the same way and feeds the same per-generation inputs as the model's
diffusers pipeline does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch

from deltadit.models.spec import ModelSpec


@dataclass(frozen=True)
class Sampling:
    """What a generation needs besides the model: scheduler (short name + config), steps, guidance,
    latent side and caption length. From a bundle (:func:`from_manifest`) or a preset (:func:`from_preset`)."""

    scheduler: str
    scheduler_config: dict
    steps: int
    guidance_scale: float
    latent_side: int
    text_len: int


def from_manifest(manifest) -> Sampling:
    s, ex = manifest.sampling, manifest.export
    return Sampling(s.scheduler, s.scheduler_config, s.steps, s.guidance_scale, ex.latent_side, ex.text_len)


def from_preset(preset) -> Sampling:
    return Sampling(preset.scheduler, preset.scheduler_config, preset.steps, preset.guidance_scale,
                    preset.latent_side, preset.text_len)


def initial_latents(spec: ModelSpec, config: dict, setup: Sampling, seeds: Sequence[int] | int):
    """(scheduler set for setup.steps, noise for one image per seed in the transformer's layout, the
    generator(s) for the scheduler's step), drawn as the model's pipeline draws it (one generator per
    image, randn_tensor, init_noise_sigma, packing)."""
    from diffusers.utils.torch_utils import randn_tensor

    from deltadit.runtime.loop import make_scheduler_checked

    scheduler = make_scheduler_checked(setup.scheduler, setup.scheduler_config,
                                       lambda s: spec.set_timesteps(s, setup.steps, config, setup.latent_side))
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    shape = (len(seeds), *spec.noise_shape(config, setup.latent_side))
    # One generator per image, also for a stochastic scheduler's step noise: image k of a batch gets
    # exactly the noise a single generation with seeds[k] gets.
    generator = generators if len(seeds) > 1 else generators[0]
    noise = randn_tensor(shape, generator=generator, dtype=torch.float32)
    return scheduler, spec.pack(noise * getattr(scheduler, "init_noise_sigma", 1.0)), generator


def sample(executor, spec: ModelSpec, config: dict, setup: Sampling, cond: dict, uncond: dict | None,
           seeds: Sequence[int] | int, *, guidance_scale: float | None = None, device="cpu",
           callback: Callable | None = None) -> torch.Tensor:
    """Final latents (transformer layout) for one image per seed. cond / uncond: conditioning for one
    image (repeated over the batch) or already one row per seed."""
    from deltadit.runtime.loop import denoise

    scale = setup.guidance_scale if guidance_scale is None else guidance_scale
    setup = replace(setup, steps=executor.plan.num_steps)
    scheduler, latents, generator = initial_latents(spec, config, setup, seeds)
    n = latents.shape[0]

    def rows(d):
        return None if d is None else {k: (v.repeat(n, *[1] * (v.dim() - 1)) if v.shape[0] == 1 and n > 1 else v).to(device)
                                       for k, v in d.items()}

    extra = {k: v.to(device) for k, v in spec.sampling_inputs(config, setup.latent_side, setup.text_len, scale, n).items()}
    with torch.no_grad():
        return denoise(executor, spec, config, scheduler, latents.to(device), rows(cond), rows(uncond), scale,
                       generator=generator, callback=callback, extra=extra)
