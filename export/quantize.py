"""INT8 block groups with NVIDIA ModelOpt, calibrated along the cached trajectory.

INT8 weights per output channel, INT8 activations per tensor (ModelOpt's INT8 recipe), on the Linear
layers inside the block groups; the head and tail stay floating point, and the spec's
``int8_keep_fp`` globs keep sensitive layers inside the groups in floating point too.

Calibration runs the real denoising loop *with the plan on* (full steps record deltas, cached steps
add them back), so every group sees the inputs it sees in deployment at every timestep and on both
step paths. Calibration is max (ModelOpt's default), percentile (histogram calibrator on activations),
or SmoothQuant with a configurable alpha.

Quality guard: a held-out generation (its own condition and seed) is recorded in floating point; each
quantized group is then compared with its FP version on those inputs *on the change it makes*
(output − input; the skip connection hides errors in the raw output), as SQNR and relative error.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass, field

from deltadit.errors import DeltaDiTError

CALIBRATIONS = ("max", "percentile", "smoothquant")
# Generic prompts for PixArt calibration when the model ships no list of its own.
DEFAULT_PROMPTS = (
    "a photo of a cat sitting on a wooden table", "a red sports car on a mountain road at sunset",
    "an oil painting of a lighthouse in a storm", "a bowl of ramen, studio lighting",
    "a watercolor of a fox in a snowy forest", "a futuristic city skyline at night, neon lights",
    "a close-up portrait of an old man with a beard", "a small wooden cabin next to a lake",
)


@dataclass(frozen=True)
class Int8Options:
    """calibration: max | percentile | smoothquant.  percentile: for 'percentile' (activations).
    alpha: SmoothQuant migration strength.  count: calibration prompts / classes (one generation each).
    prompts: calibration prompts (None: the model's list or DEFAULT_PROMPTS).  seed: noise and holdout.
    min_sqnr_db: the export fails when a group's SQNR on held-out inputs is lower.
    weight_bits: 8, or 7 for x86 CPUs without VNNI, whose ONNX Runtime int8 kernel saturates on full
    8-bit weights (deltadit.runtime.cpu); 7-bit weights are stored as int8 codes within +-63.
    keep_fp: globs over the transformer's own module names (e.g. ``transformer_blocks.3.ff.net.2``, as
    `deltadit tune --int8` ranks them) whose Linear layers stay in floating point, on top of the spec's
    ``int8_keep_fp``; each glob must name at least one Linear inside the block groups."""

    calibration: str = "max"
    percentile: float = 99.99
    alpha: float = 0.5
    count: int = 4
    prompts: tuple[str, ...] | None = None
    seed: int = 0
    min_sqnr_db: float = 15.0
    weight_bits: int = field(default_factory=lambda: _auto_weight_bits())
    keep_fp: tuple[str, ...] = ()

    def problems(self) -> list[str]:
        """Every invalid option, one line each (empty when all are fine)."""
        from deltadit import validate

        problems = []
        if self.calibration not in CALIBRATIONS:
            problems.append(f"--calibration | '{self.calibration}' is unknown. Expected: one of {', '.join(CALIBRATIONS)}.")
        if self.weight_bits not in (7, 8):
            problems.append(f"--int8-weight-bits | {self.weight_bits!r} is not supported. Expected: 8, or 7 for x86 "
                            "CPUs without VNNI (auto picks it).")
        if not (isinstance(self.percentile, (int, float)) and 50.0 < self.percentile <= 100.0):  # nan fails too
            problems.append(f"--percentile | {self.percentile} is out of range. Expected: 50 < p <= 100 (e.g. 99.99).")
        if not all(isinstance(g, str) and g.strip() for g in self.keep_fp):
            problems.append(f"--int8-keep-fp | {list(self.keep_fp)!r:.80} has an empty name. Expected: comma-separated "
                            "module names or globs, e.g. transformer_blocks.3.ff.net.2,*.attn2.to_out.0.")
        checks = [(validate.real, "--smoothquant-alpha", self.alpha, 0.0, 1.0, ""),
                  (validate.integer, "--calib-count", self.count, 1, validate.MAX_CALIB_COUNT, " calibration generations"),
                  (validate.real, "--int8-min-sqnr", self.min_sqnr_db, None, None, " (dB)")]
        for check, *args in checks:
            try:
                check(*args)
            except DeltaDiTError as e:
                problems.append(str(e))
        return problems

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise DeltaDiTError("\n".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


def _auto_weight_bits() -> int:
    from deltadit.runtime.cpu import default_weight_bits

    return default_weight_bits()


def modelopt_config(options: Int8Options, keep_fp: tuple[str, ...]) -> dict:
    """The ModelOpt quantization config: INT8 weights per output channel (axis 0), activations per
    tensor, every other quantizer off, and the spec's sensitive layers left in floating point."""
    act = {"num_bits": 8, "axis": None}
    if options.calibration == "percentile":
        act["calibrator"] = "histogram"
    quant_cfg = [
        {"quantizer_name": "*", "enable": False},
        # Linear layers only: ModelOpt's recipe would also quantize e.g. a LayerNorm's input, which in a
        # DiT block is the residual stream (found on DiT: 25% error).
        {"quantizer_name": "*weight_quantizer", "parent_class": "nn.Linear", "cfg": {"num_bits": 8, "axis": 0}},
        {"quantizer_name": "*input_quantizer", "parent_class": "nn.Linear", "cfg": act},
    ]
    for pattern in keep_fp:
        quant_cfg.append({"quantizer_name": f"{pattern}", "enable": False})
    algorithm = {"method": "smoothquant", "alpha": options.alpha} if options.calibration == "smoothquant" else (
        None if options.calibration == "percentile" else "max")
    return {"quant_cfg": quant_cfg, "algorithm": algorithm}


