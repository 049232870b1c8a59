"""How far the tuned rows are from the tune issue's targets, and why: out/metrics/targets.{md,json,png}.

Two targets are judged on `deltadit tune --metrics-samples`'s rows (paired ΔFID and Δ accuracy against the
uncached FP32 baseline, with their 95 % intervals):
- INT8 alone: the eval's INT8 rows (uncached, the preset's steps; so their loop speed-up is their per-step
  speed-up): FID at most +2 % over the baseline, ≥ 1.8× the baseline's speed;
- composed: any INT8 row (a plan, any T): FID at most +5 %, accuracy at most 2 points lower, ≥ 2.0×.
Each row's miss is stated in numbers. The *why* comes from the tune's INT8 reports, where they exist
(``--int8-sensitivity``: the most sensitive layer alone against every layer; ``--int8-steps``: the worst
single step and INT8 from the middle step on).

Speed-ups are the eval's loop timings, or those of a `deltadit bench --json` of the same bundles
(``speeds``), which a quiet machine measures better. Run on a finished metrics stage with
``python -m deltadit.tune.targets OUT [--speeds BENCH.json] [--why DIR ...]``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

from deltadit.errors import DeltaDiTError, read_json


@dataclass(frozen=True)
class Target:
    name: str
    max_fid_pct: float
    min_speedup: float
    max_accuracy_drop: float | None = None


NO_WHY = ("Why: no INT8 sensitivity / steps report found (`deltadit tune --int8 --int8-sensitivity N` / "
          "`--int8-steps N` write them into --out; `--why DIR` reads them from elsewhere).")
INT8_ALONE = Target("INT8 alone", 2.0, 1.8)
COMPOSED = Target("composed (INT8 + plan)", 5.0, 2.0, 2.0)


def rows_of(scored: dict, speeds: dict[str, float] | None = None) -> list[dict]:
    """The eval rows as {row, int8, alone, speedup, fid_pct, fid_pct_ci, accuracy_points, ...}; alone: an INT8
    row at the baseline's steps without a cache. ``speeds`` (row -> speed-up) replaces the eval's timings."""
    rows = (scored.get("rows") if isinstance(scored, dict) else None) or []
    if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict) or rows[0].get("row") != "baseline":
        raise DeltaDiTError("targets | the metrics have no baseline row first. Expected: out/metrics/results.json "
                            "of `deltadit tune --metrics-samples N`.")
    try:
        return [_row(r, rows[0], speeds or {}) for r in rows[1:]]
    except (KeyError, TypeError) as e:
        raise DeltaDiTError(f"targets | a metrics row lacks {e}. Expected: out/metrics/results.json of `deltadit "
                            "tune --metrics-samples N` (this deltadit's).") from None


def _row(r: dict, base: dict, speeds: dict[str, float]) -> dict:
    from deltadit.tune.metrics import paired_deltas

    key = r["row"].split(" ")[0]
    return {"row": r["row"], "int8": r["precision"] == "int8",
            "precision": r["precision"] + (f" {r['calibration']}" if r.get("calibration") else ""),
            "alone": r["precision"] == "int8" and r["variant"] == "none" and r["steps"] == base["steps"],
            "speedup": speeds.get(key, r["measured_speedup"]),
            "speed_source": "bench" if key in speeds else "eval", **paired_deltas(r, base)}


def misses(row: dict, target: Target) -> list[str]:
    """What ``row`` lacks for ``target``, in numbers ([] when it meets it at the point estimates)."""
    out = []
    if row["fid_pct"] > target.max_fid_pct:
        out.append(f"FID {row['fid_pct']:+.1f} % (target ≤ +{target.max_fid_pct:g} %: "
                   f"{row['fid_pct'] - target.max_fid_pct:.1f} points over)")
    if row["speedup"] < target.min_speedup:
        out.append(f"speed {row['speedup']:.2f}× (target ≥ {target.min_speedup:g}×)")
    if target.max_accuracy_drop is not None and row["accuracy_points"] < -target.max_accuracy_drop:
        out.append(f"accuracy {row['accuracy_points']:+.1f} points (target ≥ −{target.max_accuracy_drop:g})")
    return out


def judge(rows: list[dict]) -> list[dict]:
    """Every INT8 row against its target(s): {row, target, misses}; INT8-alone rows face both."""
    out = []
    for r in (r for r in rows if r["int8"]):
        for target in ((INT8_ALONE, COMPOSED) if r["alone"] else (COMPOSED,)):
            out.append({"row": r["row"], "target": target.name, "misses": misses(r, target)})
    return out


def why(folders: list[Path]) -> list[str]:
    """Lines on which layer and which steps the INT8 error comes from, from the first int8-sensitivity.json /
    int8-steps.json found in ``folders`` (a damaged one refused in one line)."""
    try:
        return _why(folders)
    except (KeyError, TypeError, IndexError, ValueError) as e:
        raise DeltaDiTError(f"--why | an INT8 report in {', '.join(map(str, folders))} lacks {e}. Expected: the "
                            "int8-sensitivity.json / int8-steps.json of `deltadit tune --int8`.") from None


def _why(folders: list[Path]) -> list[str]:
    lines = []
    sens = next((f / "int8-sensitivity.json" for f in folders if (f / "int8-sensitivity.json").is_file()), None)
    if sens is not None:
        s = read_json(sens, "targets", "Expected: a `deltadit tune --int8-sensitivity` report.")
        top, all_layers = s["ranking"][0], s["keep"][0]
        lines.append(f"layer: no single layer carries the loss. Quantized alone, the most sensitive "
                     f"({top['layer']}) leaves {top['psnr_db']:.1f} dB PSNR to FP32; all "
                     f"{len(s['ranking'])} together {all_layers['psnr_db']:.1f} dB ({s['samples']} images; {sens}).")
    steps = next((f / "int8-steps.json" for f in folders if (f / "int8-steps.json").is_file()), None)
    if steps is None and sens is not None and "steps_alone" in s:
        steps = sens
    if steps is not None:
        t = read_json(steps, "targets", "Expected: a `deltadit tune --int8-steps` report.")
        worst = min(t["steps_alone"], key=lambda e: e["psnr_db"])
        all_steps = min(t["steps_from"], key=lambda e: e["steps"][0])
        half = min(t["steps_from"], key=lambda e: abs(e["steps"][0] - all_steps["steps"][1] // 2))
        lines.append(f"steps: no single step carries it either. INT8 on one step only costs at most "
                     f"{worst['psnr_db']:.1f} dB (step {worst['steps'][0]}); on every step {all_steps['psnr_db']:.1f} "
                     f"dB; from step {half['steps'][0]} on {half['psnr_db']:.1f} dB ({steps}).")
    return lines


def report(scored: dict, speeds: dict[str, float] | None, folders: list[Path]) -> dict:
    rows = rows_of(scored, speeds)
    return {"targets": [asdict(INT8_ALONE), asdict(COMPOSED)], "rows": rows, "judged": judge(rows),
            "why": why(folders)}


def verdict(judged: dict) -> str:
    """One judged row's verdict: what it misses, or that it meets the target."""
    return "missed: " + "; ".join(judged["misses"]) if judged["misses"] else "met (point estimates)"


