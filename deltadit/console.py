"""What the tools print while they work: one progress display for terminals and logs alike.

On a terminal (stderr is a TTY) progress is a live tqdm bar; in a log (stderr redirected) it is plain
one-line messages with no carriage returns or escape codes: a line when a stage starts and one when a
counted task finishes ("denoise: 20/20 steps, 3.1 s"). Everything goes to stderr, so stdout holds only
a command's result.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def say(message: str, stream: TextIO | None = None) -> None:
    """One plain line on stderr (never a carriage return)."""
    print(message, file=stream or sys.stderr, flush=True)


class Stages:
    """Named stages of a longer job: ``stages.start("load")`` ... ``stages.close()``.

    Terminal: one bar "stages: 2/5 split + trace". Log: "[2/5] split + trace" per stage."""

    def __init__(self, total: int, desc: str = "stages", enabled: bool = True, stream: TextIO | None = None):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.stream = stream or sys.stderr
        self.index = 0
        self._bar = None
        if enabled and is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, file=self.stream, bar_format="{desc}: {n}/{total} {postfix}",
                             leave=False)

    def start(self, name: str) -> None:
        """Mark the previous stage done and announce ``name``."""
        if self.index:
            self._advance()
        self.index += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(name)
        else:
            say(f"[{self.index}/{self.total}] {name}", self.stream)

    def _advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Stages":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(items: Iterable[T], desc: str, total: int | None = None, enabled: bool = True, unit: str = "it",
          stream: TextIO | None = None) -> Iterator[T]:
    """Iterate ``items`` with progress: a live bar on a terminal, one summary line when done in a log."""
    stream = stream or sys.stderr
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if not enabled:
        yield from items
        return
    if is_terminal(stream):
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, total=total, file=stream, unit=unit, leave=False)
        return
    tic, n = time.perf_counter(), 0
    for n, item in enumerate(items, 1):
        yield item
    say(f"{desc}: {n}{f'/{total}' if total else ''} {unit}, {time.perf_counter() - tic:.1f} s", stream)
