"""Snapshot providers behind one small interface: btrfs, LVM, or none (live)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from .base import SNAPSHOT_DIR, Snapshot, SnapshotError, Snapshotter
from .live import LiveSnapshotter

__all__ = ["Snapshot", "SnapshotError", "Snapshotter", "choose", "remove_stale", "SNAPSHOT_DIR"]


def _log():
    """The package's logger (logging imported here: ``ndmpd dump`` starts without it)."""
    import logging
    return logging.getLogger("ndmpd.snapshots")


def _on_lvm(volume: Path) -> bool:
    from .lvm import logical_volume, lvm_available
    from .mounts import mount_of
    if lvm_available():
        return False
    try:
        return logical_volume(mount_of(volume)) is not None
    except (OSError, SnapshotError):
        return False


def choose(mode: str, volume: Path, state_dir: Path, name: str | None = None,
           warn: Callable[[str], None] | None = None) -> Snapshotter:
    """The snapshotter for a volume's mode; ``auto`` falls back to ``none`` with a warning (to
    ``warn``, the job's, else the log)."""
    if mode == "none":
        return LiveSnapshotter()
    from .btrfs import BtrfsSnapshotter, is_subvolume     # here: a volume dumped live goes without
    from .lvm import LvmSnapshotter                        # them and their mount table parser
    if mode == "btrfs":
        return BtrfsSnapshotter()
    if mode == "lvm":
        return LvmSnapshotter(state_dir)
    if is_subvolume(volume):
        return BtrfsSnapshotter()
    if _on_lvm(volume):
        return LvmSnapshotter(state_dir)
    (warn or _log().warning)(f"volume {name or volume} ({volume}) cannot be snapshotted (not a btrfs "
                             "subvolume, not on LVM); dumping it live: files changing during the dump "
                             "are reported")
    return LiveSnapshotter()


def remove_stale(volumes: Iterable[Path], state_dir: Path) -> list[str]:
    """Remove snapshots left behind by a killed server or dump; called at start-up.

    Every provider looks at every volume, whatever its configured mode: a DMA's SNAPSHOT=
    may have taken a snapshot of a volume configured "none" (and a mode may have changed
    since). Each provider only removes what it made (its own names, owner process gone)."""
    from .btrfs import BtrfsSnapshotter
    from .lvm import LvmSnapshotter
    log = _log()
    removed: list[str] = []
    paths = list(volumes)
    work: list[tuple[Snapshotter, Path]] = [(BtrfsSnapshotter(), path) for path in paths]
    if paths:
        work.append((LvmSnapshotter(state_dir), paths[0]))     # LVM's snapshots are host-wide: once
    for provider, path in work:
        try:
            removed += provider.remove_stale(path)
        except (OSError, SnapshotError) as exc:
            log.warning("could not clean stale snapshots of %s: %s", path, exc)
    from . import holds           # here: btrfs send and its stream parser are not a dump's business
    for path in paths:
        try:
            removed += holds.remove_stale_jobs(path)      # butype btrfs: a killed job's temporary snapshot
        except (OSError, SnapshotError) as exc:
            log.warning("could not clean stale btrfs job snapshots of %s: %s", path, exc)
    for item in removed:
        log.warning("removed stale snapshot %s", item)
    return removed
