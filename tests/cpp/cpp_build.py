"""Build the C++ runtime (CMake + Ninja, cached under build/) and call its C ABI through ctypes."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "runtime" / "cpp"
SDK = ROOT / "build" / "ort-sdk"


def tool(name: str) -> str | None:
    venv = Path(sys.executable).parent / name
    return str(venv) if venv.exists() else shutil.which(name)


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def build(folder: Path, *options: str) -> Path:
    """Configure (once) and build runtime/cpp into ``folder``; Ninja rebuilds only what changed."""
    if not (SDK / "include" / "onnxruntime_cxx_api.h").exists():
        subprocess.run(["bash", str(SOURCE / "setup_sdk.sh")], check=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if not (folder / "build.ninja").exists():
        subprocess.run([tool("cmake"), "-S", str(SOURCE), "-B", str(folder), "-G", "Ninja", *options],
                       check=True, env=env, capture_output=True)
    done = subprocess.run([tool("cmake"), "--build", str(folder)], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"C++ build failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}")
    return folder


class CppError(RuntimeError):
    pass


class CppRuntime:
    """The C ABI (deltadit.h) of libdeltadit.so. ctypes releases the GIL during each call, so Python
    threads calling :meth:`generate` run C++ generations concurrently."""

    def __init__(self, library: Path):
        lib = self.lib = ctypes.CDLL(str(library))
        vp, i64p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64)
        lib.ddt_last_error.restype = ctypes.c_char_p
        for name, args in {"ddt_open": [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(vp)],
                           "ddt_request_new": [ctypes.POINTER(vp)],
                           "ddt_request_set_prompt": [vp, ctypes.c_char_p],
                           "ddt_request_set_class": [vp, ctypes.c_int64],
                           "ddt_request_set_seed": [vp, ctypes.c_uint64],
                           "ddt_request_set_guidance": [vp, ctypes.c_float],
                           "ddt_request_set_cache": [vp, ctypes.c_int],
                           "ddt_request_set_noise": [vp, ctypes.POINTER(ctypes.c_float), ctypes.c_int64],
                           "ddt_request_set_float": [vp, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float), i64p, ctypes.c_int],
                           "ddt_request_set_int64": [vp, ctypes.c_char_p, ctypes.c_int, i64p, i64p, ctypes.c_int],
                           "ddt_generate": [vp, vp, ctypes.POINTER(vp)]}.items():
            getattr(lib, name).argtypes = args
            getattr(lib, name).restype = ctypes.c_int
        for name in ("ddt_close", "ddt_request_free", "ddt_result_free"):
            getattr(lib, name).argtypes = [vp]
            getattr(lib, name).restype = None
        lib.ddt_result_latents.argtypes = [vp, i64p, ctypes.POINTER(ctypes.c_int)]
        lib.ddt_result_latents.restype = ctypes.POINTER(ctypes.c_float)
        lib.ddt_result_segment_seconds.argtypes = lib.ddt_result_total_seconds.argtypes = [vp]
        lib.ddt_result_segment_seconds.restype = lib.ddt_result_total_seconds.restype = ctypes.c_double

    def check(self, status: int) -> None:
        if status != 0:
            raise CppError(self.lib.ddt_last_error().decode())

    def open(self, path) -> ctypes.c_void_p:
        handle = ctypes.c_void_p()
        self.check(self.lib.ddt_open(str(path).encode(), None, ctypes.byref(handle)))
        return handle

    def close(self, handle) -> None:
        self.lib.ddt_close(handle)

    def generate(self, handle, *, cond: dict | None = None, uncond: dict | None = None, noise=None, seed: int = 0,
                 prompt: str | None = None, class_id: int | None = None, cache: bool = True) -> tuple[np.ndarray, dict]:
        """(final latents, {"segments": s, "total": s})."""
        req, res = ctypes.c_void_p(), ctypes.c_void_p()
        self.check(self.lib.ddt_request_new(ctypes.byref(req)))
        keep = []  # arrays must outlive the calls that copy them
        try:
            self.check(self.lib.ddt_request_set_seed(req, seed))
            self.check(self.lib.ddt_request_set_cache(req, int(cache)))
            if prompt is not None:
                self.check(self.lib.ddt_request_set_prompt(req, prompt.encode()))
            if class_id is not None:
                self.check(self.lib.ddt_request_set_class(req, class_id))
            if noise is not None:
                a = np.ascontiguousarray(noise, dtype=np.float32)
                keep.append(a)
                self.check(self.lib.ddt_request_set_noise(req, a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), a.size))
            for flag, tensors in ((0, cond or {}), (1, uncond or {})):
                for name, t in tensors.items():
                    self._set(req, name, flag, np.asarray(t), keep)
            self.check(self.lib.ddt_generate(handle, req, ctypes.byref(res)))
            shape, rank = (ctypes.c_int64 * 8)(), ctypes.c_int()
            ptr = self.lib.ddt_result_latents(res, shape, ctypes.byref(rank))
            latents = np.ctypeslib.as_array(ptr, shape=tuple(shape[: rank.value])).copy()
            times = {"segments": self.lib.ddt_result_segment_seconds(res), "total": self.lib.ddt_result_total_seconds(res)}
            return latents, times
        finally:
            self.lib.ddt_result_free(res)
            self.lib.ddt_request_free(req)

    def _set(self, req, name: str, uncond: int, a: np.ndarray, keep: list) -> None:
        shape = (ctypes.c_int64 * a.ndim)(*a.shape)
        if np.issubdtype(a.dtype, np.integer):
            a = np.ascontiguousarray(a, dtype=np.int64)
            keep.append(a)
            data = a.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))
            self.check(self.lib.ddt_request_set_int64(req, name.encode(), uncond, data, shape, a.ndim))
        else:
            a = np.ascontiguousarray(a, dtype=np.float32)
            keep.append(a)
            data = a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            self.check(self.lib.ddt_request_set_float(req, name.encode(), uncond, data, shape, a.ndim))
