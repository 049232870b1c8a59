"""`deltadit-export`: load -> split -> ONNX -> check -> bundle.

stdout holds only the summary; progress, and (with --verbose) third-party warnings and notices, go to
stderr. Errors end in one line: a DeltaDiTError (something the user can fix) exits 2, an interrupt 130,
anything else 1; --debug adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import logging
import sys
import time
import traceback
import warnings
from pathlib import Path

from deltadit.cli import ArgumentParser, add_plan_args, plan_from_args
from deltadit.errors import DeltaDiTError

EXPORT_MAX_GROUP_BLOCKS = 7


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="deltadit-export", description="Export a DiT with its Δ-DiT plan as an ONNX bundle.")
    add_plan_args(p)
    # The exporter serialises a whole group's graph in memory: PixArt-α's 14-block INT8 group took the
    # 28-block export to 8.23 GiB, groups of at most 7 blocks to 5.91 GiB (benchmarks/export_memory.py).
    p.set_defaults(max_group_blocks=EXPORT_MAX_GROUP_BLOCKS)
    p.add_argument("--out", help="bundle folder to write (default bundles/MODEL, bundles/MODEL-int8 with --int8, "
                                 "bundles/MODEL-fp16 with --precision fp16)")
    p.add_argument("--weights", help="local diffusers model folder or a hub id already in the local cache (default: the preset's source)")
    p.add_argument("--random-init", action="store_true", help="seeded random weights (speed work only; marked in the manifest)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, help="image size in pixels (default: the preset's)")
    p.add_argument("--max-batch", type=int, help="largest batch an engine must accept (default: the CFG batch)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-engines", action="store_true", help="do not build TensorRT engines even where TensorRT is available")
    p.add_argument("--no-fused-attention", action="store_true",
                   help="do not write the ONNX Runtime fused graphs (<group>.ort.onnx: attention and GELU fused)")
    p.add_argument("--text-encoder", action="store_true",
                   help="also put the T5 caption encoder (FP32 ONNX) and its tokenizer in the bundle, so `deltadit generate` "
                        "encodes prompts without --pipeline (PixArt-α / Σ, animals; PixArt's VAE still comes from --pipeline)")
    p.add_argument("--precision", default="fp32",  # checked by check_values, like the other values
                   help="fp32 (default), or fp16: block groups in float16 for the CUDA / TensorRT execution providers "
                        "(inputs and outputs stay float32; slower on CPUs)")
    p.add_argument("--force", action="store_true",
                   help="replace --out when it is already a deltadit bundle (a folder that is not one is never replaced)")
    p.add_argument("--verbose", action="store_true", help="show third-party warnings and notices (torch, diffusers, "
                                                          "ModelOpt) on stderr")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    q = p.add_argument_group("INT8 (NVIDIA ModelOpt; install the [int8] extra)")
    q.add_argument("--int8", action="store_true", help="quantize the block groups to INT8 (QDQ ONNX; TensorRT engines where available)")
    q.add_argument("--calibration", default="max", help="max | percentile | smoothquant (default max)")  # checked by Int8Options
    q.add_argument("--percentile", type=float, default=99.99, help="activation percentile for --calibration percentile, in (50, 100]")
    q.add_argument("--smoothquant-alpha", type=float, default=0.5, help="SmoothQuant alpha in [0, 1] (default 0.5)")
    q.add_argument("--calib-count", type=int, default=4, help="calibration generations, one prompt / class each (default 4)")
    q.add_argument("--calib-prompts", help="text file, one calibration prompt per line (PixArt)")
    q.add_argument("--int8-min-sqnr", type=float, default=15.0, help="fail when a group's held-out SQNR is lower (dB, default 15)")
    q.add_argument("--int8-keep-fp", default="", metavar="LAYERS",
                   help="comma-separated transformer module names or globs whose Linear layers stay FP32 (e.g. the most "
                        "sensitive ones `deltadit tune --int8` ranks: transformer_blocks.3.ff.net.2)")
    q.add_argument("--int8-weight-bits", default="auto", choices=("auto", "7", "8"),
                   help="8-bit weights, or 7 for x86 CPUs without VNNI whose ONNX Runtime int8 kernel saturates on "
                        "8-bit weights (auto: 7 on such a CPU, else 8; choose 8 for VNNI / AMX CPUs and GPUs)")
    return p


NOISY_LOGGERS = ("diffusers", "transformers", "accelerate", "modelopt", "torch", "onnx", "onnxruntime")


@contextlib.contextmanager
def third_party_output(verbose: bool):
    """While the export runs: torch / diffusers / accelerate / ModelOpt warnings, log notices and prints
    (ModelOpt prints "Inserted N quantizers" on stdout) are dropped, or with ``verbose`` shown on stderr.
    stdout stays the summary's either way."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr if verbose else io.StringIO()):
        if not verbose:
            warnings.simplefilter("ignore")
            for logger in loggers:
                logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def int8_options(args):
    """The INT8 options from the flags (always built, so bad values are refused even without --int8)."""
    from deltadit.export.quantize import Int8Options
    from deltadit.runtime.cpu import default_weight_bits

    bits = default_weight_bits() if args.int8_weight_bits == "auto" else int(args.int8_weight_bits)
    return Int8Options(calibration=args.calibration, percentile=args.percentile, alpha=args.smoothquant_alpha,
                       count=args.calib_count, seed=args.seed, min_sqnr_db=args.int8_min_sqnr, weight_bits=bits,
                       keep_fp=tuple(g.strip() for g in args.int8_keep_fp.split(",") if g.strip()))


