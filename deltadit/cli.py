"""`deltadit` command line: subcommands over the plan, the cost model and (later) bundles."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from deltadit import validate
from deltadit.errors import DeltaDiTError
from deltadit.plan import VARIANTS


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the house error format: one line "error: <msg>" on stderr, exit 2 (no usage dump)."""

    def error(self, message: str):
        where, _, rest = message.partition(": ")
        if where.startswith("argument ") and " | " in rest:  # a flag type's DeltaDiTError: already names the flag
            message = rest
        else:
            message += f" (see {self.prog} --help)"
        self.exit(2, f"error: {message}\n")


def flag(check: Callable, name: str, *bounds, parse: Callable = str) -> Callable[[str], object]:
    """An argparse ``type=`` that parses the text with ``parse`` and checks it with a :mod:`deltadit.validate`
    function, e.g. ``flag(validate.integer, "--steps", 1, validate.MAX_STEPS, parse=int)``; a bad value fails
    at parse time, before any work, with the check's message."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            value = text  # the check names it ("'1e9' is not an integer. Expected: ...")
        try:
            return check(name, value, *bounds)
        except DeltaDiTError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = name.lstrip("-")
    return convert


def _png(name: str, value) -> str:
    return str(validate.output_png(name, value))


def _samples(name: str, value) -> int:
    from deltadit.eval.run import MAX_PER_CLASS

    n = validate.integer(name, int(value) if str(value).isdigit() else value, 10, 10 * MAX_PER_CLASS)
    if n % 10:
        raise DeltaDiTError(f"{name} | {n} is not a multiple of the 10 class prompts. Expected: e.g. {n - n % 10 or 10}.")
    return n


def _choices(options: tuple[str, ...]) -> Callable:
    def check(name: str, value: str) -> str:
        unknown = [r for r in (x.strip() for x in value.split(",")) if r and r not in options]
        if unknown or not value.strip(", "):
            problem = f"{', '.join(map(repr, unknown))} unknown" if unknown else "no names given"
            raise DeltaDiTError(f"{name} | {problem}. Expected: comma-separated names from {', '.join(options)}.")
        return value

    return check


def add_plan_args(p: argparse.ArgumentParser) -> None:
    """Plan flags shared with deltadit-export; each overrides the preset's value when given."""
    steps = f"[1, {validate.MAX_STEPS}]"
    p.add_argument("--model", default="animals", help="a preset (animals = the embedded trained model, default; pixart, "
                                                      "pixart-1024, pixart-sigma, pixart-lcm, dit-xl, sd3-medium, "
                                                      "flux-dev, flux-schnell), a .toml path, a local diffusers "
                                                      "pipeline or transformer folder, or a hub id already in the cache")
    p.add_argument("--steps", type=flag(validate.integer, "--steps", 1, validate.MAX_STEPS, parse=int),
                   help=f"denoising steps T, in {steps}")
    p.add_argument("--b", type=flag(validate.integer, "--b", 0, validate.MAX_STEPS, parse=int),
                   help="boundary b: cached steps with t <= b reuse the deep blocks (t counts from 1; b <= T)")
    p.add_argument("--nc", type=flag(validate.integer, "--nc", 0, validate.MAX_BLOCKS, parse=int),
                   help="cached blocks N_c (at most the model's blocks)")
    p.add_argument("--interval", type=flag(validate.integer, "--interval", 1, validate.MAX_STEPS, parse=int),
                   help=f"cache interval N (a full step every N steps), in {steps}")
    p.add_argument("--variant", choices=VARIANTS, help="delta-dit (paper), opposite, shallow, middle, deep, none")
    p.add_argument("--budget", type=flag(validate.fraction, "--budget"),
                   help="choose N and N_c for this fraction of the uncached MACs, in (0, 1] (paper Eq. 6-7)")
    p.add_argument("--plan", dest="plan_file", metavar="FILE",
                   help="a plan JSON file (as `deltadit tune` writes it, or `deltadit plan --json`'s output) instead "
                        "of the plan flags; it must fit the model")
    p.add_argument("--max-group-blocks", type=flag(validate.integer, "--max-group-blocks", 1, validate.MAX_BLOCKS, parse=int),
                   metavar="N", help="split block groups longer than N blocks (same steps and images; a smaller "
                                     "largest group lowers the export's peak memory; deltadit-export's default is 7, "
                                     "deltadit plan's none)")


