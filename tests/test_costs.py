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


def counted_block_macs(block, *args, **kwargs):
    """Linear MACs of one real block's forward, per sample, counted with hooks."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        total += inp[0].numel() // inp[0].shape[-1] * mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in block.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        block(*args, **kwargs)
    for h in handles:
        h.remove()
    return total // args[0].shape[0]


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