def quantize_groups(groups: dict, options: Int8Options, keep_fp: tuple[str, ...], forward_loop) -> dict:
    """Quantize the group modules in place (the export records everything it needs from the FP groups
    first, so no FP copy is kept). forward_loop(): runs calibration generations through the modules.
    Returns {group: [linear names]}."""
    import modelopt.torch.quantization as mtq
    from torch import nn

    # A fresh ModuleDict is in training mode and ModelOpt restores the container's mode onto the
    # children: DiT's label embedder then drops class labels at random (found as a 30% ONNX mismatch).
    container = nn.ModuleDict(groups).eval()
    cfg = modelopt_config(options, keep_fp)
    if options.calibration == "percentile":
        mtq.quantize(container, cfg, forward_loop=None)  # insert quantizers only
        _collect_percentile(container, forward_loop, options.percentile)
    else:
        mtq.quantize(container, cfg, forward_loop=lambda _model: forward_loop())
    if options.weight_bits == 7:
        _seven_bit_weights(container)
    container.eval()
    return quantized_layers(container)


def _seven_bit_weights(container) -> None:
    """7-bit weights in INT8 QDQ: each weight quantizer's amax is scaled by 127/63, so a channel's
    largest weight lands exactly on code 63 and every code stays within +-63, which ONNX Runtime's AVX2
    int8 kernel multiplies without saturating. (Doubling amax instead puts the largest weights on
    +-63.5, where ModelOpt's fake quantization and ONNX's QuantizeLinear round to different codes:
    measured 1.2e-2 relative on the trained 12-block group.)"""
    import torch

    for module in container.modules():
        q = getattr(module, "weight_quantizer", None)
        if q is not None and getattr(q, "is_enabled", False) and q.amax is not None:
            q.amax = q.amax * (127 / 63)
            with torch.no_grad():  # the check below holds by construction; keep it honest anyway
                codes = torch.round(module.weight / (q.amax / 127).reshape(-1, *[1] * (module.weight.dim() - 1)))
            assert codes.abs().max() <= 63, "7-bit weight codes must stay within +-63"


def _collect_percentile(container, forward_loop, percentile: float) -> None:
    """Histogram statistics over the calibration loop; activations take the percentile of |x|,
    weights their max (ModelOpt's stats-collection steps, with the percentile method for histograms)."""
    from modelopt.torch.quantization.calib import HistogramCalibrator
    from modelopt.torch.quantization.model_calib import enable_stats_collection
    from modelopt.torch.quantization.nn import TensorQuantizer

    enable_stats_collection(container)
    forward_loop()
    for module in container.modules():
        if not isinstance(module, TensorQuantizer) or module._disabled:
            continue
        if isinstance(module._calibrator, HistogramCalibrator):
            module.load_calib_amax("percentile", percentile=percentile)
        else:
            module.load_calib_amax()
        module.enable_quant()
        module.disable_calib()


def quantized_layers(container) -> dict:
    """Per group, the Linear layers whose weight and input quantizers are on (what runs INT8)."""
    out = {}
    for gname, group in container.items():
        names = []
        for name, module in group.named_modules():
            wq, iq = getattr(module, "weight_quantizer", None), getattr(module, "input_quantizer", None)
            if wq is not None and iq is not None and wq.is_enabled and iq.is_enabled:
                names.append(name)
        out[gname] = names
    return out


