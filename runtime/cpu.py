"""What this CPU is (:func:`machine`: model and ISA flags) and what it can do for ONNX Runtime's INT8 kernels.

ONNX Runtime runs a quantized MatMul on x86 as u8 x s8 multiply-adds. Without a VNNI dot-product
instruction (AVX512-VNNI, AVX-VNNI or AMX-INT8), its AVX2 kernel adds pairs of u8 x s8 products in 16-bit
registers with saturation (vpmaddubsw): with 8-bit weights a pair can reach 2 x 255 x 127 = 64770 and
saturate at 32767, so results are wrong (measured 17 % relative error on one random layer, AMD EPYC
Zen 3). Weights kept within +-64 cannot saturate (2 x 255 x 64 = 32640); the exporter's 7-bit weights use
+-63. ONNX Runtime documents
the same limit ("reduce_range" for U8S8 on AVX2 / AVX512 without VNNI).
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
SAFE_WEIGHT_CODE = 64  # largest |weight code| that cannot saturate a 16-bit pair sum of u8 x s8 products


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def int8_gemm_saturates() -> bool:
    """True on x86 CPUs whose ONNX Runtime int8 kernel can saturate with full 8-bit weights."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False  # ARM64 kernels use sdot/udot (32-bit accumulation)
    flags = cpu_flags()
    if not flags:
        return False  # unknown (no /proc/cpuinfo): assume a current CPU
    return not any(f in flags for f in VNNI_FLAGS)


def default_weight_bits() -> int:
    """8-bit weights where this CPU's int8 kernels are exact, else 7 (see the module docstring)."""
    return 7 if int8_gemm_saturates() else 8


def machine() -> dict:
    """The CPU and the instruction-set flags that decide which kernels run (x86: AVX-512, VNNI, AMX)."""
    import os

    info = {"machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            info["cpu"] = value.strip()
        elif key.strip() == "flags":
            info["isa_flags"] = sorted(f for f in value.split() if f.startswith(("avx", "amx", "fma", "f16c")) or "vnni" in f)
            break
    return info
