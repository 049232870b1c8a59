"""The bundle format, shared by the exporter (writes) and the runtime (reads).

    BUNDLE/
      manifest.json      format version, model identity + config, segments, plan, sampling, versions
      onnx/<segment>.onnx (+ <segment>.onnx.data: external weights)

A folder is a bundle only once manifest.json is in it; the exporter writes everything into
``BUNDLE.partial/`` and renames it into place as its last act, so an interrupted export never leaves a
folder that loads.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from deltadit.errors import DeltaDiTError, raise_if

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(bundle: str | Path) -> dict:
    """Read and check a bundle's manifest: presence, format version, every file's presence and hash."""
    root = Path(bundle)
    path = root / MANIFEST
    if not root.is_dir():
        raise DeltaDiTError(f"bundle {root} | is not a folder. Expected: the output folder of deltadit-export.")
    if not path.is_file():
        partial = " (an interrupted export leaves BUNDLE.partial/; re-run deltadit-export)" if root.name.endswith(".partial") else ""
        raise DeltaDiTError(f"bundle {root} | has no {MANIFEST}{partial}. Expected: the output folder of deltadit-export.")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DeltaDiTError(f"{path} | is not valid JSON ({e}). Expected: a manifest written by deltadit-export.") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        hint = "upgrade deltadit to read it" if newer else "re-export it with this deltadit"
        raise DeltaDiTError(f"{path} | format version {version!r} is not supported by this deltadit "
                            f"(reads version {FORMAT_VERSION}). Expected: {hint}.")
    problems = []
    for seg in manifest["segments"]:
        for entry in seg["files"]:
            f = root / entry["path"]
            if not f.is_file():
                problems.append(f"{f} | missing (segment {seg['name']}). Expected: the file the manifest lists; re-export the bundle.")
            elif sha256_file(f) != entry["sha256"]:
                problems.append(f"{f} | sha256 does not match the manifest (segment {seg['name']}): the file is "
                                "corrupt or was changed. Expected: re-export the bundle or restore the file.")
    raise_if(problems, f"bundle {root} | failed its integrity check:" if len(problems) > 1 else None)
    return manifest


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
