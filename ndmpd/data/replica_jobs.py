"""Recover into a replica volume: a btrfs stream or a dump image becomes the next replica state,
switched in whole (ndmpd/replica/ does the store; this module joins it to the DATA service).

Every check a START can make is made there (:func:`plan`, answered with ILLEGAL_ARGS); the job
makes them again under the volume's lock, with the stream's own claims (its parent, its labels)
checked before the switch. Any failure leaves P as it was and deletes what the job made.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ..engine.reader import StreamError
from ..engine.restore import RestoreAborted, RestoreOptions, Restorer
from ..replica import checks
from ..replica.state import ReplicaError, ReplicaRecord, StateRecord
from ..replica.store import ReplicaStore
from ..snapshots import btrfs_send, holds
from ..snapshots.base import SnapshotError
from ..snapshots.send_stream import HostileStream, StreamGuard, StreamHead
from ..wire import C
from .env import YES, JobEnv, effective
from .jobs import DELIVERY_POLL, IMAGE_SIZE_VAR, JobHost, Outcome
from .source import DataReadSource, SourceClosed

REPLICA_OF = "NDMPD_REPLICA_OF"
PROMOTE = "NDMPD_PROMOTE"
DEMOTE = "NDMPD_DEMOTE"
STATE_VAR = "NDMPD_REPLICA_STATE"
BUTYPES = ("btrfs", "dump")


@dataclass(frozen=True)
class ReplicaPlan:
    """A recover into a replica volume, checked at START."""

    store: ReplicaStore
    env: JobEnv
    master: str
    base: str | None          # None: a full stream
    promote: bool
    demote: bool


def _yes(env: JobEnv, name: str) -> bool:
    return (env.value(name) or "").strip().lower() in YES


def wants_replica(env: JobEnv) -> bool:
    """Is this recover meant for a replica (its volume is one, or the DMA says it replicates)?"""
    return bool(env.volume is not None and (env.volume.replica or env.value(REPLICA_OF) is not None))


def plan(env: JobEnv, state_dir: Path) -> ReplicaPlan:
    """Check a recover into a replica volume before anything starts; ReplicaError says why not."""
    volume = env.volume
    assert volume is not None
    if not volume.replica:
        raise ReplicaError(f"{volume.name} is not a replica volume (set replica = true for it in ndmpd.toml); "
                           "a replication stream is never applied to an ordinary volume")
    if env.butype not in BUTYPES:
        raise ReplicaError(f"{volume.name} is a replica volume: it takes butype btrfs or dump, not {env.butype}")
    base = env.value("BASE_DATE")
    chosen = ReplicaPlan(ReplicaStore(volume, state_dir), env, (env.value(REPLICA_OF) or "").strip(),
                         None if checks.is_full(base) else (base or "").strip(), _yes(env, PROMOTE),
                         _yes(env, DEMOTE))
    with chosen.store.locked(wait=False):           # refused now when another update is running
        check(chosen)
    return chosen


def check(chosen: ReplicaPlan) -> holds.Held | None:
    """The checks against the store as it is now (START, and again under the lock); the held
    snapshot to seed the store from when the stream demotes this volume's frozen master."""
    store, name = chosen.store, chosen.store.volume.name
    record = store.record()
    checks.check_master(name, record, chosen.master, chosen.demote)
    current = store.current(record)
    seed = demote_seed(chosen, record, current)
    if seed is None:
        checks.check_base(name, record, current, chosen.base)
    checks.check_unmanaged(name, store.path, store.managed(), chosen.demote)
    return seed


def demote_seed(chosen: ReplicaPlan, record: ReplicaRecord, current: StateRecord | None) -> holds.Held | None:
    """After ``promote --reverse`` the first stream back is an incremental on this volume's own
    last sent snapshot (the promote's final update), held beside the volume: outside ``recv/``,
    where ``btrfs receive --chroot`` cannot reach it. That held snapshot, when this is such a
    stream (demote, btrfs, a base this volume does not show as a state); else None. The volume
    must be frozen: then the held snapshot is exactly what P shows."""
    if not chosen.demote or chosen.base is None or chosen.env.butype != "btrfs":
        return None
    if current is not None and current.id == chosen.base and not record.reseed:
        return None                                 # an ordinary incremental on the shown state
    name, path = chosen.store.volume.name, chosen.store.path
    held = holds.find(path, chosen.base)
    if held is None:
        return None                                 # check_base says what is wrong
    if not btrfs_send.subvolume_info(path).readonly:
        raise ReplicaError(f"{name} is not frozen: it may have changed since its snapshot {chosen.base}, "
                           "so it takes no incremental on it (a full update is needed)")
    return held


def recover(host: JobHost, chosen: ReplicaPlan, sock: socket.socket) -> Outcome:
    """Apply the stream as the replica's next state; SUCCESSFUL once P shows it."""
    store, name = chosen.store, chosen.store.volume.name
    try:
        with store.locked(wait=False):
            seed = check(chosen)
            for item in store.clean():
                host.log_message(f"{name}: removed {item}, left by an interrupted update", "warning")
            store.prepare()
            if seed is not None:
                added = _receive_on_seed(host, chosen, sock, seed)
            else:
                apply = _receive_btrfs if chosen.env.butype == "btrfs" else _restore_dump
                added = apply(host, chosen, sock)
                store.switch(added, writable=chosen.promote)
            store.set_master(chosen.master, "primary" if chosen.promote else "replica")
            dropped = store.prune()
    except (ReplicaError, HostileStream, SnapshotError, StreamError, SourceClosed, RestoreAborted, OSError) as exc:
        if host.cancel.is_set():
            return Outcome(C.DATA_HALT_ABORTED)
        why = f"replica {name} not updated (it still shows its previous state): {exc}"
        host.log_message(why, "error")
        broken = isinstance(exc, (ConnectionError, SourceClosed))
        return Outcome(C.DATA_HALT_CONNECT_ERROR if broken else C.DATA_HALT_INTERNAL_ERROR, why=why)
    summary = (f"replica {name} now shows {added.id}" + (" (promoted: read-write)" if chosen.promote else "")
               + (f"; dropped {len(dropped)} old state(s)" if dropped else ""))
    return Outcome(C.DATA_HALT_SUCCESSFUL, effective(chosen.env, **{STATE_VAR: added.id}), summary=summary)


