"""Stage 1 of the export: get the diffusers transformer (local weights, or seeded random for speed work)."""

from __future__ import annotations

import json
from pathlib import Path

from deltadit.errors import DeltaDiTError
from deltadit.models import get_spec
from deltadit.presets import Preset
from deltadit.sources import hub_cache, local_folder, resolve_source


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
    root = local_folder(source)  # a folder, embedded:NAME or a cached hub id's snapshot; nothing downloaded
    looked = [str(Path(resolve_source(source)))] + ([] if root is not None else
                                                    [f"the local hub cache {hub_cache()} for '{source}'"])
    for folder in ((root / "transformer", root) if root is not None else ()):
        if (folder / "config.json").is_file():
            return load_folder(cls, folder)  # every load goes through the folder checks, cached hub ids too
    raise DeltaDiTError(
        f"weights | no {cls.__name__} weights found for '{source}'. Looked in: " + "; ".join(looked) + ". "
        "Expected: --weights DIR (a diffusers model folder), a hub id already downloaded into the cache "
        "(set HF_HOME / HF_HUB_CACHE), or --random-init for seeded random weights."
    )


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def load_folder(cls, folder: Path):
    """``cls`` from a diffusers model folder (config.json + weights), every weight present and of the
    config's shape; any problem with the folder is a :class:`DeltaDiTError` naming it and the fix."""
    fix = "Expected: the config.json and weights saved together by save_pretrained (re-download or re-save them)."
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DeltaDiTError(f"weights {folder} | config.json is not readable JSON ({e}). {fix}") from None
    if not isinstance(config, dict):
        raise DeltaDiTError(f"weights {folder} | config.json is not a JSON object. {fix}")
    declared = config.get("_class_name")
    if declared and declared != cls.__name__:
        raise DeltaDiTError(f"weights {folder} | holds a {declared}, not the {cls.__name__} this model preset needs. "
                            f"Expected: --weights of a {cls.__name__}, or the --model preset of this architecture.")
    if not any(any(folder.glob(p)) for p in WEIGHT_FILES):
        raise DeltaDiTError(f"weights {folder} | has config.json but no weights file (diffusion_pytorch_model.safetensors). {fix}")
    try:
        model, info = cls.from_pretrained(folder, output_loading_info=True)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever diffusers raises on this folder is a problem with the folder
        reason = " ".join(str(e).split())[:200]
        raise DeltaDiTError(f"weights {folder} | could not be loaded as {cls.__name__} ({type(e).__name__}: {reason}): "
                            f"config.json or a weights file is invalid, truncated or corrupt. {fix}") from None
    problems = {k: info.get(k) or [] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(problems.values()):
        counts = ", ".join(f"{len(v)} {k.replace('_keys', '')}" for k, v in problems.items() if v)
        first = next(v for v in problems.values() if v)[0]
        raise DeltaDiTError(f"weights {folder} | do not match its config.json ({counts} tensors, e.g. {first}): weights of "
                            f"another architecture or size. {fix}")
    return model.eval()
