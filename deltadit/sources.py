"""Where model files come from: embedded weights shipped in the package, local folders, the local hub
cache. Shared by the exporter (transformer weights) and the runtime (text encoder / VAE), so the
runtime never imports the export stack.
"""

from __future__ import annotations

import hashlib
import os
import re
from importlib import resources
from pathlib import Path

from deltadit.errors import DeltaDiTError

EMBEDDED = "embedded:"
_EMBEDDED_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def hub_cache() -> Path:
    """The Hugging Face hub cache folder (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def user_cache(kind: str) -> Path:
    """deltadit's cache folder for ``kind`` (e.g. TensorRT engines, OpenVINO blobs built on load):
    $DELTADIT_CACHE/KIND, else $XDG_CACHE_HOME/deltadit/KIND, else ~/.cache/deltadit/KIND. Never a bundle."""
    base = os.environ.get("DELTADIT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "deltadit"
    return Path(base) / kind


def is_embedded(source: str | None) -> bool:
    return bool(source) and source.startswith(EMBEDDED)


def embedded_names() -> list[str]:
    """Models whose weights ship in the package (deltadit/weights/NAME)."""
    root = resources.files("deltadit.weights")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _EMBEDDED_NAME.match(p.name))


def resolve_source(source: str) -> str:
    """``embedded:NAME`` -> the folder of weights shipped in the package (deltadit/weights/NAME);
    anything else (a folder or a hub id) unchanged. NAME must be one of :func:`embedded_names` (a
    manifest cannot point ``embedded:`` outside the package)."""
    if not is_embedded(source):
        return source
    name = source[len(EMBEDDED):]
    if name not in embedded_names():
        raise DeltaDiTError(f"source | '{source}' is not an embedded model. Expected: one of "
                            + ", ".join(EMBEDDED + n for n in embedded_names()) + ".")
    return str(resources.files("deltadit.weights") / name)


def local_folder(source: str) -> Path | None:
    """The folder ``source`` names on this disk: a folder, ``embedded:NAME``, or a hub id already in the
    local cache (its snapshot folder); None when it is none of these. Nothing is downloaded."""
    path = Path(resolve_source(source))
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, local_files_only=True))
    except Exception:  # noqa: BLE001 - not a cached hub id (or no huggingface_hub): nothing on disk
        return None


def weights_fingerprint(source: str | None) -> str | None:
    """sha256 over the weight and config files of a local source folder's transformer and text encoders
    (the parts a bundle and its prompt encoding come from), or None for sources with no such files on
    disk (random init, a hub id not in the local cache). Recorded in the manifest so that a bundle exported from other weights
    than the folder now holds is recognised (eval reuse, generate's text encoder)."""
    from deltadit.bundle import sha256_file

    if not source:
        return None
    root = local_folder(source)
    if root is None:
        return None
    # The transformer and every text encoder (SD3: CLIP-L, CLIP-G, T5; FLUX: CLIP-L, T5).
    encoders = ("text_encoder", "text_encoder_2", "text_encoder_3")
    parts = [root / "transformer", *(root / e for e in encoders)] if (root / "transformer").is_dir() else [root]
    files = sorted(f for d in parts if d.is_dir() for f in d.iterdir()
                   if f.is_file() and f.suffix in (".safetensors", ".bin", ".json"))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root)}\0".encode())
        h.update(sha256_file(f).encode())  # streamed: real transformer weights are GBs
    return h.hexdigest()
