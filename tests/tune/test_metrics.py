"""Stage 5 of `deltadit tune` (full metrics on the shortlist): which rows it scores, how it reads a finished
run, and the one-line refusals; the eval rows it adds (names, latency range) without running a model."""

import json
import re

import pytest

from deltadit.errors import DeltaDiTError
from deltadit.eval.run import Row, evaluate, format_table, rows_for
from deltadit.plan import build_plan
from deltadit.presets import load_preset
from deltadit.tune.metrics import FIXED_ROWS, choose, full_metrics, read_report, row_name, tuned_rows, write_choice

PRESET = load_preset("animals")


def entry(plan, int8, psnr, latency, tags=()):
    name = f"T={plan.num_steps} {plan.variant} Nc={plan.n_c}" + (" int8" if int8 else "")
    return {"name": name, "plan": plan.to_dict(), "int8": int8, "tags": list(tags), "psnr_db": psnr, "latency_s": latency}


def plan(steps, n_c=0, variant="none", interval=1):
    return build_plan(steps, PRESET.num_blocks, n_c, 0, interval, variant)


def report(results, chosen):
    return {"model": "animals", "settings": {"min_psnr_db": 30.0, "calib_count": 1, "latency_repeats": 1, "keep_fp": []},
            "results": results, "chosen": chosen}


def test_tuned_rows_are_the_chosen_then_every_measured_candidate_over_the_target_fastest_first():
    chosen = entry(plan(12), False, 37.0, 1.0)
    slow = entry(plan(16), True, 33.0, 0.9)
    fast = entry(plan(12), True, 31.0, 0.6)
    too_poor = entry(plan(10), True, 29.0, 0.4)  # faster, but under the 30 dB target
    unmeasured = entry(plan(10, 9, "shallow", 2), True, 35.0, None)
    reference = entry(plan(20), True, 31.0, 0.3, tags=("reference",))
    rows = tuned_rows(report([chosen, slow, fast, too_poor, unmeasured, reference], chosen))
    assert [(r.name, r.plan.num_steps, r.int8) for r in rows] == [
        ("T12_none_Nc0", 12, False), ("T12_none_Nc0_int8", 12, True), ("T16_none_Nc0_int8", 16, True)]


def scored_row(name, fid, acc, fid_delta=None, acc_delta=None):
    row = {"row": name, "fid": fid, "class_accuracy": acc}
    if fid_delta is not None:
        row["fid_delta_ci"] = {"value": fid_delta, "low": fid_delta - 1, "high": fid_delta + 1}
        row["class_accuracy_delta_ci"] = {"value": acc_delta, "low": acc_delta - 0.01, "high": acc_delta + 0.01}
    return row


def test_choose_takes_the_fastest_candidate_within_both_targets_and_reads_fixed_rows_by_their_run():
    """FID +5 % / accuracy -2 points: the fastest row over FID, the next under accuracy; a candidate that is
    the same run as a fixed row (eval scored it under that name) is judged by that row."""
    fixed = rows_for(PRESET, FIXED_ROWS)
    fewer = next(f for f in fixed if f.name.startswith("fewer-steps"))
    too_far = entry(plan(10), True, 31.0, 0.3)
    drops = entry(plan(10), False, 33.0, 0.4)
    ok_int8 = entry(plan(12), True, 31.0, 0.5)
    ok_fp32 = {**entry(fewer.plan, False, 36.0, 0.55), "name": "T=12 none"}
    results = [{**r, "speedup": 1.0 / r["latency_s"]} for r in (too_far, drops, ok_int8, ok_fp32)]
    scored = {"rows": [scored_row("baseline", 100.0, 0.9),
                       scored_row(fewer.name, 99.0, 0.9, -1.0, 0.0),  # ok_fp32's run
                       scored_row(row_name(too_far["name"]), 106.0, 0.9, +5.2, 0.0),
                       scored_row(row_name(drops["name"]), 101.0, 0.87, +1.0, -0.025),
                       scored_row(row_name(ok_int8["name"]), 104.0, 0.885, +4.9, -0.015)]}
    choice = choose(report(results, None), scored, fixed, 5.0, 2.0)
    assert [(r["name"], r["row"], r["meets"]) for r in choice["rows"]] == [
        (too_far["name"], row_name(too_far["name"]), False), (drops["name"], row_name(drops["name"]), False),
        (ok_int8["name"], row_name(ok_int8["name"]), True), ("T=12 none", fewer.name, True)]
    assert choice["chosen"]["name"] == ok_int8["name"] and choice["composed"]["name"] == ok_int8["name"]
    assert choice["rows"][2]["fid_pct_ci"] == pytest.approx([3.9, 5.9])
    looser = choose(report(results, None), scored, fixed, 6.0, 3.0)
    assert looser["chosen"]["name"] == too_far["name"] and looser["composed"]["name"] == too_far["name"]
    fp32_only = choose(report(results, None), scored, fixed, 4.0, 2.0)
    assert fp32_only["chosen"]["name"] == "T=12 none" and fp32_only["composed"] is None