def ready_int8(args, options):
    """``options`` with the calibration prompts, once ModelOpt is known to import; None without --int8."""
    if not args.int8:
        return None
    try:
        import modelopt.torch.quantization  # noqa: F401 - availability check only
    except ImportError as e:
        raise DeltaDiTError(f"--int8 | NVIDIA ModelOpt does not import ({e}). Expected: pip install 'deltadit[int8]' "
                            "(nvidia-modelopt).") from None
    if not args.calib_prompts:
        return options
    path = Path(args.calib_prompts)
    if not path.is_file():
        raise DeltaDiTError(f"--calib-prompts | {path} does not exist. Expected: a text file, one prompt per line.")
    prompts = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not prompts:
        raise DeltaDiTError(f"--calib-prompts | {path} has no prompts. Expected: one prompt per line.")
    return dataclasses.replace(options, prompts=prompts)


def run(args):
    """Check every value, then export. Returns (preset, plan, int8 options or None, report)."""
    from deltadit.export.pipeline import check_values, export_bundle

    preset, plan = plan_from_args(args)
    options = int8_options(args)
    # every export value at once, each problem one line (with_overrides then re-checks the preset)
    check_values(dataclasses.replace(preset, resolution=args.resolution or preset.resolution), seed=args.seed,
                 opset=args.opset, max_batch=args.max_batch, int8=options, precision=args.precision,
                 int8_requested=args.int8)
    preset = preset.with_overrides(resolution=args.resolution)
    int8 = ready_int8(args, options)
    out = Path(args.out or f"bundles/{preset.name}{'-int8' if args.int8 else ''}{'-fp16' if args.precision == 'fp16' else ''}")
    report = export_bundle(preset, plan, out, weights=args.weights, random_init=args.random_init,
                           seed=args.seed, opset=args.opset, max_batch=args.max_batch, int8=int8,
                           build_engines=not args.no_engines, fuse=not args.no_fused_attention, force=args.force,
                           text_encoder=args.text_encoder, precision=args.precision)
    return preset, plan, int8, report


