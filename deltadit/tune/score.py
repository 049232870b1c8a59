"""The cheap paired screen of `deltadit tune`: every candidate draws the same held-out prompts and seeds on
the PyTorch runtime (exact with respect to the plan) and is compared, image by image, with the uncached
full-precision reference: PSNR, SSIM, and the judge's class accuracy where the model ships one.

Held-out means: seeds from :data:`HOLDOUT_SEED` on, apart from eval's (0..) and INT8 calibration's
(the export's seed + i); prompts: the model's own words ("a bear", ...), else its calibration prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HOLDOUT_SEED = 50_000


@dataclass(frozen=True)
class Score:
    """Quality of one candidate against the reference on the held-out set. psnr_db / ssim: means over
    images (higher is better; identical images count 100 dB / 1.0). accuracy: the judge's class accuracy
    (None without a judge). seconds: wall time of the screen's generations (PyTorch; not a latency)."""

    psnr_db: float
    ssim: float
    accuracy: float | None
    seconds: float

    def to_dict(self) -> dict:
        return {"psnr_db": self.psnr_db, "ssim": self.ssim, "accuracy": self.accuracy, "screen_s": self.seconds}


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    """Mean SSIM (Wang et al. 2004, uniform window, data range 1) over images (n, H, W) in [0, 1]."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(np.asarray(a, dtype=np.float64))[:, None]  # (n, 1, H, W)
    y = torch.as_tensor(np.asarray(b, dtype=np.float64))[:, None]
    w = min(window, x.shape[-1], x.shape[-2])

    def mean(t):
        return F.avg_pool2d(t, w, stride=1)

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = mean(x), mean(y)
    vx, vy, cxy = mean(x * x) - mx * mx, mean(y * y) - my * my, mean(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


class Screen:
    """Held-out conditions, the reference images and the judge, set up once; :meth:`score` runs a candidate.

    transformer: the full-precision diffusers transformer. samples: held-out images (prompts cycled, one
    seed each). judge: callable images -> predicted labels, with ``labels`` the prompted classes (None: no
    judge, accuracy is not scored)."""

    def __init__(self, preset, transformer, samples: int = 10, judge=None, progress: bool = False):
        from deltadit.runtime.generation import _stack

        self.preset, self.transformer, self.judge = preset, transformer, judge
        self.progress = progress
        conditioner, prompts = _conditioner(preset)
        self.labels = np.arange(samples) % len(prompts)
        by_prompt = {p: conditioner(p) for p in prompts}
        self.cond, self.uncond = _stack([by_prompt[prompts[k]] for k in self.labels])
        self.seeds = [HOLDOUT_SEED + k for k in range(samples)]
        self.decode = _decoder(preset)
        self.reference = self.images(_reference_plan(preset), transformer)

    def images(self, plan, transformer=None, callback=None) -> np.ndarray:
        """(samples, H, W[, C]) images in [0, 1] of ``plan`` run on ``transformer`` (default: the FP one).
        callback: the sampler's per-step callback (deltadit.runtime.loop.denoise)."""
        from deltadit.models import split
        from deltadit.runtime.executor import DeltaDiTExecutor
        from deltadit.runtime.runners.torch import TorchRunner
        from deltadit.runtime.sampling import from_preset, sample

        model = transformer if transformer is not None else self.transformer
        side, patch = self.preset.latent_side, self.preset.spec.token_side(self.preset.transformer)
        s = split(model, plan.groups, (side // patch, side // patch))
        executor = DeltaDiTExecutor(plan, s.segments, TorchRunner(s))
        latents = sample(executor, s.spec, s.config, from_preset(self.preset), self.cond, self.uncond, self.seeds,
                         callback=callback)
        return self.decode(latents)

    def score(self, plan, transformer=None) -> tuple[Score, np.ndarray]:
        """(the candidate's Score against the reference, its images)."""
        import time

        from deltadit.eval.run import psnr

        tic = time.perf_counter()
        images = self.images(plan, transformer)
        seconds = time.perf_counter() - tic
        acc = None
        if self.judge is not None:
            acc = float((np.asarray(self.judge(images)) == self.labels).mean())
        return Score(psnr(images, self.reference), _ssim_any(images, self.reference), acc, seconds), images


def _ssim_any(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of grey (n, H, W) or colour (n, H, W, C) images: colour channels averaged."""
    if a.ndim == 4:
        return float(np.mean([ssim(a[..., c], b[..., c]) for c in range(a.shape[-1])]))
    return ssim(a, b)


def _reference_plan(preset):
    from deltadit.plan import build_plan

    return build_plan(preset.steps, preset.num_blocks, 0, 0, 1, "none", preset.spec.stage_cuts(preset.transformer))


def _conditioner(preset):
    """(conditioner, held-out prompts) from the model's folder: its words, else the calibration prompts."""
    from deltadit.errors import DeltaDiTError
    from deltadit.export.quantize import DEFAULT_PROMPTS
    from deltadit.runtime.conditioning import components_root, make_conditioner

    root, looked = components_root(preset.source)
    if not preset.spec.prompted:
        raise DeltaDiTError(f"tune | model '{preset.name}' is class-conditional; the screen needs prompts. "
                            "Expected: a text-conditioned model (PixArt, SD3, FLUX, the embedded animals).")
    conditioner = make_conditioner(preset.spec.conditioning, root, looked, preset.text_len, preset.transformer)
    prompts = [f"a {w}" for w in preset.prompts] or list(DEFAULT_PROMPTS)
    return conditioner, prompts


def _decoder(preset):
    """latents (n, C, h, w) -> images in [0, 1]: (n, H, W) for one channel, else (n, H, W, C)."""
    from deltadit.runtime.conditioning import PixelDecoder, VaeDecoder, components_root

    one = PixelDecoder() if preset.decoder == "pixels" else VaeDecoder(*components_root(preset.source))

    def decode(latents) -> np.ndarray:
        images = np.stack([one(latents[i:i + 1]) for i in range(len(latents))])
        return images[..., 0] if images.shape[-1] == 1 else images

    return decode


def animal_judge(preset):
    """The embedded model's judge (eval's CNN) as images -> labels, or None for a model without one."""
    from deltadit.eval.data import CLASSES

    if tuple(preset.prompts) != CLASSES:
        return None
    from deltadit.eval.classifier import load_classifier, predict

    model = load_classifier()
    return lambda images: predict(model, images).numpy()
