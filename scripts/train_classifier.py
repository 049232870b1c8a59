"""Train the judge for class accuracy: a small CNN on animal-mnist's train split (first 900 per class).

    python scripts/train_classifier.py [--epochs 8]

Writes deltadit/weights/animals/classifier/model.safetensors and reports accuracy on the held-out test
split (the last 100 per class), which the evaluation requires to be >= 90%.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from deltadit.eval.classifier import AnimalClassifier, predict, weights_path
from deltadit.eval.data import split


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(weights_path()))
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    xtr, ytr = split("train")
    xte, yte = split("test")
    x = torch.from_numpy(xtr).float().div(255)[:, None]
    y = torch.from_numpy(ytr)
    model = AnimalClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = args.epochs * (len(x) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(args.seed)
    tic = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - 127, 128):
            idx = order[i:i + 128]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5  # silhouettes face either way
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            shift = torch.randint(-2, 3, (2,), generator=gen)
            xb = torch.roll(xb, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        acc = float((predict(model, xte) == torch.from_numpy(yte)).float().mean())
        print(f"epoch {epoch + 1}: loss {float(loss):.3f}, held-out accuracy {acc:.4f} ({time.perf_counter() - tic:.0f} s)")
    from safetensors.torch import save_file

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(out))
    (out.parent / "metrics.json").write_text(json.dumps({"held_out_accuracy": acc, "test_images": len(xte),
                                                         "epochs": args.epochs, "seed": args.seed,
                                                         "seconds": time.perf_counter() - tic}, indent=2))
    print(f"wrote {out}: held-out accuracy {acc:.4f} on {len(xte)} test images")
    # (the committed weights were trained when the test split still held 77 exact copies of training images;
    # tests/eval re-measures the accuracy on the deduplicated split)


if __name__ == "__main__":
    main()
