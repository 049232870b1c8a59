"""Prompt (or class) to image on a bundle: conditioning -> the bundle's transformer path -> decoding.

The transformer always runs from the bundle (its runner: ONNX Runtime, TensorRT, ...). What the bundle
does not hold comes from the model's diffusers pipeline components on local disk:

- PixArt-α: the T5 tokenizer and text encoder (``tokenizer/``, ``text_encoder/``) and the VAE (``vae/``),
  with the pipeline's own preprocessing (lower-cased, stripped; the pipeline's optional caption cleaning
  needs bs4 + ftfy and is not applied), padded to the bundle's caption length; the negative prompt is "".
  A bundle exported with ``--text-encoder`` holds its tokenizer and encoder (runtime/text_encoder.py):
  then only the VAE comes from the folder (none for a pixel-space model such as ``animals``).
- DiT: class labels (null class = ``num_embeds_ada_norm``) and the VAE.

Initial noise and decoding follow diffusers' PixArtAlphaPipeline / DiTPipeline, so a bundle run with
plan ``none`` reproduces the pipeline's image for the same seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from deltadit import validate
from deltadit.errors import DeltaDiTError
from deltadit.runtime.conditioning import NEEDS_FOLDER, PixelDecoder, VaeDecoder, components_root, make_conditioner
from deltadit.sources import is_embedded, weights_fingerprint


@dataclass
class Generation:
    image: np.ndarray  # (H, W, 3) float32 in [0, 1]; (H, W, 1) for single-channel pixel models
    latents: object  # torch.Tensor (1, C, h, w): the final latents, before decoding
    seconds: dict = field(default_factory=dict)
    cached: bool = True
    random_init: bool = False

    def pixels(self) -> np.ndarray:
        """The image as 8-bit pixels (H, W, C) uint8: what :meth:`save` writes and ``deltadit serve`` returns."""
        return (np.clip(self.image, 0, 1) * 255).round().astype(np.uint8)

    def save(self, path: str | Path) -> Path:
        """Write the image as PNG (8-bit)."""
        from PIL import Image

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = self.pixels()
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)
        return path


def bundle_components_root(bundle, pipeline: str | Path | None, allow_other_weights: bool = False):
    """Where ``bundle``'s text encoder / VAE come from, and where it looked.

    Only from what the user names: ``pipeline`` (checked against the fingerprint of the weights the
    bundle was exported from unless ``allow_other_weights``), or the model embedded in deltadit when
    the bundle was exported from it. A folder or hub id written in the manifest is never opened: a
    manifest must not decide which files on the user's machine are loaded."""
    model = bundle.manifest.model
    if pipeline is None:
        if model.random_init or not model.source:
            return None, []
        if not is_embedded(model.source):
            raise DeltaDiTError(
                f"bundle {bundle.root} | its text encoder / VAE live in the pipeline it was exported from "
                f"({model.source}), which deltadit does not open on a manifest's word. Expected: --pipeline DIR "
                "(API: pipeline=DIR), the diffusers pipeline folder or cached hub id it was exported from.")
        root, looked = components_root(model.source)
        if weights_fingerprint(model.source) != model.weights_sha256:
            raise DeltaDiTError(
                f"bundle {bundle.root} | was exported from other weights than the embedded model {model.source} now "
                "has, so its text encoder would not match the exported transformer. Expected: re-export the bundle "
                "(deltadit-export).")
        return root, looked
    root, looked = components_root(None, pipeline)
    if root is not None and model.weights_sha256 and not allow_other_weights:
        if weights_fingerprint(str(root)) != model.weights_sha256:
            raise DeltaDiTError(
                f"--pipeline {pipeline} | holds other transformer / text-encoder weights than bundle {bundle.root} "
                "was exported from, so its text encoder would not match the exported transformer. Expected: the "
                "pipeline folder the bundle was exported from, a re-exported bundle, or --allow-other-weights "
                "(API: allow_other_weights=True) if the difference is intended.")
    return root, looked


