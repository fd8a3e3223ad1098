"""Read-ahead for the dump: get the reads of the files the walk reaches next in flight.

GNU tar, like any plain walk, reads one file at a time, so on a cold cache it waits for every
read in turn while the device could serve many at once. Here a helper process walks the same
tree in the same order as the dump (names sorted, depth first, the same exclusions, the same
file system boundary, the same "changed since" test), a bounded window ahead of it, and for
every regular file the dump will read opens it and asks the kernel to read it
(``posix_fadvise(WILLNEED)`` queues the I/O and returns). The device then has the window's
reads in flight, and the dump's own reads find their pages there. The helper writes nothing
and sends nothing: the stream is the dump's alone, byte for byte what it is without read-ahead,
and whatever the helper gets wrong (a tree changing under it) costs at most wasted reads.

Why a process and not threads: threads asking for the reads spend most of their time waiting
for the GIL, which the dump holds between its system calls (measured on 40,000 files of
0-40 KB, cold: the dump alone 7.4 s, with a read-ahead thread 6.4 s, with a thread pool no
better, with this process 3.3 s; GNU tar 6-8 s).

A warm cache needs none of this, so the helper is only started once the dump has seen
``START_AFTER_MISSES`` reads that had to wait for the device (``missed``: a small file's
``RWF_NOWAIT`` read came back short) within ``MISS_SPAN`` entries of its walk. Misses that far
apart are not a cold cache: a warm tree read cold before (by an earlier dump, or anyone) keeps
kernel read-ahead marks on some cached pages, and a ``RWF_NOWAIT`` read stops short at such a
mark as if the page were missing (about one file in 200 after a cold pass). Counted one by one
they started the helpers on a warm cache, whose probes then cost a third of a warm backup's
CPU. The helper probes each file's first page the same way and sleeps once at most one in
eight of its last ``WARM_RUN`` probes found a file uncached, until the dump reports another
close run of misses; it then jumps to where the dump is and goes on.

Both thresholds are one density, one miss in eight: the dump wakes the helper only where it
misses at least that often, and the helper sleeps where it finds fewer. A cache mostly warm
with pages dropped here and there (a machine short of memory drops the oldest: about one
small file in 20 at the front of a tree) then costs the dump those few waits and no helpers.
With a run of ``WARM_RUN`` cached files in a row to sleep and 8 misses in 256 entries to wake
(3 %), such a tree woke the helpers again and again and they probed all of it: 2 s of CPU for
1,300 dropped files of 100,000, more than the reads they saved (benchmarks/ndmp_backup_bench.py).

The two sides share one page (a memfd): the dump's walk position (directory entries stepped
over; both count the same way), its miss count, and the path of its next entry for a jump. The
window is bounded in entries and in bytes asked for ahead of the dump; the helper keeps one
file open at a time. It ends when the dump closes the pipe it holds (at the end of the dump,
on an abort, or when the dump's process dies).
"""

from __future__ import annotations

import json
import mmap
import os
import select
import stat
import sys
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from .select import Excluder
from .target import DIR_FLAGS

if TYPE_CHECKING:
    import subprocess              # only once helpers start: a warm dump never needs it

WINDOW_ENTRIES = 8192          # directory entries ahead of the dump
WINDOW_BYTES = 128 << 20       # bytes of file data asked for ahead of the dump
LARGE_FILE_HEAD = 8 << 20      # of a larger file only its head: the kernel's own read-ahead
                               # follows the dump's sequential reads from there
WARM_RUN = 512                 # the helper sleeps when, of its last this many probes, ...
WARM_MISSES = WARM_RUN // 8    # ... at most this many found the file uncached
START_AFTER_MISSES = 32        # the dump starts the helper after this many reads that waited ...
MISS_SPAN = 256                # ... within this many entries of its walk (a cold cache misses at
                               # nearly every file; a warm one with read-ahead marks ~1 in 200)
HELPERS = 2                    # processes, each asking for every HELPERS-th file (one is not enough:
                               # posix_fadvise spends ~30 us per small file submitting its read)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_PROBE = 4096
