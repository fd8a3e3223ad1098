"""TOML configuration bytes to a table, one line of error for the admin (server and DMA configs)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any


def parse_toml(raw: bytes, path: Path, error: type[Exception]) -> dict[str, Any]:
    """The top-level table of ``raw`` (read from ``path``), or ``error`` naming the file."""
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None