def error_line(e: BaseException) -> tuple[str, int]:
    """The one line (after "error: ") and the exit code for what ended the export; the notes
    export/publish.py added (what became of OUT.partial) go on the same line."""
    notes, hint = [str(n) for n in getattr(e, "__notes__", [])], ""
    if isinstance(e, DeltaDiTError):
        msg, code = str(e), 2
    elif isinstance(e, KeyboardInterrupt):
        msg, code = "interrupted", 130
    elif isinstance(e, MemoryError):
        msg, code = "out of memory. Expected: more free memory, or a smaller model or --resolution.", 1
    else:
        msg, code = f"internal error: {type(e).__name__}: {' '.join(str(e).split())[:300]}", 1
        hint = " (run with --debug for the traceback)"
    return "; ".join([msg.rstrip(".") if notes else msg] + notes) + hint, code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        tic = time.perf_counter()
        with third_party_output(args.verbose):
            preset, plan, int8, report = run(args)
        print_summary(args, preset, plan, int8, report, time.perf_counter() - tic)
    except (Exception, KeyboardInterrupt) as e:
        if args.debug:
            traceback.print_exception(e, file=sys.stderr)
        line, code = error_line(e)
        print(f"error: {line}", file=sys.stderr)
        return code
    return 0


def print_summary(args, preset, plan, int8, report, seconds: float) -> None:
    print(f"bundle: {report.bundle}" + ("  [RANDOM-INIT WEIGHTS: for speed work only]" if args.random_init else ""))
    print(f"segments exported: {', '.join(report.exported) or '-'}; reused: {', '.join(report.reused) or '-'}")
    from deltadit.bundle import read_bundle

    manifest = read_bundle(report.bundle)  # the published bundle, read back as any reader would
    fused = {s.name: f"{s.fused_attention} attention(s), {s.fused_gelu} GELU(s) fused" for s in manifest.segments if s.ort_graph}
    for name, outs in report.errors.items():
        worst = max(outs.values(), key=lambda e: e["rel"])
        size = sum(f.stat().st_size for f in (report.bundle / "onnx").glob(f"{name}.onnx*"))
        print(f"  {name:<14} {size / 2**20:9.1f} MiB   max rel err vs PyTorch {worst['rel']:.1e}"
              + (f"   ONNX Runtime graph: {fused[name]}" if name in fused else ""))
    if te := manifest.text_encoder:
        size = sum((report.bundle / f.path).stat().st_size for f in te.files)
        print(f"  {'text_encoder':<14} {size / 2**20:9.1f} MiB   max rel err vs PyTorch {te.check['rel']:.1e}   "
              f"(+ {te.tokenizer.path}; {te.max_length} tokens)")
    from deltadit.costs import format_macs, plan_costs

    costs = plan_costs(plan, preset.block_macs(), preset.cfg_batch)
    print(f"plan: {plan.variant}, {plan.num_steps} steps, b={plan.b}, N_c={plan.n_c}, N={plan.interval}; block MACs "
          f"{format_macs(costs.plan_macs)} vs {format_macs(costs.baseline_macs)} uncached (bound {costs.speedup_bound:.2f}x)")
    if int8 is not None:
        info = manifest.int8
        print(f"int8 ({int8.calibration} calibration, {info['calibration']['generations']} generations with the plan on; "
              f"conditioning: {info['calibration']['conditioning']}):")
        for name, q in info["quality"].items():
            k = info["kernels"][name]
            print(f"  {name:<14} SQNR {q['sqnr_db']:5.1f} dB  rel err {q['rel_err']:.2e} (on the group's change, "
                  f"{q['samples']} held-out inputs)  {len(info['quantized'][name])} linears INT8, "
                  f"ORT int8 kernels {k['int8_matmuls']}, quantized-but-FP32 MatMuls {k['fp_matmuls_with_qdq']}")
        f = info["final_latents"]
        print(f"  final latents vs FP after {f['steps']} steps: max rel err {f['max_rel_err']:.2e}, SQNR {f['sqnr_db']:.1f} dB")
        print(f"  weights: {manifest.int8_weight_bits}-bit" + (" (this CPU's int8 kernel has no VNNI: 7-bit weights "
                                                                "cannot saturate it)" if manifest.int8_weight_bits == 7 else ""))
    if report.engines.get("built"):
        print(f"TensorRT engines: {', '.join(f['path'] for f in report.engines['files'].values())}")
    else:
        print(report.engines.get("reason", ""))
    print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in report.seconds.items())
          + f"; total {seconds:.1f}")


if __name__ == "__main__":
    sys.exit(main())
