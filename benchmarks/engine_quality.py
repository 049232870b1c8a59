"""How far each engine setting moves a bundle's outputs: OpenVINO's bf16 inference precision next to f32 and
ONNX Runtime, on the same bundles.

    PYTHONPATH=. .venv/bin/python benchmarks/engine_quality.py --animals DIR --pixart DIR --json OUT

--animals DIR: a folder with the eval's `baseline` (FP32) and `int8` bundles of the embedded model: each
setting draws the tune screen's 30 held-out images (uncached, T = 20) and is scored against PyTorch FP32:
mean PSNR of the images and SQNR of the final latents (deltadit.tune.score / calibration).
--pixart DIR: a folder with `fp32` and `int8` bundles (benchmarks/matrix.py's): one full step on the bundle's
example inputs, SQNR of each setting's output against ONNX Runtime FP32 (random weights: no images).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from deltadit.bench import engine

SETTINGS = {"ort": engine("onnxrt"), "ov f32": engine("openvino-f32"), "ov bf16": engine("openvino-bf16")}  # label: (backend, options)


def animals(root: Path) -> dict:
    from deltadit.eval.run import psnr
    from deltadit.export.load import load_transformer
    from deltadit.export.quantize import sqnr
    from deltadit.presets import load_preset
    from deltadit.runtime import load
    from deltadit.tune.calibration import bundle_latents, torch_latents
    from deltadit.tune.score import Screen, _reference_plan

    preset = load_preset("animals")
    transformer = load_transformer(preset, None, False)
    screen = Screen(preset, transformer, 30)
    reference = torch_latents(preset, screen, _reference_plan(preset), transformer)
    out = {}
    for bundle in ("baseline", "int8"):
        for name, (backend, options) in SETTINGS.items():
            latents = bundle_latents(load(root / bundle, backend=backend, **options), screen)
            out[f"{bundle} {name}"] = {"psnr_db": psnr(screen.decode(latents), screen.reference),
                                       "latent_sqnr_db": sqnr(reference, latents)["sqnr_db"]}
            print(bundle, name, out[f"{bundle} {name}"], flush=True)
    return out


def pixart(root: Path) -> dict:
    from deltadit.export.quantize import sqnr
    from deltadit.runtime import load

    def step(b):
        return b.uncached().step(0, b.example_feeds())["sample"]

    reference = step(load(root / "fp32"))
    out = {}
    for bundle in ("fp32", "int8"):
        for name, (backend, options) in SETTINGS.items():
            if (bundle, name) != ("fp32", "ort"):
                out[f"{bundle} {name}"] = sqnr(reference, step(load(root / bundle, backend=backend, **options)))
                print(bundle, name, out[f"{bundle} {name}"], flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--animals", type=Path)
    p.add_argument("--pixart", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    from deltadit.runtime.cpu import machine

    result = {"machine": machine()}
    if args.animals:
        result["animals"] = animals(args.animals)
    if args.pixart:
        result["pixart"] = pixart(args.pixart)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
