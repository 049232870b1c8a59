"""Stage 5 of `deltadit tune`: the full metrics on the shortlist.

The screen ranks candidates by a paired distance on a few images; this stage scores the ones that matter
with `deltadit eval`'s metrics (FID against the held-out real images and the judge's class accuracy, each
with a 95 % bootstrap interval, on ``samples`` images per row): the eval's fixed rows (uncached FP32
baseline, fewer steps at Δ-DiT's MACs, the preset's Δ-DiT plan, INT8 alone) plus every candidate the
tune measured (its shortlist, which reached the screen's PSNR target). Rows whose plan and precision
repeat an earlier row are scored once. Bundles are reused from the tune's ``bundles/`` (the same folders
its measure stage exported).

Then the choice (:func:`choose`): the measured candidates are judged by these metrics instead of the
screen's PSNR: the fastest (tune's measured loop) whose FID is within ``max_fid_increase`` % of the
baseline's and whose class accuracy is at most ``max_accuracy_drop`` points lower (paired differences,
point estimates; their 95 % intervals are shown beside), overall and among INT8 candidates (the composed
setting). Written to out/metrics/choice.{md,json}, plan.json and plan-int8.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from deltadit.errors import DeltaDiTError, read_json

FIXED_ROWS = ("baseline", "fewer-steps", "delta-dit", "int8")
TARGETS = (5.0, 2.0)  # the choice's defaults: FID at most +5 % over the baseline, accuracy at most 2 points lower


def row_name(candidate_name: str) -> str:
    """A candidate's eval row (and bundle folder) name: "T=12 none int8" -> "T12_none_int8"."""
    return candidate_name.replace(" ", "_").replace("=", "")


def same_run(a, b) -> bool:
    """Two eval rows draw the same images: the same precision (and INT8 calibration) and step-for-step the
    same plan."""
    from deltadit.tune.space import plan_key

    def int8(r):
        return (r.calibration, r.alpha if r.calibration == "smoothquant" else None) if r.int8 else None

    return int8(a) == int8(b) and plan_key(a.plan) == plan_key(b.plan)


def measured(report: dict) -> list[dict]:
    """The candidates a tune report measured that reach its PSNR target (not the reference), fastest first."""
    target = report["settings"]["min_psnr_db"]
    return sorted((r for r in report["results"] if r.get("latency_s") is not None and "reference" not in r["tags"]
                   and r["psnr_db"] >= target), key=lambda r: r["latency_s"])


def tuned_rows(report: dict) -> list:
    """The eval Rows of a tune report: its chosen candidate, then every other measured candidate that reaches
    the report's PSNR target, fastest first (a plan and precision once); [] when nothing was measured."""
    rows = []
    for r in ([report["chosen"]] if report.get("chosen") else []) + measured(report):
        row = candidate_row(r, report["settings"])
        if all(not same_run(row, o) for o in rows):
            rows.append(row)
    return rows


def candidate_row(result: dict, settings: dict):
    """The eval Row of one tune result (its plan, precision and the tune's INT8 calibration)."""
    from deltadit.eval.run import Row
    from deltadit.plan import DeltaPlan

    options = int8_options(settings)
    return Row(row_name(result["name"]), DeltaPlan.from_dict(result["plan"]), result["int8"], options.calibration,
               options.alpha)


def int8_options(settings: dict):
    """The Int8Options a tune ran its INT8 candidates with (its settings; older reports: max calibration)."""
    from deltadit.export.quantize import Int8Options

    return Int8Options(count=settings["calib_count"], keep_fp=tuple(settings.get("keep_fp", ())),
                       calibration=settings.get("calibration", "max"), alpha=settings.get("alpha", 0.5))


def export_flags(settings: dict) -> str:
    """The deltadit-export INT8 flags that reproduce a tune's INT8 candidates (its settings)."""
    calibration = settings.get("calibration", "max")
    return (" --int8" + (f" --calibration {calibration}" if calibration != "max" else "")
            + (f" --smoothquant-alpha {settings['alpha']:g}" if calibration == "smoothquant" else "")
            + (f" --int8-keep-fp {','.join(settings['keep_fp'])}" if settings["keep_fp"] else "")
            + (f" --calib-count {settings['calib_count']}" if settings.get("calib_count", 4) != 4 else ""))


def export_command(preset, plan_file: Path, int8: bool, settings: dict) -> str:
    """The deltadit-export command line of a tuned plan file (with the tune's INT8 flags for an INT8 one)."""
    return f"deltadit-export --model {preset.name} --plan {plan_file}" + (export_flags(settings) if int8 else "")


def read_report(out: Path) -> dict:
    """The results.json a finished `deltadit tune` run left in ``out`` (refused in one line otherwise)."""
    path = Path(out) / "results.json"
    how = "Expected: the --out folder of a finished `deltadit tune` run (its results.json)."
    report = read_json(path, "--metrics-only", how)
    if not isinstance(report, dict) or not {"settings", "results"} <= report.keys():
        raise DeltaDiTError(f"--metrics-only | {path} has no 'settings' / 'results'. {how}")
    return report