def _reader(host: JobHost, sock: socket.socket):
    """``read(n)`` over the data connection: b"" at its end, waking to notice an abort."""
    sock.settimeout(DELIVERY_POLL)
    received = [0]

    def read(size: int) -> bytes:
        while True:
            if host.cancel.is_set():
                raise SnapshotError("aborted")
            try:
                chunk = sock.recv(size)
            except socket.timeout:
                continue
            received[0] += len(chunk)
            host.progress(received[0])
            return chunk
    return read


def _check_parent(chosen: ReplicaPlan, head: StreamHead) -> None:
    """The stream's own parent must be BASE_DATE (nothing when BASE_DATE asks for a full one)."""
    if chosen.base is None and head.parent_uuid is not None:
        raise ReplicaError(f"the stream is an incremental on {head.parent_uuid}, but BASE_DATE asks for a "
                           "full update")
    if chosen.base is not None and head.parent_uuid != chosen.base:
        raise ReplicaError(f"the stream is based on {head.parent_uuid or 'nothing (a full stream)'}, "
                           f"not on BASE_DATE={chosen.base}")


def _receive_btrfs(host: JobHost, chosen: ReplicaPlan, sock: socket.socket):
    store = chosen.store
    received = btrfs_send.receive(_reader(host, sock), store.recv, StreamGuard(), host.cancel,
                                  lambda head: _check_parent(chosen, head))
    try:
        return store.add(received.path, received.head.uuid, 0.0)
    except BaseException:
        btrfs_send.delete(received.path)
        raise


def _receive_on_seed(host: JobHost, chosen: ReplicaPlan, sock: socket.socket, held: holds.Held) -> StateRecord:
    """A demoted master's first update: seed ``recv/`` with a copy of its held snapshot that
    ``btrfs receive`` takes as the stream's parent, receive the incremental, switch it in.
    The seed stays as the older kept state; on any failure it is deleted and P still shows
    the frozen master."""
    store = chosen.store
    seed = store.recv / f"seed-{held.name}"
    made: list[Path] = []

    def check_head(head: StreamHead) -> None:
        _check_parent(chosen, head)
        if os.path.lexists(seed):
            btrfs_send.delete(seed)
        btrfs_send.snapshot(held.path, seed, readonly=False)      # O(1), inside the chroot
        made.append(seed)
        # received from the held snapshot, at the transid the stream names for its parent
        btrfs_send.set_received(seed, held.uuid, head.parent_ctransid or 0)
        btrfs_send.set_readonly(seed, True)
    added: list[StateRecord] = []
    try:
        received = btrfs_send.receive(_reader(host, sock), store.recv, StreamGuard(), host.cancel, check_head)
        made.append(received.path)
        added.append(store.add(seed, held.uuid, held.ctime))
        made[0] = store.state_path(added[0])
        added.append(store.add(received.path, received.head.uuid, 0.0))
        made[1] = store.state_path(added[1])
        store.switch(added[1], writable=chosen.promote)
        return added[1]
    except BaseException:
        for path in made:
            if os.path.lexists(path):
                btrfs_send.delete(path)
        if added:
            store.forget(added)
        raise


def _restore_dump(host: JobHost, chosen: ReplicaPlan, sock: socket.socket):
    """A dump image restored into a writable snapshot of the current state (O(1)), then sealed."""
    store = chosen.store
    staging = store.stage()
    try:
        sock.settimeout(DELIVERY_POLL)
        size = chosen.env.value(IMAGE_SIZE_VAR)
        source = DataReadSource(sock, host.request_read, host.cancel, int(size) if (size or "").isdigit() else None)
        restorer = Restorer(bytes(staging), source, RestoreOptions(whole_copy=True),
                            report=lambda text: host.log_message(text, "warning"),
                            progress=lambda at, entries: host.progress(source.bytes_received), cancel=host.cancel)
        result = restorer.run(0)
        if not result.complete:
            raise ReplicaError("the image ended early")
        if not result.end_of_archive:           # cut between two members: it looks whole, but is not
            raise ReplicaError("the image ended early (no end-of-archive blocks: the master stopped mid-way)")
        if result.refused_count:
            raise ReplicaError(f"{result.refused_count} entries could not be restored: "
                               + "; ".join(result.refused[:3]))
        source.finish()
        token = _token(restorer.labels, chosen)
        return store.seal(staging, token, int(token) / 1e9 if token.isdigit() else time.time())
    except BaseException:
        if staging.exists():
            btrfs_send.delete(staging)
        raise


def _token(labels: dict[str, str], chosen: ReplicaPlan) -> str:
    """The image's own dump token (the state id), and its base matching BASE_DATE."""
    token = labels.get("date", "")
    if not token:
        raise ReplicaError("the image carries no dump date token; it cannot be a replica state")
    level = labels.get("level", "0")
    base = labels.get("base", "") if level not in ("", "0") else ""
    if (base or None) != chosen.base:
        raise ReplicaError(f"the image is based on {base or 'nothing (a level 0)'}, "
                           f"not on BASE_DATE={chosen.base or '0'}")
    return token
