"""deltadit-export's command line: every value checked before any work, one-line errors with their exit
codes, weights problems named, stdout only the summary."""

import json
import re

import pytest

pytest.importorskip("onnxruntime")

from deltadit.errors import DeltaDiTError
from deltadit.export.cli import main
from deltadit.export.load import load_transformer
from tests.conftest import DIT_TINY, build_dit, build_pixart
from tests.export.test_bundle import tiny_preset


def write_tiny_toml(folder):
    """A tiny DiT preset (6 blocks, 64 px, patch 2 x VAE 8): a CLI export takes a second or two."""
    path = folder / "tiny.toml"
    path.write_text(
        'arch = "dit"\n[plan]\nsteps = 4\nb = 2\nnc = 2\n[sampling]\nscheduler = "dpm-solver++"\n'
        'guidance_scale = 4.0\nresolution = 64\n[transformer]\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in DIT_TINY.items()))
    return path


def run_cli(capsys, *argv):
    """(exit code, stdout, stderr) of deltadit-export."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


PROGRESS = re.compile(r"^(\[\d+/\d+\] .+|[\w ]+: \d+(/\d+)? \w+, [\d.]+ s)$")  # deltadit.console, in a log


def one_error_line(err: str) -> str:
    """The error line, after checking that it is the only line besides progress."""
    *before, last = err.strip().splitlines()
    assert last.startswith("error: ") and all(PROGRESS.match(line) for line in before) and "Traceback" not in err, err
    return last


BAD_VALUES = [
    (["--resolution", "30"], r"--resolution \| 30 is not a multiple of 16 \(patch size 2 x VAE factor 8\)"),
    (["--resolution", "-28"], r"--resolution \| -28 is out of range\. Expected: an integer in \[16, 8192\]"),
    (["--resolution", "100000"], r"--resolution \| 100000 is out of range"),
    (["--max-batch", "-5"], r"--max-batch \| -5 is out of range\. Expected: an integer in \[2, 256\]"),
    (["--seed", str(2**64)], r"--seed \| 18446744073709551616 is out of range"),
    (["--opset", "9"], r"--opset \| 9 is out of range\. Expected: an integer in \[14, 21\]"),
    (["--int8-min-sqnr", "nan"], r"--int8-min-sqnr \| nan is out of range\. Expected: a finite number"),
    (["--calib-count", "100000"], r"--calib-count \| 100000 is out of range\. Expected: an integer in \[1, 1000\]"),
    (["--percentile", "0"], r"--percentile \| 0\.0 is out of range\. Expected: 50 < p <= 100"),
    (["--smoothquant-alpha", "1.5"], r"--smoothquant-alpha \| 1\.5 is out of range\. Expected: a finite number in \[0\.0, 1\.0\]"),
    (["--calibration", "entropy"], r"--calibration \| 'entropy' is unknown\. Expected: one of max, percentile, smoothquant"),
]


def test_bad_values_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import deltadit.export.pipeline as pipeline

    monkeypatch.setattr(pipeline, "load", lambda *a, **k: pytest.fail("the export started"))
    toml = write_tiny_toml(tmp_path)
    for flags, message in BAD_VALUES:
        code, out, err = run_cli(capsys, "--model", toml, "--random-init", "--out", tmp_path / "b", *flags)
        assert code == 2 and out == "", flags
        assert re.search(message, one_error_line(err)), (flags, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]


def test_stdout_is_the_summary_and_third_party_noise_is_hidden(tmp_path, capsys):
    code, out, err = run_cli(capsys, "--model", write_tiny_toml(tmp_path), "--random-init", "--out", tmp_path / "b")
    assert code == 0 and out.startswith(f"bundle: {tmp_path / 'b'}")
    assert "Warning" not in out + err and "stages" not in out and "[1/6] load" in err


def test_internal_error_is_one_line_and_traceback_only_with_debug(tmp_path, capsys, monkeypatch):
    import deltadit.export.pipeline as pipeline

    def boom(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(pipeline, "split_and_trace", boom)
    argv = ["--model", write_tiny_toml(tmp_path), "--random-init", "--out", tmp_path / "b"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 1 and one_error_line(err) == (f"error: internal error: RuntimeError: boom second line; removed "
                                                 f"{tmp_path / 'b.partial'} (run with --debug for the traceback)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]  # no .partial, no .lock
    code, _, err = run_cli(capsys, *argv, "--debug")
    assert code == 1 and "Traceback (most recent call last)" in err and 'raise RuntimeError("boom' in err


def test_memory_error_is_one_line(tmp_path, capsys, monkeypatch):
    import deltadit.export.pipeline as pipeline

    def oom(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(pipeline, "load", oom)
    code, _, err = run_cli(capsys, "--model", write_tiny_toml(tmp_path), "--random-init", "--out", tmp_path / "b")
    assert code == 1 and one_error_line(err).startswith("error: out of memory. Expected: more free memory")


def _save(folder, model):
    model.save_pretrained(folder / "transformer")
    return folder / "transformer"


def _truncate(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


def test_weights_problems_are_named(tmp_path):
    cases = []  # (preset arch, weights folder, message)
    t = _save(tmp_path / "config", build_dit())
    _truncate(t / "config.json", 30)
    cases.append(("dit", t.parent, r"config\.json is not readable JSON"))
    t = _save(tmp_path / "weights", build_dit())
    _truncate(t / "diffusion_pytorch_model.safetensors", 1000)
    cases.append(("dit", t.parent, r"could not be loaded as DiTTransformer2DModel .* invalid, truncated or corrupt"))
    t = _save(tmp_path / "missing", build_dit())
    (t / "diffusion_pytorch_model.safetensors").unlink()
    cases.append(("dit", t.parent, r"has config\.json but no weights file"))
    cases.append(("pixart", _save(tmp_path / "dit", build_dit()).parent,
                  r"holds a DiTTransformer2DModel, not the PixArtTransformer2DModel this model preset needs"))
    t = _save(tmp_path / "mixed", build_dit())
    build_pixart().save_pretrained(tmp_path / "pixart")
    (t / "diffusion_pytorch_model.safetensors").write_bytes((tmp_path / "pixart" / "diffusion_pytorch_model.safetensors").read_bytes())
    cases.append(("dit", t.parent, r"do not match its config\.json \(\d+ missing, \d+ unexpected tensors"))
    for arch, folder, message in cases:
        with pytest.raises(DeltaDiTError, match=rf"^weights {re.escape(str(folder / 'transformer'))} \| {message}") as e:
            load_transformer(tiny_preset(arch), str(folder), random_init=False)
        assert "\n" not in str(e.value)


def test_cli_names_weights_of_another_architecture(tmp_path, capsys):
    folder = _save(tmp_path / "m", build_pixart()).parent
    code, _, err = run_cli(capsys, "--model", write_tiny_toml(tmp_path), "--weights", folder, "--out", tmp_path / "b")
    assert code == 2 and "holds a PixArtTransformer2DModel, not the DiTTransformer2DModel" in one_error_line(err)
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.partial").exists()
