"""How steady the INT8 screen's measures are: keeping a few layers in FP32 against keeping none, on N
held-out images of the embedded model, with the paired bootstrap standard error of each change.

    PYTHONPATH=. .venv/bin/python benchmarks/keep_sets.py --samples 20 \
        --json benchmarks/results/calibration-animals/keep-set-noise-20.json

Keep-sets: the top 1, 2 and 4 of TOP (the sensitivity ranking's head on animals) and --random single
layers drawn from the rest. Each is applied by switching those layers' quantizers off on one calibrated fake-quantized
model (what `deltadit tune`'s keep_until does). Measures per keep-set: mean and median image PSNR against
the FP32 images and the pooled final-latent SQNR; each with its change against k = 0 and the standard
error of that change over --bootstrap paired resamples of the images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

TOP = ("transformer_blocks.0.ff.net.2", "transformer_blocks.0.ff.net.0.proj", "transformer_blocks.5.ff.net.0.proj",
       "transformer_blocks.2.attn1.to_v")  # the sensitivity ranking's head on animals (README, Tuning)


def per_image(screen, latents: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(PSNR of each decoded image, each reference latent's energy, each latent's error energy)."""
    import torch

    from deltadit.eval.run import psnr_per_image

    n = len(latents)
    psnr = psnr_per_image(screen.decode(torch.as_tensor(latents)), screen.decode(torch.as_tensor(reference)))
    signal = (reference ** 2).reshape(n, -1).sum(1)
    noise = ((latents - reference) ** 2).reshape(n, -1).sum(1)
    return psnr, signal, noise


def measures(psnr, signal, noise, idx=slice(None)) -> np.ndarray:
    """(mean PSNR, median PSNR, pooled latent SQNR dB) over the images ``idx``."""
    return np.array([np.mean(psnr[idx]), np.median(psnr[idx]), 10 * np.log10(signal[idx].sum() / noise[idx].sum())])


def keep_sets(layers: list[str], top: tuple[str, ...], random: int, rng) -> dict[str, set]:
    sets = {"k=0": set(), "k=1": set(top[:1]), "k=2": set(top[:2]), "k=4": set(top[:4])}
    for name in rng.choice(sorted(set(layers) - set(top)), random, replace=False):
        sets[f"keep {name.split('blocks.')[-1]}"] = {name}
    return sets


def probe(samples: int, calib_count: int, random: int, bootstrap: int, seed: int) -> dict:
    from deltadit.export.load import load_transformer
    from deltadit.export.quantize import Int8Options
    from deltadit.presets import load_preset
    from deltadit.tune.calibration import torch_latents
    from deltadit.tune.int8 import _set, calibration_set, quantize_model, quantized_linears
    from deltadit.tune.score import Screen, _reference_plan

    preset = load_preset("animals")
    fp = load_transformer(preset, None, False)
    screen, plan = Screen(preset, fp, samples), _reference_plan(preset)
    reference = torch_latents(preset, screen, plan, fp).numpy()
    options = Int8Options(count=calib_count)
    q = quantize_model(fp, preset, plan, options, calibration_set(preset, options))
    layers = quantized_linears(q)
    rng = np.random.default_rng(seed)
    raw = {}
    try:
        for tag, keep in keep_sets(list(layers), TOP, random, rng).items():
            _set(layers, set(layers) - keep)
            raw[tag] = per_image(screen, torch_latents(preset, screen, plan, q).numpy(), reference)
    finally:
        _set(layers, set(layers))
    draws = rng.integers(0, samples, size=(bootstrap, samples))
    base = raw["k=0"]
    out = {}
    for tag, r in raw.items():
        value = measures(*r)
        changes = np.array([measures(*r, d) - measures(*base, d) for d in draws])
        out[tag] = {"mean_psnr": value[0], "median_psnr": value[1], "latent_sqnr": value[2],
                    "change_vs_k0": (value - measures(*base)).tolist(), "se_of_change": changes.std(0).tolist(),
                    "per_image_psnr": r[0].tolist()}
    return {"samples": samples, "calib_count": calib_count, "bootstrap": bootstrap, "keep_sets": out}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--calib-count", type=int, default=4)
    p.add_argument("--random", type=int, default=4, help="single random layers kept, besides the top-k sets")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="write the result here")
    args = p.parse_args()
    result = probe(args.samples, args.calib_count, args.random, args.bootstrap, args.seed)
    print(f"{args.samples} images; value (change vs k=0 ± paired bootstrap SE): mean PSNR | median PSNR | pooled latent SQNR")
    for tag, r in result["keep_sets"].items():
        cells = [f"{v:5.1f} (Δ {d:+5.1f} ± {se:.1f})" for v, d, se in
                 zip((r["mean_psnr"], r["median_psnr"], r["latent_sqnr"]), r["change_vs_k0"], r["se_of_change"])]
        print(f"{tag:24s} " + " | ".join(cells))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