def plan_from_args(args):
    """(preset, plan) from parsed plan flags, or from the --plan file (the preset then takes its steps);
    groups split to --max-group-blocks."""
    from deltadit.plan import limit_group_blocks

    preset, plan = _plan_from_args(args)
    limit = getattr(args, "max_group_blocks", None)
    return preset, (plan if limit is None else limit_group_blocks(plan, limit))


def _plan_from_args(args):
    from deltadit.presets import load_plan_file, load_preset

    if getattr(args, "plan_file", None):
        given = [f for f in ("steps", "b", "nc", "interval", "variant", "budget") if getattr(args, f) is not None]
        if given:
            raise DeltaDiTError(f"--plan | the file is the whole plan; --{', --'.join(given)} would contradict it. "
                                "Expected: --plan FILE without the other plan flags.")
        preset = load_preset(args.model)
        plan = load_plan_file(args.plan_file, preset)
        return preset.with_overrides(steps=plan.num_steps, b=plan.b, nc=plan.n_c, interval=plan.interval,
                                     variant=plan.variant), plan
    preset = load_preset(args.model).with_overrides(
        steps=args.steps, b=args.b, nc=args.nc, interval=args.interval, variant=args.variant
    )
    if args.budget is not None and (args.nc is not None or args.interval is not None):
        raise DeltaDiTError("--budget | chooses N and N_c itself. Expected: --budget without --nc / --interval.")
    return preset, preset.plan(args.budget)


def _per_block(block_macs) -> str:
    from deltadit.costs import format_macs

    if isinstance(block_macs, int):
        return f"one block = {format_macs(block_macs)}"
    kinds = list(dict.fromkeys(block_macs))
    return "blocks = " + " / ".join(f"{format_macs(m)} (x{block_macs.count(m)})" for m in kinds)


def format_plan(preset, plan, costs) -> str:
    from deltadit.costs import format_macs, path_name

    lines = [
        f"{preset.description} ({preset.name}): {plan.num_blocks} blocks, {plan.num_steps} steps, "
        f"variant {plan.variant}, N = {plan.interval}, N_c = {plan.n_c}, b = {plan.b}",
        "",
        " step  path                 blocks run  records Δ over",
    ]
    for s in plan:
        rec = " ".join(f"[{a},{z})" for a, z in s.record) or "-"
        lines.append(f" {s.t:>4}  {path_name(s):<20} {plan.blocks_run(s):>10}  {rec}")
    lines += ["", "block groups (cut points " + ", ".join(map(str, plan.cut_points)) + "):"]
    lines += [f"  {g.name}: blocks [{g.start},{g.stop})" for g in plan.groups]
    lines += [
        "",
        f"MACs (linear layers in the blocks, CFG batch {costs.cfg_batch}; {_per_block(costs.block_macs)} per sample):",
        f"  baseline        {format_macs(costs.baseline_macs):>10}",
        f"  plan            {format_macs(costs.plan_macs):>10}",
        f"  ratio           {costs.ratio:>10.4f}",
        f"  speed-up bound  {costs.speedup_bound:>9.3f}x",
    ]
    for name, macs in costs.path_macs.items():
        lines.append(f"  per step, {name:<20} {format_macs(macs):>10}")
    return "\n".join(lines)


def cmd_plan(args) -> int:
    from deltadit.costs import plan_costs

    preset, plan = plan_from_args(args)
    costs = plan_costs(plan, preset.block_macs(), preset.cfg_batch)
    if args.json:
        out = {"preset": preset.name, "plan": plan.to_dict(),
               "groups": [[g.start, g.stop] for g in plan.groups],
               "macs": {"block": costs.block_macs, "baseline": costs.baseline_macs, "plan": costs.plan_macs,
                        "ratio": costs.ratio, "speedup_bound": costs.speedup_bound, "paths": costs.path_macs}}
        print(json.dumps(out, indent=2))
    else:
        print(format_plan(preset, plan, costs))
    return 0