def test_write_choice_writes_the_plan_files_and_removes_a_stale_one(tmp_path):
    from deltadit.plan import DeltaPlan

    int8 = {**entry(plan(12), True, 31.0, 0.5), "speedup": 2.0}
    row = {**int8, "row": "x", "fid_pct": 1.0, "fid_pct_ci": [0.0, 2.0], "accuracy_points": 0.0,
           "accuracy_points_ci": [-1.0, 1.0], "meets": True}
    settings = {"calib_count": 4, "keep_fp": [], "calibration": "smoothquant", "alpha": 0.5}
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "plan-int8.json").write_text("stale")
    write_choice(PRESET, tmp_path, {"rows": [row], "chosen": row, "composed": row, "max_fid_increase_pct": 5.0,
                                    "max_accuracy_drop_points": 2.0}, settings)
    assert DeltaPlan.from_json((tmp_path / "metrics" / "plan-int8.json").read_text()).num_steps == 12
    text = (tmp_path / "metrics" / "choice.md").read_text()
    assert "--plan " + str(tmp_path / "metrics" / "plan-int8.json") + " --int8 --calibration smoothquant" in text
    write_choice(PRESET, tmp_path, {"rows": [], "chosen": None, "composed": None, "max_fid_increase_pct": 5.0,
                                    "max_accuracy_drop_points": 2.0}, settings)
    assert not (tmp_path / "metrics" / "plan.json").exists() and not (tmp_path / "metrics" / "plan-int8.json").exists()
    assert "chosen (fastest that meets the targets): none" in (tmp_path / "metrics" / "choice.md").read_text()


def test_tuned_rows_score_a_chosen_int8_candidate_once():
    fast = entry(plan(12), True, 31.0, 0.6)
    assert [r.name for r in tuned_rows(report([fast], fast))] == [row_name(fast["name"])]
    assert tuned_rows(report([], None)) == []


def test_a_smoothquant_tune_scores_its_int8_rows_with_its_calibration(monkeypatch, tmp_path):
    """A tune run with --int8-calibration smoothquant: its tuned INT8 rows and the bundles' options carry
    that calibration and alpha; a SmoothQuant row of the plain INT8 plan is not taken for eval's max row."""
    seen = {}
    monkeypatch.setattr("deltadit.eval.run.evaluate", lambda *a, **k: seen.update(kwargs=k) or {})
    int8_row = rows_for(PRESET, ("int8",))[0]
    same_plan = {**entry(int8_row.plan, True, 31.0, 0.6), "name": "T=20 none int8"}
    r = report([same_plan], same_plan)
    r["settings"].update(calibration="smoothquant", alpha=0.7)
    rows = tuned_rows(r)
    assert [(x.calibration, x.alpha) for x in rows] == [("smoothquant", 0.7)]
    full_metrics(PRESET, r, tmp_path, 10, 50, progress=False)
    assert [x.name for x in seen["kwargs"]["extra"]] == [rows[0].name]  # not deduplicated against max's int8 row
    options = seen["kwargs"]["int8"]
    assert (options.calibration, options.alpha, options.count) == ("smoothquant", 0.7, 1)


