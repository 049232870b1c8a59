"""The PyTorch runtime against unmodified diffusers pipelines and an independent Δ-Cache written here."""

import pytest
import torch
from diffusers import DiTPipeline, PixArtAlphaPipeline
from diffusers.utils.torch_utils import randn_tensor

from deltadit.errors import DeltaDiTError
from deltadit.models import spec_for
from deltadit.plan import VARIANTS, build_plan
from deltadit.runtime import DeltaDiTTransformer, denoise, make_scheduler, pytorch_executor
from tests.conftest import SCHEDULER_CONFIG, build_dit, build_pixart, build_vae

STEPS, BLOCKS = 6, 6


def pixart_pipe(transformer):
    pipe = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=build_vae(), transformer=transformer,
                               scheduler=make_scheduler("dpm-solver++", SCHEDULER_CONFIG))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dit_pipe(transformer):
    pipe = DiTPipeline(transformer=transformer, vae=build_vae(), scheduler=make_scheduler("dpm-solver++", SCHEDULER_CONFIG))
    pipe.set_progress_bar_config(disable=True)
    return pipe


torch.manual_seed(123)
TEXT, MASK = torch.randn(1, 5, 32), torch.tensor([[1, 1, 1, 1, 0.0]])
NEG, NEG_MASK = torch.randn(1, 5, 32), torch.tensor([[1, 1, 0, 0, 0.0]])
PIXART_KW = dict(negative_prompt=None, prompt_embeds=TEXT, prompt_attention_mask=MASK, negative_prompt_embeds=NEG,
                 negative_prompt_attention_mask=NEG_MASK, num_inference_steps=STEPS, guidance_scale=4.5,
                 height=8, width=8, output_type="latent", use_resolution_binning=False)
DIT_KW = dict(class_labels=[3], guidance_scale=4.0, num_inference_steps=STEPS, output_type="np")


def run_pixart_pipeline(transformer):
    return pixart_pipe(transformer)(generator=torch.Generator().manual_seed(7), **PIXART_KW).images


def run_dit_pipeline(transformer):
    return dit_pipe(transformer)(generator=torch.Generator().manual_seed(7), **DIT_KW).images


def standalone(model, plan):
    """deltadit's own loop (not the pipeline), started from the pipeline's noise."""
    spec, sched = spec_for(model), make_scheduler("dpm-solver++", SCHEDULER_CONFIG)
    sched.set_timesteps(plan.num_steps)
    g = torch.Generator().manual_seed(7)
    latents = randn_tensor((1, 4, 8, 8), generator=g, dtype=torch.float32) * sched.init_noise_sigma
    if spec.arch == "pixart":
        cond = {"encoder_hidden_states": TEXT, "encoder_attention_mask": MASK}
        uncond = {"encoder_hidden_states": NEG, "encoder_attention_mask": NEG_MASK}
        scale = 4.5
    else:
        cond, uncond, scale = {"class_labels": torch.tensor([3])}, {"class_labels": torch.tensor([1000])}, 4.0  # DiTPipeline null class
    return denoise(pytorch_executor(model, plan), spec, dict(model.config), sched, latents, cond, uncond, scale, generator=g)


def decode_like_dit_pipeline(vae, latents):
    samples = vae.decode(1 / vae.config.scaling_factor * latents).sample  # exactly as DiTPipeline
    return (samples / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()


# --- plan "none" is the unmodified pipeline, bit for bit ---------------------------------------------

@torch.no_grad()
@pytest.mark.parametrize("plan", [build_plan(STEPS, BLOCKS, 3, 3, 2, "none"), build_plan(STEPS, BLOCKS, 0, 3, 2)],
                         ids=["variant-none", "nc-0"])
def test_pixart_none_is_bitwise_pipeline(plan):
    ref = run_pixart_pipeline(build_pixart())
    assert torch.equal(run_pixart_pipeline(DeltaDiTTransformer(build_pixart(), plan)), ref)
    assert torch.equal(standalone(build_pixart(), plan), ref)


@torch.no_grad()
def test_dit_none_is_bitwise_pipeline():
    plan = build_plan(STEPS, BLOCKS, 3, 3, 2, "none")
    ref = run_dit_pipeline(build_dit())
    assert (run_dit_pipeline(DeltaDiTTransformer(build_dit(), plan)) == ref).all()
    assert (decode_like_dit_pipeline(build_vae(), standalone(build_dit(), plan)) == ref).all()


# --- Δ-DiT against an independent implementation ---------------------------------------------------

class HookDeltaCache:
    """Δ-Cache written directly on the unmodified transformer with forward hooks (independent of
    deltadit.plan / executor): its own schedule, its own bookkeeping. A cached step still computes the
    skipped blocks but throws their result away, replacing block e-1's output by h_in(s) + Δ."""

    def __init__(self, model, variant, n_c, b, interval=2):
        self.model, self.variant, self.n_c, self.b, self.interval = model, variant, n_c, b, interval
        self.t, self.inputs, self.deltas = 0, {}, {}
        n = len(model.transformer_blocks)
        self.range_at = lambda t: {
            "delta-dit": (n - n_c, n) if t <= b else (0, n_c),
            "opposite": (0, n_c) if t <= b else (n - n_c, n),
            "shallow": (0, n_c), "deep": (n - n_c, n), "middle": ((n - n_c) // 2, (n - n_c) // 2 + n_c),
        }[variant]
        model.register_forward_pre_hook(self.next_step)
        for i, blk in enumerate(model.transformer_blocks):
            blk.register_forward_pre_hook(lambda m, args, i=i: self.inputs.__setitem__(i, args[0]))
            blk.register_forward_hook(lambda m, args, out, i=i: self.after(i, out))
        self.outputs = []
        model.register_forward_hook(lambda m, a, out: self.outputs.append(out[0] if isinstance(out, tuple) else out.sample))

    def next_step(self, *_):
        self.t += 1

    def full(self):
        return (self.t - 1) % self.interval == 0 or self.variant == "none" or self.n_c == 0

    def after(self, i, out):
        if self.full():
            for s, e in {self.range_at(t) for t in range(self.t + 1, self.t + self.interval)}:
                if i == e - 1:
                    self.deltas[(s, e)] = out - self.inputs[s]
            return None
        s, e = self.range_at(self.t)
        if i == e - 1:
            return self.inputs[s] + self.deltas[(s, e)]
        return None


def record_outputs(model):
    outs = []
    model.register_forward_hook(lambda m, a, out: outs.append(out[0] if isinstance(out, tuple) else out.sample))
    return outs


@torch.no_grad()
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "none"])
@pytest.mark.parametrize("arch", ["pixart", "dit"])
def test_delta_dit_matches_independent_hooks_step_by_step(arch, variant):
    build, run = (build_pixart, run_pixart_pipeline) if arch == "pixart" else (build_dit, run_dit_pipeline)
    n_c, b = 3, 3
    reference = HookDeltaCache(build(), variant, n_c, b)
    ref_images = run(reference.model)

    plan = build_plan(STEPS, BLOCKS, n_c, b, 2, variant)
    wrapped = DeltaDiTTransformer(build(), plan)
    ours = record_outputs(wrapped)
    images = run(wrapped)

    assert len(ours) == len(reference.outputs) == STEPS
    for step, (a, r) in enumerate(zip(ours, reference.outputs)):
        assert torch.allclose(a, r, rtol=0, atol=1e-6), f"step {step + 1}: max diff {(a - r).abs().max()}"
    assert torch.allclose(torch.as_tensor(images), torch.as_tensor(ref_images), rtol=0, atol=1e-5)
    # Caching changed the result (the comparison above is not trivially between two uncached runs).
    assert not torch.allclose(torch.as_tensor(images), torch.as_tensor(run(build())), atol=1e-4)