_BEHIND = 64                   # entries behind the dump before the helper jumps to where it is
_POLL = 0.002                  # seconds between the helper's looks at the dump's position
_CHECK_PARENT_EVERY = 256      # entries between the helper's checks that the dump still runs

# the shared page: 64-bit slots (the dump's position, its misses, the jump path's length, then
# each helper's files asked and files found cached), then the jump path
_POSITION, _MISSES, _PATH_LENGTH = range(3)
_ASKED, _CACHED = 3, 4         # + 2 * the helper's number
_PATH_AT = 64
_PAGE = 4096


class ReadAhead:
    """The dump's side: starts the helper when the cache proves cold, tells it where the walk is.

    The dump calls ``seen`` with its walk position for every directory entry it steps over,
    :meth:`missed` when one of its reads waited for the device, and :meth:`stop` at the end."""

    def __init__(self, root_fd: int, root_dev: int | None, skip_root_names: frozenset[bytes],
                 excludes: tuple[str, ...], since_ns: int | None,
                 where: Callable[[], tuple[int, list[bytes]]], eager: bool = False) -> None:
        self._root_fd = root_fd
        self._settings = {"root_dev": root_dev, "skip": sorted(name.hex() for name in skip_root_names),
                          "excludes": list(excludes), "since": since_ns,
                          "window_entries": WINDOW_ENTRIES, "window_bytes": WINDOW_BYTES}
        self._where = where
        self._shared_fd = os.memfd_create("ndmpd-readahead", os.MFD_CLOEXEC)
        os.ftruncate(self._shared_fd, _PAGE)
        self._page = mmap.mmap(self._shared_fd, _PAGE)
        self._slots = memoryview(self._page).cast("q")
        self.seen: Callable[[int], None] = partial(self._slots.__setitem__, _POSITION)
        """``seen(position)``: the dump's walk position, at every entry (a C call, no Python frame)."""
        self.walked = self._slots[_POSITION:_POSITION + 1]
        """The same as a one-slot view: ``walked[0] = position`` is an item store, no call at all
        (the dump's, at every entry; valid until :meth:`stop`)."""
        self._misses = 0               # close runs of misses (each one after the first wakes the helper)
        self._recent: deque[int] = deque(maxlen=START_AFTER_MISSES)   # walk positions of the last misses
        self._final: tuple[int, int] | None = None      # (asked, cached) once stopped
        self._helpers: list[subprocess.Popen] = []
        self._pipe = -1
        self.failed: str | None = None     # why the helper could not be started (it is only a hint)
        if eager:
            self._start()

    @property
    def started(self) -> bool:
        return bool(self._helpers)

    @property
    def files_asked(self) -> int:
        """Files the helper asked the kernel to read (it had to: they were not cached)."""
        return self._final[0] if self._final else self._count(_ASKED)

    @property
    def files_cached(self) -> int:
        """Files the helper found already cached."""
        return self._final[1] if self._final else self._count(_CACHED)

    def _count(self, slot: int) -> int:
        return sum(self._slots[slot + 2 * number] for number in range(HELPERS))

    def missed(self) -> None:
        """A read of the dump waited for the device: the cache is cold here when the last
        ``START_AFTER_MISSES`` misses lie within ``MISS_SPAN`` entries."""
        recent = self._recent
        position = self._slots[_POSITION]
        recent.append(position)
        if len(recent) < START_AFTER_MISSES or position - recent[0] > MISS_SPAN:
            return                     # scattered: read-ahead marks of a warm cache, not a cold one
        self._misses += 1
        if not self._helpers:
            if self.failed is None:
                self._start()
            return
        self._publish_where()
        self._slots[_MISSES] = self._misses

    def stop(self) -> None:
        """End the helper (closing its pipe) and wait for it; idempotent."""
        if self._pipe >= 0:
            os.close(self._pipe)
            self._pipe = -1
        if self._helpers:
            import subprocess
        for helper in self._helpers:
            try:
                helper.wait(timeout=5)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait()
        if self._shared_fd >= 0:
            self._final = (self._count(_ASKED), self._count(_CACHED))
            self.walked.release()
            self._slots.release()
            self._page.close()
            os.close(self._shared_fd)
            self._shared_fd = -1

    def _publish_where(self) -> None:
        position, parts = self._where()
        path = b"/".join(parts)
        while len(path) > _PAGE - _PATH_AT and parts:
            parts = parts[:-1]                 # deeper than the page holds: jump to an ancestor
            path = b"/".join(parts)
        self._page[_PATH_AT:_PATH_AT + len(path)] = path
        self._slots[_PATH_LENGTH] = len(path) if parts else -1
        self._slots[_POSITION] = position

    def _start(self) -> None:
        import subprocess
        self._publish_where()
        read_end, self._pipe = os.pipe2(os.O_CLOEXEC)
        environment = _helper_environment()
        try:
            for number in range(HELPERS):
                settings = dict(self._settings, root_fd=self._root_fd, shared_fd=self._shared_fd,
                                pipe_fd=read_end, number=number, helpers=HELPERS)
                self._helpers.append(subprocess.Popen(
                    [sys.executable, "-m", "ndmpd.engine.readahead", json.dumps(settings)],
                    pass_fds=(self._root_fd, self._shared_fd, read_end), stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True, env=environment))
        except OSError as exc:
            self.failed = f"read-ahead helper not started: {exc}"
            if not self._helpers:
                os.close(self._pipe)
                self._pipe = -1
        finally:
            os.close(read_end)


