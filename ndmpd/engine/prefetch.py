"""Read-ahead of large files for the dump: a second stream of reads in flight while it copies.

A large file goes out by ``sendfile`` (or ``preadv`` into the sink's buffer), read by the
kernel's own read-ahead one window at a time: one sequential stream, GNU tar's speed on a
cold cache. Many devices serve reads in flight in parallel faster (this project's virtio disk:
``cat a b`` 0.56-0.94 s, ``cat a & cat b`` 0.47 s). So once a large file proves cold (a
``RWF_NOWAIT`` probe of a few of its pages finds one missing), a thread of the dump asks the
kernel for the chunks ahead of the copy, of that file and of the large files that follow it in
the same directory (``posix_fadvise(WILLNEED)`` queues the reads and returns), keeping up to
``WINDOW_BYTES`` of stream ahead of the sink's position: memory and the page cache are not
flooded, and what it asked for is read by the dump moments later.

The thread reads nothing itself and writes nothing: the stream is the dump's alone, byte for
byte the same, and whatever it gets wrong (a file renamed under it) costs at most wasted reads.
A warm dump pays a probe of three pages per large file and starts no thread. Small files are
the read-ahead helper's (readahead.py), which asks for files whole up to ``LARGE``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

LARGE = 8 << 20                # files this large or larger are followed here (readahead.py asks
                               # for smaller ones whole, and for these only their head)
WINDOW_BYTES = 64 << 20        # stream bytes asked for ahead of the sink's position
CHUNK = 2 << 20                # bytes a WILLNEED call asks for (the kernel reads at most
                               # max(read_ahead_kb, max_sectors_kb) of one call: keep below both)
HEADER_GUESS = 1024            # stream bytes of a member's headers, to place the files that follow
_POLL = 0.002                  # seconds between the thread's looks at the sink's position
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

Upcoming = list[tuple[bytes, os.stat_result]]


class Prefetch:
    """The dump's side: :meth:`reading` before it copies a large file, :meth:`stop` at the end.

    ``position`` gives the stream bytes the sink has produced so far (any thread may call it)."""

    def __init__(self, position: Callable[[], int], eager: bool = False) -> None:
        self._position = position
        self._eager = eager
        self._wake = threading.Condition()
        self._plan: tuple[int, list[tuple[bytes, int, int, int, int]]] | None = None  # dir fd, files
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._probe = bytearray(1)
        self.bytes_asked = 0           # of large files' data asked for ahead of the dump
        self.cold_files = 0            # large files found cold (each one's copy was followed)

    @property
    def started(self) -> bool:
        return self._thread is not None

    def cold(self, fd: int, size: int) -> bool:
        """Whether a page of the file's start, middle or end is not cached (it cannot tell:
        no, as a file system without ``RWF_NOWAIT`` is one without a page cache to miss)."""
        for offset in (0, (size // 2) & ~4095, (size - 1) & ~4095):
            try:
                if not os.preadv(fd, [self._probe], offset, os.RWF_NOWAIT):
                    return True
            except BlockingIOError:
                return True
            except OSError:
                return False
        return False

    def reading(self, fd: int, dir_fd: int, name: bytes, st: os.stat_result, start: int,
                upcoming: Callable[[], Upcoming]) -> None:
        """The dump is about to copy the open file ``fd`` (``name`` in ``dir_fd``), whose data
        begins at stream offset ``start``; ``upcoming`` lists the large files it copies next
        (asked only when this one is cold)."""
        if not self._eager and not self.cold(fd, st.st_size):
            return
        self.cold_files += 1
        files = [(name, st.st_dev, st.st_ino, st.st_size, start)]
        at = start + ((st.st_size + 511) & ~511)
        for other, other_st in upcoming():
            files.append((other, other_st.st_dev, other_st.st_ino, other_st.st_size, at + HEADER_GUESS))
            at += HEADER_GUESS + ((other_st.st_size + 511) & ~511)
        plan = (os.dup(dir_fd), files)
        with self._wake:
            if self._plan is not None:
                os.close(self._plan[0])          # never taken up: this one replaces it
            self._plan = plan
            self._wake.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dump-prefetch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End the thread and wait for it; idempotent."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
        with self._wake:
            if self._plan is not None:
                os.close(self._plan[0])
                self._plan = None

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        asked: dict[tuple[int, int], int] = {}     # file -> bytes from its start asked for
        while True:
            with self._wake:
                while self._plan is None and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                dir_fd, files = self._plan
                self._plan = None
            try:
                asked = {(dev, ino): asked[dev, ino] for _, dev, ino, _, _ in files if (dev, ino) in asked}
                self._follow(dir_fd, files, asked)
            except OSError:
                pass                                # only a hint: the dump reads what it needs
            finally:
                os.close(dir_fd)

    def _follow(self, dir_fd: int, files: list[tuple[bytes, int, int, int, int]],
                asked: dict[tuple[int, int], int]) -> None:
        """Ask for the files' chunks in order, each once the sink is near enough; return early
        for a new plan or the stop."""
        for name, dev, ino, size, start in files:
            offset = asked.get((dev, ino), 0)
            if offset >= size:
                continue
            try:
                fd = os.open(name, _FLAGS | os.O_NOATIME, dir_fd=dir_fd)
            except PermissionError:
                fd = os.open(name, _FLAGS, dir_fd=dir_fd)   # O_NOATIME needs ownership
            try:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != (dev, ino):
                    continue                        # replaced since the dump listed it
                while offset < size:
                    offset = max(offset, (self._position() - start) & ~4095)   # the copy is past it
                    if offset >= size:
                        break
                    if not self._room_for(start + offset):
                        return
                    length = min(CHUNK, size - offset)
                    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
                    offset += length
                    asked[dev, ino] = offset
                    self.bytes_asked += length
            finally:
                os.close(fd)

    def _room_for(self, at: int) -> bool:
        """Wait until stream offset ``at`` is within the window ahead of the sink; False when a
        new plan or the stop comes first."""
        with self._wake:
            while self._plan is None and not self._stopping:
                if at - self._position() <= WINDOW_BYTES:
                    return True
                self._wake.wait(_POLL)
            return False