def _load_bundle(args):
    """The bundle on the chosen backend (--providers only for ONNX Runtime)."""
    from deltadit.runtime import load

    launch = getattr(args, "gpu_launch", None)
    for flag_, value, wanted in (("--providers", args.providers, "onnxrt"), ("--gpu-launch", launch, "onnxrt"),
                                 ("--precision", args.precision, "openvino")):
        problem = validate.backend_only(flag_, value, args.backend, wanted)
        if problem:
            raise DeltaDiTError(problem)
    if args.backend == "openvino":
        return load(args.bundle, backend="openvino", precision=args.precision or "auto")
    if args.backend == "auto":
        bundle = load(args.bundle, backend="auto")
        print(choice_line(bundle.choice), file=sys.stderr)
        return bundle
    return load(args.bundle, args.providers.split(",") if args.providers else None, gpu_launch=launch)


def add_engine_args(p) -> None:
    """--providers, --backend and --precision: the engine a bundle command (check, generate) runs on."""
    p.add_argument("--providers", help="ONNX Runtime providers, comma-separated (default CPUExecutionProvider)")
    p.add_argument("--backend", choices=validate.CPU_BACKENDS, default="onnxrt",
                   help="engine that runs the bundle's segments (default onnxrt; openvino needs the [openvino] extra; "
                        "auto: the faster installed CPU engine for this bundle here, measured once and cached)")
    add_precision_arg(p)


def add_precision_arg(p) -> None:
    p.add_argument("--precision", choices=validate.OPENVINO_PRECISIONS,
                   help="with --backend openvino: the block groups' float precision (default auto: bf16 for INT8 "
                        "groups on a CPU with bf16 (AMX / AVX512-BF16), else f32; the head and tail stay in f32)")


def choice_line(record: dict) -> str:
    """One line on what --backend auto chose and why."""
    timed = ", ".join(f"{e} {s:.3f} s" for e, s in record["seconds"].items() if s is not None)
    how = "measured now" if record["measured"] else "as measured before on this machine (cached)"
    return f"backend auto: {record['backend']}" + (f" (one full step: {timed}; {how})" if timed else " (the only CPU engine installed)")


def cmd_check(args) -> int:
    """Verify a bundle's files, then run its first steps (one full, one cached) on seeded inputs."""
    import time

    import torch

    from deltadit.costs import path_name

    tic = time.perf_counter()
    bundle = _load_bundle(args)
    print(f"bundle {args.bundle}: files and hashes OK ({time.perf_counter() - tic:.1f} s); "
          f"{bundle.manifest.model.preset}, {len(bundle.segments)} segments"
          + ("  [RANDOM-INIT WEIGHTS]" if bundle.manifest.model.random_init else ""))
    feeds = bundle.example_feeds()
    tic = time.perf_counter()
    bundle.runner.activate()
    print(f"  sessions created in {time.perf_counter() - tic:.1f} s")
    executor = bundle.executor()
    steps = min(args.steps, bundle.plan.num_steps)
    for i in range(steps):
        tic = time.perf_counter()
        out = executor.step(i, feeds)["sample"]
        kind = path_name(bundle.plan.steps[i])
        finite = bool(torch.isfinite(out).all())
        print(f"  step {i + 1} ({kind}): {time.perf_counter() - tic:.2f} s, output {list(out.shape)}, finite={finite}")
        if not finite:
            raise DeltaDiTError(f"bundle {args.bundle} | step {i + 1} produced non-finite values. Expected: finite outputs.")
    return 0


