"""The runner interface: run one named segment on named tensors.

Modelled on Polygraphy's BaseRunner: the base class owns the lifecycle and the input checks; a backend
writes ``_infer_impl`` (and ``_activate_impl`` / ``_deactivate_impl`` when it holds device resources).
Nothing touches a device before :meth:`activate`.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod

from deltadit.errors import DeltaDiTError
from deltadit.models.spec import Segment


class Runner(ABC):
    name = "base"
    device = "cpu"  # where this runner's torch tensors (hidden states, deltas) live

    def __init__(self, segments: tuple[Segment, ...]):
        self.segments = {s.name: s for s in segments}
        self.is_active = False
        self._lifecycle = threading.Lock()  # one activation even when many threads call infer() first
        # When a list: every infer() appends (segment, seconds of the call) -- the profile `deltadit bench`
        # uses to split a step's time into segments and runtime overhead. On asynchronous GPU backends
        # the seconds are those of the device work too: a traced call waits for the device before and after
        # (_sync), which costs an asynchronous launch its overlap -- whole loops are timed untraced.
        self.trace: list | None = None

    # lifecycle -----------------------------------------------------------------------------------
    def activate(self) -> "Runner":
        with self._lifecycle:
            if not self.is_active:
                self._activate_impl()
                self.is_active = True
        return self

    def deactivate(self) -> None:
        with self._lifecycle:
            if self.is_active:
                self._deactivate_impl()
                self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def _activate_impl(self) -> None:
        pass

    def _deactivate_impl(self) -> None:
        pass

    def _sync(self) -> None:
        """Wait for this runner's queued device work (nothing to wait for on a synchronous backend)."""

    # inference -----------------------------------------------------------------------------------
    def infer(self, segment: str, feeds: dict) -> dict:
        """Run ``segment`` on ``feeds`` (name -> tensor); return its outputs by name."""
        if not self.is_active:
            self.activate()
        seg = self.segments.get(segment)
        if seg is None:
            raise DeltaDiTError(f"segment | '{segment}' is not in this runner. Expected: one of {', '.join(self.segments)}.")
        missing = [n for n in seg.inputs if n not in feeds]
        if missing:
            raise DeltaDiTError(f"segment {segment} | missing input(s) {', '.join(missing)}. Expected: {', '.join(seg.inputs)}.")
        if self.trace is None:
            return self._infer_impl(seg, {n: feeds[n] for n in seg.inputs})
        self._sync()
        tic = time.perf_counter()
        out = self._infer_impl(seg, {n: feeds[n] for n in seg.inputs})
        self._sync()
        self.trace.append((segment, time.perf_counter() - tic))
        return out

    @abstractmethod
    def _infer_impl(self, segment: Segment, feeds: dict) -> dict:
        """Run one segment; ``feeds`` holds exactly ``segment.inputs``."""

    # Δ arithmetic on this backend's tensors (overridden where tensors are not operator-friendly) ---
    def add(self, a, b):
        return a + b

    def sub(self, a, b):
        return a - b
