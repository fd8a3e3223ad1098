"""Read-ahead for the dump: start the reads of the files the walk will reach next.

GNU tar, like a plain walk, reads one file at a time, so on a cold cache it waits for every
read in turn while the device could serve many at once. A ``ReadAhead`` thread walks the same
tree in the same order as the dump (names sorted, depth first, the same exclusions and file
system boundary), a bounded window ahead of it, and for every regular file the dump will read
opens it, stats it and asks the kernel to read it (``posix_fadvise(WILLNEED)``, which queues
the I/O and returns), so the device has the whole window's reads in flight and the dump's
own reads find the pages there. The stream is the dump's alone: the read-ahead writes
nothing, and whatever it gets wrong (a tree changing under it) costs at most wasted reads.

A warm cache needs none of this, and the work would only take the GIL from the dump; so the
read-ahead probes each file's first page with ``RWF_NOWAIT`` and, after a run of files that
were all cached, sleeps until the dump reports a read that had to wait (a miss), then skips
forward to where the dump is and goes on.

The window is counted in directory entries (``position``: the dump's index in the walk,
which both sides count the same way) and in bytes asked for ahead of the dump.
"""

from __future__ import annotations

import os
import stat
import threading
from collections import deque
from collections.abc import Callable

from .select import Excluder
from .target import DIR_FLAGS

WINDOW_ENTRIES = 4096          # directory entries ahead of the dump
WINDOW_BYTES = 64 << 20        # bytes of file data asked for ahead of the dump
LARGE_FILE_HEAD = 8 << 20      # of a larger file only its head: the kernel's own read-ahead
                               # follows the dump's sequential reads from there
WARM_RUN = 512                 # this many cached files in a row: sleep until the dump misses
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_PROBE = 4096
_BEHIND = 64                   # entries behind the dump before the thread jumps to where it is


