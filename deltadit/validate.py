"""Checks for user-supplied values (CLI flags and API arguments), in the house error style.

Each returns the value (converted) or raises :class:`DeltaDiTError` naming the value, the problem and
the accepted range, so callers validate everything before any work starts.
"""

from __future__ import annotations

import math

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


def seed(value, name: str = "seed") -> int:
    return integer(name, value, 0, SEED_MAX)


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
