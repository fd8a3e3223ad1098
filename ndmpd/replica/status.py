"""What a replica volume reports: CONFIG_GET_FS_INFO's NDMPD_REPLICA* pairs and ``ndmpd replica status``."""

from __future__ import annotations

from pathlib import Path

from ..config import Volume
from ..snapshots.base import SnapshotError
from .state import ReplicaError
from .store import ReplicaStore


def replica_env(volume: Volume, state_dir: Path) -> list[tuple[str, str]]:
    """The replica pairs of a volume's fs_env (none for an ordinary volume). The state is what P
    shows (read from the subvolume), never only what the record says."""
    if not volume.replica:
        return []
    store = ReplicaStore(volume, state_dir)
    try:
        record = store.record()
        current = store.current(record)
        states = store.states(record)
    except (ReplicaError, SnapshotError, OSError):
        return [("NDMPD_REPLICA", "y"), ("NDMPD_REPLICA_OF", ""), ("NDMPD_REPLICA_STATE", ""),
                ("NDMPD_REPLICA_ROLE", "replica"), ("NDMPD_REPLICA_STATES", "")]
    state = "" if current is None or record.reseed else current.id
    return [("NDMPD_REPLICA", "y"), ("NDMPD_REPLICA_OF", record.master), ("NDMPD_REPLICA_STATE", state),
            ("NDMPD_REPLICA_ROLE", record.role), ("NDMPD_REPLICA_STATES", ",".join(s.id for s in states))]