class ReadAhead:
    """One thread asking the kernel for the files the dump reads next.

    The dump calls :meth:`advance` with its walk position for every directory entry it steps
    over, :meth:`missed` when one of its reads was not cached, and :meth:`stop` at the end."""

    def __init__(self, root_fd: int, root_dev: int | None, skip_root_names: frozenset[bytes],
                 excluder: Excluder, include: Callable[[os.stat_result], bool] | None = None,
                 where: Callable[[], tuple[int, list[bytes]]] | None = None,
                 window_entries: int = WINDOW_ENTRIES, window_bytes: int = WINDOW_BYTES) -> None:
        self._root_fd = os.open(".", DIR_FLAGS, dir_fd=root_fd)   # its own offset: a dup shares the listing
        self._root_dev = root_dev
        self._skip = skip_root_names
        self._excluder = excluder
        self._include = include
        self._where = where or (lambda: (self.position, []))
        self._probe = bytearray(_PROBE)
        self._noatime = os.O_NOATIME
        self._window_entries = window_entries
        self._window_bytes = window_bytes
        self.position = 0                  # the dump's walk position (entries stepped over)
        self.wake_at = 0                   # the dump wakes the thread once it reaches this
        self._ahead = 0                    # this thread's walk position
        self._asked: deque[tuple[int, int]] = deque()   # (position, bytes) asked, not yet passed
        self._asked_bytes = 0
        self._warm = 0                     # cached files in a row
        self._dormant = False
        self._jump_pending = False         # woken from dormancy: go to where the dump is
        self._stopping = False
        self._wake = threading.Condition()
        self.files_asked = 0               # statistics (tests, benchmarks)
        self.files_cached = 0
        self._thread = threading.Thread(target=self._run, name="dump-readahead", daemon=True)
        self._thread.start()

    # -- the dump's side -----------------------------------------------------------------

    def wake(self) -> None:
        """The dump reached ``wake_at`` (or missed): let the thread go on."""
        with self._wake:
            self.wake_at = 1 << 62
            self._wake.notify()

    def missed(self) -> None:
        """A read of the dump waited for the device: the cache is cold here."""
        if self._dormant:
            with self._wake:
                self._dormant = False
                self._warm = 0
                self._jump_pending = True
                self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()
        os.close(self._root_fd)

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        resume: list[bytes] | None = None
        while True:
            try:
                self._walk(self._root_fd, b"", resume, top=True)
                return
            except _Jump as jump:
                resume = jump.parts
            except (_Stopped, OSError):
                return                     # a hint only: the dump reports what it cannot read

    def _walk(self, fd: int, rel: bytes, resume: list[bytes] | None, top: bool = False) -> None:
        """Walk as the dump does; with ``resume`` (the path to the dump's next entry), skip
        what comes before it without counting (the dump has stepped over it)."""
        try:
            with os.scandir(fd) as entries:
                listed = sorted(((os.fsencode(entry.name), entry) for entry in entries), key=_first)
        except OSError:
            return
        prefix = rel + b"/" if rel else b""
        excluder = self._excluder
        for name, entry in listed:
            descend_only = False
            if resume:
                if name < resume[0]:
                    continue
                if name == resume[0] and len(resume) > 1:
                    descend_only = True    # the dump is inside: already counted
                resume_below, resume = (resume[1:] if descend_only else None), None
            else:
                resume_below = None
            if top and name in self._skip:
                continue
            if excluder and excluder.excluded(name, prefix + name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not descend_only:
                self._ahead += 1
                self._pace()
            if stat.S_ISDIR(st.st_mode):
                if self._root_dev is not None and st.st_dev != self._root_dev:
                    continue
                try:
                    child = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue
                try:
                    self._walk(child, prefix + name, resume_below)
                finally:
                    os.close(child)
            elif stat.S_ISREG(st.st_mode) and st.st_size:
                if self._include is None or self._include(st):
                    self._ask(fd, name, st.st_size)

    def _pace(self) -> None:
        """Wait while the window is full; while dormant, wait for a miss and then jump to
        where the dump is."""
        asked = self._asked
        if self._stopping:
            raise _Stopped
        if not self._dormant:
            position = self.position
            while asked and asked[0][0] <= position:
                self._asked_bytes -= asked.popleft()[1]
            if (-_BEHIND <= self._ahead - position <= self._window_entries
                    and self._asked_bytes <= self._window_bytes):
                return
        with self._wake:
            while not self._stopping:
                if self._dormant:
                    self._wake.wait()
                    continue
                position = self.position
                if self._jump_pending or self._ahead < position - _BEHIND:    # behind the dump
                    self._jump_pending = False
                    self._jump()
                while asked and asked[0][0] <= position:
                    self._asked_bytes -= asked.popleft()[1]
                if (self._ahead - position <= self._window_entries // 2
                        and self._asked_bytes <= self._window_bytes // 2):
                    return
                self.wake_at = position + self._window_entries // 4
                self._wake.wait(0.05)
            raise _Stopped

    def _jump(self) -> None:
        position, parts = self._where()
        self._asked.clear()
        self._asked_bytes = 0
        self._ahead = position
        raise _Jump(parts)

    def _ask(self, dir_fd: int, name: bytes, size: int) -> None:
        if self._dormant:
            return
        try:
            fd = os.open(name, _FILE_FLAGS | self._noatime, dir_fd=dir_fd)
        except PermissionError:
            if not self._noatime:
                return
            self._noatime = 0
            return
        except OSError:
            return
        try:
            try:
                os.preadv(fd, [self._probe], 0, os.RWF_NOWAIT)
                cached = True
            except BlockingIOError:
                cached = False
            length = min(size, LARGE_FILE_HEAD)
            if cached:
                self.files_cached += 1
                self._warm += 1
                if self._warm >= WARM_RUN:
                    self._dormant = True
                return
            self._warm = 0
            os.posix_fadvise(fd, 0, length, os.POSIX_FADV_WILLNEED)
            self.files_asked += 1
            self._asked.append((self._ahead, length))
            self._asked_bytes += length
        except OSError:
            return
        finally:
            os.close(fd)


class _Jump(Exception):
    def __init__(self, parts: list[bytes]) -> None:
        super().__init__()
        self.parts = parts


class _Stopped(Exception):
    pass


def _first(item: tuple) -> bytes:
    return item[0]
