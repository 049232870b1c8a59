"""FLUX.1 (two streams through dual- and single-stream stages, distilled guidance, packed latents):
exact split, drop-in equal to FluxPipeline, every Δ-DiT variant equal to an independent hook cache,
including cached ranges that cross the stage boundary."""

import pytest
import torch
from diffusers import FluxPipeline

from deltadit.models import get_spec, split
from deltadit.plan import VARIANTS, build_plan
from deltadit.runtime import DeltaDiTTransformer, make_scheduler
from deltadit.errors import DeltaDiTError
from tests.conftest import FLUX_FLOW_CONFIG, build_flux, build_vae

STEPS, TEXT = 5, 6
SPEC = get_spec("flux")
torch.manual_seed(9)
EMB, POOLED = torch.randn(1, TEXT, 16), torch.randn(1, 12)
KW = dict(prompt_embeds=EMB, pooled_prompt_embeds=POOLED, num_inference_steps=STEPS, guidance_scale=3.5, height=8,
          width=8, output_type="latent")


def cuts(model):
    return SPEC.stage_cuts(dict(model.config))


def run_pipeline(transformer):
    pipe = FluxPipeline(transformer=transformer, scheduler=make_scheduler("flow-euler", FLUX_FLOW_CONFIG), vae=build_vae(),
                        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe(generator=torch.Generator().manual_seed(7), **KW).images


@torch.no_grad()
@pytest.mark.parametrize("guidance_embeds", [True, False], ids=["dev", "schnell"])
def test_split_is_bitwise_the_forward_and_cut_at_the_stage_boundary(guidance_embeds):
    model = build_flux(guidance_embeds=guidance_embeds)
    config = dict(model.config)
    assert SPEC.num_blocks(config) == 5 and cuts(model) == (2,)
    feeds = SPEC.example_inputs(config, 2, TEXT, 8, torch.Generator().manual_seed(0))
    ref = model(feeds["sample"], encoder_hidden_states=feeds["encoder_hidden_states"],
                pooled_projections=feeds["pooled_projections"], timestep=feeds["timestep"], img_ids=feeds["img_ids"],
                txt_ids=feeds["txt_ids"], guidance=feeds.get("guidance")).sample
    plan = build_plan(STEPS, 5, 3, 2, variant="shallow", cuts=cuts(model))  # range [0,3) spans the boundary
    assert [(g.start, g.stop) for g in plan.groups] == [(0, 2), (2, 3), (3, 5)]
    from deltadit.runtime import pytorch_executor

    none = build_plan(STEPS, 5, 0, 0, variant="none", cuts=cuts(model))
    assert torch.equal(pytorch_executor(model, none).step(0, feeds)["sample"], ref)
    with pytest.raises(DeltaDiTError, match=r"run across the model's stage boundary at block\(s\) \[2\]"):
        split(model, build_plan(STEPS, 5, 3, 2, variant="shallow").groups)


@torch.no_grad()
def test_plan_none_is_bitwise_the_flux_pipeline():
    ref = run_pipeline(build_flux())
    assert torch.equal(run_pipeline(DeltaDiTTransformer(build_flux(), build_plan(STEPS, 5, 0, 0, variant="none", cuts=(2,)))), ref)


class HookCache:
    """Independent two-stream Δ-Cache on the unmodified FLUX transformer (blocks of both stages in order)."""

    def __init__(self, model, variant, n_c, b, interval):
        blocks = list(model.transformer_blocks) + list(model.single_transformer_blocks)
        n = len(blocks)
        self.t, self.interval = 0, interval
        self.range_at = lambda t: {"delta-dit": (n - n_c, n) if t <= b else (0, n_c),
                                   "opposite": (0, n_c) if t <= b else (n - n_c, n), "shallow": (0, n_c),
                                   "deep": (n - n_c, n), "middle": ((n - n_c) // 2, (n - n_c) // 2 + n_c)}[variant]
        self.inputs, self.deltas = {}, {}
        model.register_forward_pre_hook(lambda *a: setattr(self, "t", self.t + 1))
        for i, blk in enumerate(blocks):
            blk.register_forward_pre_hook(lambda m, a, kw, i=i: self.inputs.__setitem__(
                i, (kw["encoder_hidden_states"], kw["hidden_states"])), with_kwargs=True)
            blk.register_forward_hook(lambda m, a, out, i=i: self.after(i, out))

    def after(self, i, out):
        if (self.t - 1) % self.interval == 0:
            for s, e in {self.range_at(t) for t in range(self.t + 1, self.t + self.interval)}:
                if i == e - 1:
                    self.deltas[(s, e)] = tuple(o - x for o, x in zip(out, self.inputs[s]))
            return None
        s, e = self.range_at(self.t)
        return tuple(x + d for x, d in zip(self.inputs[s], self.deltas[(s, e)])) if i == e - 1 else None


@torch.no_grad()
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "none"])
def test_every_variant_matches_an_independent_cache_across_the_stage_boundary(variant):
    n_c, b, interval = 3, 2, 2
    reference = build_flux()
    HookCache(reference, variant, n_c, b, interval)
    ref = run_pipeline(reference)
    plan = build_plan(STEPS, 5, n_c, b, interval, variant, cuts=(2,))
    got = run_pipeline(DeltaDiTTransformer(build_flux(), plan))
    assert (ref - got).abs().max() <= 1e-5
    assert not torch.equal(ref, run_pipeline(build_flux()))
