"""Export tiny random-weight PixArt / DiT bundles and run them on ONNX Runtime (CPU)."""

import json
import shutil

import pytest
import torch

pytest.importorskip("onnxruntime")

from deltadit import runtime
from deltadit.errors import DeltaDiTError
from deltadit.export.pipeline import export_bundle
from deltadit.plan import build_plan
from deltadit.presets import Preset
from deltadit.runtime import denoise, make_scheduler, pytorch_executor
from deltadit.export.load import load_transformer
from tests.conftest import DIT_TINY, PIXART_TINY, SCHEDULER_CONFIG

STEPS, BLOCKS = 20, 6


def tiny_preset(arch: str) -> Preset:
    cfg, text_len = (PIXART_TINY, 5) if arch == "pixart" else (DIT_TINY, 0)
    return Preset(name=f"tiny-{arch}", description="tiny", arch=arch, source="none", transformer=cfg, steps=STEPS,
                  b=12, nc=3, interval=2, variant="delta-dit", scheduler="dpm-solver++",
                  guidance_scale=4.5 if arch == "pixart" else 4.0, text_len=text_len, resolution=64,
                  scheduler_config=SCHEDULER_CONFIG)


def conditions(arch: str):
    g = torch.Generator().manual_seed(3)
    if arch == "pixart":
        mask = torch.ones(1, 5)
        mask[0, 4] = 0
        return ({"encoder_hidden_states": torch.randn(1, 5, 32, generator=g), "encoder_attention_mask": mask},
                {"encoder_hidden_states": torch.randn(1, 5, 32, generator=g), "encoder_attention_mask": torch.ones(1, 5)})
    return {"class_labels": torch.tensor([7])}, {"class_labels": torch.tensor([1000])}


def generate(executor, preset, config):
    from deltadit.models import get_spec

    sched = make_scheduler(preset.scheduler, preset.scheduler_config)
    sched.set_timesteps(STEPS)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(11))
    cond, uncond = conditions(preset.arch)
    with torch.no_grad():
        return denoise(executor, get_spec(preset.arch), config, sched, latents, cond, uncond, preset.guidance_scale)


@pytest.mark.parametrize("variant", ["none", "delta-dit", "shallow", "middle", "deep"])
@pytest.mark.parametrize("arch", ["pixart", "dit"])
def test_onnxrt_bundle_matches_pytorch_runtime(tiny_bundle, arch, variant):
    preset = tiny_preset(arch)
    plan = build_plan(STEPS, BLOCKS, 3, 12, 2, variant)
    out = tiny_bundle(arch, variant)  # exported once per session: later modules reuse these bundles
    assert not out.with_name(out.name + ".partial").exists() and tiny_bundle.reports[out].reused == []
    bundle = runtime.load(out)
    assert bundle.plan == plan and bundle.manifest.model.random_init is True

    model = load_transformer(preset, None, random_init=True, seed=0)
    ref = generate(pytorch_executor(model, plan), preset, dict(model.config))
    got = generate(bundle.executor(), preset, bundle.config)
    rel = ((got - ref).abs().max() / ref.abs().max()).item()
    assert rel <= 1e-4, f"relative error of final latents {rel:.2e}"


def test_bundle_runs_batch_one_and_uncached(tiny_bundle):
    """No CFG (batch 1) on a bundle traced at the CFG batch, and the --no-cache path."""
    preset = tiny_preset("dit")
    bundle = runtime.load(tiny_bundle("dit"))
    model = load_transformer(preset, None, random_init=True, seed=0)
    x, t, y = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.tensor([3])
    with torch.no_grad():
        ref = model(x, timestep=t, class_labels=y).sample
    got = bundle.uncached().step(0, {"sample": x, "timestep": t, "class_labels": y})["sample"]
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-5


@pytest.fixture
def good_bundle(tiny_bundle):
    return tiny_bundle("pixart")  # build_plan(STEPS, BLOCKS, 3, 12): the delta-dit plan; shared, copy() to change it