def full_metrics(preset, report: dict, out: Path, samples: int, rounds: int, progress: bool = True,
                 targets: tuple[float, float] = TARGETS) -> dict:
    """Score the fixed rows and the report's tuned rows (see the module docstring) on ``samples`` images each
    (a multiple of the 10 prompts), then choose among them (:func:`choose`, targets = (max FID increase %,
    max accuracy drop in points)); writes out/metrics/{results.json,table.md,grids/,choice.md,plan*.json,
    targets.*};
    returns eval's report with the choice under "choice"."""
    from deltadit.eval.run import evaluate, rows_for

    if samples < 10 or samples % 10:
        raise DeltaDiTError(f"--metrics-samples | {samples} is not a multiple of the 10 class prompts. Expected: e.g. 100.")
    fixed = rows_for(preset, FIXED_ROWS)
    extra = [r for r in tuned_rows(report) if all(not same_run(r, f) for f in fixed)]
    s = report["settings"]
    scored = evaluate(preset, Path(out) / "metrics", FIXED_ROWS, per_class=samples // 10, int8=int8_options(s),
                      latency_repeats=s["latency_repeats"], progress=progress, bootstrap_rounds=rounds, extra=extra,
                      bundle_root=Path(out) / "bundles")
    scored["choice"] = choose(report, scored, fixed, *targets)
    write_choice(preset, Path(out), scored["choice"], s)
    from deltadit.tune import targets as issue_targets

    if scored.get("rows"):
        issue_targets.write(Path(out) / "metrics", issue_targets.report(scored, None, [Path(out)]))
    return scored


def choose(report: dict, scored: dict, fixed: list, max_fid_increase: float, max_accuracy_drop: float) -> dict:
    """Judge each measured candidate of ``report`` by eval's rows (``scored``; a candidate that repeats a
    fixed row is read from that row): {"rows": [...fastest first], "chosen": row or None, "composed": the
    fastest INT8 row that meets the targets or None}. A row meets them when its paired FID difference to the
    baseline is at most max_fid_increase % of the baseline's FID and its accuracy difference at least
    -max_accuracy_drop points."""
    by_name = {r["row"]: r for r in scored.get("rows", [])}
    base = scored["rows"][0] if scored.get("rows") else None
    rows = []
    for result in measured(report):
        row = candidate_row(result, report["settings"])
        name = next((f.name for f in fixed if same_run(row, f)), row.name)
        if name not in by_name or base is None:
            continue
        deltas = paired_deltas(by_name[name], base)
        rows.append({"name": result["name"], "int8": result["int8"], "plan": result["plan"], "row": name,
                     "speedup": result["speedup"], "latency_s": result["latency_s"], **deltas,
                     "meets": (deltas["fid_pct"] <= max_fid_increase
                               and deltas["accuracy_points"] >= -max_accuracy_drop)})
    ok = [r for r in rows if r["meets"]]
    return {"rows": rows, "chosen": ok[0] if ok else None, "composed": next((r for r in ok if r["int8"]), None),
            "max_fid_increase_pct": max_fid_increase, "max_accuracy_drop_points": max_accuracy_drop}


def paired_deltas(row: dict, base: dict) -> dict:
    """An eval row's paired differences to the baseline row: FID in % of the baseline's FID, class accuracy in
    points, each with its 95 % interval ([low, high])."""
    fid, acc = row["fid_delta_ci"], row["class_accuracy_delta_ci"]
    return {"fid_pct": 100 * fid["value"] / base["fid"],
            "fid_pct_ci": [100 * fid[k] / base["fid"] for k in ("low", "high")],
            "accuracy_points": 100 * acc["value"],
            "accuracy_points_ci": [100 * acc[k] for k in ("low", "high")]}


def write_choice(preset, out: Path, choice: dict, settings: dict) -> None:
    """out/metrics/choice.{md,json}, and plan.json / plan-int8.json of the chosen and composed rows (a stale
    one removed)."""
    from deltadit.plan import DeltaPlan

    folder = out / "metrics"
    folder.mkdir(parents=True, exist_ok=True)
    for key, file in (("chosen", "plan.json"), ("composed", "plan-int8.json")):
        row = choice[key]
        (folder / file).unlink(missing_ok=True)
        if row is not None:
            (folder / file).write_text(DeltaPlan.from_dict(row["plan"]).to_json())
            row["export_command"] = export_command(preset, folder / file, row["int8"], settings)
    (folder / "choice.md").write_text(choice_text(choice))
    (folder / "choice.json").write_text(json.dumps(choice, indent=2))


def choice_text(choice: dict) -> str:
    """choice.md: every judged candidate against the targets, then the chosen and composed rows."""
    fid, acc = choice["max_fid_increase_pct"], choice["max_accuracy_drop_points"]
    lines = [f"Measured candidates judged by the full metrics: FID within +{fid:g} % of the baseline's, class "
             f"accuracy at most {acc:g} points lower (paired differences; 95 % intervals in brackets); fastest first.",
             "", "| candidate | precision | measured speed-up | ΔFID % | Δ accuracy, points | meets |",
             "|---|---|---|---|---|---|"]
    for r in choice["rows"]:
        lines.append(f"| {r['name']} | {'int8' if r['int8'] else 'fp32'} | {r['speedup']:.2f}x | "
                     f"{r['fid_pct']:+.1f} [{r['fid_pct_ci'][0]:+.1f}, {r['fid_pct_ci'][1]:+.1f}] | "
                     f"{r['accuracy_points']:+.1f} [{r['accuracy_points_ci'][0]:+.1f}, "
                     f"{r['accuracy_points_ci'][1]:+.1f}] | "
                     f"{'yes' if r['meets'] else 'no'} |")
    lines.append("")
    for key, what in (("chosen", "chosen (fastest that meets the targets)"),
                      ("composed", "composed (fastest INT8 that meets them)")):
        row = choice[key]
        lines.append(f"{what}: " + ("none" if row is None else
                                    f"{row['name']}, {row['speedup']:.2f}x; export it: {row['export_command']}"))
    return "\n".join(lines) + "\n"
