"""The bundle format, shared by the exporter (writes) and the runtime (reads).

    BUNDLE/
      manifest.json      format version, model identity + config, segments, plan, sampling, versions
      onnx/<segment>.onnx (+ <segment>.onnx.data: external weights)

A bundle is closed: everything it uses is listed, hashed and inside it (:func:`read_bundle`). A folder
is a bundle only once manifest.json is in it; the exporter writes everything into
``BUNDLE.partial/`` and renames it into place as its last act, so an interrupted export never leaves a
folder that loads.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from pathlib import Path

from deltadit.errors import DeltaDiTError, raise_if
from deltadit.manifest import FORMAT_VERSION, Manifest, check_relative_path  # noqa: F401 - FORMAT_VERSION re-exported

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_bundle(bundle: str | Path) -> Manifest:
    """Open a bundle as a closed, verified unit and return its typed manifest.

    Checks, before any file is used: the manifest parses and validates (:class:`Manifest`); every file
    it lists lies inside the bundle (no symlink anywhere on its path, no '..'), is a regular file and
    matches its sha256; every ONNX graph's external data is one of its own segment's hashed files. Files
    the manifest does not list are never opened."""
    root = Path(bundle)
    path = root / MANIFEST
    if not root.is_dir():
        raise DeltaDiTError(f"bundle {root} | is not a folder. Expected: the output folder of deltadit-export.")
    if not path.is_file():
        partial = " (an interrupted export leaves BUNDLE.partial/; re-run deltadit-export)" if root.name.endswith(".partial") else ""
        raise DeltaDiTError(f"bundle {root} | has no {MANIFEST}{partial}. Expected: the output folder of deltadit-export.")
    inside_or_raise(root, MANIFEST)
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise DeltaDiTError(f"{path} | is {path.stat().st_size} bytes. Expected: a manifest written by deltadit-export "
                            f"(under {MAX_MANIFEST_BYTES >> 20} MiB).")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DeltaDiTError(f"{path} | is not valid JSON ({e}). Expected: a manifest written by deltadit-export.") from None
    try:
        manifest = Manifest.from_dict(data)
    except DeltaDiTError as e:
        raise DeltaDiTError(f"bundle {root} | {e}") from None
    problems = []
    for owner, entry in manifest.files():
        f = root / entry.path
        try:
            inside_or_raise(root, entry.path)
        except DeltaDiTError as e:
            problems.append(str(e))
            continue
        if not f.is_file():
            problems.append(f"{f} | missing (segment {owner}). Expected: the file the manifest lists; re-export the bundle.")
        elif sha256_file(f) != entry.sha256:
            problems.append(f"{f} | sha256 does not match the manifest (segment {owner}): the file is "
                            "corrupt or was changed. Expected: re-export the bundle or restore the file.")
    raise_if(problems, f"bundle {root} | failed its integrity check:" if len(problems) > 1 else None)
    for seg in (*manifest.segments, *([manifest.text_encoder] if manifest.text_encoder else [])):
        check_external_data(root, seg)
    return manifest


def inside_or_raise(root: Path, relative: str) -> Path:
    """``root / relative`` if no part of it is a symlink and it stays inside ``root``; else raise."""
    check_relative_path(relative, "path")
    here = Path(root)
    for part in relative.split("/"):
        here = here / part
        if here.is_symlink():
            raise DeltaDiTError(f"{here} | is a symbolic link. Expected: a bundle holds its files itself (a link can "
                                "point outside it); copy the bundle with its files, e.g. cp -rL.")
    if not here.resolve().is_relative_to(Path(root).resolve()):
        raise DeltaDiTError(f"{here} | lies outside the bundle. Expected: files inside the bundle folder.")
    return here


def check_external_data(root: Path, seg) -> None:
    """Every ONNX graph of ``seg`` may load external data only from the segment's own hashed files."""
    import onnx

    owned = {f.path for f in seg.files}
    for entry in seg.files:
        if not entry.path.endswith(".onnx"):
            continue
        model = onnx.load(str(root / entry.path), load_external_data=False)
        folder = posixpath.dirname(entry.path)
        for tensor in _all_tensors(model.graph):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = next((kv.value for kv in tensor.external_data if kv.key == "location"), "")
            target = posixpath.normpath(posixpath.join(folder, location))
            if target not in owned:
                raise DeltaDiTError(
                    f"{root / entry.path} | reads external data from {location!r}, which is not one of segment "
                    f"{seg.name}'s hashed files. Expected: a bundle written by deltadit-export; re-export it.")


def _all_tensors(graph):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
