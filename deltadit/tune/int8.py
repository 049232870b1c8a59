"""INT8 for `deltadit tune`: a fake-quantized twin of the transformer (ModelOpt, the export's own
recipe and calibration loop), per-layer sensitivity, and the smallest FP32 keep-set that meets a target.

Sensitivity is measured **one layer at a time**: every layer in float except that one, one held-out
generation, its error against the full-precision images of the same plan; on the fake-quantized PyTorch
model (:class:`FakeQuantLayers`) or on the exported graph (:class:`deltadit.tune.graph.GraphLayers`: the
bundle's QDQ ONNX on ONNX Runtime, what ships).
The ranking is the order in which layers are kept in floating point (export: ``--int8-keep-fp``).
:func:`step_sensitivity` asks the same of the denoising steps: every layer quantized, on one step at a time.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class LayerError:
    """One Linear layer's error when it alone is quantized: PSNR (dB) of the held-out images against
    the full-precision ones (lower = more sensitive) and its share of the blocks' Linear MACs."""

    name: str
    psnr_db: float
    macs_share: float

    def to_dict(self) -> dict:
        return {"layer": self.name, "psnr_db": self.psnr_db, "macs_share": self.macs_share}


def quantize_model(transformer, preset, plan, options, conditions: list[tuple[dict, dict]],
                   calib_steps: range | None = None):
    """A deep copy of ``transformer`` whose block Linears are fake-quantized by the export's recipe
    (:func:`deltadit.export.quantize.quantize_groups`, spec keep-globs and ``options.keep_fp`` honoured),
    calibrated by running ``plan`` over ``conditions`` (one generation each, seeds options.seed + i).
    calib_steps: only these step indices (0 = the noisiest) feed the calibration statistics; the others
    still run, so later steps see the trajectory they see in deployment (None: every step)."""
    from deltadit.export.quantize import keep_fp_patterns, quantize_groups
    from deltadit.models import split
    from deltadit.runtime.executor import DeltaDiTExecutor
    from deltadit.runtime.runners.torch import TorchRunner
    from deltadit.runtime.sampling import from_preset, sample

    q = copy.deepcopy(transformer)
    side, patch = preset.latent_side, preset.spec.token_side(preset.transformer)
    s = split(q, plan.groups, (side // patch, side // patch))
    groups = {seg.name: s.modules[seg.name] for seg in s.segments if seg.kind == "group"}
    executor = DeltaDiTExecutor(plan, s.segments, TorchRunner(s))

    def forward_loop():
        for i, (cond, uncond) in enumerate(conditions):
            gate = None if calib_steps is None else _step_gate(q, calib_steps)
            sample(executor, s.spec, s.config, from_preset(preset), cond, uncond, options.seed + i, callback=gate)
            if gate is not None:
                _collect(q, True)  # leave every calibrator on for ModelOpt to finish

    keep = preset.spec.int8_keep_fp + keep_fp_patterns(groups, q, options.keep_fp)
    quantize_groups(groups, options, keep, forward_loop)
    return q.eval()


def calibration_set(preset, options) -> list[tuple[dict, dict]]:
    """The export's calibration conditions for ``preset`` (options.count generations, the model's prompts)."""
    from deltadit.export.int8 import _conditioner, _model_prompts
    from deltadit.export.quantize import calibration_conditions

    conditioner, root = _conditioner(preset.spec, preset, None, False)
    return calibration_conditions(preset.spec, preset.transformer, options.count, options.seed, preset.text_len,
                                  conditioner, _model_prompts(root))


def _collect(model, on: bool) -> None:
    """Switch statistics collection of every calibrating quantizer of ``model`` on or off."""
    for m in model.modules():
        if getattr(m, "_calibrator", None) is not None and not getattr(m, "_disabled", True):
            m.enable_calib() if on else m.disable_calib()


def _step_gate(model, steps: range):
    """Collection on for step 0 if it is in ``steps``; returns the sampler callback that, after step i,
    switches it for step i + 1."""
    _collect(model, 0 in steps)
    return lambda i, *_: _collect(model, i + 1 in steps)


def quantized_linears(model) -> dict[str, object]:
    """{module name: Linear} of the layers whose weight and input quantizers are on."""
    out = {}
    for name, m in model.named_modules():
        wq, iq = getattr(m, "weight_quantizer", None), getattr(m, "input_quantizer", None)
        if wq is not None and iq is not None and wq.is_enabled and iq.is_enabled:
            out[name] = m
    return out


def _set(layers: dict, on: set[str]) -> None:
    for name, m in layers.items():
        for q in (m.weight_quantizer, m.input_quantizer):
            q.enable() if name in on else q.disable()


def _psnr(images: np.ndarray, reference: np.ndarray) -> float:
    from deltadit.eval.run import psnr

    return psnr(images, reference)


def linear_macs(model, run: Callable[[], object], layers: dict) -> dict[str, int]:
    """MACs of each of ``layers`` during ``run()`` (rows x in x out, counted by forward hooks)."""
    counts = dict.fromkeys(layers, 0)
    hooks = [m.register_forward_hook(lambda mod, inp, out, _n=n: counts.__setitem__(
        _n, counts[_n] + inp[0].numel() // mod.in_features * mod.in_features * mod.out_features))
        for n, m in layers.items()]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return counts


class FakeQuantLayers:
    """Per-layer switches on the fake-quantized twin: ``names`` its quantized Linears; ``set(on)`` leaves
    exactly those quantized (both quantizers of each) and the others in float. The same interface as
    :class:`deltadit.tune.graph.GraphLayers` on an exported bundle."""

    def __init__(self, qmodel):
        self.linears = quantized_linears(qmodel)
        self.names = list(self.linears)

    def set(self, on: set[str]) -> None:
        _set(self.linears, on)


def macs_shares(transformer, run: Callable[[], object], names: list[str]) -> dict[str, float]:
    """Each named Linear's share of the named Linears' MACs during ``run()`` on ``transformer``."""
    modules = dict(transformer.named_modules())
    macs = linear_macs(transformer, run, {n: modules[n] for n in names})
    total = max(1, sum(macs.values()))
    return {n: m / total for n, m in macs.items()}


def sensitivity(layers, generate: Callable[[], np.ndarray], reference: np.ndarray, shares: dict[str, float],
                progress: bool = False) -> list[LayerError]:
    """Every layer of ``layers`` (:class:`FakeQuantLayers`, or GraphLayers on the exported graph) alone
    quantized, the others in float, most sensitive first. generate() -> held-out images; reference: the same
    images in full precision; shares: each layer's share of the MACs (:func:`macs_shares`)."""
    from deltadit.console import track

    out = []
    try:
        for name in track(list(layers.names), "int8 sensitivity", enabled=progress, unit="layers"):
            layers.set({name})
            out.append(LayerError(name, _psnr(generate(), reference), shares.get(name, 0.0)))
    finally:
        layers.set(set(layers.names))
    return sorted(out, key=lambda e: (e.psnr_db, e.name))


@dataclass(frozen=True)
class StepError:
    """INT8 on a span of denoising steps only (FP32 on the others): PSNR (dB) of the held-out images
    against the full-precision ones. steps: [first, end)."""

    first: int
    end: int
    psnr_db: float

    def to_dict(self) -> dict:
        return {"steps": [self.first, self.end], "psnr_db": self.psnr_db}


def _gate_steps(layers: dict, first: int, end: int):
    """Quantizers on for steps [first, end) only: set for step 0 now; returns the sampler callback that,
    after step i, sets them for step i + 1."""
    _set(layers, set(layers) if first <= 0 < end else set())
    return lambda i, *_: _set(layers, set(layers) if first <= i + 1 < end else set())


def step_sensitivity(qmodel, generate: Callable[..., np.ndarray], reference: np.ndarray,
                     num_steps: int) -> tuple[list[StepError], list[StepError]]:
    """Which denoising steps the INT8 error comes from. Returns (each step alone in INT8 with the others
    in FP, in step order; INT8 from step k to the end for k = 0, T/4, T/2, 3T/4 with the steps before k
    in FP). generate(model, callback) -> held-out images, with callback(i, ...) called after each step i."""
    layers = quantized_linears(qmodel)

    def run(first: int, end: int) -> StepError:
        return StepError(first, end, _psnr(generate(qmodel, _gate_steps(layers, first, end)), reference))

    try:
        alone = [run(i, i + 1) for i in range(num_steps)]
        tails = [run(k, num_steps) for k in sorted({0, num_steps // 4, num_steps // 2, 3 * num_steps // 4})]
    finally:
        _set(layers, set(layers))
    return alone, tails


def keep_until(layers, generate: Callable[[], np.ndarray], reference: np.ndarray, ranking: list[LayerError],
               target_psnr_db: float, sizes: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32)) -> list[dict]:
    """Keep the top-k of ``ranking`` in FP (the rest INT8) for k in ``sizes`` until the held-out PSNR to
    the full-precision images reaches ``target_psnr_db``; one row per k tried: {keep, layers, psnr_db,
    macs_kept}. The last row is the answer (or the largest k tried, when none met the target).
    layers: the switches the ranking was measured on (:class:`FakeQuantLayers` or GraphLayers)."""
    every = set(layers.names)
    rows = []
    try:
        for k in sizes:
            if k > len(ranking):
                break
            kept = [e.name for e in ranking[:k]]
            layers.set(every - set(kept))
            value = _psnr(generate(), reference)
            rows.append({"keep": k, "layers": kept, "psnr_db": value,
                         "macs_kept": float(sum(e.macs_share for e in ranking[:k]))})
            if value >= target_psnr_db:
                break
    finally:
        layers.set(every)
    return rows
