"""The denoising loop: diffusers schedulers, classifier-free guidance, and the plan.

It reproduces the loops of diffusers' PixArtAlphaPipeline and DiTPipeline step for step (CFG batch
order, guidance, learned-sigma split and whether the scheduler steps the doubled batch come from the
model spec), so the plan ``none`` gives the pipelines' latents bit for bit.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from deltadit.errors import DeltaDiTError
from deltadit.models.spec import ModelSpec
from deltadit.runtime.executor import DeltaDiTExecutor
from deltadit.schedulers import SCHEDULERS  # name -> (diffusers class, settings)


def make_scheduler(name: str, config: dict | None = None):
    """A diffusers scheduler by short name, built from a model's scheduler config."""
    if name not in SCHEDULERS:
        raise DeltaDiTError(f"scheduler | '{name}' is unknown. Expected: one of {', '.join(SCHEDULERS)}.")
    import diffusers

    cls_name, settings = SCHEDULERS[name]
    cls = getattr(diffusers, cls_name)
    return cls.from_config({**(config or {}), **settings})


def make_scheduler_checked(name: str, config: dict | None, set_timesteps) -> object:
    """make_scheduler + ``set_timesteps(scheduler)``, with diffusers' many exception types for a bad
    scheduler config turned into one DeltaDiTError."""
    try:
        scheduler = make_scheduler(name, config)
        set_timesteps(scheduler)
    except DeltaDiTError:
        raise
    except Exception as e:  # noqa: BLE001 - diffusers rejects a config with many exception types
        raise DeltaDiTError(f"scheduler_config | diffusers' {name} scheduler rejects it ({type(e).__name__}: {e}). "
                            "Expected: the scheduler config of the model's pipeline (re-export the bundle).") from None
    return scheduler


def _scale(scheduler, x, t):
    """The scheduler's input scaling (flow-matching schedulers have none)."""
    scale = getattr(scheduler, "scale_model_input", None)
    return x if scale is None else scale(x, t)


def _cfg_batch(spec: ModelSpec, cond: dict, uncond: dict | None) -> dict:
    if uncond is None:
        return dict(cond)
    first, second = (cond, uncond) if spec.cfg_cond_first else (uncond, cond)
    return {k: torch.cat([first[k], second[k]]) for k in cond}


def denoise(
    executor: DeltaDiTExecutor,
    spec: ModelSpec,
    config: dict,
    scheduler,
    latents: torch.Tensor,
    cond: dict,
    uncond: dict | None = None,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
    extra: dict | None = None,
) -> torch.Tensor:
    """Run the plan's steps from initial noise ``latents`` (B, C, H, W), already scaled by the
    scheduler's ``init_noise_sigma``. cond / uncond: per-image head inputs other than sample and
    timestep (e.g. encoder_hidden_states + encoder_attention_mask, or class_labels); uncond is used
    only when guidance_scale > 1. The scheduler's timesteps must already be set for plan.num_steps
    steps. callback(i, t, latents, model_output) sees every step. extra: head inputs shared by the
    whole batch (FLUX's position ids and embedded guidance: ``spec.sampling_inputs``). Returns the
    final latents."""
    plan = executor.plan
    timesteps = scheduler.timesteps
    if len(timesteps) != plan.num_steps:
        raise DeltaDiTError(
            f"scheduler | {len(timesteps)} timesteps set, but the plan has {plan.num_steps} steps. "
            f"Expected: scheduler.set_timesteps({plan.num_steps}) or a plan built for {len(timesteps)} steps."
        )
    do_cfg = guidance_scale > 1.0 and not spec.embedded_guidance
    batch = {**_cfg_batch(spec, cond, uncond if do_cfg else None), **(extra or {})}
    if do_cfg and uncond is None:
        raise DeltaDiTError("uncond | guidance_scale > 1 needs unconditional inputs. Expected: uncond=... or guidance_scale <= 1.")
    step_kwargs = {}
    if not spec.step_on_cfg_batch and "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs["generator"] = generator  # as the pipeline's prepare_extra_step_kwargs does
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
    executor.reset()
    # DiTPipeline keeps and steps the doubled batch; PixArtAlphaPipeline one copy.
    x = torch.cat([latents] * 2) if (do_cfg and spec.step_on_cfg_batch) else latents
    for i, t in enumerate(timesteps):
        if spec.step_on_cfg_batch:
            if do_cfg:
                half = x[: len(x) // 2]
                x = torch.cat([half, half])
            model_in = _scale(scheduler, x, t)
        else:
            model_in = torch.cat([x] * 2) if do_cfg else x
            model_in = _scale(scheduler, model_in, t)
        timestep = t[None].to(model_in.device).expand(model_in.shape[0])
        if spec.timestep_divisor != 1.0:  # FLUX: the pipeline passes t / 1000, in the latents' dtype
            timestep = timestep.to(model_in.dtype) / spec.timestep_divisor
        noise_pred = executor.step(i, {"sample": model_in, "timestep": timestep, **batch})["sample"]
        out = spec.guidance(noise_pred, config, guidance_scale if do_cfg else None)
        result = scheduler.step(out, t, x, **step_kwargs, return_dict=False)
        # PixArtAlphaPipeline takes the denoised estimate when there is a single step (LCM).
        x = result[1] if (len(timesteps) == 1 and not spec.step_on_cfg_batch and len(result) > 1) else result[0]
        if callback is not None:
            callback(i, t, x, out)
    if do_cfg and spec.step_on_cfg_batch:
        x = x.chunk(2)[0]
    return x
