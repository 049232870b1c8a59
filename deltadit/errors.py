"""The one user-facing error type.

Messages read "subject | problem. Expected: ... (how to fix)", in the style of Polygraphy. Where several
things are wrong at once, collect them and raise once (see :func:`raise_if`).
"""

from __future__ import annotations


class DeltaDiTError(ValueError):
    """Raised for anything a user can fix: bad parameters, bad files, bad inputs."""


def raise_if(problems: list[str], header: str | None = None) -> None:
    """Raise one :class:`DeltaDiTError` listing every problem, or return if there are none."""
    if not problems:
        return
    if len(problems) == 1 and header is None:
        raise DeltaDiTError(problems[0])
    lines = ([header] if header else []) + [f"  - {p}" for p in problems]
    raise DeltaDiTError("\n".join(lines))
