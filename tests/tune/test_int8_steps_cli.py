"""`deltadit tune --int8 --int8-steps SAMPLES`: refusals before any work (the step analysis itself is tested
on a tiny model in test_int8_sensitivity.py)."""

import pytest

from deltadit.cli import main


def test_int8_steps_needs_int8(tmp_path, capsys):
    assert main(["tune", "--int8-steps", "5", "--out", str(tmp_path / "t")]) != 0
    assert "--int8-steps | given without --int8. Expected: --int8 --int8-steps SAMPLES" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_int8_steps_refuses_a_sample_count_out_of_range(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--int8", "--int8-steps", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --int8-steps | 0 is out of range. Expected: an integer in [1, 1000]."


def test_sensitivity_on_needs_a_sensitivity_run(tmp_path, capsys):
    assert main(["tune", "--int8", "--int8-sensitivity-on", "model", "--out", str(tmp_path / "t")]) != 0
    assert "--int8-sensitivity-on | given without --int8-sensitivity. Expected:" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
