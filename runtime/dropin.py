"""Δ-DiT as a drop-in for a diffusers pipeline's transformer.

    pipe.transformer = DeltaDiTTransformer(pipe.transformer, plan)
    pipe(prompt, num_inference_steps=plan.num_steps)   # as usual, now with Δ-DiT

Every forward call is one denoising step; the wrapper counts steps and starts over after
``plan.num_steps`` calls (call :meth:`DeltaDiTTransformer.reset` after an interrupted generation).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from deltadit.models import check_plan_fits, spec_for, split
from deltadit.plan import DeltaPlan
from deltadit.runtime.executor import DeltaDiTExecutor
from deltadit.runtime.runners.torch import TorchRunner


class DeltaDiTTransformer(nn.Module):
    def __init__(self, transformer: nn.Module, plan: DeltaPlan, autocast: torch.dtype | None = None):
        super().__init__()
        check_plan_fits(plan, transformer)
        self.transformer = transformer
        self.spec = spec_for(transformer)
        self.plan = plan
        self.autocast = autocast
        self.step_index = 0
        self._grid = None
        self._executor = None

    def __getattr__(self, name):
        # config, dtype, device, ... of the wrapped transformer, so pipelines see what they expect.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["transformer"], name)

    def reset(self) -> None:
        self.step_index = 0
        if self._executor is not None:
            self._executor.reset()

    def _executor_for(self, grid: tuple[int, int]) -> DeltaDiTExecutor:
        if grid != self._grid:
            s = split(self.transformer, self.plan.groups, grid)
            self._executor = DeltaDiTExecutor(self.plan, s.segments, TorchRunner(s, self.autocast))
            self._grid = grid
        return self._executor

    def forward(self, *args, **kwargs):
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        # Bind like the wrapped forward would, so positional and keyword calls both work.
        bound = inspect.signature(self.transformer.forward).bind(*args, **kwargs)
        bound.apply_defaults()
        call = dict(bound.arguments)
        call.update(call.pop("kwargs", {}) or {})
        return_dict = call.pop("return_dict", True)
        hidden_states = call.pop("hidden_states")
        p = self.transformer.config.patch_size
        executor = self._executor_for((hidden_states.shape[-2] // p, hidden_states.shape[-1] // p))
        feeds = self.spec.from_forward_kwargs(hidden_states, **call)
        sample = executor.step(self.step_index, feeds)["sample"]
        self.step_index = (self.step_index + 1) % self.plan.num_steps
        return Transformer2DModelOutput(sample=sample) if return_dict else (sample,)
