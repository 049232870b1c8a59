"""What a user would run instead of a bundle: the PyTorch baselines of `deltadit bench`.

Each is an executor (``.plan``, ``.step(i, feeds)``, ``.reset()``) over the bundle's own PyTorch twin (the
same seeded random weights the exporter built, or the source weights):
  torch-<dtype>                    the unmodified diffusers forward (autocast for bf16 / fp16)
  torch-<dtype>+<plan>             the PyTorch Δ-DiT runner with the bundle's plan
  torch-compile-<dtype>[+<plan>]   the same under ``torch.compile`` (inductor): the whole forward, or
                                   each split segment of the plan runner
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

DTYPES = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Baseline:
    name: str
    factory: object  # () -> executor
    cached: bool  # runs the plan (else every step in full)


class UnmodifiedExecutor:
    """The plain diffusers transformer forward behind the executor interface."""

    def __init__(self, transformer, plan, autocast=None):
        from deltadit.runtime.bundle import FullPlan

        self.transformer, self.plan, self.autocast = transformer, FullPlan(plan), autocast

    def reset(self):
        pass

    def step(self, index, feeds):
        import torch

        device = feeds["sample"].device.type
        ctx = torch.autocast(device, dtype=self.autocast) if self.autocast else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            if "class_labels" in feeds:
                out = self.transformer(feeds["sample"], timestep=feeds["timestep"], class_labels=feeds["class_labels"]).sample
            else:
                extra = {k: feeds[k] for k in ("resolution", "aspect_ratio") if k in feeds}
                out = self.transformer(feeds["sample"], encoder_hidden_states=feeds["encoder_hidden_states"],
                                       timestep=feeds["timestep"], encoder_attention_mask=feeds["encoder_attention_mask"],
                                       added_cond_kwargs={"resolution": extra.get("resolution"),
                                                          "aspect_ratio": extra.get("aspect_ratio")}).sample
        return {"sample": out.float()}


def torch_model(bundle):
    """The bundle's transformer in PyTorch: the seeded random weights the exporter built, or the source weights."""
    from deltadit.export.load import build_transformer

    m = bundle.manifest.model
    return build_transformer(m.arch, m.config, m.source, m.random_init, m.seed or 0)


def _autocast(dtype: str):
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]


def compiled_plan_executor(model, plan, autocast, mode: str | None = None):
    """The Δ-DiT runner with every split segment (head, each group, tail) under torch.compile (``mode``:
    torch.compile's, e.g. "reduce-overhead" for CUDA graphs)."""
    import torch

    from deltadit.runtime import pytorch_executor

    ex = pytorch_executor(model, plan, autocast=autocast)
    modules = ex.runner.modules
    for name in list(modules):
        modules[name] = torch.compile(modules[name], mode=mode)
    return ex


def baselines(model, plan, dtypes: tuple[str, ...] = ("fp32", "bf16"), compile_: bool = False,
              compile_mode: str | None = None) -> list[Baseline]:
    """The PyTorch configurations, each dtype eager (± plan) and, with compile_, compiled (± plan) in
    torch.compile's ``compile_mode`` (None: its default; named in the configuration otherwise).
    Compiled executors are built once and shared, so their compilation happens in the warm-up."""
    import torch

    from deltadit.runtime import pytorch_executor

    out = []
    compiled_model = torch.compile(model, mode=compile_mode) if compile_ else None
    compiled = f"torch-compile-{compile_mode}" if compile_mode else "torch-compile"
    for dt in dtypes:
        ac = _autocast(dt)
        out.append(Baseline(f"torch-{dt}", lambda ac=ac: UnmodifiedExecutor(model, plan, ac), False))
        out.append(Baseline(f"torch-{dt}+{plan.variant}", lambda ac=ac: pytorch_executor(model, plan, autocast=ac), True))
        if compile_:
            full = UnmodifiedExecutor(compiled_model, plan, ac)
            cached = compiled_plan_executor(model, plan, ac, compile_mode)
            out.append(Baseline(f"{compiled}-{dt}", lambda full=full: full, False))
            out.append(Baseline(f"{compiled}-{dt}+{plan.variant}", lambda cached=cached: cached, True))
    return out
