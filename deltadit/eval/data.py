"""animal-mnist (pip install --no-deps animal-mnist): 10 classes x 1000 silhouettes, 28 x 28, read from
the package's data files (its loader imports TensorFlow; we do not need it)."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np

from deltadit.errors import DeltaDiTError

CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")  # label order
HELD_OUT_PER_CLASS = 100  # the last 100 of each class: never trained on; FID reference and classifier test set


def load_all() -> tuple[np.ndarray, np.ndarray]:
    """All 10,000 images (uint8, N x 28 x 28) and labels."""
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None:
        raise DeltaDiTError("animal-mnist | the package is not installed. Expected: pip install --no-deps animal-mnist")
    folder = Path(spec.submodule_search_locations[0]) / "data" / "Animal_MNIST"
    with gzip.open(folder / "animal_data_version_3.gz", "rb") as f:
        images = pickle.load(f)
    with gzip.open(folder / "animal_label_version_3.gz", "rb") as f:
        labels = pickle.load(f)
    return np.asarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.int64)


def split(part: str) -> tuple[np.ndarray, np.ndarray]:
    """'train': the first 900 images of each class; 'test': the last 100."""
    if part not in ("train", "test"):
        raise ValueError(part)
    images, labels = load_all()
    keep = []
    for c in range(len(CLASSES)):
        idx = np.flatnonzero(labels == c)
        keep.append(idx[:-HELD_OUT_PER_CLASS] if part == "train" else idx[-HELD_OUT_PER_CLASS:])
    keep = np.concatenate(keep)
    return images[keep], labels[keep]
