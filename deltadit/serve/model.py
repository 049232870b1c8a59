"""One bundle as a Triton model, without Triton: its tensors, request checks and batched runs.

The Python-backend file (:mod:`deltadit.serve.triton_model`) only moves tensors between Triton and this
module, so everything here is testable in-process. Triton's dynamic batcher hands ``execute`` the
requests that arrived together; :meth:`ServedModel.run` checks each one on its own (a bad request gets
its own error, the others are served), groups the good ones by (guidance, cache) and runs each group as
ONE denoising loop of up to :func:`deltadit.runtime.generation.max_images` images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deltadit import validate
from deltadit.errors import DeltaDiTError

MAX_PROMPT_BYTES = 4 * 10_000  # UTF-8 of runtime.generation.MAX_PROMPT_CHARS characters at most


@dataclass(frozen=True)
class TensorSpec:
    """One Triton input or output: name, Triton data type, dims without the batch axis (-1: any)."""

    name: str
    dtype: str  # TYPE_STRING, TYPE_INT32, ...
    dims: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class Item:
    """One checked image request: prompt or class label, seed, guidance (None: the bundle's) and cache."""

    prompt: str | None
    class_label: int | None
    seed: int
    guidance: float | None
    cache: bool


@dataclass(frozen=True)
class Output:
    image: np.ndarray  # (H, W, C) uint8
    latents: np.ndarray  # final latents of this image, transformer layout without the batch axis


def tensors(manifest) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of a bundle's Triton model: prompt (BYTES) or class_id (INT32), seed (INT64),
    optional guidance (FP32) and cache (BOOL); image (UINT8, H x W x C) and the final latents (FP32, the
    transformer's layout)."""
    import torch

    from deltadit.models.spec import get_spec

    spec = get_spec(manifest.model.arch)
    noise = torch.zeros(1, *spec.noise_shape(manifest.model.config, manifest.export.latent_side))
    condition = TensorSpec("prompt", "TYPE_STRING", (1,)) if spec.prompted else TensorSpec("class_id", "TYPE_INT32", (1,))
    inputs = [condition, TensorSpec("seed", "TYPE_INT64", (1,)), TensorSpec("guidance", "TYPE_FP32", (1,), True),
              TensorSpec("cache", "TYPE_BOOL", (1,), True)]
    outputs = [TensorSpec("image", "TYPE_UINT8", (-1, -1, -1)),
               TensorSpec("latents", "TYPE_FP32", tuple(spec.pack(noise).shape[1:]))]
    return inputs, outputs


def parse(arrays: dict[str, np.ndarray | None]) -> list[Item]:
    """The items of one request (one per row; Triton has already checked names, types and shapes).
    Raises DeltaDiTError naming the first bad value."""
    seeds = arrays["seed"].reshape(-1)
    rows = len(seeds)
    prompts = arrays.get("prompt")
    labels = arrays.get("class_id")
    guidance = arrays.get("guidance")
    cache = arrays.get("cache")
    for name, a in (("prompt", prompts), ("class_id", labels), ("guidance", guidance), ("cache", cache)):
        if a is not None and a.size != rows:
            raise DeltaDiTError(f"{name} | {a.size} values for {rows} seeds. Expected: one per seed.")
    return [Item(prompt=None if prompts is None else _prompt(prompts.reshape(-1)[k]),
                 class_label=None if labels is None else validate.integer("class_id", int(labels.reshape(-1)[k]), 0,
                                                                            validate.MAX_CLASSES),
                 seed=validate.seed(int(seeds[k])),
                 guidance=None if guidance is None else validate.real("guidance", float(guidance.reshape(-1)[k]), 0,
                                                                      validate.MAX_GUIDANCE),
                 cache=True if cache is None else bool(cache.reshape(-1)[k]))
            for k in range(rows)]


def _prompt(value) -> str:
    raw = value if isinstance(value, bytes) else str(value).encode()
    if len(raw) > MAX_PROMPT_BYTES:
        raise DeltaDiTError(f"prompt | {len(raw)} bytes. Expected: at most {MAX_PROMPT_BYTES} bytes of UTF-8.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DeltaDiTError("prompt | is not UTF-8 text. Expected: a UTF-8 encoded string.") from None
    if not text.strip():
        raise DeltaDiTError("prompt | is empty. Expected: a text prompt, e.g. 'a cat'.")
    return text


class ServedModel:
    """A loaded bundle that answers lists of requests (what Triton's dynamic batcher delivers)."""

    def __init__(self, bundle_dir: str | Path, max_images: int | None = None, providers: list[str] | None = None,
                 backend: str = "onnxrt"):
        from deltadit.runtime import load
        from deltadit.runtime.generation import load_components
        from deltadit.runtime.generation import max_images as bundle_max

        self.bundle = load(bundle_dir, providers, backend=backend)
        load_components(self.bundle)  # text encoder / decoder now, not in the first request
        limit = bundle_max(self.bundle.manifest)
        self.max_images = limit if max_images is None else validate.integer("--max-batch", max_images, 1, limit)

    def run(self, requests: list[dict[str, np.ndarray | None]]) -> list[list[Output] | DeltaDiTError]:
        """One answer per request: its outputs (one per row), or the error that request alone caused."""
        answers: list = [None] * len(requests)
        work: dict[tuple, list[tuple[int, int, Item]]] = {}
        for r, arrays in enumerate(requests):
            try:
                items = parse(arrays)
            except DeltaDiTError as e:
                answers[r] = e
                continue
            answers[r] = [None] * len(items)
            for k, item in enumerate(items):
                work.setdefault((item.guidance, item.cache), []).append((r, k, item))
        for (guidance, cache), group in work.items():
            for start in range(0, len(group), self.max_images):
                self._run_group(group[start:start + self.max_images], guidance, cache, answers)
        return answers

    def _run_group(self, group, guidance, cache, answers) -> None:
        """One denoising loop for ``group``; an error fails exactly the requests in it."""
        from deltadit.runtime.generation import generate_batch

        try:
            results = generate_batch(self.bundle, [(i.prompt, i.class_label, i.seed) for _, _, i in group],
                                     cache=cache, guidance_scale=guidance)
        except DeltaDiTError as e:
            for r, _, _ in group:
                answers[r] = e
            return
        for (r, k, _), result in zip(group, results):
            if isinstance(answers[r], list):
                answers[r][k] = Output(result.pixels(), result.latents[0].numpy())
