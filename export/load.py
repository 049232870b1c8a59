"""Stage 1 of the export: get the diffusers transformer (local weights, or seeded random for speed work)."""

from __future__ import annotations

from pathlib import Path

from deltadit.errors import DeltaDiTError
from deltadit.models import get_spec
from deltadit.presets import Preset
from deltadit.sources import hub_cache, resolve_source


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
    source = resolve_source(source)
    looked = []
    local = Path(source)
    for folder in (local / "transformer", local):
        looked.append(str(folder))
        if (folder / "config.json").is_file():
            return cls.from_pretrained(folder).eval()
    looked.append(f"the local hub cache {hub_cache()} for '{source}'")
    try:
        return cls.from_pretrained(source, subfolder="transformer", local_files_only=True).eval()
    except Exception:  # noqa: BLE001 - any failure here means "not on disk"; say where we looked
        pass
    raise DeltaDiTError(
        f"weights | no {cls.__name__} weights found for '{source}'. Looked in: " + "; ".join(looked) + ". "
        "Expected: --weights DIR (a diffusers model folder), a hub id already downloaded into the cache "
        "(set HF_HOME / HF_HUB_CACHE), or --random-init for seeded random weights."
    )
