"""Prompt (or class) to image on a bundle: conditioning -> the bundle's transformer path -> decoding.

The transformer always runs from the bundle (its runner: ONNX Runtime, TensorRT, ...). What the bundle
does not hold comes from the model's diffusers pipeline components on local disk:

- PixArt-α: the T5 tokenizer and text encoder (``tokenizer/``, ``text_encoder/``) and the VAE (``vae/``),
  with the pipeline's own preprocessing (lower-cased, stripped; the pipeline's optional caption cleaning
  needs bs4 + ftfy and is not applied), padded to the bundle's caption length; the negative prompt is "".
- DiT: class labels (null class = ``num_embeds_ada_norm``) and the VAE.

Initial noise and decoding follow diffusers' PixArtAlphaPipeline / DiTPipeline, so a bundle run with
plan ``none`` reproduces the pipeline's image for the same seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deltadit.errors import DeltaDiTError


@dataclass
class Generation:
    image: np.ndarray  # (H, W, 3) float32 in [0, 1]; (H, W, 1) for single-channel pixel models
    latents: object  # torch.Tensor (1, C, h, w): the final latents, before decoding
    seconds: dict = field(default_factory=dict)
    cached: bool = True
    random_init: bool = False

    def save(self, path: str | Path) -> Path:
        """Write the image as PNG (8-bit)."""
        from PIL import Image

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = (np.clip(self.image, 0, 1) * 255).round().astype(np.uint8)
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)
        return path


def components_root(source: str | None, pipeline: str | Path | None = None) -> tuple[Path | None, list[str]]:
    """The diffusers pipeline folder to take text encoder / VAE from (``pipeline``, else the model's
    ``source``; None for random-init models), and where it looked."""
    looked = []
    candidates = [str(pipeline)] if pipeline else []
    if not pipeline and source:
        candidates.append(source)
    from deltadit.sources import resolve_source

    for cand in candidates:
        path = Path(resolve_source(cand))
        looked.append(str(path))
        if path.is_dir():
            return path, looked
        try:  # a hub id already in the local cache
            from huggingface_hub import snapshot_download

            looked.append(f"the local hub cache for '{cand}'")
            return Path(snapshot_download(cand, local_files_only=True)), looked
        except Exception:  # noqa: BLE001 - not on disk; keep looking, then say where we looked
            continue
    return None, looked


def _need(root: Path | None, looked: list[str], what: str, sub: str) -> Path:
    if root is not None and (root / sub).is_dir():
        return root / sub
    where = "; ".join(looked + ([str(root / sub)] if root is not None else [])) or "nowhere (no --pipeline given and the bundle has no on-disk source)"
    raise DeltaDiTError(
        f"{what} | not found. Looked in: {where}. Expected: --pipeline DIR, a diffusers pipeline folder (or a hub id "
        f"already in the local cache) with {sub}/ in it; the bundle holds only the transformer."
    )


class TextConditioner:
    """PixArt-α prompt encoding with the pipeline's tokenizer and T5 encoder."""

    def __init__(self, root: Path | None, looked: list[str], text_len: int):
        from transformers import AutoTokenizer, T5EncoderModel

        self.tokenizer = AutoTokenizer.from_pretrained(_need(root, looked, "tokenizer", "tokenizer"))
        self.encoder = T5EncoderModel.from_pretrained(_need(root, looked, "text encoder", "text_encoder")).eval()
        self.text_len = text_len
        self._uncond = None

    def encode(self, text: str) -> dict:
        import torch

        tokens = self.tokenizer([text.lower().strip()], padding="max_length", max_length=self.text_len,
                                truncation=True, add_special_tokens=True, return_tensors="pt")
        with torch.no_grad():
            embeds = self.encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
        return {"encoder_hidden_states": embeds.float(), "encoder_attention_mask": tokens.attention_mask}

    def __call__(self, prompt: str) -> tuple[dict, dict]:
        if self._uncond is None:  # the negative prompt "" is the same for every call
            self._uncond = self.encode("")
        return self.encode(prompt), self._uncond


