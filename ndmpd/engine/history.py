"""File history: what the dump tells its caller about every entry it writes."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(slots=True)
class HistoryEntry:
    """One archived entry: where it is in the tree and where its headers start in the stream.

    ``offset`` is 512-aligned and points at the entry's first header block (its pax header
    when it has one), so a restore started there reads the whole entry.
    """

    path: bytes               # relative to the dumped root; b"" is the root itself
    stat: os.stat_result
    parent_ino: int
    offset: int

    @property
    def ino(self) -> int:
        return self.stat.st_ino
