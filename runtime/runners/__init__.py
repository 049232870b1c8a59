"""Backends behind one small interface (:class:`Runner`). The executor never asks which one it has."""

from deltadit.runtime.runners.base import Runner

__all__ = ["Runner"]
