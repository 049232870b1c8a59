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
from functools import lru_cache


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
