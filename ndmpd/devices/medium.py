"""Where a cartridge's bytes live: the storage under ``Cartridge`` (a local file, or S3).

A cartridge is a superblock then a log of entries that only ever grows at its end or is cut
back (tape semantics), so a medium needs no random writes: read at any offset, append at
the end (after a cut), cut, rewrite the superblock, and make what was written durable.
Everything above (entries, sealing, positions, libraries) is the same on every medium.

A location names a cartridge without opening it: a ``Path`` (a local file) or an object with
``exists()``, ``create(header)`` and ``open(writable)`` (``s3_medium.S3Cartridge``).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Protocol, Sequence, Union, runtime_checkable

from .tape import DeviceBusy, MediaError

WRITE_BEHIND = 32 << 20        # see FileMedium.streamed
IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024
_libc = ctypes.CDLL(None, use_errno=True)
_libc.sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
SYNC_WAIT_BEFORE, SYNC_WRITE, SYNC_WAIT_AFTER = 1, 2, 4


@runtime_checkable
class CartridgeMedium(Protocol):
    """An open cartridge's bytes. Writes go at ``size()`` only (``truncate`` first to write
    earlier); ``sync`` is the durability point (a filemark, close)."""

    name: str
    exact_end: bool     # True: ``size()`` always ends a whole entry (no torn tail to recover)

    def size(self) -> int: ...
    def pread(self, length: int, offset: int) -> bytes: ...
    def preadv(self, buffers: Sequence[bytearray | memoryview], offset: int) -> int: ...
    def append(self, parts: Sequence[bytes | memoryview], offset: int, total: int) -> None: ...
    def truncate(self, offset: int) -> None: ...
    def streamed(self) -> None: ...
    def note_records(self, offset: int, length: int, count: int) -> None: ...
    def records_ahead(self, offset: int) -> tuple[int, int]: ...
    def records_behind(self, offset: int) -> tuple[int, int]: ...
    def sync(self) -> None: ...
    def write_header(self, header: bytes) -> None: ...
    def close(self) -> None: ...


@runtime_checkable
class RemoteLocation(Protocol):
    """A cartridge somewhere other than a local file."""

    def exists(self) -> bool: ...
    def create(self, header: bytes) -> None: ...
    def open(self, writable: bool) -> CartridgeMedium: ...
    def remove(self) -> None: ...


Location = Union[Path, RemoteLocation]


def exists(where: Location) -> bool:
    return where.exists()


def create(where: Location, header: bytes) -> None:
    """A new cartridge holding only ``header``; refuses to overwrite one (FileExistsError)."""
    if isinstance(where, Path):
        fd = os.open(where, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            os.write(fd, header)
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        where.create(header)


def remove(where: Location) -> None:
    """Delete a cartridge (one just created that could not be placed)."""
    if isinstance(where, Path):
        where.unlink()
    else:
        where.remove()


def open_medium(where: Location, writable: bool) -> CartridgeMedium:
    return FileMedium(where, writable) if isinstance(where, Path) else where.open(writable)


def _sync_range(fd: int, offset: int, length: int, flags: int) -> None:
    _libc.sync_file_range(fd, offset, length, flags)      # advisory: errors surface at fdatasync


class FileMedium:
    """A cartridge file: pread/pwritev, with streaming write-behind; flock keeps it to one opener."""

    exact_end = False           # a crash can leave a torn last entry: the cartridge scans for its end

    def __init__(self, path: Path, writable: bool) -> None:
        self.name = str(path)
        self.fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise DeviceBusy(f"{path}: cartridge is in use by another process") from None
        self._end = os.fstat(self.fd).st_size
        self._flushed = self._end         # below this, writeback has been started
        self._previous = self._end        # below this, it has finished

    def size(self) -> int:
        return self._end

    def pread(self, length: int, offset: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def preadv(self, buffers: Sequence[bytearray | memoryview], offset: int) -> int:
        return os.preadv(self.fd, buffers, offset)

    def append(self, parts: Sequence[bytes | memoryview], offset: int, total: int) -> None:
        with self._failing("writing"):
            written = os.pwritev(self.fd, parts, offset)
            if written != total:        # rare for regular files: finish what is left
                rest = b"".join(bytes(p) for p in parts)[written:]
                while rest:
                    n = os.pwrite(self.fd, rest, offset + total - len(rest))
                    rest = rest[n:]
        self._end = offset + total

    @contextmanager
    def _failing(self, what: str) -> Iterator[None]:
        """An OSError of the file under the cartridge (a full disk, an I/O error) is the
        tape's media error, saying which file and why: the mover halts MEDIA_ERROR with it."""
        try:
            yield
        except OSError as exc:
            raise MediaError(f"{self.name}: {what} the cartridge failed: {exc.strerror or exc}") from exc

    def truncate(self, offset: int) -> None:
        if offset < self._end:
            os.ftruncate(self.fd, offset)
            self._end = offset
        self._flushed = min(self._flushed, offset)
        self._previous = min(self._previous, offset)

    def streamed(self) -> None:
        """Streaming writes: start writeback of each WRITE_BEHIND bytes as they fill, wait for
        the chunk before it and drop that from the page cache. The filemark's fdatasync then
        has little left to do, and a multi-GB backup neither piles up dirty memory nor pushes
        the server's working set out of the page cache."""
        if self._end - self._flushed < WRITE_BEHIND:
            return
        end = self._end - self._end % WRITE_BEHIND
        _sync_range(self.fd, self._flushed, end - self._flushed, SYNC_WRITE)
        if self._previous < self._flushed:
            done = self._flushed - self._previous
            _sync_range(self.fd, self._previous, done, SYNC_WAIT_BEFORE | SYNC_WRITE | SYNC_WAIT_AFTER)
            os.posix_fadvise(self.fd, self._previous, done, os.POSIX_FADV_DONTNEED)
        self._previous, self._flushed = self._flushed, end

    def note_records(self, offset: int, length: int, count: int) -> None:
        """A local file needs no map of its records: reading a header costs a pread."""

    def records_ahead(self, offset: int) -> tuple[int, int]:
        return 0, 0

    def records_behind(self, offset: int) -> tuple[int, int]:
        return 0, 0

    def sync(self) -> None:
        with self._failing("syncing"):
            os.fdatasync(self.fd)

    def write_header(self, header: bytes) -> None:
        with self._failing("writing the superblock of"):
            os.fsync(self.fd)               # what is before it is on disk first
            os.pwrite(self.fd, header, 0)
            os.fsync(self.fd)
        self._end = max(self._end, len(header))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