def keep_fp_patterns(groups: dict, transformer, layers: tuple[str, ...]) -> tuple[str, ...]:
    """Quantizer-name patterns (as :func:`modelopt_config` takes them) that keep the Linear layers named by
    ``layers`` (globs over ``transformer``'s module names) in floating point inside ``groups`` (modules
    sharing the transformer's blocks); a glob naming no Linear of any group is refused in one line."""
    from torch import nn

    absolute = {id(m): n for n, m in transformer.named_modules()}
    patterns, used = [], set()
    for gname, group in groups.items():
        for rel, module in group.named_modules():
            name = absolute.get(id(module))
            hits = [g for g in layers if name is not None and isinstance(module, nn.Linear) and fnmatch.fnmatch(name, g)]
            if hits:
                used.update(hits)
                patterns += [f"{gname}.{rel}.weight_quantizer", f"{gname}.{rel}.input_quantizer"]
    unused = [g for g in layers if g not in used]
    if unused:
        raise DeltaDiTError(f"--int8-keep-fp | {', '.join(unused)} names no Linear layer in the block groups. Expected: "
                            "module names of the transformer such as transformer_blocks.0.attn1.to_q (globs allowed).")
    return tuple(patterns)


def kept_fp_layers(group, keep_fp: tuple[str, ...]) -> list[str]:
    from torch import nn

    return [n for n, m in group.named_modules() if isinstance(m, nn.Linear) and any(fnmatch.fnmatch(n, p) for p in keep_fp)]


def sqnr(reference, test) -> dict:
    """SQNR (dB) and relative L2 error of ``test`` against ``reference`` (numpy or torch)."""
    import numpy as np

    ref = np.asarray(reference, dtype=np.float64)
    err = np.asarray(test, dtype=np.float64) - ref
    signal, noise = float(np.sum(ref * ref)), float(np.sum(err * err))
    rel = math.sqrt(noise / signal) if signal > 0 else float("inf")
    db = 10 * math.log10(signal / noise) if noise > 0 else float("inf")
    return {"sqnr_db": db, "rel_err": rel}


def group_quality(references: list[dict], run_int8, samples: list[dict],
                  streams: tuple[str, ...] = ("hidden_states",)) -> dict:
    """references: the FP group's outputs {stream: tensor} on each held-out input (recorded by
    :class:`GroupRecorder`, so the FP model need not outlive calibration); run_int8(feeds) -> {stream:
    output} of the quantized group as shipped (the INT8 ONNX on ONNX Runtime); samples: those held-out
    group inputs; streams: the group's outputs (carried streams). Compared on output − input, over every
    stream together."""
    import numpy as np

    refs, tests = [], []
    for feeds, ref in zip(samples, references, strict=True):
        got = run_int8(feeds)
        for name in streams:
            x = feeds[name]
            refs.append((ref[name] - x).numpy().ravel())
            tests.append((np.asarray(got[name]) - x.numpy()).ravel())
    result = sqnr(np.concatenate(refs), np.concatenate(tests))
    result["samples"] = len(samples)
    return result


class GroupRecorder:
    """Wraps the FP group modules of a split; keeps up to ``keep`` input sets per group, spread over the
    steps of one generation, with the group's FP outputs on them (the held-out set of the quality guard:
    ``samples[group]`` and ``references[group]``, {name: tensor} each)."""

    def __init__(self, split, steps: int, keep: int = 4):
        self.split = split
        self.every = max(1, steps // keep)
        self.calls: dict = {}
        self.samples: dict = {}
        self.references: dict = {}
        self.originals = {}

    def __enter__(self):
        for seg in self.split.segments:
            if seg.kind != "group":
                continue
            module = self.split.modules[seg.name]
            self.originals[seg.name] = module

            def wrapped(*args, _name=seg.name, _module=module, _seg=seg):
                n = self.calls.get(_name, 0)
                self.calls[_name] = n + 1
                out = _module(*args)
                if n % self.every == 0:
                    outs = out if isinstance(out, tuple) else (out,)
                    self.samples.setdefault(_name, []).append({k: v.clone() for k, v in zip(_seg.inputs, args)})
                    self.references.setdefault(_name, []).append({k: v.clone() for k, v in zip(_seg.outputs, outs)})
                return out

            self.split.modules[seg.name] = wrapped
        return self

    def __exit__(self, *exc):
        self.split.modules.update(self.originals)


def calibration_conditions(spec, config: dict, count: int, seed: int, text_len: int, conditioner=None,
                           prompts: tuple[str, ...] | None = None) -> list[tuple[dict, dict]]:
    """(cond, uncond) per calibration generation: prompts through the model's text encoder when it is
    available, else the spec's seeded stand-ins (random caption embeddings for random-init exports,
    classes spread over the label range for class-conditional models)."""
    import torch

    if conditioner is not None and spec.prompted:
        pool = list(prompts or DEFAULT_PROMPTS)
        return [conditioner(pool[i % len(pool)]) for i in range(count)]
    g = torch.Generator().manual_seed(seed)
    return [spec.random_condition(config, text_len, i, count, g) for i in range(count)]
