"""Conditioning and decoding around a bundle's transformer: prompt or class -> head inputs, latents -> image.

Which conditioner a model uses is data in its spec (``spec.conditioning``); this module maps each kind
to its implementation (:data:`CONDITIONERS`). Every part comes from a diffusers pipeline folder that
the user names (or the embedded model), loaded once and shared by concurrent generations.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from deltadit import validate
from deltadit.errors import DeltaDiTError
from deltadit.sources import local_folder, resolve_source


def components_root(source: str | None, pipeline: str | Path | None = None) -> tuple[Path | None, list[str]]:
    """The diffusers pipeline folder to take text encoder / VAE from (``pipeline``, else ``source``: a
    folder, ``embedded:NAME`` or a hub id already in the local cache), and where it looked. Callers pass
    only what the user named (a CLI flag, an API argument, a preset), never a path read from a manifest."""
    cand = str(pipeline) if pipeline else source
    if not cand:
        return None, []
    where = Path(resolve_source(cand))
    return local_folder(cand), [str(where)] + ([] if where.is_dir() else [f"the local hub cache for '{cand}'"])


def _need(root: Path | None, looked: list[str], what: str, sub: str) -> Path:
    if root is not None and (root / sub).is_dir():
        return root / sub
    where = "; ".join(looked + ([str(root / sub)] if root is not None else [])) or "nowhere (no --pipeline given and the bundle has no on-disk source)"
    raise DeltaDiTError(
        f"{what} | not found. Looked in: {where}. Expected: --pipeline DIR, a diffusers pipeline folder (or a hub id "
        f"already in the local cache) with {sub}/ in it; the bundle holds only the transformer."
    )


class TextConditioner:
    """PixArt-α prompt encoding with the pipeline's tokenizer and T5 encoder. Thread-safe: encoding is
    serialised (a fast tokenizer must not be used by two threads at once)."""

    def __init__(self, root: Path | None, looked: list[str], text_len: int):
        from transformers import AutoTokenizer, T5EncoderModel

        self.tokenizer = AutoTokenizer.from_pretrained(_need(root, looked, "tokenizer", "tokenizer"))
        self.encoder = T5EncoderModel.from_pretrained(_need(root, looked, "text encoder", "text_encoder")).eval()
        self.text_len = text_len
        self._uncond = None
        self._lock = threading.Lock()

    def encode(self, text: str) -> dict:
        import torch

        tokens = self.tokenizer([text.lower().strip()], padding="max_length", max_length=self.text_len,
                                truncation=True, add_special_tokens=True, return_tensors="pt")
        with torch.no_grad():
            embeds = self.encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
        return {"encoder_hidden_states": embeds.float(), "encoder_attention_mask": tokens.attention_mask}

    def __call__(self, prompt: str) -> tuple[dict, dict]:
        with self._lock:
            if self._uncond is None:  # the negative prompt "" is the same for every call
                self._uncond = self.encode("")
            return self.encode(prompt), self._uncond


class ClassConditioner:
    """DiT class labels; the unconditional label is the extra 'null' class."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def __call__(self, label: int) -> tuple[dict, dict]:
        import torch

        label = validate.integer("--class", label, 0, self.num_classes - 1)
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


def text_conditioner(root, looked, text_len: int, config: dict) -> TextConditioner:
    return TextConditioner(root, looked, text_len)


def class_conditioner(root, looked, text_len: int, config: dict) -> ClassConditioner:
    return ClassConditioner(config["num_embeds_ada_norm"])


# spec.conditioning -> loader(root, looked, text_len, config); "class" needs no pipeline folder.
CONDITIONERS = {"t5": text_conditioner, "class": class_conditioner}
NEEDS_FOLDER = {"t5": True, "class": False}


def make_conditioner(kind: str, root, looked, text_len: int, config: dict):
    if kind not in CONDITIONERS:
        raise DeltaDiTError(f"conditioning | '{kind}' has no implementation in this deltadit. Expected: one of "
                            f"{', '.join(CONDITIONERS)}.")
    return CONDITIONERS[kind](root, looked, text_len, config)
