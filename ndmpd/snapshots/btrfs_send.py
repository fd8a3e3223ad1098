"""btrfs send / receive and the subvolume operations replication needs (engine level: no NDMP).

``receive`` runs ``btrfs receive --chroot`` and passes every byte through a
:class:`StreamGuard` first; after any failure it deletes the partial subvolume, so a
refused or cut stream leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .base import SnapshotError
from .commands import TIMEOUT, find_tool, run
from .send_stream import HostileStream, StreamGuard, StreamHead

CHUNK = 1 << 17
_SUBVOLUME_ROOT_INODE = 256
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@dataclass(frozen=True)
class SubvolInfo:
    uuid: str
    parent_uuid: str | None
    received_uuid: str | None
    readonly: bool
    ctime: float


@dataclass(frozen=True)
class Received:
    path: Path
    head: StreamHead
    bytes: int


def _btrfs() -> str:
    tool = find_tool("btrfs")
    if tool is None:
        raise SnapshotError("the 'btrfs' command is not installed (btrfs-progs)")
    return tool


def _last_line(log: "tempfile._TemporaryFileWrapper[bytes]", fallback: str) -> str:
    log.seek(0)
    lines = [line for line in log.read().decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else fallback


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=TIMEOUT)


def send(snapshot: Path, parent: Path | None, write: Callable[[memoryview], None],
         cancel: threading.Event | None = None) -> int:
    """Stream ``btrfs send [-p parent] snapshot`` into ``write``; the number of bytes sent."""
    argv = [_btrfs(), "send", "-q", *(["-p", str(parent)] if parent is not None else []), str(snapshot)]
    sent = 0
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL)
        assert process.stdout is not None
        try:
            while True:
                if cancel is not None and cancel.is_set():
                    raise SnapshotError(f"btrfs send of {snapshot}: cancelled")
                chunk = process.stdout.read1(CHUNK)
                if not chunk:
                    break
                write(memoryview(chunk))
                sent += len(chunk)
            process.wait(timeout=TIMEOUT)
        except BaseException:
            _stop(process)
            raise
        finally:
            process.stdout.close()
        if process.returncode != 0:
            raise SnapshotError(f"btrfs send of {snapshot}: "
                                f"{_last_line(errors, f'exit status {process.returncode}')}")
    return sent


def receive(read: Callable[[int], bytes], into: Path, guard: StreamGuard,
            cancel: threading.Event | None = None,
            check_head: Callable[[StreamHead], None] | None = None) -> Received:
    """Receive one stream into a new read-only subvolume ``into/<name>``; on any failure
    nothing new is left in ``into`` and the error says why."""
    into = Path(into)
    argv = [_btrfs(), "receive", "-e", "--chroot", str(into)]
    head: StreamHead | None = None
    created = False                         # the subvolume is ours to delete on failure
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)
        assert process.stdin is not None
        try:
            while True:
                if cancel is not None and cancel.is_set():
                    raise SnapshotError(f"receive into {into}: cancelled")
                chunk = read(CHUNK)
                if not chunk:
                    guard.finish()
                    break
                ours = guard.feed(memoryview(chunk))
                if head is None and guard.header is not None:
                    head = guard.header
                    if os.path.lexists(into / head.name):
                        raise SnapshotError(f"receive into {into}: {head.name} already exists there")
                    if check_head is not None:
                        check_head(head)
                    created = True
                try:
                    process.stdin.write(chunk[:ours])
                except BrokenPipeError:
                    raise SnapshotError(f"btrfs receive into {into}: "
                                        f"{_last_line(errors, 'it stopped reading')}") from None
                if guard.ended:
                    break                   # what follows (a tape's padding) is not the stream's
            process.stdin.close()
            process.wait(timeout=TIMEOUT)
            if process.returncode != 0:
                raise SnapshotError(f"btrfs receive into {into}: "
                                    f"{_last_line(errors, f'exit status {process.returncode}')}")
            assert head is not None
            target = into / head.name
            info = subvolume_info(target)
            if not info.readonly or info.received_uuid != head.uuid:
                raise SnapshotError(f"btrfs receive into {into}: {head.name} is not the received "
                                    f"read-only subvolume the stream named")
        except BaseException:
            _stop(process)
            if created and head is not None and os.path.lexists(into / head.name):
                delete(into / head.name)
            raise
        finally:
            if not process.stdin.closed:
                try:
                    process.stdin.close()
                except OSError:
                    pass
    return Received(target, head, guard.bytes)


def _uuid_field(value: str) -> str | None:
    value = value.strip()
    return None if value in ("-", "") else value.lower()


def subvolume_info(path: Path) -> SubvolInfo:
    """What ``btrfs subvolume show`` says of a subvolume (uuids None for '-')."""
    out = run([_btrfs(), "subvolume", "show", str(path)], f"reading subvolume {path}")
    fields: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        key, sep, value = line.strip().partition(":")
        if sep and key not in fields:
            fields[key.strip()] = value.strip()
    try:
        ctime = datetime.strptime(fields.get("Creation time", ""), "%Y-%m-%d %H:%M:%S %z").timestamp()
    except ValueError:
        ctime = 0.0
    uuid = _uuid_field(fields.get("UUID", ""))
    if uuid is None:
        raise SnapshotError(f"{path}: 'btrfs subvolume show' gave no UUID")
    return SubvolInfo(uuid, _uuid_field(fields.get("Parent UUID", "-")),
                      _uuid_field(fields.get("Received UUID", "-")),
                      "readonly" in fields.get("Flags", ""), ctime)


def set_readonly(path: Path, readonly: bool) -> None:
    """Make a subvolume read-only or writable (``btrfs property set ro``)."""
    argv = [_btrfs(), "property", "set", "-ts", str(path), "ro", "true" if readonly else "false"]
    if not readonly:
        argv.insert(3, "-f")                  # a received subvolume: clearing ro drops its Received UUID
    run(argv, f"setting {path} {'read-only' if readonly else 'writable'}")


def snapshot(src: Path, dst: Path, readonly: bool) -> None:
    """A snapshot of subvolume ``src`` at ``dst`` (O(1))."""
    run([_btrfs(), "subvolume", "snapshot", *(["-r"] if readonly else []), str(src), str(dst)],
        f"snapshot of {src}")


def _nested(path: Path) -> list[Path]:
    """Subvolumes inside ``path`` (not ``path`` itself), deepest first."""
    found: list[Path] = []
    for root, dirs, _files in os.walk(path, topdown=True, followlinks=False):
        for name in dirs:
            full = Path(root) / name
            try:
                if os.lstat(full).st_ino == _SUBVOLUME_ROOT_INODE:
                    found.append(full)
            except OSError:
                continue
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def delete(path: Path) -> None:
    """Delete a subvolume and any subvolumes nested inside it (a read-only one is made
    writable first, or its nested ones could not be unlinked). Replica states never nest,
    so the tree is only walked for nested ones when the plain delete is refused."""
    try:
        run([_btrfs(), "subvolume", "delete", str(path)], f"deleting subvolume {path}")
        return
    except SnapshotError:
        nested = _nested(Path(path))
        if not nested:
            raise
    if subvolume_info(Path(path)).readonly:
        set_readonly(Path(path), False)
    for inner in nested:
        run([_btrfs(), "subvolume", "delete", str(inner)], f"deleting subvolume {inner}")
    run([_btrfs(), "subvolume", "delete", str(path)], f"deleting subvolume {path}")


def exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (``renameat2(RENAME_EXCHANGE)``); OSError on failure."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = libc.renameat2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"exchanging {a} and {b}: {os.strerror(errno)}")


__all__ = ["HostileStream", "Received", "StreamGuard", "StreamHead", "SubvolInfo", "delete", "exchange",
           "receive", "send", "set_readonly", "snapshot", "subvolume_info"]
