"""What a replication stream must satisfy before anything is written (checked at START).

Each check raises :class:`ReplicaError` with the message the DMA's operator sees: what is wrong
and the way out. They read the store, never change it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..snapshots import btrfs_send
from ..snapshots.btrfs import is_subvolume
from .state import ReplicaError, ReplicaRecord, StateRecord

FULL = ("", "0", "-1")


def is_full(base: str | None) -> bool:
    return (base or "").strip() in FULL


def check_master(volume: str, record: ReplicaRecord, master: str, demote: bool) -> None:
    """A replica takes streams from its one master; a promoted one only when demoted to a new one."""
    if not master:
        raise ReplicaError(f"{volume} is a replica volume: the stream must name its master (NDMPD_REPLICA_OF)")
    if record.role == "primary":
        if not demote:
            raise ReplicaError(f"{volume} was promoted and is read-write; it takes a replication stream "
                               "only with NDMPD_DEMOTE=y (ndmp replicate promote --reverse)")
        return
    if record.master and record.master != master and not demote:
        raise ReplicaError(f"{volume} is a replica of {record.master}, not of {master}; to make it a replica "
                           f"of another master run 'ndmpd replica reset {volume}' on the replica host")


def check_base(volume: str, record: ReplicaRecord, current: StateRecord | None, base: str | None) -> None:
    """An incremental must start from the state the replica shows (never from what the DMA thinks)."""
    if is_full(base):
        return
    at = current.id if current is not None else "no state"
    if current is None or current.id != base or record.reseed:
        if current is not None and current.id == base and record.reseed:
            at = f"{at} (rolled back or reset: a full update is needed)"
        raise ReplicaError(f"stream is based on {base} but {volume} is at {at}; update from {at} "
                           "(ndmp replicate run resends from the replica's state)")


def check_unmanaged(volume: str, path: Path, managed: bool, demote: bool = False) -> None:
    """The first update may replace P only when it holds nothing: never clobber data. A demoted
    master's volume (frozen read-only by its promote's final update) is the one exception."""
    if managed or not os.path.lexists(path):
        return
    if demote and is_subvolume(path) and btrfs_send.subvolume_info(path).readonly:
        return
    if not path.is_dir() or path.is_symlink():
        raise ReplicaError(f"{volume}: {path} exists and is not a directory; it is not replaced by a replica")
    with os.scandir(path) as entries:
        if next(entries, None) is not None:
            raise ReplicaError(f"{volume}: {path} is not empty and holds no replica; a replica never "
                               "overwrites data: move it away or name an empty or absent path")