def test_full_metrics_skips_a_tuned_row_that_repeats_a_fixed_row(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr("deltadit.eval.run.evaluate", lambda *a, **k: seen.update(args=a, kwargs=k) or {})
    fewer = rows_for(PRESET, ("fewer-steps",))[0]  # T = 12 uncached FP32: already a fixed row
    composed = entry(plan(12), True, 31.0, 0.6)
    chosen = {**entry(plan(12), False, 37.0, 1.0), "name": "T=12 none"}  # b = 0, N = 1: the same run as fewer
    assert chosen["plan"] != fewer.plan.to_dict()  # (the animals run scored this row twice before)
    full_metrics(PRESET, report([chosen, composed], chosen), tmp_path, 20, 50, progress=False)
    assert seen["args"][2] == FIXED_ROWS and seen["kwargs"]["per_class"] == 2
    assert [r.name for r in seen["kwargs"]["extra"]] == ["T12_none_Nc0_int8"]
    assert seen["kwargs"]["bundle_root"] == tmp_path / "bundles" and seen["kwargs"]["bootstrap_rounds"] == 50


def test_full_metrics_refuses_a_sample_count_the_prompts_do_not_divide(tmp_path):
    with pytest.raises(DeltaDiTError, match=re.escape("--metrics-samples | 25 is not a multiple of the 10")):
        full_metrics(PRESET, report([], None), tmp_path, 25, 50)


@pytest.mark.parametrize("content, problem", [(None, "does not exist"), ("{not json", "is not readable JSON"),
                                              ('{"model": "animals"}', "has no 'settings' / 'results'")])
def test_read_report_refuses_what_is_not_a_finished_run(tmp_path, content, problem):
    if content is not None:
        (tmp_path / "results.json").write_text(content)
    with pytest.raises(DeltaDiTError, match=re.escape(problem)):
        read_report(tmp_path)


def test_metrics_only_refuses_a_run_of_another_model(tmp_path, capsys):
    from deltadit.cli import main

    (tmp_path / "results.json").write_text(json.dumps({**report([], None), "model": "pixart"}))
    assert main(["tune", "--metrics-only", "--metrics-samples", "20", "--out", str(tmp_path)]) != 0
    assert "is a tune of model 'pixart', not 'animals'" in capsys.readouterr().err
    assert main(["tune", "--metrics-only", "--out", str(tmp_path)]) != 0
    assert "--metrics-only | given without --metrics-samples" in capsys.readouterr().err
    assert main(["tune", "--max-fid-increase", "3", "--out", str(tmp_path)]) != 0  # would choose nothing: refused
    assert "--max-fid-increase / --max-accuracy-drop | given without --metrics-samples" in capsys.readouterr().err


def test_evaluate_refuses_rows_that_would_share_a_bundle_folder(tmp_path):
    twin = Row("baseline (again)", plan(12), False)
    with pytest.raises(DeltaDiTError, match=re.escape("rows baseline share a bundle folder")):
        evaluate(PRESET, tmp_path, ("baseline",), per_class=1, extra=[twin], progress=False)


def test_eval_table_shows_the_latency_range():
    row = {"row": "baseline", "steps": 20, "n_c": 0, "precision": "fp32", "macs": 5.5e9, "speedup_bound": 1.0,
           "latency_ms": 450.0, "latency_ms_range": [431.2, 470.6], "measured_speedup": 1.0, "fid": 99.8,
           "class_accuracy": 0.9, "psnr_vs_baseline": 100.0}
    text = format_table({"samples_per_row": 10, "per_class": 1, "seed": 0, "fid_reference": "x", "scheduler": "s",
                         "guidance_scale": 4.5, "rows": [row]})
    assert "| 450 (431–471) | 1.00x |" in text


def test_row_name_is_a_folder_name():
    assert row_name("T=12 shallow N=2 Nc=9 int8") == "T12_shallow_N2_Nc9_int8"


def test_paired_interval_resolves_a_shift_that_unpaired_intervals_cannot():
    import numpy as np

    from deltadit.eval.stats import fid_interval, frechet_distance, paired_delta_interval

    rng = np.random.default_rng(5)
    ref = rng.normal(size=(2000, 8))
    mu, sigma = ref.mean(0), np.cov(ref, rowvar=False)
    base = rng.normal(0.5, 1.0, size=(200, 8))
    row = base + 0.05  # the same images, each moved a little: a true FID difference of about 8 * (0.55² - 0.5²) = 0.42
    fid = lambda f: frechet_distance(mu, sigma, f)  # noqa: E731
    delta = paired_delta_interval(row, base, fid, rounds=200)
    a, b = fid_interval(mu, sigma, row, rounds=200), fid_interval(mu, sigma, base, rounds=200)
    assert delta.value == pytest.approx(fid(row) - fid(base))
    assert delta.low > 0  # paired: the shift is resolved ...
    assert a.low < b.high  # ... where the two rows' own intervals overlap
    with pytest.raises(ValueError, match=re.escape("paired sets differ in shape")):
        paired_delta_interval(row[:10], base, fid)


def test_eval_table_shows_the_paired_difference_to_the_baseline():
    ci = lambda v, lo, hi: {"value": v, "low": lo, "high": hi, "level": 0.95}  # noqa: E731
    row = {"row": "int8", "steps": 20, "n_c": 0, "precision": "int8", "macs": 5.5e9, "speedup_bound": 1.0,
           "latency_ms": 200.0, "measured_speedup": 2.0, "fid": 109.8, "class_accuracy": 0.9,
           "psnr_vs_baseline": 30.1, "fid_delta_ci": ci(9.93, 7.5, 12.25), "class_accuracy_delta_ci": ci(0.01, -0.02, 0.03)}
    text = format_table({"samples_per_row": 10, "per_class": 1, "seed": 0, "fid_reference": "x", "scheduler": "s",
                         "guidance_scale": 4.5, "rows": [row]})
    assert "| 109.80 | +9.93 [+7.50, +12.25] | 90.0% | +1.0 [-2.0, +3.0] | 30.1 dB |" in text
