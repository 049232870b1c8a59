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


def test_plan_max_group_blocks_splits_the_long_group(capsys):
    assert main(["plan", "--model", "pixart", "--max-group-blocks", "7", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["groups"] == [[0, 7], [7, 14], [14, 21], [21, 28]] and d["plan"]["cuts"] == [14]


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
    assert available() == ["animals", "dit-xl", "flux-dev", "flux-schnell", "pixart", "pixart-1024", "pixart-lcm",
                           "pixart-sigma", "sd3-medium"]
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


@pytest.mark.parametrize("argv,message", [
    (["plan", "--steps", "1000000000"], "--steps | 1000000000 is out of range. Expected: an integer in [1, 1000]."),
    (["plan", "--steps", "1e9"], "--steps | '1e9' is not an integer."),
    (["plan", "--budget", "0"], "--budget | '0' is out of range. Expected: a number in (0, 1]."),
    (["plan", "--variant", "fast"], "argument --variant: invalid choice: 'fast'"),
    (["plan", "--max-group-blocks", "0"], "--max-group-blocks | 0 is out of range. Expected: an integer in [1, 512]."),
    (["generate", "b", "--prompt", "a cat", "--guidance-scale", "inf"], "--guidance-scale | 'inf' is out of range."),
    (["generate", "b", "--prompt", "a cat", "--guidance-scale", "nan"], "--guidance-scale | 'nan' is out of range."),
    (["generate", "b", "--prompt", "a cat", "--seed", str(2**64)], f"--seed | {2**64} is out of range."),
    (["generate", "b", "--prompt", "a cat", "--out", "cat.jpg"], "--out | 'cat.jpg' does not end in .png."),
    (["check", "b", "--steps", "0"], "--steps | 0 is out of range."),
    (["eval", "--per-class", "100000"], "--per-class | 100000 is out of range. Expected: an integer in [1, 1000]."),
    (["eval", "--rows", "baseline,turbo"], "--rows | 'turbo' unknown."),
    (["eval", "--out", __file__], "is a file. Expected: a path under a folder."),
    (["bench", "--repeats", "0"], "--repeats | 0 is out of range."),
])
def test_bad_values_fail_at_parse_time_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert message in err


@pytest.mark.parametrize("command", ["plan", "check", "generate", "bench", "eval"])
def test_every_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exit.value.code == 0 and out.startswith(f"usage: deltadit {command}")
    if command == "bench":
        assert "--repeats" in out  # bench's own parser, not the stub
    if command == "generate":  # the embedded model's words, read from its preset
        assert all(word in " ".join(out.split()) for word in load_preset("animals").prompts)


@pytest.mark.parametrize("raised,code,line", [
    (DeltaDiTError("thing | broke. Expected: fixed."), 2, "error: thing | broke. Expected: fixed."),
    (KeyboardInterrupt(), 130, "interrupted"),
    (MemoryError(), 1, "error: out of memory."),
    (RuntimeError("boom\nsecond line"), 1, "error: internal error: RuntimeError: boom (run with --debug for the traceback)"),
])
def test_failures_end_in_one_line(raised, code, line, capsys, monkeypatch):
    def fail(args):
        raise raised

    monkeypatch.setattr("deltadit.cli.cmd_plan", fail)
    assert main(["plan"]) == code
    err = capsys.readouterr().err
    assert err.startswith(line) and err.count("\n") == 1
    assert main(["plan", "--debug"]) == code
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_unknown_prompt_warning():
    from deltadit.presets import unknown_prompt_warning

    warning = unknown_prompt_warning("animals", "a unicorn")
    assert warning.startswith("warning: prompt 'a unicorn' names none of the words") and "\n" not in warning
    assert "bear, bird, cat" in warning
    assert unknown_prompt_warning("animals", "A photo of a Giraffe.") is None
    assert unknown_prompt_warning("pixart", "a unicorn") is None  # open vocabulary: no word list
    assert unknown_prompt_warning("animals", None) is None  # class-conditional call


def test_resolution_override_names_the_multiple():
    with pytest.raises(DeltaDiTError, match=r"resolution \(--resolution\) \| 30 px is not a multiple of 16 "
                                            r"\(token side 2 x vae_scale 8\)"):
        load_preset("pixart").with_overrides(resolution=30)
    assert load_preset("animals").with_overrides(resolution=32).latent_side == 32


@pytest.mark.parametrize("field,value,match", [
    ("arch", "sd9", r"arch \| 'sd9' is not supported"),
    ("resolution", 10**6, r"resolution \(--resolution\) \| 1000000 is out of range"),
    ("text_len", 10**6, r"text_len \| 1000000 is out of range"),
    ("guidance_scale", float("inf"), r"guidance_scale \| inf is out of range"),
    ("scheduler", "heun", r"scheduler \| 'heun' is unknown. Expected: one of dpm-solver\+\+, euler, ddim, lcm"),
    ("scheduler_config", {"num_train_timesteps": 10**9}, r"num_train_timesteps \| 1000000000 is out of range"),
    ("decoder", "jpeg", r"decoder \| 'jpeg' is unknown"),
    ("transformer", {"num_layers": 10**6, "patch_size": 2}, r"num_layers \| 1000000 is out of range"),
    ("steps", 10**9, r"steps \| 1000000000 is not a valid step count"),
])
def test_preset_values_are_checked(field, value, match):
    with pytest.raises(DeltaDiTError, match=match):
        load_preset("pixart").with_overrides(**{field: value})


def test_preset_file_wrong_section_type(tmp_path):
    text = (load_preset.__globals__["resources"].files("deltadit.configs") / "animals.toml").read_text()
    bad = tmp_path / "mine.toml"
    bad.write_text('transformer = "pixart"\n' + text.replace("[transformer]", "[transformer_unused]"))
    with pytest.raises(DeltaDiTError, match=r"preset mine \| \[transformer\] is a str, not a table"):
        load_preset(str(bad))
    bad.write_text(text.replace("resolution = 28", "resolution = 30"))
    with pytest.raises(DeltaDiTError, match=r"resolution \(--resolution\) \| 30 px is not a multiple of 4"):
        load_preset(str(bad))
    bad.write_text("arch = [")
    with pytest.raises(DeltaDiTError, match=r"preset mine \| not valid TOML"):
        load_preset(str(bad))


def test_scheduler_names_are_the_runtime_ones():
    from deltadit.runtime.loop import SCHEDULERS
    from deltadit.schedulers import SCHEDULER_NAMES

    assert SCHEDULER_NAMES == tuple(SCHEDULERS)


def test_generate_warns_about_a_prompt_the_model_does_not_know(monkeypatch, capsys, tmp_path):
    import types

    bundle = types.SimpleNamespace(manifest=types.SimpleNamespace(model=types.SimpleNamespace(preset="animals")))
    monkeypatch.setattr("deltadit.runtime.load", lambda *a, **k: bundle)

    def generate(*args, **kwargs):  # stop here: the warning must come before the work
        raise KeyboardInterrupt

    monkeypatch.setattr("deltadit.runtime.generation.generate", generate)
    assert main(["generate", "b", "--prompt", "a unicorn", "--out", str(tmp_path / "u.png")]) == 130
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("warning: prompt 'a unicorn' names none of the words") and lines[1] == "interrupted"
    assert main(["generate", "b", "--prompt", "a zebra", "--out", str(tmp_path / "z.png")]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_model_flag_error_names_every_accepted_form(capsys):
    assert main(["plan", "--model", "sd9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Expected: a preset (animals, " in err
    assert ("a .toml path, a diffusers pipeline folder (with model_index.json) or transformer folder (with "
            "config.json), or a hub id already downloaded into the cache") in err
