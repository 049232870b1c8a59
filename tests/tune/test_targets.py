"""The tune issue's targets judged on metrics rows: by how much each INT8 row misses (FID, speed, accuracy),
which layer and which steps the why-lines name, speed-ups read from a bench report, and the written files."""

import json

import pytest

from deltadit.errors import DeltaDiTError
from deltadit.tune import targets


def row(name, precision, steps, fid_delta, acc_delta, speedup, variant="none", calibration=None):
    r = {"row": name, "precision": precision, "steps": steps, "variant": variant, "measured_speedup": speedup,
         "fid": 100.0 + fid_delta, "calibration": calibration}
    if name != "baseline":
        r["fid_delta_ci"] = {"value": fid_delta, "low": fid_delta - 2, "high": fid_delta + 2}
        r["class_accuracy_delta_ci"] = {"value": acc_delta, "low": acc_delta - 0.01, "high": acc_delta + 0.01}
    return r


SCORED = {"rows": [row("baseline", "fp32", 20, 0.0, 0.0, 1.0),
                   row("int8", "int8", 20, 7.8, 0.0, 1.3, calibration="max"),
                   row("T10_none_int8", "int8", 10, 4.3, -0.01, 2.4, calibration="smoothquant"),
                   row("T12_shallow_int8", "int8", 12, 3.0, -0.05, 2.2, variant="shallow", calibration="max"),
                   row("fewer-steps (T=12)", "fp32", 12, -1.7, 0.0, 1.8)]}


def test_each_int8_row_is_judged_and_its_misses_are_stated_in_numbers():
    rep = targets.report(SCORED, None, [])
    verdicts = {(j["row"], j["target"]): j["misses"] for j in rep["judged"]}
    # INT8 alone (uncached, the baseline's steps) faces both targets; the FP32 rows face none.
    assert set(verdicts) == {("int8", "INT8 alone"), ("int8", "composed (INT8 + plan)"),
                             ("T10_none_int8", "composed (INT8 + plan)"), ("T12_shallow_int8", "composed (INT8 + plan)")}
    assert verdicts[("int8", "INT8 alone")] == ["FID +7.8 % (target ≤ +2 %: 5.8 points over)",
                                                "speed 1.30× (target ≥ 1.8×)"]
    assert verdicts[("T10_none_int8", "composed (INT8 + plan)")] == []
    assert verdicts[("T12_shallow_int8", "composed (INT8 + plan)")] == ["accuracy -5.0 points (target ≥ −2)"]
    assert "missed: FID +7.8 %" in targets.text(rep) and "| int8 | int8 max | 1.30× (eval) |" in targets.text(rep)


def test_bench_speeds_replace_the_evals_where_the_bench_timed_the_bundle(tmp_path):
    bench = {"baseline": "ort baseline (fp32)", "configs": {
        "ort baseline (fp32)": {"speedup_vs_ort baseline (fp32)": 1.0},
        "ort int8 (int8)": {"speedup_vs_ort baseline (fp32)": 1.9},
        "ort int8 (int8)+none": {"speedup_vs_ort baseline (fp32)": 1.5},  # a second configuration: not used
        "ort fewer-steps (fp32)": {"speedup_vs_ort baseline (fp32)": 1.7}}}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    speeds = targets.bench_speeds(tmp_path / "bench.json")
    assert speeds == {"baseline": 1.0, "int8": 1.9, "fewer-steps": 1.7}
    rows = {r["row"]: r for r in targets.rows_of(SCORED, speeds)}
    assert (rows["int8"]["speedup"], rows["int8"]["speed_source"]) == (1.9, "bench")
    assert (rows["fewer-steps (T=12)"]["speedup"], rows["T10_none_int8"]["speed_source"]) == (1.7, "eval")
    assert targets.misses(rows["int8"], targets.INT8_ALONE) == ["FID +7.8 % (target ≤ +2 %: 5.8 points over)"]
    bench["configs"]["ort T10_none_int8 (int8)"] = {"loop_s": 0.3}  # damaged: no speed-up against the baseline
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    with pytest.raises(DeltaDiTError, match=r"'ort T10_none_int8 \(int8\)' has no 'speedup_vs_ort baseline \(fp32\)'"):
        targets.bench_speeds(tmp_path / "bench.json")


def test_why_names_the_most_sensitive_layer_and_the_steps(tmp_path):
    (tmp_path / "int8-sensitivity.json").write_text(json.dumps({
        "samples": 20, "ranking": [{"layer": "blocks.4.ff", "psnr_db": 40.9}, {"layer": "blocks.0.ff", "psnr_db": 42.0}],
        "keep": [{"keep": 0, "psnr_db": 29.4}, {"keep": 1, "psnr_db": 30.5}]}))
    (tmp_path / "int8-steps.json").write_text(json.dumps({
        "steps_alone": [{"steps": [0, 1], "psnr_db": 50.9}, {"steps": [1, 2], "psnr_db": 41.8}],
        "steps_from": [{"steps": [0, 2], "psnr_db": 29.0}, {"steps": [1, 2], "psnr_db": 34.4}]}))
    layer, steps = targets.why([tmp_path / "absent", tmp_path])
    assert "(blocks.4.ff) leaves 40.9 dB" in layer and "all 2 together 29.4 dB" in layer
    assert "at most 41.8 dB (step 1)" in steps and "on every step 29.0 dB" in steps and "from step 1 on 34.4" in steps
    assert targets.why([tmp_path / "absent"]) == []


def test_main_writes_the_report_beside_the_metrics_and_refuses_a_folder_without_them(tmp_path, capsys):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "results.json").write_text(json.dumps(SCORED))
    assert targets.main([str(tmp_path)]) == 0
    assert {p.name for p in (tmp_path / "metrics").glob("targets.*")} == {"targets.md", "targets.json", "targets.png"}
    assert (tmp_path / "metrics" / "targets.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "metrics" / "targets.json").read_text())["judged"][0]["row"] == "int8"
    capsys.readouterr()
    assert targets.main([str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: targets") and "results.json" in err and err.count("\n") == 1
    assert targets.main([str(tmp_path), "--speeds", str(tmp_path / "no-bench.json")]) == 2
    assert "--speeds" in capsys.readouterr().err
    (tmp_path / "tune.json").write_text(json.dumps({"results": []}))  # a tune report, not a bench's
    assert targets.main([str(tmp_path), "--speeds", str(tmp_path / "tune.json")]) == 2
    assert "has no 'configs' / 'baseline'" in capsys.readouterr().err
    (tmp_path / "int8-sensitivity.json").write_text(json.dumps({"ranking": []}))
    assert targets.main([str(tmp_path), "--why", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: --why | an INT8 report in")
    damaged = {"rows": [SCORED["rows"][0], {k: v for k, v in SCORED["rows"][1].items() if k != "fid_delta_ci"}]}
    with pytest.raises(DeltaDiTError, match="a metrics row lacks 'fid_delta_ci'"):
        targets.rows_of(damaged)
    for not_metrics in ({"rows": SCORED["rows"][1:]}, [1, 2], {"rows": "x"}):
        with pytest.raises(DeltaDiTError, match="no baseline row first"):
            targets.rows_of(not_metrics)