MAX_PROMPT_CHARS = 10_000


def generate(bundle, prompt: str | None = None, class_label: int | None = None, *, seed: int = 0, cache: bool = True,
             pipeline: str | Path | None = None, guidance_scale: float | None = None, progress: bool = False,
             conditioner=None, decoder=None, allow_other_weights: bool = False) -> Generation:
    """One image from ``bundle`` (a :class:`deltadit.runtime.Bundle`). Safe to call from many threads on
    one bundle: each call gets its own executor and deltas, the text encoder / decoder are loaded once per
    bundle and pipeline folder, and the result equals the single-threaded one bit for bit.

    prompt (PixArt) or class_label (DiT); seed: the torch generator seed for the initial noise (0 to
    2**63 - 1); cache: run the bundle's Δ-DiT plan (False: every step in full on the same segments);
    pipeline: the diffusers pipeline folder (or cached hub id) with the text encoder / VAE; needed unless
    the bundle comes from the embedded model (see :func:`bundle_components_root`); allow_other_weights: use
    a pipeline whose weights differ from those the bundle was exported from. conditioner / decoder:
    already loaded components. Raises DeltaDiTError for bad arguments and for non-finite results (no
    image is made from them)."""
    return generate_batch(bundle, [(prompt, class_label, seed)], cache=cache, pipeline=pipeline,
                          guidance_scale=guidance_scale, progress=progress, conditioner=conditioner, decoder=decoder,
                          allow_other_weights=allow_other_weights)[0]


def generate_batch(bundle, items: Sequence[tuple[str | None, int | None, int]], *, cache: bool = True,
                   pipeline: str | Path | None = None, guidance_scale: float | None = None, progress: bool = False,
                   conditioner=None, decoder=None, allow_other_weights: bool = False) -> list[Generation]:
    """One image per (prompt, class_label, seed) in ``items``, all from ONE denoising loop of batch
    len(items) (CFG batch 2 * len(items)): they share the plan, ``cache`` and the guidance scale. Image k
    equals ``generate`` with items[k] (per-image generators draw the same noise; a row of a batched
    ONNX Runtime matmul is computed as the single row is). At most :func:`max_images` items. Other
    arguments as for :func:`generate`."""
    import torch

    from deltadit.console import track
    from deltadit.runtime.sampling import from_manifest, sample

    manifest, spec, config = bundle.manifest, bundle.spec, bundle.config
    limit = max_images(manifest)
    if not 1 <= len(items) <= limit:
        raise DeltaDiTError(f"generate | {len(items)} images in one batch; the bundle takes 1 to {limit} "
                            f"(max_batch {manifest.export.max_batch}). Expected: fewer images, or re-export with a "
                            "larger --max-batch.")
    keys = [_condition_key(spec, prompt, class_label) for prompt, class_label, _ in items]
    seeds = [validate.seed(seed) for _, _, seed in items]
    sampling = manifest.sampling
    scale = sampling.guidance_scale if guidance_scale is None else validate.real(
        "--guidance-scale", guidance_scale, 0, validate.MAX_GUIDANCE)
    if scale > 1 and manifest.export.opt_batch < 2 and not spec.embedded_guidance:
        raise DeltaDiTError(f"--guidance-scale | {scale} needs the CFG batch of 2, but the bundle was exported for batch 1. "
                            "Expected: guidance scale <= 1, or re-export with guidance.")
    seconds = {}
    tic = time.perf_counter()
    conditioner, decoder = load_components(bundle, pipeline, allow_other_weights, conditioner, decoder)
    cond, uncond = _stack([conditioner(key) for key in keys])
    seconds["load+encode"] = time.perf_counter() - tic

    executor = bundle.executor() if cache else bundle.uncached()
    bundle.runner.activate()  # its providers checked (and its device settled) before latents go there
    steps = iter(track(range(bundle.plan.num_steps), "denoise", enabled=progress, unit="steps"))
    tic = time.perf_counter()
    latents = sample(executor, spec, config, from_manifest(manifest), cond, uncond, seeds, guidance_scale=scale,
                     device=getattr(bundle.runner, "device", "cpu"),
                     callback=lambda *a: next(steps, None)).cpu()
    next(steps, None)  # let the progress display finish
    seconds["denoise"] = time.perf_counter() - tic
    if not bool(torch.isfinite(latents).all()):
        raise DeltaDiTError(
            f"generate | the denoised latents are not finite (NaN or inf) after {bundle.plan.num_steps} steps with "
            f"guidance scale {scale} and scheduler {sampling.scheduler}: no image was written. Expected: a bundle "
            "whose check passes (deltadit check BUNDLE) and a moderate --guidance-scale; re-export if it persists.")
    tic = time.perf_counter()
    images = [decoder(spec.unpack(latents[k:k + 1], manifest.export.latent_side)) for k in range(len(items))]
    seconds["decode"] = time.perf_counter() - tic
    return [Generation(image=image, latents=latents[k:k + 1], seconds=seconds, cached=cache,
                       random_init=manifest.model.random_init) for k, image in enumerate(images)]