def text(rep: dict) -> str:
    lines = ["Targets of the tune issue against the metrics' rows (paired ΔFID / Δ accuracy to the uncached FP32 "
             "baseline, 95 % intervals; speed-up over the baseline's loop).", "",
             "| row | precision | speed-up (source) | ΔFID % | Δ accuracy, points |", "|---|---|---|---|---|"]
    for r in rep["rows"]:
        lines.append(f"| {r['row']} | {r['precision']} | {r['speedup']:.2f}× ({r['speed_source']}) | "
                     f"{r['fid_pct']:+.1f} [{r['fid_pct_ci'][0]:+.1f}, {r['fid_pct_ci'][1]:+.1f}] | "
                     f"{r['accuracy_points']:+.1f} [{r['accuracy_points_ci'][0]:+.1f}, "
                     f"{r['accuracy_points_ci'][1]:+.1f}] |")
    lines += ["", "| INT8 row | target | verdict |", "|---|---|---|"]
    lines += [f"| {j['row']} | {j['target']} | {verdict(j)} |" for j in rep["judged"]]
    lines.append("")
    lines += ["Why:", *[f"- {w}" for w in rep["why"]]] if rep["why"] else [NO_WHY]
    return "\n".join(lines) + "\n"


def bench_speeds(path: Path) -> dict[str, float]:
    """row -> speed-up over the bench's baseline, from `deltadit bench --json` (first configuration per bundle)."""
    how = "Expected: the --json output of `deltadit bench` on the tune's bundles."
    b = read_json(path, "--speeds", how)
    if not isinstance(b, dict) or not {"configs", "baseline"} <= b.keys():
        raise DeltaDiTError(f"--speeds | {path} has no 'configs' / 'baseline'. {how}")
    out, key = {}, f"speedup_vs_{b['baseline']}"
    for name, c in b["configs"].items():
        m = re.fullmatch(r"\S+ (\S+) \((\w+)\)", name)
        if m and m.group(1) not in out:
            if not isinstance(c, dict) or key not in c:
                raise DeltaDiTError(f"--speeds | {path}: configuration '{name}' has no '{key}'. {how}")
            out[m.group(1)] = c[key]
    return out


