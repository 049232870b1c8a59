"""The cost model against the paper's MACs columns and against a count taken from real diffusers blocks."""

import pytest

from deltadit.costs import format_macs, plan_costs
from deltadit.models.spec import get_spec
from deltadit.plan import build_plan
from deltadit.presets import load_preset

T = 1e12


def macs(preset_name, **plan_overrides):
    p = load_preset(preset_name)
    kw = dict(num_steps=p.steps, num_blocks=p.transformer["num_layers"], n_c=p.nc, b=p.b, interval=p.interval,
              variant=p.variant)
    kw.update(plan_overrides)
    plan = build_plan(**kw)
    block = get_spec(p.arch).block_macs(p.transformer, p.text_len, p.resolution)
    return plan_costs(plan, block, p.cfg_batch)


# (preset, plan overrides, paper baseline MACs, paper plan MACs, source)
PAPER = [
    ("pixart-1024", dict(variant="none"), 85.651 * T, 85.651 * T, "Table 1, PixArt-α T=20"),
    ("pixart-1024", dict(num_steps=13, variant="none", b=12), 55.673 * T, 55.673 * T, "Table 1, PixArt-α T=13"),
    ("pixart-1024", dict(), 85.651 * T, 53.532 * T, "Table 1, Ours b=12"),
    ("pixart-1024", dict(variant="deep"), 85.651 * T, 53.532 * T, "Table 1, Δ-Cache deep"),
    ("dit-xl", dict(variant="none"), 4.579 * T, 4.579 * T, "Table 2, DiT-XL T=20"),
    ("dit-xl", dict(), 4.579 * T, 2.862 * T, "Table 2, Ours b=12"),
    ("pixart-lcm", dict(n_c=4), 8.565 * T, 7.953 * T, "Table 3, b=2 N_c=4"),
    ("pixart-lcm", dict(n_c=6), 8.565 * T, 7.647 * T, "Table 3, b=2 N_c=6"),
]


@pytest.mark.parametrize("preset,overrides,baseline,planned,source", PAPER, ids=[p[-1] for p in PAPER])
def test_paper_macs_within_half_percent(preset, overrides, baseline, planned, source):
    c = macs(preset, **overrides)
    if overrides.get("variant") == "none":
        assert c.plan_macs == c.baseline_macs
        assert abs(c.baseline_macs - planned) / planned < 0.005, format_macs(c.baseline_macs)
    else:
        assert abs(c.baseline_macs - baseline) / baseline < 0.005, format_macs(c.baseline_macs)
        assert abs(c.plan_macs - planned) / planned < 0.005, format_macs(c.plan_macs)


def test_speedup_bound_and_paths():
    c = macs("pixart-1024")
    assert c.speedup_bound == pytest.approx(1.6)
    assert c.path_macs["full"] == 4 * c.path_macs["cached [7,28)"] == 4 * c.path_macs["cached [0,21)"]
    assert c.cfg_batch == 2 and macs("pixart-lcm").cfg_batch == 1


torch = pytest.importorskip("torch")


def counted_block_macs(block, *args, args_batch=None, **kwargs):
    """Linear MACs of one real block's forward, per sample, counted with hooks (args_batch: the batch
    when the block is called with keywords only)."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        total += inp[0].numel() // inp[0].shape[-1] * mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in block.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        block(*args, **kwargs)
    for h in handles:
        h.remove()
    return total // (args_batch or args[0].shape[0])


def test_formula_matches_real_pixart_block(pixart):
    from deltadit.models import split
    from deltadit.plan import build_plan

    cfg = dict(pixart.config)
    s = split(pixart, build_plan(1, 6, 0).groups)
    x = torch.randn(2, 4, 8, 8)
    text = torch.randn(2, 7, cfg["caption_channels"])
    head = s.modules["head"](x, torch.tensor([10, 10]), text, torch.ones(2, 7))
    h, enc, temb, bias, _ = head
    counted = counted_block_macs(pixart.transformer_blocks[0], h, encoder_hidden_states=enc,
                                 encoder_attention_mask=bias, timestep=temb)
    assert counted == get_spec("pixart").block_macs(cfg, 7)


def test_formula_matches_real_dit_block(dit):
    cfg = dict(dit.config)
    h = dit.pos_embed(torch.randn(3, 4, 8, 8))
    counted = counted_block_macs(dit.transformer_blocks[0], h, timestep=torch.tensor([5, 5, 5]),
                                 class_labels=torch.tensor([1, 2, 3]))
    assert counted == get_spec("dit").block_macs(cfg, 0)


def test_formula_matches_real_sd3_blocks_including_dual_attention_and_the_last_block():
    from tests.conftest import SD35_TINY, build_sd3

    model = build_sd3(**SD35_TINY)  # blocks 0-1 dual attention, block 3 context_pre_only
    cfg = dict(model.config)
    h = model.pos_embed(torch.randn(2, 4, 8, 8))
    temb = model.time_text_embed(torch.tensor([5.0, 5.0]), torch.randn(2, 12))
    enc = torch.randn(2, 7, 16)
    counted = [counted_block_macs(blk, hidden_states=h, encoder_hidden_states=enc, temb=temb, args_batch=2)
               for blk in model.transformer_blocks]
    assert tuple(counted) == get_spec("sd3").block_macs(cfg, 7) and len(set(counted)) == 3


def test_formula_matches_real_flux_dual_and_single_blocks():
    from tests.conftest import build_flux

    model = build_flux()
    cfg = dict(model.config)
    ids = torch.cat([torch.zeros(6, 3), get_spec("flux").sampling_inputs(cfg, 8, 6, 3.5, 2)["img_ids"]])
    rotary = model.pos_embed(ids)
    h, enc, temb = torch.randn(2, 16, 16), torch.randn(2, 6, 16), torch.randn(2, 16)
    blocks = list(model.transformer_blocks) + list(model.single_transformer_blocks)
    counted = [counted_block_macs(blk, hidden_states=h, encoder_hidden_states=enc, temb=temb, image_rotary_emb=rotary,
                                  args_batch=2) for blk in blocks]
    assert tuple(counted) == get_spec("flux").block_macs(cfg, 6, 64)


def test_sd3_medium_reproduces_paper_table7():
    """Appendix B, Table 7: SD3 T = 28 -> 168.256T; Δ-DiT at 1.6x (N_c = 18 of 24, N = 2) -> 105.160T."""
    preset = load_preset("sd3-medium")
    costs = plan_costs(preset.plan(), preset.block_macs(), preset.cfg_batch)
    assert costs.baseline_macs == pytest.approx(168.256e12, rel=0.005)
    assert costs.plan_macs == pytest.approx(105.160e12, rel=0.005)