def _helper_environment() -> dict[str, str]:
    """The dump's environment, with the path this package was imported from first (a checkout
    run without installing)."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# -- the helper process ------------------------------------------------------------------


class _Helper:
    """Walks ahead of the dump asking for its files; see the module docstring."""

    def __init__(self, settings: dict) -> None:
        self._root_fd = os.open(".", DIR_FLAGS, dir_fd=settings["root_fd"])   # its own listing offset
        os.close(settings["root_fd"])
        self._page = mmap.mmap(settings["shared_fd"], _PAGE)
        self._slots = memoryview(self._page).cast("q")
        self._pipe = settings["pipe_fd"]
        self._root_dev = settings["root_dev"]
        self._skip = frozenset(bytes.fromhex(name) for name in settings["skip"])
        self._excluder = Excluder(tuple(settings["excludes"]))
        self._since = settings["since"]
        self._window_entries = settings["window_entries"]
        self._window_bytes = settings["window_bytes"]
        self._number, self._share = settings.get("number", 0), settings.get("helpers", 1)
        self._asked_slot, self._cached_slot = _ASKED + 2 * self._number, _CACHED + 2 * self._number
        self._ahead = 0
        self._asked: deque[tuple[int, int]] = deque()   # (position, bytes) asked for, not yet passed
        self._asked_bytes = 0
        self._probes: deque[bool] = deque(maxlen=WARM_RUN)   # the last probes: True where uncached
        self._probe_misses = 0         # Trues in _probes
        self._asleep = False
        self._misses = self._slots[_MISSES]
        self._probe = bytearray(_PROBE)
        self._noatime = os.O_NOATIME
        self._nowait = True
        self._until_check = _CHECK_PARENT_EVERY

    def run(self) -> None:
        resume = self._jump_target()
        while True:
            try:
                self._walk(self._root_fd, b"", resume, top=True)
                return
            except _Jump:
                resume = self._jump_target()
            except (_Stopped, OSError):
                return

    def _jump_target(self) -> list[bytes] | None:
        """Go to the dump's published next entry: its position, and the path to skip to."""
        length = self._slots[_PATH_LENGTH]
        self._ahead = self._slots[_POSITION]
        self._asked.clear()
        self._asked_bytes = 0
        if length <= 0:
            return None
        return bytes(self._page[_PATH_AT:_PATH_AT + length]).split(b"/")

    def _walk(self, fd: int, rel: bytes, resume: list[bytes] | None, top: bool = False) -> None:
        """Walk as the dump does; with ``resume`` (the path to the dump's next entry), skip what
        comes before it without counting (the dump has stepped over that)."""
        try:
            with os.scandir(fd) as entries:
                listed = sorted(((os.fsencode(entry.name), entry) for entry in entries), key=_first)
        except OSError:
            return
        prefix = rel + b"/" if rel else b""
        excluder = self._excluder
        for name, entry in listed:
            inside = None
            if resume:
                if name < resume[0]:
                    continue
                if name == resume[0] and len(resume) > 1:
                    inside = resume[1:]    # the dump is in there: the directory is counted already
                resume = None
            if top and name in self._skip:
                continue
            if excluder and excluder.excluded(name, prefix + name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if inside is None:
                self._ahead += 1
                self._pace()
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                if self._root_dev is not None and st.st_dev != self._root_dev:
                    continue
                try:
                    child = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue
                try:
                    self._walk(child, prefix + name, inside)
                finally:
                    os.close(child)
            elif stat.S_ISREG(mode) and st.st_size and self._ahead % self._share == self._number:
                since = self._since
                if since is None or st.st_mtime_ns >= since or st.st_ctime_ns >= since:
                    self._ask(fd, name, st.st_size)

    def _pace(self) -> None:
        """Wait while the window is full; jump when behind the dump; sleep while warm."""
        self._until_check -= 1
        if self._until_check <= 0:
            self._until_check = _CHECK_PARENT_EVERY
            if select.select([self._pipe], [], [], 0)[0]:
                raise _Stopped                 # the dump closed the pipe (or died)
        while True:
            position = self._slots[_POSITION]
            asked = self._asked
            while asked and asked[0][0] <= position:
                self._asked_bytes -= asked.popleft()[1]
            if self._asleep:                   # asleep until the dump misses again
                misses = self._slots[_MISSES]
                if misses != self._misses:
                    self._misses, self._asleep, self._probe_misses = misses, False, 0
                    self._probes.clear()
                    raise _Jump
            elif self._ahead < position - _BEHIND:
                raise _Jump
            elif (self._ahead - position <= self._window_entries
                  and self._asked_bytes <= self._window_bytes):
                return
            if select.select([self._pipe], [], [], _POLL)[0]:
                raise _Stopped

    def _probed(self, uncached: bool) -> None:
        """Count one probe; asleep once the last ``WARM_RUN`` found at most ``WARM_MISSES``
        files uncached."""
        probes = self._probes
        if len(probes) == WARM_RUN:
            self._probe_misses -= probes[0]
        probes.append(uncached)
        self._probe_misses += uncached
        if len(probes) == WARM_RUN and self._probe_misses <= WARM_MISSES:
            self._asleep = True

    def _ask(self, dir_fd: int, name: bytes, size: int) -> None:
        if self._asleep:
            return
        try:
            fd = os.open(name, _FILE_FLAGS | self._noatime, dir_fd=dir_fd)
        except PermissionError:
            self._noatime = 0                  # O_NOATIME needs ownership or CAP_FOWNER: next time
            return
        except OSError:
            return
        try:
            if self._nowait:
                try:
                    os.preadv(fd, [self._probe], 0, os.RWF_NOWAIT)
                    self._slots[self._cached_slot] += 1
                    self._probed(False)
                    return
                except BlockingIOError:
                    self._probed(True)
                except OSError:
                    self._nowait = False       # cannot tell (tmpfs caches everything anyway)
            length = min(size, LARGE_FILE_HEAD)
            os.posix_fadvise(fd, 0, length, os.POSIX_FADV_WILLNEED)
            self._slots[self._asked_slot] += 1
            self._asked.append((self._ahead, length))
            self._asked_bytes += length
        except OSError:
            return
        finally:
            os.close(fd)


class _Jump(Exception):
    """The helper goes to where the dump is."""


class _Stopped(Exception):
    """The dump is done (or gone)."""


def _first(item: tuple) -> bytes:
    return item[0]


def main(argv: list[str]) -> int:
    """The helper's entry point: ``python -m ndmpd.engine.readahead SETTINGS-JSON``."""
    _Helper(json.loads(argv[0])).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
