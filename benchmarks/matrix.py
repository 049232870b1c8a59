"""The full benchmark matrix of the README, in one run per model:

    PYTHONPATH=. .venv/bin/python benchmarks/matrix.py --model animals            # the shipped model
    PYTHONPATH=. .venv/bin/python benchmarks/matrix.py --model pixart --layers 8  # PixArt-α 512 dims, random init
    PYTHONPATH=. .venv/bin/python benchmarks/matrix.py --model pixart --calib-count 1 --repeats 1 \
        --configs 'ort *' --memory 'ort int8*+delta-dit'                          # all 28 blocks (~20 min + exports)

Exports (or reuses) an FP32 and an INT8 bundle with the preset's Δ-DiT plan, then runs `deltadit bench`
on both: unmodified PyTorch fp32 / bf16, PyTorch bf16 + Δ-DiT, each bundle uncached and with its plan;
per segment, per step path, whole loop, peak memory. --layers keeps the preset's dimensions with fewer
blocks (N_c scaled to the same fraction) so a 2-core CPU finishes; the result says so.
Writes benchmarks/results/<name>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="animals")
    p.add_argument("--layers", type=int, help="blocks to keep (default: all)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--calib-count", type=int, default=2)
    p.add_argument("--work", default="bundles/bench")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--configs", help="passed to deltadit bench --configs (default: every configuration)")
    p.add_argument("--memory", default="*", help="passed to deltadit bench --memory: configurations to probe "
                                                 "for peak RSS ('' for none)")
    p.add_argument("--backends", default="onnxrt", help="passed to deltadit bench --backends (e.g. onnxrt,openvino)")
    p.add_argument("--no-loops", action="store_true", help="passed to deltadit bench: step paths and segments only")
    args = p.parse_args()

    from deltadit import bench
    from deltadit.export.pipeline import export_bundle
    from deltadit.export.quantize import Int8Options
    from deltadit.presets import load_preset

    preset = load_preset(args.model)
    random_init = preset.source.startswith("embedded:") is False
    nb_all = preset.num_blocks
    nb = args.layers or nb_all
    preset = preset.with_blocks(nb)
    plan = preset.plan()
    name = f"{args.model}-{nb}blocks" if nb != nb_all else args.model
    work = Path(args.work) / name
    tic = time.perf_counter()
    for kind, int8 in (("fp32", None), ("int8", Int8Options(count=args.calib_count))):
        out = work / kind
        if not (out / "manifest.json").is_file():
            export_bundle(preset, plan, out, random_init=random_init, build_engines=False, int8=int8, force=True)
    print(f"bundles ready in {time.perf_counter() - tic:.0f} s")
    results = Path(args.out)
    results.mkdir(parents=True, exist_ok=True)
    argv = [str(work / "fp32"), str(work / "int8"), "--repeats", str(args.repeats),
            "--json", str(results / f"{name}.json"), "--chart", str(results / f"{name}.png")]
    argv += ["--configs", args.configs] if args.configs else []
    argv += ["--memory", args.memory] if args.memory else []
    argv += ["--backends", args.backends] + (["--no-loops"] if args.no_loops else [])
    bench.main(argv)
    summary = json.loads((results / f"{name}.json").read_text())
    header = (f"{preset.description}: {nb} of {nb_all} blocks, N_c = {preset.nc}, b = {preset.b}, {preset.steps} steps, "
              f"{'random-init weights (timing only)' if random_init else 'trained weights'}; median of {args.repeats} rounds.\n\n")
    (results / f"{name}.md").write_text(header + bench.format_report(summary))


if __name__ == "__main__":
    main()
