"""Bring your own model, every architecture: `deltadit-export --model <folder>` (no other flag but the
output folder; FLUX's tiny folder also names a resolution, since a FLUX folder does not carry one and the
1024 px default is too large for a test) writes a bundle that `deltadit check` passes, FP32 and INT8."""

import pytest

pytest.importorskip("onnxruntime")

from deltadit import cli, runtime
from deltadit.export import cli as export_cli
from tests.conftest import (FLOW_CONFIG, FLUX_FLOW_CONFIG, SCHEDULER_CONFIG, build_dit, build_flux,
                            build_pixart, build_sd3)
from tests.test_presets import pipeline_folder

MODELS = {
    "pixart": (build_pixart, "PixArtAlphaPipeline", "DPMSolverMultistepScheduler", SCHEDULER_CONFIG, []),
    "dit": (build_dit, "DiTPipeline", "DPMSolverMultistepScheduler", SCHEDULER_CONFIG, []),
    "sd3": (build_sd3, "StableDiffusion3Pipeline", "FlowMatchEulerDiscreteScheduler", FLOW_CONFIG, []),
    "flux": (build_flux, "FluxPipeline", "FlowMatchEulerDiscreteScheduler", FLUX_FLOW_CONFIG, ["--resolution", "16"]),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("byo")
    return {arch: pipeline_folder(root / f"my-{arch}", build(), pipe, sched, cfg, vae_levels=1)
            for arch, (build, pipe, sched, cfg, _) in MODELS.items()}


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_export_any_model_folder_and_check_it(folders, tmp_path, arch, int8, capsys):
    if int8:
        pytest.importorskip("modelopt.torch.quantization")
    out = tmp_path / "bundle"
    argv = ["--model", str(folders[arch]), "--out", str(out), *MODELS[arch][4]] + (["--int8"] if int8 else [])
    assert export_cli.main(argv) == 0, capsys.readouterr().err
    bundle = runtime.load(out)
    m = bundle.manifest
    assert m.model.arch == arch and m.precision == ("int8" if int8 else "fp32")
    assert m.plan.num_blocks == bundle.spec.num_blocks(m.model.config)
    assert m.plan.n_c == int(0.75 * m.plan.num_blocks + 0.5)  # the paper's fraction, scaled to the folder's blocks
    assert m.driver.streams == bundle.spec.streams
    if int8:
        assert m.int8["quantized"] and all(q["sqnr_db"] > 15 for q in m.int8["quality"].values())
    assert cli.main(["check", str(out)]) == 0
    assert "finite=True" in capsys.readouterr().out
