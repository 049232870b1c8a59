"""Stage 1 of the export: get the diffusers transformer (local weights, or seeded random for speed work)."""

from __future__ import annotations

import os
from pathlib import Path

from deltadit.errors import DeltaDiTError
from deltadit.models import get_spec
from deltadit.presets import Preset


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def load_transformer(preset: Preset, weights: str | None, random_init: bool, seed: int = 0):
    """The transformer for ``preset``.

    weights: a local diffusers model folder (with ``transformer/`` or a transformer config) or a hub id
    already in the local cache; None uses the preset's source id. random_init builds the preset's
    architecture with seeded random weights instead (for speed work; marked in the manifest).
    Nothing is downloaded.
    """
    return build_transformer(preset.arch, preset.transformer, weights or preset.source, random_init, seed)


def build_transformer(arch: str, config: dict, source: str, random_init: bool, seed: int = 0):
    """The ``arch`` transformer: ``config`` with seeded random weights, or the weights at ``source`` (a
    local folder, ``embedded:NAME`` or a hub id already in the cache). A bundle's manifest holds all four
    (model.arch / config / source / random_init + seed), so the runtime rebuilds its PyTorch twin with this."""
    import diffusers
    import torch

    cls = getattr(diffusers, get_spec(arch).diffusers_class)
    if random_init:
        torch.manual_seed(seed)
        return cls(**config).eval()
    from deltadit.presets import resolve_source

    source = resolve_source(source)
    looked = []
    local = Path(source)
    for folder in (local / "transformer", local):
        looked.append(str(folder))
        if (folder / "config.json").is_file():
            return cls.from_pretrained(folder).eval()
    looked.append(f"the local hub cache {_hub_cache()} for '{source}'")
    try:
        return cls.from_pretrained(source, subfolder="transformer", local_files_only=True).eval()
    except Exception:  # noqa: BLE001 - any failure here means "not on disk"; say where we looked
        pass
    raise DeltaDiTError(
        f"weights | no {cls.__name__} weights found for '{source}'. Looked in: " + "; ".join(looked) + ". "
        "Expected: --weights DIR (a diffusers model folder), a hub id already downloaded into the cache "
        "(set HF_HOME / HF_HUB_CACHE), or --random-init for seeded random weights."
    )


def weights_fingerprint(source: str | None) -> str | None:
    """sha256 over the weight and config files of a local source folder's transformer and text encoder
    (the parts a bundle and its prompt encoding come from), or None for sources that are not a local
    folder (hub ids, random init). Recorded in the manifest so that a bundle exported from other weights
    than the folder now holds is recognised (eval reuse, generate's text encoder)."""
    import hashlib

    from deltadit.bundle import sha256_file
    from deltadit.presets import resolve_source

    if not source:
        return None
    root = Path(resolve_source(source))
    if not root.is_dir():
        return None
    parts = [root / "transformer", root / "text_encoder"] if (root / "transformer").is_dir() else [root]
    files = sorted(f for d in parts if d.is_dir() for f in d.iterdir()
                   if f.is_file() and f.suffix in (".safetensors", ".bin", ".json"))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root)}\0".encode())
        h.update(sha256_file(f).encode())  # streamed: real transformer weights are GBs
    return h.hexdigest()
