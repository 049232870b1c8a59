"""Loss curve of scripts/train_animals.py from its train_log.json (raw per-step loss and a 50-step mean; runs
that continue an earlier one are marked, with their learning rate, objective and threads).

    python scripts/plot_loss.py deltadit/weights/animals/train_log.json docs/assets/animals-loss.png
"""

import json
import sys

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = json.load(open(sys.argv[1]))
loss = np.asarray(log["loss"])
smooth = np.convolve(loss, np.ones(50) / 50, mode="valid")
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(loss, lw=0.5, alpha=0.4, label="per step")
ax.plot(np.arange(49, len(loss)), smooth, lw=1.5, label="50-step mean")
ax.set_yscale("log")
ax.set_xlabel("step (batch 64)")
ax.set_ylabel("training loss")
runs = log.get("previous_runs", []) + [{"args": log["args"], "steps": len(loss) - log.get("previous_loss_steps", 0),
                                        "seconds": log["total_seconds"]}]
total = sum(r["seconds"] for r in runs)
ax.set_title(f"animals PixArt-α: {len(loss)} steps in {len(runs)} run(s), {total / 60:.0f} min of CPU training")
start = 0
for i, r in enumerate(runs):
    a = r["args"]
    objective = f"min-SNR γ={a['snr_gamma']:g}" if a.get("snr_gamma") else "plain ε-MSE"
    ax.text(start + 20, ax.get_ylim()[1], f"run {i + 1}: lr {a['lr']:g}, {objective}, {a['threads']} thr",
            fontsize=7, va="top", rotation=90)
    start += r["steps"]
    if i < len(runs) - 1:
        ax.axvline(start, color="grey", lw=0.8, ls="--")
ax.legend()
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=120)
print(f"final 50-step mean loss {smooth[-1]:.4f}")