def copy(bundle, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def test_corrupted_segment_named(good_bundle, tmp_path):
    b = copy(good_bundle, tmp_path)
    data = b / "onnx" / "blocks_00_03.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(DeltaDiTError, match=r"blocks_00_03\.onnx\.data \| sha256 does not match the manifest"):
        runtime.load(b)


def test_missing_segment_named(good_bundle, tmp_path):
    b = copy(good_bundle, tmp_path)
    (b / "onnx" / "tail.onnx").unlink()
    with pytest.raises(DeltaDiTError, match=r"tail\.onnx \| missing \(segment tail\)"):
        runtime.load(b)


def test_newer_format_version(good_bundle, tmp_path):
    b = copy(good_bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["format_version"] = 99
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DeltaDiTError, match=r"format version 99 is not supported .* upgrade deltadit"):
        runtime.load(b)


def test_folder_without_manifest(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeltaDiTError, match=r"empty \| has no manifest\.json"):
        runtime.load(tmp_path / "empty")


def test_wrong_input_shape_named(good_bundle):
    bundle = runtime.load(good_bundle)
    feeds = {"sample": torch.randn(2, 4, 16, 16), "timestep": torch.tensor([1, 1]),
             "encoder_hidden_states": torch.randn(2, 5, 32), "encoder_attention_mask": torch.ones(2, 5)}
    with pytest.raises(DeltaDiTError, match=r"input sample of segment head \| shape \[2, 4, 16, 16\] does not match .*\['batch', 4, 8, 8\]"):
        bundle.executor().step(0, feeds)


def test_interrupted_export_leaves_no_bundle_and_rerun_reuses(tmp_path, monkeypatch):
    preset, plan, out = tiny_preset("pixart"), build_plan(STEPS, BLOCKS, 3, 12), tmp_path / "b"

    class Interrupted(RuntimeError):
        pass

    def fail(*args, **kwargs):
        raise Interrupted("killed during the check stage")

    import deltadit.export.onnx as onnx_stage

    monkeypatch.setattr(onnx_stage, "compare", fail)
    with pytest.raises(Interrupted):
        export_bundle(preset, plan, out, random_init=True, progress=False)
    assert not out.exists()
    with pytest.raises(DeltaDiTError, match="has no manifest.json"):
        runtime.load(tmp_path / "b.partial")

    monkeypatch.undo()
    report = export_bundle(preset, plan, out, random_init=True, progress=False)
    assert sorted(report.reused) == ["blocks_00_03", "blocks_03_06", "head", "tail"] and report.exported == []
    assert runtime.load(out).plan == plan and not (tmp_path / "b.partial").exists()

    # Changed weights (another seed) are not reused.
    report = export_bundle(preset, plan, tmp_path / "c", random_init=True, seed=1, progress=False)
    assert report.reused == []


def test_missing_weights_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DeltaDiTError, match=r"weights \| no PixArtTransformer2DModel weights found for .*Looked in: .*--random-init"):
        load_transformer(tiny_preset("pixart").with_overrides(source=str(tmp_path / "nowhere")), None, False)


