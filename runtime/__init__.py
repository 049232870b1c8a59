"""deltadit.runtime: run a Δ-DiT plan on a split transformer with any backend.

PyTorch: :class:`DeltaDiTTransformer` (pipeline drop-in) or :func:`pytorch_executor` +
:func:`denoise` (the standalone loop). Exported bundles open with :func:`load` (ONNX Runtime);
:func:`generate` turns a prompt or class into an image on one.
"""

from __future__ import annotations

from deltadit.runtime.executor import DeltaDiTExecutor


def pytorch_executor(transformer, plan, grid=None, autocast=None) -> DeltaDiTExecutor:
    """Split ``transformer`` at the plan's groups and run it eagerly in PyTorch."""
    from deltadit.models import split
    from deltadit.runtime.runners.torch import TorchRunner

    s = split(transformer, plan.groups, grid)
    return DeltaDiTExecutor(plan, s.segments, TorchRunner(s, autocast))


def load(bundle, providers=None, io_binding=True, backend="onnxrt", **runner_options):
    """Check and open an exported bundle (see :func:`deltadit.runtime.bundle.load`)."""
    from deltadit.runtime.bundle import load as _load

    return _load(bundle, providers, io_binding, backend, **runner_options)


def generate(bundle, *args, **kwargs):
    """Prompt or class -> image on a bundle (see :func:`deltadit.runtime.generation.generate`).
    ``bundle``: a path or an already loaded bundle."""
    from deltadit.runtime.generation import generate as _generate

    if not hasattr(bundle, "manifest"):
        bundle = load(bundle)
    return _generate(bundle, *args, **kwargs)


def __getattr__(name):
    if name == "DeltaDiTTransformer":
        from deltadit.runtime.dropin import DeltaDiTTransformer

        return DeltaDiTTransformer
    if name in ("denoise", "make_scheduler", "SCHEDULERS"):
        import importlib

        return getattr(importlib.import_module("deltadit.runtime.loop"), name)
    raise AttributeError(name)


__all__ = ["DeltaDiTExecutor", "load", "generate", "DeltaDiTTransformer", "denoise", "make_scheduler", "pytorch_executor"]
