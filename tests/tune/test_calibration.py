"""INT8 calibration methods side by side (deltadit/tune/calibration.py): the --int8-calibrations syntax and
its one-line errors, calibration restricted to a range of steps, and the comparison on a tiny PixArt."""

import re

import numpy as np
import pytest
import torch

from deltadit.errors import DeltaDiTError
from deltadit.tune.calibration import Method, compare, parse_methods, score


def test_methods_parse_with_their_values_and_step_ranges(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    methods = parse_methods(f"max, percentile:99.9,percentile,smoothquant:0.8,max@late,bundle:{tmp_path}")
    assert [m.name for m in methods] == ["max", "percentile:99.9", "percentile:99.99", "smoothquant:0.8", "max@late",
                                         f"bundle:{tmp_path}"]
    assert methods[3].options(_options()).alpha == 0.8 and methods[1].options(_options()).percentile == 99.9
    assert methods[3].options(_options()).calibration == "smoothquant"


def _options():
    from deltadit.export.quantize import Int8Options

    return Int8Options(weight_bits=8)


def test_step_ranges_are_the_thirds_of_the_steps_and_partition_them():
    thirds = [Method("max", steps=s).step_range(20) for s in ("early", "middle", "late")]
    assert thirds == [range(0, 7), range(7, 13), range(13, 20)]
    assert Method("max").step_range(20) is None


@pytest.mark.parametrize("text, problem", [
    ("minmax", "--int8-calibrations | 'minmax': 'minmax' is unknown. Expected: one of max, percentile, smoothquant, bundle"),
    ("percentile:40", "--int8-calibrations percentile:40 | 40 is out of range. Expected: 50 < p <= 100 (e.g. 99.99)."),
    ("smoothquant:1.5", "--int8-calibrations smoothquant:1.5 | '1.5' is out of range. Expected: a finite number in [0.0, 1.0]"),
    ("percentile:abc", "--int8-calibrations percentile:abc | 'abc' is not a number."),
    ("max:3", "--int8-calibrations | 'max:3': max takes no value. Expected: max or max@RANGE."),
    ("max@noon", "--int8-calibrations | 'max@noon': step range 'noon' is unknown. Expected: @all, @early, @middle, @late."),
    ("max,max", "--int8-calibrations | 'max' is listed twice. Expected: each method once."),
    (" , ", "--int8-calibrations | no method given."),
    ("bundle:/nonexistent", "--int8-calibrations | 'bundle:/nonexistent': /nonexistent is not a bundle folder."),
])
def test_bad_methods_are_refused_in_one_line(text, problem):
    with pytest.raises(DeltaDiTError, match=re.escape(problem)) as info:
        parse_methods(text)
    assert "\n" not in str(info.value)


def test_every_bad_entry_is_reported_at_once():
    with pytest.raises(DeltaDiTError) as info:
        parse_methods("minmax,percentile:40,max")
    assert "'minmax' is unknown" in str(info.value) and "40 is out of range" in str(info.value)


def test_the_flag_refuses_a_bad_value_before_any_work_and_needs_int8(capsys, tmp_path):
    from deltadit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--int8", "--int8-calibrations", "percentile:40"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: --int8-calibrations percentile:40 | 40 is out of range. "
                                               "Expected: 50 < p <= 100 (e.g. 99.99).")
    assert main(["tune", "--int8-calibrations", "max", "--out", str(tmp_path)]) != 0
    assert "--int8-calibrations | given without --int8. Expected: --int8 --int8-calibrations" in capsys.readouterr().err