class ClassConditioner:
    """DiT class labels; the unconditional label is the extra 'null' class."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def __call__(self, label: int) -> tuple[dict, dict]:
        import torch

        if not 0 <= int(label) < self.num_classes:
            raise DeltaDiTError(f"--class | {label} is out of range. Expected: 0 <= N < {self.num_classes}.")
        return {"class_labels": torch.tensor([int(label)])}, {"class_labels": torch.tensor([self.num_classes])}


class VaeDecoder:
    def __init__(self, root: Path | None, looked: list[str]):
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL.from_pretrained(_need(root, looked, "VAE", "vae")).eval()

    def __call__(self, latents) -> np.ndarray:
        import torch

        with torch.no_grad():
            image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
        return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()[0]


class PixelDecoder:
    """Pixel-space models (no VAE): the latents are the image in [-1, 1]."""

    def __call__(self, latents) -> np.ndarray:
        return (latents / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()[0]


def generate(bundle, prompt: str | None = None, class_label: int | None = None, *, seed: int = 0, cache: bool = True,
             pipeline: str | Path | None = None, guidance_scale: float | None = None, progress: bool = False,
             conditioner=None, decoder=None) -> Generation:
    """One image from ``bundle`` (a :class:`deltadit.runtime.Bundle`).

    prompt (PixArt) or class_label (DiT); seed: the torch generator seed for the initial noise; cache:
    run the bundle's Δ-DiT plan (False: every step in full on the same segments); pipeline: where the
    text encoder / VAE live (default: the bundle's source model). conditioner / decoder: already loaded
    components (reuse them across calls)."""
    import torch
    from tqdm import tqdm

    from deltadit.runtime.loop import denoise, prepare

    manifest, spec, config = bundle.manifest, bundle.spec, bundle.config
    seconds = {}
    tic = time.perf_counter()
    if spec.cond_input == "encoder_hidden_states":
        if prompt is None or class_label is not None:
            raise DeltaDiTError(f"generate | a {spec.arch} bundle is conditioned on text. Expected: --prompt TEXT.")
        key = prompt
    else:
        if class_label is None or prompt is not None:
            raise DeltaDiTError(f"generate | a {spec.arch} bundle is class-conditional. Expected: --class N.")
        key = class_label
    if conditioner is None or decoder is None:
        model = manifest["model"]
        root, looked = components_root(None if model.get("random_init") else model.get("source"), pipeline)
        if not pipeline and model.get("weights_sha256"):
            from deltadit.sources import weights_fingerprint

            now = weights_fingerprint(model["source"])
            if now is not None and now != model["weights_sha256"]:
                raise DeltaDiTError(
                    f"bundle {bundle.root} | was exported from other weights than {model['source']} now holds, so its "
                    "text encoder would not match the exported transformer. Expected: re-export the bundle "
                    "(deltadit-export), or pass --pipeline DIR with the components it was exported with.")
        if conditioner is None:
            conditioner = (TextConditioner(root, looked, manifest["export"]["text_len"])
                           if spec.cond_input == "encoder_hidden_states" else ClassConditioner(config["num_embeds_ada_norm"]))
        if decoder is None:
            decoder = PixelDecoder() if manifest["model"].get("decoder") == "pixels" else VaeDecoder(root, looked)
    cond, uncond = conditioner(key)
    seconds["load+encode"] = time.perf_counter() - tic

    sampling = manifest["sampling"]
    scale = sampling["guidance_scale"] if guidance_scale is None else guidance_scale
    if scale > 1 and manifest["export"]["opt_batch"] < 2:
        raise DeltaDiTError(f"--guidance-scale | {scale} needs the CFG batch of 2, but the bundle was exported for batch 1. "
                            "Expected: guidance scale <= 1, or re-export with guidance.")
    side, channels = manifest["export"]["latent_side"], config["in_channels"]
    generator = torch.Generator().manual_seed(seed)
    scheduler, latents = prepare(sampling, bundle.plan.num_steps, (1, channels, side, side), generator)
    device = getattr(bundle.runner, "device", "cpu")
    latents = latents.to(device)
    cond = {k: v.to(device) for k, v in cond.items()}
    uncond = {k: v.to(device) for k, v in uncond.items()}
    executor = bundle.executor() if cache else bundle.uncached()
    bar = tqdm(total=bundle.plan.num_steps, desc="denoise", disable=not progress)
    tic = time.perf_counter()
    with torch.no_grad():
        latents = denoise(executor, spec, config, scheduler, latents, cond, uncond, scale, generator=generator,
                          callback=lambda *a: bar.update(1))
    bar.close()
    seconds["denoise"] = time.perf_counter() - tic
    tic = time.perf_counter()
    image = decoder(latents.cpu())
    seconds["decode"] = time.perf_counter() - tic
    return Generation(image=image, latents=latents.cpu(), seconds=seconds, cached=cache,
                      random_init=bool(manifest["model"].get("random_init")))
