"""What the tools print while they work: one progress display for terminals and logs alike.

On a terminal (stderr is a TTY) progress is a live tqdm bar; in a log (stderr redirected) it is plain
one-line messages with no carriage returns or escape codes: a line when a stage starts and one when a
counted task finishes ("denoise: 20/20 steps, 3.1 s"). Everything goes to stderr, so stdout holds only
a command's result.

:class:`quiet_third_party` hides what torch / diffusers / transformers / ModelOpt warn about on their
own account (deprecations, tracing notes, hub progress bars) unless a CLI is run with --verbose.
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


# Modules whose warnings and log notices are hidden unless --verbose (they warn about their own
# deprecations and about tracing, which a user of the tools cannot act on).
THIRD_PARTY = ("torch", "diffusers", "transformers", "modelopt", "accelerate", "huggingface_hub", "onnx",
               "onnxruntime", "onnxscript", "tensorrt", "timm")
_QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",  # read when transformers configures its logger (first use)
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


class quiet_third_party:  # noqa: N801 - used like a function: quiet_third_party(verbose) or `with ...:`
    """Hide third-party warnings and notices unless ``verbose``.

    Applies on construction, so a CLI calls ``quiet_third_party(args.verbose)`` once; as a context manager
    it also restores the warning filters, environment and logger levels on exit. Hidden: FutureWarning /
    UserWarning / DeprecationWarning raised from the :data:`THIRD_PARTY` modules, torch's TracerWarning
    (wherever the traced code lives), the transformers / diffusers loggers below ERROR and the Hugging
    Face hub progress bars. Python's own ``-W`` options are overridden while it applies."""

    def __init__(self, verbose: bool = False):
        import logging
        import os
        import warnings

        self.verbose = verbose
        self._warnings = warnings.catch_warnings()  # saves the filters; restore() puts them back
        self._warnings.__enter__()
        self._env = {k: os.environ.get(k) for k in _QUIET_ENV}
        self._levels = {n: logging.getLogger(n).level for n in THIRD_PARTY}
        if verbose:
            return
        modules = r"(%s)(\.|$)" % "|".join(THIRD_PARTY)
        for category in (FutureWarning, UserWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=modules)
        # TracerWarning is attributed to the traced code (ours or diffusers'); matched by its text so that
        # torch need not be imported here. Its messages all mention "the trace" / "traced function".
        warnings.filterwarnings("ignore", message=r".*(\bthe trace\b|traced function)", category=Warning)
        tracer = getattr(getattr(sys.modules.get("torch"), "jit", None), "TracerWarning", None)
        if tracer is not None:
            warnings.filterwarnings("ignore", category=tracer)
        for key, value in _QUIET_ENV.items():
            os.environ.setdefault(key, value)
        for name in THIRD_PARTY:
            logging.getLogger(name).setLevel(max(logging.ERROR, logging.getLogger(name).level))
        for name in ("transformers", "diffusers"):  # already configured: set their own verbosity too
            module = sys.modules.get(f"{name}.utils.logging")
            if module is not None and hasattr(module, "set_verbosity_error"):
                module.set_verbosity_error()
        hub = sys.modules.get("huggingface_hub.utils")
        if hub is not None and hasattr(hub, "disable_progress_bars"):
            hub.disable_progress_bars()

    def __enter__(self) -> "quiet_third_party":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        """Undo what the constructor set (warning filters, environment, logger levels)."""
        import logging
        import os

        if self._warnings is not None:
            self._warnings.__exit__(None, None, None)
            self._warnings = None
        for key, value in self._env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
