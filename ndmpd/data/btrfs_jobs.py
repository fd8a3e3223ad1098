"""Butype ``btrfs``: an image of a btrfs subvolume (``btrfs send``), restored with ``btrfs receive``.

Backup snapshots the volume (kept under a hold for replication, else temporary), sends
the snapshot, incremental against a held base (BASE_DATE=UUID), and on success trims the
hold to {base, newest}. Recover receives into a new read-only subvolume ``DEST/<name>``.
The checks that can refuse a job run at START (``plan_*``: EnvError, answered ILLEGAL_ARGS).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..config import Volume
from ..replica.store import ReplicaStore
from ..snapshots import SnapshotError, btrfs_send, holds
from ..snapshots.base import job_tag
from ..snapshots.btrfs import is_subvolume
from ..snapshots.mounts import mount_of
from ..snapshots.send_stream import HostileStream, StreamGuard, StreamHead
from ..mover.handoff import Handoff
from ..wire import C
from .env import EnvError, JobEnv, effective
from .jobs import IMAGE_SIZE_VAR, RECORD_SIZE_VAR, JobHost, Outcome, _delivered, _env_count, _handed_over, _undelivered
from .places import resolve
from .source import RECORD, DataReadSource, SourceClosed

BASE_VAR, FREEZE_VAR, THAW_VAR = "BASE_DATE", "NDMPD_FREEZE", "NDMPD_THAW"
FULL_BASES = (None, "", "0", "-1")
YES = {"y", "yes", "t", "true", "1", "on"}


@dataclass(frozen=True)
class BackupPlan:
    volume: Volume
    path: Path
    hold: str | None
    base: holds.Held | None
    freeze: bool = False
    thaw: bool = False
    release: bool = False


def _yes(env: JobEnv, name: str) -> bool:
    return (env.value(name) or "").strip().lower() in YES


def plan_backup(env: JobEnv, state_dir: Path | None = None) -> BackupPlan:
    """Check a btrfs backup's environment at START; EnvError says what is wrong. The base is
    a held snapshot, or, on a promoted replica volume (``state_dir`` given), a kept replica
    state received from it."""
    volume = env.volume
    if volume is None:
        raise EnvError("FILESYSTEM is required for a btrfs backup")
    path = Path(volume.path)
    if not is_subvolume(path):
        raise EnvError(f"butype btrfs needs a btrfs subvolume volume; {volume.name} ({path}) is not one "
                       "(use butype dump, or make the volume a subvolume: 'btrfs subvolume create')")
    hold, release = env.hold, env.release
    freeze, thaw = _yes(env, FREEZE_VAR), _yes(env, THAW_VAR)
    if freeze and thaw:
        raise EnvError(f"{FREEZE_VAR}=y and {THAW_VAR}=y contradict each other")
    raw_base = env.value(BASE_VAR)
    base = None
    if raw_base not in FULL_BASES and not release:
        try:
            base = holds.find(path, raw_base) or _replica_base(volume, raw_base, state_dir)
        except SnapshotError as exc:
            raise EnvError(f"cannot look up the held snapshots of {volume.name}: {exc}") from None
        if base is None:
            raise EnvError(f"base snapshot {raw_base} is not kept on {volume.name} (released or never taken): "
                           "a full update is needed")
    return BackupPlan(volume, path, hold, base, freeze, thaw, release)


def _replica_base(volume: Volume, state_id: str, state_dir: Path | None) -> holds.Held | None:
    """The replica state equal to master snapshot ``state_id``, as a base (no hold keeps it)."""
    if not volume.replica or state_dir is None:
        return None
    found = ReplicaStore(volume, state_dir).received_state(state_id)
    return None if found is None else holds.Held("", found.name, found, state_id.strip().lower(), 0.0)


def _snapshot_time(name: str) -> float:
    try:
        return datetime.strptime(name.split("-")[1], "%Y%m%dT%H%M%S.%f").replace(tzinfo=timezone.utc).timestamp()
    except (IndexError, ValueError):
        return 0.0


class _Counter:
    """Bytes sent, reported as progress while they go."""

    def __init__(self, host: JobHost, out: Callable[[memoryview], None]) -> None:
        self.host, self.out, self.count = host, out, 0

    def __call__(self, chunk: memoryview) -> None:
        self.out(chunk)
        self.count += len(chunk)
        self.host.progress(self.count)


def backup(host: JobHost, env: JobEnv, plan: BackupPlan, sock: socket.socket | None,
           handoff: Handoff | None = None) -> Outcome:
    """Snapshot, send, and keep or drop the snapshot; SUCCESSFUL only once the peer has every byte."""
    name = plan.volume.name
    if plan.release:
        gone = holds.release(plan.path, plan.hold or "")
        summary = f"hold {plan.hold} of {name} released: {len(gone)} snapshot(s) deleted"
        return Outcome(C.DATA_HALT_SUCCESSFUL, effective(env), summary=summary)
    assert sock is not None
    try:
        if plan.thaw:
            holds.thaw(plan.path)
        if plan.freeze:
            holds.freeze(plan.path)
        if plan.hold is not None:
            kept = holds.take(plan.path, plan.hold)
            snap, uuid = kept.path, kept.uuid
        else:
            snap = holds.take_temporary(plan.path, job_tag())
            uuid = btrfs_send.subvolume_info(snap).uuid
    except (SnapshotError, OSError) as exc:
        why = f"btrfs backup of {name} not started: {exc}"
        host.log_message(why, "error")
        return Outcome(C.DATA_HALT_INTERNAL_ERROR, why=why)
    done = False
    try:
        write = _Counter(host, handoff.put if handoff is not None else sock.sendall)
        try:
            size = btrfs_send.send(snap, plan.base.path if plan.base else None, write, host.cancel)
        except (BrokenPipeError, ConnectionError) as exc:
            return _undelivered(host, name, str(exc.strerror or exc)) or Outcome(C.DATA_HALT_ABORTED)
        except (SnapshotError, OSError) as exc:
            if host.cancel.is_set():
                return Outcome(C.DATA_HALT_ABORTED)
            why = f"btrfs backup of {name} failed: {exc}"
            host.log_message(why, "error")
            return Outcome(C.DATA_HALT_INTERNAL_ERROR, why=why)
        if not (_delivered(sock, host.cancel) if handoff is None else _handed_over(handoff, host.cancel)):
            return (_undelivered(host, name, "the peer did not take the whole image")
                    or Outcome(C.DATA_HALT_ABORTED))
        done = True
        if plan.hold is not None:
            holds.settle(kept)                 # delivered: the replica may already show it
    finally:
        if not done or plan.hold is None:
            holds.remove_temporary(snap) if plan.hold is None else btrfs_send.delete(snap)
            if plan.hold is not None:
                holds.settle(kept)
    if plan.hold is not None:
        holds.keep_only(plan.path, plan.hold, {uuid} | ({plan.base.uuid} if plan.base else set()))
    base = plan.base.uuid if plan.base else "0"
    summary = (f"btrfs backup of {name} complete: {'incremental from ' + base if plan.base else 'full'}, "
               f"{size} bytes, snapshot {snap.name} ({uuid})")
    extra = {"DUMP_DATE": uuid, "BASE_DATE": base, "NDMPD_SNAPSHOT_NAME": snap.name,
             "NDMPD_SNAPSHOT_TIME": f"{_snapshot_time(snap.name):.6f}", IMAGE_SIZE_VAR: str(size)}
    return Outcome(C.DATA_HALT_SUCCESSFUL, effective(env, **extra), summary=summary)


# -- recover ----------------------------------------------------------------------------------


def plan_recover(env: JobEnv, destinations: list[str], volumes: tuple[Volume, ...]) -> Path:
    """The directory the new subvolume goes into: the nlist's destination, else PREFIX, else
    the volume's root; it must be an existing directory on btrfs inside a configured volume."""
    text = next((d for d in destinations if d), "") or env.prefix or (str(env.volume.path) if env.volume else "")
    if not text:
        raise EnvError("nowhere to restore the btrfs image: give PREFIX, FILESYSTEM or an nlist destination")
    place = resolve(text, volumes)
    path = Path(place.volume.path) / os.fsdecode(place.relative)
    if not path.is_dir():
        raise EnvError(f"the restore destination {path} is not an existing directory")
    if mount_of(path).fstype != "btrfs":
        raise EnvError(f"butype btrfs restores into a btrfs file system; {path} is on {mount_of(path).fstype}")
    return path


