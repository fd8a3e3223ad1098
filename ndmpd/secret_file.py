"""Reading a password or key kept in its own file, for the server's config and the DMA's alike:
refused when people it should not reach can read it, or when it cannot be read or is empty."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Callable


def read_secret(path: Path, key: str, error: type[Exception], too_open: Callable[[int], str | None]) -> str:
    """The secret in ``path`` without its trailing line break; ``too_open(mode)`` names what is
    wrong with the file's permission bits (None: they are fine). Every refusal is one ``error``
    line that starts with ``key``."""
    try:
        problem = too_open(stat.S_IMODE(path.stat().st_mode))
        if problem:
            raise error(f"{key}: {path} {problem}")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{key}: cannot read {path}: {exc.strerror}") from None
    secret = text.strip("\r\n")
    if not secret:
        raise error(f"{key}: {path} is empty")
    return secret
