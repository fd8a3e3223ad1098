"""btrfs: a read-only snapshot of the volume's subvolume, kept in ``.ndmpd-snapshots`` inside it.

Snapshots are not recursive, so each snapshot sees that folder empty; the dump leaves it out.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import SNAPSHOT_DIR, Snapshot, SnapshotError, Snapshotter, job_tag, owner_alive
from .commands import run
from .mounts import mount_of

HELD = "held"                         # SNAPSHOT_DIR/held: kept snapshots (holds.py); never stale
_FIRST_SUBVOLUME_INODE = 256


def is_subvolume(path: Path) -> bool:
    """True when ``path`` is the root of a btrfs subvolume (what can be snapshotted)."""
    try:
        return mount_of(path).fstype == "btrfs" and os.stat(path).st_ino == _FIRST_SUBVOLUME_INODE
    except OSError:
        return False


class BtrfsSnapshotter(Snapshotter):
    mode = "btrfs"

    def take(self, volume: Path) -> Snapshot:
        volume = Path(volume)
        if not is_subvolume(volume):
            raise SnapshotError(f"{volume} is not a btrfs subvolume; make it one "
                                "('btrfs subvolume create') or set snapshot = \"none\"")
        folder = volume / SNAPSHOT_DIR
        folder.mkdir(mode=0o700, exist_ok=True)
        destination = folder / job_tag()
        run(["btrfs", "subvolume", "snapshot", "-r", str(volume), str(destination)],
            f"btrfs snapshot of {volume}")
        return Snapshot(destination, False, self, str(destination))

    def remove(self, snapshot: Snapshot) -> None:
        if os.path.lexists(snapshot.handle):
            run(["btrfs", "subvolume", "delete", snapshot.handle], f"removing snapshot {snapshot.handle}")

    def remove_stale(self, volume: Path) -> list[str]:
        folder = Path(volume) / SNAPSHOT_DIR
        removed = []
        if folder.is_dir():
            for entry in sorted(folder.iterdir()):
                if entry.name == HELD or owner_alive(entry.name):
                    continue                     # held snapshots are kept on purpose (holds.py)
                self.remove(Snapshot(entry, False, self, str(entry)))
                removed.append(str(entry))
        return removed