def socket_reader(sock: socket.socket, host: JobHost, env: JobEnv) -> tuple[Callable[[int], bytes], DataReadSource]:
    """The image from the data connection, read sequentially (one NOTIFY_DATA_READ of it all)."""
    sock.settimeout(0.25)
    source = DataReadSource(sock, host.request_read, host.cancel, _env_count(env, IMAGE_SIZE_VAR),
                            record=_env_count(env, RECORD_SIZE_VAR, least=1) or RECORD)
    buffer = memoryview(bytearray(btrfs_send.CHUNK))

    def read(size: int) -> bytes:
        got = source.readinto(buffer[:min(size, len(buffer))])
        host.progress(source.bytes_received)
        return bytes(buffer[:got])
    return read, source


def receive_stream(host: JobHost, env: JobEnv, sock: socket.socket, into: Path,
                   check_head: Callable[[StreamHead], None] | None = None
                   ) -> tuple[btrfs_send.Received | None, Outcome | None]:
    """Receive the data connection's stream into ``into``: (received, None), or (None, the
    failed halt) with the cause said to the DMA; nothing is left in ``into`` on failure."""
    read, source = socket_reader(sock, host, env)
    try:
        got = btrfs_send.receive(read, into, StreamGuard(), host.cancel, check_head)
    except (HostileStream, SnapshotError, SourceClosed, OSError) as exc:
        if host.cancel.is_set():
            return None, Outcome(C.DATA_HALT_ABORTED)
        why = f"btrfs restore into {into} failed: {exc}"
        host.log_message(why, "error")
        closed = isinstance(exc, SourceClosed)
        return None, Outcome(C.DATA_HALT_CONNECT_ERROR if closed else C.DATA_HALT_INTERNAL_ERROR, why=why)
    source.finish()
    return got, None


def recover(host: JobHost, env: JobEnv, into: Path, names: list[str], sock: socket.socket) -> Outcome:
    """Restore the image as a new read-only subvolume ``into/<stream's name>``."""
    def fresh(head: StreamHead) -> None:
        if os.path.lexists(into / head.name):
            raise SnapshotError(f"{into / head.name} already exists; restore elsewhere or delete it first")
    got, failed = receive_stream(host, env, sock, into, fresh)
    for name in names:
        host.log_file(name, got is not None, "" if got else (failed.why if failed else ""))
    if failed is not None or got is None:
        return failed or Outcome(C.DATA_HALT_INTERNAL_ERROR)
    summary = f"btrfs restore complete: {got.path} ({got.head.uuid}), {got.bytes} bytes"
    return Outcome(C.DATA_HALT_SUCCESSFUL, effective(env, DUMP_DATE=got.head.uuid,
                                                     NDMPD_SNAPSHOT_NAME=got.head.name,
                                                     NDMPD_RESTORED=str(got.path)), summary=summary)


__all__ = ["BackupPlan", "backup", "plan_backup", "plan_recover", "receive_stream", "recover"]
