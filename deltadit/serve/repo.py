"""``deltadit triton-repo``: a Triton model repository for bundles (Python backend), one model per bundle.

Layout (what any stock ``tritonserver --model-repository DIR`` loads)::

    DIR/<name>/config.pbtxt   inputs / outputs, dynamic batching with a bounded queue, instance group
    DIR/<name>/1/model.py     deltadit.serve.triton_model (loads the bundle named in config.pbtxt)

The model's Python environment must have deltadit installed (with the [serve] extra's numpy); the bundle
is referenced by absolute path, not copied.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from deltadit import validate
from deltadit.errors import DeltaDiTError, raise_if

MAX_QUEUE = 100_000
MAX_INSTANCES = 64

@dataclass(frozen=True)
class RepoOptions:
    """How Triton schedules a bundle's model.

    max_batch: images per denoising loop (None: the bundle's max batch over its CFG batch); larger
    batches raise throughput and each request's latency. queue: requests waiting per model beyond the
    running batch; more are rejected at once ("Exceeds maximum queue size") instead of piling up.
    delay_us: how long the batcher waits for more requests to fill a batch. instances: model copies
    (each runs its own batches; on CPU they share the cores). providers: ONNX Runtime providers.
    backend: the engine each instance loads the bundle on (onnxrt, openvino, or auto: the faster CPU
    engine for the bundle on the serving machine, measured at the first load and cached there).
    """

    max_batch: int | None = None
    queue: int = 64
    delay_us: int = 5_000
    instances: int = 1
    providers: str = ""
    backend: str = "onnxrt"

    def check(self) -> RepoOptions:
        problems = []
        if self.backend not in validate.CPU_BACKENDS:
            problems.append(f"--backend | '{self.backend}' is unknown. Expected: one of {', '.join(validate.CPU_BACKENDS)}.")
        elif problem := validate.backend_only("--providers", self.providers, self.backend):
            problems.append(problem)
        for name, value, lo, hi in (("--queue", self.queue, 1, MAX_QUEUE), ("--batch-delay-us", self.delay_us, 0, 10**7),
                                    ("--instances", self.instances, 1, MAX_INSTANCES)):
            try:
                validate.integer(name, value, lo, hi)
            except DeltaDiTError as e:
                problems.append(str(e))
        raise_if(problems)
        return self


def model_name(bundle: Path) -> str:
    """A Triton model name from the bundle folder's name (letters, digits, '-', '_')."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", bundle.resolve().name).strip("_") or "bundle"


def write_repo(bundles: Sequence[str | Path], out: str | Path, options: RepoOptions = RepoOptions()) -> dict[str, Path]:
    """Write one model per bundle under ``out``; returns {model name: bundle folder}. Every bundle is
    verified first (deltadit.bundle.read_bundle); two bundles with the same folder name are refused."""
    from deltadit.bundle import read_bundle

    options.check()
    out = Path(out)
    folders = [Path(b).resolve() for b in bundles]
    names = [model_name(f) for f in folders]
    if len(set(names)) < len(names):
        raise DeltaDiTError(f"bundles | two share a model name ({', '.join(names)}). Expected: bundle folders with "
                            "different names (the folder name is the Triton model name).")
    manifests = [read_bundle(f) for f in folders]
    for name in names:
        _check_ours(out / name)
    for name, folder, manifest in zip(names, folders, manifests):
        model = out / name
        (model / "1").mkdir(parents=True, exist_ok=True)
        (model / "config.pbtxt").write_text(config_text(name, folder, manifest, options))
        shutil.copyfile(Path(__file__).with_name("triton_model.py"), model / "1" / "model.py")
    return dict(zip(names, folders))


MARKER = "# written by deltadit triton-repo"  # first line of every config.pbtxt we write


def _check_ours(model: Path) -> None:
    """A model folder we may (re)write: absent, empty, or one we wrote before (its config.pbtxt starts with
    MARKER). Anything else is another model's, and is left untouched."""
    config = model / "config.pbtxt"
    if not model.exists() or not any(model.iterdir()):
        return
    try:
        ours = config.read_text().startswith(MARKER)
    except OSError:
        ours = False
    if not ours:
        raise DeltaDiTError(f"{model} | holds a model that deltadit did not write. Expected: another output folder, "
                            "or rename the bundle folder (its name is the Triton model name); nothing was changed.")


def config_text(name: str, folder: Path, manifest, options: RepoOptions) -> str:
    """config.pbtxt of one bundle's model."""
    from deltadit.serve.model import tensors

    from deltadit.runtime.generation import max_images

    limit = max_images(manifest)
    batch = limit if options.max_batch is None else validate.integer(
        "--max-batch", options.max_batch, 1, limit, f" (the bundle's max_batch {manifest.export.max_batch} over its "
        f"CFG batch {manifest.export.opt_batch}; re-export with a larger --max-batch for more)")
    inputs, outputs = tensors(manifest)
    params = {"bundle": str(folder), "max_images": str(batch), "providers": options.providers, "backend": options.backend}
    lines = [MARKER, f'name: "{name}"', 'backend: "python"', f"max_batch_size: {batch}",
             "dynamic_batching {", f"  max_queue_delay_microseconds: {options.delay_us}",
             f"  default_queue_policy {{ max_queue_size: {options.queue} timeout_action: REJECT }}", "}",
             f"instance_group [ {{ count: {options.instances} kind: KIND_CPU }} ]",
             "input [", ",\n".join(_tensor(t) for t in inputs), "]",
             "output [", ",\n".join(_tensor(t) for t in outputs), "]"]
    lines += [f'parameters {{ key: "{k}" value: {{ string_value: {_quote(v)} }} }}' for k, v in params.items()]
    return "\n".join(lines) + "\n"


def _tensor(t) -> str:
    optional = " optional: true" if t.optional else ""
    return f'  {{ name: "{t.name}" data_type: {t.dtype} dims: [ {", ".join(map(str, t.dims))} ]{optional} }}'


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
