"""The report of `deltadit bench`: the markdown table and the bar chart."""

from __future__ import annotations

from pathlib import Path



def format_report(summary: dict) -> str:
    mem = any("peak_rss_mib" in r for r in summary["configs"].values())
    lines = ["| configuration | loop s, median (min–max) | vs " + summary["baseline"] + " | vs same backend uncached | MACs bound | full step s | cached steps s | overhead (step / Σ segments − 1) |"
             + (" peak RSS MiB |" if mem else ""), "|---|---|---|---|---|---|---|---|" + ("---|" if mem else "")]
    for name, r in summary["configs"].items():
        paths = r["paths_s"]
        full = paths.get("full", float("nan"))
        cached = ", ".join(f"{k.replace('cached ', '')} {v:.3f}" for k, v in paths.items() if k != "full") or "—"
        rt, seq = r.get("overhead_runtime", {}), r.get("overhead_segments_in_step", {})
        over = ", ".join(f"{k.replace('cached ', '')} {100 * v:+.1f}%" + (f" (runtime {100 * rt[k]:+.1f}%, segments in step "
                                                                          f"{100 * seq[k]:+.1f}%)" if k in rt else "")
                         for k, v in r.get("overhead_vs_segments", {}).items()) or "—"
        loop = (f"{r['loop_s']:.3f} ({r['loop_min_s']:.3f}–{r['loop_max_s']:.3f})" + (" est." if r["loop_estimated"] else "")
                if r["loop_s"] else "—")
        vb = r.get("speedup_vs_" + summary["baseline"])
        vs = r.get("speedup_vs_uncached_same_backend")
        mem = f" {r['peak_rss_mib']:.0f} |" if "peak_rss_mib" in r else ""
        lines.append(f"| {name} | {loop} | " + (f"{vb:.2f}x" if vb else "—") + " | " + (f"{vs:.2f}x" if vs and r['cached'] else "—")
                     + f" | {r['bound']:.2f}x | {full:.3f} | {cached} | {over} |{mem}")
    return "\n".join(lines) + "\n"


def chart(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in summary["configs"].items() if r["loop_s"]]
    speed = [summary["configs"][n]["speedup_vs_" + summary["baseline"]] for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.5))
    ax.barh(names[::-1], speed[::-1], color="#4878a8")
    for y, v in enumerate(speed[::-1]):
        ax.text(v, y, f" {v:.2f}x", va="center")
    ax.set_xlabel(f"denoising-loop speed-up vs {summary['baseline']} (median)")
    ax.axvline(1.0, color="k", lw=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
