import json
import subprocess
import sys

import pytest

from deltadit.cli import main
from deltadit.presets import available, load_preset
from deltadit.errors import DeltaDiTError


def test_plan_table_reproduces_paper_table1(capsys):
    assert main(["plan", "--model", "pixart-1024", "--steps", "20", "--b", "12", "--nc", "21"]) == 0
    out = capsys.readouterr().out
    assert "blocks_00_07: blocks [0,7)" in out and "blocks_07_21: blocks [7,21)" in out and "blocks_21_28" in out
    assert "   12  cached [7,28)" in out and "   14  cached [0,21)" in out
    assert "baseline           85.590T" in out and "plan               53.494T" in out
    assert "speed-up bound      1.600x" in out


def test_plan_json_and_flags_override_preset(capsys):
    assert main(["plan", "--model", "dit-xl", "--nc", "14", "--variant", "middle", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["plan"]["n_c"] == 14 and d["plan"]["variant"] == "middle" and d["plan"]["b"] == 12
    assert d["groups"] == [[0, 7], [7, 21], [21, 28]]
    assert d["macs"]["ratio"] == pytest.approx((10 * 28 + 10 * 14) / 560)


def test_plan_budget(capsys):
    assert main(["plan", "--model", "pixart-lcm", "--budget", str(100 / 112), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["plan"]["interval"], d["plan"]["n_c"]) == (2, 6)


def test_bad_flags_exit_2_with_named_parameter(capsys):
    assert main(["plan", "--model", "pixart", "--nc", "29"]) == 2
    assert "nc (N_c) | 29 is out of range for a model with 28 blocks" in capsys.readouterr().err
    assert main(["plan", "--model", "sd9"]) == 2
    assert "model | 'sd9' is not a preset" in capsys.readouterr().err
    assert main(["plan", "--model", "pixart", "--budget", "0.6", "--nc", "3"]) == 2
    assert "--budget | chooses N and N_c itself" in capsys.readouterr().err


def test_presets_carry_the_paper_settings():
    assert available() == ["animals", "dit-xl", "pixart", "pixart-1024", "pixart-lcm"]
    lcm = load_preset("pixart-lcm")
    assert (lcm.steps, lcm.b, lcm.nc, lcm.cfg_batch, lcm.scheduler) == (4, 2, 4, 1, "lcm")
    px = load_preset("pixart")
    assert (px.steps, px.b, px.nc, px.interval, px.resolution, px.transformer["sample_size"]) == (20, 12, 21, 2, 512, 64)


def test_preset_file_missing_key(tmp_path):
    bad = tmp_path / "mine.toml"
    bad.write_text('arch = "pixart"\n[plan]\nsteps = 4\n')
    with pytest.raises(DeltaDiTError, match=r"preset mine \| missing key 'b'|preset mine \| missing key 'sampling'"):
        load_preset(str(bad))


def test_console_script_help_is_fast_and_imports_no_torch():
    code = "import sys; from deltadit.cli import main; main(['plan', '--model', 'pixart']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")
