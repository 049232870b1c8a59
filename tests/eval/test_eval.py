"""The embedded model, its judge and `deltadit eval` (small sample counts; the committed table uses more)."""

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
if importlib.util.find_spec("animal_mnist") is None:
    pytest.skip("animal-mnist not installed (pip install --no-deps animal-mnist)", allow_module_level=True)

from deltadit import runtime
from deltadit.eval.classifier import load_classifier, predict
from deltadit.eval.data import CLASSES, split
from deltadit.eval.run import evaluate, psnr, rows_for
from deltadit.export.quantize import Int8Options
from deltadit.presets import load_preset

PRESET = load_preset("animals")


def test_judge_scores_at_least_90_percent_on_held_out_images():
    x, y = split("test")
    assert np.bincount(y).tolist() == [79, 44] + [100] * 8  # bears and birds repeat training images
    acc = float((predict(load_classifier(), x).numpy() == y).mean())
    assert acc >= 0.90, acc


def test_train_and_test_splits_do_not_overlap():
    a, _ = split("train")
    b, _ = split("test")
    assert len(a) == 9000
    seen = {img.tobytes() for img in a}
    assert not any(img.tobytes() in seen for img in b)  # 77 exact repeats of training images were dropped


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One small `deltadit eval` run (2 images per class and row); its row bundles serve the other tests."""
    out = tmp_path_factory.mktemp("eval")
    # 20 bootstrap rounds, not 200: the intervals' statistics are tests/tune/test_eval_ci.py's subject; here each
    # round is one FID (~20 ms at 2048 features), and no assertion below reads an interval.
    report = evaluate(PRESET, out, ("baseline", "delta-dit", "delta-dit+int8"), per_class=2, int8=Int8Options(count=1),
                      latency_repeats=1, reference_per_class=2, progress=False, bootstrap_rounds=20)
    return report, out


@pytest.fixture(scope="module")
def default_bundle(small_run):
    """The small run's delta-dit row: an fp32 bundle of the CLI's default plan (read only)."""
    out = small_run[1] / "bundles" / "delta-dit"
    assert runtime.load(out).plan == PRESET_PLAN()
    return out


def PRESET_PLAN():
    from deltadit.cli import plan_from_args, build_parser

    return plan_from_args(build_parser().parse_args(["plan"]))[1]  # the CLI default: the embedded model's plan


def test_embedded_default_prompts_steer_the_class(default_bundle):
    """The shipped model draws the prompted animal: eval/animals/table.md measured the judge's accuracy on
    its baseline images at 90.7 % (300 images). Here 2 seeds x 10 prompts through `deltadit.runtime.generate`
    with the Δ-DiT plan must reach 60 % (chance 10 %; at p = 0.9 fewer than 12 of 20 has probability < 1e-4)."""
    bundle = runtime.load(default_bundle)
    assert bundle.manifest.model.source == "embedded:animals" and not bundle.manifest.model.random_init
    judge = load_classifier()
    images, labels = [], []
    for c, name in enumerate(CLASSES):
        for seed in range(2):
            result = runtime.generate(bundle, prompt=f"a {name}", seed=seed)
            assert result.image.shape == (28, 28, 1)
            images.append(result.image[:, :, 0])
            labels.append(c)
    acc = float((predict(judge, np.stack(images)).numpy() == np.array(labels)).mean())
    assert acc >= 0.6, acc


def test_rows_follow_the_paper(tmp_path):
    rows = {r.name.split(" ")[0]: r for r in rows_for(PRESET)}
    assert list(rows) == ["baseline", "fewer-steps", "shallow", "middle", "deep", "delta-dit", "opposite", "int8", "delta-dit+int8",
                          "int8-smoothquant"]
    # N_c = 9 of 12 at N = 2 over 20 steps: 20*12 - 10*9 = 150 block calls of 240 -> fewer-steps T = round(20 * 0.625) = 12
    assert rows["fewer-steps"].plan.num_steps == 12 and rows["fewer-steps"].plan.variant == "none"
    assert rows["delta-dit"].plan.ranges == ((3, 12), (0, 9))  # deep while t <= b, then shallow
    assert rows["opposite"].plan.ranges == ((0, 9), (3, 12))
    assert rows["int8"].int8 and rows["int8"].plan.variant == "none" and rows["int8"].calibration == "max"
    assert rows["int8-smoothquant"].calibration == "smoothquant" and rows["int8-smoothquant"].plan == rows["int8"].plan


def test_eval_small_run(small_run):
    report, out = small_run
    rows = {r["row"]: r for r in report["rows"]}
    assert report["samples_per_row"] == 20
    assert rows["baseline"]["psnr_vs_baseline"] == 100.0 and rows["baseline"]["speedup_bound"] == 1.0
    assert rows["delta-dit"]["speedup_bound"] == pytest.approx(240 / 150)
    for r in rows.values():
        assert np.isfinite(r["fid"]) and r["fid"] > 0 and 0 <= r["class_accuracy"] <= 1 and r["latency_ms"] > 0
    assert rows["delta-dit"]["psnr_vs_baseline"] < 100  # caching changed the images, a little
    assert json.loads((out / "results.json").read_text())["rows"][1]["row"] == "delta-dit"
    assert "| delta-dit+int8 |" in (out / "table.md").read_text()
    assert (out / "grids" / "delta-dit+int8.png").is_file()
    manifest = json.loads((out / "bundles" / "delta-dit+int8" / "manifest.json").read_text())
    assert manifest["int8"]["calibration"]["conditioning"] == "prompts"  # the model's own text encoder and classes
    assert manifest["int8"]["calibration"]["prompts"][:2] == ["a bear", "a bird"]


def test_psnr():
    a = np.zeros((2, 4, 4))
    b = a.copy()
    b[1] += 0.1
    assert psnr(a, b) == pytest.approx((100 + 20) / 2)


def test_eval_reuses_a_row_bundle_only_for_the_same_weights(small_run, monkeypatch):
    from deltadit.eval import run

    row, root = run.rows_for(PRESET, ("baseline",))[0], small_run[1] / "bundles"
    out = root / "baseline"
    first = (out / "manifest.json").stat().st_mtime_ns  # exported by the small run
    assert run.bundle_for(row, PRESET, root) == out  # same plan, precision and weights: reused
    assert (out / "manifest.json").stat().st_mtime_ns == first

    exported = []
    monkeypatch.setattr("deltadit.export.pipeline.export_bundle", lambda *a, **k: exported.append(a[2]))
    monkeypatch.setattr("deltadit.sources.weights_fingerprint", lambda source: "other weights")
    run.bundle_for(row, PRESET, root)  # the embedded weights changed since: export again
    assert exported == [out]


def test_eval_reuses_an_int8_row_bundle_only_for_the_same_calibration(small_run, monkeypatch):
    import dataclasses

    from deltadit.eval import run

    root = small_run[1] / "bundles"
    row = run.rows_for(PRESET, ("delta-dit+int8",))[0]  # exported by the small run, max-calibrated
    exported = []
    monkeypatch.setattr("deltadit.export.pipeline.export_bundle", lambda *a, **k: exported.append(k["int8"]))
    assert run.bundle_for(row, PRESET, root, Int8Options(count=1)) == root / "delta-dit+int8" and exported == []  # reused
    run.bundle_for(dataclasses.replace(row, calibration="smoothquant"), PRESET, root, Int8Options(count=1))
    assert [(o.calibration, o.alpha) for o in exported] == [("smoothquant", run.SMOOTHQUANT_ALPHA)]


def test_an_int8_bundle_is_the_same_only_with_the_same_layers_calibration_and_smoothquant_alpha():
    from deltadit.eval.run import _same_int8

    smooth = {"calibration": "smoothquant", "alpha": 0.5, "keep_fp": [], "count": 4}
    assert _same_int8(smooth, Int8Options(calibration="smoothquant", alpha=0.5, count=1))  # count: not a graph change
    assert not _same_int8(smooth, Int8Options(calibration="smoothquant", alpha=0.8))
    assert not _same_int8(smooth, Int8Options(calibration="smoothquant", alpha=0.5, keep_fp=("transformer_blocks.0.*",)))
    assert not _same_int8(smooth, Int8Options())
    assert _same_int8({"calibration": "max", "alpha": 0.9, "keep_fp": []}, Int8Options(alpha=0.5))  # alpha: SmoothQuant's
