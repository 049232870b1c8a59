"""Steadiness of screen measures: keep-sets vs k=0 on N held-out images; paired bootstrap SE of the change."""
import json, sys
import numpy as np, torch
from deltadit.presets import load_preset
from deltadit.export.load import load_transformer
from deltadit.export.quantize import Int8Options
from deltadit.tune.score import Screen, _reference_plan
from deltadit.tune.int8 import quantize_model, quantized_linears, _set
from deltadit.tune.int8 import calibration_set
from deltadit.tune.calibration import torch_latents
N = int(sys.argv[1])
preset = load_preset("animals"); tr = load_transformer(preset, None, False)
screen = Screen(preset, tr, N); plan = _reference_plan(preset)
ref = torch_latents(preset, screen, plan, tr).numpy()
opts = Int8Options(count=4)
q = quantize_model(tr, preset, plan, opts, calibration_set(preset, opts))
layers = quantized_linears(q)
def measures(x):
    im = screen.decode(torch.as_tensor(x)); rim = screen.decode(torch.as_tensor(ref))
    mse = ((im - rim) ** 2).reshape(N, -1).mean(1); p = 10 * np.log10(1 / np.maximum(mse, 1e-10))
    sig = (ref ** 2).reshape(N, -1).sum(1); noise = ((x - ref) ** 2).reshape(N, -1).sum(1)
    return p, sig, noise
top = ["transformer_blocks.0.ff.net.2", "transformer_blocks.0.ff.net.0.proj", "transformer_blocks.5.ff.net.0.proj",
       "transformer_blocks.2.attn1.to_v"]
rng = np.random.default_rng(1)
configs = {"k=0": set(), "k=1": set(top[:1]), "k=2": set(top[:2]), "k=4": set(top)}
configs.update({f"keep {n.split('blocks.')[1]}": {n} for n in rng.choice(sorted(set(layers) - set(top)), 4, replace=False)})
res = {}
for tag, keep in configs.items():
    _set(layers, set(layers) - keep); res[tag] = measures(torch_latents(preset, screen, plan, q).numpy())
_set(layers, set(layers))
B = rng.integers(0, N, size=(1000, N))
def stats(p, sig, noise, idx=slice(None)):
    return np.mean(p[idx]), np.median(p[idx]), 10 * np.log10(sig[idx].sum() / noise[idx].sum())
base = res["k=0"]
print(f"N={N}; value (paired bootstrap SE of the change vs k=0) for mean PSNR | median PSNR | pooled latent SQNR")
out = {}
for tag, r in res.items():
    v = stats(*r); d = np.array([np.subtract(stats(*r, b), stats(*base, b)) for b in B])
    se = d.std(0)
    print(f"{tag:24s} " + " | ".join(f"{v[i]:5.1f} (Δ {v[i]-stats(*base)[i]:+5.1f} ± {se[i]:.1f})" for i in range(3)), flush=True)
    out[tag] = {"mean_psnr": float(v[0]), "median_psnr": float(v[1]), "latent_sqnr": float(v[2]), "se_of_change": se.tolist(),
                "per_image_psnr": r[0].tolist()}
json.dump(out, open(f"/tmp/calib/probe2_{N}.json", "w"), indent=1)
