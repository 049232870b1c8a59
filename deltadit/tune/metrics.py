"""Stage 5 of `deltadit tune`: the full metrics on the shortlist.

The screen ranks candidates by a paired distance on a few images; this stage scores the ones that matter
with `deltadit eval`'s metrics (FID against the held-out real images and the judge's class accuracy, each
with a 95 % bootstrap interval, on ``samples`` images per row): the eval's fixed rows (uncached FP32
baseline, fewer steps at Δ-DiT's MACs, the preset's Δ-DiT plan, INT8 alone) plus the tune's chosen
candidate and its fastest measured INT8 candidate that reaches the target (the composed setting). Rows
whose plan and precision repeat an earlier row are scored once. Bundles are reused from the tune's
``bundles/`` (the same folders its measure stage exported).
"""

from __future__ import annotations

from pathlib import Path

from deltadit.errors import DeltaDiTError, read_json

FIXED_ROWS = ("baseline", "fewer-steps", "delta-dit", "int8")


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


def tuned_rows(report: dict) -> list:
    """The eval Rows of a tune report: its chosen candidate, then the fastest measured INT8 candidate that
    reaches the report's PSNR target (if another one); [] when nothing was measured."""
    from deltadit.eval.run import Row
    from deltadit.plan import DeltaPlan

    target = report["settings"]["min_psnr_db"]
    measured = [r for r in report["results"] if r.get("latency_s") is not None and "reference" not in r["tags"]]
    composed = min((r for r in measured if r["int8"] and r["psnr_db"] >= target), key=lambda r: r["latency_s"],
                   default=None)
    picks = [r for r in (report.get("chosen"), composed) if r is not None]
    options = int8_options(report["settings"])
    rows = []
    for r in picks:
        row = Row(row_name(r["name"]), DeltaPlan.from_dict(r["plan"]), r["int8"], options.calibration, options.alpha)
        if all(not same_run(row, o) for o in rows):
            rows.append(row)
    return rows


def int8_options(settings: dict):
    """The Int8Options a tune ran its INT8 candidates with (its settings; older reports: max calibration)."""
    from deltadit.export.quantize import Int8Options

    return Int8Options(count=settings["calib_count"], keep_fp=tuple(settings.get("keep_fp", ())),
                       calibration=settings.get("calibration", "max"), alpha=settings.get("alpha", 0.5))


def read_report(out: Path) -> dict:
    """The results.json a finished `deltadit tune` run left in ``out`` (refused in one line otherwise)."""
    path = Path(out) / "results.json"
    how = "Expected: the --out folder of a finished `deltadit tune` run (its results.json)."
    report = read_json(path, "--metrics-only", how)
    if not isinstance(report, dict) or not {"settings", "results"} <= report.keys():
        raise DeltaDiTError(f"--metrics-only | {path} has no 'settings' / 'results'. {how}")
    return report


def full_metrics(preset, report: dict, out: Path, samples: int, rounds: int, progress: bool = True) -> dict:
    """Score the fixed rows and the report's tuned rows (see the module docstring) on ``samples`` images each
    (a multiple of the 10 prompts); writes out/metrics/{results.json,table.md,grids/}; returns eval's report."""
    from deltadit.eval.run import evaluate, rows_for

    if samples < 10 or samples % 10:
        raise DeltaDiTError(f"--metrics-samples | {samples} is not a multiple of the 10 class prompts. Expected: e.g. 100.")
    fixed = rows_for(preset, FIXED_ROWS)
    extra = [r for r in tuned_rows(report) if all(not same_run(r, f) for f in fixed)]
    s = report["settings"]
    return evaluate(preset, Path(out) / "metrics", FIXED_ROWS, per_class=samples // 10, int8=int8_options(s),
                    latency_repeats=s["latency_repeats"], progress=progress, bootstrap_rounds=rounds, extra=extra,
                    bundle_root=Path(out) / "bundles")
