"""The replica store: received states beside the volume, and the atomic switch of its path.

Layout for a replica volume at P (all on P's btrfs)::

    P.parent/.P.ndmpd-replica/          mode 700, the store
        recv/                           the only directory ``btrfs receive`` runs in (chrooted)
            state-<seq>                 read-only; Received UUID = the master snapshot = the state id
            stage-<seq>                 a file-level update being restored (read-write until sealed)
    P.parent/.P.ndmpd-next              the next view, for one moment during a switch
    P.parent/.P.ndmpd-old               the view before, kept until the next switch (open readers)
    P                                   a read-only snapshot of the current state

A switch snapshots ``recv/state-N`` to ``.P.ndmpd-next``, exchanges it with P (renameat2
RENAME_EXCHANGE: a reader sees the old tree or the new one, never a mix) and keeps the old view
as ``.P.ndmpd-old`` until the next switch (deleting it at once would pull it from under a reader
that has it open).
Which state P shows is P's Parent UUID, so a crash at any step leaves one consistent answer;
whatever a crash left is removed by :meth:`ReplicaStore.clean` before the next update.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

from ..config import Volume
from ..snapshots import btrfs_send
from ..snapshots.base import SnapshotError
from ..snapshots.btrfs import is_subvolume
from ..snapshots.commands import run
from . import state as records
from .state import ReplicaError, ReplicaRecord, StateRecord

log = logging.getLogger("ndmpd.replica")


class ReplicaStore:
    """One replica volume's store. Every mutating method expects :meth:`locked` to be held."""

    def __init__(self, volume: Volume, state_dir: Path) -> None:
        self.volume, self.state_dir = volume, Path(state_dir)
        self.path = Path(volume.path)
        self.root = self.path.parent / f".{self.path.name}.ndmpd-replica"
        self.recv = self.root / "recv"
        self.next = self.path.parent / f".{self.path.name}.ndmpd-next"
        self.old = self.path.parent / f".{self.path.name}.ndmpd-old"
        self.record_path = Path(state_dir) / "replicas" / f"{quote(volume.name, safe='')}.json"   # names hold '/'
        self.lock_path = self.record_path.with_suffix(".lock")

    # -- reading ---------------------------------------------------------------------------

    def record(self) -> ReplicaRecord:
        return records.load(self.record_path)

    def managed(self) -> bool:
        """Has this store ever been set up (a first update reached the switch or got close)?"""
        return self.root.is_dir()

    def state_path(self, state: StateRecord) -> Path:
        return self.recv / state.name

    def current(self, record: ReplicaRecord | None = None) -> StateRecord | None:
        """The state P shows, from P's Parent UUID (None: P holds no state of this store)."""
        record = record or self.record()
        if not os.path.lexists(self.path) or not self.managed():
            return None
        try:
            parent = btrfs_send.subvolume_info(self.path).parent_uuid
        except SnapshotError:
            return None                            # a plain directory: nothing switched in yet
        if parent is None:
            return None
        for kept in record.states:
            try:
                if btrfs_send.subvolume_info(self.state_path(kept)).uuid == parent:
                    return kept
            except SnapshotError:
                continue
        return None

    def states(self, record: ReplicaRecord | None = None) -> list[StateRecord]:
        """The kept states whose subvolume exists, newest first."""
        record = record or self.record()
        return [s for s in reversed(record.states) if self.state_path(s).is_dir()]

    # -- the lock and the debris -----------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, wait: bool = True) -> Iterator[None]:
        """One update (or CLI change) of this volume at a time, across processes."""
        self.lock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise ReplicaError(f"{self.volume.name}: another update of this replica is running") from None
            yield
        finally:
            os.close(fd)

    def prepare(self) -> None:
        """Create the store (mode 700: users cannot reach the states through it)."""
        self.root.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)
        self.recv.mkdir(mode=0o700, exist_ok=True)

    def clean(self) -> list[str]:
        """Remove what an interrupted update left: a half-done switch, partial receives and
        stages, states received but never recorded. The state P shows is always kept."""
        removed: list[str] = []
        if os.path.lexists(self.next):
            self._delete(self.next)
            removed.append(str(self.next))
        if not self.recv.is_dir():
            return removed
        record = self.record()
        recorded = {s.name for s in record.states}
        shown = self.current(record)
        for entry in sorted(self.recv.iterdir()):
            if entry.name in recorded or (shown is not None and entry.name == shown.name):
                continue
            self._delete(entry)
            removed.append(str(entry))
        gone = [s for s in record.states if not self.state_path(s).is_dir()]
        if gone:                                    # deleted by hand: forget them
            record.states = [s for s in record.states if s not in gone]
            records.save(self.record_path, record)
        return removed

    def _delete(self, path: Path) -> None:
        try:
            btrfs_send.delete(path)
        except SnapshotError:
            if path.is_dir() and not path.is_symlink():
                os.rmdir(path)                      # a plain (empty) directory: receive never started
            else:
                os.unlink(path)

    # -- adding a state --------------------------------------------------------------------

    def add(self, received: Path, state_id: str, state_time: float) -> StateRecord:
        """Take a subvolume received into ``recv/`` as the next state: renamed (same directory,
        so a read-only subvolume may move), then recorded."""
        record = self.record()
        seq = max([record.next_seq, *(s.seq + 1 for s in record.states)])
        added = StateRecord(state_id, seq, state_time, time.time())
        if Path(received).parent != self.recv:
            raise ReplicaError(f"{received} is not in {self.recv}")
        os.rename(received, self.state_path(added))
        record.states = record.states + [added]
        record.next_seq = seq + 1
        records.save(self.record_path, record)
        return added

    def stage(self) -> Path:
        """A read-write copy of the current state (O(1): a snapshot) to restore a file-level
        update into; an empty subvolume when there is no state yet."""
        record = self.record()
        seq = max([record.next_seq, *(s.seq + 1 for s in record.states)])
        staging = self.recv / f"stage-{seq}"
        shown = self.current(record)
        if shown is None:
            run(["btrfs", "subvolume", "create", str(staging)], f"creating {staging}")
        else:
            btrfs_send.snapshot(self.state_path(shown), staging, readonly=False)
        return staging

    def seal(self, staging: Path, state_id: str, state_time: float) -> StateRecord:
        """A restored stage becomes a state: read-only, renamed, recorded."""
        btrfs_send.set_readonly(staging, True)
        return self.add(staging, state_id, state_time)

    # -- the switch ------------------------------------------------------------------------

    def switch(self, chosen: StateRecord, writable: bool = False) -> None:
        """Make P show ``chosen`` in one step. The first time, P is absent or an empty
        directory (checked before anything was received) and is replaced."""
        if os.path.lexists(self.next):
            self._delete(self.next)
        btrfs_send.snapshot(self.state_path(chosen), self.next, readonly=not writable)
        if not os.path.lexists(self.path):
            os.rename(self.next, self.path)
            return
        if not _is_subvolume(self.path):
            os.rmdir(self.path)                     # empty (checked at START): nothing is lost
            os.rename(self.next, self.path)
            return
        if os.path.lexists(self.old):
            self._delete(self.old)                  # the view before the previous one
        btrfs_send.exchange(self.next, self.path)
        os.rename(self.next, self.old)              # kept until the next switch: a reader holding
                                                    # it (an open directory) keeps reading it whole

    def prune(self) -> list[str]:
        """Keep the newest ``keep`` states, and always the one P shows."""
        record = self.record()
        shown = self.current(record)
        ordered = sorted(record.states, key=lambda s: s.seq)
        drop = [s for s in ordered[:max(0, len(ordered) - self.volume.keep)] if s != shown]
        for old in drop:
            if self.state_path(old).is_dir():
                self._delete(self.state_path(old))
        if drop:
            record.states = [s for s in record.states if s not in drop]
            records.save(self.record_path, record)
        return [s.id for s in drop]

    # -- relationship changes --------------------------------------------------------------

    def set_master(self, master: str, role: str = "replica") -> None:
        """After an update: this master's replica, which needs no re-seed any more."""
        record = self.record()
        record.master, record.role, record.reseed = master, role, False
        records.save(self.record_path, record)

    def promote(self) -> None:
        """P becomes read-write (a writable snapshot of the current state exchanged in)."""
        record = self.record()
        shown = self.current(record)
        if shown is None:
            raise ReplicaError(f"{self.volume.name} shows no replica state; nothing to promote")
        self.switch(shown, writable=True)
        record.role = "primary"
        records.save(self.record_path, record)

    def rollback(self, state_id: str | None) -> StateRecord:
        """Show an older kept state (the previous one without ``state_id``). The master holds no
        base for it, so the next update must be a full stream (``reseed``)."""
        record = self.record()
        shown = self.current(record)
        kept = self.states(record)
        if state_id:
            chosen = record.find(state_id)
            if chosen is None or chosen not in kept:
                raise ReplicaError(f"{self.volume.name} keeps no state {state_id}; kept: "
                                   f"{', '.join(s.id for s in kept) or 'none'}")
        else:
            older = [s for s in kept if shown is None or s.seq < shown.seq]
            if not older:
                raise ReplicaError(f"{self.volume.name} keeps no state older than the current one")
            chosen = older[0]
        self.switch(chosen)
        record = self.record()
        record.reseed = True
        records.save(self.record_path, record)
        return chosen

    def reset(self) -> None:
        """Forget the master (the next update may come from any master, as a full stream);
        P and the kept states stay."""
        try:
            record = replace(self.record(), master="", role="replica", reseed=True)
        except ReplicaError:                        # damaged: start afresh (P keeps what it shows)
            record = ReplicaRecord(reseed=True)
        records.save(self.record_path, record)


def clean_replicas(volumes: Iterable[Volume], state_dir: Path) -> list[str]:
    """At start-up: what a killed server left in every replica store (one being updated by
    another process is left alone)."""
    removed: list[str] = []
    for volume in volumes:
        if not volume.replica:
            continue
        store = ReplicaStore(volume, state_dir)
        try:
            with store.locked(wait=False):
                removed += store.clean()
        except (ReplicaError, SnapshotError, OSError) as exc:
            log.warning("could not clean replica %s: %s", volume.name, exc)
    return removed


def _is_subvolume(path: Path) -> bool:
    return is_subvolume(path)
