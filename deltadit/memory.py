"""Giving freed memory back to the OS between large steps (the export's stages, opening ONNX Runtime
sessions in the runtime).

glibc keeps freed blocks of up to its mmap threshold (which grows to 32 MiB after large frees: a
PixArt-α weight is 5-21 MiB) in the heap, so a dropped module, a serialised ONNX graph or a closed ONNX
Runtime session stays in the process's RSS until ``malloc_trim`` returns the free pages. That is
invisible to Python but counts for the device's memory (benchmarks/export_memory.py --sample).
Opening an INT8 session is the large case in the runtime: ONNX Runtime reads the FP32 weights and folds
their Q/DQ into int8 ones, and the freed FP32 copy stays in the heap (a 4-block PixArt-α INT8 group:
799 MiB after the session opens, 149 MiB once trimmed).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from contextlib import contextmanager
from functools import lru_cache

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # the ceiling of glibc's dynamic mmap threshold on 64-bit


@lru_cache(maxsize=1)
def _libc():
    """glibc's handle, or None where there is no ``malloc_trim`` (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_memory() -> bool:
    """Collect Python's reference cycles, then return the C heap's free pages to the OS.
    Returns whether ``malloc_trim`` ran (False: no glibc; only the collection happened)."""
    gc.collect()
    return trim_heap()


def trim_heap() -> bool:
    """Return the C heap's free pages to the OS (no Python collection: for memory a C++ library freed,
    e.g. after an ONNX Runtime session opened). Returns whether ``malloc_trim`` ran (False: no glibc)."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@contextmanager
def mmap_large_blocks(threshold: int = 4 * 1024 * 1024):
    """Within: C heap blocks of ``threshold`` bytes or more come from their own mmap, so each goes back to the
    OS when freed, not at the next trim. The legacy ONNX exporter's transients (the graph's weights copied
    into a ModelProto, its serialised string, a Python copy of it) are such blocks: with them mmapped, the
    28-block PixArt-α INT8 export's ONNX stage peaked at 5097-5410 MiB instead of 5948-6147 MiB, the whole
    export at 5542-5551 MiB (AMX Xeon, benchmarks/export_memory.py; README, Export memory). On exit the threshold is fixed at glibc's dynamic
    ceiling (32 MiB), where it would have grown anyway (glibc cannot hand it back to its own adjustment).
    Without glibc's ``mallopt`` nothing changes."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, int(threshold))
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