def test_loads_a_local_diffusers_folder(tmp_path):
    from tests.conftest import build_dit

    model = build_dit(seed=5)
    model.save_pretrained(tmp_path / "m" / "transformer")
    loaded = load_transformer(tiny_preset("dit"), str(tmp_path / "m"), False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_pixart_bundle_batch_one(good_bundle):
    """The bundle is traced at the CFG batch (2); batch 1 (no guidance, e.g. LCM) must still be exact."""
    from tests.conftest import build_pixart

    model = build_pixart()  # random_init seed 0 == the bundle's weights
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    text, mask = torch.randn(1, 5, 32), torch.tensor([[1, 1, 1, 0, 0.0]])
    with torch.no_grad():
        ref = model(x, encoder_hidden_states=text, timestep=t, encoder_attention_mask=mask).sample
    got = runtime.load(good_bundle).uncached().step(
        0, {"sample": x, "timestep": t, "encoder_hidden_states": text, "encoder_attention_mask": mask})["sample"]
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_cli_check_runs_first_steps(good_bundle, capsys):
    from deltadit.cli import main

    assert main(["check", str(good_bundle)]) == 0
    out = capsys.readouterr().out
    assert "files and hashes OK" in out and "[RANDOM-INIT WEIGHTS]" in out
    assert "step 1 (full)" in out and "step 2 (cached [3,6))" in out and "finite=True" in out


def test_cli_export_tiny_preset(tmp_path, capsys):
    from deltadit.export.cli import main

    preset = tmp_path / "tiny.toml"
    preset.write_text(
        'arch = "dit"\n[plan]\nsteps = 4\nb = 2\nnc = 2\n[sampling]\nscheduler = "dpm-solver++"\n'
        'guidance_scale = 4.0\nresolution = 64\n[transformer]\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in DIT_TINY.items()))
    assert main(["--model", str(preset), "--random-init", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "RANDOM-INIT" in out and "segments exported: head, blocks_00_02, blocks_02_04, blocks_04_06, tail" in out
    # The summary states the plan's block MACs: 4 steps, b=2, N_c=2 of 6 -> steps 2 and 4 skip 2 blocks: 20/24.
    assert "plan: delta-dit, 4 steps, b=2, N_c=2, N=2" in out and "(bound 1.20x)" in out
    assert main(["--model", str(preset), "--out", str(tmp_path / "c"), "--weights", str(tmp_path / "none")]) == 2
    assert "weights | no DiTTransformer2DModel weights found" in capsys.readouterr().err


def test_split_groups_run_the_same_plan(tiny_bundle, tmp_path):
    """--max-group-blocks 1: every block its own segment, cached ranges spanning several; same steps, and
    final latents as the unsplit bundle and the PyTorch runtime."""
    from deltadit.plan import limit_group_blocks

    preset = tiny_preset("pixart")
    plan = limit_group_blocks(build_plan(STEPS, BLOCKS, 3, 12, 2), 1)
    export_bundle(preset, plan, tmp_path / "split", random_init=True, progress=False)
    split = runtime.load(tmp_path / "split")
    groups = [s.block_range for s in split.manifest.segments if s.kind == "group"]
    assert groups == [(i, i + 1) for i in range(BLOCKS)]
    assert split.plan.steps == runtime.load(tiny_bundle("pixart")).plan.steps
    assert any(s.cached and s.cached[1] - s.cached[0] > 1 for s in split.plan.steps)
    whole = generate(runtime.load(tiny_bundle("pixart")).executor(), preset, split.config)
    got = generate(split.executor(), preset, split.config)
    model = load_transformer(preset, None, random_init=True, seed=0)
    ref = generate(pytorch_executor(model, plan), preset, dict(model.config))
    assert ((got - whole).abs().max() / whole.abs().max()).item() <= 1e-5
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-4


def test_memory_arena_settings_give_the_same_latents(good_bundle):
    """The ONNX Runtime runner's CPU arena (shared by all sessions by default, per session, or off) changes
    where activations live, never the numbers; an unknown setting is named."""
    preset = tiny_preset("pixart")
    shared = runtime.load(good_bundle)
    assert shared.runner.memory_arena == "shared"
    ref = generate(shared.executor(), preset, shared.config)
    for arena in ("session", "off"):
        b = runtime.load(good_bundle, memory_arena=arena)
        assert torch.equal(generate(b.executor(), preset, b.config), ref), arena
    with pytest.raises(DeltaDiTError, match=r"memory_arena \| 'big' is unknown\. Expected: one of shared, session, off"):
        runtime.load(good_bundle, memory_arena="big")
