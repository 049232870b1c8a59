"""`deltadit tune`: search plans (and INT8) on a model, screen them, measure the shortlist, report the front.

Stages, each a function with explicit arguments:
  space    the grid's distinct plans within the MACs budget (deltadit.tune.space);
  screen   every candidate on the PyTorch runtime against the uncached FP32 reference, same held-out
           prompts and seeds (deltadit.tune.score); INT8 candidates on a fake-quantized twin calibrated
           along the preset's plan (the export calibrates along each bundle's own plan);
  measure  the shortlist (each precision's front's cheapest candidates that reach ``min_psnr_db``) exported and timed
           as whole loops on the chosen backend (median of ``latency_repeats``), with the uncached FP32
           bundle as the reference;
  report   table.md, pareto.png, results.json, and plan.json (DeltaPlan JSON) of the fastest measured
           candidate that reaches the target, for `deltadit-export --plan plan.json [--int8]`;
  metrics  (--metrics-samples) FID / class accuracy of every measured candidate and the choice by them
           (deltadit.tune.metrics): out/metrics/choice.md, plan.json, plan-int8.json; and targets.{md,png}:
           each INT8 row against the issue's INT8-alone and composed targets, by how much it misses
           and why (deltadit.tune.targets).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from deltadit.errors import DeltaDiTError
from deltadit.tune.pareto import Result, best_within, front, plot, table
from deltadit.tune.metrics import TARGETS, choice_text, export_command, full_metrics, read_report
from deltadit.tune.space import Candidate, Grid, candidates, latency_prune


def screen_all(preset, transformer, cands: list[Candidate], samples: int, int8, progress: bool,
               ranked: dict | None = None):
    """(Results of every candidate, the Screen, the fake-quantized model or None)."""
    from deltadit.console import track
    from deltadit.tune.score import Screen, animal_judge

    screen = Screen(preset, transformer, samples, animal_judge(preset))
    qmodel = fake_quant(preset, transformer, int8) if any(c.int8 for c in cands) else None
    results = []
    for c in track(cands, "screen", enabled=progress, unit="candidates"):
        score, _ = screen.score(c.plan, qmodel if c.int8 else None)
        results.append(Result(c, score))
    return results, screen, qmodel


def fake_quant(preset, transformer, options):
    """The transformer fake-quantized as `deltadit-export --int8` with these Int8Options would (calibrated on
    the preset's plan)."""
    from deltadit.tune.int8 import calibration_set, quantize_model

    return quantize_model(transformer, preset, preset.plan(), options, calibration_set(preset, options))


def int8_sensitivity(preset, transformer, qmodel, samples: int, target_psnr_db: float, progress: bool,
                     on: str = "graph", bundles: Path | None = None, options=None) -> dict:
    """Rank the quantized Linears (each alone quantized, on ``samples`` held-out images of the uncached plan)
    and keep the most sensitive in FP32 until the INT8 images reach ``target_psnr_db`` to the FP32 ones.
    on: "graph" -- the exported INT8 bundle's QDQ ONNX on ONNX Runtime (exported or reused under ``bundles``
    with the export's Int8Options ``options``); "model" -- the fake-quantized twin ``qmodel``. The steps report
    is on ``qmodel``. Returns {"ranking": [...], "keep": [...], "target_psnr_db": ...}."""
    from deltadit.tune.int8 import FakeQuantLayers, keep_until, macs_shares, sensitivity
    from deltadit.tune.score import Screen, _reference_plan

    screen = Screen(preset, transformer, samples)  # its reference: the FP32 uncached images
    plan = _reference_plan(preset)
    if on == "graph":
        from deltadit.tune.graph import bundle_switches

        layers, generate = bundle_switches(preset, transformer, screen, bundles, options)
        method = "one layer quantized at a time, the exported INT8 bundle's graph on ONNX Runtime, uncached plan"
    else:
        layers, generate = FakeQuantLayers(qmodel), lambda: screen.images(plan, qmodel)
        method = "one layer quantized at a time, fake-quantized PyTorch model, uncached plan"
    shares = macs_shares(transformer, lambda: screen.images(plan), layers.names)
    ranking = sensitivity(layers, generate, screen.reference, shares, progress)
    rows = keep_until(layers, generate, screen.reference, ranking, target_psnr_db)
    return {"ranking": [e.to_dict() for e in ranking], "keep": rows, "target_psnr_db": target_psnr_db,
            **steps_report(qmodel, screen, plan), "samples": samples, "method": method}


def steps_report(qmodel, screen, plan) -> dict:
    """Which denoising steps the INT8 error of ``qmodel`` comes from, on ``screen``'s held-out images
    (deltadit.tune.int8.step_sensitivity): {"steps_alone": [...], "steps_from": [...]}."""
    from deltadit.tune.int8 import step_sensitivity

    alone, tails = step_sensitivity(qmodel, lambda model, callback: screen.images(plan, model, callback),
                                    screen.reference, plan.num_steps)
    return {"steps_alone": [e.to_dict() for e in alone], "steps_from": [e.to_dict() for e in tails]}


def int8_steps(preset, out: Path, samples: int, options) -> dict:
    """--int8-steps: steps_report of the export's INT8 recipe on the uncached plan; out/int8-steps.{md,json}."""
    from deltadit.export.load import load_transformer
    from deltadit.tune.score import Screen, _reference_plan

    transformer = load_transformer(preset, None, False)
    qmodel = fake_quant(preset, transformer, options)
    screen = Screen(preset, transformer, samples)
    report = {**steps_report(qmodel, screen, _reference_plan(preset)), "samples": samples, "calib_count": options.count}
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8-steps.json").write_text(json.dumps(report, indent=2))
    (out / "int8-steps.md").write_text(f"{samples} held-out images, uncached T = {preset.steps}, PSNR to FP32.\n\n"
                                       + steps_table(report))
    return report


def sensitivity_table(report: dict, top: int = 12) -> str:
    lines = [f"INT8 sensitivity ({report['method']}; {report['samples']} held-out images; PSNR to FP32):", "",
             "| rank | layer | PSNR dB alone ↑ | share of block MACs |", "|---|---|---|---|"]
    lines += [f"| {i + 1} | {e['layer']} | {e['psnr_db']:.1f} | {100 * e['macs_share']:.1f}% |"
              for i, e in enumerate(report["ranking"][:top])]
    lines += ["", f"Keeping the top k in FP32 (target {report['target_psnr_db']} dB):", "",
              "| k | PSNR dB ↑ | MACs left FP32 |", "|---|---|---|"]
    lines += [f"| {r['keep']} | {r['psnr_db']:.1f} | {100 * r['macs_kept']:.1f}% |" for r in report["keep"]]
    return "\n".join(lines) + "\n\n" + steps_table(report)


def steps_table(report: dict) -> str:
    lines = ["Which steps: every layer INT8 on these steps only, FP32 on the others (step 0 = the noisiest):", "",
             "| INT8 on steps | PSNR dB ↑ |", "|---|---|"]
    lines += [f"| {e['steps'][0]} | {e['psnr_db']:.1f} |" for e in report["steps_alone"]]
    lines += [f"| {e['steps'][0]}–{e['steps'][1] - 1} | {e['psnr_db']:.1f} |" for e in report["steps_from"]]
    return "\n".join(lines) + "\n"


def measure(preset, results: list[Result], picks: list[Result], out: Path, backend: str, int8, repeats: int,
            progress: bool) -> list[Result]:
    """``results`` with latency and speed-up filled in for ``picks`` (plus the uncached FP32 reference,
    measured first): each exported (or reused) under out/bundles and timed as a whole loop."""
    from deltadit.console import track

    reference = next(r for r in results if "reference" in r.candidate.tags and not r.candidate.int8)
    todo = [reference] + [p for p in picks if p is not reference]
    timed: dict[int, float] = {}
    for r in track(todo, "measure", enabled=progress, unit="bundles"):
        timed[id(r)] = loop_seconds(preset, r.candidate, out / "bundles", backend, int8, repeats)
    ref_s = timed[id(reference)]
    return [dataclasses.replace(r, latency_s=timed[id(r)], speedup=ref_s / timed[id(r)]) if id(r) in timed else r
            for r in results]


def loop_seconds(preset, c: Candidate, root: Path, backend: str, int8, repeats: int) -> float:
    """Median wall time of one image's denoising loop (CFG batch) of the candidate's bundle on ``backend``
    (int8: the Int8Options of INT8 candidates)."""
    from deltadit.eval.run import Row, bundle_for, latency_ms
    from deltadit.runtime import load
    from deltadit.runtime.conditioning import TextConditioner, components_root
    from deltadit.tune.metrics import row_name

    row = Row(row_name(c.name), c.plan, c.int8, int8.calibration, int8.alpha)
    path = bundle_for(row, preset, root, int8)
    bundle = load(path, backend=backend) if backend != "onnxrt" else load(path)
    root_dir, looked = components_root(preset.source)
    return latency_ms(bundle, TextConditioner(root_dir, looked, preset.text_len), repeats) / 1e3


def shortlist(results: list[Result], min_psnr_db: float, size: int) -> list[Result]:
    """For each precision, the ``size`` cheapest results of its own front (PSNR vs MACs) that reach
    ``min_psnr_db``. One joint front would starve INT8: an INT8 candidate has its FP32 twin's MACs and a
    lower PSNR, so the twin always dominates it."""
    picks = []
    for int8 in (False, True):
        same = [r for r in results if r.candidate.int8 == int8]
        picks += [r for r in front(same) if r.score.psnr_db >= min_psnr_db and "reference" not in r.candidate.tags][:size]
    return picks


def tune(preset, out: Path, grid: Grid = Grid(), budget: float | None = None, latency_budget: float | None = None,
         backend: str = "onnxrt", samples: int = 10, size: int = 3, min_psnr_db: float = 30.0, int8=None,
         repeats: int = 3, sensitivity_samples: int = 0, int8_target_psnr_db: float = 35.0,
         progress: bool = True, sensitivity_on: str = "graph") -> dict:
    """Run the stages (see the module docstring); returns the report written to out/results.json.
    int8: the export's Int8Options for INT8 candidates (calibration, alpha, generations, layers kept in FP32;
    default Int8Options()). sensitivity_samples: > 0 (with INT8 candidates) also ranks the INT8 layers
    (out/int8-sensitivity.md), on the exported graph or the fake-quantized model (``sensitivity_on``)."""
    from deltadit.export.load import load_transformer
    from deltadit.export.quantize import Int8Options

    int8 = int8 or Int8Options()

    tic = time.perf_counter()
    cands = candidates(preset, grid, budget)
    if latency_budget is not None:  # pre-select by the MACs share of the measured reference loop
        reference = next(c for c in cands if "reference" in c.tags and not c.int8)
        ref_s = loop_seconds(preset, reference, out / "bundles", backend, int8, repeats)
        # INT8's per-step speed-up over FP32 on ONNX Runtime CPU, as measured in the README (2.07-2.18x); the
        # estimate only pre-selects, every shortlisted candidate is then timed.
        cands = latency_prune(cands, ref_s, latency_budget, int8_speedup=2.0)
    transformer = load_transformer(preset, None, False)
    results, screen, qmodel = screen_all(preset, transformer, cands, samples, int8, progress)
    if sensitivity_samples and qmodel is not None:
        sens = int8_sensitivity(preset, transformer, qmodel, sensitivity_samples, int8_target_psnr_db, progress,
                                sensitivity_on, out / "bundles", int8)
        out.mkdir(parents=True, exist_ok=True)
        (out / "int8-sensitivity.json").write_text(json.dumps(sens, indent=2))
        (out / "int8-sensitivity.md").write_text(sensitivity_table(sens))
    settings = dict(budget=budget, latency_budget=latency_budget, backend=backend, screen_samples=samples,
                    seeds=list(screen.seeds), min_psnr_db=min_psnr_db, calib_count=int8.count, latency_repeats=repeats,
                    keep_fp=list(int8.keep_fp), calibration=int8.calibration, alpha=int8.alpha)
    write_report(preset, out, results, None, settings)  # the screen alone, in case measuring fails
    results = measure(preset, results, shortlist(results, min_psnr_db, size), out, backend, int8, repeats, progress)
    measured = [r for r in results if r.latency_s is not None]
    if latency_budget is not None:
        measured = [r for r in measured if r.latency_s <= latency_budget]
    chosen = best_within(measured, min_psnr_db, cost=lambda r: r.latency_s)
    return write_report(preset, out, results, chosen, {**settings, "seconds": time.perf_counter() - tic})


def write_report(preset, out: Path, results: list[Result], chosen: Result | None, settings: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    title = (f"{preset.name}: {len(results)} candidates screened on {settings['screen_samples']} held-out images "
             f"(PyTorch, vs the uncached FP32 run at T={preset.steps}); latency: whole loops on {settings['backend']}, "
             f"median of {settings['latency_repeats']}, shortlist only.")
    (out / "table.md").write_text(table(results, title))
    plot(results, out / "pareto.png", title)
    report = {"model": preset.name, "settings": settings, "results": [r.to_dict() for r in results],
              "chosen": None if chosen is None else chosen.to_dict()}
    if chosen is not None:
        (out / "plan.json").write_text(chosen.candidate.plan.to_json())
        report["export_command"] = export_command(preset, out / "plan.json", chosen.candidate.int8, settings)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    return report


def summary(report: dict, out: Path) -> str:
    chosen = report["chosen"]
    lines = [(out / "table.md").read_text()]
    if chosen is None:
        lines.append(f"no measured candidate reached {report['settings']['min_psnr_db']} dB PSNR to the reference; "
                     "no plan.json written. Expected: a lower --min-psnr, a larger --budget, or more --shortlist.")
    else:
        lines.append(f"chosen by the screen's PSNR: {chosen['name']}: {chosen['speedup']:.2f}x measured over the "
                     f"uncached FP32 bundle, "
                     f"PSNR {chosen['psnr_db']:.1f} dB to it")
        lines.append(f"export it: {report['export_command']}")
    lines.append(f"wrote {out}/table.md, {out}/pareto.png, {out}/results.json" + (", plan.json" if chosen else ""))
    return "\n".join(lines)


def cmd_tune(args) -> int:
    from deltadit.presets import load_preset

    preset = load_preset(args.model)
    grid = Grid(steps=args.steps_grid or tuple(sorted({preset.steps, *Grid().steps}, reverse=True)),
                int8=(False, True) if args.int8 else (False,))
    if args.budget is not None and args.latency_budget is not None:
        raise DeltaDiTError("--budget | and --latency-budget both given. Expected: one of them.")
    targets = tuple(default if given is None else given
                    for given, default in zip((args.max_fid_increase, args.max_accuracy_drop), TARGETS))
    if (args.max_fid_increase, args.max_accuracy_drop) != (None, None) and not args.metrics_samples:
        raise DeltaDiTError("--max-fid-increase / --max-accuracy-drop | given without --metrics-samples: they judge "
                            "the full metrics. Expected: --metrics-samples N (e.g. 200) too.")
    if args.metrics_only and not args.metrics_samples:
        raise DeltaDiTError("--metrics-only | given without --metrics-samples. Expected: --metrics-samples N (e.g. 200).")
    out = Path(args.out)
    if args.int8_steps and not args.int8:
        raise DeltaDiTError("--int8-steps | given without --int8. Expected: --int8 --int8-steps SAMPLES (e.g. 20).")
    options = int8_options(args)
    if args.int8_sensitivity_on and not args.int8_sensitivity:
        raise DeltaDiTError("--int8-sensitivity-on | given without --int8-sensitivity. Expected: --int8 "
                            "--int8-sensitivity SAMPLES (e.g. 20) too.")
    if args.int8_calibrations:
        return compare_calibrations(preset, args.int8_calibrations, out, args)
    if args.int8_steps:
        int8_steps(preset, out, args.int8_steps, options)
        print((out / "int8-steps.md").read_text() + f"wrote {out}/int8-steps.md, {out}/int8-steps.json")
        return 0
    if args.metrics_only:
        report = read_report(out)
        if report.get("model") != preset.name:
            raise DeltaDiTError(f"--metrics-only | {out}/results.json is a tune of model '{report.get('model')}', not "
                                f"'{preset.name}'. Expected: the same --model as that run.")
    else:
        report = tune(preset, out, grid, args.budget, args.latency_budget, args.backend, args.screen_samples,
                      args.shortlist, args.min_psnr, options, args.latency_repeats, args.int8_sensitivity,
                      args.int8_target_psnr, progress=True, sensitivity_on=args.int8_sensitivity_on or "graph")
        print(summary(report, out))
    if args.metrics_samples:
        from deltadit.eval.run import format_table

        scored = full_metrics(preset, report, out, args.metrics_samples, args.bootstrap_rounds, targets=targets)
        print(format_table(scored) + "\n" + choice_text(scored["choice"]))
        print(f"wrote {out}/metrics/: results.json, table.md, grids/, choice.md, choice.json, plan*.json, "
              "targets.{md,json,png}")
    return 0


def int8_options(args):
    """The Int8Options of INT8 candidates from the tune flags (as deltadit-export's); bad values refused in one line."""
    from deltadit.export.quantize import Int8Options

    options = Int8Options(calibration=args.int8_calibration, alpha=args.smoothquant_alpha, count=args.calib_count,
                          keep_fp=tuple(g.strip() for g in args.int8_keep_fp.split(",") if g.strip()))
    problems = options.problems()
    if problems:
        raise DeltaDiTError(problems[0])
    return options


def compare_calibrations(preset, methods: tuple, out: Path, args) -> int:
    """--int8-calibrations: the methods side by side on the screen (no plan search); out/int8-calibrations.md."""
    from deltadit.export.load import load_transformer
    from deltadit.tune import calibration

    if not args.int8:
        raise DeltaDiTError("--int8-calibrations | given without --int8. Expected: --int8 --int8-calibrations "
                            f"{calibration.EXAMPLE}.")
    transformer = load_transformer(preset, None, False)
    rows = calibration.run(preset, transformer, out, methods, args.screen_samples, args.calib_count)
    print((out / "int8-calibrations.md").read_text())
    print(f"best: {rows[0].method}; wrote {out}/int8-calibrations.md, {out}/int8-calibrations.json")
    return 0


def _methods(name: str, value):
    from deltadit.tune.calibration import parse_methods

    return parse_methods(value)


def _ints(name: str, value) -> tuple[int, ...]:
    from deltadit import validate

    parts = [p.strip() for p in str(value).split(",") if p.strip()]
    return tuple(validate.integer(name, int(p) if p.isdigit() else p, 1, validate.MAX_STEPS) for p in parts) or \
        validate.integer(name, value, 1, validate.MAX_STEPS)


def add_parser(sub) -> None:
    """Register `deltadit tune` on the main CLI's subparsers."""
    from deltadit import validate
    from deltadit.cli import _samples, flag

    integer, real = validate.integer, validate.real
    t = sub.add_parser("tune", help="search Δ-DiT plans (and INT8) against the uncached reference; Pareto table, "
                                    "plot and a plan file for deltadit-export --plan")
    t.add_argument("--model", default="animals", help="a preset, .toml or model folder (default: the embedded animals)")
    t.add_argument("--budget", type=flag(validate.fraction, "--budget"),
                   help="largest block-MACs fraction of the uncached run to search, in (0, 1]")
    t.add_argument("--latency-budget", type=flag(real, "--latency-budget", 0.0, None, parse=float), metavar="S",
                   help="largest loop time in seconds on --backend (candidates pre-selected by MACs, then measured)")
    t.add_argument("--int8", action="store_true", help="also search INT8 (fake-quantized screen, INT8 bundles measured)")
    t.add_argument("--int8-keep-fp", default="", metavar="LAYERS", help="Linear layers kept FP32 in INT8 candidates "
                                                                        "(as deltadit-export --int8-keep-fp)")
    t.add_argument("--int8-calibration", default="max", choices=("max", "smoothquant"),
                   help="calibration of INT8 candidates, as deltadit-export --calibration (default max; "
                        "--int8-calibrations compares methods)")
    t.add_argument("--smoothquant-alpha", type=flag(real, "--smoothquant-alpha", 0.0, 1.0, parse=float), default=0.5,
                   help="SmoothQuant alpha with --int8-calibration smoothquant, in [0, 1] (default 0.5)")
    t.add_argument("--int8-sensitivity", type=flag(integer, "--int8-sensitivity", 0, 1000, parse=int), default=0,
                   metavar="SAMPLES", help="with --int8: rank every quantized Linear on this many held-out images "
                                           "(one layer at a time) and find the FP32 keep-set (default 0: off)")
    t.add_argument("--int8-sensitivity-on", choices=("graph", "model"),
                   help="rank on the exported INT8 bundle's graph on ONNX Runtime (default; exported to out/bundles/int8) "
                        "or on the fake-quantized PyTorch model (model)")
    t.add_argument("--int8-target-psnr", type=flag(real, "--int8-target-psnr", 0.0, 100.0, parse=float), default=35.0,
                   help="keep-set target: PSNR (dB) of the INT8 images to the FP32 ones (default 35)")
    t.add_argument("--int8-calibrations", type=flag(_methods, "--int8-calibrations"), metavar="METHODS",
                   help="with --int8: compare these calibrations on the screen instead of searching plans, e.g. "
                        "max,percentile:99.9,smoothquant:0.8,max@early,bundle:PATH (out/int8-calibrations.md)")
    t.add_argument("--int8-steps", type=flag(integer, "--int8-steps", 1, 1000, parse=int), default=0, metavar="SAMPLES",
                   help="with --int8: which denoising steps the INT8 error comes from (every layer INT8 on one step at "
                        "a time, on this many held-out images) instead of searching plans (out/int8-steps.md)")
    t.add_argument("--backend", choices=("onnxrt", "openvino"), default="onnxrt", help="where the shortlist is timed")
    t.add_argument("--steps-grid", type=flag(_ints, "--steps-grid"),
                   help="comma-separated step counts T to search (default: the preset's and 16, 12, 10... see Grid)")
    t.add_argument("--screen-samples", type=flag(integer, "--screen-samples", 2, 1000, parse=int), default=10,
                   help="held-out images per candidate in the screen (default 10: one per animal prompt)")
    t.add_argument("--shortlist", type=flag(integer, "--shortlist", 1, 50, parse=int), default=3,
                   help="front candidates of each precision exported and timed (default 3)")
    t.add_argument("--min-psnr", type=flag(real, "--min-psnr", 0.0, 100.0, parse=float), default=30.0,
                   help="quality target: PSNR (dB) to the uncached reference's images (default 30)")
    t.add_argument("--calib-count", type=flag(integer, "--calib-count", 1, validate.MAX_CALIB_COUNT, parse=int), default=4)
    t.add_argument("--latency-repeats", type=flag(integer, "--latency-repeats", 1, validate.MAX_REPEATS, parse=int),
                   default=3)
    t.add_argument("--metrics-samples", type=flag(_samples, "--metrics-samples"), default=0, metavar="N",
                   help="then FID / class accuracy with 95%% bootstrap intervals on N images per row (a multiple of "
                        "10) for the baseline, fewer steps, Δ-DiT, INT8 and every measured candidate, then choose by them")
    t.add_argument("--bootstrap-rounds", type=flag(integer, "--bootstrap-rounds", 10, 10_000, parse=int), default=200,
                   help="bootstrap resamples behind each interval of --metrics-samples (default 200)")
    t.add_argument("--max-fid-increase", type=flag(real, "--max-fid-increase", 0.0, 1000.0, parse=float),
                   metavar="PCT", help="with --metrics-samples: choose the fastest measured candidate whose FID is at most "
                                       "PCT %% above the baseline's (default 5)")
    t.add_argument("--max-accuracy-drop", type=flag(real, "--max-accuracy-drop", 0.0, 100.0, parse=float),
                   metavar="POINTS", help="... and whose class accuracy is at most POINTS lower (default 2)")
    t.add_argument("--metrics-only", action="store_true",
                   help="skip the search: score the finished run in --out (its results.json) with --metrics-samples")
    t.add_argument("--out", type=flag(lambda name, value: str(validate.output_folder(name, value)), "--out"),
                   default="tune/animals", help="folder for table.md, pareto.png, results.json, plan.json, bundles/")
    t.set_defaults(func=lambda a: cmd_tune(a))
