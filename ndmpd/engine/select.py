"""Which paths a dump leaves out (exclude patterns) and which a restore puts back (selections)."""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass


class Excluder:
    """Shell patterns (``*.o``, ``cache/*``) matched against an entry's name and its path."""

    def __init__(self, patterns: tuple[str, ...] | list[str]) -> None:
        self._regex = re.compile("|".join(f"(?:{fnmatch.translate(p.rstrip('/'))})" for p in patterns)) \
            if patterns else None

    def __bool__(self) -> bool:
        return self._regex is not None

    def excluded(self, name: bytes, rel: bytes) -> bool:
        match = self._regex.match
        return bool(match(os.fsdecode(name)) or match(os.fsdecode(rel)))


def clean_path(path: bytes) -> bytes:
    """An archive or user path relative to the root: no ``./``, no doubled or trailing slash."""
    parts = [p for p in path.split(b"/") if p and p != b"."]
    return b"/".join(parts)


@dataclass(frozen=True)
class Pick:
    """One restore selection: ``source`` (file or directory) restored as ``target``."""

    source: bytes
    target: bytes

    @classmethod
    def parse(cls, text: str | bytes) -> "Pick":
        raw = os.fsencode(text)
        source, eq, target = raw.partition(b"=")
        return cls(clean_path(source), clean_path(target) if eq else clean_path(source))


class Selection:
    """Maps archive paths to where they are restored; everything when no picks are given."""

    def __init__(self, picks: list[Pick] | None = None) -> None:
        self.picks = sorted(picks or [], key=lambda p: len(p.source), reverse=True)

    def __bool__(self) -> bool:
        return bool(self.picks)

    def place(self, path: bytes) -> bytes | None:
        """Where ``path`` goes (relative to the target), or None when it is not selected."""
        if not self.picks:
            return path
        for pick in self.picks:
            if not pick.source:
                return _join(pick.target, path)
            if path == pick.source:
                return pick.target
            if path.startswith(pick.source + b"/"):
                return _join(pick.target, path[len(pick.source) + 1:])
        return None

    def whole_image(self) -> bool:
        """True when the whole image is restored (no picks, or just one of the image root), so
        every directory lands on its own image path below where the root goes."""
        return not self.picks or (len(self.picks) == 1 and not self.picks[0].source)


def _join(base: bytes, rest: bytes) -> bytes:
    return base + b"/" + rest if base and rest else base or rest
