"""SD3 / SD3.5 (two streams, context_pre_only last block): exact split, drop-in equal to
StableDiffusion3Pipeline, and every Δ-DiT variant equal to an independent two-stream Δ-Cache."""

import pytest
import torch
from diffusers import StableDiffusion3Pipeline

from deltadit.models import get_spec, split
from deltadit.plan import VARIANTS, build_plan
from deltadit.runtime import DeltaDiTTransformer, denoise, make_scheduler, pytorch_executor
from tests.conftest import FLOW_CONFIG, SD35_TINY, build_sd3, build_vae

STEPS, BLOCKS, TEXT = 6, 4, 7
torch.manual_seed(5)
EMB, POOLED = torch.randn(1, TEXT, 16), torch.randn(1, 12)
NEG, NEG_POOLED = torch.randn(1, TEXT, 16), torch.randn(1, 12)
KW = dict(prompt_embeds=EMB, pooled_prompt_embeds=POOLED, negative_prompt_embeds=NEG,
          negative_pooled_prompt_embeds=NEG_POOLED, num_inference_steps=STEPS, guidance_scale=5.0, height=8, width=8,
          output_type="latent")


def run_pipeline(transformer):
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=make_scheduler("flow-euler", FLOW_CONFIG),
                                    vae=build_vae(), text_encoder=None, tokenizer=None, text_encoder_2=None,
                                    tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    pipe.vae_scale_factor = 1  # the one-level test VAE
    pipe.set_progress_bar_config(disable=True)
    return pipe(generator=torch.Generator().manual_seed(7), **KW).images


@torch.no_grad()
@pytest.mark.parametrize("config", [{}, SD35_TINY], ids=["sd3", "sd3.5-dual-attention-qk-norm"])
def test_split_is_bitwise_the_forward(config):
    model = build_sd3(**config)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([900.0, 13.0])
    enc, pooled = torch.randn(2, TEXT, 16), torch.randn(2, 12)
    ref = model(x, encoder_hidden_states=enc, pooled_projections=pooled, timestep=t).sample
    for plan in (build_plan(STEPS, BLOCKS, 2, 3), build_plan(STEPS, BLOCKS, 3, 3, variant="shallow")):
        s = split(model, plan.groups)
        last = s.segments[-2]
        assert last.block_range[1] == BLOCKS and last.outputs == ("hidden_states",)  # context stream ends
        got = pytorch_executor(model, build_plan(STEPS, BLOCKS, 0, 0, variant="none")).step(0, {
            "sample": x, "timestep": t, "encoder_hidden_states": enc, "pooled_projections": pooled})["sample"]
        assert torch.equal(got, ref)


@torch.no_grad()
def test_plan_none_is_bitwise_the_sd3_pipeline_and_the_standalone_loop():
    from diffusers.utils.torch_utils import randn_tensor

    ref = run_pipeline(build_sd3())
    plan = build_plan(STEPS, BLOCKS, 2, 3, variant="none")
    assert torch.equal(run_pipeline(DeltaDiTTransformer(build_sd3(), plan)), ref)
    sched = make_scheduler("flow-euler", FLOW_CONFIG)
    sched.set_timesteps(STEPS)
    latents = randn_tensor((1, 4, 8, 8), generator=torch.Generator().manual_seed(7), dtype=torch.float32)
    model = build_sd3()
    got = denoise(pytorch_executor(model, plan), get_spec("sd3"), dict(model.config), sched, latents,
                  {"encoder_hidden_states": EMB, "pooled_projections": POOLED},
                  {"encoder_hidden_states": NEG, "pooled_projections": NEG_POOLED}, 5.0)
    assert torch.equal(got, ref)


class TwoStreamHookCache:
    """Δ-Cache on the unmodified SD3 transformer with forward hooks, written independently of deltadit's
    plan and executor: a cached step computes every block but replaces block e-1's output streams by
    (stream at block s's input) + Δ; the context stream, which the last block does not return, has none."""

    def __init__(self, model, variant, n_c, b, interval=2):
        self.t, self.interval, self.variant, self.n_c = 0, interval, variant, n_c
        n = len(model.transformer_blocks)
        self.range_at = lambda t: {"delta-dit": (n - n_c, n) if t <= b else (0, n_c),
                                   "opposite": (0, n_c) if t <= b else (n - n_c, n), "shallow": (0, n_c),
                                   "deep": (n - n_c, n), "middle": ((n - n_c) // 2, (n - n_c) // 2 + n_c)}[variant]
        self.inputs, self.deltas = {}, {}
        model.register_forward_pre_hook(lambda *a: setattr(self, "t", self.t + 1))
        for i, blk in enumerate(model.transformer_blocks):
            blk.register_forward_pre_hook(lambda m, a, kw, i=i: self.inputs.__setitem__(
                i, (kw["encoder_hidden_states"], kw["hidden_states"])), with_kwargs=True)
            blk.register_forward_hook(lambda m, a, out, i=i: self.after(i, out))

    def full(self):
        return (self.t - 1) % self.interval == 0

    def after(self, i, out):
        if self.full():
            for s, e in {self.range_at(t) for t in range(self.t + 1, self.t + self.interval)}:
                if i == e - 1:
                    self.deltas[(s, e)] = tuple(None if o is None else o - x for o, x in zip(out, self.inputs[s]))
            return None
        s, e = self.range_at(self.t)
        if i != e - 1:
            return None
        return tuple(None if d is None else x + d for x, d in zip(self.inputs[s], self.deltas[(s, e)]))


@torch.no_grad()
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "none"])
def test_every_variant_matches_an_independent_two_stream_cache_step_by_step(variant):
    n_c, b, interval = 2, 3, 3  # N = 3: each full step records the ranges of the two cached steps after it
    reference = build_sd3()
    TwoStreamHookCache(reference, variant, n_c, b, interval)
    ref_out, got_out = [], []
    reference.register_forward_hook(lambda m, a, out: ref_out.append(out[0]))
    ref = run_pipeline(reference)
    wrapped = DeltaDiTTransformer(build_sd3(), build_plan(STEPS, BLOCKS, n_c, b, interval, variant))
    wrapped.register_forward_hook(lambda m, a, out: got_out.append(out[0]))
    got = run_pipeline(wrapped)
    assert len(ref_out) == len(got_out) == STEPS
    for step, (r, g) in enumerate(zip(ref_out, got_out)):
        assert (r - g).abs().max() <= 1e-6, f"step {step + 1}"
    assert (ref - got).abs().max() <= 1e-5
    assert not torch.equal(ref, run_pipeline(build_sd3()))  # the cache really changed the result