def max_images(manifest) -> int:
    """Most images one denoising loop of a bundle takes: its max batch over the rows per image (2 with CFG)."""
    ex = manifest.export
    return max(1, ex.max_batch // ex.opt_batch)


def _stack(conditions: list[tuple[dict, dict | None]]) -> tuple[dict, dict | None]:
    """(cond, uncond) of one image each -> one row per image."""
    import torch

    def cat(dicts):
        return None if dicts[0] is None else {k: torch.cat([d[k] for d in dicts]) for k in dicts[0]}

    return cat([c for c, _ in conditions]), cat([u for _, u in conditions])


def _condition_key(spec, prompt, class_label):
    if spec.prompted:
        if prompt is None or class_label is not None:
            raise DeltaDiTError(f"generate | a {spec.arch} bundle is conditioned on text. Expected: --prompt TEXT.")
        if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
            raise DeltaDiTError(f"--prompt | must be a string of at most {MAX_PROMPT_CHARS} characters. Expected: a "
                                "shorter prompt (the text encoder reads only its first tokens anyway).")
        return prompt
    if class_label is None or prompt is not None:
        raise DeltaDiTError(f"generate | a {spec.arch} bundle is class-conditional. Expected: --class N.")
    return class_label


def load_components(bundle, pipeline=None, allow_other_weights: bool = False, conditioner=None, decoder=None):
    """(conditioner, decoder) for ``bundle``: the ones given, else loaded once per bundle and pipeline
    folder and then shared. A pipeline folder is looked for only when a part needs one (T5, VAE)."""
    m, spec = bundle.manifest, bundle.spec

    def root():
        return bundle_components_root(bundle, pipeline, allow_other_weights)

    def load_conditioner():
        if m.text_encoder is not None:  # the bundle's own (deltadit-export --text-encoder): no folder needed
            from deltadit.runtime.text_encoder import bundle_conditioner

            return bundle_conditioner(bundle)
        where = root() if NEEDS_FOLDER.get(spec.conditioning, True) else (None, [])
        return make_conditioner(spec.conditioning, *where, m.export.text_len, bundle.config)

    def load_decoder():
        return PixelDecoder() if m.model.decoder == "pixels" else VaeDecoder(*root())

    # Keyed by the override too: a part loaded without the fingerprint check is never handed to a checked call.
    key = (str(pipeline) if pipeline else None, allow_other_weights)
    conditioner = conditioner or bundle.components(("conditioner",) + key, load_conditioner)
    decoder = decoder or bundle.components(("decoder",) + key, load_decoder)
    return conditioner, decoder
