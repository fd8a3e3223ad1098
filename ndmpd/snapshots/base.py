"""The snapshot interface: take a frozen view of a volume, read it, always remove it."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path


SNAPSHOT_DIR = ".ndmpd-snapshots"   # in a btrfs volume, where its snapshots are kept (btrfs.py); never dumped


class SnapshotError(Exception):
    """A snapshot could not be taken or removed; the message says why and what to do."""


@dataclass
class Snapshot:
    """A point-in-time view of a volume, readable at ``path``."""

    path: Path
    live: bool                       # True: no snapshot at all (files may change while read)
    provider: "Snapshotter"
    handle: str = ""                 # the provider's name for it (subvolume path, LV name)

    def remove(self) -> None:
        self.provider.remove(self)

    def __enter__(self) -> "Snapshot":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class Snapshotter(ABC):
    """One way of taking snapshots (btrfs, LVM, or none)."""

    mode: str

    @abstractmethod
    def take(self, volume: Path) -> Snapshot:
        """A snapshot of ``volume`` (a directory)."""

    @abstractmethod
    def remove(self, snapshot: Snapshot) -> None:
        """Delete it; safe to call twice."""

    def remove_stale(self, volume: Path) -> list[str]:
        """Delete snapshots left by a process that is gone; returns what was removed."""
        return []


def job_tag() -> str:
    """``PID-STARTTIME``: names a snapshot after the process that owns it, so a restarted
    server can tell its own live snapshots from those of a killed one (even if the PID is reused)."""
    return f"{os.getpid()}-{_start_time(os.getpid())}-{os.urandom(3).hex()}"


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


def owner_alive(tag: str) -> bool:
    """Is the process that made a snapshot tagged ``tag`` still running?"""
    try:
        pid_text, start, _ = tag.split("-", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    return os.path.exists(f"/proc/{pid}") and _start_time(pid) == start
