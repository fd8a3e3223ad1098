"""Where a dump stream goes: a file descriptor (pipe, socket, file) behind one large buffer.

Headers and small files are gathered in a 1 MiB buffer and leave in one ``write``; large
files go straight from the page cache with ``sendfile`` (no copy through Python). The sink
counts every byte, which is how file history learns each entry's stream offset.

A consumer in this process (a LOCAL mover, the TLS relay: a ``Handoff``) takes each buffer
whole and gives it back when it has written it, so there is no kernel buffer between the
two: the sink keeps more and bigger buffers in flight for it (HANDED_BUFFER_SIZE,
HANDED_SPARES), or the dump waits at every buffer for the round trip between the threads,
each of which waits for the GIL the walk holds.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import queue
import stat
import threading
import time
from collections.abc import Callable

BUFFER_SIZE = 1 << 20
HANDED_BUFFER_SIZE = 4 << 20   # a consumer in this process: buffers of this size, and this many spare
HANDED_SPARES = 3              # ones, while it holds one (measured: the dump's waits for a buffer went
                               # from 0.2-0.5 s to mostly under 0.15 s of a 2.5 s two-way backup of 100,000 files)
SENDFILE_MIN = 256 << 10      # below this, one preadv into the buffer beats flush + sendfile
SLOW_READ_NS = 1_000_000       # a small read this slow waited for a device (no RWF_NOWAIT to ask)
_SENDFILE_CHUNK = 8 << 20       # the byte count (progress) moves at least this often


PIPE_SIZE = 1 << 20
_ZEROS = bytes(SENDFILE_MIN)
_PADDING = tuple(bytes(n) for n in range(512))   # a block's zero tail, ready (no slice per file)
_RWF_NOWAIT = os.RWF_NOWAIT


def _buffer(size: int) -> mmap.mmap:
    """A sink buffer mapped on its own, so that closing the sink unmaps it (a bytearray's
    memory would go back to malloc, and only once the last reference to it is gone)."""
    return mmap.mmap(-1, size)


def widen_pipe(fd: int, size: int = PIPE_SIZE) -> None:
    """Give a pipe room for a whole buffer, so a write rarely waits for the reader."""
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            with open("/proc/sys/fs/pipe-max-size") as limit:
                size = min(size, int(limit.read()))
            if fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < size:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except (OSError, ValueError):
        pass


class _Closed(Exception):
    """Marks a sink whose writer has stopped: queued buffers are dropped."""


class FdSink:
    """A buffered, position-counting writer to a file descriptor, or to a consumer in this
    process (a callable taking each full buffer, which it may not keep once it returns).

    Full buffers are written by a background thread while the dump fills the next one
    (``write`` releases the GIL), so the walk never waits for a slow pipe or socket unless
    all its spare buffers are in flight.
    """

    def __init__(self, out: int | Callable[[memoryview], None], buffer_size: int | None = None,
                 use_sendfile: bool = True, spares: int | None = None) -> None:
        handed = callable(out)
        if handed:
            self.fd = -1
            self._write_all = out           # type: ignore[method-assign]
            use_sendfile = False            # everything passes through the buffers
        else:
            self.fd = out
            widen_pipe(out)
        if buffer_size is None:
            buffer_size = HANDED_BUFFER_SIZE if handed else BUFFER_SIZE
        if spares is None:
            spares = HANDED_SPARES if handed else 1
        self._buffer = _buffer(buffer_size)
        self._view = memoryview(self._buffer)
        self._fill = 0
        self._flushed = 0
        self._sendfile = use_sendfile
        self.on_miss: Callable[[], None] | None = None    # a small file's read was not cached
        self._timed_reads = False
        self._spare: queue.Queue[mmap.mmap] = queue.Queue()
        for _ in range(max(1, spares)):
            self._spare.put(_buffer(buffer_size))
        self._pending: queue.Queue[tuple[mmap.mmap, int] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._writer = threading.Thread(target=self._write_loop, name="dump-writer", daemon=True)
        self._writer.start()

    @property
    def offset(self) -> int:
        """Bytes of stream produced so far."""
        return self._flushed + self._fill

    def write(self, data: bytes) -> None:
        size = len(data)
        if self._fill + size > len(self._buffer):
            self.flush()
            if size > len(self._buffer):
                self.drain()
                self._write_all(memoryview(data))
                self._flushed += size
                return
        self._buffer[self._fill:self._fill + size] = data
        self._fill += size

    def zeros(self, count: int) -> None:
        """Append ``count`` zero bytes (block padding, or the rest of a file that shrank)."""
        while count:
            if self._fill == len(self._buffer):
                self.flush()
            step = min(count, len(self._buffer) - self._fill)
            self._buffer[self._fill:self._fill + step] = bytes(step)
            self._fill += step
            count -= step

    def copy_padded(self, source: int, count: int) -> int:
        """``copy_from(source, 0, count)`` plus the zero padding to the next block."""
        padded = (count + 511) & ~511
        if count >= SENDFILE_MIN or self._fill + padded > len(self._buffer):
            copied = self.copy_from(source, 0, count)
            self.zeros(padded - copied)
            return copied
        return self.member(b"", source, count)

    def member(self, head: bytes, source: int, count: int) -> int:
        """``write(head)`` then ``copy_padded(source, count)``: a small file's headers, data and
        padding go into the buffer in one call when they fit (a small-file tree's every file),
        its data by one ``preadv`` (with ``RWF_NOWAIT`` while ``on_miss`` listens)."""
        fill = self._fill
        end = fill + len(head)
        padded = (count + 511) & ~511
        buffer = self._buffer
        if count >= SENDFILE_MIN or end + padded > len(buffer):
            self.write(head)
            return self.copy_padded(source, count) if count else 0
        buffer[fill:end] = head
        if not count:
            self._fill = end
            return 0
        view = self._view[end:end + count]
        if self.on_miss is None:
            copied = os.preadv(source, [view], 0)   # short only at end of file
        elif self._timed_reads:
            copied = self._read_noting_miss(source, view)
        else:                                       # _read_noting_miss's usual case, inline
            try:
                copied = os.preadv(source, [view], 0, _RWF_NOWAIT)
            except OSError:                         # not cached at all, or no RWF_NOWAIT here
                copied = self._read_noting_miss(source, view)
            else:
                if copied < count:
                    copied += self._rest_noting_miss(source, view, copied)
        if copied != padded:
            pad = padded - copied
            buffer[end + copied:end + padded] = _PADDING[pad] if pad < 512 else _ZEROS[:pad]
        self._fill = end + padded
        return copied

    def _read_noting_miss(self, source: int, view: memoryview) -> int:
        """Read a small file whole, telling ``on_miss`` when it was not all in the page cache
        (a ``RWF_NOWAIT`` read came back short; where the file system cannot say (NFS, tmpfs),
        a read that took longer than a cached one can)."""
        if self._timed_reads:
            started = time.monotonic_ns()
            copied = os.preadv(source, [view], 0)
            if time.monotonic_ns() - started > SLOW_READ_NS and self.on_miss is not None:
                self.on_miss()
            return copied
        try:
            copied = os.preadv(source, [view], 0, os.RWF_NOWAIT)
        except BlockingIOError:
            copied = 0
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            self._timed_reads = True
            return self._read_noting_miss(source, view)
        if copied < len(view):
            copied += self._rest_noting_miss(source, view, copied)
        return copied

    def _rest_noting_miss(self, source: int, view: memoryview, copied: int) -> int:
        """The rest of a ``RWF_NOWAIT`` read that came back short: a miss unless the file ended."""
        more = os.preadv(source, [view[copied:]], copied)
        if more and self.on_miss is not None:
            self.on_miss()
        return more

    def copy_from(self, source: int, offset: int, count: int) -> int:
        """Copy ``count`` bytes of ``source`` from ``offset``; fewer only at its end of file."""
        if self._sendfile and count >= SENDFILE_MIN:
            try:
                return self._send(source, offset, count)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                self._sendfile = False
        done = 0
        while done < count:
            if self._fill == len(self._buffer):
                self.flush()
            step = min(count - done, len(self._buffer) - self._fill)
            got = os.preadv(source, [self._view[self._fill:self._fill + step]], offset + done)
            if got == 0:
                break
            self._fill += got
            done += got
        return done

    def _send(self, source: int, offset: int, count: int) -> int:
        self.drain()
        done = 0
        while done < count:
            sent = os.sendfile(self.fd, source, offset + done, min(count - done, _SENDFILE_CHUNK))
            if sent == 0:
                break
            done += sent
            self._flushed += sent      # counted as it goes: another thread reads offset for progress
        return done

    def flush(self) -> None:
        """Hand the filled buffer to the writer thread and continue in a spare one."""
        if self._error:
            raise self._error
        if self._fill:
            self._pending.put((self._buffer, self._fill))
            self._flushed += self._fill
            self._fill = 0
            self._buffer = self._spare.get()
            self._view = memoryview(self._buffer)
            if self._error:
                raise self._error

    def drain(self) -> None:
        """Flush and wait until every byte has reached the file descriptor."""
        self.flush()
        self._pending.join()
        if self._error:
            raise self._error

    def close(self, drain: bool = True) -> None:
        """Stop the writer thread, first draining unless the job failed (the fd stays the caller's)."""
        try:
            if drain:
                self.drain()
        finally:
            self._error = self._error or _Closed()
            self._pending.put(None)
            self._writer.join()
            self._unmap()

    def _unmap(self) -> None:
        """Give the buffers back now, not when a collection finds the job's cycle of objects
        (a server's RSS grew by every finished backup's buffers until then)."""
        try:
            self._view.release()
        except BufferError:
            pass
        buffers = [self._buffer]
        while not self._spare.empty():
            buffers.append(self._spare.get_nowait())
        for buffer in buffers:
            try:
                buffer.close()
            except BufferError:
                pass                    # a consumer still holds a view of it: it goes with that

    def _write_loop(self) -> None:
        while True:
            item = self._pending.get()
            if item is None:
                self._pending.task_done()
                return
            buffer, fill = item
            try:
                if self._error is None:
                    self._write_all(memoryview(buffer)[:fill])
            except BaseException as exc:     # reported to the dump thread at its next flush
                self._error = exc
            finally:
                self._spare.put(buffer)
                self._pending.task_done()

    def _write_all(self, data: memoryview) -> None:
        while data:
            written = os.write(self.fd, data)
            data = data[written:]
