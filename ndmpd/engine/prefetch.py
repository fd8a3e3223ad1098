"""Read-ahead of large files for the dump: more than one stream of reads in flight while it copies.

A large file goes out by ``sendfile`` (or ``preadv`` into the sink's buffer), read by the
kernel's own read-ahead one window at a time: one sequential stream, GNU tar's speed on a
cold cache. Many devices serve reads in flight in parallel faster (this project's virtio disk:
``cat a b`` 0.56-0.94 s, ``cat a & cat b`` 0.47 s). So once a large file proves cold (a
``RWF_NOWAIT`` probe of a few of its pages finds one missing), ``STREAMS`` threads of the dump
read the ``REGION``-sized pieces ahead of its copy, of that file and of the large files that
follow it in the same directory, each piece in one thread from start to end, keeping within
``WINDOW_BYTES`` of stream ahead of the sink's position: memory and the page cache are not
flooded, and what they read is sent by the dump moments later.

A thread reads by ``sendfile`` into ``/dev/null``: the kernel's ordinary read path (its
read-ahead, its large folios), nothing copied to user space. ``posix_fadvise(WILLNEED)`` was
tried first (one thread, 2 MiB a call, 64 MiB ahead): as fast cold, but it fills the cache with
4 KiB pages, which cost every later warm read of those files a quarter more time and twice the
CPU (measured); it stays the fallback where ``/dev/null`` cannot be opened or spliced to.

The threads write nothing into the stream: it is the dump's alone, byte for byte the same, and
whatever they get wrong (a file renamed under them) costs at most wasted reads. A warm dump
pays a probe of three pages per large file and starts no thread. Small files are the read-ahead
helper's (readahead.py), which asks for files whole up to ``LARGE``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

LARGE = 8 << 20                # files this large or larger are followed here (readahead.py asks
                               # for smaller ones whole, and for these only their head)
STREAMS = 2                    # threads reading ahead, each one piece at a time
REGION = 32 << 20              # a piece one thread reads from start to end (the kernel's read-ahead
                               # ramps up within it: a fresh piece starts with small folios)
WINDOW_BYTES = 64 << 20        # a piece is read once its end is this near the sink's position
CALL = 4 << 20                 # bytes a sendfile call reads (the stop waits for one)
HEADER_GUESS = 1024            # stream bytes of a member's headers, to place the files that follow
_POLL = 0.002                  # seconds between the threads' looks at the sink's position
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

Upcoming = list[tuple[bytes, os.stat_result]]
_File = tuple[bytes, int, int, int, int]          # name, st_dev, st_ino, size, stream offset of its data


class Prefetch:
    """The dump's side: :meth:`reading` before it copies a large file, :meth:`stop` at the end.

    ``position`` gives the stream bytes the sink has produced so far (any thread may call it)."""

    def __init__(self, position: Callable[[], int], eager: bool = False) -> None:
        self._position = position
        self._eager = eager
        self._wake = threading.Condition()
        self._dir_fd = -1              # the plan's directory (opened under the lock only)
        self._files: list[_File] = []
        self._cursor = (0, 0)          # the next piece: file index in the plan, piece index in it
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._probe = bytearray(1)
        self.bytes_read = 0            # of large files' data read ahead of the dump
        self.cold_files = 0            # large files found cold (each one's copy was followed)

    @property
    def started(self) -> bool:
        return bool(self._threads)

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
        new_dir = os.dup(dir_fd)
        with self._wake:
            if self._dir_fd >= 0:
                os.close(self._dir_fd)
            self._dir_fd = new_dir
            self._cursor = self._carry_over(files)
            self._files = files
            self._wake.notify_all()
        if not self._threads:
            for _ in range(STREAMS):
                thread = threading.Thread(target=self._run, name="dump-prefetch", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _carry_over(self, files: list[_File]) -> tuple[int, int]:
        """Where the new plan's pieces start: past those the threads took of the old plan's
        files (the two share the files still to come), else at the first file not taken."""
        old = {entry[1:3]: number for number, entry in enumerate(self._files)}
        index, piece = self._cursor
        for new_index, (_, dev, ino, _, _) in enumerate(files):
            number = old.get((dev, ino))
            if number is None or number > index:
                return new_index, 0
            if number == index:
                return new_index, piece
        return len(files), 0

    def stop(self) -> None:
        """End the threads and wait for them (each finishes its sendfile call); idempotent."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        for thread in self._threads:
            thread.join()
        with self._wake:
            if self._dir_fd >= 0:
                os.close(self._dir_fd)
                self._dir_fd = -1

    # -- the threads -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            null = -1
        try:
            while True:
                piece = self._take()
                if piece is None:
                    return
                fd, offset, length = piece
                try:
                    null = self._read(fd, offset, length, null)
                except OSError:
                    pass                    # only a hint: the dump reads what it needs
                finally:
                    os.close(fd)
        finally:
            if null >= 0:
                os.close(null)

    def _take(self) -> tuple[int, int, int] | None:
        """The next piece to read (an open fd of its file, offset, length), once its end is
        within the window; None at the stop. Pieces the dump has passed are skipped."""
        with self._wake:
            while not self._stopping:
                index, piece = self._cursor
                if index >= len(self._files):
                    self._wake.wait()
                    continue
                name, dev, ino, size, start = self._files[index]
                offset = piece * REGION
                if offset >= size:
                    self._cursor = (index + 1, 0)
                    continue
                end = start + min(offset + REGION, size)
                position = self._position()
                if end <= position:
                    self._cursor = (index, piece + 1)
                    continue
                if end - position > WINDOW_BYTES:
                    self._wake.wait(_POLL)
                    continue
                self._cursor = (index, piece + 1)
                fd = self._open(name, dev, ino)
                if fd >= 0:
                    return fd, offset, min(REGION, size - offset)
            return None

    def _open(self, name: bytes, dev: int, ino: int) -> int:
        """The plan's file, if it is still the one the dump listed (else -1)."""
        try:
            try:
                fd = os.open(name, _FLAGS | os.O_NOATIME, dir_fd=self._dir_fd)
            except PermissionError:
                fd = os.open(name, _FLAGS, dir_fd=self._dir_fd)   # O_NOATIME needs ownership
        except OSError:
            return -1
        try:
            st = os.fstat(fd)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != (dev, ino):
            os.close(fd)
            return -1
        return fd

    def _read(self, fd: int, offset: int, length: int, null: int) -> int:
        """Read the piece into the page cache; returns ``null``, or -1 once sendfile into it
        failed (then, and without it, the kernel is only asked: ``WILLNEED``)."""
        done = 0
        while done < length and not self._stopping:
            step = min(CALL, length - done)
            if null >= 0:
                try:
                    sent = os.sendfile(null, fd, offset + done, step)
                except OSError:
                    os.close(null)
                    null = -1
                    continue
                if not sent:
                    break                   # the file shrank
            else:
                os.posix_fadvise(fd, offset + done, step, os.POSIX_FADV_WILLNEED)
                sent = step
            done += sent
        with self._wake:
            self.bytes_read += done
        return null
