"""Peak RSS of an export, per stage (Linux):

    PYTHONPATH=. .venv/bin/python benchmarks/export_memory.py --model pixart --int8 --calib-count 1
    PYTHONPATH=. .venv/bin/python benchmarks/export_memory.py --model pixart --layers 4 --int8 --calib-count 1

Exports the preset (random init unless it is the embedded model, as benchmarks/matrix.py does) into
--out and prints, per export stage, the process's peak RSS while that stage ran (VmHWM, reset at each
stage start through /proc/self/clear_refs) and its RSS when the stage ended, then the whole export's
peak and time. --json also records the bundle's file hashes, so two runs (before / after a change to the
export) can be compared for bit-identical output.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class StageMemory:
    """Wraps deltadit.console.Stages.start: at every stage boundary the previous stage's peak RSS
    (VmHWM since it started) and end RSS are recorded and the peak is reset."""

    def __init__(self):
        self.rows: list[dict] = []
        self.overall_kib = 0
        self.resettable = True
        self._name, self._tic = "setup", time.perf_counter()

    def mark(self, name: str) -> None:
        peak = _status_kib("VmHWM")
        self.overall_kib = max(self.overall_kib, peak)
        self.rows.append({"stage": self._name, "peak_rss_mib": peak / 1024, "end_rss_mib": _status_kib("VmRSS") / 1024,
                          "seconds": time.perf_counter() - self._tic})
        self.resettable = _reset_peak() and self.resettable
        self._name, self._tic = name, time.perf_counter()

    def __enter__(self):
        from deltadit.console import Stages

        self._original = Stages.start

        def start(stages, name, _orig=self._original):
            self.mark(name)
            _orig(stages, name)

        Stages.start = start
        _reset_peak()
        return self

    def __exit__(self, *exc):
        from deltadit.console import Stages

        self.mark("done")
        Stages.start = self._original


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="pixart")
    p.add_argument("--layers", type=int, help="blocks to keep (default: all)")
    p.add_argument("--int8", action="store_true")
    p.add_argument("--calib-count", type=int, default=1)
    p.add_argument("--steps", type=int, help="denoising steps (default: the preset's; b scaled with them). Fewer "
                                             "steps only shorten the run: nothing the export holds grows with them "
                                             "beyond the guard's 4 held-out inputs per group (kept from 4 steps on)")
    p.add_argument("--out", default="bundles/export-memory")
    p.add_argument("--json", help="write the per-stage numbers and the bundle's file hashes here")
    args = p.parse_args()

    from deltadit.export.pipeline import export_bundle
    from deltadit.export.quantize import Int8Options
    from deltadit.presets import load_preset

    preset = load_preset(args.model)
    random_init = not preset.source.startswith("embedded:")
    nb_all = preset.num_blocks
    nb = args.layers or nb_all
    if nb != nb_all:
        preset = preset.with_overrides(transformer={**preset.transformer, "num_layers": nb},
                                       nc=round(preset.nc * nb / nb_all))
    if args.steps:
        preset = preset.with_overrides(steps=args.steps, b=max(1, round(preset.b * args.steps / preset.steps)))
    int8 = Int8Options(count=args.calib_count) if args.int8 else None
    tic = time.perf_counter()
    with StageMemory() as mem:
        export_bundle(preset, preset.plan(), args.out, random_init=random_init, build_engines=False, int8=int8,
                      force=True, progress=False)
    total = time.perf_counter() - tic
    print(f"{args.model}, {nb} of {nb_all} blocks, {preset.steps} steps, {'INT8' if int8 else 'FP32'} export"
          f"{f' ({args.calib_count} calibration generations)' if int8 else ''}: peak RSS per stage")
    print(f"{'stage':<18} {'peak MiB':>9} {'end MiB':>9} {'s':>7}")
    for r in mem.rows[1:]:
        print(f"{r['stage']:<18} {r['peak_rss_mib']:9.0f} {r['end_rss_mib']:9.0f} {r['seconds']:7.1f}")
    peak = max(mem.overall_kib, _status_kib("VmHWM")) / 1024
    note = "" if mem.resettable else " (this kernel cannot reset the peak: per-stage peaks are cumulative)"
    print(f"whole export: peak RSS {peak:.0f} MiB ({peak / 1024:.2f} GiB), {total:.0f} s{note}")
    if args.json:
        manifest = json.loads((Path(args.out) / "manifest.json").read_text())
        files = {f["path"]: f["sha256"] for s in manifest["segments"] for f in s["files"]}
        Path(args.json).write_text(json.dumps({"model": args.model, "blocks": nb, "steps": preset.steps, "int8": bool(int8),
                                               "stages": mem.rows[1:], "peak_rss_mib": peak, "seconds": total,
                                               "files": files, "int8_info": manifest.get("int8")}, indent=1))


if __name__ == "__main__":
    main()
