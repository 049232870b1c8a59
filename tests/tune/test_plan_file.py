"""The plan file `deltadit tune` writes is what `deltadit-export --plan FILE` consumes; a plan that does not
fit the model is refused in one line before any work."""

import re

import pytest

pytest.importorskip("onnxruntime")

from deltadit.bundle import read_bundle
from deltadit.plan import build_plan, limit_group_blocks
from deltadit.presets import load_preset
from deltadit.tune.cli import write_report
from deltadit.tune.pareto import Result
from deltadit.tune.score import Score
from deltadit.tune.space import Candidate
from tests.export.test_export_cli import one_error_line, run_cli, write_tiny_toml

SETTINGS = {"screen_samples": 2, "backend": "onnxrt", "latency_repeats": 1, "keep_fp": [], "min_psnr_db": 30.0}


def tuned_plan_file(tmp_path, plan, int8=False):
    """plan.json as `deltadit tune` writes it for a chosen candidate."""
    chosen = Result(Candidate(plan, int8, 1, 0.5), Score(35.0, 0.98, None, 0.1), latency_s=1.0, speedup=1.5)
    preset = load_preset("animals")
    report = write_report(preset, tmp_path / "tune", [chosen], chosen, SETTINGS)
    assert report["export_command"].endswith("plan.json" + (" --int8" if int8 else ""))
    return tmp_path / "tune" / "plan.json"


def test_the_export_command_repeats_the_tunes_int8_options(tmp_path):
    """The printed deltadit-export command reproduces the INT8 candidates: calibration, alpha, keep-set and
    calibration generations, each a flag deltadit-export knows."""
    from deltadit.export.cli import build_parser
    from deltadit.export.cli import int8_options as export_options

    chosen = Result(Candidate(build_plan(12, 12, 0, 0), True, 1, 0.5), Score(35.0, 0.98, None, 0.1), latency_s=1.0,
                    speedup=1.5)
    settings = {**SETTINGS, "calibration": "smoothquant", "alpha": 0.7, "keep_fp": ["transformer_blocks.0.ff.net.2"],
                "calib_count": 2}
    command = write_report(load_preset("animals"), tmp_path / "tune", [chosen], chosen, settings)["export_command"]
    flags = command.split("plan.json", 1)[1].split()
    assert flags == ["--int8", "--calibration", "smoothquant", "--smoothquant-alpha", "0.7", "--int8-keep-fp",
                     "transformer_blocks.0.ff.net.2", "--calib-count", "2"]
    options = export_options(build_parser().parse_args(["--model", "animals", *flags]))
    assert (options.calibration, options.alpha, options.keep_fp, options.count) == (
        "smoothquant", 0.7, ("transformer_blocks.0.ff.net.2",), 2)


@pytest.mark.slow  # one tiny export: seconds alone, ~90 s on the shared 2-core machine
def test_tuned_plan_round_trips_through_export(tmp_path, capsys):
    # not the tiny preset's own plan (4 steps, delta-dit, N = 2), and cut by --max-group-blocks 2 (extra cuts)
    plan = limit_group_blocks(build_plan(5, 6, 3, 2, 3, "opposite"), 2)
    path = tuned_plan_file(tmp_path, plan)
    code, out, err = run_cli(capsys, "--model", write_tiny_toml(tmp_path), "--random-init", "--plan", path,
                             "--out", tmp_path / "bundle", "--no-fused-attention", "--no-engines")
    assert code == 0, err
    manifest = read_bundle(tmp_path / "bundle")
    assert manifest.plan == plan and manifest.sampling.steps == 5  # the bundle samples the plan's T
    assert "plan: opposite, 5 steps, b=2, N_c=3, N=3" in out


@pytest.mark.parametrize("plan, extra, match", [
    (build_plan(20, 12, 9, 12), [], r"--plan \| .*plan\.json is a plan for 12 blocks \(cuts \[\]\), but model "
                                    r"'tiny' has 6 \(stage cuts \[\]\)\. Expected: a plan made for this model"),
    (build_plan(4, 6, 2, 2), ["--nc", "3"], r"--plan \| the file is the whole plan; --nc would contradict it"),
])
def test_a_plan_that_does_not_fit_is_refused_in_one_line(tmp_path, capsys, plan, extra, match):
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    code, _, err = run_cli(capsys, "--model", write_tiny_toml(tmp_path), "--random-init", "--plan", path,
                           "--out", tmp_path / "bundle", *extra)
    assert code == 2 and not (tmp_path / "bundle").exists()
    assert re.search(match, one_error_line(err)), err


def test_a_damaged_plan_file_is_refused_naming_the_field(tmp_path, capsys):
    path = tmp_path / "plan.json"
    path.write_text(build_plan(4, 6, 2, 2).to_json().replace('"interval": 2', '"interval": 0'))
    code, _, err = run_cli(capsys, "--model", write_tiny_toml(tmp_path), "--random-init", "--plan", path,
                           "--out", tmp_path / "bundle")
    assert code == 2 and "interval (N) | 0 is out of range" in one_error_line(err)
