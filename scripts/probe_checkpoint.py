"""Quick judge accuracy of a training checkpoint of the embedded model (a check during training, not the eval).

    python scripts/probe_checkpoint.py /tmp/run3/animals [--per-class 20] [--guidance 4.5]

Loads a folder written by scripts/train_animals.py, draws ``--per-class`` images for each class prompt
("a bear", ...) in one batched PyTorch loop (DPM-Solver++, the preset's steps and scheduler config,
classifier-free guidance, seeds fixed by one generator) and prints how often the shipped judge sees the
prompted class, overall and per class. `deltadit eval` is the measurement of record; this is for
watching a run.
"""

from __future__ import annotations

import argparse


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder")
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--guidance", type=float, default=None, help="default: the preset's")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import diffusers
    import torch
    from transformers import AutoTokenizer, T5EncoderModel

    from deltadit.eval.classifier import load_classifier, predict
    from deltadit.eval.data import CLASSES
    from deltadit.presets import load_preset
    from deltadit.runtime.loop import make_scheduler

    torch.set_num_threads(args.threads)
    preset = load_preset("animals")
    guidance = preset.guidance_scale if args.guidance is None else args.guidance
    tokenizer = AutoTokenizer.from_pretrained(f"{args.folder}/tokenizer")
    encoder = T5EncoderModel.from_pretrained(f"{args.folder}/text_encoder").eval()
    transformer = diffusers.PixArtTransformer2DModel.from_pretrained(f"{args.folder}/transformer").eval()

    def embed(prompts):
        t = tokenizer([q.lower().strip() for q in prompts], padding="max_length", max_length=preset.text_len,
                      truncation=True, return_tensors="pt")
        return encoder(t.input_ids, attention_mask=t.attention_mask)[0], t.attention_mask

    labels = torch.arange(len(CLASSES)).repeat_interleave(args.per_class)
    with torch.no_grad():
        cond, cond_mask = embed([f"a {CLASSES[i]}" for i in labels])
        uncond, uncond_mask = embed([""] * len(labels))
        sched = make_scheduler(preset.scheduler, preset.scheduler_config)
        sched.set_timesteps(preset.steps)
        x = torch.randn(len(labels), 1, 28, 28, generator=torch.Generator().manual_seed(0))
        for t in sched.timesteps:
            out = transformer(torch.cat([x, x]), encoder_hidden_states=torch.cat([uncond, cond]),
                              encoder_attention_mask=torch.cat([uncond_mask, cond_mask]),
                              timestep=t.expand(2 * len(x))).sample
            u, c = out.chunk(2)
            x = sched.step(u + guidance * (c - u), t, x).prev_sample
        pred = predict(load_classifier(), (x / 2 + 0.5).clamp(0, 1))
    acc = (pred == labels).float().mean().item()
    per_class = " ".join(f"{name} {(pred[labels == i] == i).float().mean().item():.2f}" for i, name in enumerate(CLASSES))
    print(f"{args.folder}: judge accuracy {acc:.3f} on {len(labels)} images (guidance {guidance}); {per_class}")


if __name__ == "__main__":
    main()
