"""OpenVINO runner: the bundle's ONNX segments compiled by OpenVINO run the plan like the PyTorch runtime
(final latents within the same 1e-4 relative tolerance as ONNX Runtime), for one- and two-stream models."""

import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

from deltadit import runtime
from deltadit.errors import DeltaDiTError
from deltadit.export.load import load_transformer
from deltadit.export.pipeline import export_bundle
from deltadit.presets import Preset
from deltadit.runtime import pytorch_executor
from deltadit.runtime.sampling import from_manifest, sample
from tests.conftest import FLOW_CONFIG, FLUX_FLOW_CONFIG, FLUX_TINY, SD3_TINY
from tests.export.test_bundle import tiny_preset

MMDIT = {"sd3": (SD3_TINY, FLOW_CONFIG, 5.0, 7), "flux": (FLUX_TINY, FLUX_FLOW_CONFIG, 3.5, 6)}


def preset_for(arch: str) -> Preset:
    if arch in MMDIT:
        cfg, sched, guidance, text_len = MMDIT[arch]
        return Preset(name=f"tiny-{arch}", description="tiny", arch=arch, source="", transformer=cfg, steps=8, b=4,
                      nc=2, interval=2, variant="delta-dit", scheduler="flow-euler", guidance_scale=guidance,
                      text_len=text_len, resolution=8, vae_scale=1, scheduler_config=sched).check()
    return tiny_preset(arch)


def bundle_for(arch: str, tmp_path, tiny_bundle):
    """The session's shared tiny bundle (pixart, dit: the preset's plan), or a fresh one (sd3, flux)."""
    if arch not in MMDIT:
        return tiny_bundle(arch)
    preset = preset_for(arch)
    export_bundle(preset, preset.plan(), tmp_path / "b", random_init=True, progress=False)
    return tmp_path / "b"


@pytest.mark.parametrize("arch", ["pixart", "dit", "sd3", "flux"])
def test_openvino_runs_the_plan_like_the_pytorch_runtime(tmp_path, tiny_bundle, arch):
    preset = preset_for(arch)
    plan = preset.plan()
    path = bundle_for(arch, tmp_path, tiny_bundle)
    bundle = runtime.load(path, backend="openvino", cache_dir=tmp_path / "cache")
    cond, uncond = bundle.spec.random_condition(bundle.config, preset.text_len, 1, 2, torch.Generator().manual_seed(2))
    setup = from_manifest(bundle.manifest)
    got = sample(bundle.executor(), bundle.spec, bundle.config, setup, cond, uncond, 5)
    model = load_transformer(preset, None, random_init=True, seed=0)
    ref = sample(pytorch_executor(model, plan, (bundle.manifest.export.latent_side // 2,) * 2), bundle.spec,
                 dict(model.config), setup, cond, uncond, 5)
    rel = float((got - ref).abs().max() / ref.abs().max())
    assert rel <= 1e-4, rel
    assert list((tmp_path / "cache").iterdir()), "compiled blobs go to the cache folder, not the bundle"
    assert not list(path.rglob("*.blob"))


def test_cli_check_on_openvino_and_bad_options(tiny_bundle, tmp_path, capsys, monkeypatch):
    from deltadit import cli

    monkeypatch.setenv("DELTADIT_CACHE", str(tmp_path / "cache"))
    bundle = tiny_bundle("dit")  # the preset's plan: delta-dit
    assert cli.main(["check", str(bundle), "--backend", "openvino"]) == 0
    assert "finite=True" in capsys.readouterr().out
    assert cli.main(["check", str(bundle), "--backend", "openvino", "--providers", "CPUExecutionProvider"]) == 2
    assert "--providers | applies to --backend onnxrt" in capsys.readouterr().err
    with pytest.raises(DeltaDiTError, match=r"precision \| 'fp8' is unknown for OpenVINO"):
        runtime.load(bundle, backend="openvino", precision="fp8")


def test_each_precision_compiles_into_its_own_cache_folder(tiny_bundle, tmp_path):
    """OpenVINO 2026.4 crashed in infer when one process compiled the same INT8 graph in f32 and then in bf16
    against one cache folder (PixArt-α 512 INT8 groups); each precision now has its own."""
    path = tiny_bundle("pixart")
    steps = {}
    for precision in ("f32", "bf16"):
        b = runtime.load(path, backend="openvino", precision=precision, cache_dir=tmp_path / "cache")
        steps[precision] = b.uncached().step(0, b.example_feeds())["sample"]
        assert list((tmp_path / "cache" / precision).iterdir())
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["bf16", "f32"]
    err = (steps["bf16"] - steps["f32"]).norm() / steps["f32"].norm()
    assert 0 < err < 0.1  # bf16 did run: measured 4.4e-2 relative on one step of this random-init tiny model