def cmd_generate(args) -> int:
    """Prompt (PixArt) or class (DiT) -> PNG, with the bundle's transformer on ONNX Runtime."""
    from deltadit.costs import format_macs, plan_costs
    from deltadit.presets import unknown_prompt_warning
    from deltadit.runtime.generation import generate

    bundle = _load_bundle(args)
    if warning := unknown_prompt_warning(bundle.manifest.model.preset, args.prompt):
        print(warning, file=sys.stderr)
    result = generate(bundle, args.prompt, args.class_label, seed=args.seed, cache=not args.no_cache,
                      pipeline=args.pipeline, guidance_scale=args.guidance_scale, progress=True,
                      allow_other_weights=args.allow_other_weights)
    path = result.save(args.out)
    ex = bundle.manifest.export
    block = bundle.spec.block_macs(bundle.config, ex.text_len, ex.latent_side * 8)
    costs = plan_costs(bundle.plan, block, ex.opt_batch)
    how = (f"Δ-DiT plan ({bundle.plan.variant}, b={bundle.plan.b}, N_c={bundle.plan.n_c}, N={bundle.plan.interval}): "
           f"blocks {format_macs(costs.plan_macs)} MACs, bound {costs.speedup_bound:.2f}x") if not args.no_cache else \
          f"no cache: blocks {format_macs(costs.baseline_macs)} MACs"
    print(f"wrote {path}" + ("  [RANDOM-INIT WEIGHTS: the image is noise]" if result.random_init else ""))
    print(f"  {bundle.plan.num_steps} steps, {how}")
    print("  seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in result.seconds.items()))
    return 0


def cmd_eval(args) -> int:
    """The paper's comparison on the embedded model: every row exported, generated and scored offline."""
    from pathlib import Path

    from deltadit.eval.run import evaluate, format_table
    from deltadit.export.quantize import Int8Options
    from deltadit.presets import load_preset

    preset = load_preset(args.model)
    rows = tuple(r.strip() for r in args.rows.split(",") if r.strip())
    per_class = args.per_class if args.samples is None else args.samples // 10
    report = evaluate(preset, Path(args.out), rows, per_class=per_class, seed=args.seed,
                      int8=Int8Options(count=args.calib_count), latency_repeats=args.latency_repeats,
                      bootstrap_rounds=args.bootstrap_rounds)
    print(format_table(report))
    print(f"wrote {args.out}/results.json, {args.out}/table.md, {args.out}/grids/")
    return 0


def add_global_args(p: argparse.ArgumentParser, default=False) -> None:
    """--debug / --verbose, accepted before and after the subcommand (subparsers pass SUPPRESS so they do
    not reset a value given before it)."""
    p.add_argument("--debug", action="store_true", default=default, help="show the traceback of any error")
    p.add_argument("--verbose", action="store_true", default=default,
                   help="show third-party warnings and notices (torch, diffusers, transformers, ModelOpt, ...)")


def _prompt_help() -> str:
    from deltadit.presets import DEFAULT, load_preset

    words = load_preset(DEFAULT).prompts
    if not words:
        return "text prompt (PixArt bundles)"
    return f"text prompt (PixArt bundles); the embedded model '{DEFAULT}' knows the words {', '.join(words)}, e.g. \"a {words[-1]}\""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="deltadit", description="Δ-DiT plans, costs and bundles.")
    add_global_args(parser)
    from deltadit.runtime.runners.onnxrt_cuda import GPU_LAUNCHES

    sub = parser.add_subparsers(dest="command", required=True)
    integer, real = validate.integer, validate.real
    p = sub.add_parser("plan", help="print the per-step Δ-DiT plan, its block groups and its MACs")
    add_plan_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_plan)
    c = sub.add_parser("check", help="verify a bundle and run its first steps on seeded inputs")
    c.add_argument("bundle")
    c.add_argument("--steps", type=flag(integer, "--steps", 1, validate.MAX_STEPS, parse=int), default=2,
                   help="how many plan steps to run (default 2: one full, one cached)")
    add_engine_args(c)
    c.set_defaults(func=cmd_check)
    g = sub.add_parser("generate", help="draw one image with a bundle (prompt for PixArt, class for DiT)")
    g.add_argument("bundle")
    what = g.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help=_prompt_help())
    what.add_argument("--class", dest="class_label", type=flag(integer, "--class", 0, validate.MAX_CLASSES, parse=int),
                      help="class label (DiT bundles)")
    g.add_argument("--seed", type=flag(integer, "--seed", 0, validate.SEED_MAX, parse=int), default=0,
                   help="seed of the initial noise, in [0, 2**63 - 1] (default 0)")
    g.add_argument("--out", type=flag(_png, "--out"), default="image.png",
                   help="PNG to write (default image.png); its folder is created, an existing non-PNG file is refused")
    g.add_argument("--no-cache", action="store_true", help="run every step in full (the plan's groups, no Δ reuse)")
    g.add_argument("--allow-other-weights", action="store_true",
                   help="use a --pipeline whose weights differ from those the bundle was exported from")
    g.add_argument("--pipeline", help="diffusers pipeline folder or cached hub id with the text encoder / VAE "
                                      "(needed unless the bundle comes from the embedded model; a folder named in "
                                      "the manifest is never opened on its own)")
    g.add_argument("--guidance-scale", type=flag(real, "--guidance-scale", 0, validate.MAX_GUIDANCE),
                   help=f"override the bundle's guidance scale, in [0, {validate.MAX_GUIDANCE:g}] (<= 1: no guidance)")
    add_engine_args(g)
    g.add_argument("--gpu-launch", choices=GPU_LAUNCHES,
                   help="with --providers CUDAExecutionProvider: async (the default there: the host never waits), "
                        "graph (each segment replayed as a CUDA graph; fastest) or sync")
    g.set_defaults(func=cmd_generate)
    # bench has its own parser (deltadit.bench.main): main() hands it every argument this one does not know,
    # --help included.
    bn = sub.add_parser("bench", help="latency per configuration and step path, side by side (deltadit bench --help)",
                        add_help=False)
    bn.set_defaults(func=lambda a: __import__("deltadit.bench", fromlist=["main"]).main(a.rest))
    from deltadit.eval.run import MAX_PER_CLASS, ROWS

    e = sub.add_parser("eval", help="FID / class accuracy / PSNR / MACs / latency table of plan variants and INT8 (embedded model)")
    e.add_argument("--model", default="animals", help="a preset with an animal-mnist model (default: the embedded one)")
    e.add_argument("--rows", type=flag(_choices(ROWS), "--rows"), default=",".join(ROWS),
                   help=f"comma-separated rows (default all: {','.join(ROWS)})")
    e.add_argument("--per-class", type=flag(integer, "--per-class", 1, MAX_PER_CLASS, parse=int), default=20,
                   help=f"images per class prompt and row, in [1, {MAX_PER_CLASS}] (default 20 -> 200 per row)")
    e.add_argument("--samples", type=flag(_samples, "--samples"),
                   help="images per row, a multiple of the 10 classes (instead of --per-class; e.g. 1000)")
    e.add_argument("--bootstrap-rounds", type=flag(integer, "--bootstrap-rounds", 10, 10_000, parse=int), default=200,
                   help="bootstrap resamples behind each FID / accuracy 95%% interval, in [10, 10000] (default 200)")
    e.add_argument("--seed", type=flag(integer, "--seed", 0, validate.SEED_MAX, parse=int), default=0)
    e.add_argument("--calib-count", type=flag(integer, "--calib-count", 1, validate.MAX_CALIB_COUNT, parse=int), default=4,
                   help=f"INT8 calibration generations, in [1, {validate.MAX_CALIB_COUNT}] (default 4)")
    e.add_argument("--latency-repeats", type=flag(integer, "--latency-repeats", 1, validate.MAX_REPEATS, parse=int),
                   default=5, help=f"timed loops per row, in [1, {validate.MAX_REPEATS}] (default 5)")
    e.add_argument("--out", type=flag(lambda name, value: str(validate.output_folder(name, value)), "--out"),
                   default="eval/animals", help="folder for bundles, results.json, table.md, grids/")
    e.set_defaults(func=cmd_eval)
    from deltadit.tune.cli import add_parser as add_tune

    add_tune(sub)
    from deltadit.serve.cli import add_commands

    add_commands(sub)  # serve, triton-repo (Triton needs the [serve] extra only when they run)
    for command in sub.choices.values():
        add_global_args(command, default=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; every failure ends in one line on stderr: a DeltaDiTError (a value or file the
    user can fix) exits 2, an interrupt 130, anything else 1 (--debug adds the traceback)."""
    import traceback

    from deltadit.console import quiet_third_party

    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    args.rest = rest  # bench's own arguments
    if rest and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    with quiet_third_party(args.verbose):
        try:
            return args.func(args)
        except (Exception, KeyboardInterrupt) as e:  # SystemExit (bench's argparse, --help) passes through
            code, line = _failure(e, args.debug)
            if args.debug:
                traceback.print_exception(e)
            print(line, file=sys.stderr)
            return code


def _failure(e: BaseException, debug: bool) -> tuple[int, str]:
    """(exit code, the one line on stderr) for an exception that ends a command."""
    if isinstance(e, DeltaDiTError):  # a value or file the user can fix
        return 2, f"error: {e}"
    if isinstance(e, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(e, MemoryError):
        return 1, ("error: out of memory. Expected: smaller sizes (steps, resolution, batch, --per-class) or a "
                   "machine with more memory.")
    hint = "" if debug else " (run with --debug for the traceback)"
    first = (str(e).splitlines() or [""])[0]
    return 1, f"error: internal error: {type(e).__name__}: {first}{hint}"


if __name__ == "__main__":
    sys.exit(main())
