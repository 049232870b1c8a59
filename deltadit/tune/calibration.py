"""INT8 calibration methods side by side on `deltadit tune`'s held-out screen (``--int8-calibrations``).

Every method quantizes the same transformer by the export's recipe (a fake-quantized twin, calibrated
along the uncached plan, as the eval's INT8 row is exported), or is an INT8 bundle already exported and
run on ONNX Runtime (``bundle:PATH``: the check on what ships). Each draws the screen's held-out prompts
and seeds with that plan and is compared image by image with the FP32 images of the same plan: PSNR per
image (median, min–max: a 20-step sampler amplifies small changes into trajectory divergence, so one
image can move ±7 dB where the mean moves 1 dB) and the SQNR of the final latents over all images.

Calibration per timestep range (``max@early`` etc.) collects statistics in one third of the steps only,
the other steps still run: a bundle holds one scale set, so this measures whether per-range scale
sets would be worth building; deploying them is not built.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from deltadit.errors import DeltaDiTError, raise_if

FLAG = "--int8-calibrations"
KINDS = {"max": None, "percentile": 99.99, "smoothquant": 0.5, "bundle": None}  # kind: default value
RANGES = ("all", "early", "middle", "late")  # thirds of the steps, early = the noisiest
EXAMPLE = "max,percentile:99.9,smoothquant:0.8,max@late,bundle:bundles/animals-int8"


@dataclass(frozen=True)
class Method:
    """One entry of --int8-calibrations. kind: max | percentile | smoothquant (fake-quantized twin) or
    bundle (the INT8 bundle at ``path``, on ONNX Runtime with its own plan: export it with ``--variant none``
    to compare like for like). value: the activation percentile or
    SmoothQuant's α. steps: all | early | middle | late (statistics from that third of the steps)."""

    kind: str
    value: float | None = None
    steps: str = "all"
    path: str | None = None

    @property
    def name(self) -> str:
        if self.kind == "bundle":
            return f"bundle:{self.path}"
        value = "" if self.value is None else f":{self.value:g}"
        return f"{self.kind}{value}" + ("" if self.steps == "all" else f"@{self.steps}")

    def options(self, base):
        """``base`` (export Int8Options) with this method's calibration."""
        value = {"percentile": "percentile", "smoothquant": "alpha"}.get(self.kind)
        return replace(base, calibration=self.kind, **({value: self.value} if value else {}))

    def step_range(self, num_steps: int) -> range | None:
        """The step indices whose activations calibrate (None: all)."""
        if self.steps == "all":
            return None
        k = RANGES.index(self.steps) - 1
        return range(round(k * num_steps / 3), round((k + 1) * num_steps / 3))


def parse_methods(text: str) -> tuple[Method, ...]:
    """Methods from ``KIND[:VALUE][@RANGE]`` entries, comma-separated (see :data:`EXAMPLE`); every bad
    entry is reported, one line each."""
    entries = [e.strip() for e in str(text).split(",") if e.strip()]
    problems, methods = [], []
    for entry in entries:
        try:
            methods.append(_method(entry))
        except DeltaDiTError as e:
            problems.append(str(e))
    names = [m.name for m in methods]
    problems += [f"{FLAG} | '{n}' is listed twice. Expected: each method once." for n in sorted(set(names))
                 if names.count(n) > 1]
    if not entries:
        problems.append(f"{FLAG} | no method given. Expected: comma-separated methods, e.g. {EXAMPLE}.")
    raise_if(problems)
    return tuple(methods)


def _method(entry: str) -> Method:
    from deltadit import validate

    head, _, steps = entry.partition("@") if not entry.startswith("bundle:") else (entry, "", "")
    kind, _, value = head.partition(":")
    if kind not in KINDS:
        raise DeltaDiTError(f"{FLAG} | '{entry}': '{kind}' is unknown. Expected: one of {', '.join(KINDS)}, "
                            f"e.g. {EXAMPLE}.")
    if kind == "bundle":
        if not (Path(value) / "manifest.json").is_file():
            raise DeltaDiTError(f"{FLAG} | '{entry}': {value or '(empty)'} is not a bundle folder. Expected: "
                                "bundle:PATH of an INT8 bundle from deltadit-export --int8.")
        return Method("bundle", path=value)
    if steps and steps not in RANGES:
        raise DeltaDiTError(f"{FLAG} | '{entry}': step range '{steps}' is unknown. Expected: @{', @'.join(RANGES)}.")
    if kind == "max" and value:
        raise DeltaDiTError(f"{FLAG} | '{entry}': max takes no value. Expected: max or max@RANGE.")
    bounds = {"percentile": (None, None), "smoothquant": (0.0, 1.0)}.get(kind)
    number = validate.real(f"{FLAG} {entry}", value or KINDS[kind], *bounds) if bounds else None
    if kind == "percentile" and not 50.0 < number <= 100.0:
        raise DeltaDiTError(f"{FLAG} {entry} | {number:g} is out of range. Expected: 50 < p <= 100 (e.g. 99.99).")
    return Method(kind, number, steps or "all")


