"""PyTorch backend: runs the split modules eagerly (optionally under autocast, e.g. bf16 on AMX CPUs)."""

from __future__ import annotations

import contextlib

import torch

from deltadit.models import Split
from deltadit.models.spec import Segment
from deltadit.runtime.runners.base import Runner


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, split: Split, autocast: torch.dtype | None = None):
        super().__init__(split.segments)
        self.modules = split.modules
        self.autocast = autocast

    def _context(self, device: torch.device):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast)

    @torch.no_grad()
    def _infer_impl(self, segment: Segment, feeds: dict) -> dict:
        args = [feeds[n] for n in segment.inputs]
        with self._context(args[0].device):
            out = self.modules[segment.name](*args)
        if not isinstance(out, tuple):
            out = (out,)
        return dict(zip(segment.outputs, out))
