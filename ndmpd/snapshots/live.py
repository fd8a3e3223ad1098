"""Mode ``none``: the live tree, read as it is; the dump reports files that change while read."""

from __future__ import annotations

from pathlib import Path

from .base import Snapshot, Snapshotter


class LiveSnapshotter(Snapshotter):
    mode = "none"

    def take(self, volume: Path) -> Snapshot:
        return Snapshot(Path(volume), True, self)

    def remove(self, snapshot: Snapshot) -> None:
        pass
