"""deltadit.runtime: run a Δ-DiT plan on a split transformer with any backend.

PyTorch: :class:`DeltaDiTTransformer` (pipeline drop-in) or :func:`pytorch_executor` +
:func:`denoise` (the standalone loop). Exported bundles open with :func:`load` (ONNX Runtime).
"""

from __future__ import annotations

from deltadit.runtime.executor import DeltaDiTExecutor


def pytorch_executor(transformer, plan, grid=None, autocast=None) -> DeltaDiTExecutor:
    """Split ``transformer`` at the plan's groups and run it eagerly in PyTorch."""
    from deltadit.models import split
    from deltadit.runtime.runners.torch import TorchRunner

    s = split(transformer, plan.groups, grid)
    return DeltaDiTExecutor(plan, s.segments, TorchRunner(s, autocast))


def load(bundle, providers=None):
    """Check and open an exported bundle (see :func:`deltadit.runtime.bundle.load`)."""
    from deltadit.runtime.bundle import load as _load

    return _load(bundle, providers)


def __getattr__(name):
    if name == "DeltaDiTTransformer":
        from deltadit.runtime.dropin import DeltaDiTTransformer

        return DeltaDiTTransformer
    if name in ("denoise", "make_scheduler", "SCHEDULERS"):
        import importlib

        return getattr(importlib.import_module("deltadit.runtime.loop"), name)
    raise AttributeError(name)


__all__ = ["DeltaDiTExecutor", "load", "DeltaDiTTransformer", "denoise", "make_scheduler", "pytorch_executor"]
