"""The trade-off `deltadit tune` reports: the Pareto front of quality (PSNR to the reference) against cost
(MACs, measured latency), as a markdown table and a PNG with the paper-style baselines on the same axes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deltadit.tune.score import Score
from deltadit.tune.space import Candidate


@dataclass(frozen=True)
class Result:
    """A screened candidate. latency_s: measured loop time of one image on the chosen backend (None: not
    on the shortlist); speedup: the uncached FP32 reference's latency / latency_s."""

    candidate: Candidate
    score: Score
    latency_s: float | None = None
    speedup: float | None = None

    def to_dict(self) -> dict:
        c = self.candidate
        return {"name": c.name, "plan": c.plan.to_dict(), "int8": c.int8, "macs": c.macs, "macs_ratio": c.macs_ratio,
                "tags": list(c.tags), **self.score.to_dict(), "latency_s": self.latency_s, "speedup": self.speedup}


def front(results: list[Result], cost=lambda r: r.candidate.macs_ratio) -> list[Result]:
    """Results no other result beats on both axes (cost lower or equal and PSNR higher or equal, one
    strictly), cheapest first. Results whose ``cost`` is None are left out."""
    pts = [r for r in results if cost(r) is not None]
    out = []
    for r in pts:
        dominated = any(cost(o) <= cost(r) and o.score.psnr_db >= r.score.psnr_db
                        and (cost(o) < cost(r) or o.score.psnr_db > r.score.psnr_db) for o in pts)
        if not dominated:
            out.append(r)
    return sorted(out, key=cost)


def best_within(results: list[Result], min_psnr_db: float, min_accuracy: float | None = None,
                cost=lambda r: r.candidate.macs_ratio) -> Result | None:
    """The cheapest result whose PSNR to the reference is at least ``min_psnr_db`` (and judge accuracy at
    least ``min_accuracy`` where scored); None if none qualifies."""
    ok = [r for r in results if cost(r) is not None and r.score.psnr_db >= min_psnr_db
          and (min_accuracy is None or r.score.accuracy is None or r.score.accuracy >= min_accuracy)]
    return min(ok, key=lambda r: (cost(r), -r.score.psnr_db), default=None)


def table(results: list[Result], title: str) -> str:
    """Markdown: one row per result, with the front marked (vs MACs)."""
    on_front = {id(r) for r in front(results)}
    lines = [title, "", "| candidate | precision | MACs ratio | PSNR dB ↑ | SSIM ↑ | judge acc ↑ | latency s | measured "
             "speed-up | baseline | front |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r.candidate.macs_ratio, -r.score.psnr_db)):
        c, s = r.candidate, r.score
        psnr = "ref" if "reference" in c.tags and not c.int8 else f"{s.psnr_db:.1f}"
        lines.append(f"| {c.name} | {'int8' if c.int8 else 'fp32'} | {c.macs_ratio:.3f} | {psnr} | {s.ssim:.3f} | "
                     + ("—" if s.accuracy is None else f"{100 * s.accuracy:.0f}%") + " | "
                     + ("—" if r.latency_s is None else f"{r.latency_s:.3f}") + " | "
                     + ("—" if r.speedup is None else f"{r.speedup:.2f}x") + f" | {', '.join(c.tags) or ''} | "
                     + ("●" if id(r) in on_front else "") + " |")
    return "\n".join(lines) + "\n"


MARKERS = {"fewer-steps": ("s", "tab:blue"), "shallow": ("v", "tab:green"), "middle": ("D", "tab:olive"),
           "deep": ("^", "tab:purple"), "reference": ("*", "black")}


def plot(results: list[Result], path: Path, title: str) -> Path:
    """PNG: PSNR vs MACs ratio (left) and vs measured speed-up (right, shortlist only): every candidate in
    grey, the fronts as lines, the paper-style baselines (fewer steps, each fixed range) marked."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    axes_spec = ((axes[0], lambda r: r.candidate.macs_ratio, "block MACs / uncached reference (lower is cheaper)"),
                 (axes[1], lambda r: None if r.speedup is None else 1 / r.speedup,
                  "measured latency / uncached FP32 reference (lower is faster)"))
    for ax, cost, label in axes_spec:
        pts = [r for r in results if cost(r) is not None and "reference" not in r.candidate.tags]
        for int8, colour in ((False, "0.6"), (True, "tab:red")):
            sub = [r for r in pts if r.candidate.int8 == int8]
            ax.scatter([cost(r) for r in sub], [r.score.psnr_db for r in sub], s=14, c=colour, alpha=0.6,
                       label="INT8 candidates" if int8 else "FP32 candidates")
        f = [r for r in front(pts, cost)]
        ax.plot([cost(r) for r in f], [r.score.psnr_db for r in f], "-", c="tab:orange", lw=1.5, label="Pareto front")
        for tag, (marker, colour) in MARKERS.items():
            sub = sorted((r for r in pts if tag in r.candidate.tags and not r.candidate.int8), key=cost)
            if sub:
                ax.plot([cost(r) for r in sub], [r.score.psnr_db for r in sub], marker=marker, c=colour, ls="--"
                        if tag == "fewer-steps" else "", ms=7, label=tag)
        ax.set_xlabel(label)
        ax.set_ylabel("PSNR to the uncached FP32 reference, dB")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)



def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (its folder made) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