@torch.no_grad()
def test_standalone_loop_equals_pipeline_dropin_with_caching():
    plan = build_plan(STEPS, BLOCKS, 3, 3, 2, "delta-dit")
    assert torch.equal(standalone(build_pixart(), plan), run_pixart_pipeline(DeltaDiTTransformer(build_pixart(), plan)))


@torch.no_grad()
def test_dropin_repeats_identically_across_generations():
    plan = build_plan(STEPS, BLOCKS, 3, 3, 2, "delta-dit")
    wrapped = DeltaDiTTransformer(build_pixart(), plan)
    first = run_pixart_pipeline(wrapped)
    assert wrapped.step_index == 0
    assert torch.equal(run_pixart_pipeline(wrapped), first)


@torch.no_grad()
def test_bf16_autocast_runs_the_plan():
    plan = build_plan(STEPS, BLOCKS, 3, 3, 2, "delta-dit")
    fp32 = run_pixart_pipeline(DeltaDiTTransformer(build_pixart(), plan))
    bf16 = run_pixart_pipeline(DeltaDiTTransformer(build_pixart(), plan, autocast=torch.bfloat16))
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    assert torch.allclose(bf16, fp32, atol=0.1 * fp32.abs().max().item())


# --- errors --------------------------------------------------------------------------------------

def test_cached_step_without_delta_is_an_error(pixart):
    plan = build_plan(STEPS, BLOCKS, 3, 3, 2)
    ex = pytorch_executor(pixart, plan)
    feeds = {"sample": torch.randn(1, 4, 8, 8), "timestep": torch.tensor([1]),
             "encoder_hidden_states": TEXT, "encoder_attention_mask": MASK}
    with pytest.raises(DeltaDiTError, match=r"step 1 \| cached step over blocks \[3,6\) has no Δ recorded"):
        ex.step(1, feeds)


def test_plan_for_other_block_count_is_an_error(pixart):
    with pytest.raises(DeltaDiTError, match=r"plan \| built for 28 blocks, but the transformer has 6"):
        DeltaDiTTransformer(pixart, build_plan(20, 28, 21, 12))


def test_scheduler_step_count_must_match_plan(pixart):
    plan = build_plan(STEPS, BLOCKS, 3, 3)
    sched = make_scheduler("dpm-solver++", SCHEDULER_CONFIG)
    sched.set_timesteps(10)
    with pytest.raises(DeltaDiTError, match=r"scheduler \| 10 timesteps set, but the plan has 6 steps"):
        denoise(pytorch_executor(pixart, plan), spec_for(pixart), dict(pixart.config), sched,
                torch.randn(1, 4, 8, 8), {"encoder_hidden_states": TEXT, "encoder_attention_mask": MASK})


def test_unknown_scheduler_named():
    with pytest.raises(DeltaDiTError, match=r"scheduler \| 'heun' is unknown. Expected: one of dpm-solver\+\+"):
        make_scheduler("heun")


@pytest.mark.parametrize("name", ["euler", "ddim"])
@torch.no_grad()
def test_other_schedulers_match_pipeline(name):
    plan = build_plan(STEPS, BLOCKS, 3, 3, 2, "none")
    pipe = pixart_pipe(build_pixart())
    pipe.scheduler = make_scheduler(name, SCHEDULER_CONFIG)
    ref = pipe(generator=torch.Generator().manual_seed(7), **PIXART_KW).images
    pipe.transformer = DeltaDiTTransformer(build_pixart(), plan)
    assert torch.equal(pipe(generator=torch.Generator().manual_seed(7), **PIXART_KW).images, ref)