def test_the_search_calibration_flags_refuse_bad_values_before_any_work(capsys, tmp_path):
    """--int8-calibration / --smoothquant-alpha: the calibration the INT8 candidates of the search use."""
    from deltadit.cli import main

    for flags, error in ((["--smoothquant-alpha", "1.5"], "error: --smoothquant-alpha | 1.5 is out of range"),
                         (["--int8-calibration", "minmax"], "argument --int8-calibration: invalid choice: 'minmax'")):
        with pytest.raises(SystemExit) as exit_info:
            main(["tune", "--int8", *flags, "--out", str(tmp_path / "t")])
        assert exit_info.value.code == 2 and error in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_score_reads_per_image_psnr_and_the_latent_sqnr():
    reference = torch.zeros(2, 1, 4, 4)
    latents = reference.clone()
    latents[1] += 0.1  # image 1 off by 0.1 everywhere: PSNR 20 dB; image 0 exact: 100 dB

    def decode(x):
        return np.asarray(x)[:, 0]

    reference[:] = 1.0
    latents[:] += 1.0
    row = score(latents, reference, decode, "m")
    assert (row.psnr_min, row.psnr_max, row.psnr_median) == pytest.approx((20.0, 100.0, 60.0))
    assert row.sqnr_db == pytest.approx(10 * np.log10(32 / (16 * 0.01)))  # signal 32 · 1², noise 16 · 0.1²


# --- with ModelOpt, on a tiny PixArt ----------------------------------------------------------------------------

BLOCKS, STEPS = 1, 3


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("modelopt.torch.quantization")
    from deltadit.plan import build_plan
    from tests.conftest import PIXART_TINY, build_pixart
    from tests.export.test_bundle import tiny_preset

    preset = tiny_preset("pixart").with_overrides(steps=STEPS, b=1, nc=1,
                                                  transformer={**PIXART_TINY, "num_layers": BLOCKS})
    return preset, build_plan(STEPS, BLOCKS, 0, 0, 1, "none"), build_pixart(num_layers=BLOCKS)


def _latents(preset, plan, model):
    from deltadit.models import split
    from deltadit.runtime.executor import DeltaDiTExecutor
    from deltadit.runtime.runners.torch import TorchRunner
    from deltadit.runtime.sampling import from_preset, sample
    from tests.export.test_bundle import conditions

    cond, uncond = conditions("pixart")
    s = split(model, plan.groups)
    return sample(DeltaDiTExecutor(plan, s.segments, TorchRunner(s)), s.spec, s.config, from_preset(preset), cond,
                  uncond, [5, 6])


def _quantize(tiny, method: Method):
    from deltadit.tune.int8 import quantize_model
    from tests.export.test_bundle import conditions

    preset, plan, model = tiny
    return quantize_model(model, preset, plan, method.options(_options()), [conditions("pixart")],
                          method.step_range(plan.num_steps))


def _amax(model) -> dict[str, torch.Tensor]:
    return {n: m.amax.clone() for n, m in model.named_modules() if n.endswith("input_quantizer") and m.is_enabled}


@pytest.mark.slow  # ModelOpt calibration and fake-quantized generations: ~5 s each
def test_calibrating_on_some_steps_changes_the_scales_and_all_steps_is_the_ungated_calibration(tiny):
    everything = _amax(_quantize(tiny, Method("max")))
    gated_all = _amax(_quantize(tiny, Method("max", steps="all")))
    late = _amax(_quantize(tiny, Method("max", steps="late")))
    assert everything.keys() == late.keys() and len(everything) == 10 * BLOCKS
    assert all(torch.equal(everything[n], gated_all[n]) for n in everything)
    assert all((late[n] <= everything[n]).all() for n in everything)  # a max over fewer steps
    assert any((late[n] < everything[n]).any() for n in everything)


@pytest.mark.slow  # ModelOpt calibration and fake-quantized generations: ~5 s each
def test_comparison_has_one_row_per_method_and_a_far_too_low_percentile_ranks_last(tiny):
    preset, plan, model = tiny
    methods = parse_methods("percentile:51,max,smoothquant:0.5")
    reference = _latents(preset, plan, model)

    rows = compare(methods, lambda m: _latents(preset, plan, _quantize(tiny, m)), reference,
                   lambda x: (x / 2 + 0.5).clamp(0, 1).numpy())
    assert sorted(r.method for r in rows) == sorted(m.name for m in methods)
    assert rows[-1].method == "percentile:51", rows  # clips half of every activation's range
    assert rows[-1].sqnr_db < rows[0].sqnr_db - 6
