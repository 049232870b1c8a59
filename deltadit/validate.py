"""Checks for user-supplied values (CLI flags and API arguments), in the house error style.

Each returns the value (converted) or raises :class:`DeltaDiTError` naming the value, the problem and
the accepted range, so callers validate everything before any work starts.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from deltadit.errors import DeltaDiTError

SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed accepts [-2**63, 2**64); we keep to non-negative int64

# Bounds on every size a user or a manifest can ask for: generous for real models (PixArt-Σ 4K has a
# 512-side latent, T5 captions are <= 512 tokens, DDPM schedules 1000 timesteps), small enough that a
# typo or a hostile manifest fails with a message instead of allocating gigabytes.
MAX_STEPS = 1000            # denoising steps T
MAX_BLOCKS = 512            # transformer blocks
MAX_TEXT_LEN = 1024         # caption tokens
MAX_RESOLUTION = 8192       # pixels per side
MAX_LATENT_SIDE = 1024      # latent pixels per side
MAX_BATCH = 256             # batch an engine / bundle accepts
MAX_TRAIN_TIMESTEPS = 10000 # a scheduler's num_train_timesteps
MAX_CALIB_COUNT = 1000      # INT8 calibration generations
MAX_GUIDANCE = 100.0        # classifier-free guidance scale
MAX_REPEATS = 1000          # timing rounds / repeats of a benchmark
MAX_CLASSES = 100_000       # class labels of a class-conditional model (ImageNet DiT: 1000)

CPU_BACKENDS = ("onnxrt", "openvino", "auto")  # --backend of generate / check / serve (auto: runtime/choose.py)
OPENVINO_PRECISIONS = ("auto", "f32", "bf16")  # the OpenVINO runner's precision (runtime/runners/openvino.py)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def integer(name: str, value, lo: int | None = None, hi: int | None = None, hint: str = "") -> int:
    """An int (bools refused) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise DeltaDiTError(f"{name} | {value!r} is not an integer. Expected: {_range(lo, hi)}{hint}.")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise DeltaDiTError(f"{name} | {value} is out of range. Expected: {_range(lo, hi)}{hint}.")
    return value


def real(name: str, value, lo: float | None = None, hi: float | None = None, hint: str = "") -> float:
    """A finite float in [lo, hi] (nan and inf refused)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise DeltaDiTError(f"{name} | {value!r} is not a number. Expected: a finite number{_in(lo, hi)}{hint}.") from None
    if isinstance(value, bool) or not math.isfinite(x) or (lo is not None and x < lo) or (hi is not None and x > hi):
        raise DeltaDiTError(f"{name} | {value!r} is out of range. Expected: a finite number{_in(lo, hi)}{hint}.")
    return x


def fraction(name: str, value, hint: str = "") -> float:
    """A finite float in (0, 1]."""
    x = real(name, value, 0.0, 1.0, hint)
    if x == 0:
        raise DeltaDiTError(f"{name} | {value!r} is out of range. Expected: a number in (0, 1]{hint}.")
    return x


def seed(value, name: str = "seed") -> int:
    return integer(name, value, 0, SEED_MAX)


def output_png(name: str, value) -> Path:
    """A path a PNG may be written to: ends in .png, its folder exists or can be created, and it is not an
    existing file of another kind (which would be overwritten). Creates nothing."""
    path = Path(value)
    if path.suffix.lower() != ".png":
        raise DeltaDiTError(f"{name} | '{value}' does not end in .png. Expected: a .png file name, e.g. image.png.")
    if path.is_dir():
        raise DeltaDiTError(f"{name} | '{value}' is a folder. Expected: a .png file name, e.g. {path / 'image.png'}.")
    if path.exists():
        try:
            with open(path, "rb") as f:
                is_png = f.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
        except OSError as e:
            raise DeltaDiTError(f"{name} | '{value}' cannot be read ({e.strerror}). Expected: a writable path.") from None
        if not is_png:
            raise DeltaDiTError(f"{name} | '{value}' exists and is not a PNG; it will not be overwritten. "
                                "Expected: a new file name or an existing PNG.")
    output_folder(name, path.absolute().parent)
    return path


def output_folder(name: str, value) -> Path:
    """A folder that exists or can be created (no file in the way, the nearest existing one writable).
    Creates nothing."""
    folder = Path(value).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise DeltaDiTError(f"{name} | folder '{folder}' cannot be created: '{existing}' is a file. "
                            "Expected: a path under a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DeltaDiTError(f"{name} | folder '{existing}' is not writable. Expected: a path you can write to.")
    return Path(value)


def backend_only(flag: str, value, backend: str, wanted: str = "onnxrt") -> str | None:
    """The one-line problem of an option of one engine (``flag`` = ``value``, for --backend ``wanted``) given
    with another --backend."""
    if value and backend != wanted:
        return f"{flag} | applies to --backend {wanted}, not {backend}. Expected: drop {flag}."
    return None


def _range(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"an integer in [{lo}, {hi}]"
    if lo is not None:
        return f"an integer >= {lo}"
    if hi is not None:
        return f"an integer <= {hi}"
    return "an integer"


def _in(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""
