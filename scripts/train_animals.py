"""Train the embedded default model: a 12-block PixArt-α (diffusers PixArtTransformer2DModel, ada_norm_single,
cross-attention to caption embeddings) on animal-mnist silhouettes, in pixel space (1 x 28 x 28), with a
small T5 encoder (word-level vocabulary) trained jointly as its text encoder.

    pip install --no-deps animal-mnist
    python scripts/train_animals.py --out deltadit/weights/animals --steps 1600

Writes a diffusers pipeline folder (transformer/, text_encoder/, tokenizer/, scheduler/) plus
train_log.json (loss per step, seconds) and, with --samples, a sample grid. Reproducible: the seed fixes
the split, the weights' init, the batches, the noise and the caption templates.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from deltadit.eval.data import CLASSES, split

TEMPLATES = ("a {}", "a {}", "{}", "a photo of a {}", "a silhouette of a {}", "an animal: {}")
TEXT_LEN = 8
TRANSFORMER = dict(
    num_attention_heads=4, attention_head_dim=32, in_channels=1, out_channels=1, num_layers=12,
    cross_attention_dim=128, sample_size=28, patch_size=4, caption_channels=64, num_embeds_ada_norm=1000,
    norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    activation_fn="gelu-approximate", attention_bias=True,
)
TEXT_ENCODER = dict(d_model=64, d_kv=32, d_ff=128, num_layers=1, num_heads=2, relative_attention_num_buckets=8,
                    dropout_rate=0.0)
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in TEMPLATES for w in t.replace("{}", "").replace(":", " ").split()} | set(CLASSES))
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=TEXT_LEN)


def encode(tokenizer, text_encoder, prompts: list[str]):
    """Exactly what PixArtAlphaPipeline.encode_prompt does (lower-case, strip, pad to TEXT_LEN)."""
    tokens = tokenizer([p.lower().strip() for p in prompts], padding="max_length", max_length=TEXT_LEN,
                       truncation=True, add_special_tokens=True, return_tensors="pt")
    return text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0], tokens.attention_mask


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="deltadit/weights/animals")
    p.add_argument("--steps", type=int, default=1600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--cond-drop", type=float, default=0.1, help="probability of the empty caption (for CFG)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (AMX CPUs)")
    p.add_argument("--init", help="continue from this folder's transformer/ and text_encoder/ (its train_log.json is extended)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--snr-gamma", type=float, default=0.0,
                   help="Min-SNR-γ loss weighting (Hang et al., 2023): weight min(SNR, γ)/SNR per sample, which "
                        "shifts the ε-loss towards high-noise steps, where the class is decided; 0 = plain MSE")
    p.add_argument("--save-every", type=int, default=0,
                   help="also write the EMA weights and log to --out every this many steps (0: only at the end)")
    return p.parse_args(argv)


def build_models(args, tokenizer):
    """(transformer, text encoder) in train mode: fresh from the configs above, or continued from --init."""
    import diffusers
    from transformers import T5Config, T5EncoderModel

    if args.init:
        text_encoder = T5EncoderModel.from_pretrained(Path(args.init) / "text_encoder")
        transformer = diffusers.PixArtTransformer2DModel.from_pretrained(Path(args.init) / "transformer")
    else:
        text_encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), **TEXT_ENCODER))
        transformer = diffusers.PixArtTransformer2DModel(**TRANSFORMER)
    return transformer.train(), text_encoder.train()


def optimizer(args, params):
    """AdamW with a linear warm-up into a cosine decay over --steps."""
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))
    return opt, sched


def start_log(args) -> dict:
    """The training log; continuing from --init extends that folder's log (one loss curve across runs)."""
    log = {"args": vars(args), "loss": [], "seconds": []}
    if args.init and (Path(args.init) / "train_log.json").is_file():
        prev = json.loads((Path(args.init) / "train_log.json").read_text())
        log["previous_runs"] = prev.get("previous_runs", []) + [{"args": prev["args"], "steps": len(prev["loss"]) - prev.get("previous_loss_steps", 0),
                                                                 "seconds": prev["total_seconds"]}]
        log["loss"] = prev["loss"]
        log["previous_loss_steps"] = len(prev["loss"])
    return log


