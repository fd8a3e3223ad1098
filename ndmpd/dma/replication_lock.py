"""The lock a running ``ndmp replicate run`` holds on its replication, so ``promote`` and
``delete`` (which freeze or release the master's snapshots) refuse while updates run.

One file per replication next to the catalog (``replicate-NAME.lock``), locked with
``flock``: the kernel drops the lock when the holder exits, even by ``kill -9``, so a stale
file never blocks anyone. The holder's pid is written in it for the refusal's message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


class ReplicationBusy(Exception):
    """Another ``ndmp`` holds this replication's lock (the message names its pid)."""


def lock_path(catalog: Path, name: str) -> Path:
    """Where replication ``name``'s lock file lives: beside the catalog file."""
    return catalog.parent / f"replicate-{name}.lock"


@contextlib.contextmanager
def replication_lock(catalog: Path, name: str, doing: str) -> Iterator[None]:
    """Hold the lock for the ``with`` block; ReplicationBusy when another process has it."""
    path = lock_path(catalog, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ReplicationBusy(f"cannot {doing} {name}: an ndmp replicate run of it is active "
                                  f"(pid {holder}); stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def is_locked(catalog: Path, name: str) -> bool:
    """Whether a run holds replication ``name`` now (for ``status``)."""
    path = lock_path(catalog, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
