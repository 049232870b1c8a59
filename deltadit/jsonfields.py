"""Typed access to a JSON document that names the offending field on every error (``segments[2].path``).

Used by the manifest reader (deltadit.manifest): every value is checked for type and bounds where it is
read, and a bad one raises one DeltaDiTError naming the field and the fix.
"""

from __future__ import annotations

import math
import posixpath
import re
from typing import Any

from deltadit.errors import DeltaDiTError


class Fields:
    """Typed access to one JSON object, naming the field (``segments[2].files[0].path``) on error."""

    def __init__(self, data: Any, where: str):
        if not isinstance(data, dict):
            bad(where, f"is {kind(data)}", "an object")
        self.data, self.where = data, where

    def _get(self, key: str, optional: bool):
        if key not in self.data:
            if optional:
                return None
            bad(self._at(key), "is missing", "the field deltadit-export writes")
        return self.data[key]

    def _at(self, key) -> str:
        return f"{self.where}.{key}" if self.where else str(key)

    def str(self, key: str, choices=None, optional: bool = False, pattern: re.Pattern | None = None) -> str | None:
        v = self._get(key, optional)
        if v is None and optional:
            return None
        if not isinstance(v, str):
            bad(self._at(key), f"is {kind(v)}", "a string")
        if choices is not None and v not in choices:
            bad(self._at(key), f"is {v!r}", "one of " + ", ".join(choices))
        if pattern is not None and not pattern.match(v):
            bad(self._at(key), f"is {v!r}", f"a value matching {pattern.pattern}")
        return v

    def int(self, key: str, lo: int, hi: int, optional: bool = False) -> int | None:
        v = self._get(key, optional)
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            bad(self._at(key), f"is {kind(v)}", f"an integer in [{lo}, {hi}]")
        if not lo <= v <= hi:
            bad(self._at(key), f"is {v}", f"an integer in [{lo}, {hi}]")
        return v

    def float(self, key: str, lo: float, hi: float, optional: bool = False) -> float | None:
        v = self._get(key, optional)
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
            bad(self._at(key), f"is {v!r}", f"a finite number in [{lo}, {hi}]")
        return float(v)

    def bool(self, key: str) -> bool:
        v = self._get(key, False)
        if not isinstance(v, bool):
            bad(self._at(key), f"is {kind(v)}", "true or false")
        return v

    def obj(self, key: str, optional: bool = False) -> "Fields | None":
        v = self._get(key, optional)
        if v is None and optional:
            return None
        return Fields(v, self._at(key))

    def list(self, key: str, max_len: int) -> list:
        v = self._get(key, False)
        if not isinstance(v, list):
            bad(self._at(key), f"is {kind(v)}", "a list")
        if len(v) > max_len:
            bad(self._at(key), f"has {len(v)} entries", f"at most {max_len}")
        return v


def kind(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), f"{type(v).__name__} {v!r}")


def bad(field_name: str, problem: str, expected: str):
    raise DeltaDiTError(f"manifest field {field_name} | {problem}. Expected: {expected} (a manifest written by "
                        "deltadit-export; re-export the bundle).")


def check_relative_path(path: str, where: str) -> str:
    """A bundle-relative path: POSIX, relative, normalised, no '..', no empty or hidden parts."""
    parts = path.split("/")
    if (not path or path.startswith("/") or "\\" in path or "\0" in path or posixpath.normpath(path) != path
            or any(p in ("", ".", "..") for p in parts) or re.match(r"^[A-Za-z]:", path)):
        bad(where, f"is {path!r}", "a relative path inside the bundle (no '..', no absolute path)")
    return path
