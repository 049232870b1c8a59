"""Paired FID and class-accuracy difference between two bundles of the embedded animal model: B minus A,
on the same prompts and seeds as `deltadit eval`, with the paired 95 % bootstrap interval (both image sets
resampled with the same indices). `deltadit eval` gives each row's difference to the baseline; this
compares two rows directly, e.g. two INT8 calibrations.

    PYTHONPATH=. .venv/bin/python benchmarks/paired_fid.py A_BUNDLE B_BUNDLE --samples 200 \
        --json benchmarks/results/eval-animals-200/smoothquant-vs-max.json [--b-engine openvino-bf16]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def paired(a_path: str, b_path: str, samples: int, rounds: int, seed: int, b_engine: str = "onnxrt") -> dict:
    import numpy as np

    from deltadit.eval.classifier import load_classifier, predict
    from deltadit.eval.data import CLASSES
    from deltadit.eval.run import fid_reference, generate_all, psnr
    from deltadit.eval.stats import paired_delta_interval
    from deltadit.runtime import load
    from deltadit.runtime.conditioning import TextConditioner, components_root

    from deltadit.bench import engine

    backend, options = engine(b_engine)
    a, b = load(a_path), load(b_path, backend=backend, **options)
    root, looked = components_root(a.manifest.model.source)
    conditioner = TextConditioner(root, looked, a.manifest.export.text_len)
    prompts, per_class = [f"a {c}" for c in CLASSES], samples // len(CLASSES)
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    _, fid = fid_reference()  # deltadit eval's: up to 100 held-out images per class
    judge = load_classifier()
    images = {k: generate_all(x, prompts, per_class, seed, conditioner) for k, x in (("a", a), ("b", b))}
    feats = {k: fid.features(v) for k, v in images.items()}
    correct = {k: predict(judge, v).numpy() == labels for k, v in images.items()}
    return {"a": a_path, "b": b_path, "b_engine": b_engine, "samples": len(labels), "seed": seed, "bootstrap_rounds": rounds,
            "fid": {k: fid.interval(f, rounds, seed).to_dict() for k, f in feats.items()},
            "fid_delta_b_minus_a": fid.delta(feats["b"], feats["a"], rounds, seed).to_dict(),
            "class_accuracy_delta_b_minus_a": paired_delta_interval(correct["b"], correct["a"], np.mean, rounds,
                                                                    seed).to_dict(),
            "psnr_b_to_a_db": psnr(images["b"], images["a"])}


def main() -> int:
    from deltadit.cli import ArgumentParser, _samples, flag

    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--samples", type=flag(_samples, "--samples"), default=200,
                   help="images per bundle, a multiple of the 10 prompts (as deltadit eval --samples)")
    p.add_argument("--bootstrap-rounds", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="first noise seed (deltadit eval's default: 0)")
    from deltadit.bench import BUNDLE_BACKENDS

    p.add_argument("--b-engine", choices=BUNDLE_BACKENDS, default="onnxrt",
                   help="engine that runs B (A runs on ONNX Runtime); openvino-bf16: OpenVINO in bf16 inference precision")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args()
    r = paired(args.a, args.b, args.samples, args.bootstrap_rounds, args.seed, args.b_engine)
    d, acc = r["fid_delta_b_minus_a"], r["class_accuracy_delta_b_minus_a"]
    print(f"FID A {r['fid']['a']['value']:.2f}, B {r['fid']['b']['value']:.2f}; B - A {d['value']:+.2f} "
          f"[{d['low']:+.2f}, {d['high']:+.2f}]; accuracy B - A {100 * acc['value']:+.1f} "
          f"[{100 * acc['low']:+.1f}, {100 * acc['high']:+.1f}] points; {r['samples']} images each")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    from deltadit.errors import DeltaDiTError

    try:
        sys.exit(main())
    except DeltaDiTError as e:  # a bad bundle path, say: its one line, no traceback
        sys.exit(f"error: {e}")
