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


def read_json(path, subject: str, how: str):
    """``path``'s JSON; a missing or unreadable file is one :class:`DeltaDiTError` line:
    "<subject> | <path> does not exist. <how>" or "... is not readable JSON (<error type>). <how>"."""
    import json
    from pathlib import Path

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DeltaDiTError(f"{subject} | {path} does not exist. {how}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DeltaDiTError(f"{subject} | {path} is not readable JSON ({type(e).__name__}). {how}") from None
