"""deltadit.memory: large C heap blocks freed inside mmap_large_blocks() leave the RSS at once."""

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest

from deltadit import memory

MIB = 1024 * 1024


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _kept_after_free(libc, blocks: int = 16, size: int = 8 * MIB) -> float:
    """RSS (MiB) still held after mallocing, touching and freeing ``blocks`` blocks, each followed by a 1 MiB
    block that is kept (so no freed block reaches the heap's top, where glibc trims anyway)."""
    libc.malloc_trim(0)  # free heap pages left by earlier tests go first, so these blocks need new ones
    before = _rss_mib()
    ptrs, pins = [], []
    for _ in range(blocks):
        ptrs.append(libc.malloc(size))
        pins.append(libc.malloc(MIB))
    assert all(ptrs) and all(pins)
    for p in ptrs:
        ctypes.memset(p, 1, size)
    for p in ptrs:
        libc.free(p)
    kept = _rss_mib() - before
    for p in pins:
        libc.free(p)
    libc.malloc_trim(0)
    return kept


def measure() -> tuple[float, float]:
    """(MiB kept after the free with glibc's threshold at its 32 MiB ceiling, MiB kept inside the context)."""
    libc = memory._libc()
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # the threshold where glibc's own adjustment takes it after large frees (what the export's earlier stages
    # do): 8 MiB blocks then come from the heap
    libc.mallopt(memory.M_MMAP_THRESHOLD, memory.MMAP_THRESHOLD_MAX)
    control = _kept_after_free(libc)
    with memory.mmap_large_blocks():
        inside = _kept_after_free(libc)
    return control, inside


def test_large_blocks_freed_inside_the_context_leave_the_rss():
    """In a fresh process, whose heap holds no free blocks from earlier tests that the pins could reuse."""
    libc = memory._libc()
    if libc is None or not hasattr(libc, "mallopt"):
        pytest.skip("no glibc malloc here")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", "from tests.test_memory import measure; print(*measure())"],
                         cwd=root, capture_output=True, text=True, timeout=120, check=True).stdout
    control, inside = map(float, out.split())
    assert control > 100, control  # 128 MiB freed, still in the RSS
    assert inside < 16, inside
