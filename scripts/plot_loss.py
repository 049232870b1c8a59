"""Loss curve of scripts/train_animals.py from its train_log.json (raw per-step loss and a 50-step mean).

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
ax.set_ylabel("ε-prediction MSE")
total = log["total_seconds"] + sum(r["seconds"] for r in log.get("previous_runs", []))
runs = len(log.get("previous_runs", [])) + 1
ax.set_title(f"animals PixArt-α: {len(loss)} steps in {runs} run(s), {total / 60:.0f} min on 1 CPU thread")
for r in log.get("previous_runs", []):
    ax.axvline(r["steps"], color="grey", lw=0.8, ls="--")
ax.legend()
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=120)
print(f"final 50-step mean loss {smooth[-1]:.4f}")
