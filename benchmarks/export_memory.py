"""Peak RSS of an export, per stage (Linux):

    PYTHONPATH=. .venv/bin/python benchmarks/export_memory.py --model pixart --int8 --calib-count 1
    PYTHONPATH=. .venv/bin/python benchmarks/export_memory.py --model pixart --layers 4 --int8 --calib-count 1

Exports the preset (random init unless it is the embedded model, as benchmarks/matrix.py does) into
--out and prints, per export stage, the process's peak RSS while that stage ran (VmHWM, reset at each
stage start through /proc/self/clear_refs) and its RSS when the stage ended, then the whole export's
peak and time. --json also records the bundle's file hashes, so two runs (before / after a change to the
export) can be compared for bit-identical output. --sample also samples RSS every 20 ms from a thread and
prints the peak inside each named step of a stage (the functions in SAMPLED, nested: "export onnx >
torch.onnx.export"), which is where the per-stage peak comes from.
"""

from __future__ import annotations

import argparse
import importlib
import json
import threading
import time
from pathlib import Path

# Steps inside the stages whose RSS --sample attributes separately ("module:attribute").
SAMPLED = (
    "deltadit.export.pipeline:trace_inputs", "deltadit.export.int8:run_generation",
    "deltadit.export.int8:quantize_groups", "torch.onnx:export", "onnx:load", "onnx:save_model",
    "deltadit.export.fuse:fuse_attention", "deltadit.runtime.runners.onnxrt:OnnxrtRunner._activate_impl",
    "deltadit.export.check:_check_graph", "deltadit.export.int8:group_quality", "deltadit.export.int8:int8_kernels",
    "deltadit.export.int8:final_latents", "deltadit.memory:release_memory", "deltadit.export.pipeline:release_memory",
)


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

    def __init__(self, sampler: "RssSampler | None" = None):
        self.sampler = sampler
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
        if self.sampler is not None:
            self.sampler.stage(name)

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


class _Nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


class RssSampler:
    """A thread reading VmRSS every ``every`` seconds; each sample counts for the innermost labels open
    (the stage, then the SAMPLED functions running). ``peaks``: {label path: max RSS KiB}, in first-seen order."""

    def __init__(self, every: float = 0.02):
        self.every, self.labels, self.peaks = every, ["setup"], {}
        self._stop = threading.Event()
        self._patched: list = []

    def stage(self, name: str) -> None:
        self.labels[:] = [name]

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            key = " > ".join(self.labels)
            self.peaks[key] = max(self.peaks.get(key, 0), _status_kib("VmRSS"))

    def _wrap(self, owner, attr: str, label: str) -> None:
        original = getattr(owner, attr)

        def wrapped(*args, _orig=original, **kwargs):
            self.labels.append(label)
            try:
                return _orig(*args, **kwargs)
            finally:
                self.labels.pop()

        setattr(owner, attr, wrapped)
        self._patched.append((owner, attr, original))

    def __enter__(self):
        for target in SAMPLED:
            module, path = target.split(":")
            owner = importlib.import_module(module)
            *parents, attr = path.split(".")
            for p in parents:
                owner = getattr(owner, p)
            self._wrap(owner, attr, path.split(".")[-1] if parents else f"{module.split('.')[-1]}.{attr}")
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        for owner, attr, original in reversed(self._patched):
            setattr(owner, attr, original)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="pixart")
    p.add_argument("--layers", type=int, help="blocks to keep (default: all)")
    p.add_argument("--int8", action="store_true")
    p.add_argument("--calib-count", type=int, default=1)
    p.add_argument("--steps", type=int, help="denoising steps (default: the preset's; b scaled with them). Fewer "
                                             "steps only shorten the run: nothing the export holds grows with them "
                                             "beyond the guard's 4 held-out inputs per group (kept from 4 steps on)")
    p.add_argument("--max-group-blocks", type=int, help="split longer block groups (deltadit-export --max-group-blocks)")
    p.add_argument("--out", default="bundles/export-memory")
    p.add_argument("--json", help="write the per-stage numbers and the bundle's file hashes here")
    p.add_argument("--sample", action="store_true", help="also sample RSS from a thread: peak per step in a stage")
    args = p.parse_args()

    from deltadit.export.pipeline import export_bundle
    from deltadit.export.quantize import Int8Options
    from deltadit.plan import limit_group_blocks
    from deltadit.presets import load_preset

    preset = load_preset(args.model)
    random_init = not preset.source.startswith("embedded:")
    nb_all = preset.num_blocks
    nb = args.layers or nb_all
    preset = preset.with_blocks(nb)
    if args.steps:
        preset = preset.with_overrides(steps=args.steps, b=max(1, round(preset.b * args.steps / preset.steps)))
    int8 = Int8Options(count=args.calib_count) if args.int8 else None
    plan = preset.plan() if args.max_group_blocks is None else limit_group_blocks(preset.plan(), args.max_group_blocks)
    sampler = RssSampler() if args.sample else None
    tic = time.perf_counter()
    with StageMemory(sampler) as mem, (sampler or _Nothing()):
        export_bundle(preset, plan, args.out, random_init=random_init, build_engines=False, int8=int8,
                      force=True, progress=False)
    total = time.perf_counter() - tic
    print(f"{args.model}, {nb} of {nb_all} blocks (groups {[(g.start, g.stop) for g in plan.groups]}), {preset.steps} steps, {'INT8' if int8 else 'FP32'} export"
          f"{f' ({args.calib_count} calibration generations)' if int8 else ''}: peak RSS per stage")
    print(f"{'stage':<18} {'peak MiB':>9} {'end MiB':>9} {'s':>7}")
    for r in mem.rows[1:]:
        print(f"{r['stage']:<18} {r['peak_rss_mib']:9.0f} {r['end_rss_mib']:9.0f} {r['seconds']:7.1f}")
    peak = max(mem.overall_kib, _status_kib("VmHWM")) / 1024
    note = "" if mem.resettable else " (this kernel cannot reset the peak: per-stage peaks are cumulative)"
    print(f"whole export: peak RSS {peak:.0f} MiB ({peak / 1024:.2f} GiB), {total:.0f} s{note}")
    if sampler is not None:
        print(f"sampled every {sampler.every * 1000:.0f} ms: peak RSS inside each step")
        for label, kib in sampler.peaks.items():
            print(f"  {kib / 1024:9.0f} MiB  {label}")
    if args.json:
        manifest = json.loads((Path(args.out) / "manifest.json").read_text())
        files = {f["path"]: f["sha256"] for s in manifest["segments"] for f in s["files"]}
        Path(args.json).write_text(json.dumps({"model": args.model, "blocks": nb, "groups": [[g.start, g.stop] for g in plan.groups], "steps": preset.steps, "int8": bool(int8),
                                               "stages": mem.rows[1:], "peak_rss_mib": peak, "seconds": total,
                                               "files": files, "int8_info": manifest.get("int8"),
                                               "sampled_mib": {k: v / 1024 for k, v in (sampler.peaks if sampler else {}).items()}}, indent=1))


if __name__ == "__main__":
    main()
