"""Held snapshots: the master keeps, per hold name, the base a replica acknowledged and the newest.

A hold is a directory of read-only snapshots of one volume. It lives beside the volume, in
``PARENT/.NAME.ndmpd-held/HOLD/`` (same btrfs mount), not inside it: a frozen (read-only)
volume can take no new snapshot inside itself and give none up, and snapshots inside would
ride along in every send as empty directories. Where the parent is another mount, the holds
fall back to ``VOLUME/.ndmpd-snapshots/held/`` (then NDMPD_FREEZE cannot work and says so).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import btrfs_send
from .base import SnapshotError, owner_alive
from .btrfs import HELD, SNAPSHOT_DIR, is_subvolume
from .mounts import mount_of

HOLD_NAME = re.compile(r"[A-Za-z0-9_.-]{1,80}")
JOB_PREFIX = ".job-"                  # holds_root/.job-<job tag>/: one job's temporary snapshot
SNAPSHOT_NAME = re.compile(r"ndmpd-\d{8}T\d{6}\.\d{6}-[0-9a-f]{6}")


@dataclass(frozen=True)
class Held:
    """One kept snapshot."""

    hold: str
    name: str
    path: Path
    uuid: str
    ctime: float


def check_hold_name(name: str) -> str:
    """The hold name, or ValueError saying what a hold name may be."""
    if not HOLD_NAME.fullmatch(name) or name in (".", "..") or name.startswith(JOB_PREFIX):
        raise ValueError(f"hold name {name[:100]!r}: 1 to 80 of A-Z a-z 0-9 _ . - "
                         f"(not . or .., not starting {JOB_PREFIX})")
    return name


def snapshot_name(now: datetime | None = None) -> str:
    """``ndmpd-<UTC yyyymmddTHHMMSS.ffffff>-<6 hex>``: also the received subvolume's name."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%S.%f")
    return f"ndmpd-{stamp}-{os.urandom(3).hex()}"


def holds_root(volume: Path) -> Path:
    """Where this volume's holds live (beside it when its parent is on the same mount)."""
    volume = Path(volume)
    beside = volume.parent / f".{volume.name}.ndmpd-held"
    try:
        if mount_of(volume.parent).point == mount_of(volume).point:
            return beside
    except OSError:
        pass
    return volume / SNAPSHOT_DIR / HELD


def held(volume: Path, hold: str | None = None) -> list[Held]:
    """The kept snapshots of a volume (of one hold, or all), oldest first."""
    root = holds_root(volume)
    names = [hold] if hold is not None else (sorted(n for n in os.listdir(root) if not n.startswith(JOB_PREFIX))
                                             if root.is_dir() else [])
    found = []
    for name in names:
        folder = root / name
        if not folder.is_dir():
            continue
        for entry in sorted(os.listdir(folder)):
            path = folder / entry
            if SNAPSHOT_NAME.fullmatch(entry) and is_subvolume(path):
                info = btrfs_send.subvolume_info(path)
                found.append(Held(name, entry, path, info.uuid, info.ctime))
    return found


def find(volume: Path, uuid: str) -> Held | None:
    """The held snapshot of this volume with that UUID (any hold), None when not kept."""
    uuid = uuid.strip().lower()
    return next((h for h in held(volume) if h.uuid == uuid), None)


PENDING = ".pending-"


def take(volume: Path, hold: str) -> Held:
    """A new read-only snapshot of the volume, kept in ``hold``; marked pending (see
    :func:`settle`) so a server killed before the backup ends does not keep it for ever."""
    folder = holds_root(volume) / check_hold_name(hold)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = snapshot_name()
    marker = folder / f"{PENDING}{name}"
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        btrfs_send.snapshot(Path(volume), folder / name, readonly=True)
        info = btrfs_send.subvolume_info(folder / name)
    except BaseException:
        if is_subvolume(folder / name):
            btrfs_send.delete(folder / name)
        marker.unlink(missing_ok=True)
        raise
    return Held(hold, name, folder / name, info.uuid, info.ctime)


def settle(kept: Held) -> None:
    """The backup that took ``kept`` has ended (delivered, or its snapshot deleted): drop the
    pending mark."""
    (kept.path.parent / f"{PENDING}{kept.name}").unlink(missing_ok=True)


def remove_unsettled(volume: Path) -> list[str]:
    """Delete the held snapshots whose backup never ended (the server was killed during it);
    called at start-up, when no job runs. The paths removed."""
    root = holds_root(volume)
    removed: list[str] = []
    if not root.is_dir():
        return removed
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for marker in sorted(folder.glob(f"{PENDING}*")):
            snap = folder / marker.name[len(PENDING):]
            if SNAPSHOT_NAME.fullmatch(snap.name) and is_subvolume(snap):
                btrfs_send.delete(snap)
                removed.append(str(snap))
            marker.unlink(missing_ok=True)
    return removed


def take_temporary(volume: Path, tag: str) -> Path:
    """A read-only snapshot for one job (no hold), in ``holds_root/.job-<tag>/``: outside the
    volume, so the image holds no trace of it and a frozen volume can still be sent; the
    start-up cleanup (``remove_stale_jobs``) removes it if the job's process dies (tag as
    ``base.job_tag``)."""
    folder = holds_root(volume) / f"{JOB_PREFIX}{tag}"
    folder.mkdir(mode=0o700, parents=True)
    path = folder / snapshot_name()
    try:
        btrfs_send.snapshot(Path(volume), path, readonly=True)
    except SnapshotError:
        folder.rmdir()
        raise
    return path


def remove_temporary(path: Path) -> None:
    if os.path.lexists(path):
        btrfs_send.delete(path)
    try:
        path.parent.rmdir()
    except OSError:
        pass


def remove_stale_jobs(volume: Path) -> list[str]:
    """Delete the temporary snapshots of jobs whose process is gone; what was removed."""
    root = holds_root(volume)
    removed = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if entry.name.startswith(JOB_PREFIX) and not owner_alive(entry.name[len(JOB_PREFIX):]):
            for inner in sorted(entry.iterdir()):
                btrfs_send.delete(inner)
            entry.rmdir()
            removed.append(str(entry))
    return removed


def keep_only(volume: Path, hold: str, keep: set[str]) -> list[str]:
    """Delete every snapshot of ``hold`` whose UUID is not in ``keep``; the names deleted."""
    gone = []
    for item in held(volume, check_hold_name(hold)):
        if item.uuid not in keep:
            btrfs_send.delete(item.path)
            gone.append(item.name)
    return gone


def release(volume: Path, hold: str) -> list[str]:
    """Delete every snapshot of a hold, and the hold's directory."""
    gone = keep_only(volume, hold, set())
    folder = holds_root(volume) / hold
    for marker in folder.glob(f"{PENDING}*") if folder.is_dir() else ():
        marker.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass
    return gone


def frozen(volume: Path) -> bool:
    return btrfs_send.subvolume_info(Path(volume)).readonly


def freeze(volume: Path) -> None:
    """Make the volume's subvolume read-only (a final update: nothing changes after it)."""
    if holds_root(volume).is_relative_to(Path(volume)):
        raise SnapshotError(f"cannot freeze {volume}: its parent directory is another mount, so its "
                            "held snapshots live inside it and a read-only volume can take none")
    btrfs_send.set_readonly(Path(volume), True)


def thaw(volume: Path) -> None:
    """Make a frozen volume writable again."""
    btrfs_send.set_readonly(Path(volume), False)