@dataclass(frozen=True)
class MethodScore:
    """One method on the screen. psnr_*: per-image PSNR (dB) to the FP32 images of the same plan, median,
    min, max and mean over images; sqnr_db: final latents against the FP32 ones, all images together;
    seconds: calibration plus the screen's generations (wall, not a latency)."""

    method: str
    psnr_median: float
    psnr_min: float
    psnr_max: float
    psnr_mean: float
    sqnr_db: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def score(latents, reference, decode: Callable, method: str = "", seconds: float = 0.0) -> MethodScore:
    """``latents`` (n, C, h, w) against the FP ``reference`` latents: per-image PSNR of the decoded images
    (``decode``: latents -> (n, ...) images in [0, 1]) and the final-latent SQNR."""
    from deltadit.eval.run import psnr_per_image
    from deltadit.export.quantize import sqnr

    p = psnr_per_image(decode(latents), decode(reference))
    db = sqnr(np.asarray(reference), np.asarray(latents))["sqnr_db"]
    return MethodScore(method, float(np.median(p)), float(p.min()), float(p.max()), float(p.mean()), db, seconds)


def compare(methods: tuple[Method, ...], latents_of: Callable[[Method], object], reference, decode: Callable,
            progress: bool = False) -> list[MethodScore]:
    """One row per method, best first (by final-latent SQNR). latents_of(method) -> the held-out final
    latents of the model quantized by that method; reference: the FP latents of the same draws."""
    from deltadit.console import track

    rows = []
    for m in track(list(methods), "int8 calibrations", enabled=progress, unit="methods"):
        tic = time.perf_counter()
        latents = latents_of(m)
        rows.append(score(latents, reference, decode, m.name, time.perf_counter() - tic))
    return sorted(rows, key=lambda r: -r.sqnr_db)


def preset_latents(preset, transformer, screen, calib_count: int) -> tuple[Callable[[Method], object], object]:
    """(latents_of for :func:`compare`, the FP reference latents) on ``screen``'s held-out draws of the
    uncached plan; fake-quantized methods calibrate along that plan on ``calib_count`` generations."""
    from deltadit.export.quantize import Int8Options
    from deltadit.tune.int8 import calibration_set, quantize_model
    from deltadit.tune.score import _reference_plan

    plan = _reference_plan(preset)
    base = Int8Options(count=calib_count)
    conds = calibration_set(preset, base)

    def latents_of(m: Method):
        if m.kind == "bundle":
            from deltadit.runtime import load

            return bundle_latents(load(m.path), screen)
        q = quantize_model(transformer, preset, plan, m.options(base), conds, m.step_range(plan.num_steps))
        return torch_latents(preset, screen, plan, q)

    return latents_of, torch_latents(preset, screen, plan, transformer)


def torch_latents(preset, screen, plan, model):
    """Final latents of ``screen``'s held-out draws with ``plan`` on the PyTorch runtime."""
    from deltadit.models import split
    from deltadit.runtime.executor import DeltaDiTExecutor
    from deltadit.runtime.runners.torch import TorchRunner
    from deltadit.runtime.sampling import from_preset, sample

    side, patch = preset.latent_side, preset.spec.token_side(preset.transformer)
    s = split(model, plan.groups, (side // patch, side // patch))
    executor = DeltaDiTExecutor(plan, s.segments, TorchRunner(s))
    return sample(executor, s.spec, s.config, from_preset(preset), screen.cond, screen.uncond, screen.seeds)


def bundle_latents(b, screen):
    """Final latents of ``screen``'s held-out draws on the loaded bundle ``b``, with its own plan."""
    from deltadit.runtime.sampling import from_manifest, sample

    return sample(b.executor(), b.spec, b.config, from_manifest(b.manifest), screen.cond, screen.uncond, screen.seeds)


def run(preset, transformer, out: Path, methods: tuple[Method, ...], samples: int, calib_count: int,
        progress: bool = True) -> list[MethodScore]:
    """Compare ``methods`` on ``samples`` held-out images; writes out/int8-calibrations.{md,json}."""
    from deltadit.tune.score import Screen

    screen = Screen(preset, transformer, samples)
    latents_of, reference = preset_latents(preset, transformer, screen, calib_count)
    rows = compare(methods, latents_of, reference, screen.decode, progress)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"model": preset.name, "samples": samples, "seeds": list(screen.seeds), "calib_count": calib_count,
                "plan": "uncached", "steps": preset.steps}
    (out / "int8-calibrations.json").write_text(json.dumps({"settings": settings, "rows": [r.to_dict() for r in rows]},
                                                           indent=2))
    (out / "int8-calibrations.md").write_text(table(rows, settings))
    return rows


def table(rows: list[MethodScore], settings: dict) -> str:
    lines = [f"INT8 calibration methods, {settings['model']}: {settings['samples']} held-out images (seeds "
             f"{settings['seeds'][0]}…{settings['seeds'][-1]}), uncached T={settings['steps']}, against the FP32 "
             f"images of the same plan; {settings['calib_count']} calibration generations; best first.", "",
             "| rank | method | PSNR dB median (min–max) ↑ | PSNR dB mean | final-latent SQNR dB ↑ | s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {i + 1} | {r.method} | {r.psnr_median:.1f} ({r.psnr_min:.1f}–{r.psnr_max:.1f}) | {r.psnr_mean:.1f} "
              f"| {r.sqnr_db:.1f} | {r.seconds:.0f} |" for i, r in enumerate(rows)]
    return "\n".join(lines) + "\n"