def write(folder: Path, rep: dict) -> None:
    (folder / "targets.md").write_text(text(rep))
    (folder / "targets.json").write_text(json.dumps(rep, indent=2))
    plot(rep, folder / "targets.png")


def plot(rep: dict, path: Path) -> Path:
    """PNG: each metrics row's paired ΔFID % (95 % interval) against its measured speed-up, with the issue's
    target regions (INT8 alone, composed) and, below, each INT8 row's verdict and the report's why-lines."""
    from deltadit.tune.pareto import pyplot, save

    fig, ax = pyplot().subplots(figsize=(10, 6.4))
    for t, colour in zip(rep["targets"], ("tab:purple", "tab:green")):
        ax.fill_between([t["min_speedup"], 100], -100, t["max_fid_pct"], color=colour, alpha=0.12,
                        label=f"target: {t['name']} (≥ {t['min_speedup']:g}×, ΔFID ≤ +{t['max_fid_pct']:g} %)")
    for r in rep["rows"]:
        colour = "tab:red" if r["int8"] else "0.4"
        lo, hi = r["fid_pct_ci"]
        ax.errorbar(r["speedup"], r["fid_pct"], yerr=[[r["fid_pct"] - lo], [hi - r["fid_pct"]]], fmt="o" if r["int8"]
                    else "s", c=colour, ms=6, capsize=3)
        ax.annotate(r["row"], (r["speedup"], r["fid_pct"]), textcoords="offset points", xytext=(6, 4), fontsize=7)
        if r["alone"]:  # how far INT8 alone is from its own target's nearest corner
            corner = (rep["targets"][0]["min_speedup"], rep["targets"][0]["max_fid_pct"])
            ax.annotate("", corner, (r["speedup"], r["fid_pct"]),
                        arrowprops=dict(arrowstyle="->", ls="--", color=colour))
    xs = [r["speedup"] for r in rep["rows"]] + [t["min_speedup"] for t in rep["targets"]]
    ys = [v for r in rep["rows"] for v in r["fid_pct_ci"]] + [t["max_fid_pct"] for t in rep["targets"]]
    ax.set_xlim(min(0.9, min(xs) - 0.1), max(xs) + 0.3)
    ax.set_ylim(min(ys) - 1, max(ys) + 1)
    ax.axhline(0, c="0.7", lw=0.8)
    ax.set_xlabel("measured speed-up over the uncached FP32 bundle (loop; INT8 alone: per step)")
    ax.set_ylabel("ΔFID vs the FP32 baseline, % (paired, 95 % interval)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    notes = [f"{j['row']} / {j['target']}: {verdict(j)}" for j in rep["judged"]] + rep["why"]
    wrapped = "\n".join(textwrap.fill(n, 150, subsequent_indent="    ") for n in notes)
    fig.text(0.01, 0.01, wrapped, fontsize=6.5, va="bottom", family="monospace")
    fig.tight_layout(rect=(0, 0.02 + 0.018 * (wrapped.count("\n") + 1), 1, 1))
    return save(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deltadit.tune.targets", description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="a `deltadit tune --metrics-samples` --out folder")
    p.add_argument("--speeds", type=Path, help="a `deltadit bench --json` of the same bundles")
    p.add_argument("--why", type=Path, nargs="*", default=[], help="folders of --int8-sensitivity / --int8-steps runs")
    args = p.parse_args(argv)
    try:
        scored = read_json(args.out / "metrics" / "results.json", "targets",
                           "Expected: the --out folder of `deltadit tune --metrics-samples N`.")
        rep = report(scored, bench_speeds(args.speeds) if args.speeds else None, [args.out, *args.why])
    except DeltaDiTError as e:  # one line, nothing written
        print(f"error: {e}", file=sys.stderr)
        return 2
    write(args.out / "metrics", rep)
    print(text(rep), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