def batches(data, targets, args, gen):
    """Endless (x0, prompts) batches: reshuffled each epoch, mirrored half the time (silhouettes are
    left/right symmetric as a class), the caption dropped with probability --cond-drop (for CFG)."""
    order, cursor = torch.randperm(len(data), generator=gen), 0
    while True:
        if cursor + args.batch > len(order):
            order, cursor = torch.randperm(len(data), generator=gen), 0
        idx = order[cursor: cursor + args.batch]
        cursor += args.batch
        x0 = data[idx]
        if torch.rand((), generator=gen) < 0.5:
            x0 = x0.flip(-1)
        yield x0, [random.choice(TEMPLATES).format(CLASSES[int(c)]) if random.random() >= args.cond_drop else ""
                   for c in targets[idx]]


def loss_of(args, models, tokenizer, alphas, x0, prompts, gen):
    """The ε-prediction loss of one batch at random timesteps (Min-SNR-γ weighted with --snr-gamma)."""
    transformer, text_encoder = models
    t = torch.randint(0, len(alphas), (len(x0),), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    a = alphas[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        emb, mask = encode(tokenizer, text_encoder, prompts)
        pred = transformer(xt, encoder_hidden_states=emb, timestep=t, encoder_attention_mask=mask).sample
    per_sample = (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))
    if args.snr_gamma > 0:
        snr = alphas[t] / (1 - alphas[t])
        per_sample = per_sample * snr.clamp(max=args.snr_gamma) / snr
    return per_sample.mean()


def main(argv=None) -> None:
    import copy

    import diffusers

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    images, labels = split("train")  # the first 900 of each class; the last 100 are held out
    data = torch.from_numpy(images).float().div(127.5).sub(1).unsqueeze(1)  # [-1, 1]
    tokenizer = build_tokenizer()
    models = build_models(args, tokenizer)
    scheduler = diffusers.DDPMScheduler(**SCHEDULER)
    params = [p for m in models for p in m.parameters()]
    opt, sched = optimizer(args, params)
    emas = [copy.deepcopy(m).eval().requires_grad_(False) for m in models]
    gen = torch.Generator().manual_seed(args.seed)
    log, tic = start_log(args), time.perf_counter()
    data_iter = batches(data, torch.from_numpy(labels), args, gen)
    for step in range(args.steps):
        loss = loss_of(args, models, tokenizer, scheduler.alphas_cumprod, *next(data_iter), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for ema, live in zip(emas, models):
                for pe, pl in zip(ema.parameters(), live.parameters()):
                    pe.lerp_(pl, 1 - args.ema)
        log["loss"].append(float(loss))
        log["seconds"].append(time.perf_counter() - tic)  # this run's clock
        if step % 50 == 0 or step == args.steps - 1:
            recent = np.mean(log["loss"][-50:])  # (across runs when continuing)
            print(f"step {step:5d}  loss {recent:.4f}  {time.perf_counter() - tic:7.0f} s", flush=True)
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < args.steps:
            save(Path(args.out), *emas, tokenizer, scheduler, log, tic, completed=step + 1)
    save(Path(args.out), *emas, tokenizer, scheduler, log, tic, completed=args.steps)


def save(out: Path, ema_t, ema_e, tokenizer, scheduler, log: dict, tic: float, completed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ema_t.save_pretrained(out / "transformer")
    ema_e.save_pretrained(out / "text_encoder")
    tokenizer.save_pretrained(out / "tokenizer")
    scheduler.save_pretrained(out / "scheduler")
    (out / "classes.json").write_text(json.dumps(list(CLASSES)))
    log["total_seconds"] = time.perf_counter() - tic
    log["completed_steps"] = completed  # of this run's --steps (a checkpoint when smaller)
    (out / "train_log.json").write_text(json.dumps(log))
    print(f"wrote {out} after {completed} steps ({log['total_seconds'] / 60:.1f} min)", flush=True)


if __name__ == "__main__":
    main()
