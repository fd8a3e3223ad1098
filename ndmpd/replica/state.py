"""The replica's metadata: ``state_dir/replicas/NAME.json``, written atomically (temp, fsync, rename).

It records what the filesystem cannot say by itself: the master's id, the role, the state ids of
file-level states (a dump token has no UUID to carry it) and their times. Which state the volume
*shows* is never read from here: the store derives it from the subvolume (a crash between two
writes would otherwise make the file lie).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..durable import sync_directory, write_synced

ROLES = ("replica", "primary")


class ReplicaError(Exception):
    """A replica operation cannot be done; the message says why and the way out."""


@dataclass(frozen=True)
class StateRecord:
    """One kept state: ``recv/state-<seq>``, equal to the master snapshot ``id``."""

    id: str                  # the state id: the master snapshot's UUID, or its dump token
    seq: int
    time: float = 0.0        # when the master took that snapshot (unix seconds), 0 when unknown
    received: float = 0.0    # when it was applied here

    @property
    def name(self) -> str:
        return f"state-{self.seq}"


@dataclass
class ReplicaRecord:
    master: str = ""                                      # the master's volume id; "" before the first update
    role: str = "replica"                                 # replica | primary (after a promote)
    states: list[StateRecord] = field(default_factory=list)   # oldest first
    next_seq: int = 1
    reseed: bool = False                                  # after a rollback: only a full stream fits

    def find(self, state_id: str) -> StateRecord | None:
        """The newest kept state with this id (a re-seed may bring one back)."""
        return next((s for s in reversed(self.states) if s.id == state_id), None)


def load(path: Path) -> ReplicaRecord:
    """The record, or an empty one when the file does not exist; a damaged file is an error
    (guessing would risk a wrong base)."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return ReplicaRecord()
    except (OSError, ValueError) as exc:
        raise ReplicaError(f"{path}: cannot read the replica record ({exc}); "
                           "'ndmpd replica reset' starts it afresh") from None
    try:
        states = [StateRecord(str(s["id"]), int(s["seq"]), float(s.get("time", 0)), float(s.get("received", 0)))
                  for s in raw.get("states", [])]
        role = str(raw.get("role", "replica"))
        if role not in ROLES:
            raise ValueError(f"role {role!r}")
        return ReplicaRecord(str(raw.get("master", "")), role, states, int(raw.get("next_seq", 1)),
                             bool(raw.get("reseed", False)))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ReplicaError(f"{path}: the replica record is damaged ({exc}); "
                           "'ndmpd replica reset' starts it afresh") from None


def save(path: Path, record: ReplicaRecord) -> None:
    """Replace the record atomically and durably: a crash leaves the old one or the new one."""
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = json.dumps(asdict(record), indent=1, sort_keys=True).encode()
    write_synced(temporary, data)
    os.replace(temporary, path)
    sync_directory(path.parent)
