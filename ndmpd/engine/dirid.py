"""A directory's identity beyond its inode number, so an incremental never takes a new directory
for an old one renamed.

Incrementals tell a renamed directory from a new one by its inode number in the base's
directory index (as GNU tar ``-g`` does); but ext4 and XFS give a deleted directory's number to
the next one made, so a directory created after a deletion would pass for the deleted one,
renamed (GNU tar says "Directory has been renamed" and records it so). The number is the same,
the inode is not: its *generation* (``FS_IOC_GETVERSION``: ext4 and XFS draw it at random for
each new inode, btrfs takes the transaction's id; a snapshot keeps it) or, where the file system
has none (tmpfs, FAT), its *birth time* (``statx`` ``STATX_BTIME``) tells them apart.

A stamp is one int: the generation (below 2**32), or the birth time in ns with bit 64 set, so
the two kinds never compare equal; None when the file system gives neither, and then the
directory compares by number alone, as before. One ioctl per directory (the fd is open to be
listed anyway); the birth time, a second call through ctypes, only where the ioctl fails.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import sys

FS_IOC_GETVERSION = 0x80007601 | struct.calcsize("l") << 16     # _IOR('v', 1, long); the kernel writes an int
BIRTH_TAG = 1 << 64
_MASK_64 = (1 << 64) - 1
_AT_EMPTY_PATH, _AT_STATX_DONT_SYNC, _STATX_BTIME = 0x1000, 0x4000, 0x800
_UNSUPPORTED = (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS)


def same(known: int | None, now: int | None) -> bool:
    """Whether a directory with the base's stamp ``known`` and the stamp ``now`` (same inode
    number) may be the same directory: only differing stamps, both known, prove it is not."""
    return known is None or now is None or known == now


def split(stamp: int) -> tuple[int, int]:
    """(kind, value) for storage: kind 1 a generation, 2 a birth time (signed ns)."""
    if stamp & BIRTH_TAG:
        value = stamp & _MASK_64
        return 2, value - (1 << 64) if value >> 63 else value
    return 1, stamp


def join(kind: int, value: int) -> int | None:
    """The stamp :func:`split` took apart; None for kind 0 (not known) or a kind unknown."""
    if kind == 1:
        return value
    if kind == 2:
        return BIRTH_TAG | (value & _MASK_64)
    return None


class Stamper:
    """Stamps directories by open fd, remembering per device what the file system supports."""

    def __init__(self) -> None:
        self._no_generation: set[int] = set()     # devices whose file system has no generation ioctl
        self._no_birth: set[int] = set()
        self._statx = None                        # (libc.statx, buffer), loaded on first need
        self._buffer = bytearray(8)

    def __call__(self, fd: int, dev: int) -> int | None:
        """The stamp of the directory open at ``fd`` (on device ``dev``)."""
        if dev not in self._no_generation:
            buffer = self._buffer
            try:
                fcntl.ioctl(fd, FS_IOC_GETVERSION, buffer)
                return int.from_bytes(buffer[:4], sys.byteorder)
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    return None
                self._no_generation.add(dev)
        if dev in self._no_birth:
            return None
        birth = self._birth_ns(fd)
        if birth is None:
            self._no_birth.add(dev)
            return None
        return BIRTH_TAG | (birth & _MASK_64)

    def _birth_ns(self, fd: int) -> int | None:
        if self._statx is None:
            self._statx = _load_statx()
        call, buffer = self._statx
        if call is None or call(fd, b"", _AT_EMPTY_PATH | _AT_STATX_DONT_SYNC, _STATX_BTIME, buffer) != 0:
            return None
        mask = int.from_bytes(buffer[0:4], sys.byteorder)
        if not mask & _STATX_BTIME:
            return None
        seconds = int.from_bytes(buffer[80:88], sys.byteorder, signed=True)    # struct statx's stx_btime
        nanoseconds = int.from_bytes(buffer[88:92], sys.byteorder)
        return seconds * 1_000_000_000 + nanoseconds


def _load_statx():
    """libc's statx and a struct statx buffer (256 bytes); (None, None) without one."""
    import ctypes                       # only here: the stat helper process starts without it
    try:
        call = ctypes.CDLL(None, use_errno=True).statx
    except (OSError, AttributeError):
        return None, None
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    call.restype = ctypes.c_int
    return call, ctypes.create_string_buffer(256)


def stamp_of(path: str | bytes | os.PathLike) -> int | None:
    """The stamp of the directory at ``path`` (for tools and tests; the walk stamps its fds)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return Stamper()(fd, os.fstat(fd).st_dev)
    finally:
        os.close(fd)
